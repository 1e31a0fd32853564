"""The documentation stays true: every relative link and #anchor in README.md and docs/*.md resolves, and
docs/cli.md is exactly what `python -m vehicle_ray.cli_reference` prints from today's `--help`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vehicle_ray.cli_reference import render

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """Markdown without code: links and headings inside code blocks and spans are not links or headings."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (word characters, `-` and spaces
    kept), spaces as `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor of `page`, with GitHub's -1, -2, ... for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(prose(page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` whose file or #anchor does not exist."""
    broken = []
    for target in LINK.findall(CODE_SPAN.sub("", prose(page.read_text()))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no {linked.relative_to(REPO) if linked.is_relative_to(REPO) else linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    return broken


def test_slugs_follow_github():
    assert slug("`vehicle-ray score`") == "vehicle-ray-score"
    assert slug("Scoring: `vehicle-ray score` (TTA n=4) vs plain fastai `learn.tta` (issue #17)") == (
        "scoring-vehicle-ray-score-tta-n4-vs-plain-fastai-learntta-issue-17"
    )
    assert slug("Is int8 for TTA's passes safe?") == "is-int8-for-ttas-passes-safe"


def test_the_checker_finds_a_broken_file_and_a_broken_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n[ok](#top) [file](missing.md) [anchor](#nowhere)\n\n```\n[code](not-a-link.md)\n```\n")
    assert broken_links(page) == [
        f"missing.md: no {tmp_path / 'missing.md'}",
        "#nowhere: no heading with anchor #nowhere in page.md",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


def test_cli_reference_matches_help():
    """Regenerate with `make docs` (python -m vehicle_ray.cli_reference > docs/cli.md) after changing options."""
    assert (REPO / "docs" / "cli.md").read_text() == render(), "docs/cli.md is stale: run `make docs`"
