"""Real browser: the Learn page shows its experiments' structures in colour."""

from __future__ import annotations

import time

import pytest

from tests.browser.conftest import ARTIFACTS, ROOT, save_docs_screenshot
from tests.browser.test_app_browser import _canvas_pixels, _colour_classes

pytestmark = pytest.mark.browser

SCREENSHOT = ROOT / "docs" / "screenshots" / "learn.png"
VIEWERS = 4  # one per experiment


def _viewer_frames(page, n: int, timeout: float = 300.0) -> list:
    """The component iframes holding a 3Dmol canvas, once exactly ``n`` are there (or the
    timeout): while Streamlit reruns the page, a replaced viewer's iframe can linger beside
    its successor for a moment (a loaded CI host once counted 5 of 4)."""
    deadline = time.time() + timeout
    found: list = []
    while time.time() < deadline:
        found = []
        for frame in page.frames:
            try:
                if frame.locator("div[id^='3dmolviewer'] canvas").count():
                    found.append(frame)
            except Exception:  # frames come and go while Streamlit reruns
                continue
        if len(found) == n:
            break
        page.wait_for_timeout(1000)
    return found


def test_learn_structures_are_coloured(app_url, browser):
    from playwright.sync_api import Error as PlaywrightError

    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{app_url}/learn", wait_until="domcontentloaded")
    frames = _viewer_frames(page, VIEWERS)
    if len(frames) < VIEWERS:
        page.screenshot(path=str(ARTIFACTS / "learn-timeout.png"), full_page=True)
    assert len(frames) == VIEWERS, f"expected {VIEWERS} 3D viewers, found {len(frames)}"
    page.wait_for_timeout(3000)  # let 3Dmol draw
    classes = []
    for frame in frames:
        try:
            pixels = _canvas_pixels(frame)
        except PlaywrightError:  # swapped by a late rerun: that viewer is not counted
            continue
        classes.append({h: n for h, n in _colour_classes(pixels).items() if n >= 30})
    assert any(len(c) >= 2 for c in classes), (
        f"expected a Learn viewer with atoms in >= 2 distinct colours, got {classes}")
    assert not [e for e in errors if "3Dmol" in e], errors

    # the picture for the docs: experiment 2 with varied compositions (the effect in colour)
    page.get_by_text("varied compositions", exact=True).first.click()
    page.set_viewport_size({"width": 1400, "height": 1300})
    page.get_by_text("2. One stoichiometry or varied compositions").scroll_into_view_if_needed()
    page.wait_for_timeout(4000)
    page.screenshot(path=str(ARTIFACTS / "learn.png"), full_page=False)
    save_docs_screenshot(ARTIFACTS / "learn.png", SCREENSHOT)
    page.close()
