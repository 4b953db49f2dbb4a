"""Real browser: the app shows a coloured 3D structure and reacts to the alpha slider."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

from tests.browser.conftest import ARTIFACTS, ROOT, save_docs_screenshot

pytestmark = pytest.mark.browser

SCREENSHOT = ROOT / "docs" / "screenshot.png"


def _viewer_frame(page, timeout: float = 240.0):
    """The component iframe holding the 3Dmol canvas (waits for featurisation)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for frame in page.frames:
            try:
                if frame.locator("div[id^='3dmolviewer'] canvas").count():
                    return frame
            except Exception:  # frames come and go while Streamlit reruns
                continue
        page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "timeout.png"), full_page=True)
    raise AssertionError("the 3D viewer canvas did not appear")


def _canvas_pixels(frame) -> np.ndarray:
    from PIL import Image

    png = frame.locator("div[id^='3dmolviewer'] canvas").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int64)


def _colour_classes(rgb: np.ndarray) -> dict[int, int]:
    """Pixels per hue bin (30 degrees) among saturated pixels (atoms, not background/cell)."""
    from colorsys import rgb_to_hsv

    flat = rgb.reshape(-1, 3)
    sat = flat.max(axis=1) - flat.min(axis=1)
    coloured = flat[sat > 40]
    counts: dict[int, int] = {}
    uniq, n = np.unique(coloured // 4, axis=0, return_counts=True)
    for (r, g, b), k in zip(uniq * 4 + 2, n, strict=True):
        h, _, _ = rgb_to_hsv(r / 255, g / 255, b / 255)
        counts[int(h * 12)] = counts.get(int(h * 12), 0) + int(k)
    return counts


def _settled_canvas(page, attempts: int = 10):
    """(frame, pixels) of the viewer once a rerun has stopped replacing its iframe."""
    from playwright.sync_api import Error as PlaywrightError

    for _ in range(attempts):
        frame = _viewer_frame(page)
        page.wait_for_timeout(2000)  # let 3Dmol draw
        try:
            return frame, _canvas_pixels(frame)
        except PlaywrightError:  # Streamlit swapped the component while rerunning
            continue
    raise AssertionError("the 3D viewer kept re-rendering; no stable canvas to read")


def _caption_alpha(page) -> str:
    text = page.get_by_text("alpha =", exact=False).first.inner_text(timeout=30_000)
    return text.split("alpha =")[1].split(";")[0].strip()


def test_viewer_colours_and_alpha_slider(app_url, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(app_url, wait_until="domcontentloaded")
    frame, before = _settled_canvas(page)
    # the local 3Dmol.js is served once from the app's static folder, not inlined per rerun
    assert frame.locator('script[src="/app/static/3Dmol-min.js"]').count() == 1
    page.screenshot(path=str(ARTIFACTS / "explore.png"), full_page=False)
    frame.locator("div[id^='3dmolviewer'] canvas").first.screenshot(
        path=str(ARTIFACTS / "viewer-canvas.png"))

    classes = {h: n for h, n in _colour_classes(before).items() if n >= 30}
    assert len(classes) >= 2, f"expected atoms in >= 2 distinct LPR colours, got {classes}"

    alpha0 = _caption_alpha(page)
    slider = page.get_by_role("slider").first
    slider.focus()
    for _ in range(8):  # 8 steps of 0.25 in log10 alpha: 1e-4 -> 1e-2
        slider.press("ArrowRight")
    deadline = time.time() + 60
    while _caption_alpha(page) == alpha0:
        assert time.time() < deadline, "the page did not update after moving the alpha slider"
        page.wait_for_timeout(300)
    assert _caption_alpha(page) != alpha0
    frame, after = _settled_canvas(page)
    page.screenshot(path=str(ARTIFACTS / "explore-alpha.png"), full_page=False)
    assert before.shape != after.shape or np.abs(before - after).sum() > 0, (
        "the viewer's pixels did not change with alpha"
    )
    assert not [e for e in errors if "3Dmol" in e], errors

    save_docs_screenshot(ARTIFACTS / "explore.png", SCREENSHOT)
    page.close()
