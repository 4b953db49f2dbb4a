"""Tests of lprviz.nn and the nn model: training, determinism and the LLPR.

The LLPR of the nn model is the LPR of a ridge readout on the network's last hidden layer
(docs/science.md §12): checked against scikit-matter's
``local_prediction_rigidity`` on the extracted features (§7.1) and against a committee of
networks trained with other seeds (Spearman reported).
"""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from optional import require_torch
from reference_data import emt_subset
from scipy.stats import spearmanr
from skmatter.metrics import local_prediction_rigidity as skmatter_lpr

from lprviz import nn, pipeline
from lprviz.calibration import calibrate
from lprviz.cli import main
from lprviz.errors import InputError
from lprviz.features import SoapHypers
from lprviz.pipeline import ModelSpec, evaluate, prepare

HYPERS = SoapHypers(cutoff=4.5, max_radial=3, max_angular=2)
HIDDEN = 16


@pytest.fixture(scope="module")
def emt():
    """120 frames of the shipped EMT set (every group), 80 of them training, with SOAP."""
    require_torch()
    return emt_subset(120, 80, HYPERS, seed=1)


@pytest.fixture(scope="module")
def nn_fit(emt):
    data, desc, train = emt
    return prepare(data, desc, train, ModelSpec(kind="nn", baseline=False, hidden=HIDDEN))


def test_training_loss_is_finite_and_decreasing(nn_fit):
    history = nn_fit.nn.history
    assert np.all(np.isfinite(history))
    assert history.shape[1] == 2 and len(history) > 20
    # standardised targets start near a loss of 1/2; training must get well below it
    assert history[-1, 0] < 0.2 * history[0, 0]
    best = nn_fit.nn.best_epoch
    assert history[best, 1] < 0.5 * history[0, 1]  # the held-out loss fell too
    window = np.convolve(history[:, 0], np.ones(10) / 10, mode="valid")
    assert np.all(np.diff(window[::10]) < 0)  # decreasing over 10-epoch windows


def test_kept_weights_give_the_best_held_out_loss(emt, nn_fit):
    """The numpy forward pass of the kept weights reproduces the held-out loss the torch
    loop recorded for them (halved mean square of standardised energies per atom)."""
    data, desc, train = emt
    net = nn_fit.nn
    frames = np.flatnonzero(train)
    atoms = train[data.structure_index]
    local = net.predict_local(desc.values[atoms], desc.atom_numbers[atoms])
    sidx = np.cumsum(train)[data.structure_index[atoms]] - 1
    sizes = np.bincount(sidx)
    pred = np.bincount(sidx, weights=local) / sizes
    resid = (pred - data.energies[frames] / sizes) / net.target_scale
    held = net.held_out
    assert held.shape == (frames.size,) and 0 < held.sum() < frames.size
    loss = 0.5 * np.mean(resid[held] ** 2)
    assert loss == pytest.approx(net.history[net.best_epoch, 1], rel=1e-4, abs=1e-7)
    assert net.history[net.best_epoch, 1] == net.history[:, 1].min()


def test_llpr_equals_scikit_matter_on_last_layer_features(emt, nn_fit):
    data, desc, train = emt
    F = nn_fit.nn.transform(desc.values, desc.atom_numbers)
    assert F.shape == (data.n_atoms, HIDDEN)
    np.testing.assert_allclose(nn_fit.model_features(desc.values, desc.atom_numbers), F,
                               rtol=1e-12)
    per_frame = [F[data.structure_index == a] for a in range(len(data.frames))]
    frames = np.arange(len(data.frames))
    for alpha in (1e-6, 1e-3):
        ref, _ = skmatter_lpr([per_frame[a] for a in frames[train]], per_frame, alpha=alpha)
        ref = np.concatenate(ref)
        np.testing.assert_allclose(nn_fit.solver.lpr(F, alpha), ref, rtol=1e-8)
        np.testing.assert_allclose(evaluate(nn_fit, alpha).lpr, ref, rtol=1e-5)  # float32 Fit


def test_feature_map_is_deterministic_for_a_seed(emt, nn_fit):
    data, desc, train = emt
    again = prepare(data, desc, train, ModelSpec(kind="nn", baseline=False, hidden=HIDDEN))
    a = nn_fit.nn.transform(desc.values, desc.atom_numbers)
    b = again.nn.transform(desc.values, desc.atom_numbers)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    other = prepare(data, desc, train,
                    ModelSpec(kind="nn", baseline=False, hidden=HIDDEN, seed=1))
    assert np.max(np.abs(other.nn.transform(desc.values, desc.atom_numbers) - a)) > 1e-2


def test_llpr_follows_committee_spread(emt, nn_fit, capsys):
    """Spearman of 1/LLPR vs the spread of the local energies of 4 networks (seeds 0..3) on
    the test atoms; reported (README), and it must at least be positive."""
    data, desc, train = emt
    members = [nn_fit] + [prepare(data, desc, train, ModelSpec(kind="nn", baseline=False,
                                                               hidden=HIDDEN, seed=s))
                          for s in (1, 2, 3)]
    test_atoms = ~train[data.structure_index]
    local = np.stack([m.nn.predict_local(desc.values[test_atoms], desc.atom_numbers[test_atoms])
                      for m in members])
    spread = local.std(axis=0)
    res = evaluate(nn_fit, 1e-4)
    rho = float(spearmanr(1.0 / res.lpr[test_atoms], spread).statistic)
    with capsys.disabled():
        print(f"\nSpearman(1/LLPR, 4-seed committee spread) on {test_atoms.sum()} test atoms: "
              f"{rho:.2f}")
    assert np.isfinite(rho) and rho > 0


def test_nn_calibration_is_finite_and_positive(nn_fit):
    cal = calibrate(nn_fit, evaluate(nn_fit, 1e-4))
    assert np.isfinite(cal.factor) and cal.factor > 0 and cal.alpha > 0
    assert np.all(np.isfinite(cal.sigma_atoms)) and np.all(cal.sigma_atoms > 0)


def test_nn_model_without_torch_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(pipeline, "torch_missing", lambda: nn.INSTALL_HINT)
    with pytest.raises(InputError, match=r"pip install 'lprviz\[nn\]'"):
        ModelSpec(kind="nn")
    code = main(["lpr", "--dataset", "emt-alloys", "--train-groups", "bulk-pure",
                 "--model", "nn", "-q", "-o", str(tmp_path / "out.extxyz")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "pip install 'lprviz[nn]'" in err


def test_cli_model_nn(tmp_path):
    require_torch()
    out = tmp_path / "out.extxyz"
    assert main(["lpr", "--dataset", "emt-alloys", "--train-groups", "bulk-pure,bulk-alloy",
                 "--model", "nn", "--nn-hidden", "8", "--preset", "fast", "-q",
                 "-o", str(out)]) == 0
    frames = ase.io.read(out, ":")
    info = frames[0].info
    assert info["lprviz_model"] == "nn" and info["lprviz_nn_hidden"] == 8
    assert info["lprviz_features"] == "soap"
    lpr = np.concatenate([a.arrays["lpr"] for a in frames])
    assert np.all(np.isfinite(lpr)) and np.all(lpr > 0)
