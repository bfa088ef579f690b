"""The README stays a newcomer's page, and every link between it and the pages under docs/ leads somewhere."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]+\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [target for target in LINK.findall(text) if not target.startswith(("http://", "https://"))]


def broken(page: Path) -> list[str]:
    """The links of `page` to a file that does not exist or a heading it does not have."""
    found = []
    for target in links(page):
        path, _, fragment = target.partition("#")
        goal = (page.parent / path).resolve() if path else page
        if not goal.exists() or (fragment and goal.suffix == ".md" and fragment not in anchors(goal)):
            found.append(target)
    return found


def test_every_link_of_the_readme_and_the_docs_leads_to_a_file_and_heading():
    assert {p.name for p in PAGES} >= {"README.md", "pipeline.md", "model_folders.md", "docker.md", "harness.md",
                                      "benchmarks.md", "training.md", "shipped_model.md", "server.md"}
    assert {page.name: broken(page) for page in PAGES if broken(page)} == {}


def test_the_link_check_sees_a_missing_page_and_a_missing_heading(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n## Some part\n[ok](a.md#some-part) [no](b.md) [gone](a.md#other)\n")
    assert broken(tmp_path / "a.md") == ["b.md", "a.md#other"]


def test_the_readme_is_a_short_tour_that_links_every_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 120
    linked = {Path(target.partition("#")[0]).name for target in links(REPO / "README.md")}
    assert {p.name for p in PAGES[1:]} - linked <= {"nninteractive_session.md"}  # linked from model_folders.md
