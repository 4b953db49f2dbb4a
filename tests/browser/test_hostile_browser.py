"""Real browser: a hostile upload (Markdown/HTML image payloads in the file, structure and
group names) makes the browser fetch nothing, and other sessions keep working."""

from __future__ import annotations

import time
import urllib.request

import pytest

from tests.browser.test_app_browser import _colour_classes, _settled_canvas
from tests.test_app_faults import hostile_extxyz
from tests.test_datasets import _Server

pytestmark = pytest.mark.browser


def _wait_text(page, text: str, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while not page.get_by_text(text, exact=False).count():
        assert time.time() < deadline, f"{text!r} never appeared on the page"
        page.wait_for_timeout(500)


def test_hostile_upload_fetches_nothing_and_other_sessions_keep_working(app_url, browser):
    # A local server with no routes: it records every request (the payloads' target).
    with _Server() as target:
        name = f"![x]({target.url}t.png).xyz"
        first = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = first.new_page()
        page.goto(app_url, wait_until="domcontentloaded")
        page.locator("input[type=file]").first.set_input_files(files=[{
            "name": name, "mimeType": "text/plain",
            "buffer": hostile_extxyz(url=f"{target.url}n.png")}])
        _wait_text(page, "t.png).xyz")  # the caption names the upload, as text
        _settled_canvas(page)  # the hostile dataset is featurised and drawn
        for path in ("export", "validate", "compare"):
            page.goto(f"{app_url}/{path}", wait_until="domcontentloaded")
            _wait_text(page, "alpha" if path != "export" else "Results of")
            page.wait_for_timeout(1500)
        with urllib.request.urlopen(f"{app_url}/_stcore/health", timeout=10) as r:
            assert r.status == 200

        second = browser.new_context(viewport={"width": 1400, "height": 1000})
        other = second.new_page()
        other.goto(app_url, wait_until="domcontentloaded")
        _, pixels = _settled_canvas(other)
        classes = {h: n for h, n in _colour_classes(pixels).items() if n >= 30}
        assert len(classes) >= 2, f"second session: atoms not coloured by LPR ({classes})"
        first.close()
        second.close()
        assert target.requests == [], "the browser fetched a URL planted in a user label"
