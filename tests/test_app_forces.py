"""The app's "Train on forces too" toggle (AppTest): a force-trained fit, its force parity
plot on Explore, and LPRs that never drop when force rows are added."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def _medians(at: AppTest):
    for df in at.dataframe:
        if "median LPR" in df.value.columns:
            return df.value.set_index("group")["median LPR"]
    raise AssertionError("no per-group LPR table")


def test_force_toggle_raises_lpr_and_shows_force_parity():
    at = AppTest.from_file(APP, default_timeout=900).run()
    assert not at.exception and not at.error
    before = _medians(at)
    assert not any("force RMSE" in str(c.proto) for c in at.get("plotly_chart"))
    at.toggle(key="train_forces").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.number_input(key="force_weight").value == 0.03
    after = _medians(at)
    assert (after >= before * (1 - 1e-6)).all() and (after > 2 * before).any()
    assert any("force RMSE" in str(c.proto) for c in at.get("plotly_chart"))


def test_improve_with_forces_ranks_by_block_updates_and_predicts_the_refit():
    import re

    at = AppTest.from_file(APP, default_timeout=900).run()
    at.toggle(key="train_forces").set_value(True).run()
    at.switch_page("lprviz/app/pages/improve.py").run()
    assert not at.exception, [e.value for e in at.exception]
    at.multiselect(key="improve_pool_groups").set_value(["surface", "vacancy"]).run()
    at.number_input(key="improve_k").set_value(2).run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    assert any("block updates" in c.value for c in at.caption)
    table = next(df.value for df in at.dataframe if "gain (mean ln LPR)" in df.value.columns)
    assert len(table) == 2 and set(table["group"]) <= {"surface", "vacancy"}
    at.number_input(key="improve_n_add_2").set_value(1).run()
    at.button(key="improve_add").click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    (message,) = [s.value for s in at.success if "realised" in s.value]
    realised, predicted = (float(x) for x in re.findall(r"x(\d[0-9.eE+-]*)[ )]", message))
    # the refit with the pick's energy and force rows realises the block-update prediction
    assert realised > 1 and abs(realised - predicted) <= 1e-3 * predicted


def test_validate_committee_with_forces_tracks_the_force_trained_lpr():
    import re

    at = AppTest.from_file(APP, default_timeout=900).run()
    at.toggle(key="train_forces").set_value(True).run()
    at.switch_page("lprviz/app/pages/validate.py").run()
    at.toggle(key="val_committee").set_value(True).run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    (caption,) = [c.value for c in at.caption if "rank correlation" in c.value]
    spearman = float(re.search(r"rank correlation ([-0-9.]+)", caption).group(1))
    assert spearman > 0.7


def test_compare_two_models_says_which_model_trains_on_forces():
    """With "Train on forces too", Compare's two models label each model with what it was
    fitted to: SOAP readouts follow the toggle, the nn is fitted to energies only (said)."""
    from lprviz import nn

    at = AppTest.from_file(APP, default_timeout=900).run()
    at.toggle(key="train_forces").set_value(True).run()
    at.switch_page("lprviz/app/pages/compare.py").run()
    at.radio(key="cmp_mode").set_value("two models").run()
    at.radio(key="cmp_kind_b").set_value("linear").run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    (chart,) = at.get("plotly_chart")
    assert str(chart.proto).count("energies and forces") >= 2
    assert not any("energies only" in c.value for c in at.caption)
    if nn.torch_missing() is None:
        at.radio(key="cmp_kind_b").set_value("nn").run()
        assert not at.exception and not at.error, [e.value for e in at.exception]
        assert any("energies only" in c.value for c in at.caption)
        (chart,) = at.get("plotly_chart")
        assert "energies only" in str(chart.proto)
