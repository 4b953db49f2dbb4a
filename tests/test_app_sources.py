"""AppTest runs of the feature sources and the nn model: a per-atom array of an uploaded
file as features, the nn model, and the Validate page's calibration on both."""

from __future__ import annotations

import io
from pathlib import Path

import ase.io
import numpy as np
from optional import require_backbone, require_torch
from streamlit.testing.v1 import AppTest

from lprviz import datasets, nn, sources

APP = str(Path(__file__).resolve().parents[1] / "app.py")
ARRAY_LABEL = "per-atom array 'feat'"


def _file_with_array() -> bytes:
    """24 frames of the teaching set with a per-atom array ``feat`` (numbers derived from
    the geometry: any numeric array is a valid feature source)."""
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(4, 6))
    frames = []
    for original in datasets.load("teaching-stoichiometry").frames[:24]:
        atoms = original.copy()
        atoms.calc = original.calc
        base = np.hstack([atoms.get_scaled_positions(), atoms.numbers[:, None] / 79.0])
        atoms.arrays["feat"] = np.tanh(base @ mix)
        frames.append(atoms)
    buf = io.StringIO()
    ase.io.write(buf, frames, format="extxyz")
    return buf.getvalue().encode()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _uploaded_with_split() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=600)
    at.session_state["soap_preset"] = "fast"
    at.run()
    (widget,) = [u for u in at.file_uploader if u.key == "upload"]
    at = widget.set_value(("with-feat.extxyz", _file_with_array(), "text/plain")).run()
    (split,) = [s for s in at.sidebar.selectbox if s.key.startswith("split_kind_")]
    return split.set_value("random fraction").run()


def _captions(at: AppTest) -> str:
    return " ".join(c.value for c in at.sidebar.caption)


def _render(at: AppTest, pages: tuple[str, ...]) -> None:
    """Run ``pages`` in turn (the last one Validate) without errors; Validate draws the
    calibration."""
    for page in pages:
        at.switch_page(f"lprviz/app/pages/{page}.py").run()
        _ok(at)
    assert "Calibrated uncertainties" in [h.value for h in at.subheader]


def test_array_source_renders_every_insight_page():
    at = _uploaded_with_split()
    _ok(at)
    features = at.sidebar.selectbox(key="features_label")
    assert ARRAY_LABEL in features.options
    features.set_value(ARRAY_LABEL).run()
    _ok(at)
    assert not [s for s in at.sidebar.selectbox if s.key == "soap_preset"]  # SOAP only
    at.switch_page("lprviz/app/pages/explore.py").run()
    assert "per-atom array 'feat'." in " ".join(c.value for c in at.caption)
    _render(at, ("explore", "compare", "improve", "validate"))
    assert any("needs SOAP features" in i.value for i in at.info)  # no LCPR blocks
    if sources.backbone_unavailable("chgnet") is not None:  # hidden, with how to add it
        assert "CHGNet" not in features.options
        assert "pip install 'lprviz[nn]'" in _captions(at)


def test_nn_model_renders_with_its_caption():
    require_torch()
    at = _uploaded_with_split()
    at.sidebar.radio(key="model_kind").set_value("nn").run()
    _ok(at)
    assert "LLPR" in _captions(at)
    _render(at, ("explore", "validate"))
    at.sidebar.selectbox(key="features_label").set_value(ARRAY_LABEL).run()
    _ok(at)  # nn on the file's array
    at.switch_page("lprviz/app/pages/improve.py").run()  # Improve ranks for this model
    _ok(at)
    assert "Model: per-atom array 'feat', nn" in " ".join(c.value for c in at.caption)
    assert len(at.dataframe) == 1 and np.all(at.dataframe[0].value["gain (mean ln LPR)"] > 0)


def test_backbone_source_renders_with_its_caption():
    require_backbone("chgnet")
    at = _uploaded_with_split()
    features = at.sidebar.selectbox(key="features_label")
    assert "CHGNet" in features.options
    features.set_value("CHGNet").run()
    _ok(at)
    assert "for a frozen backbone, the LPR is that of the readout refit" in _captions(at)
    _render(at, ("explore", "validate"))


def test_compare_two_models_offers_the_sidebar_sources():
    """Compare's "two models" offers what the sidebar offers (SOAP presets, the file's
    array, nn and the backbones only with the extra) and ranks a SOAP model against one on
    the file's array (and against the nn / CHGNet when installed)."""
    at = _uploaded_with_split()
    at.switch_page("lprviz/app/pages/compare.py").run()
    at.radio(key="cmp_mode").set_value("two models").run()
    _ok(at)
    options = at.selectbox(key="cmp_features_b").options
    assert "SOAP 'fast'" in options and ARRAY_LABEL in options
    assert ("CHGNet" in options) == (sources.backbone_unavailable("chgnet") is None)
    kinds = at.radio(key="cmp_kind_b").options
    assert ("nn" in kinds) == (nn.torch_missing() is None)
    at.selectbox(key="cmp_features_b").set_value(ARRAY_LABEL).run()
    _ok(at)
    (rho,) = [float(m.value) for m in at.metric if "Spearman" in m.label]
    assert -1.0 <= rho <= 1.0
    if nn.torch_missing() is None:
        at.radio(key="cmp_kind_b").set_value("nn").run()
        _ok(at)
        assert any("LLPR" in c.value for c in at.caption)
    if sources.backbone_unavailable("chgnet") is None:
        at.selectbox(key="cmp_features_b").set_value("CHGNet").run()
        at.radio(key="cmp_kind_b").set_value("linear").run()
        _ok(at)
        assert any("for a frozen backbone" in c.value for c in at.caption)
