"""Markdown as GitHub renders it, for the tests that check the documentation: the anchors
its headings get, its links, and its prose apart from its fenced code."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"#{1,6} (.+)")
# [text](target) and ![alt](target), the text maybe over several lines; a target has no
# spaces (none of ours carries a title).
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped (code
    backticks too), spaces turned into hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def prose(text: str) -> str:
    """``text`` with every fenced code block blanked out (lines kept, so that line numbers
    still hold)."""
    out: list[str] = []
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            out.append("")
        else:
            out.append("" if fenced else line)
    return "\n".join(out)


def anchors(text: str) -> set[str]:
    """The anchors of the headings of a Markdown text; GitHub adds -1, -2 ... to repeated
    ones. Lines in fenced code are no headings."""
    found: set[str] = set()
    for line in prose(text).splitlines():
        if match := _HEADING.fullmatch(line):
            anchor = github_anchor(match.group(1))
            repeat = 0
            while (unique := f"{anchor}-{repeat}" if repeat else anchor) in found:
                repeat += 1
            found.add(unique)
    return found


def file_anchors(path: Path) -> set[str]:
    return anchors(path.read_text(encoding="utf-8"))


def links(text: str) -> list[tuple[int, str]]:
    """Every link target outside fenced code, with its line number (from 1)."""
    body = prose(text)
    return [(body.count("\n", 0, m.start()) + 1, m.group(1)) for m in _LINK.finditer(body)]
