"""The documentation site: built with warnings as errors, served over HTTP and opened in
a real headless Chromium, as a reader opens it (no console error, no failed load)."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.browser import visit
from tests.conftest import component_missing
from tests.e2e.test_report import PNG_SIGNATURE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as `mkdocs build --strict` makes it from mkdocs.yml and docs/ (not with
    --quiet: it silences the warnings that strict mode counts, so nothing would fail)."""
    if not all(importlib.util.find_spec(name) for name in ("mkdocs", "material", "mkdocstrings")):
        component_missing("the docs extra is needed (pip install -e '.[docs]')")
    directory = tmp_path_factory.mktemp("docs") / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(directory)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    return directory


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # nothing on stderr per request
        pass


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The site over HTTP on a free local port (its search runs in a web worker, which
    a file:// page may not start)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=site))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_strict_build_makes_every_page_of_the_navigation(site: Path) -> None:
    pages = ["getting-started", "mad-trees", "options", "backends/docker", "backends/slurm",
             "backends/kubernetes", "backends/writing", "data", "reports-ci", "cli", "api",
             "troubleshooting", "architecture", "benchmarks"]  # fmt: skip
    missing = [page for page in pages if not (site / page / "index.html").is_file()]
    assert (site / "index.html").is_file() and missing == []


def test_the_home_page_renders_in_a_headless_browser_without_console_errors(
    served: str, chromium: str, tmp_path: Path
) -> None:
    page = visit(chromium, f"{served}/", tmp_path / "profile", {
        "title": "document.title",
        "pictures": "[...document.images].filter(i => i.complete && i.naturalWidth > 0).length",
        "links": "document.querySelectorAll('nav.md-nav a.md-nav__link').length",
    })  # fmt: skip
    assert page.problems == []
    assert page.values["title"] == "pytest-madengine"
    assert page.values["pictures"] >= 1  # the report's screenshot loaded
    assert page.values["links"] >= 15  # every page of the navigation
    assert page.screenshot.startswith(PNG_SIGNATURE) and len(page.screenshot) > 20_000
    (tmp_path / "site.png").write_bytes(page.screenshot)
    if os.environ.get("MAD_DOCS_SCREENSHOT"):  # how docs/site.png is made
        Path(os.environ["MAD_DOCS_SCREENSHOT"]).write_bytes(page.screenshot)


def test_the_api_page_shows_the_contract_from_its_docstrings(
    served: str, chromium: str, tmp_path: Path
) -> None:
    page = visit(chromium, f"{served}/api/", tmp_path / "profile", {
        "objects": "[...document.querySelectorAll('[id^=\"pytest_madengine.\"]')].map(e => e.id)",
    })  # fmt: skip
    assert page.problems == []
    documented = set(page.values["objects"])
    assert {
        "pytest_madengine.contract.RunSpec",
        "pytest_madengine.contract.Backend",
        "pytest_madengine.plugin.hookspec.pytest_mad_run_spec",
        "pytest_madengine.plugin.hookspec.pytest_mad_record",
    } <= documented
