"""Force-trained models (docs/science.md §12): gradients, force Gram, solver, model, science.

Every check is against an independent reference: finite differences of ``compute_soap`` and
of the model's energy, explicit dense matrices, the constrained-loss curvature, the Bayesian
posterior of a linear model with energy and force observations, and the explicit kernel form
of the sparse model (its force rows from finite differences of kernel rows).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from lprviz import datasets
from lprviz.errors import InputError
from lprviz.features import SoapHypers, compute_soap
from lprviz.forces import (
    ForceGramBuilder,
    force_gram,
    has_forces,
    position_gradients,
    reference_forces,
)
from lprviz.models import fit_nystrom, fit_ridge
from lprviz.pipeline import ModelSpec, evaluate, prepare
from lprviz.rigidity import RigiditySolver

HYPERS = SoapHypers(cutoff=3.5, max_radial=2, max_angular=2)


@pytest.fixture(scope="module")
def small():
    """Ten emt-alloys frames of several kinds (one non-periodic cluster) and their SOAP."""
    ds = datasets.load("emt-alloys")
    groups = np.asarray(ds.groups)
    picks = []
    for g in ("bulk-alloy", "surface", "vacancy", "cluster", "interstitial"):
        picks += [int(i) for i in np.flatnonzero(groups == g)[:2]]
    sub = ds.subset(sorted(picks))
    desc = compute_soap(sub.frames, HYPERS, species=ds.species, cache=False)
    return sub, desc


def _soap_sum(atoms, species, nystrom=None):
    v = compute_soap([atoms], HYPERS, species=species, cache=False).values
    return (v if nystrom is None else nystrom.transform(v)).sum(axis=0)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("kernel", [False, True])
def test_position_gradients_equal_finite_differences(small, kernel):
    ds, desc = small
    nystrom = fit_nystrom(desc.values, 12, zeta=3) if kernel else None
    rng = np.random.default_rng(0)
    for frame in (0, 6):  # a periodic alloy and the non-periodic cluster
        atoms = ds.frames[frame].copy()
        assert atoms.pbc.all() == (frame == 0)
        (_, grad), = position_gradients([atoms], HYPERS, species=ds.species, nystrom=nystrom,
                                        cache=False)
        assert grad.shape == (len(atoms), 3, desc.values.shape[1] if not kernel else
                              nystrom.n_features)
        for j in rng.choice(len(atoms), 3, replace=False):
            for c in range(3):
                h = 1e-4
                plus, minus = atoms.copy(), atoms.copy()
                plus.positions[j, c] += h
                minus.positions[j, c] -= h
                fd = (_soap_sum(plus, ds.species, nystrom)
                      - _soap_sum(minus, ds.species, nystrom)) / (2 * h)
                np.testing.assert_allclose(grad[j, c], fd, rtol=1e-5,
                                           atol=1e-6 * np.abs(fd).max())


def test_gradient_cache_and_chunking_do_not_change_values(small):
    ds, _ = small
    frames = ds.frames[:5]
    one = dict(position_gradients(frames, HYPERS, species=ds.species, cache=False,
                                  chunk_atoms=10**6))
    small_chunks = dict(position_gradients(frames, HYPERS, species=ds.species,
                                           chunk_atoms=1, cache=True))
    cached = dict(position_gradients(frames, HYPERS, species=ds.species, cache=True))
    for i in range(5):
        np.testing.assert_allclose(small_chunks[i], one[i], rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(cached[i], small_chunks[i])


@pytest.mark.parametrize("block_rows", [50, 400])  # structures larger / smaller than a block
def test_force_gram_equals_one_gemm_of_stacked_rows(small, monkeypatch, block_rows):
    ds, _ = small
    import lprviz.forces as forces_mod

    d = len(next(position_gradients(ds.frames[:1], HYPERS, species=ds.species))[1][0, 0])
    monkeypatch.setattr(forces_mod, "_GEMM_BYTES", block_rows * 8 * d)
    result = force_gram(ds.frames, HYPERS, species=ds.species, n_extra_columns=2)
    G = np.vstack([-g.reshape(-1, g.shape[-1]) for _, g in
                   position_gradients(ds.frames, HYPERS, species=ds.species)])
    F = reference_forces(ds.frames).reshape(-1)
    d = G.shape[1]
    np.testing.assert_allclose(result.gram[:d, :d], G.T @ G, rtol=1e-10,
                               atol=1e-12 * np.abs(G.T @ G).max())
    np.testing.assert_allclose(result.gtf[:d], G.T @ F, rtol=1e-10,
                               atol=1e-12 * np.abs(G.T @ F).max())
    assert not result.gram[d:].any() and not result.gtf[d:].any()  # baseline does not move
    assert result.n_rows == G.shape[0] == 3 * sum(len(a) for a in ds.frames)


# ---------------------------------------------------------------- solver with force rows
def _random_problem(rng, n_structures, n_atoms, d):
    rows = rng.random((n_structures, d))
    G = rng.standard_normal((3 * n_atoms, d))
    return rows, G


def test_explicit_small_matrix_and_rank_rule_counts_force_rows():
    rng = np.random.default_rng(1)
    d, s, lam = 12, 1.7, 0.3
    rows, G = _random_problem(rng, 3, 2, d)  # 3 energies + 6 force rows < d
    atoms = rng.standard_normal((5, d))
    solver = RigiditySolver.from_rows(rows, scale=s, extra_gram=lam * G.T @ G,
                                      n_extra_rows=G.shape[0])
    assert solver.route == "primal"
    for alpha in (1e-6, 1e-2):
        H = (rows.T @ rows + lam * G.T @ G) / s**2 + alpha * np.eye(d)
        x = atoms / s
        explicit = 1.0 / np.einsum("ij,ji->i", x, np.linalg.solve(H, x.T))
        np.testing.assert_allclose(solver.lpr(atoms, alpha), explicit, rtol=1e-8)
    # Counting only the 3 structure rows would zero 6 real eigenvalues: a wrong LPR.
    wrong = RigiditySolver.from_rows(rows, scale=s, extra_gram=lam * G.T @ G)
    assert not np.allclose(wrong.lpr(atoms, 1e-6), solver.lpr(atoms, 1e-6), rtol=1e-2)
    assert solver.rank_diff(0.0) == d - 9


def test_with_structures_adds_energy_and_force_rows():
    rng = np.random.default_rng(2)
    d, s, lam = 8, 1.3, 0.5
    rows, G = _random_problem(rng, 4, 3, d)
    new_atoms = rng.random((5, d))  # one added structure of 5 atoms
    G_new = rng.standard_normal((15, d))
    base = RigiditySolver.from_rows(rows, scale=s, extra_gram=lam * G.T @ G,
                                    n_extra_rows=9)
    grown = base.with_structures(new_atoms, np.zeros(5, dtype=int),
                                 extra_gram=lam * G_new.T @ G_new, n_extra_rows=15)
    full = RigiditySolver.from_rows(np.vstack([rows, new_atoms.mean(0)]), scale=s,
                                    extra_gram=lam * (G.T @ G + G_new.T @ G_new),
                                    n_extra_rows=24)
    probe = rng.standard_normal((6, d))
    np.testing.assert_allclose(grown.lpr(probe, 1e-4), full.lpr(probe, 1e-4), rtol=1e-9)
    assert grown.n_extra_rows == 24 and grown.n_structures == 5


def test_lpr_is_curvature_of_constrained_loss_with_force_terms():
    rng = np.random.default_rng(3)
    d, s, lam, alpha = 9, 1.4, 0.7, 1e-3
    rows, G = _random_problem(rng, 5, 2, d)
    y, F = rng.standard_normal(5), rng.standard_normal(6)
    solver = RigiditySolver.from_rows(rows, scale=s, extra_gram=lam * G.T @ G,
                                      n_extra_rows=6)
    X, Gs = rows / s, G / s
    H = X.T @ X + lam * Gs.T @ Gs + alpha * np.eye(d)
    b = X.T @ y + lam * Gs.T @ F

    def loss(w):
        return (0.5 * np.sum((y - X @ w) ** 2) + 0.5 * lam * np.sum((F - Gs @ w) ** 2)
                + 0.5 * alpha * w @ w)

    def constrained_min(x, e):  # min loss s.t. x.w = e (KKT)
        kkt = np.block([[H, x[:, None]], [x[None, :], np.zeros((1, 1))]])
        return loss(np.linalg.solve(kkt, np.concatenate([b, [e]]))[:d])

    w_free = solver.solve(b, alpha)
    np.testing.assert_allclose(w_free, np.linalg.solve(H, b), rtol=1e-9)
    atoms = rng.random((4, d))
    lpr = solver.lpr(atoms, alpha)
    for k, atom in enumerate(atoms):
        x = atom / s
        e0, h = x @ w_free, 0.05
        curvature = (constrained_min(x, e0 + h) - 2 * constrained_min(x, e0)
                     + constrained_min(x, e0 - h)) / h**2
        assert curvature == pytest.approx(lpr[k], rel=1e-6)


def test_lpr_is_noise_over_posterior_variance_with_force_rows():
    # Energies observed with noise variance v, forces with v / lambda_F; prior w ~ N(0, v/alpha).
    rng = np.random.default_rng(4)
    d, s, lam, alpha, v = 7, 0.9, 0.25, 2e-3, 0.37
    rows, G = _random_problem(rng, 4, 2, d)
    solver = RigiditySolver.from_rows(rows, scale=s, extra_gram=lam * G.T @ G,
                                      n_extra_rows=6)
    A = np.vstack([rows, G]) / s  # all observation rows
    noise = np.concatenate([np.full(4, v), np.full(6, v / lam)])
    x = rng.standard_normal((5, d)) / s
    prior = v / alpha
    k = prior * A @ x.T
    K = prior * A @ A.T + np.diag(noise)
    var = prior * np.einsum("ij,ij->i", x, x) - np.einsum("ik,ik->k", k, np.linalg.solve(K, k))
    np.testing.assert_allclose(v / var, solver.lpr(x * s, alpha), rtol=1e-7)


# ---------------------------------------------------------------- model and pipeline
@pytest.fixture(scope="module")
def fits(small):
    ds, desc = small
    train = np.zeros(len(ds.frames), dtype=bool)
    train[::2] = True
    out = {}
    for kind in ("linear", "sparse-kernel"):
        spec = ModelSpec(kind=kind, n_sparse=15, baseline=True)
        plain = prepare(ds, desc, train, spec)
        forced = prepare(ds, desc, train, spec, scale=plain.scale, nystrom=plain.nystrom,
                         force_weight=0.5)
        out[kind] = (plain, forced)
    return out


@pytest.mark.parametrize("kind", ["linear", "sparse-kernel"])
def test_predicted_forces_are_minus_energy_gradient(small, fits, kind):
    ds, _ = small
    _, fit = fits[kind]
    alpha = 1e-3
    res = evaluate(fit, alpha)
    weights = fit.solver.solve(fit.xty, alpha)
    frame = 2
    atoms = ds.frames[frame].copy()
    start = int(ds.frame_starts[frame])

    def energy(a):
        v = compute_soap([a], HYPERS, species=ds.species, cache=False).values
        return float(fit.model_features(v, a.numbers).sum(axis=0) @ weights / fit.scale)

    assert energy(atoms) == pytest.approx(res.energy_pred[frame], rel=1e-5)
    for j in (0, 3):
        for c in range(3):
            h = 1e-4
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[j, c] += h
            minus.positions[j, c] -= h
            fd_force = -(energy(plus) - energy(minus)) / (2 * h)
            assert res.forces_pred[start + j, c] == pytest.approx(
                fd_force, rel=1e-4, abs=1e-6 * np.abs(res.forces_pred).max())


@pytest.mark.parametrize("kind", ["linear", "sparse-kernel"])
def test_force_rows_never_lower_lpr_at_fixed_scale(fits, kind):
    plain, forced = fits[kind]
    for alpha in (1e-6, 1e-3, 1e-1):
        lo, hi = evaluate(plain, alpha), evaluate(forced, alpha)
        assert np.all(hi.lpr >= lo.lpr * (1 - 1e-7))
        assert np.median(hi.lpr) > 1.5 * np.median(lo.lpr)  # forces carry real information
        assert lo.forces_pred is None and hi.forces_pred.shape == (len(hi.lpr), 3)


def test_forces_improve_the_fit_of_forces(small, fits):
    ds, _ = small
    plain, forced = fits["linear"]
    train_atoms = forced.train_mask[ds.structure_index]
    res = evaluate(forced, 1e-4)
    ref = reference_forces(ds.frames)
    err = np.sqrt(np.mean((res.forces_pred - ref)[train_atoms] ** 2))
    # an energy-only model's forces on the same atoms, from the same gradients
    w0 = plain.solver.solve(plain.xty, 1e-4)
    from lprviz.models import predict_forces

    f0 = predict_forces(forced.force_gradients, w0, plain.scale)
    err0 = np.sqrt(np.mean((f0 - ref)[train_atoms] ** 2))
    assert err < err0


def test_fit_ridge_with_forces_equals_pipeline(small, fits):
    ds, desc = small
    _, fit = fits["linear"]
    train = fit.train_mask
    sub = ds.subset(np.flatnonzero(train))
    phi = fit.model_features(desc.values[train[ds.structure_index]], sub.atom_numbers)
    gram = force_gram(sub.frames, HYPERS, species=ds.species, n_extra_columns=len(ds.species))
    model = fit_ridge(phi, sub.structure_index, sub.energies, 1e-3, scale=fit.scale,
                      forces=gram, force_weight=0.5)
    np.testing.assert_allclose(model.weights, fit.solver.solve(fit.xty, 1e-3), rtol=1e-6,
                               atol=1e-9 * np.abs(model.weights).max())


def test_sparse_kernel_with_forces_against_explicit_kernel_form(small):
    """LPR = 1 / k (K_AM^T K_AM + lambda D^T D + alpha s^2 K_MM)^-1 k^T with D the force rows
    of the kernel (finite differences of summed kernel rows), no Nyström features involved."""
    ds, desc = small
    sub = ds.subset([0, 2, 4])
    d_sub = compute_soap(sub.frames, HYPERS, species=ds.species, cache=False)
    train = np.ones(3, dtype=bool)
    spec = ModelSpec(kind="sparse-kernel", n_sparse=8, zeta=2, baseline=False)
    lam, alpha = 0.5, 1e-3
    fit = prepare(sub, d_sub, train, spec, force_weight=lam)
    ny = fit.nystrom
    assert ny.n_features == 8  # full rank K_MM: the explicit form below is exact

    def kernel_rows(atoms):
        v = compute_soap([atoms], HYPERS, species=ds.species, cache=False).values
        return ny.kernel(v)

    K_AM = np.vstack([kernel_rows(a).mean(axis=0) for a in sub.frames])
    D = []
    h = 1e-4
    for atoms in sub.frames:
        for j in range(len(atoms)):
            for c in range(3):
                plus, minus = atoms.copy(), atoms.copy()
                plus.positions[j, c] += h
                minus.positions[j, c] -= h
                D.append(-(kernel_rows(plus).sum(0) - kernel_rows(minus).sum(0)) / (2 * h))
    D = np.array(D)
    K_MM = (ny.active @ ny.active.T) ** 2
    H = K_AM.T @ K_AM + lam * D.T @ D + alpha * fit.scale**2 * K_MM
    k = ny.kernel(d_sub.values)
    explicit = 1.0 / np.einsum("ij,ji->i", k, np.linalg.solve(H, k.T))
    np.testing.assert_allclose(evaluate(fit, alpha).lpr, explicit, rtol=1e-5)


def test_frames_without_forces_notice_and_error(small):
    ds, desc = small
    stripped = copy.deepcopy(ds)  # the module's frames keep their forces
    for atoms in stripped.frames[:3]:
        atoms.calc.results.pop("forces", None)
        atoms.arrays.pop("forces", None)
    assert not has_forces(stripped.frames[0]) and has_forces(stripped.frames[3])
    train = np.zeros(len(ds.frames), dtype=bool)
    train[:5] = True
    fit = prepare(stripped, desc, train, force_weight=1.0)
    assert "2 of 5" not in fit.notice and "3 of 5 training frames have no forces" in fit.notice
    assert np.isnan(fit.forces[: int(stripped.frame_starts[3])]).all()
    assert evaluate(fit, 1e-3).notice == fit.notice
    only_missing = np.zeros(len(ds.frames), dtype=bool)
    only_missing[:3] = True
    with pytest.raises(InputError, match="no training frame has forces"):
        prepare(stripped, desc, only_missing, force_weight=1.0)
    with pytest.raises(InputError, match="force_weight"):
        prepare(ds, desc, train, force_weight=-1.0)


def test_builder_empty_and_sizes():
    b = ForceGramBuilder()
    assert b.result().n_rows == 0
    b.add(np.ones((2, 3, 4)), np.zeros((2, 3)))
    out = b.result(1)
    assert out.gram.shape == (5, 5) and out.n_rows == 6 and out.n_frames == 1


def test_kept_gradients_over_the_array_limit_are_refused_before_featomic(small, monkeypatch):
    ds, desc = small
    values_bytes = desc.values.nbytes  # the kept float32 gradients take 1.5x this
    monkeypatch.setenv("LPRVIZ_MAX_ARRAY_BYTES", str(int(1.2 * values_bytes)))
    import lprviz.forces as forces_mod

    def no_featomic(*args, **kwargs):
        raise AssertionError("featomic called before the limit check")

    monkeypatch.setattr(forces_mod, "_summed_gradients", no_featomic)
    train = np.ones(len(ds.frames), dtype=bool)
    with pytest.raises(InputError, match="force rows of .* LPRVIZ_MAX_ARRAY_BYTES"):
        prepare(ds, desc, train, ModelSpec(baseline=False), force_weight=1.0)


def test_real_si_forces_raise_surface_lpr_more_than_bulk():
    """README, Training on forces: on real Si, force rows raise the LPR of crystalline bulk
    test atoms a few times and that of under-coordinated surface atoms far more."""
    from reference_data import mlearn_dir

    from lprviz.pipeline import coordination

    folder = mlearn_dir()
    train = datasets.load(folder / "Si_training.json")
    test = datasets.load(folder / "Si_test.json")
    chosen = np.flatnonzero(np.isin(train.groups, ["Elastic", "AIMD-NVT"]))[::2]
    train = train.subset(chosen)
    hypers = SoapHypers()
    desc = compute_soap(train.frames, hypers)
    d_test = compute_soap(test.frames, hypers, species=desc.species)
    mask = np.ones(len(train.frames), dtype=bool)
    plain = prepare(train, desc, mask, ModelSpec(baseline=False), project=False)
    forced = prepare(train, desc, mask, ModelSpec(baseline=False), project=False,
                     force_weight=0.03)
    assert forced.scale == plain.scale
    lpr0 = plain.solver.lpr(d_test.values, 1e-4)
    lpr1 = forced.solver.lpr(d_test.values, 1e-4)
    assert np.all(lpr1 >= lpr0 * (1 - 1e-7))
    coord = coordination(test.frames, 2.7)
    group = np.asarray(test.groups)[d_test.structure_index]
    surface = (group == "Surface") & (coord < 4)
    bulk = (group == "Elastic") & (coord == 4)
    assert surface.sum() > 5 and bulk.sum() > 100
    raise_surface = np.median(lpr1[surface]) / np.median(lpr0[surface])
    raise_bulk = np.median(lpr1[bulk]) / np.median(lpr0[bulk])
    print(f"real Si, forces raise the median LPR: surface x{raise_surface:.0f}, "
          f"bulk x{raise_bulk:.1f}")
    assert 1 < raise_bulk < raise_surface and raise_surface > 10
