"""The README opens with the two setup commands, then a table of contents that lists every
``##`` section, and every in-page link lands on a heading (GitHub's anchor rules)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TOC_TITLE = "**Contents**"

_LINK = re.compile(r"\[([^\]]+)\]\(#([^)\s]*)\)")


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped except ``-`` (and ``_``),
    each space a ``-``."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _outside_code(text: str) -> list[str]:
    """The README's lines outside fenced code blocks (a ``# comment`` there is no heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _headings(lines: list[str]) -> list[tuple[int, str]]:
    return [
        (len(match.group(1)), match.group(2).strip())
        for line in lines
        if (match := re.match(r"^(#{1,6}) (.+)$", line))
    ]


def _anchors(headings: list[tuple[int, str]]) -> set[str]:
    """Every heading's anchor; GitHub suffixes a repeated one with -1, -2, ..."""
    seen: Counter[str] = Counter()
    anchors = set()
    for _, heading in headings:
        anchor = github_anchor(heading)
        anchors.add(anchor if not seen[anchor] else f"{anchor}-{seen[anchor]}")
        seen[anchor] += 1
    return anchors


def _table_of_contents(text: str) -> list[tuple[str, str]]:
    before_sections = text.split("\n## ", 1)[0]
    assert TOC_TITLE in before_sections, f"README: a {TOC_TITLE} list before the first section"
    toc = before_sections.split(TOC_TITLE, 1)[1]
    return _LINK.findall(toc)


def test_the_readme_starts_with_the_two_setup_commands() -> None:
    text = README.read_text(encoding="utf-8")
    title, rest = text.split("\n", 1)
    assert title.startswith("# ")
    first_block = rest.lstrip("\n")
    assert first_block.startswith("```sh\nmake demo ")
    commands = first_block.split("```", 2)[1].splitlines()[1:]
    assert [line.split()[:2] for line in commands] == [["make", "demo"], ["make", "test"]]
    assert text.index(TOC_TITLE) > text.index("make test ")  # the contents come after them


def test_the_table_of_contents_lists_every_section_in_order() -> None:
    text = README.read_text(encoding="utf-8")
    sections = [heading for level, heading in _headings(_outside_code(text)) if level == 2]
    listed = _table_of_contents(text)
    assert [title for title, _ in listed] == sections, (
        "README's contents list must name every '## ' section, in order: "
        f"add or rename {sorted(set(sections) ^ {title for title, _ in listed})}"
    )
    wrong = [(title, f"#{a}") for title, a in listed if a != github_anchor(title)]
    assert not wrong, f"README's contents list: these links miss their section: {wrong}"


def test_every_in_page_link_lands_on_a_heading() -> None:
    text = README.read_text(encoding="utf-8")
    lines = _outside_code(text)
    anchors = _anchors(_headings(lines))
    links = _LINK.findall("\n".join(lines))  # a link's text may wrap onto the next line
    assert len(links) > len(_table_of_contents(text))
    broken = [f"[{title}](#{anchor})" for title, anchor in links if anchor not in anchors]
    assert not broken, f"README links to anchors no heading has: {broken}"


def test_github_anchor_rules() -> None:
    assert github_anchor("What is not built yet") == "what-is-not-built-yet"
    assert github_anchor("Identity and administration") == "identity-and-administration"
    assert github_anchor("Drop-in usage") == "drop-in-usage"
    assert github_anchor("Money: holds, captures & releases!") == "money-holds-captures--releases"
