"""Tests of lprviz.rigidity against independent references (docs/science.md §7 and §8)."""

from __future__ import annotations

import contextlib

import mpmath
import numpy as np
import pytest
from skmatter.datasets import load_degenerate_CH4_manifold
from skmatter.metrics import componentwise_prediction_rigidity as sk_cpr
from skmatter.metrics import local_prediction_rigidity as sk_lpr

from lprviz import rigidity
from lprviz.errors import InputError
from lprviz.rigidity import (
    RigiditySolver,
    componentwise_prediction_rigidity,
    local_prediction_rigidity,
    lpr_sweep,
    sfactor,
    structure_features,
)


def random_structures(rng, n_structures, d, sizes=(1, 9), positive=True):
    """Per-structure descriptor arrays of random sizes (positive, SOAP-like by default)."""
    out = []
    for _ in range(n_structures):
        n = rng.integers(sizes[0], sizes[1] + 1)
        X = rng.random((n, d)) if positive else rng.standard_normal((n, d))
        out.append(X * rng.uniform(0.5, 2.0))
    return out


def scaled_rows(structures, scale, convention="mean"):
    reduce = np.mean if convention == "mean" else np.sum
    return np.vstack([reduce(X, axis=0) for X in structures]) / scale


def explicit_lpr(rows, x, alpha):
    """LPR by a direct dense solve with the scaled structure rows and scaled atoms."""
    H = rows.T @ rows + alpha * np.eye(rows.shape[1])
    return 1.0 / np.einsum("ij,ji->i", x, np.linalg.solve(H, x.T))


@pytest.fixture(scope="module")
def ch4():
    data = load_degenerate_CH4_manifold().data
    soap = data["SOAP_power_spectrum"][:11]
    bispectrum = data["SOAP_bispectrum"][:11]
    return soap, bispectrum


# ---------------------------------------------------------------- §7.1 parity with skmatter
@pytest.mark.parametrize(
    ("n_structures", "d", "alphas"),
    [
        (40, 12, [1e-8, 1e-4, 1e-2, 1.0]),  # full rank
        (8, 30, [1e-6, 1e-3, 1e-1]),  # fewer structures than features
    ],
)
def test_lpr_matches_skmatter(n_structures, d, alphas):
    rng = np.random.default_rng(n_structures * d)
    train = random_structures(rng, n_structures, d, sizes=(1, 12))
    test = random_structures(rng, 6, d, sizes=(1, 7))
    for alpha in alphas:
        ref, ref_rank = sk_lpr(train, test, alpha)
        ours, rank = local_prediction_rigidity(train, test, alpha)
        assert [len(a) for a in ours] == [len(a) for a in ref]
        np.testing.assert_allclose(np.concatenate(ours), np.concatenate(ref), rtol=1e-8)
        assert rank == ref_rank == 0


@pytest.mark.parametrize("alpha", [1e-8, 1e-4, 1e-1])
def test_cpr_matches_skmatter(alpha):
    rng = np.random.default_rng(7)
    comp_dims = np.array([5, 3, 8])
    train = random_structures(rng, 30, comp_dims.sum(), sizes=(1, 10))
    test = random_structures(rng, 5, comp_dims.sum(), sizes=(1, 6))
    ref_cpr, ref_lcpr, ref_rank = sk_cpr(train, test, alpha, comp_dims)
    cpr, lcpr, rank = componentwise_prediction_rigidity(train, test, alpha, comp_dims)
    np.testing.assert_allclose(cpr, ref_cpr, rtol=1e-8)
    np.testing.assert_allclose(np.vstack(lcpr), np.vstack(ref_lcpr), rtol=1e-8)
    assert [a.shape for a in lcpr] == [a.shape for a in ref_lcpr]
    assert rank == ref_rank


def test_cpr_single_component_is_pr_and_lpr():
    rng = np.random.default_rng(8)
    train = random_structures(rng, 20, 6)
    test = random_structures(rng, 4, 6)
    ref_cpr, ref_lcpr, _ = sk_cpr(train, test, 1e-3, np.array([6]))
    cpr, lcpr, _ = componentwise_prediction_rigidity(train, test, 1e-3)  # comp_dims=None
    np.testing.assert_allclose(cpr, ref_cpr, rtol=1e-8)
    lpr, _ = local_prediction_rigidity(train, test, 1e-3)
    np.testing.assert_allclose(np.vstack(lcpr)[:, 0], np.concatenate(lpr), rtol=1e-12)
    # PR of a whole structure = skmatter's single-component CPR (its mean row)
    solver = RigiditySolver.from_structures(train)
    rows = np.vstack([X.mean(axis=0) for X in test])
    np.testing.assert_allclose(solver.pr(rows, 1e-3), ref_cpr[:, 0], rtol=1e-8)


# ---------------------------------------------------------------- §8 reference numbers
CH4_REFERENCE = {
    1e-8: [
        [0.5258206663, 0.9363477713, 0.6885954049, 0.4829456774, 0.4180062447],
        [0.4313800164, 0.4726228316, 0.4307990421, 0.2763922687, 0.2570767157],
        [1.0013274848],
    ],
    1e-4: [
        [0.8095506145, 1.3463072005, 2.1074621606, 2.5248940307, 2.0645985475],
        [1.3762964837, 0.8946398755, 0.6033806366, 0.4264072719, 1.1530393466],
        [2.1274179364],
    ],
    1e-2: [
        [2.7764268237, 2.8987712463, 2.9765343921, 3.0047786674, 2.9835019677],
        [2.9175643071, 2.8155902578, 2.6882553578, 2.546515382, 2.8826223071],
        [2.973606247],
    ],
}


@pytest.mark.parametrize("alpha", sorted(CH4_REFERENCE))
def test_ch4_reference_lpr(ch4, alpha):
    soap, _ = ch4
    structures = [soap[0:5], soap[5:10], soap[10:11]]
    lpr, rank = local_prediction_rigidity(structures, structures, alpha)
    for ours, ref in zip(lpr, CH4_REFERENCE[alpha], strict=True):
        np.testing.assert_allclose(ours, ref, rtol=2e-9, atol=0)
    assert rank == 0
    assert lpr[2][0] >= 1.0  # the lone environment
    assert sfactor(soap) == pytest.approx(0.0069368520330008706, rel=1e-14)
    solver = RigiditySolver.from_structures(structures)
    assert solver.scale == pytest.approx(0.0069368520330008706, rel=1e-14)


def test_ch4_reference_cpr(ch4):
    # The shipped bispectrum block already has 12 columns: no PCA step is needed.
    soap, bispectrum = ch4
    assert bispectrum.shape[1] == 12
    both = np.column_stack([soap, bispectrum])
    structures = [both[0:5], both[5:10]]
    cpr, lcpr, rank = componentwise_prediction_rigidity(
        structures, structures, 1e-8, np.array([12, 12])
    )
    ref = np.array([[6.122397e-4, 6.125911e-4], [3.4576521e-3, 3.4699164e-3]])
    np.testing.assert_allclose(cpr, ref, rtol=2e-7)
    ref_cpr, ref_lcpr, ref_rank = sk_cpr(structures, structures, 1e-8, np.array([12, 12]))
    np.testing.assert_allclose(cpr, ref_cpr, rtol=1e-8)
    np.testing.assert_allclose(np.vstack(lcpr), np.vstack(ref_lcpr), rtol=1e-8)
    assert rank == ref_rank


# ---------------------------------------------------------------- §7.2 constrained curvature
@pytest.mark.parametrize(("n_structures", "alpha"), [(25, 1e-3), (6, 1e-2)])
def test_lpr_is_curvature_of_constrained_loss(n_structures, alpha):
    rng = np.random.default_rng(3)
    d = 10
    train = random_structures(rng, n_structures, d)
    solver = RigiditySolver.from_structures(train)
    X = scaled_rows(train, solver.scale)
    y = rng.standard_normal(n_structures)
    atoms = rng.random((4, d))
    H = X.T @ X + alpha * np.eye(d)

    def constrained_min(x, e):
        # min 1/2|y - Xw|^2 + alpha/2 |w|^2  subject to x.w = e  (KKT system)
        kkt = np.block([[H, x[:, None]], [x[None, :], np.zeros((1, 1))]])
        w = np.linalg.solve(kkt, np.concatenate([X.T @ y, [e]]))[:d]
        r = y - X @ w
        return 0.5 * r @ r + 0.5 * alpha * w @ w

    w_free = np.linalg.solve(H, X.T @ y)
    lpr = solver.lpr(atoms, alpha)
    for k, atom in enumerate(atoms):
        x = atom / solver.scale
        e0, h = x @ w_free, 0.05
        curvature = (
            constrained_min(x, e0 + h) - 2 * constrained_min(x, e0) + constrained_min(x, e0 - h)
        ) / h**2
        assert curvature == pytest.approx(lpr[k], rel=1e-6)
        # unconstrained minimum sits at e0: the constrained loss is not lower elsewhere
        assert constrained_min(x, e0) <= constrained_min(x, e0 + h)


# ---------------------------------------------------------------- §7.3 Bayesian reading
def test_lpr_is_noise_over_posterior_variance():
    rng = np.random.default_rng(4)
    d, noise_var, alpha = 9, 0.37, 2e-3
    train = random_structures(rng, 15, d)
    atoms = rng.random((5, d))
    solver = RigiditySolver.from_structures(train)
    X = scaled_rows(train, solver.scale)
    x = atoms / solver.scale
    # weight space: posterior covariance (X^T X / s^2 + lambda / s^2 I)^-1
    cov = np.linalg.inv(X.T @ X / noise_var + alpha / noise_var * np.eye(d))
    var_weight = np.einsum("ij,jk,ik->i", x, cov, x)
    # function space: condition the joint Gaussian of (y_train, y~_k) on y_train
    prior = noise_var / alpha
    k_train = prior * X @ x.T
    K = prior * X @ X.T + noise_var * np.eye(len(X))
    var_function = prior * np.einsum("ij,ij->i", x, x) - np.einsum(
        "ik,ik->k", k_train, np.linalg.solve(K, k_train)
    )
    lpr = solver.lpr(atoms, alpha)
    np.testing.assert_allclose(noise_var / var_weight, lpr, rtol=1e-9)
    np.testing.assert_allclose(noise_var / var_function, lpr, rtol=1e-7)


# ---------------------------------------------------------------- §7.4 sparse kernel
def test_sparse_kernel_lpr_equals_linear_lpr_on_nystrom_features():
    rng = np.random.default_rng(5)
    d, m, lam = 8, 6, 1e-3

    def kernel(A, B):  # polynomial kernel of the normalised dot product, zeta = 2
        A = A / np.linalg.norm(A, axis=1, keepdims=True)
        B = B / np.linalg.norm(B, axis=1, keepdims=True)
        return (A @ B.T) ** 2

    train = random_structures(rng, 20, d, positive=False)
    active = rng.standard_normal((m, d))
    atoms = rng.standard_normal((7, d))
    K_MM = kernel(active, active)
    K_AM = np.vstack([kernel(X, active).mean(axis=0) for X in train])
    k = kernel(atoms, active)
    kernel_lpr = 1.0 / np.einsum("ij,ji->i", k, np.linalg.solve(K_AM.T @ K_AM + lam * K_MM, k.T))
    e, U = np.linalg.eigh(K_MM)
    assert e.min() > 1e-8  # a strictly positive definite K_MM
    inv_sqrt = U @ np.diag(e**-0.5) @ U.T
    phi_train = [kernel(X, active) @ inv_sqrt for X in train]
    solver = RigiditySolver.from_structures(phi_train, scale=1.0)
    np.testing.assert_allclose(solver.lpr(k @ inv_sqrt, lam), kernel_lpr, rtol=1e-7)
    # raw kernel rows as "features" change the regulariser: a different answer
    raw = RigiditySolver.from_structures([kernel(X, active) for X in train], scale=1.0)
    assert not np.allclose(raw.lpr(k, lam), kernel_lpr, rtol=1e-2)


# ---------------------------------------------------------------- §7.5 alpha limits
@pytest.mark.parametrize("n_structures", [30, 5])
def test_large_alpha_limit_and_monotonic(n_structures):
    rng = np.random.default_rng(6)
    d = 12
    train = random_structures(rng, n_structures, d)
    atoms = rng.random((20, d))
    solver = RigiditySolver.from_structures(train)
    norm2 = np.sum((atoms / solver.scale) ** 2, axis=1)
    for alpha, tol in [(1e6, 1e-4), (1e9, 1e-7)]:
        ratio = solver.lpr(atoms, alpha) * norm2 / alpha
        np.testing.assert_allclose(ratio, 1.0, rtol=tol)
        assert np.all(ratio >= 1.0 - 1e-12)  # the data only add rigidity
    alphas = np.logspace(-8, 4, 25)
    sweep = solver.lpr_sweep(atoms, alphas)
    assert np.all(np.diff(sweep, axis=0) > 0)


# ---------------------------------------------------------------- §7.6 adding structures
@pytest.mark.parametrize("n_structures", [30, 4])
def test_adding_structures_never_lowers_lpr(n_structures):
    rng = np.random.default_rng(9)
    d = 10
    train = random_structures(rng, n_structures, d)
    more = random_structures(rng, 5, d)
    atoms = rng.random((40, d))
    before = RigiditySolver.from_structures(train)
    X_more = np.vstack(more)
    idx_more = np.repeat(np.arange(100, 105), [len(X) for X in more])  # any labels
    after = before.with_structures(X_more, idx_more)
    scratch = RigiditySolver.from_structures(train + more, scale=before.scale)
    assert after.scale == before.scale
    assert after.n_structures == scratch.n_structures == n_structures + 5
    after_list = before.with_structures(more)
    for alpha in [1e-8, 1e-4, 1e-1]:
        lpr_before = before.lpr(atoms, alpha)
        lpr_after = after.lpr(atoms, alpha)
        assert np.all(lpr_after >= lpr_before * (1 - 1e-10))
        assert np.mean(lpr_after > lpr_before * 1.001) > 0.5  # and generally raises them
        np.testing.assert_allclose(lpr_after, scratch.lpr(atoms, alpha), rtol=1e-8)
        np.testing.assert_allclose(after_list.lpr(atoms, alpha), lpr_after, rtol=1e-10)


# ---------------------------------------------------------------- §7.7 lone atom
@pytest.mark.parametrize("alpha", [0.0, 1e-8, 1e-3, 1.0])
def test_lone_atom_has_lpr_at_least_one(alpha):
    rng = np.random.default_rng(10)
    d = 15
    for n_structures in (40, 6):
        train = random_structures(rng, n_structures, d, sizes=(2, 8))
        lone = rng.random((1, d))
        solver = RigiditySolver.from_structures(train + [lone])
        assert solver.lpr(lone, alpha)[0] >= 1.0 - 1e-9
        assert not solver.undetermined(lone, alpha)[0]


# ---------------------------------------------------------------- §7.8 rank deficiency
def test_rank_deficiency_reported_and_finite():
    rng = np.random.default_rng(11)
    d, n_structures = 200, 40
    train = random_structures(rng, n_structures, d, sizes=(1, 6))
    test = random_structures(rng, 3, d)
    solver = RigiditySolver.from_structures(train)
    rows = np.vstack([X.mean(axis=0) for X in train])
    atoms = np.vstack(test)
    for alpha in [0.0, 1e-12]:
        _, ref_rank = sk_lpr(train, test, alpha)
        lpr, rank = local_prediction_rigidity(train, test, alpha)
        assert rank == solver.rank_diff(alpha) == ref_rank >= d - n_structures
        values = np.concatenate(lpr)
        assert np.all(np.isfinite(values)) and np.all(values > 0)
        # random atoms stick out of the span of 40 training rows; the rows do not
        assert np.all(solver.undetermined(atoms, alpha))
        assert not np.any(solver.undetermined(rows, alpha))
        assert np.all(np.isfinite(solver.pr(rows, alpha)))
        assert np.all(values < 1e-6)  # the alpha -> 0 limit of an undetermined atom is 0
    assert solver.rank_diff(1e-8) == 0
    # above the numerical resolution the regulariser sets a finite, meaningful LPR: the
    # same atoms are no longer flagged, and their LPR is the explicit formula's
    assert not np.any(solver.undetermined(atoms, 1e-4))
    A = (rows / solver.scale).T @ (rows / solver.scale) + 1e-4 * np.eye(d)
    x = atoms / solver.scale
    explicit = 1.0 / np.einsum("ij,ji->i", x, np.linalg.solve(A, x.T))
    np.testing.assert_allclose(solver.lpr(atoms, 1e-4), explicit, rtol=1e-8)
    # solve() keeps the minimum-norm ridge solution finite at alpha = 0
    X = rows / solver.scale
    y = rng.standard_normal(n_structures)
    w = solver.solve(X.T @ y, 0.0)
    np.testing.assert_allclose(w, np.linalg.pinv(X) @ y, rtol=1e-6, atol=1e-8)


def _mp_lpr(rows, atoms, alpha, digits=60):
    """LPR with mpmath at `digits` digits; alpha = 0 uses the pseudo-inverse on the span."""
    mpmath.mp.dps = digits
    X = mpmath.matrix(rows.tolist())
    H = X.T * X + mpmath.mpf(alpha) * mpmath.eye(rows.shape[1])
    out = []
    for atom in atoms:
        x = mpmath.matrix(atom.tolist())
        if alpha > 0:
            out.append(1 / (x.T * mpmath.lu_solve(H, x))[0])
        else:
            # pinv(X^T X) = X^T (X X^T)^-2 X for full-row-rank X: x^T pinv x = |G^-1 X x|^2
            z = mpmath.lu_solve(X * X.T, X * x)
            out.append(1 / (z.T * z)[0])
    return np.array([float(v) for v in out])


def test_ill_conditioned_rank_deficient_against_high_precision():
    rng = np.random.default_rng(12)
    d = 5
    base = rng.random(d)
    # three nearly collinear structures (condition number of X ~ 1e4), fewer than d features
    train = [np.vstack([base + 1e-4 * rng.standard_normal(d) for _ in range(n)]) for n in (2, 3, 4)]
    solver = RigiditySolver.from_structures(train, scale=1.0)
    rows = np.vstack([X.mean(axis=0) for X in train])
    in_span = np.array([[0.3, -0.2, 1.1]]) @ rows
    atoms = np.vstack([rng.random((3, d)), in_span, rows])
    alpha = 1e-12
    ref = _mp_lpr(rows, atoms, alpha)
    np.testing.assert_allclose(solver.lpr(atoms, alpha), ref, rtol=1e-6)
    # alpha = 1e-12 is above the resolution d * eps * e_max here: not singular (skmatter's
    # rank rule), so every LPR is defined (the mpmath match above) and none is flagged
    assert solver.rank_diff(alpha) == 0
    assert not np.any(solver.undetermined(atoms, alpha))
    # alpha = 0: in-span atoms match the exact pseudo-inverse value; the others have an
    # exact LPR of 0 (infinite variance) and must come out tiny, finite and flagged
    lpr0 = solver.lpr(atoms, 0.0)
    ref0 = _mp_lpr(rows, atoms[3:], 0.0)
    np.testing.assert_allclose(lpr0[3:], ref0, rtol=1e-7)
    assert np.all(np.isfinite(lpr0)) and np.all(lpr0[:3] < 1e-12)
    np.testing.assert_array_equal(solver.undetermined(atoms, 0.0), [1, 1, 1, 0, 0, 0, 0])
    assert solver.rank_diff(0.0) == d - 3


def test_zero_descriptor_is_finite():
    rng = np.random.default_rng(13)
    solver = RigiditySolver.from_structures(random_structures(rng, 10, 4))
    lpr = solver.lpr(np.zeros((1, 4)), 1e-6)
    assert np.isfinite(lpr[0]) and lpr[0] > 1e300
    assert not solver.undetermined(np.zeros((1, 4)), 0.0)[0]


# ---------------------------------------------------------------- solver consistency
def test_sweep_and_projections_equal_repeated_calls():
    rng = np.random.default_rng(14)
    train = random_structures(rng, 25, 11)
    test = random_structures(rng, 4, 11)
    alphas = [0.0, 1e-9, 1e-5, 1e-2, 3.0]
    sweep = lpr_sweep(train, test, alphas)
    assert sweep.shape == (len(alphas), sum(len(X) for X in test))
    np.testing.assert_allclose(lpr_sweep(train, np.vstack(test), alphas), sweep, rtol=0)
    solver = RigiditySolver.from_structures(train)
    P = solver.projections(np.vstack(test))
    for row, alpha in zip(sweep, alphas, strict=True):
        single, _ = local_prediction_rigidity(train, test, alpha)
        np.testing.assert_allclose(row, np.concatenate(single), rtol=1e-12)
        np.testing.assert_allclose(solver.lpr_from_projections(P, alpha), row, rtol=1e-12)
        both = solver.lpr_and_undetermined_from_projections(P, alpha)
        np.testing.assert_allclose(both[0], row, rtol=1e-12)
        np.testing.assert_array_equal(both[1], solver.undetermined(np.vstack(test), alpha))
        np.testing.assert_array_equal(
            solver.undetermined_from_projections(P, alpha),
            solver.undetermined(np.vstack(test), alpha),
        )


def test_from_atoms_equals_from_structures_and_generator():
    rng = np.random.default_rng(15)
    train = random_structures(rng, 12, 7)
    X_atoms = np.vstack(train)
    # structure labels need not be contiguous or sorted
    labels = np.repeat(np.arange(12) * 3 + 1, [len(X) for X in train])
    perm = rng.permutation(len(X_atoms))
    a = RigiditySolver.from_atoms(X_atoms[perm], labels[perm])
    b = RigiditySolver.from_structures(iter(train))
    assert a.n_structures == b.n_structures == 12
    assert a.scale == pytest.approx(sfactor(X_atoms), rel=1e-14)
    np.testing.assert_allclose(a.gram, b.gram, rtol=1e-12)
    atoms = rng.random((5, 7))
    np.testing.assert_allclose(a.lpr(atoms, 1e-4), b.lpr(atoms, 1e-4), rtol=1e-10)
    # fixed scale: LPR with alpha at scale s equals LPR with alpha * c^2 at scale s * c
    c = 3.0
    fixed = RigiditySolver.from_atoms(X_atoms, labels, scale=a.scale * c)
    np.testing.assert_allclose(fixed.lpr(atoms, 1e-4 / c**2), a.lpr(atoms, 1e-4), rtol=1e-9)


def test_structure_features():
    X = np.arange(12.0).reshape(6, 2)
    idx = np.array([2, 0, 2, 0, 0, 2])
    mean = structure_features(X, idx, n_structures=4)
    np.testing.assert_allclose(mean[0], X[[1, 3, 4]].mean(axis=0))
    np.testing.assert_allclose(mean[2], X[[0, 2, 5]].mean(axis=0))
    np.testing.assert_array_equal(mean[[1, 3]], 0.0)
    total = structure_features(X, idx, convention="sum")
    assert total.shape == (3, 2)
    np.testing.assert_allclose(total[2], X[[0, 2, 5]].sum(axis=0))


def test_lcpr_blocks_against_explicit_masks():
    rng = np.random.default_rng(16)
    d = 9
    train = random_structures(rng, 20, d)
    atoms = rng.random((6, d))
    solver = RigiditySolver.from_structures(train)
    rows = scaled_rows(train, solver.scale)
    alpha = 1e-4
    blocks = {"a": np.arange(0, 4), "b": np.array([4, 6, 8]), "all": np.ones(d, dtype=bool)}
    lcpr = solver.lcpr(atoms, alpha, blocks)
    for name, cols in blocks.items():
        mask = np.zeros(d)
        mask[cols] = 1.0
        ref = explicit_lpr(rows, atoms / solver.scale * mask, alpha)
        np.testing.assert_allclose(lcpr[name], ref, rtol=1e-9)
    np.testing.assert_allclose(lcpr["all"], solver.lpr(atoms, alpha), rtol=1e-12)


def test_sum_convention_matches_explicit_matrix():
    rng = np.random.default_rng(17)
    d = 8
    train = random_structures(rng, 25, d, sizes=(1, 20))
    atoms = rng.random((6, d))
    solver = RigiditySolver.from_structures(train, convention="sum")
    mean_solver = RigiditySolver.from_structures(train)
    assert solver.scale == mean_solver.scale
    rows = scaled_rows(train, solver.scale, convention="sum")
    for alpha in [1e-6, 1e-2]:
        np.testing.assert_allclose(
            solver.lpr(atoms, alpha), explicit_lpr(rows, atoms / solver.scale, alpha), rtol=1e-9
        )
    # totals: the same alpha gives much larger LPR than the per-atom mean convention
    assert np.median(solver.lpr(atoms, 1e-2) / mean_solver.lpr(atoms, 1e-2)) > 10
    X_atoms = np.vstack(train)
    labels = np.repeat(np.arange(25), [len(X) for X in train])
    from_atoms = RigiditySolver.from_atoms(X_atoms, labels, convention="sum")
    np.testing.assert_allclose(from_atoms.gram, solver.gram, rtol=1e-12)


def test_solve_matches_dense_solve():
    rng = np.random.default_rng(18)
    train = random_structures(rng, 30, 6)
    solver = RigiditySolver.from_structures(train)
    rows = scaled_rows(train, solver.scale)
    b = rng.standard_normal((6, 3))
    H = rows.T @ rows + 1e-3 * np.eye(6)
    np.testing.assert_allclose(solver.solve(b, 1e-3), np.linalg.solve(H, b), rtol=1e-9)
    np.testing.assert_allclose(solver.solve(b[:, 0], 1e-3), np.linalg.solve(H, b[:, 0]))


def test_user_errors_raise_input_error():
    rng = np.random.default_rng(19)
    train = random_structures(rng, 5, 4)
    solver = RigiditySolver.from_structures(train)
    with pytest.raises(InputError, match="features"):
        solver.lpr(rng.random((2, 5)), 1e-3)
    with pytest.raises(InputError, match="alpha"):
        solver.lpr(rng.random((2, 4)), -1.0)
    with pytest.raises(InputError, match="structure 1"):
        RigiditySolver.from_structures([rng.random((2, 4)), rng.random((2, 3))])
    with pytest.raises(InputError, match="convention"):
        RigiditySolver.from_structures(train, convention="median")
    with pytest.raises(InputError, match="comp_dims"):
        componentwise_prediction_rigidity(train, train, 1e-3, [2, 1])
    with pytest.raises(InputError, match="scale"):
        RigiditySolver.from_structures([np.zeros((2, 4))])
    with pytest.raises(InputError, match="NaN"):
        solver.lpr(np.full((1, 4), np.nan), 1e-3)



@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, "inf-inf"])
@pytest.mark.filterwarnings("error::RuntimeWarning")  # refused before any product warns
def test_nonfinite_descriptors_refused_anywhere_in_a_block(bad):
    """The dual route's thin projections and the structure rows check finiteness through
    their row sums (no pass of its own): a NaN or inf at any atom and column is refused,
    also +inf and -inf in one structure's column (their sum is NaN)."""
    rng = np.random.default_rng(23)
    d = 40
    train = random_structures(rng, 6, d)  # 6 structures < d / 2: the dual route
    solver = RigiditySolver.from_structures(train)
    assert solver.route == "dual"
    X = rng.random((3 * rigidity._THIN_ROWS + 7, d))
    index = np.repeat(np.arange(X.shape[0] // 7 + 1), 7)[: X.shape[0]]
    for row in (0, rigidity._THIN_ROWS + 100, X.shape[0] - 1):
        col = int(rng.integers(d))
        Y = X.copy()
        if bad == "inf-inf":
            partner = row - 1 if index[row - 1] == index[row] else row + 1
            Y[row, col], Y[partner, col] = np.inf, -np.inf
        else:
            Y[row, col] = bad
        with pytest.raises(InputError, match="NaN or inf"):
            solver.thin_projections(Y)
        with pytest.raises(InputError, match="NaN or inf"):
            structure_features(Y, index)


@pytest.mark.parametrize("value", [1e101, -1e200, 1e300])
@pytest.mark.filterwarnings("error::RuntimeWarning")  # refused before anything overflows
def test_descriptors_beyond_the_magnitude_limit_are_refused(value):
    """A finite value beyond MAX_DESCRIPTOR_VALUE, whose square (or its products) would
    overflow and turn an LPR into 0 without a word, is refused on every route, checked
    through the same derived sums; values up to the limit give finite LPRs."""
    rng = np.random.default_rng(29)
    d = 40
    dual = RigiditySolver.from_structures(random_structures(rng, 6, d))
    primal = RigiditySolver.from_structures(random_structures(rng, 60, d))
    assert (dual.route, primal.route) == ("dual", "primal")
    X = rng.random((rigidity._THIN_ROWS + 9, d))
    index = np.repeat(np.arange(X.shape[0] // 3 + 1), 3)[: X.shape[0]]
    for row in (0, rigidity._THIN_ROWS + 4):
        Y = X.copy()
        Y[row, 7] = value
        for call in (dual.thin_projections, lambda A: structure_features(A, index),
                     lambda A: dual.lpr(A, 1e-4), lambda A: primal.lpr(A, 1e-4),
                     lambda A: local_prediction_rigidity([X[:30], X[30:60]], [A], 1e-4)):
            with pytest.raises(InputError, match="beyond 1e\\+100"):
                call(Y)
    Y = X.copy()
    Y[3, 7] = 1e99  # within the limit: finite and positive
    for solver in (dual, primal):
        lpr = solver.lpr(Y, 1e-4)
        assert np.isfinite(lpr).all() and (lpr > 0).all()
    # arrays built from allowed descriptors may exceed the limit: sums over atoms, a Gram
    summed = RigiditySolver.from_atoms(np.full((2, 5), 9e99), [0, 0], convention="sum")
    assert np.isfinite(summed.gram).all() and summed.scale > 1e100  # rows of 1.8e100
    assert np.isfinite(RigiditySolver(np.eye(d) * 1e150, 1.0, 3, "mean").lpr(X, 1e-4)).all()


# ---------------------------------------------------------------- primal and dual routes
def _primal(solver):
    """The same training set forced onto the primal route (no rows: eigh of the Gram)."""
    return RigiditySolver(solver.gram, solver.scale, solver.n_structures, solver.convention)


def test_route_is_chosen_by_shape():
    """Dual while n_structures < d / 2 (rigidity._DUAL_SHARE), primal from there on."""
    rng = np.random.default_rng(30)
    d = 20
    few = RigiditySolver.from_structures(random_structures(rng, 6, d))
    assert few.route == "dual" and few.rows.shape == (6, d)
    for n in (10, 15, 25):
        many = RigiditySolver.from_structures(random_structures(rng, n, d))
        assert many.route == "primal" and many.rows is None
    # from_atoms and with_structures keep the rows exactly while they are few enough
    X = np.vstack(random_structures(rng, 6, d))
    idx = np.repeat(np.arange(6), len(X) // 6 + 1)[: len(X)]
    assert RigiditySolver.from_atoms(X, idx).route == "dual"
    grown = few.with_structures(random_structures(rng, 3, d))
    assert grown.route == "dual" and grown.rows.shape == (9, d)
    assert few.with_structures(random_structures(rng, 4, d)).route == "primal"
    np.testing.assert_allclose(grown.rows.T @ grown.rows, grown.gram, rtol=1e-12)
    assert _primal(few).route == "primal"


def _ill_conditioned_rows(rng, n, d, smallest=1e-6):
    U = np.linalg.qr(rng.standard_normal((n, n)))[0]
    V = np.linalg.qr(rng.standard_normal((d, n)))[0]
    return (U * np.logspace(0, np.log10(smallest), n)) @ V.T


@pytest.mark.parametrize("alpha", [1e-12, 1e-8, 1e-4, 1e-2, 1.0, 1e2])
def test_dual_route_against_high_precision_including_training_rows(alpha):
    """docs/science.md §7.1 at any alpha: the dual route matches mpmath to 1e-10 for the
    training rows themselves (inside the span, where |x|^2 - |P|^2 would cancel), atoms in
    the span and atoms outside it; rows with singular values 1 .. 1e-6."""
    rng = np.random.default_rng(31)
    n, d = 12, 40
    rows = _ill_conditioned_rows(rng, n, d)
    dual = RigiditySolver.from_atoms(rows, np.arange(n), scale=1.0)
    assert dual.route == "dual"
    atoms = np.vstack([rows, rng.random((4, n)) @ rows, rng.standard_normal((4, d))])
    ref = _mp_lpr(rows, atoms, alpha, digits=40)
    np.testing.assert_allclose(dual.lpr(atoms, alpha), ref, rtol=1e-10)
    np.testing.assert_allclose(dual.pr(rows, alpha), ref[:n], rtol=1e-10)
    # thin projections (r numbers + the out-of-span norm per atom), columns given in two
    # blocks, keep that accuracy for every alpha of a sweep
    P, rho2 = dual.thin_projections(atoms[:, :25], atoms[:, 25:], dtype=np.float64)
    assert P.shape == (len(atoms), n)
    sweep = dual.lpr_sweep_from_thin(P, rho2, [alpha, 10 * alpha])
    np.testing.assert_allclose(sweep[0], ref, rtol=1e-10)
    np.testing.assert_allclose(sweep[1], dual.lpr(atoms, 10 * alpha), rtol=1e-10)
    # the primal route squares the condition number: fine at practical alpha only
    if alpha >= 1e-4:
        np.testing.assert_allclose(_primal(dual).lpr(atoms, alpha), ref, rtol=1e-10)


@pytest.mark.parametrize("alpha", [1e-8, 1e-4])
def test_dual_route_near_the_span_on_both_sides_of_the_cancellation_guard(alpha):
    """Atoms whose out-of-span share ``rho^2 / |x|^2`` lies just above and below
    ``_CANCEL`` (the difference ``|x|^2 - |P|^2`` above it, the explicit residual below),
    and far below it: the dual route matches mpmath to 1e-9. Taking the difference
    everywhere is off by ~1e-7 at a share of 1e-8."""
    rng = np.random.default_rng(37)
    n, d = 12, 40
    rows = rng.standard_normal((n, d))
    dual = RigiditySolver.from_atoms(rows, np.arange(n), scale=1.0)
    assert dual.route == "dual"
    basis = np.linalg.qr(rows.T)[0]
    atoms = []
    for share in (1e-3, 1e-4, 3 * rigidity._CANCEL, 1.05 * rigidity._CANCEL,
                  0.95 * rigidity._CANCEL, 1e-7, 1e-8):
        inside = rng.standard_normal(n) @ rows
        outside = rng.standard_normal(d)
        outside -= basis @ (basis.T @ outside)
        outside *= np.sqrt(share / (1 - share)) * np.linalg.norm(inside) / np.linalg.norm(
            outside)
        atoms.append(inside + outside)
    atoms = np.array(atoms)
    np.testing.assert_allclose(dual.lpr(atoms, alpha), _mp_lpr(rows, atoms, alpha, digits=40),
                               rtol=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 1e-14, 1e-8, 1e-4, 1.0, 1e2])
def test_dual_equals_primal_on_every_output(alpha):
    """Same rank-deficiency rule in both routes (module docstring): LPR, sweep, undetermined,
    rank_diff, LCPR, solve and the full-basis projections agree, training rows included."""
    rng = np.random.default_rng(32)
    train = random_structures(rng, 9, 30)
    dual = RigiditySolver.from_structures(train)
    primal = _primal(dual)
    assert (dual.route, primal.route) == ("dual", "primal")
    rows = scaled_rows(train, 1.0)
    atoms = np.vstack([rows, np.vstack(train), rng.random((5, 30)), np.zeros((1, 30))])
    rtol = 1e-9 if alpha >= 1e-8 else 1e-6
    np.testing.assert_allclose(dual.lpr(atoms, alpha), primal.lpr(atoms, alpha), rtol=rtol)
    np.testing.assert_array_equal(
        dual.undetermined(atoms, alpha), primal.undetermined(atoms, alpha)
    )
    assert dual.rank_diff(alpha) == primal.rank_diff(alpha)
    blocks = {"a": np.arange(10), "b": np.arange(10, 30), "m": np.arange(30) % 3 == 0}
    for name, value in dual.lcpr(atoms, alpha, blocks).items():
        np.testing.assert_allclose(value, primal.lcpr(atoms, alpha, blocks)[name], rtol=rtol)
    # ridge weights at tiny alpha are ill-conditioned: agree to a share of the largest weight
    b = rows.T @ rng.standard_normal(9) / dual.scale
    w = primal.solve(b, alpha)
    np.testing.assert_allclose(dual.solve(b, alpha), w, rtol=0, atol=1e-6 * np.abs(w).max())
    P = dual.projections(atoms)
    np.testing.assert_allclose(
        dual.lpr_from_projections(P, alpha), primal.lpr(atoms, alpha), rtol=rtol
    )
    lpr, undetermined = dual.lpr_and_undetermined_from_thin(*dual.thin_projections(
        atoms, dtype=np.float64), alpha)
    np.testing.assert_allclose(lpr, primal.lpr(atoms, alpha), rtol=rtol)
    np.testing.assert_array_equal(undetermined, primal.undetermined(atoms, alpha))
    # the primal route has the same thin form (its eigenvectors of nonzero eigenvalues)
    lpr, undetermined = primal.lpr_and_undetermined_from_thin(*primal.thin_projections(
        atoms, dtype=np.float64), alpha)
    np.testing.assert_allclose(lpr, primal.lpr(atoms, alpha), rtol=rtol)
    np.testing.assert_array_equal(undetermined, primal.undetermined(atoms, alpha))
    np.testing.assert_allclose(np.sort(dual.eigvals), np.sort(primal.eigvals), atol=1e-12)


def test_dual_route_blocks_of_rows_give_the_same_numbers(monkeypatch):
    """The dual route projects atoms in blocks of ``_THIN_ROWS`` rows (the explicit residual
    of near-span rows taken per block): blocks of 7 rows, with training rows (explicit
    residual) and outside rows (difference) falling in the same and in different blocks,
    give what one block gives."""
    rng = np.random.default_rng(35)
    train = random_structures(rng, 6, 30)
    solver = RigiditySolver.from_structures(train)
    assert solver.route == "dual"
    rows = scaled_rows(train, 1.0)
    atoms = np.vstack([rng.random((5, 30)), rows, np.vstack(train)[:9], rng.random((4, 30))])
    P, rho2 = solver.thin_projections(atoms, dtype=np.float64)
    lpr, undetermined = solver.lpr_and_undetermined(atoms, 1e-6)
    monkeypatch.setattr(rigidity, "_THIN_ROWS", 7)
    P7, rho2_7 = solver.thin_projections(atoms[:, :20], atoms[:, 20:], dtype=np.float64)
    np.testing.assert_allclose(P7, P, rtol=0, atol=1e-14 * np.abs(P).max())
    np.testing.assert_allclose(rho2_7, rho2, rtol=1e-10, atol=1e-20)
    lpr7, undetermined7 = solver.lpr_and_undetermined(atoms, 1e-6)
    np.testing.assert_allclose(lpr7, lpr, rtol=1e-10)
    np.testing.assert_array_equal(undetermined7, undetermined)
    # training rows lie in the span: their residual is ~0, not a cancellation's noise
    assert np.all(rho2_7[5:11] < 1e-20 * np.einsum("ij,ij->i", rows, rows) / solver.scale**2)


def test_sweep_from_projections_equals_per_alpha_calls():
    rng = np.random.default_rng(33)
    train = random_structures(rng, 40, 12)
    solver = RigiditySolver.from_structures(train)
    P = solver.projections(np.vstack(random_structures(rng, 30, 12)))
    alphas = [0.0, 1e-9, 1e-5, 1e-2, 3.0]
    sweep = solver.lpr_sweep_from_projections(P, alphas)
    assert sweep.shape == (len(alphas), P.shape[0])
    for row, alpha in zip(sweep, alphas, strict=True):
        np.testing.assert_allclose(row, solver.lpr_from_projections(P, alpha), rtol=1e-13)


@pytest.mark.parametrize("n_structures", [8, 40])
def test_float32_projections_lpr_within_bound(n_structures):
    """float32 projections (what pipeline.Fit stores): LPR within 1e-5 of float64 (every term
    of 1/LPR is positive); undetermined flags equal away from the 50 % boundary."""
    rng = np.random.default_rng(34)
    d = 120
    solver = RigiditySolver.from_structures(random_structures(rng, n_structures, d))
    atoms = np.vstack(random_structures(rng, 60, d))
    P64 = solver.projections(atoms)
    P32 = solver.projections(atoms, dtype=np.float32)
    assert P32.dtype == np.float32 and P32.nbytes == P64.nbytes // 2
    for alpha in (0.0, 1e-10, 1e-6, 1e-2, 10.0):
        lpr64, und64 = solver.lpr_and_undetermined_from_projections(P64, alpha)
        lpr32, und32 = solver.lpr_and_undetermined_from_projections(P32, alpha)
        assert np.all(np.isfinite(lpr32)) and np.all(lpr32 > 0)
        np.testing.assert_allclose(lpr32, lpr64, rtol=1e-5)
        np.testing.assert_array_equal(und32, und64)
        np.testing.assert_allclose(
            solver.lpr_sweep_from_projections(P32, [alpha])[0], lpr32, rtol=1e-6
        )  # float32 sums in another order


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_squared_pass_in_two_halves_equals_explicit_products(monkeypatch, dtype):
    """rigidity._sq_dot splits large passes over two threads: same (P**2) @ W and P @ v."""
    rng = np.random.default_rng(40)
    P = rng.standard_normal((1000, 30)).astype(dtype)
    W, v = rng.random((30, 2)), rng.standard_normal(30)
    single = rigidity._sq_dot(P, W, v)
    monkeypatch.setattr(rigidity, "_SPLIT_ROWS", 300)
    monkeypatch.setattr(rigidity.os, "cpu_count", lambda: 2)
    halves = rigidity._sq_dot(P, W, v)
    P64 = P.astype(np.float64)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for got in (single, halves):
        np.testing.assert_allclose(got[0], (P64**2) @ W, rtol=rtol)
        np.testing.assert_allclose(got[1], P64 @ v, rtol=0, atol=rtol * np.abs(P64).sum(1).max())


@pytest.mark.parametrize("n_structures", [8, 40])
def test_lpr_grid_equals_per_alpha_passes(n_structures):
    """RigiditySolver.lpr_grid: one pass for many alphas gives each alpha's LPR, undetermined
    flags and P @ dots column (full float64 projections; thin ones on the dual route),
    below the resolution (undetermined atoms) too."""
    rng = np.random.default_rng(41)
    d = 30
    train = random_structures(rng, n_structures, d)
    solver = RigiditySolver.from_structures(train)
    atoms = np.vstack(random_structures(rng, 50, d) + train[:3])
    alphas = [0.0, 1e-14, 1e-8, 1e-3, 1.0, 50.0]
    dots = rng.standard_normal((d, len(alphas)))
    P = solver.projections(atoms)
    lpr, undetermined, linear = solver.lpr_grid(P, alphas, dots=dots)
    assert lpr.shape == undetermined.shape == linear.shape == (len(alphas), len(atoms))
    for a, alpha in enumerate(alphas):
        ref_lpr, ref_und = solver.lpr_and_undetermined_from_projections(P, alpha)
        np.testing.assert_allclose(lpr[a], ref_lpr, rtol=1e-10)
        np.testing.assert_array_equal(undetermined[a], ref_und)
        np.testing.assert_allclose(linear[a], P @ dots[:, a], rtol=1e-10, atol=1e-12)
    # below the resolution some atoms are undetermined (the flags are exercised)
    assert undetermined[0].any() == (n_structures < d) and not undetermined[-1].any()
    if solver.route == "dual":
        Pt, rho2 = solver.thin_projections(atoms, dtype=np.float64)
        lpr_t, und_t, _ = solver.lpr_grid(Pt, alphas, rho2=rho2)
        for a, alpha in enumerate(alphas):
            ref_lpr, ref_und = solver.lpr_and_undetermined_from_thin(Pt, rho2, alpha)
            np.testing.assert_allclose(lpr_t[a], ref_lpr, rtol=1e-10)
            np.testing.assert_array_equal(und_t[a], ref_und)
            if alpha >= 1e-3:  # a direct dense solve where it is well conditioned
                np.testing.assert_allclose(lpr_t[a], explicit_lpr(
                    scaled_rows(train, solver.scale), atoms / solver.scale, alpha), rtol=1e-8)
    # float32 projections give a float32 grid within float32 round-off of float64
    lpr32 = solver.lpr_grid(P.astype(np.float32), alphas)[0]
    assert lpr32.dtype == np.float32
    np.testing.assert_allclose(lpr32, lpr, rtol=1e-5)


def test_one_thread_blocks_overlapping_in_two_threads_share_one_limit():
    """Blocks open in two threads at once (the app's sessions, a Dask worker's threads):
    the second still runs on one BLAS thread after the first has closed, and once both
    have closed the process has the threads it started with (separate limits restored out
    of order: the second block ran on two threads and the process was left on one)."""
    import threading

    from threadpoolctl import threadpool_info

    def blas_threads():
        return sorted(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")

    before = blas_threads()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with rigidity._one_thread():
            seen["first"] = blas_threads()
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second():
        first_in.wait(10)
        with rigidity._one_thread():
            second_in.set()
            first_out.wait(10)
            seen["second, first closed"] = blas_threads()
            with rigidity._one_thread():  # nested in the same thread
                seen["nested"] = blas_threads()
            seen["after nested"] = blas_threads()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    ones = [1] * len(before)
    assert seen == {"first": ones, "second, first closed": ones, "nested": ones,
                    "after nested": ones}
    assert blas_threads() == before


def test_one_thread_per_block_where_blas_limits_per_thread(monkeypatch):
    """An OpenMP BLAS limits each thread on its own: every block sets and restores its own
    limit (a shared one would limit only the thread that opened it)."""
    from types import SimpleNamespace

    made = []

    class Controller:
        lib_controllers = [SimpleNamespace(user_api="blas", threading_layer="openmp")]

        def limit(self, *, limits, user_api):
            made.append((limits, user_api))
            return contextlib.nullcontext()

    monkeypatch.setattr(rigidity, "_CONTROLLER", Controller())
    with rigidity._one_thread():
        with rigidity._one_thread():
            assert rigidity._LIMIT_DEPTH == 0  # not the shared limit
    assert made == [(rigidity._FACTOR_THREADS, "blas")] * 2



def _many_alpha_calls(solver, X):
    """Each many-alpha entry point of ``solver`` on ``X``, as ``f(alphas) -> LPR array``."""
    if solver.route == "dual":
        P, rho2 = solver.thin_projections(X)
        return [lambda a: solver.lpr_sweep(X, a),
                lambda a: solver.lpr_grid(P, a, rho2=rho2)[0],
                lambda a: solver.lpr_sweep_from_thin(P, rho2, a)]
    P = solver.projections(X)
    return [lambda a: solver.lpr_sweep(X, a), lambda a: solver.lpr_grid(P, a)[0],
            lambda a: solver.lpr_sweep_from_projections(P, a)]


def test_alpha_sequences_are_checked():
    """Every many-alpha entry point refuses a scalar, an empty list or a bad alpha in one
    InputError naming ``alphas`` (not a bare TypeError or ValueError from NumPy)."""
    rng = np.random.default_rng(31)
    d = 12
    X = rng.random((5, d))
    for solver in (RigiditySolver.from_structures(random_structures(rng, 30, d)),
                   RigiditySolver.from_structures(random_structures(rng, 4, d))):
        for call in _many_alpha_calls(solver, X):
            for bad, needle in ((1e-4, "alphas: expected a non-empty sequence"),
                                ([], "alphas: expected a non-empty sequence"),
                                ([1e-4, -1.0], "alpha: expected a finite number >= 0")):
                with pytest.raises(InputError, match=needle):
                    call(bad)
            lpr = call([1e-4, 1e-2])
            assert lpr.shape == (2, 5) and np.allclose(lpr[0], solver.lpr(X, 1e-4))
