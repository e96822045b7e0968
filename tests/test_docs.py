"""The documentation runs as written.

Every fenced ```` ```python ```` block of README.md and docs/*.md (new pages are picked up
automatically) is executed, one test per block, in a fresh namespace with the working
directory in a temporary folder and matplotlib on the Agg backend: a block must carry its
own imports and data, and where a comment next to it claims a value, the block asserts it.
Signature listings are tagged ```` ```text ````, so every ``python`` block is real code.

A block that can only run on some platforms is marked by an HTML comment on the line before
its fence, ``<!-- requires: cuda -->``; it is skipped, with that reason, where the condition
does not hold. No other marks exist, so a failing example cannot be silenced.

The commands shown in ```` ```bash ```` blocks are not run (they train for minutes), but
every ``sdekit ...`` and ``python -m diffusion ...`` command in them must be accepted by the
real argument parser. Relative links must name files that exist in the repository.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Languages a fence may carry. "python" blocks run; the others are shown only. An unknown tag
# (``py``, ``python3``, none at all) fails, so no example escapes the collector by its spelling.
LANGUAGES = {"python", "bash", "text"}
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<lang>[^\s`]*)")
MARK = re.compile(r"^\s*<!--\s*(?P<key>[\w-]+)\s*:\s*(?P<value>.*?)\s*-->\s*$")
REQUIREMENTS = {"cuda": "needs a CUDA device"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the first code line
    lang: str
    code: str
    mark: tuple[str, str] | None  # (key, value) of an HTML comment on the line before the fence

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def parse_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of one markdown file, with the mark on the line before each fence."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = MARK.match(prev)
        start, i = i + 1, i + 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence)) and lines[i].strip().strip(fence[0]) == ""):
            i += 1
        if i == len(lines):
            raise ValueError(f"{path}:{start}: code fence {fence!r} is never closed")
        code = "\n".join(line[indent:] if line[:indent].strip() == "" else line for line in lines[start:i])
        blocks.append(Block(path, start + 1, m["lang"], code, (mark["key"], mark["value"]) if mark else None))
        i += 1
    return blocks


BLOCKS = [b for path in DOC_FILES for b in parse_blocks(path)]
PYTHON = [b for b in BLOCKS if b.lang == "python"]
SHELL = [b for b in BLOCKS if b.lang == "bash"]


def _requirement_missing(block: Block) -> str | None:
    """The reason to skip ``block`` on this machine, or None to run it."""
    if block.mark is None:
        return None
    key, value = block.mark
    if key != "requires" or value not in REQUIREMENTS:
        raise ValueError(f"{block.name}: unknown mark <!-- {key}: {value} -->; the only mark is "
                         f"<!-- requires: {'|'.join(REQUIREMENTS)} --> for a real platform condition")
    if value == "cuda":
        import torch

        if torch.cuda.is_available():
            return None
    return REQUIREMENTS[value]


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.name)
def test_python_block_runs(block, tmp_path, monkeypatch):
    reason = _requirement_missing(block)
    if reason:
        pytest.skip(f"{block.name}: {reason}")
    import matplotlib.pyplot as plt
    import torch

    monkeypatch.chdir(tmp_path)  # blocks may write files (plots, checkpoints)
    # Pad with blank lines so a traceback names the markdown file and its line.
    code = compile("\n" * (block.line - 1) + block.code, str(block.path), "exec")
    # The examples' networks and batches are tiny: torch's intra-op threads only add synchronisation,
    # which on a busy 2-core machine made 300 training steps take 50 s instead of 1 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(code, {"__name__": "__doc_block__"})
    finally:
        torch.set_num_threads(threads)
        plt.close("all")


def test_fences_are_tagged():
    """Every fence names a known language: untagged or misspelt blocks would not be run."""
    bad = [f"{b.name} ({b.lang or 'no language'})" for b in BLOCKS if b.lang not in LANGUAGES]
    assert not bad, f"code fences must be tagged one of {sorted(LANGUAGES)}: {bad}"


def test_collector_finds_the_pages():
    """The collector sees README.md and every page of docs/, and the pages hold runnable examples."""
    assert {p.name for p in DOC_FILES} >= {"README.md", "index.md", "diffusion.md", "problems.md"}
    assert len(PYTHON) >= 10


# --------------------------------------------------------------------------- shell blocks
class _Parsed(Exception):
    pass


def _commands(block: Block):
    """The ``sdekit ...`` and ``python -m diffusion ...`` commands of a shell block, as argv lists."""
    text = re.sub(r"\\\n", " ", block.code)
    for line in text.splitlines():
        line = line.split(" #")[0] if not line.lstrip().startswith("#") else ""
        for part in re.split(r"&&|\|\||;", line):
            words = shlex.split(part)
            if not words:
                continue
            prog = Path(words[0]).name
            if prog == "sdekit":
                yield "sdekit", words[1:]
            elif prog.startswith("python") and words[1:3] == ["-m", "diffusion"]:
                yield "diffusion", words[3:]


SHELL_COMMANDS = [(b, tool, argv) for b in SHELL for tool, argv in _commands(b)]


@pytest.mark.parametrize(("block", "tool", "argv"), SHELL_COMMANDS,
                         ids=[f"{b.name}-{tool}-{' '.join(argv[:1])}" for b, tool, argv in SHELL_COMMANDS])
def test_shell_command_parses(block, tool, argv, monkeypatch):
    """The command is accepted by its argument parser (parsed, not run)."""
    if tool == "diffusion":
        from diffusion.cli import build_parser

        build_parser().parse_args(argv)
        return
    from sdekit import cli

    original = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    with pytest.raises(_Parsed):
        cli.main(argv)


def test_shell_blocks_show_commands():
    """The README's shell blocks are found: the parse check above is not vacuous."""
    assert {tool for _, tool, _ in SHELL_COMMANDS} == {"sdekit", "diffusion"}


# --------------------------------------------------------------------------- links and citations
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_citations_resolve(path):
    """Relative links name files of the repository, and nothing cites a file users don't have."""
    text = path.read_text(encoding="utf-8")
    missing = []
    for m in LINK.finditer(text):
        target = m["target"].split("#")[0]
        if not target or re.match(r"^[a-z]+:", target):
            continue
        if not (path.parent / target).exists():
            missing.append(target)
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"
    outside = re.findall(r"\.\./shared/\S*|\bREFERENCE(?:\.md)?\b", text)
    assert not outside, f"{path.relative_to(ROOT)} cites files that are not in the repository: {outside}"


def test_sources_cite_the_literature():
    """Docstrings and comments cite papers, not notes outside the repository (users don't have them)."""
    unshipped = re.compile(r"\.\./shared/|\bREFERENCE(?:\.md|\s*§)")
    hits = [f"{p.relative_to(ROOT)}:{i}" for folder in ("sdekit", "diffusion", "benchmarks", "tests")
            for p in sorted((ROOT / folder).rglob("*.py")) if p != Path(__file__).resolve()
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if unshipped.search(line)]
    assert not hits, f"cite the literature (author, year, equation) instead of a file users lack: {hits}"
