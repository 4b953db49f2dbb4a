"""Empirical LPR checks on a small EMT dataset (true local energies known)."""

from __future__ import annotations

import numpy as np
import pytest

from lprviz import datasets, features, pipeline
from lprviz.errors import InputError
from lprviz.models import fit_ridge
from lprviz.rigidity import structure_features
from lprviz.validation import (
    BLOCK_KINDS,
    LCPR_BLOCKS_EXPLANATION,
    block_kind,
    committee_check,
    component_rigidity,
    fit_blocks,
    local_error_check,
    pr_table,
    tradeoff,
)

ALPHA = 1e-3


@pytest.fixture(scope="module")
def emt():
    """Every other bulk/surface/cluster frame of emt-alloys; train on bulk + 3 surfaces."""
    full = datasets.load("emt-alloys")
    keep = np.flatnonzero(np.isin(full.groups, ["bulk-pure", "bulk-alloy", "surface", "cluster"]))
    ds = full.subset(keep[::2])
    desc = features.compute_soap(ds.frames, features.SOAP_PRESETS["fast"], species=ds.species)
    groups = np.asarray(ds.groups)
    train = np.char.startswith(groups.astype(str), "bulk")
    train[np.flatnonzero(groups == "surface")[:3]] = True
    fit = pipeline.prepare(ds, desc, train, pipeline.ModelSpec())
    phi = fit.model_features(desc.values, desc.atom_numbers)
    return ds, desc, fit, phi


def _explicit_inverse(fit, phi, alpha):
    """(X^T X + alpha I)^-1 from the scaled training mean rows, built independently."""
    ds_train = fit.train_mask
    rows = structure_features(phi, fit.structure_index, fit.n_frames)[ds_train] / fit.scale
    return np.linalg.inv(rows.T @ rows + alpha * np.eye(rows.shape[1])), rows


def test_committee_spread_tracks_inverse_lpr(emt):
    ds, _, fit, phi = emt
    check = committee_check(phi, ds.structure_index, ds.energies, fit.train_mask, ALPHA,
                            solver=fit.solver, n_models=5, seed=1)
    assert check.spread.shape == check.lpr.shape == (ds.n_atoms,)
    assert np.all(check.spread >= 0)
    assert check.spearman > 0.5
    # the LPR is the full training set's, computed independently
    G, _ = _explicit_inverse(fit, phi, ALPHA)
    x = phi[check.atoms[:20]] / fit.scale
    np.testing.assert_allclose(check.lpr[:20], 1 / np.einsum("ij,jk,ik->i", x, G, x), rtol=1e-6)


def test_committee_builds_its_own_solver(emt):
    ds, _, fit, phi = emt
    atoms = np.arange(0, ds.n_atoms, 7)
    a = committee_check(phi, ds.structure_index, ds.energies, fit.train_mask, ALPHA,
                        atoms=atoms, scale=fit.scale, n_models=3)
    np.testing.assert_allclose(a.lpr, fit.solver.lpr(phi[atoms], ALPHA), rtol=1e-8)
    with pytest.raises(InputError, match="at least 2"):
        one = np.zeros_like(fit.train_mask)
        one[0] = True
        committee_check(phi, ds.structure_index, ds.energies, one, ALPHA)


def test_large_local_errors_sit_on_low_lpr_atoms(emt):
    ds, _, fit, _ = emt
    res = pipeline.evaluate(fit, ALPHA)
    check = local_error_check(res.lpr, res.local_energy - ds.true_local_energies)
    assert check.spearman > 0.3
    assert check.frac_large_low > 2 * check.frac_large_rest
    assert check.low_lpr.sum() == round(0.05 * ds.n_atoms)


def test_local_error_check_on_constructed_values():
    lpr = np.arange(1.0, 101.0)
    check = local_error_check(lpr, -1.0 / lpr, low_fraction=0.05, large_quantile=0.9)
    assert check.spearman == pytest.approx(1.0)
    assert check.frac_large_low == 1.0
    assert check.frac_large_rest == pytest.approx(5 / 95)
    with pytest.raises(InputError):
        local_error_check(lpr, lpr[:-1])


def test_tradeoff_rigidity_rises_accuracy_falls(emt):
    ds, _, fit, phi = emt
    alphas = np.logspace(-6, 2, 9)
    tr = tradeoff(fit, alphas)
    assert np.all(np.diff(tr.median_lpr) > 0)
    assert tr.rmse_per_atom[-1] > 2 * tr.rmse_per_atom.min()
    # RMSE at one alpha against a ridge model fitted independently on the training frames
    train_atoms = fit.train_mask[ds.structure_index]
    remap = np.cumsum(fit.train_mask) - 1
    model = fit_ridge(phi[train_atoms], remap[ds.structure_index[train_atoms]],
                      ds.energies[fit.train_mask], alphas[3], scale=fit.scale)
    pred = model.predict_total(phi, ds.structure_index, len(ds.frames))
    test = ~fit.train_mask
    ref = np.sqrt(np.mean(((pred - ds.energies)[test] / ds.frame_sizes[test]) ** 2))
    assert tr.rmse_per_atom[3] == pytest.approx(ref, rel=1e-6)
    assert tr.n_test_frames == test.sum()


def test_lcpr_per_block_against_definition(emt):
    ds, desc, fit, phi = emt
    G, _ = _explicit_inverse(fit, phi, ALPHA)
    blocks = fit_blocks(fit, desc)
    pairs = {k: v for k, v in blocks.items() if "-" in k}
    covered = np.sort(np.concatenate([*pairs.values(), blocks["baseline"]]))
    np.testing.assert_array_equal(covered, np.arange(fit.solver.n_features))
    atom = int(np.argmin(pipeline.evaluate(fit, ALPHA).lpr))
    x = phi[atom] / fit.scale
    comp = component_rigidity(fit.solver, phi[atom], ALPHA, blocks)
    assert not comp.present.all()  # its environment lacks some species pairs
    for name, value, present in zip(comp.names, comp.lcpr, comp.present, strict=True):
        xm = np.zeros_like(x)
        xm[blocks[name]] = x[blocks[name]]
        assert present == np.any(xm != 0)
        if not present:
            assert value > 1e300  # zero descriptor: finite, huge
            continue
        assert value == pytest.approx(1 / (xm @ G @ xm), rel=1e-6), name
    assert comp.lpr == pytest.approx(1 / (x @ G @ x), rel=1e-6)
    # the block of all columns is the LPR itself
    whole = component_rigidity(fit.solver, phi[atom], ALPHA, {"all": np.arange(x.size)})
    assert whole.lcpr[0] == pytest.approx(comp.lpr, rel=1e-10)
    # triangle inequality in the G norm over a partition of the columns
    part = {**pairs, "baseline": blocks["baseline"]}
    c = component_rigidity(fit.solver, phi[atom], ALPHA, part)
    assert c.lpr ** -0.5 <= np.sum(c.lcpr ** -0.5) * (1 + 1e-12)


def test_lcpr_large_alpha_limit(emt):
    _, desc, fit, phi = emt
    alpha = 1e10
    blocks = fit_blocks(fit, desc)
    comp = component_rigidity(fit.solver, phi[0], alpha, blocks)
    for name, value in zip(comp.names, comp.lcpr, strict=True):
        norm2 = np.sum((phi[0, blocks[name]] / fit.scale) ** 2)
        if norm2 > 0:
            assert value * norm2 / alpha == pytest.approx(1.0, rel=1e-6), name


def test_fit_blocks_rejects_sparse_kernel(emt):
    ds, desc, fit, _ = emt
    sk = pipeline.prepare(ds, desc, fit.train_mask, pipeline.ModelSpec(kind="sparse-kernel",
                                                                       n_sparse=20))
    with pytest.raises(InputError, match="linear model"):
        fit_blocks(sk, desc)


def test_pr_table(emt):
    ds, _, fit, phi = emt
    res = pipeline.evaluate(fit, ALPHA)
    test = np.flatnonzero(~fit.train_mask)
    table = pr_table(ds, res.pr, frames=test, lpr=res.lpr, train_mask=fit.train_mask)
    assert list(table.columns) == ["frame", "name", "group", "atoms", "composition", "PR",
                                   "min_LPR", "median_LPR", "train"]
    assert len(table) == test.size and not table["train"].any()
    assert np.all(np.diff(table["PR"]) >= 0)
    G, _ = _explicit_inverse(fit, phi, ALPHA)
    row = table.iloc[0]
    i = int(row["frame"])
    xa = phi[ds.structure_index == i].mean(axis=0) / fit.scale
    assert row["PR"] == pytest.approx(1 / (xa @ G @ xa), rel=1e-6)
    assert row["composition"] == ds.frames[i].get_chemical_formula()
    assert row["atoms"] == len(ds.frames[i])
    assert row["min_LPR"] == pytest.approx(res.lpr[ds.structure_index == i].min())
    with pytest.raises(InputError, match="PR table"):
        pr_table(ds, res.pr[:-1])


def test_block_kinds_partition_the_features_and_the_explanation_holds(emt):
    ds, desc, fit, phi = emt
    G, _ = _explicit_inverse(fit, phi, ALPHA)
    blocks = fit_blocks(fit, desc)
    kinds = {k: [n for n in blocks if block_kind(n) == k] for k in BLOCK_KINDS}
    assert kinds["composition baseline"] == ["baseline"]
    assert kinds["species pair"] and kinds["angular channel"]
    d = fit.solver.n_features
    for kind in ("species pair", "angular channel"):  # each kind (+ baseline) partitions
        cols = np.concatenate([blocks[n] for n in [*kinds[kind], "baseline"]])
        np.testing.assert_array_equal(np.sort(cols), np.arange(d))
    # the two kinds cross: every pair block meets every angular block
    for p in kinds["species pair"]:
        for a in kinds["angular channel"]:
            assert np.intersect1d(blocks[p], blocks[a]).size > 0
    # the explanation's identity: 1/LPR = sum 1/LCPR_c + cross terms, exactly
    atom = int(np.argmin(pipeline.evaluate(fit, ALPHA).lpr))
    x = phi[atom] / fit.scale
    for kind in ("species pair", "angular channel"):
        names = [*kinds[kind], "baseline"]
        comp = component_rigidity(fit.solver, phi[atom], ALPHA, {n: blocks[n] for n in names})
        parts = []
        for n in names:
            xm = np.zeros_like(x)
            xm[blocks[n]] = x[blocks[n]]
            parts.append(xm)
        cross = sum(parts[i] @ G @ parts[j] for i in range(len(parts))
                    for j in range(len(parts)) if i != j)
        inv_sum = np.sum(1 / comp.lcpr[comp.present])
        assert 1 / comp.lpr == pytest.approx(inv_sum + cross, rel=1e-6)
        # and here the cross terms matter: summing inverse LCPRs is not the inverse LPR
        assert abs(cross) > 1e-3 * inv_sum
        assert comp.lpr ** -0.5 <= np.sum(comp.lcpr[comp.present] ** -0.5) * (1 + 1e-12)
    assert "orthogonal" in LCPR_BLOCKS_EXPLANATION and "never" in LCPR_BLOCKS_EXPLANATION


def test_inverse_lcprs_add_up_when_blocks_are_orthogonal():
    from lprviz.rigidity import RigiditySolver

    rng = np.random.default_rng(0)
    # two column blocks that no training row mixes: X^T X is block diagonal
    X = np.zeros((12, 5))
    X[:6, :2] = rng.normal(size=(6, 2))
    X[6:, 2:] = rng.normal(size=(6, 3))
    solver = RigiditySolver.from_atoms(X, np.arange(12), scale=1.0)
    x = rng.normal(size=(1, 5))
    comp = component_rigidity(solver, x, 1e-3, {"a": np.arange(2), "b": np.arange(2, 5)})
    assert 1 / comp.lpr == pytest.approx(np.sum(1 / comp.lcpr), rel=1e-10)


def test_block_kind_names():
    assert block_kind("l=3") == "angular channel"
    assert block_kind("Cu-Au") == "species pair"
    assert block_kind("baseline") == "composition baseline"
