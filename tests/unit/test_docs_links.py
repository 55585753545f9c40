"""The Markdown people read: every relative link of README.md, CONTRIBUTING.md,
CHANGELOG.md and the documentation pages leads to a file that exists (and to a heading
of it, where the link names one), and the test command the docs show is README's."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(
    [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *DOCS.rglob("*.md")]
)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6} (.+?)\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The text outside fenced code blocks (a link in code is an example)."""
    return FENCE.sub("", text)


def relative_links(page: Path) -> Iterator[str]:
    for target in LINK.findall(prose(page.read_text())):
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, mailto: ...
            yield target


def slug(heading: str) -> str:
    """A heading's anchor as MkDocs' toc makes it (Python-Markdown's slugify)."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    return {slug(heading) for heading in HEADING.findall(prose(page.read_text()))}


def test_the_pages_are_there() -> None:
    assert (ROOT / "mkdocs.yml").is_file()
    for page in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md", "docs/index.md"):
        assert (ROOT / page).is_file(), page


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading '{anchor}' in {destination.name}")
    assert broken == []


def test_the_link_check_sees_a_broken_link_and_a_missing_heading(tmp_path: Path) -> None:
    """The check above passes because the links are sound, not because it sees nothing."""
    (tmp_path / "there.md").write_text("# A page\n\n## The `madengine` command: yes\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md#the-madengine-command-yes) [gone](gone.md) ![x](there.md#nope)\n"
        "```sh\n[in code](ignored.md)\n```\n[web](https://example.org/x.md)\n"
    )
    assert list(relative_links(page)) == [
        "there.md#the-madengine-command-yes",
        "gone.md",
        "there.md#nope",
    ]
    assert anchors(tmp_path / "there.md") == {"a-page", "the-madengine-command-yes"}


def fenced_after(text: str, marker: str) -> str:
    after = text[text.index(marker) :]
    return after.split("```sh\n", 1)[1].split("```", 1)[0]


def test_the_docs_show_the_test_command_of_readme() -> None:
    """.ci/run runs README's command; the getting-started page must not drift from it."""
    command = fenced_after((ROOT / "README.md").read_text(), "<!-- test-command -->")
    assert "'.[dev,docs]'" in command  # CI installs the docs extra, so it builds the site
    assert f"```sh\n{command}```" in (DOCS / "getting-started.md").read_text()
