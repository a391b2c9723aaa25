"""A page's own URL opened first, with the app started by the `streamlit` command from another directory (how a
user may start it): every page must run through the app's navigation, not as a stray script without the repo on
sys.path (Streamlit serves any `pages/` folder beside the entry script as pages of their own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import serve
from playwright.sync_api import Page, expect


@pytest.fixture(scope="module")
def elsewhere_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cwd: Path = tmp_path_factory.mktemp("elsewhere")
    yield from serve("direct-urls-app.log", {"ULENS_AUTOLOAD": "0"}, cwd=cwd, console_script=True)


@pytest.mark.parametrize(
    ("path", "title"), [("attribution", "Attribution"), ("layers", "Layers"), ("tradeoffs", "Tradeoffs")]
)
def test_a_page_opened_by_its_url_runs_in_the_app(page: Page, elsewhere_url: str, path: str, title: str) -> None:
    page.goto(f"{elsewhere_url}/{path}")
    expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible()
    expect(
        page.get_by_text("Load a model pair in the sidebar first.").or_(page.get_by_role("heading", name="Tradeoffs"))
    ).not_to_have_count(0)
    assert page.get_by_text("ModuleNotFoundError").count() == 0
    nav = page.get_by_test_id("stSidebarNav")
    expect(nav.get_by_text("Probe")).to_be_visible()  # the app's navigation, not a list of stray scripts
    assert nav.get_by_text("app", exact=True).count() == 0
