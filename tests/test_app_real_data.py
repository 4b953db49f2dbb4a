"""Every app page on a fetched real DFT dataset (mlearn Si, Zuo et al. 2020).

The reference files beside the repository (``../shared/data``, present in CI) are imported
into a temporary cache exactly as ``lprviz datasets import`` would, so the app lists
``mlearn-Si`` as a fetched dataset.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reference_data import mlearn_dir
from streamlit.testing.v1 import AppTest

from lprviz import datasets

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["explore", "training_set", "compare", "improve", "validate", "learn", "export"]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    folder = mlearn_dir()
    mp = pytest.MonkeyPatch()
    mp.setenv("LPRVIZ_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    for split in ("training", "test"):
        datasets.import_file(folder / f"Si_{split}.json")
    info = {i.name: i for i in datasets.list_available()}
    assert info["mlearn-Si"].cached
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.query_params["dataset"] = "mlearn-Si"
    at.run()
    yield at
    mp.undo()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_explore_on_mlearn_si_shows_low_surface_lpr(app):
    _ok(app)
    assert "mlearn-Si" in " ".join(c.value for c in app.caption)
    table = next(df.value for df in app.dataframe if "median LPR" in df.value.columns)
    med = table.set_index("group")["median LPR"]
    # bulk-only training (Elastic + AIMD-NVT): surface atoms far less rigid than bulk ones
    assert med["Surface"] < 0.1 * med["Elastic"]


@pytest.mark.parametrize("page", PAGES[1:])
def test_every_page_renders_on_mlearn_si(app, page):
    app.switch_page(f"lprviz/app/pages/{page}.py").run()
    _ok(app)
    assert app.title
