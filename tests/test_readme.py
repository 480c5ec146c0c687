"""The README's code runs as written (with fewer epochs), so it cannot rot.

Every ```python block runs, in order, in one fresh interpreter, and every
``tfvae ...`` line of the ```bash blocks runs, in order, in the same fresh
folder (the commands first: the Python blocks do not depend on them). A
block preceded by ``<!-- readme-test: skip (reason) -->`` is left out.
Epoch counts are divided by four (at least 1) and ``k=1000`` becomes
``k=50``: the same calls, in a test-sized time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(<!-- readme-test: skip[^>]*-->\s*\n)?```(\w+)\n(.*?)```", re.S)


def blocks(language: str) -> list[str]:
    return [body for skip, lang, body in BLOCK.findall(README.read_text())
            if lang == language and not skip]


def shorter(text: str) -> str:
    text = re.sub(r"(--epochs |epochs=)(\d+)",
                  lambda m: f"{m.group(1)}{max(1, int(m.group(2)) // 4)}", text)
    return text.replace("k=1000", "k=50")


def commands() -> list[str]:
    lines = []
    for body in blocks("bash"):
        lines += [line.strip() for line in body.splitlines() if line.strip().startswith("tfvae ")]
    return [shorter(line) for line in lines]


def test_the_readme_has_code_to_run():
    assert len(blocks("python")) >= 5 and len(commands()) >= 8
    skipped = [m.group(1) for m in re.finditer(r"<!-- readme-test: skip ([^>]*)-->",
                                               README.read_text())]
    assert all(reason.strip().startswith("(") for reason in skipped), skipped


@pytest.mark.slow
def test_readme_commands_then_python_run_as_written(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for line in commands():
        argv = [sys.executable, "-m", "tfvae_cli.main"] + _split(line)[1:]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    script = "\n\n".join(shorter(body) for body in blocks("python"))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


def _split(line: str) -> list[str]:
    import shlex

    return shlex.split(line.split("#")[0])
