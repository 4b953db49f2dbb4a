"""Real browser: a researcher's own file. Its structures are named after the file, and a
random train/test split gives the page test structures."""

from __future__ import annotations

import re
import time

import pytest

from tests.browser.conftest import ARTIFACTS, ROOT, save_docs_screenshot
from tests.browser.test_app_browser import _settled_canvas
from tests.test_app import _teaching_extxyz

pytestmark = pytest.mark.browser

SCREENSHOT = ROOT / "docs" / "screenshots" / "upload.png"
FILE = "cu-au-study-42.extxyz"  # distinctive: nothing else on the page says it


def _wait_for(page, pattern: str, timeout: float = 240.0) -> str:
    """The page's text once ``pattern`` (a regular expression) matches it."""
    deadline = time.time() + timeout
    while True:
        text = page.locator("body").inner_text()
        if re.search(pattern, text):
            return text
        if time.time() > deadline:
            page.screenshot(path=str(ARTIFACTS / "upload-timeout.png"), full_page=True)
            raise AssertionError(f"{pattern!r} never appeared on the page")
        page.wait_for_timeout(500)


def _picker_options(page, label: str) -> list[str]:
    """The options a selectbox offers (opened, read, closed again)."""
    box = page.get_by_role("combobox", name=label, exact=True)
    box.click()
    page.get_by_role("option").first.wait_for(timeout=30_000)
    options = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    return options


def test_upload_names_structures_after_the_file_and_a_random_split_gives_test(app_url,
                                                                               browser):
    ARTIFACTS.mkdir(exist_ok=True)
    # tall: the split control sits below Features, Model and the forces toggle
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(app_url, wait_until="domcontentloaded")
    _settled_canvas(page)  # the default dataset is up
    page.locator("section[data-testid='stSidebar'] input[type=file]").first.set_input_files(
        files=[{"name": FILE, "mimeType": "text/plain",
                "buffer": _teaching_extxyz(slice(0, 12))}])
    text = _wait_for(page, r"training set 12 structures, test 0 structures")
    assert FILE in text and not re.search(r"\b[0-9a-f]{16}\.extxyz", text), (
        "the page names the upload by its stored hash name")
    # The structure picker lists the file's structures under the user's file name.
    options = _picker_options(page, "Structure")
    assert options and all(o.startswith(f"{FILE}#") for o in options), options[:3]

    page.get_by_role("combobox", name="Train/test split of your file").click()
    page.get_by_role("option", name="random fraction", exact=True).click()
    text = _wait_for(page, r"training set \d+ structures, test [1-9]\d* structures")
    n_test = int(re.search(r"test (\d+) structures", text)[1])
    assert n_test < 12
    _settled_canvas(page)
    assert sum("(test," in o for o in _picker_options(page, "Structure")) == n_test
    # The parity plot's legend has test points now.
    deadline = time.time() + 60
    while not any("(test)" in t for t in page.locator(".legendtext").all_text_contents()):
        assert time.time() < deadline, "no test points in the parity plot's legend"
        page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "upload.png"), full_page=False)
    save_docs_screenshot(ARTIFACTS / "upload.png", SCREENSHOT)
    page.close()
