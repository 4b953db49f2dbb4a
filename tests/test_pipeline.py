"""Tests of lprviz.pipeline: prepare/evaluate against independent formulas, real-data trend."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule
from reference_data import emt_subset, mlearn_dir
from skmatter.metrics import local_prediction_rigidity as skmatter_lpr

from lprviz import datasets, rigidity
from lprviz.errors import InputError
from lprviz.features import SoapHypers, compute_soap
from lprviz.models import fit_ridge
from lprviz.pipeline import (
    ModelSpec,
    alpha_grid,
    coordination,
    evaluate,
    evaluate_features,
    lpr_sweep,
    prepare,
    scaled_norm2,
)
from lprviz.rigidity import RigiditySolver, sfactor

HYPERS = SoapHypers(cutoff=4.5, max_radial=4, max_angular=3)


@pytest.fixture(scope="module")
def emt():
    """A 60-frame subset of the shipped EMT set (every group), with descriptors."""
    return emt_subset(60, 40, HYPERS, seed=0)


def _per_frame(values, structure_index, frames):
    return [values[structure_index == a] for a in frames]


def test_linear_lpr_equals_scikit_matter(emt):
    data, desc, train = emt
    fit = prepare(data, desc, train, ModelSpec(kind="linear", baseline=False))
    res = evaluate(fit, 1e-4)
    frames = np.arange(len(data.frames))
    ref, rank_diff = skmatter_lpr(
        _per_frame(desc.values, desc.structure_index, frames[train]),
        _per_frame(desc.values, desc.structure_index, frames),
        alpha=1e-4,
    )
    np.testing.assert_allclose(res.lpr, np.concatenate(ref), rtol=1e-5)  # float32 Fit
    assert res.rank_diff == rank_diff == 0
    solver = RigiditySolver.from_atoms(
        desc.values[train[desc.structure_index]], desc.structure_index[train[desc.structure_index]]
    )
    np.testing.assert_array_equal(res.undetermined, solver.undetermined(desc.values, 1e-4))


def test_local_energy_pr_and_totals_equal_explicit_ridge(emt):
    data, desc, train = emt
    alpha = 1e-5
    fit = prepare(data, desc, train, ModelSpec(kind="linear", baseline=True))
    res = evaluate(fit, alpha)
    # explicit model: descriptor columns + scale * one-hot, mean rows / scale
    idx = desc.structure_index
    atom_train = train[idx]
    s = sfactor(desc.values[atom_train])
    phi = np.hstack([desc.values, s * (desc.atom_numbers[:, None] == np.array(desc.species))])
    rows = np.stack([phi[idx == a].mean(axis=0) for a in range(len(data.frames))]) / s
    y = data.energies / data.frame_sizes
    A = rows[train].T @ rows[train] + alpha * np.eye(phi.shape[1])
    w = np.linalg.solve(A, rows[train].T @ y[train])
    # Fit stores float32 projections: local energies to ~1e-6 eV, LPR to a relative 1e-5
    np.testing.assert_allclose(res.local_energy, phi @ w / s, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res.energy_pred, np.bincount(idx, weights=res.local_energy))
    pr = 1.0 / np.einsum("ij,ji->i", rows, np.linalg.solve(A, rows.T))
    np.testing.assert_allclose(res.pr, pr, rtol=1e-5)
    lpr = 1.0 / np.einsum("ij,ji->i", phi / s, np.linalg.solve(A, (phi / s).T))
    np.testing.assert_allclose(res.lpr, lpr, rtol=1e-5)
    # models.fit_ridge gives the same local energies
    _, train_idx = np.unique(idx[atom_train], return_inverse=True)
    model = fit_ridge(phi[atom_train], train_idx, data.energies[train], alpha, scale=s)
    np.testing.assert_allclose(res.local_energy, model.predict_local(phi), rtol=1e-6, atol=1e-6)
    # the model fits: test-frame error per atom well below the spread of energies per atom
    # (40 random training frames of a set whose groups range from bulk to clusters)
    err = res.energy_error / data.frame_sizes
    assert np.sqrt(np.mean(err[~train] ** 2)) < 0.3 * np.std(y)
    np.testing.assert_allclose(res.local_error, res.local_energy - data.true_local_energies)
    assert res.train_mask is fit.train_mask and res.alpha == alpha


def test_new_alpha_does_not_refactorise(emt, monkeypatch):
    data, desc, train = emt
    fit = prepare(data, desc, train, ModelSpec(kind="linear"))
    first = evaluate(fit, 1e-3)

    def forbidden(*args, **kwargs):
        raise AssertionError("refactorised")

    for name in ("eigh", "solve", "inv", "pinv", "cholesky"):
        monkeypatch.setattr(np.linalg, name, forbidden)
    lprs = [evaluate(fit, a).lpr for a in (1e-6, 1e-4, 1e-3, 1e-1)]
    np.testing.assert_allclose(lprs[2], first.lpr, rtol=1e-12)
    # LPR increases with alpha (docs/science.md §7.5)
    # (float32 projections: to their 1e-5 bound)
    assert all(np.all(hi >= lo * (1 - 1e-5)) for lo, hi in zip(lprs, lprs[1:], strict=False))


@pytest.mark.parametrize("alpha", [1e-8, 1e-5, 1e-2, 1e2])
def test_thin_fit_equals_full_projections(emt, monkeypatch, alpha):
    """Few training frames (dual route): the thin fit (r coordinates + out-of-span norm per
    atom) gives what every atom's full d-column projections give, training atoms included,
    as does the same model's full fit on the primal route."""
    data, desc, train = emt
    train_atoms = np.flatnonzero(train[desc.structure_index])[:50]
    some = np.concatenate([train_atoms, [0, len(desc.values) - 1]])

    def outputs(fit):
        return (evaluate(fit, alpha), scaled_norm2(fit), lpr_sweep(fit, [alpha, 1.0]),
                fit.atom_projections(some))

    thin = prepare(data, desc, train, ModelSpec())
    assert thin.thin and thin.solver.route == "dual"
    assert thin.projections.shape[1] == thin.solver.n_structures
    assert thin.projections.nbytes * 10 < len(desc.values) * thin.solver.n_features * 4
    dual_out = outputs(thin)  # (the route is read per call: before forcing the primal one)
    monkeypatch.setattr(rigidity, "_DUAL_SHARE", 0.0)
    primal = prepare(data, desc, train, ModelSpec())
    assert not primal.thin and primal.solver.route == "primal"
    # reference: full projections of every atom on the primal solver
    solver = primal.solver
    P = solver.projections(primal.model_features(desc.values, desc.atom_numbers))
    lpr, undetermined = solver.lpr_and_undetermined_from_projections(P, alpha)
    local = P @ (solver.eigvecs.T @ solver.solve(primal.xty, alpha))
    rtol = 1e-5  # float32 projections (measured <= 3e-7)
    for res, norm2, sweep, P_some in (dual_out, outputs(primal)):
        np.testing.assert_allclose(res.lpr, lpr, rtol=rtol)
        np.testing.assert_array_equal(res.undetermined, undetermined)
        np.testing.assert_allclose(res.local_energy, local, rtol=0,
                                   atol=1e-5 * np.abs(local).max())
        np.testing.assert_allclose(norm2, np.einsum("ij,ij->i", P, P), rtol=rtol)
        np.testing.assert_allclose(sweep, solver.lpr_sweep_from_projections(P, [alpha, 1.0]),
                                   rtol=rtol)
        # full-basis projections of some atoms: same Gram (null-space bases may differ by a
        # rotation; the full fit stores them as float32)
        P_some = np.asarray(P_some, dtype=np.float64)
        np.testing.assert_allclose(P_some @ P_some.T, P[some] @ P[some].T, rtol=1e-5,
                                   atol=1e-6)
    np.testing.assert_allclose(dual_out[0].pr, evaluate(primal, alpha).pr, rtol=1e-6)


@pytest.mark.parametrize("route", ["dual", "primal"])
def test_alpha_grid_equals_per_alpha_evaluate(emt, monkeypatch, route):
    """alpha_grid (one pass for 41 slider positions and alpha = 0) gives what evaluate gives
    at each of them, training atoms included, on the thin (dual) and full (primal) fit;
    alphas off the grid still take their own pass."""
    data, desc, train = emt
    if route == "primal":
        monkeypatch.setattr(rigidity, "_DUAL_SHARE", 0.0)
    fit = prepare(data, desc, train, ModelSpec())
    assert fit.thin == (route == "dual") and fit.projections.dtype == np.float32
    alphas = [0.0, *10 ** np.arange(-8, 2.01, 0.25)]
    grid = alpha_grid(fit, alphas)
    assert grid.lpr.dtype == np.float32 and grid.lpr.shape == (42, len(desc.values))
    assert grid.undetermined[0].any()  # alpha = 0: the flags are exercised
    P64 = fit.atom_projections(np.arange(len(desc.values))).astype(np.float64)
    for alpha in alphas:
        ref, got = evaluate(fit, alpha), evaluate(fit, alpha, grid=grid)
        # Both sum float32 squares, in different orders (a one-column product against a
        # 41-column one): measured <= 1.3e-6 apart, each <= 1e-6 from float64 projections.
        np.testing.assert_allclose(got.lpr, ref.lpr, rtol=3e-6)
        np.testing.assert_array_equal(got.undetermined, ref.undetermined)
        np.testing.assert_allclose(got.local_energy, ref.local_energy, rtol=0, atol=2e-6)
        np.testing.assert_allclose(got.energy_pred, ref.energy_pred, rtol=0, atol=5e-5)
        np.testing.assert_allclose(got.pr, ref.pr, rtol=1e-10)
        np.testing.assert_allclose(got.data_share, ref.data_share, rtol=0, atol=1e-5)
        if not fit.thin:  # against float64 projections of the same atoms
            lpr64 = fit.solver.lpr_from_projections(P64, alpha)
            np.testing.assert_allclose(got.lpr, lpr64, rtol=2e-6)
    off = evaluate(fit, 2e-4, grid=grid)  # not a grid alpha: its own pass
    np.testing.assert_allclose(off.lpr, evaluate(fit, 2e-4).lpr, rtol=1e-12)
    with pytest.raises(InputError, match="grid"):
        evaluate(prepare(data, desc, train, ModelSpec()), 1e-4, grid=grid)


def test_float32_descriptors_are_projected_in_float32_within_bound(emt, monkeypatch):
    """The app's float32 descriptors (linear model, primal route) are projected by a float32
    product: LPR within the documented bound of float64 descriptors, local energies too."""
    import dataclasses

    from lprviz import pipeline

    data, desc, train = emt
    monkeypatch.setattr(rigidity, "_DUAL_SHARE", 0.0)
    seen = []
    real = pipeline._projections
    monkeypatch.setattr(pipeline, "_projections",
                        lambda solver, base, extra: seen.append(base.dtype) or
                        real(solver, base, extra))
    d32 = dataclasses.replace(desc, values=desc.values.astype(np.float32))
    f32, f64 = (prepare(data, d, train, ModelSpec()) for d in (d32, desc))
    assert seen == [np.float32, np.float64] and f32.solver.route == "primal"
    for alpha, rtol in ((1e-8, 1e-4), (1e-4, 1e-5), (1e-1, 1e-5), (1e2, 1e-5)):
        a, b = evaluate(f32, alpha), evaluate(f64, alpha)
        np.testing.assert_allclose(a.lpr, b.lpr, rtol=rtol)
        np.testing.assert_allclose(a.local_energy, b.local_energy, rtol=0, atol=3e-5)


@pytest.mark.parametrize("route", ["dual", "primal"])
def test_float32_descriptors_give_the_sums_of_their_float64_copy(emt, monkeypatch, route):
    """prepare converts float32 descriptors block by block (many blocks here): the training
    sums, scale, structure rows and (dual route) thin projections are those of the float64
    copy of the same values, bit for bit (the conversion is exact; a distributed run relies
    on rows and norms that do not depend on the blocks)."""
    import dataclasses

    from lprviz import pipeline

    data, desc, train = emt
    monkeypatch.setattr(pipeline, "_CHUNK", 37)  # blocks of whole frames, ~37 atoms
    if route == "primal":
        monkeypatch.setattr(rigidity, "_DUAL_SHARE", 0.0)
    v32 = desc.values.astype(np.float32)
    d32 = dataclasses.replace(desc, values=v32)
    d64 = dataclasses.replace(desc, values=v32.astype(np.float64))
    f32, f64 = (prepare(data, d, train, ModelSpec()) for d in (d32, d64))
    assert f32.solver.route == route and f32.thin == (route == "dual")
    assert f32.scale == f64.scale
    np.testing.assert_array_equal(f32.solver.gram, f64.solver.gram)
    np.testing.assert_array_equal(f32.xty, f64.xty)
    np.testing.assert_array_equal(f32.structure_projections, f64.structure_projections)
    if route == "dual":
        np.testing.assert_array_equal(f32.projections, f64.projections)
        np.testing.assert_array_equal(f32.residual2, f64.residual2)
    # against the rows of the whole array at once (an independent grouping)
    rows, norm2 = pipeline._structure_rows(
        v32, desc.structure_index, np.bincount(desc.structure_index, minlength=len(data.frames)))
    np.testing.assert_allclose(rows, rigidity.structure_features(
        v32.astype(np.float64), desc.structure_index, len(data.frames)), rtol=1e-13, atol=0)
    np.testing.assert_allclose(norm2, np.sum(v32.astype(np.float64) ** 2, axis=1), rtol=1e-13)


def test_structure_rows_of_atoms_out_of_frame_order():
    """Atoms not in frame order are taken as one block: the rows are still the means."""
    from lprviz import pipeline

    rng = np.random.default_rng(1)
    index = rng.permutation(np.repeat(np.arange(5), [3, 1, 4, 2, 2]))
    values = rng.normal(size=(len(index), 6)).astype(np.float32)
    rows, norm2 = pipeline._structure_rows(values, index, np.bincount(index, minlength=6))
    means = [values[index == f].astype(np.float64).mean(axis=0) for f in range(5)]
    np.testing.assert_allclose(rows, np.vstack([*means, np.zeros(6)]), rtol=1e-12)
    np.testing.assert_allclose(norm2, np.sum(values.astype(np.float64) ** 2, axis=1),
                               rtol=1e-12)


@pytest.mark.parametrize("baseline", [True, False])
def test_evaluate_features_equals_evaluate_on_the_same_atoms(emt, baseline):
    """A block of raw model features (here some training and some test frames of the
    dataset itself) gets what evaluate gives those atoms, at every alpha of one call."""
    data, desc, train = emt
    fit = prepare(data, desc, train, ModelSpec(baseline=baseline))
    frames = np.concatenate([np.flatnonzero(train)[:3], np.flatnonzero(~train)[:5]])
    atoms = np.concatenate([np.flatnonzero(desc.structure_index == f) for f in frames])
    block_index = np.repeat(np.arange(frames.size), np.asarray(data.frame_sizes)[frames])
    phi = fit.model_features(desc.values[atoms], desc.atom_numbers[atoms])
    alphas = [1e-8, 1e-4, 1.0]
    for alpha, got in zip(alphas, evaluate_features(fit, phi, block_index, alphas),
                          strict=True):
        ref = evaluate(fit, alpha)
        np.testing.assert_allclose(got.lpr, ref.lpr[atoms], rtol=1e-5)
        np.testing.assert_array_equal(got.undetermined, ref.undetermined[atoms])
        np.testing.assert_allclose(got.local_energy, ref.local_energy[atoms], rtol=0,
                                   atol=1e-5 * np.abs(ref.local_energy).max())
        np.testing.assert_allclose(got.energy_pred, ref.energy_pred[frames], rtol=1e-5)
        np.testing.assert_allclose(got.pr, ref.pr[frames], rtol=1e-6)
        np.testing.assert_allclose(got.data_share, ref.data_share[atoms], rtol=1e-5, atol=1e-7)
        assert got.rank_diff == ref.rank_diff and not got.train_mask.any()
    with pytest.raises(InputError, match="alpha"):
        next(evaluate_features(fit, phi, block_index, [-1.0]))
    # the same features in two column blocks (the baseline's one-hot columns not stacked)
    core, extra = fit.model_feature_blocks(desc.values[atoms], desc.atom_numbers[atoms])
    assert (extra is not None) == baseline
    np.testing.assert_array_equal(core if extra is None else np.hstack([core, extra]), phi)
    for got, ref in zip(evaluate_features(fit, core, block_index, alphas, baseline=extra),
                        evaluate_features(fit, phi, block_index, alphas), strict=True):
        for name in ("lpr", "local_energy", "energy_pred", "pr", "data_share"):
            np.testing.assert_allclose(getattr(got, name), getattr(ref, name), rtol=1e-10,
                                       atol=1e-12, err_msg=name)
        np.testing.assert_array_equal(got.undetermined, ref.undetermined)
    with pytest.raises(InputError, match="one row per atom"):
        next(evaluate_features(fit, core, block_index, alphas, baseline=np.ones((2, 3))))


def test_sparse_kernel_matches_solver_on_model_features(emt):
    data, desc, train = emt
    spec = ModelSpec(kind="sparse-kernel", baseline=True, n_sparse=80)
    fit = prepare(data, desc, train, spec)
    assert fit.nystrom is not None and len(fit.nystrom.active_index) == 80
    res = evaluate(fit, 1e-4)
    phi = fit.model_features(desc.values, desc.atom_numbers)
    assert phi.shape[1] == fit.nystrom.n_features + len(desc.species)
    atom_train = train[desc.structure_index]
    solver = RigiditySolver.from_atoms(
        phi[atom_train], desc.structure_index[atom_train], scale=fit.scale
    )
    np.testing.assert_allclose(res.lpr, solver.lpr(phi, 1e-4), rtol=1e-5)  # float32 Fit
    assert np.all(np.isfinite(res.local_energy)) and np.all(res.lpr > 0)


def test_more_training_frames_never_lower_lpr_at_fixed_scale(emt):
    data, desc, train = emt
    more = train.copy()
    more[np.flatnonzero(~train)[:8]] = True
    fit_a = prepare(data, desc, train, ModelSpec(kind="linear"))
    fit_b = prepare(data, desc, more, ModelSpec(kind="linear"), scale=fit_a.scale)
    a, b = evaluate(fit_a, 1e-4).lpr, evaluate(fit_b, 1e-4).lpr
    assert np.all(b >= a * (1 - 1e-9))
    assert np.any(b > 1.5 * a)


def test_input_errors(emt):
    data, desc, train = emt
    with pytest.raises(InputError, match="train_mask"):
        prepare(data, desc, train[:-1], ModelSpec())
    with pytest.raises(InputError, match="no training frame"):
        prepare(data, desc, np.zeros_like(train), ModelSpec())
    no_energy = data.subset(np.arange(len(data.frames)))
    no_energy.energies = no_energy.energies.copy()
    no_energy.energies[np.flatnonzero(train)[0]] = np.nan
    with pytest.raises(InputError, match="no energy"):
        prepare(no_energy, desc, train, ModelSpec())
    with pytest.raises(InputError, match="model"):
        ModelSpec(kind="neural")
    with pytest.raises(InputError, match="rows"):
        prepare(data.subset(np.arange(5)), desc, train[:5], ModelSpec())


def test_coordination():
    cu = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    water = molecule("H2O")
    coord = coordination([cu, si, water], 2.7)
    np.testing.assert_array_equal(coord[:8], 12)  # fcc nn distance 2.55 A
    np.testing.assert_array_equal(coord[8:16], 4)  # diamond nn distance 2.35 A
    np.testing.assert_array_equal(coord[16:], [2, 2, 2])  # H-H 1.5 A is within 2.7 A
    np.testing.assert_array_equal(coordination([water], 1.1), [2, 1, 1])


def _mlearn_si() -> datasets.Dataset:
    """mlearn Si (train + test splits): the fetched copy, or the reference files (else skip)."""
    info = {i.name: i for i in datasets.list_available()}
    if "mlearn-Si" in info and info["mlearn-Si"].cached:
        return datasets.load("mlearn-Si")
    folder = mlearn_dir()
    parts = [datasets.load(folder / f"Si_{split}.json") for split in ("training", "test")]
    frames = parts[0].frames + parts[1].frames
    return datasets.Dataset(
        name="mlearn-Si",
        frames=frames,
        energies=np.concatenate([p.energies for p in parts]),
        has_energy=np.concatenate([p.has_energy for p in parts]),
        groups=np.concatenate([p.groups for p in parts]),
        names=parts[0].names + parts[1].names,
        splits=np.array(["train"] * len(parts[0].frames) + ["test"] * len(parts[1].frames)),
    )


def test_real_si_surface_atoms_have_far_lower_lpr():
    """docs/science.md §10: trained on Elastic + AIMD-NVT, under-coordinated surface atoms have
    LPR two to three orders of magnitude below crystalline bulk test atoms (alpha 1e-4)."""
    data = _mlearn_si()
    desc = compute_soap(data.frames, SoapHypers(cutoff=5.0, max_radial=6, max_angular=4))
    train = (data.splits == "train") & np.isin(data.groups, ["Elastic", "AIMD-NVT"])
    assert train.sum() == 145
    fit = prepare(data, desc, train, ModelSpec(kind="linear", baseline=False))
    res = evaluate(fit, 1e-4)
    coord = coordination(data.frames, 2.7)
    group = data.groups[desc.structure_index]
    split = data.splits[desc.structure_index]
    surface = (group == "Surface") & (coord < 4)
    bulk_test = (split == "test") & (group == "Elastic") & (coord == 4)
    assert surface.sum() > 20 and bulk_test.sum() > 100
    ratio = np.median(res.lpr[bulk_test]) / np.median(res.lpr[surface])
    print(f"mlearn Si median LPR bulk/surface at alpha 1e-4: {ratio:.0f}x")
    assert ratio > 50
    assert np.median(res.lpr[surface]) < 0.1


def test_sparse_kernel_comparison_in_a_fixed_feature_space(emt):
    """Adding structures never lowers an LPR (docs/science.md §7.6) once B reuses A's feature map:
    A's scale *and* A's active environments. A fresh FPS for B breaks it."""
    data, desc, _ = emt
    spec = ModelSpec(kind="sparse-kernel", n_sparse=40)
    a_mask = np.arange(len(data.frames)) < 30
    b_mask = np.arange(len(data.frames)) < 40
    fit_a = prepare(data, desc, a_mask, spec)
    fit_b = prepare(data, desc, b_mask, spec, scale=fit_a.scale, nystrom=fit_a.nystrom)
    fresh = prepare(data, desc, b_mask, spec, scale=fit_a.scale)  # B's own active set
    for alpha in (1e-4, 1e-2):
        lpr_a = evaluate(fit_a, alpha).lpr
        assert (evaluate(fit_b, alpha).lpr / lpr_a).min() > 1 - 1e-9
        assert (evaluate(fresh, alpha).lpr / lpr_a).min() < 0.99  # why the map must be shared
    with pytest.raises(InputError, match="sparse-kernel"):
        prepare(data, desc, a_mask, ModelSpec(kind="linear"), nystrom=fit_a.nystrom)


def test_alpha_index_matches_the_slider_values_after_a_round_trip():
    """An alpha read back from text or a widget (relative change ~1e-16) finds its grid
    row; a neighbouring value does not (the one test AlphaGrid.index and the app's results
    cache share)."""
    from lprviz.pipeline import alpha_index

    alphas = np.logspace(-8, 2, 41)
    for i in (0, 17, 40):
        assert alpha_index(alphas, float(f"{alphas[i]:.17g}")) == i
        assert alpha_index(alphas, alphas[i] * (1 + 4e-16)) == i
        assert alpha_index(alphas, alphas[i] * (1 + 1e-9)) is None
    assert alpha_index(alphas, 3e-5) is None and alpha_index([], 1e-4) is None
