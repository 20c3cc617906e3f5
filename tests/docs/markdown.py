"""Just enough Markdown for the doc tests: headings, GitHub anchors, links, fenced blocks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^(`{3,}|~{3,})\s*([^\s`]*)")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@dataclass(frozen=True)
class Block:
    """A fenced code block: its info string (``bash``, ``console`` ...), text and first line."""

    info: str
    text: str
    line: int


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(text: str) -> list[tuple[int, str]]:
    """``(level, text)`` of every ATX heading outside fenced blocks."""
    found = []
    for line in _prose_lines(text):
        match = _HEADING.match(line)
        if match:
            found.append((len(match.group(1)), match.group(2)))
    return found


def anchors(text: str) -> set[str]:
    return {slug(title) for _, title in headings(text)}


def links(text: str) -> list[str]:
    """Targets of inline links outside fenced blocks."""
    return [m.group(1) for line in _prose_lines(text) for m in _LINK.finditer(line)]


def blocks(text: str) -> list[Block]:
    """Fenced code blocks in order."""
    found: list[Block] = []
    fence: str | None = None
    info = ""
    body: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        if fence is None:
            match = _FENCE.match(line)
            if match:
                fence, info, body, start = match.group(1), match.group(2), [], number
        elif line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            found.append(Block(info, "\n".join(body) + "\n", start))
            fence = None
        else:
            body.append(line)
    return found


def sections(text: str, level: int = 2) -> dict[str, str]:
    """``{heading: body}`` of the headings at ``level`` (body up to the next such heading)."""
    found: dict[str, str] = {}
    current: str | None = None
    body: list[str] = []
    for line in _prose_lines(text, keep_code=True):
        match = _HEADING.match(line)
        if match and len(match.group(1)) <= level and not line.startswith("    "):
            if current is not None:
                found[current] = "\n".join(body)
            current = match.group(2) if len(match.group(1)) == level else None
            body = []
        elif current is not None:
            body.append(line)
    if current is not None:
        found[current] = "\n".join(body)
    return found


def _prose_lines(text: str, keep_code: bool = False) -> list[str]:
    lines: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            if keep_code:
                lines.append("")
            continue
        if fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = None
            if keep_code:
                lines.append("")  # code never counts as a heading
            continue
        lines.append(line)
    return lines


def markdown_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.md"))


def own_pages(docs: Path) -> list[Path]:
    """The pages tests/docs keeps in step with the code: setup/, kb/ and architecture.md.

    Runbooks are checked by tests/integration/test_alert_rules.py; generated pages (the
    benchmark's docs/performance.md) by the code that writes them.
    """
    return sorted(
        [
            *docs.joinpath("setup").rglob("*.md"),
            *docs.joinpath("kb").rglob("*.md"),
            docs / "architecture.md",
        ]
    )
