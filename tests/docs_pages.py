"""Reading the documentation as tests do: README.md and the site's pages (docs/*.md), their code blocks and
the shell commands in them. Shared by tests/test_docs_commands.py and the tests that run a page's example."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")


def pages() -> list[Path]:
    """README.md and every page of the site."""
    return [README, *sorted(DOCS.glob("*.md"))]


def page(name: str) -> str:
    """A page's text by file name: "README.md" or a page under docs/ ("adapters.md")."""
    return (REPO / name).read_text() if name == "README.md" else (DOCS / name).read_text()


def section(text: str, heading: str) -> str:
    """The text from the heading that starts with `heading` (any level) to the next heading of that level
    or higher."""
    match = re.search(rf"^(#+) {re.escape(heading)}", text, re.M)
    if match is None:
        raise KeyError(f"no heading starting with {heading!r}")
    level = len(match.group(1))
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language (info string), first body line (1-based) and body lines."""

    lang: str
    line: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def fence_errors(text: str) -> list[str]:
    """Malformed code fences: an opening fence followed by more than a language word, a line inside a
    block that starts with a fence but carries text (a closing fence that does not close), an unclosed
    block."""
    errors = []
    open_fence: tuple[str, int] | None = None
    for i, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if not m:
            continue
        marker, rest = m.group(2), m.group(3).strip()
        if open_fence is None:
            if not re.fullmatch(r"[\w+.-]*", rest):
                errors.append(f"line {i}: an opening fence followed by text: {line.strip()!r}")
            open_fence = (marker, i)
        elif marker[0] == open_fence[0][0] and len(marker) >= len(open_fence[0]):
            if rest:
                errors.append(f"line {i}: a closing fence followed by text: {line.strip()!r}")
            open_fence = None
    if open_fence is not None:
        errors.append(f"line {open_fence[1]}: a code block that is never closed")
    return errors


def blocks(text: str, lang: str | tuple[str, ...] | None = None) -> list[Block]:
    """The fenced code blocks of a page, in order (only those in `lang`, a language or several, if given)."""
    out: list[Block] = []
    current: list[str] | None = None
    info, start, marker = "", 0, ""
    for i, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if current is None:
            if m:
                current, info, start, marker = [], m.group(3).strip(), i + 1, m.group(2)
        elif m and m.group(2)[0] == marker[0] and len(m.group(2)) >= len(marker):
            if lang is None or info == lang or (isinstance(lang, tuple) and info in lang):
                out.append(Block(info, start, tuple(current)))
            current = None
        else:
            current.append(line)
    return out


def shell_lines(block: Block) -> list[tuple[int, str]]:
    """The block's shell commands as written: continuation lines (`\\`) joined, comment lines dropped, one
    (line number, command) per command (`shlex.split(command, comments=True)` drops trailing comments)."""
    out: list[tuple[int, str]] = []
    pending, first = "", 0
    for n, line in enumerate(block.lines, block.line):
        if not pending:
            first = n
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        command = (pending + stripped).strip()
        pending = ""
        if command and not command.startswith("#"):
            out.append((first, command))
    return out


INLINE_CODE = re.compile(r"`([^`]+)`")


def paragraphs(text: str) -> list[tuple[int, int, str]]:
    """(first line, last line, text) of every run of non-blank lines outside code blocks."""
    out: list[tuple[int, int, str]] = []
    lines = text.splitlines()
    in_code = False
    start, buf = 0, []
    for i, line in enumerate(lines, 1):
        if FENCE.match(line):
            if buf:
                out.append((start, i - 1, "\n".join(buf)))
                buf = []
            in_code = not in_code
            out.append((i, i, line))  # a fence line is its own paragraph (tells a block is next to it)
            continue
        if in_code:
            continue
        if line.strip():
            if not buf:
                start = i
            buf.append(line)
        elif buf:
            out.append((start, i - 1, "\n".join(buf)))
            buf = []
    if buf:
        out.append((start, len(lines), "\n".join(buf)))
    return out
