"""The README and the pages under docs/: every page is reachable from the README, and every
link between them, to a file or a heading, leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings, outside code blocks."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    found = set()
    for title in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        anchor = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        found.add(anchor)
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no such heading")
    return broken


def test_every_docs_page_is_linked_from_the_readme():
    linked = {
        (REPO / target.partition("#")[0]).resolve()
        for target in LINK.findall((REPO / "README.md").read_text())
    }
    assert [page.name for page in PAGES if page.resolve() not in linked] == []


def test_every_link_in_the_readme_and_the_docs_leads_somewhere():
    found = {
        str(page.relative_to(REPO)): broken_links(page) for page in [REPO / "README.md", *PAGES]
    }
    assert {page: links for page, links in found.items() if links} == {}


def test_the_link_check_catches_a_missing_file_and_a_missing_heading(tmp_path: Path):
    (tmp_path / "other.md").write_text("# Other\n\n## A heading\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-heading) [gone](missing.md) [no heading](other.md#b-heading) "
        "[here](#page) [web](https://example.com/x)\n\n# Page\n"
    )
    assert broken_links(page) == ["missing.md: no such file", "other.md#b-heading: no such heading"]


def test_the_readme_fits_a_screenful_of_sections():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) < 200, "the README stays short: details go to a page under docs/"
