"""The app's Summary page (a ``lprviz lpr --summary/--sample`` run opened in the app)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lprviz.app.pages.summary import quantile_figure
from lprviz.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGE = "lprviz/app/pages/summary.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small run's summary and sample; one group renamed to markup, as a user could."""
    tmp = tmp_path_factory.mktemp("summary")
    summary = tmp / "run.json"
    assert main(["lpr", "--dataset", "emt-alloys", "--train-groups", "bulk-pure,surface",
                 "--preset", "fast", "--max-radial", "2", "--max-angular", "2", "-q",
                 "-o", str(tmp / "out.extxyz"), "--summary", str(summary),
                 "--sample", "3"]) == 0
    data = json.loads(summary.read_text())
    data["quantiles"][1]["key"] = "<b>bold</b>"
    summary.write_text(json.dumps(data))
    return summary, tmp / "run.sample.extxyz"


def _page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600).run()
    return at.switch_page(PAGE).run()


def _upload(at, key, path, name=None):
    (widget,) = [u for u in at.file_uploader if u.key == key]
    return widget.set_value((name or path.name, path.read_bytes(),
                             "application/octet-stream")).run()


def test_summary_page_shows_tables_plot_and_sample(run):
    summary, sample = run
    at = _page()
    assert not at.exception and not at.error
    at = _upload(at, "summary_json", summary)
    assert not at.exception and not at.error, [e.value for e in at.error]
    tables = [df.value for df in at.dataframe]
    quantiles = next(t for t in tables if "q50" in t.columns)
    data = json.loads(summary.read_text())
    assert quantiles["q50"].tolist() == [r["q50"] for r in data["quantiles"]]
    assert "<b>bold</b>" in quantiles["key"].tolist()  # shown as text in the table
    assert any("frame" in t.columns and "atom" in t.columns for t in tables)
    at = _upload(at, "summary_sample", sample)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.selectbox(key="summary_frame").options) == 3
    assert any("3dmolviewer" in str(el.proto) for el in at.main if el.type == "iframe")


@pytest.mark.parametrize(("text", "field"), [
    ('{"quantiles": 3}', "quantiles"),
    # a non-numeric alpha crashed the page (a ValueError in float()) before it was checked
    ('{"alpha": "abc", "quantiles": [], "lowest_structures": [], "lowest_atoms": []}',
     "alpha"),
])
def test_bad_summary_is_one_line_error(tmp_path, text, field):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    at = _upload(_page(), "summary_json", bad)
    assert not at.exception
    assert len(at.error) == 1 and field in at.error[0].value and "\n" not in \
        at.error[0].value
    # the sample's uploader is still drawn below the error
    assert any(u.key == "summary_sample" for u in at.file_uploader)


def _valid_summary() -> dict:
    return {"alpha": 1e-4, "quantiles": [{"by": "all", "key": "all", "count": 3,
                                          "undetermined_fraction": 0.0, "q05": 0.01,
                                          "q25": 0.02, "q50": 0.03, "q75": 0.04, "q95": 0.05}],
            "lowest_structures": [], "lowest_atoms": []}


@pytest.mark.parametrize(("change", "message"), [
    ({"alpha": None}, "field 'alpha': expected a number >= 0, got None"),
    ({"alpha": True}, "field 'alpha'"),
    ({"alpha": -1.0}, "field 'alpha'"),
    ({"alpha": float("nan")}, "field 'alpha'"),
    ({"alpha": 10**400}, "field 'alpha'"),  # beyond float: float() overflows
    ({"q50": "0.1"}, "quantiles[0].q50: expected a positive number, got '0.1'"),
    ({"q05": 0.0}, "quantiles[0].q05: expected a positive number"),
    ({"count": [1]}, "quantiles[0].count: expected a non-negative number"),
    ({"undetermined_fraction": float("inf")}, "quantiles[0].undetermined_fraction"),
])
def test_read_summary_checks_the_numbers_it_draws(change, message):
    import io

    from lprviz.errors import InputError
    from lprviz.summary import read_summary

    data = _valid_summary()
    assert read_summary(io.StringIO(json.dumps(data)), source="s.json") == data
    if "alpha" in change:
        data.update(change)
    else:
        data["quantiles"][0].update(change)
    with pytest.raises(InputError) as info:
        read_summary(io.StringIO(json.dumps(data)), source="s.json")
    assert str(info.value).startswith("s.json: ") and message in str(info.value)


def test_quantile_plot_escapes_user_labels():
    rows = [{"by": "group", "key": "<img src=x onerror=alert(1)>", "q05": 1e-3,
             "q25": 1e-2, "q50": 0.1, "q75": 1.0, "q95": 10.0}]
    fig = quantile_figure(rows)
    labels = {y for trace in fig.data for y in trace.y if y is not None}
    assert labels == {"group: &lt;img src=x onerror=alert(1)&gt;"}
    assert list(fig.data[-1].x) == [0.1]
