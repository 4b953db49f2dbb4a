"""The app under faulty or hostile input: bad links, Markdown in user labels, several
sessions uploading at once (AppTest)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lprviz.app import common

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 600


def _app(**query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def _notices(at: AppTest) -> list[str]:
    return [e.value for e in (*at.info, *at.warning)]


@pytest.mark.parametrize("bad", ["-1", "nan", "abc", "1e999", "0", "-inf"])
def test_bad_alpha_in_link_falls_back_to_default_with_one_notice(bad):
    at = _app(alpha=bad)
    assert not at.exception and not at.error
    notices = [n for n in _notices(at) if "alpha=" in n]
    assert len(notices) == 1 and "\n" not in notices[0]
    assert "alpha = 0.0001" in " ".join(c.value for c in at.caption)
    assert at.query_params["alpha"] == "0.0001"  # the link now carries the value in use
    at.slider(key="_w_alpha").set_value(-2.0).run()  # the page still works
    assert not at.exception and at.query_params["alpha"] == "0.01"


def test_alpha_beyond_slider_range_is_clipped_with_a_notice():
    at = _app(alpha="1e5")
    assert not at.exception and not at.error
    assert any("alpha=1e5" in n for n in _notices(at))
    assert at.query_params["alpha"] == "100"


def test_good_alpha_in_link_gives_no_notice():
    at = _app(alpha="0.01")
    assert not [n for n in _notices(at) if "alpha=" in n]
    assert at.query_params["alpha"] == "0.01"


def test_unknown_dataset_in_link_falls_back_with_escaped_notice():
    at = _app(dataset="nope![x](http://127.0.0.1:9/t.png)")
    assert not at.exception and not at.error
    (notice,) = [n for n in _notices(at) if "dataset=" in n]
    assert "![" not in notice and "](" not in notice
    assert "emt-alloys" in " ".join(c.value for c in at.caption)
    assert at.query_params["dataset"] == common.datasets.DEFAULT_DATASET


@pytest.mark.parametrize("raw", [None, "1e-4", "100", "1e-8"])
def test_link_alpha_accepts_values_in_range(raw):
    log10, notice = common.link_alpha_log10(raw)
    assert notice is None
    assert common.ALPHA_LOG10_RANGE[0] <= log10 <= common.ALPHA_LOG10_RANGE[1]
