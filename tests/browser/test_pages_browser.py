"""Real browser, page by page: a training-set change names its step while it runs, and every
page settles into a screenshot for the docs (``docs/screenshots/<page>.png``)."""

from __future__ import annotations

import time

import pytest
from test_app_browser import _settled_canvas

from tests.browser.conftest import ARTIFACTS, ROOT, save_docs_screenshot

pytestmark = pytest.mark.browser

SCREENSHOTS = ROOT / "docs" / "screenshots"
SPINNER = '[data-testid="stSpinner"]'
# screenshot name -> (url path, whether the page draws a 3D viewer); Explore is the default
# page, served at the root (learn and upload are shot elsewhere)
PAGES = {"explore": ("", True), "training-set": ("training-set", False),
         "compare": ("compare", True), "improve": ("improve", False),
         "validate": ("validate", True), "export": ("export", False)}
VIEWPORT = {"width": 1400, "height": 1800}


def _settle(page, *, viewer: bool, quiet_ms: int = 2500, timeout: float = 300.0) -> None:
    """Wait until the page has finished running: no spinner and no "running" status for
    ``quiet_ms`` in a row, and (pages with one) the viewer canvas drawn."""
    page.wait_for_selector('[data-testid="stMain"] h1', timeout=timeout * 1000)
    if viewer:
        _settled_canvas(page)
    deadline = time.time() + timeout
    quiet_since = None
    while True:
        busy = (page.locator(SPINNER).count()
                or page.locator('[data-testid="stStatusWidget"]').count())
        now = time.time()
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif (now - quiet_since) * 1000 >= quiet_ms:
            return
        assert now < deadline, "the page kept running"
        page.wait_for_timeout(250)


def _select(page, label: str, option: str) -> None:
    """Pick ``option`` in the Streamlit selectbox labelled ``label``."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first
    box.click()
    page.get_by_role("option", name=option, exact=True).click()


def test_training_set_change_names_the_factorisation(app_url, browser):
    """Applying a preset refactorises the model: the page must say which step is running,
    not just grey out. With the linear model the thin route factorises emt-alloys in well under
    a second (too fast for Streamlit to show a spinner), so this uses the sparse-kernel model,
    whose new training set also picks new active environments (seconds of real work)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{app_url}/training-set", wait_until="domcontentloaded")
        _settle(page, viewer=False)
        page.locator('[data-testid="stSidebar"]').get_by_text("sparse-kernel",
                                                                exact=True).click()
        _settle(page, viewer=False)
        _select(page, "Strategy", "all structures")
        page.get_by_role("button", name="Apply preset").click()
        spinner = page.locator(SPINNER).filter(has_text="Factorising")
        spinner.first.wait_for(state="visible", timeout=120_000)
        text = spinner.first.inner_text()
        page.screenshot(path=str(ARTIFACTS / "factorising.png"))
        assert "300 training structures" in text, text
        _settle(page, viewer=False)
        assert page.locator(SPINNER).count() == 0
    finally:
        page.close()


@pytest.mark.parametrize("name", list(PAGES))
def test_page_screenshot(app_url, browser, name):
    """Each page opened fresh (default dataset and training set), settled, then shot."""
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport=VIEWPORT)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        path, viewer = PAGES[name]
        page.goto(f"{app_url}/{path}", wait_until="domcontentloaded")
        _settle(page, viewer=viewer)
        assert page.locator('[data-testid="stException"]').count() == 0
        assert page.locator('[data-testid="stAlertContentError"]').count() == 0
        assert page.get_by_text("Page not found").count() == 0
        shot = ARTIFACTS / f"page-{name}.png"
        # down to the page's last element: short pages without a tail of blank space
        box = page.locator('[data-testid="stMainBlockContainer"]').bounding_box()
        height = VIEWPORT["height"] if box is None else box["y"] + box["height"] + 20
        height = min(max(height, 700), VIEWPORT["height"])
        page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": VIEWPORT["width"],
                                              "height": height})
        save_docs_screenshot(shot, SCREENSHOTS / f"{name}.png", box=(1000, 1300))
    finally:
        page.close()
    assert not errors, errors
