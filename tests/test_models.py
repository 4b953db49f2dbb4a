"""Tests of lprviz.models against explicit formulas (numpy) and an EMT fit."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from scipy.stats import spearmanr
from skmatter.sample_selection import FPS

from lprviz.errors import InputError
from lprviz.features import SoapHypers, compute_soap
from lprviz.models import (
    append_baseline,
    composition_features,
    fit_committee,
    fit_nystrom,
    fit_ridge,
)
from lprviz.rigidity import RigiditySolver, sfactor

HYPERS = SoapHypers(cutoff=4.0, max_radial=3, max_angular=2)


def _random_structures(rng, n_structures=25, d=12, max_atoms=6):
    sizes = rng.integers(1, max_atoms + 1, size=n_structures)
    idx = np.repeat(np.arange(n_structures), sizes)
    X = np.abs(rng.normal(size=(len(idx), d))) + 0.1 * rng.normal(size=(len(idx), d))
    return X, idx


def _mean_rows(X, idx):
    return np.stack([X[idx == a].mean(axis=0) for a in range(idx.max() + 1)])


@pytest.fixture(scope="module")
def emt_data():
    """Rattled Cu/Au fcc cells (8 atoms, random composition and lattice), EMT energies."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(100):
        atoms = bulk("Cu", "fcc", a=rng.uniform(3.6, 3.9), cubic=True) * (2, 1, 1)
        atoms.numbers[rng.random(len(atoms)) < rng.uniform(0, 1)] = 79
        atoms.rattle(0.1, seed=i)
        atoms.calc = EMT()
        atoms.info["energy"] = atoms.get_potential_energy()
        frames.append(atoms)
    energies = np.array([a.info["energy"] for a in frames])
    desc = compute_soap(frames, HYPERS, species=(29, 79), cache=False)
    return frames, energies, desc


def test_composition_features():
    onehot = composition_features(np.array([29, 79, 29, 8]), (8, 29, 79))
    np.testing.assert_array_equal(onehot, [[0, 1, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]])
    with pytest.raises(InputError, match="species"):
        composition_features(np.array([1]), (8, 29))


def test_ridge_weights_equal_explicit_solve_and_predictions_sum():
    rng = np.random.default_rng(1)
    X, idx = _random_structures(rng)
    energies = rng.normal(size=idx.max() + 1) * np.bincount(idx)
    alpha = 1e-3
    model = fit_ridge(X, idx, energies, alpha)
    s = np.sqrt((X**2).sum() / len(X))
    rows = _mean_rows(X, idx) / s
    y = energies / np.bincount(idx)
    w = np.linalg.solve(rows.T @ rows + alpha * np.eye(X.shape[1]), rows.T @ y)
    np.testing.assert_allclose(model.weights, w, rtol=1e-9, atol=1e-12)
    assert model.scale == pytest.approx(s)
    local = model.predict_local(X)
    total = model.predict_total(X, idx)
    np.testing.assert_allclose(total, [local[idx == a].sum() for a in range(idx.max() + 1)])
    # per-atom mean convention: total / n = mean row . w
    np.testing.assert_allclose(total / np.bincount(idx), rows @ w, rtol=1e-10)


def test_ridge_reuses_given_solver():
    rng = np.random.default_rng(2)
    X, idx = _random_structures(rng)
    energies = rng.normal(size=idx.max() + 1)
    solver = RigiditySolver.from_atoms(X, idx, scale=2.5)
    a = fit_ridge(X, idx, energies, 1e-2, solver=solver)
    b = fit_ridge(X, idx, energies, 1e-2, scale=2.5)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-10)
    assert a.scale == 2.5


def test_nystrom_reproduces_kernel_and_uses_skmatter_fps():
    rng = np.random.default_rng(3)
    X, _ = _random_structures(rng, n_structures=40)
    nys = fit_nystrom(X, 15, zeta=2)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    expected = FPS(n_to_select=15, initialize=0).fit(Xn).selected_idx_
    np.testing.assert_array_equal(nys.active_index, expected)
    K_MM = (Xn[expected] @ Xn[expected].T) ** 2
    phi_M = nys.transform(X[expected])
    np.testing.assert_allclose(phi_M @ phi_M.T, K_MM, atol=1e-9)
    # with every atom active, the Nystrom features reproduce the full kernel
    full = fit_nystrom(X, len(X), zeta=2)
    phi = full.transform(X)
    np.testing.assert_allclose(phi @ phi.T, (Xn @ Xn.T) ** 2, atol=1e-8)


def test_nystrom_handles_duplicates_and_zero_rows():
    rng = np.random.default_rng(4)
    X = np.abs(rng.normal(size=(6, 5)))
    X = np.vstack([X, X[:3], np.zeros((1, 5))])
    nys = fit_nystrom(X, len(X), zeta=2)
    phi = nys.transform(X)
    assert np.all(np.isfinite(phi))
    assert nys.n_features <= 6
    np.testing.assert_array_equal(phi[-1], 0)


def test_sparse_kernel_lpr_and_weights_equal_kernel_formulas():
    rng = np.random.default_rng(5)
    X, idx = _random_structures(rng, n_structures=30, d=10)
    X_test = np.abs(rng.normal(size=(7, 10)))
    energies = rng.normal(size=idx.max() + 1)
    lam, zeta, m = 1e-3, 2, 20
    nys = fit_nystrom(X, m, zeta=zeta)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    active = Xn[nys.active_index]
    K_MM = (active @ active.T) ** zeta
    K_atoms = (Xn @ active.T) ** zeta
    K_AM = _mean_rows(K_atoms, idx)
    Tn = X_test / np.linalg.norm(X_test, axis=1, keepdims=True)
    k_test = (Tn @ active.T) ** zeta
    A = K_AM.T @ K_AM + lam * K_MM
    lpr_kernel = 1.0 / np.einsum("ij,ji->i", k_test, np.linalg.solve(A, k_test.T))
    solver = RigiditySolver.from_atoms(nys.transform(X), idx, scale=1.0)
    np.testing.assert_allclose(solver.lpr(nys.transform(X_test), lam), lpr_kernel, rtol=1e-6)
    # predictions: b = A^-1 K_AM^T y, local = k . b
    y = energies / np.bincount(idx)
    b = np.linalg.solve(A, K_AM.T @ y)
    model = fit_ridge(nys.transform(X), idx, energies, lam, solver=solver)
    np.testing.assert_allclose(
        model.predict_local(nys.transform(X_test)), k_test @ b, rtol=1e-6, atol=1e-9
    )
    np.testing.assert_allclose(
        model.predict_local(nys.transform(X)), K_atoms @ b, rtol=1e-6, atol=1e-9
    )


def test_baseline_columns_and_lpr_never_higher_with_baseline():
    rng = np.random.default_rng(6)
    X, idx = _random_structures(rng)
    numbers = rng.choice([29, 79], size=len(X))
    s = sfactor(X)
    Phi = append_baseline(X, numbers, (29, 79), scale=s)
    np.testing.assert_array_equal(Phi[:, -2:] / s, composition_features(numbers, (29, 79)))
    plain = RigiditySolver.from_atoms(X, idx, scale=s).lpr(X, 1e-3)
    with_base = RigiditySolver.from_atoms(Phi, idx, scale=s).lpr(Phi, 1e-3)
    # more parameters can only loosen a local prediction (Schur complement)
    assert np.all(with_base <= plain * (1 + 1e-10))
    assert np.any(with_base < 0.99 * plain)


def test_emt_model_fits(emt_data):
    frames, energies, desc = emt_data
    train = np.arange(75)
    mask = desc.structure_index < 75
    counts = np.bincount(desc.structure_index)
    s = sfactor(desc.values[mask])
    Phi = append_baseline(desc.values, desc.atom_numbers, desc.species, scale=s)
    model = fit_ridge(Phi[mask], desc.structure_index[mask], energies[train], 1e-6, scale=s)
    err = (model.predict_total(Phi, desc.structure_index) - energies) / counts
    rmse_test = np.sqrt(np.mean(err[75:] ** 2))
    spread = np.std(energies / counts)
    assert rmse_test < 0.05  # eV/atom
    assert rmse_test < 0.1 * spread


def test_committee_spread_tracks_low_lpr(emt_data):
    frames, energies, desc = emt_data
    mask = desc.structure_index < 60
    X, idx = desc.values[mask], desc.structure_index[mask]
    test_frames = [fcc111("Cu", (2, 2, 3), vacuum=4.0), fcc111("Au", (2, 2, 3), vacuum=4.0)]
    test = compute_soap(test_frames + frames[60:70], HYPERS, species=desc.species, cache=False)
    alpha = 1e-4
    committee = fit_committee(X, idx, energies[:60], alpha, n_models=8, fraction=0.8, seed=0)
    assert len(committee.models) == 8
    assert all(len(sub) == 48 for sub in committee.subsets)
    assert len({tuple(sub) for sub in committee.subsets}) == 8
    spread = committee.spread(test.values)
    assert spread.shape == (len(test.values),)
    lpr = RigiditySolver.from_atoms(X, idx).lpr(test.values, alpha)
    rho = spearmanr(lpr, spread).statistic
    assert rho < -0.5
    # members share the full training set's scale
    assert all(m.scale == pytest.approx(sfactor(X)) for m in committee.models)
    # each member (dual-form solve) is the primal ridge fit of its own subset
    for member, chosen in zip(committee.models[:2], committee.subsets[:2], strict=True):
        remap = np.full(60, -1)
        remap[chosen] = np.arange(len(chosen))
        atoms = remap[idx] >= 0
        ref = fit_ridge(X[atoms], remap[idx[atoms]], energies[chosen], alpha, scale=sfactor(X))
        np.testing.assert_allclose(member.weights, ref.weights, rtol=1e-6, atol=1e-10)


def test_errors():
    with pytest.raises(InputError):
        fit_nystrom(np.ones((3, 2)), 0)
    with pytest.raises(InputError):
        fit_committee(np.ones((3, 2)), np.arange(3), np.ones(3), 1e-3, n_models=1)
    with pytest.raises(InputError, match="energy"):
        fit_ridge(np.ones((3, 2)), np.arange(3), np.array([1.0, np.nan, 2.0]), 1e-3)
