"""The code of the README and of docs/ runs as written (with fewer epochs), so it cannot rot.

A page is ``README.md`` or any ``docs/**/*.md``. Its fenced ```python and
```bash blocks are code; ```text blocks are output and synopses. The line
before a block may mark it:

* ``<!-- readme-test: skip (reason) -->``: never run (installs, several GPUs,
  a cluster, Fashion-MNIST, the peers); the reason is required;
* ``<!-- readme-test: slow -->``: runs with the slow tests only (it trains).

The quick test runs each page's unmarked blocks, the slow test all of a
page's blocks but the skipped ones, in the page's order, in-process, in a
fresh folder per page: the Python blocks of a page share one namespace (a
traceback names the page and its line), and each line of a bash block is a
``tfvae ...`` command run through click's ``CliRunner``. So an unmarked block
may use what an earlier unmarked block made, a slow block anything before it.
Epoch counts are divided by four (1 or 2) and ``k=1000`` becomes
``k=50``: the same calls, in a test-sized time.
"""

from __future__ import annotations

import re
import shlex
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README] + sorted((ROOT / "docs").rglob("*.md"))
MARKER = re.compile(r"^<!-- readme-test: (.*?) ?-->$")
FENCE = re.compile(r"^```(\w*)\s*$")
CODE = ("python", "bash")
KINDS = CODE + ("text",)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int   # the page's line number of the block's first code line
    lang: str
    code: str
    marker: str  # "", "slow" or "skip (reason)"

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def page_blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        before = [line for line in lines[:i] if line.strip()][-1:]
        marked = MARKER.match(before[0].strip()) if before else None
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        blocks.append(Block(page, i + 2, fence.group(1), "\n".join(lines[i + 1:end]) + "\n",
                            marked.group(1) if marked else ""))
        i = end + 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in page_blocks(page)]


def shorter(text: str) -> str:
    """The same calls with a quarter of the epochs (1 or 2) and k=50 for k=1000."""
    text = re.sub(r"(--epochs |epochs=)(\d+)",
                  lambda m: f"{m.group(1)}{max(1, min(2, int(m.group(2)) // 4))}", text)
    return text.replace("k=1000", "k=50")


def commands(block: Block) -> list[str]:
    """The block's shell lines, continuations joined, comments and blank lines left out."""
    text = block.code.replace("\\\n", " ")
    lines = [shlex.split(line, comments=True) for line in text.splitlines()]
    return [shlex.join(words) for words in lines if words]


def runnable(block: Block, slow: bool) -> bool:
    return block.lang in CODE and (block.marker == "" or (slow and block.marker == "slow"))


def _pages(slow: bool) -> list:
    """Pages with something for this test to run (slow: something only it runs)."""
    chosen = []
    for page in PAGES:
        blocks = page_blocks(page)
        mine = [b for b in blocks if runnable(b, slow) and (b.marker == "slow") == slow]
        if mine:
            chosen.append(pytest.param(page, id=str(page.relative_to(ROOT))))
    return chosen


def test_pages_mark_their_blocks_as_the_test_reads_them():
    blocks = all_blocks()
    for block in blocks:
        assert block.lang in KINDS, f"{block.where}: a ```{block.lang} block; use one of {KINDS}"
        assert block.marker in ("", "slow") or re.fullmatch(r"skip \(.+\)", block.marker), (
            f"{block.where}: marker {block.marker!r}: write 'slow' or 'skip (reason)'")
        if block.lang == "bash" and not block.marker.startswith("skip"):
            for line in commands(block):
                assert line.startswith("tfvae "), (
                    f"{block.where}: {line!r} is not a tfvae command: mark the block skip (why)")
    quick = [b for b in blocks if runnable(b, slow=False)]
    slow = [b for b in blocks if b.marker == "slow"]
    assert len(quick) >= 6 and len(slow) >= 20, (len(quick), len(slow))
    assert any(b.page == README and b.lang == "python" for b in quick)


def test_examples_write_under_runs():
    """Examples leave the checkout clean: what they write goes under runs/ (ignored by git)."""
    for block in all_blocks():
        if block.lang not in CODE:
            continue
        for path in re.findall(r"""--out[ =](\S+)|\bout=["']([^"']+)""", block.code):
            path = "".join(path)
            assert path.startswith(("runs/", "/")), f"{block.where}: writes to {path!r}"
        for path in re.findall(r"""(?:export_run|savez)\([^)]*?["']([^"']+)["']\s*[,)]""",
                               block.code):
            assert path.startswith("runs/"), f"{block.where}: writes to {path!r}"


def test_readme_is_a_short_guide_and_the_site_lists_every_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (ROOT / target).exists(), f"README.md links to {target}, which is missing"
    nav = set(re.findall(r":\s+(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M))
    pages = {str(p.relative_to(ROOT / "docs")) for p in PAGES if p != README}
    assert nav == pages, (sorted(pages - nav), sorted(nav - pages))


@pytest.mark.parametrize("page", _pages(slow=False))
def test_quick_blocks_run(page, tmp_path, monkeypatch):
    _run(page, tmp_path, monkeypatch, slow=False)


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages(slow=True))
def test_every_block_runs(page, tmp_path, monkeypatch):
    _run(page, tmp_path, monkeypatch, slow=True)


def _run(page: Path, tmp_path: Path, monkeypatch, slow: bool) -> None:
    from click.testing import CliRunner
    from tfvae_cli.main import cli

    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    runner = CliRunner()
    for block in page_blocks(page):
        if not runnable(block, slow):
            continue
        if block.lang == "python":
            # Blank lines first, so a traceback gives the page's own line numbers.
            code = "\n" * (block.line - 1) + shorter(block.code)
            exec(compile(code, str(page), "exec"), namespace)
            continue
        for line in commands(block):
            line = shorter(line)
            result = runner.invoke(cli, shlex.split(line)[1:])
            detail = "".join(traceback.format_exception(*result.exc_info)) if (
                result.exc_info and not isinstance(result.exception, SystemExit)) else ""
            assert result.exit_code == 0, f"{block.where}: {line}\n{result.output}\n{detail}"
