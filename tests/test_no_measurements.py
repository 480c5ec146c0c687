"""Docstrings and comments say what and why, never how fast, how big or on which machine.

Figures go stale and bury what a reader came for; they live in
``benchmarks/README.md`` with their command, date, commit and machine. This
test reads the comments (``tokenize``) and the docstrings (``ast``: every
string statement, so attribute docstrings too) of every ``.py`` under
``tfvae/`` and ``cli/`` and fails on a timing, a size or speed figure, a
machine or core count, "the main job", or a commit hash. Code is not read, so
a variable named ``ms`` or a ``1 << 20`` buffer size is fine.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(p for top in ("tfvae", "cli") for p in (ROOT / top).rglob("*.py"))

# A number, or a range of two ("5-7", "1.5 to 2.5"), not the tail of a word,
# a decimal or a power ("x2", "0.5", "2^16", "1e-3").
_DIGITS = r"\d+(?:,\d{3})*(?:\.\d+)?"
_NUMBER = r"(?<![\w.^-])" + _DIGITS + r"(?:\s*(?:-|–|to)\s*" + _DIGITS + r")?"
_TIME = (r"(?:ns|µs|us|ms|secs?|seconds?|mins?|minutes?|hours?|"
         r"nanoseconds?|microseconds?|milliseconds?)")
_SIZE = r"(?:[KMGT]i?B)"
_RATE = r"(?:images?|img|examples?|samples?|steps?|it|batches?)\s*/\s*s(?:ec)?"
_FASTER = r"(?:faster|slower|quicker|longer|shorter|as\s+(?:fast|slow|long|quick))"

#: What a measurement looks like in prose, by name (the name is in the failure).
PATTERNS = {
    "a time or size figure": re.compile(
        _NUMBER + r"\s*(?:" + _TIME + r"|" + _SIZE + r"|" + _RATE + r")\b"
        r"(?!\s+(?:blocks?|chunks?|buffers?|pieces?)\b)"  # a buffer size is a setting
        r"|" + _NUMBER + r"\s+s\b|" + _NUMBER + r"\.\d+s\b"),
    "a speed-up": re.compile(
        _NUMBER + r"\s*(?:%|x|×|times)\s*" + _FASTER + r"\b"
        r"|" + _NUMBER + r"\s*%\s+(?:less|more|fewer|of\s+the)\b"
        r"|\b(?:twice|half|three\s+times)\s+as\s+(?:fast|slow|long|quick)\b"),
    "an order of magnitude of time or memory": re.compile(
        r"\b(?:tens|hundreds|thousands|dozens)\s+of\s+"
        r"(?:(?:nano|micro|milli)?seconds|minutes|percent|[KMGT]i?B)\b"),
    "a FLOP rate or an instruction set": re.compile(r"\bG?FLOP/?s\b|\bGFLOP|\bAVX"),
    "an approximate count": re.compile(
        r"~\s*\d|\b(?:about|some|roughly)\s+\d[\d,]*\s+(?:Python\s+)?objects\b"),
    "a machine": re.compile(
        r"\b(?:this|these|our|another)\s+machines?\b(?!\s+learning)"
        r"|\b(?:on\s+)?(?:\d+|one|two|three|four|eight)\s+(?:logical\s+|physical\s+)?cores\b"
        r"|\b(?:EPYC|Xeon|Ryzen|Threadripper|Graviton)\b|\bon\s+a\s+(?:slower|faster)\s+day\b"),
    "the main job": re.compile(r"\bmain\s+job\b"),
    "a measured claim": re.compile(
        r"\b(?:as|we|was|were|I)\s+measured\b|\bmeasured\s+(?:fastest|faster|slower|best)\b"
        r"|\bby\s+measurement\b"),
    "a commit hash": re.compile(
        r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b|\bcommit\s+[0-9a-f]{7,40}\b"),
}
COMPILED = {name: re.compile(pattern.pattern, re.IGNORECASE) for name, pattern in PATTERNS.items()}


def _comments(source: str):
    """(first line, text) of each block of comments on consecutive lines."""
    block, start, last = [], None, None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        line = tok.start[0]
        if block and line != last + 1:
            yield start, "\n".join(block)
            block = []
        if not block:
            start = line
        block.append(tok.string.lstrip("#:").strip())
        last = line
    if block:
        yield start, "\n".join(block)


def _docstrings(source: str):
    """(first line, text) of every string statement: docstrings of modules,
    classes and functions, and the strings documenting attributes."""
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            yield node.lineno, node.value.value


def findings(source: str) -> list[tuple[int, str, str]]:
    """(line, pattern name, matched text) of every measurement in the prose of ``source``."""
    found = []
    for first, text in [*_comments(source), *_docstrings(source)]:
        for name, pattern in COMPILED.items():
            for match in pattern.finditer(text):
                line = first + text.count("\n", 0, match.start())
                found.append((line, name, " ".join(match.group().split())))
    return sorted(found)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_measurements_in_docstrings_or_comments(path):
    found = findings(path.read_text())
    report = [f"{path.relative_to(ROOT)}:{line}: {name}: {text!r}" for line, name, text in found]
    assert not report, ("state the reason without the figure; figures go in "
                        "benchmarks/README.md:\n" + "\n".join(report))


@pytest.mark.parametrize("text", [
    '"""1.5-2.5 s of a 5-6 s import."""',
    "# (400 ms against 23 ms)",
    '"""takes 5.9 MB instead\nof 47 MB"""',
    '"""XLA\'s scratch (about 100 MiB for a VAE)"""',
    "# the compiled kernel took 7.6 instead of 8.9\n# ms",
    "# 12,000 images/s",
    '"""ran 25% faster this way"""',
    '"""took about 20% less time"""',
    '"""17 times as long"""',
    "# about twice as slow per number",
    "# at batch 1 the invoke takes tens of microseconds",
    "# (hundreds of MiB of scratch)",
    "# on this machine",
    "# 1-2 s\n# on 2 cores",
    "# (AMD EPYC here)",
    '"""the README\'s main job"""',
    '"""the defaults that measured fastest"""',
    '"""as measured by benchmarks/x.py"""',
    '"""fixed at commit 3133073"""',
    '"""(code at 728f71a)"""',
    "# makes ~600,000 objects",
    '"""reaches 40 GFLOP/s with AVX2"""',
])
def test_measurements_are_found(text):
    assert findings(text), text


@pytest.mark.parametrize("text", [
    '"""noise / 2^16 < levels / peak; 8 pixels per byte."""',
    '"""a Bernoulli with p = 0.5, k=1000 draws, lr 1e-3, shape (K, B, D)."""',
    '"""a binarized 60,000 x 784 split; the first 90% of rows train."""',
    '"""hashed in 1 MiB blocks; within about 6e-8 nats per value."""',
    '"""Timeout in seconds; every ``every`` seconds; ``seconds`` per epoch."""',
    '"""(Mnih & Gregor 2014, sec. 5); Goldberg 1991, theorem 4."""',
    '"""runs/20261127-101500-gaussian"""',
    '"""measured rather than argued; trackers that measured something."""',
    '"""faster than XLA\'s CPU generator (see benchmarks/README.md)"""',
    '"""several devices and machines; one logical CPU device per replica."""',
    "ms = 3  # a variable, not prose\n",
])
def test_plain_prose_passes(text):
    assert not findings(text), findings(text)
