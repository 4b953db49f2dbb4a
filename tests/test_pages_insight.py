"""AppTest runs of the Improve and Validate pages on the shipped emt-alloys set."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from lprviz import datasets, features, pipeline, plots

PAGES = Path(__file__).resolve().parent.parent / "lprviz" / "app" / "pages"


def _app(page: str) -> AppTest:
    at = AppTest.from_file(str(PAGES / page), default_timeout=180)
    at.session_state["soap_preset"] = "fast"  # keep the factorisation small
    return at


def _no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_improve_page_suggests_and_adds():
    at = _app("improve.py")
    at.run()
    _no_errors(at)
    table = at.dataframe[0].value
    assert len(table) == 5
    gains = table["gain (mean ln LPR)"].to_numpy()
    assert np.all(gains > 0)
    factor = table["target LPR factor so far"].to_numpy()
    np.testing.assert_allclose(factor, np.exp(np.cumsum(gains)), rtol=1e-9)
    before = set(next(iter(at.session_state["train"].values())))
    assert len(at.get("plotly_chart")) == 1

    at.button(key="improve_add").click().run()
    _no_errors(at)
    after = set(next(iter(at.session_state["train"].values())))
    assert before < after and len(after - before) == 5
    msg = at.success[0].value
    realised, predicted = (float(v) for v in re.findall(r"x([0-9.e+-]+)", msg)[:2])
    assert realised == pytest.approx(predicted, rel=1e-3)  # as printed (4 digits)
    # the predicted gain equals a refit with the picks added, at the previous feature scale
    last = at.session_state["improve_last"]
    assert last["predicted"] == pytest.approx(np.log(factor[-1]), rel=1e-9)
    ds = datasets.load(last["source"])
    desc = features.compute_soap(ds.frames, features.SOAP_PRESETS["fast"], species=ds.species)
    lpr, scale = [], None
    for frames in (last["before"], last["after"]):
        mask = np.zeros(len(ds.frames), dtype=bool)
        mask[list(frames)] = True
        fit = pipeline.prepare(ds, desc, mask, pipeline.ModelSpec(), scale=scale)
        scale = fit.scale  # "after" at the previous training set's scale
        lpr.append(pipeline.evaluate(fit, last["alpha"]).lpr[last["target"]])
    gain = np.mean(np.log(lpr[1])) - np.mean(np.log(lpr[0]))
    # both from the Fit's float32 projections (LPR to ~1e-7 each, pipeline.Fit)
    assert gain == pytest.approx(last["predicted"], rel=1e-6)


def test_improve_page_group_target():
    at = _app("improve.py")
    at.run()
    at.selectbox(key="improve_target").select("surface").run()
    at.number_input(key="improve_k").set_value(3).run()
    _no_errors(at)
    assert len(at.dataframe[0].value) == 3


def test_validate_page_sections():
    at = _app("validate.py")
    at.run()
    _no_errors(at)
    table = at.dataframe[0].value
    assert {"name", "group", "atoms", "composition", "PR"} <= set(table.columns)
    assert np.all(np.diff(table["PR"].to_numpy()) >= 0)
    # calibration, LCPR bars, local errors, trade-off (EMT has reference local energies)
    assert len(at.get("plotly_chart")) == 4
    labels = [m.label for m in at.metric]
    assert "Large errors among lowest-LPR 5%" in labels
    low = float(at.metric[0].value.rstrip("%"))
    rest = float(at.metric[1].value.rstrip("%"))
    assert low > rest

    at.toggle(key="val_committee").set_value(True).run()
    _no_errors(at)
    assert len(at.get("plotly_chart")) == 5

    # calibrated against the committee's spread: the library's fit on that committee
    at.radio(key="val_calibration_target").set_value("committee spread").run()
    _no_errors(at)
    caption = next(c.value for c in at.caption if "committee's spread" in c.value)
    from lprviz.app import caches
    from lprviz.calibration import calibrate_to_spread

    settings = at.session_state["_settings"]
    train = next(iter(at.session_state["train"].values()))
    alpha = 10 ** at.session_state["alpha_log10"]
    model = caches.fit(settings.source, settings.preset, train, settings.spec)
    check = caches.committee(settings.source, settings.preset, train, settings.spec, alpha, 4)
    ref = calibrate_to_spread(model, check.spread, check.atoms)
    assert f"{check.atoms.size} test atoms" in caption
    assert plots.format_number(ref.factor) in caption


def _markdown(at: AppTest) -> str:
    return " ".join(m.value for m in at.markdown)


def test_compare_page_headings_and_nothing_lost_when_b_contains_a():
    """B = A plus surface/defect structures, at A's scale: no LPR can fall (docs/science.md
    §7), so the page says "nothing lost" instead of listing the smallest gains."""
    at = _app("compare.py")
    at.run()
    _no_errors(at)
    text = _markdown(at)
    assert "Gained most" in text and "Lost most" in text
    gained = next(df.value for df in at.dataframe if "median ratio B/A" in df.value.columns
                  and "structure" in df.value.columns)
    assert len(gained) == 10 and np.all(gained["max ratio B/A"] > 1)
    notes = [i.value for i in at.info if "Nothing lost" in i.value]
    assert len(notes) == 1 and "B contains A" in notes[0]


def test_compare_page_lists_losses_when_b_drops_structures():
    at = _app("compare.py")
    at.run()
    at.selectbox(key="cmp_A").set_value("bulk + a few surface/defect structures").run()
    at.selectbox(key="cmp_B").set_value("bulk only").run()
    _no_errors(at)
    assert not [i for i in at.info if "Nothing lost" in i.value]
    assert [i for i in at.info if "Nothing gained" in i.value]
    lost = next(df.value for df in at.dataframe if "min ratio B/A" in df.value.columns)
    assert len(lost) > 0 and np.all(lost["min ratio B/A"] < 1)
    assert np.all(np.diff(lost["median ratio B/A"].to_numpy()) >= 0)  # most lost first


def test_validate_page_explains_the_lcpr_blocks():
    from lprviz.validation import LCPR_BLOCKS_EXPLANATION

    at = _app("validate.py")
    at.run()
    _no_errors(at)
    # the explanation, escaped for Markdown but word for word
    assert "angular-channel block" in _markdown(at)
    assert LCPR_BLOCKS_EXPLANATION.split("(")[0] in _markdown(at)
    table = at.dataframe[0].value
    assert {"min LPR", "median LPR"} <= set(table.columns)  # human headers (format_table)


def test_compare_two_models_rank_agreement_matches_the_library():
    """Two models: the page's Spearman equals rank_agreement on the LPRs of the two models
    computed here through the pipeline (same training set, same alpha)."""
    from lprviz import comparison
    from lprviz.app import state

    at = _app("compare.py")
    at.run()
    at.radio(key="cmp_mode").set_value("two models").run()
    _no_errors(at)
    assert at.selectbox(key="cmp_features_a").value == "SOAP 'fast'"
    assert at.radio(key="cmp_kind_a").value == "linear"
    assert at.radio(key="cmp_kind_b").value == "sparse-kernel"
    at.selectbox(key="cmp_features_b").set_value("SOAP 'default'").run()
    _no_errors(at)
    shown = float(next(m.value for m in at.metric if "Spearman" in m.label))
    groups = next(df.value for df in at.dataframe if "Spearman a vs b" in df.value.columns)
    assert list(groups.columns) == ["group", "atoms", "Spearman a vs b"]
    assert len(at.get("plotly_chart")) == 1 and len(at.get("iframe")) == 1

    ds = datasets.load(datasets.DEFAULT_DATASET)
    train = next(iter(at.session_state["train"].values()))
    mask = np.isin(np.arange(len(ds.frames)), train)
    alpha = 10 ** state.DEFAULT_ALPHA_LOG10
    lpr = []
    for preset, kind in (("fast", "linear"), ("default", "sparse-kernel")):
        desc = features.compute_soap(ds.frames, features.SOAP_PRESETS[preset],
                                     species=ds.species)
        # the app caches float32 features: the sparse kernel's FPS may then pick another
        # active set than on float64 (a different model, Spearman off by ~5e-3)
        desc = dataclasses.replace(desc, values=desc.values.astype(np.float32))
        fit = pipeline.prepare(ds, desc, mask, pipeline.ModelSpec(kind=kind))
        lpr.append(pipeline.evaluate(fit, alpha).lpr)
    ref = comparison.rank_agreement(*lpr, np.asarray(ds.groups)[ds.structure_index])
    assert shown == pytest.approx(ref.spearman, abs=2e-3)  # the metric shows 3 decimals
    np.testing.assert_allclose(groups["Spearman a vs b"].to_numpy(),
                               ref.per_group["spearman"].to_numpy(), atol=1e-3)
    assert list(groups["atoms"]) == list(ref.per_group["atoms"])
