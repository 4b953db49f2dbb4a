"""Numerical corner cases of the LPR (issue 6): finite LPR or an explicit ``undetermined``
flag, never NaN/inf, never a crash; tiny ill-conditioned cases against mpmath at 50 digits.

Through :class:`lprviz.rigidity.RigiditySolver` directly and through
:func:`lprviz.pipeline.prepare` / :func:`lprviz.pipeline.evaluate` on real SOAP.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from lprviz.datasets import Dataset
from lprviz.features import SoapHypers, compute_soap
from lprviz.pipeline import ModelSpec, evaluate, prepare
from lprviz.rigidity import RigiditySolver

ALPHAS = [0.0, 1e-12, 1e-8, 1e-4, 1.0, 1e6]
HYPERS = SoapHypers(cutoff=3.5, max_radial=2, max_angular=1)
mpmath.mp.dps = 50


pytestmark = pytest.mark.usefixtures("isolated_cache")


def _mp_inverse_quadratic(rows: np.ndarray, x: np.ndarray, alpha: float) -> float:
    """x^T (X^T X + alpha I)^-1 x at 50 digits; for alpha = 0 the pseudo-inverse on the row
    space (x must lie in it)."""
    X = mpmath.matrix(rows.tolist())
    xv = mpmath.matrix(x.tolist())
    if alpha > 0:
        A = X.T * X + mpmath.mpf(alpha) * mpmath.eye(X.cols)
        return float((xv.T * mpmath.lu_solve(A, xv))[0])
    # full row rank X (n < d): (X^T X)^+ = X^T (X X^T)^-2 X
    G = X * X.T
    Xx = X * xv
    return float((Xx.T * mpmath.lu_solve(G * G, Xx))[0])


def _assert_finite(values) -> None:
    values = np.asarray(values)
    assert np.all(np.isfinite(values)) and np.all(values > 0), values


# --------------------------------------------------------------------------- solver level


def _solver(rows: np.ndarray) -> RigiditySolver:
    """Solver whose structure rows are exactly ``rows`` (one-atom structures, scale 1)."""
    return RigiditySolver.from_structures([r[None, :] for r in rows], scale=1.0)


def test_rank_deficient_vs_mpmath():
    """3 training rows, 12 features. At alpha = 0: atoms in the row space get the
    pseudo-inverse LPR, atoms with a null-space part a tiny finite LPR and the flag. At
    alpha = 1e-12 (above float64 resolution here) every atom matches 50-digit arithmetic,
    including the null-space ones (LPR ~ alpha / |x_null|^2), and nothing is flagged."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(3, 12))
    in_span = rng.normal(size=(4, 3)) @ rows
    outside = rng.normal(size=(4, 12))
    solver = _solver(rows)
    X = np.vstack([in_span, outside])
    lpr = solver.lpr(X, 0.0)
    flag = solver.undetermined(X, 0.0)
    _assert_finite(lpr)
    assert solver.rank_diff(0.0) == 9
    assert not flag[:4].any() and flag[4:].all()
    for x, got in zip(in_span, lpr[:4], strict=True):
        assert got == pytest.approx(1.0 / _mp_inverse_quadratic(rows, x, 0.0), rel=1e-8)
    assert np.all(lpr[4:] < 1e-6 * lpr[:4].min())

    lpr = solver.lpr(X, 1e-12)
    _assert_finite(lpr)
    assert solver.rank_diff(1e-12) == 0 and not solver.undetermined(X, 1e-12).any()
    ref = np.array([1.0 / _mp_inverse_quadratic(rows, x, 1e-12) for x in X])
    np.testing.assert_allclose(lpr, ref, rtol=1e-6)


def test_ill_conditioned_vs_mpmath():
    """Rows with singular values 1 .. 1e-6 (cond(X^T X) = 1e12): determined atoms agree with
    50-digit arithmetic; whatever float64 cannot resolve is flagged, not silently wrong."""
    rng = np.random.default_rng(1)
    U, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    V, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    rows = U @ np.diag(np.logspace(0, -6, 6)) @ V.T
    X = rng.normal(size=(20, 6))
    solver = _solver(rows)
    for alpha in (1e-12, 1e-8, 1e-4):
        lpr = solver.lpr(X, alpha)
        flag = solver.undetermined(X, alpha)
        _assert_finite(lpr)
        ref = np.array([1.0 / _mp_inverse_quadratic(rows, x, alpha) for x in X])
        ok = ~flag
        assert ok.sum() >= 10
        np.testing.assert_allclose(lpr[ok], ref[ok], rtol=1e-4)


def test_one_training_structure_and_identical_structures():
    rng = np.random.default_rng(2)
    atoms = rng.normal(size=(5, 8))
    one = RigiditySolver.from_structures([atoms], scale=1.0)
    dup = RigiditySolver.from_structures([atoms] * 4, scale=1.0)
    test = np.vstack([atoms, atoms.mean(0)])
    for alpha in ALPHAS:
        for solver in (one, dup):
            _assert_finite(solver.lpr(test, alpha))
            _assert_finite(solver.pr(atoms.mean(0)[None], alpha))
    # four copies = one structure with 4x the data term: LPR(4 copies, 4 alpha) = 4 LPR(1, alpha)
    for alpha in (1e-4, 1.0):
        np.testing.assert_allclose(dup.lpr(test, 4 * alpha), 4 * one.lpr(test, alpha), rtol=1e-8)
    # the structure's own mean row is always determined
    assert not one.undetermined(atoms.mean(0)[None], 0.0).any()


def test_single_atom_structures_have_lpr_at_least_one():
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(30, 6))
    solver = _solver(rows)
    for alpha in (0.0, 1e-12, 1e-8):
        lpr = solver.lpr(rows, alpha)
        _assert_finite(lpr)
        assert np.all(lpr >= 1 - 1e-9)


def test_zero_variance_and_zero_features():
    """Constant and all-zero columns: finite LPR; an all-zero descriptor is not NaN."""
    rng = np.random.default_rng(4)
    rows = np.hstack([rng.normal(size=(10, 4)), np.ones((10, 1)), np.zeros((10, 3))])
    solver = _solver(rows)
    test = np.vstack([rows, np.zeros(8), np.r_[np.zeros(5), 1.0, 0, 0]])
    for alpha in ALPHAS:
        lpr = solver.lpr(test, alpha)
        _assert_finite(lpr)
        flag = solver.undetermined(test, alpha)
        # the column no training row uses: undetermined exactly when alpha is unresolvable
        assert flag[-1] == (alpha == 0.0), (alpha, flag[-1])
        assert not flag[:10].any()


def test_extreme_alpha_limits():
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(7, 5))
    test = rng.normal(size=(9, 5))
    solver = _solver(rows)
    lpr = solver.lpr(test, 1e6)
    _assert_finite(lpr)
    # LPR -> alpha / |x|^2 as alpha -> inf (docs/science.md §7.5), first-order correction ~e/alpha
    np.testing.assert_allclose(lpr * (test**2).sum(1) / 1e6, 1.0, rtol=1e-4)
    sweep = solver.lpr_sweep(test, ALPHAS)
    _assert_finite(sweep)
    assert np.all(np.diff(sweep, axis=0) >= -1e-12 * sweep[:-1])  # monotone in alpha


def test_empty_and_mismatched_inputs_raise_input_error():
    from lprviz.errors import InputError

    rng = np.random.default_rng(6)
    solver = _solver(rng.normal(size=(3, 4)))
    with pytest.raises(InputError):
        solver.lpr(rng.normal(size=(2, 5)), 1e-4)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InputError):
            solver.lpr(rng.normal(size=(2, 4)), bad)


# --------------------------------------------------------------------------- pipeline level


def _dataset(frames) -> Dataset:
    energies = []
    for a in frames:
        a.calc = EMT()
        energies.append(a.get_potential_energy())
    n = len(frames)
    return Dataset(name="edge", frames=frames, energies=np.array(energies),
                   has_energy=np.ones(n, bool), groups=np.array(["g"] * n),
                   names=[f"f{i}" for i in range(n)], splits=np.array([""] * n))


def _check_results(res, n_atoms: int) -> None:
    for field in ("lpr", "pr"):
        _assert_finite(getattr(res, field))
    assert np.all(np.isfinite(res.local_energy)) and np.all(np.isfinite(res.energy_pred))
    assert res.undetermined.dtype == bool and res.undetermined.shape == (n_atoms,)


def _pipeline(frames, train, kinds=("linear", "sparse-kernel")):
    ds = _dataset(frames)
    desc = compute_soap(ds.frames, HYPERS, species=ds.species, cache=False)
    out = {}
    for kind in kinds:
        for baseline in (True, False):
            spec = ModelSpec(kind=kind, baseline=baseline, n_sparse=5)
            fit = prepare(ds, desc, np.asarray(train), spec)
            out[kind, baseline] = [evaluate(fit, a) for a in ALPHAS]
            for res in out[kind, baseline]:
                _check_results(res, ds.n_atoms)
    return ds, out


def _cells(n, seed, species=("Cu", "Au")):
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        a = bulk("Cu", "fcc", a=3.7, cubic=True)
        a.symbols = [species[j] for j in rng.integers(0, len(species), len(a))]
        a.rattle(0.05, seed=seed + i)
        frames.append(a)
    return frames


def test_pipeline_one_training_structure_fewer_rows_than_features():
    frames = _cells(4, 10)
    _, out = _pipeline(frames, [True, False, False, False])
    res = out["linear", True]
    assert res[0].rank_diff > 0  # d >> 1 structure
    # at alpha = 0 the test atoms' descriptors leave the one-row span: flagged, finite
    assert res[0].undetermined[4:].all()
    assert not res[-1].undetermined.any()  # alpha = 1e6 determines everything


def test_pipeline_identical_structures_and_single_atoms():
    cell = _cells(1, 11)[0]
    dimers = [Atoms("Cu", positions=[[0, 0, 0]]), Atoms("Au", positions=[[0, 0, 0]])]
    frames = [cell.copy() for _ in range(3)] + dimers + _cells(2, 12)
    _, out = _pipeline(frames, [True, True, True, True, True, False, False])
    for res in out["linear", True]:
        if res.alpha > 0 and not res.undetermined[12:14].any():
            assert np.all(res.lpr[12:14] >= 1 - 1e-6)  # alone in a training structure


def test_pipeline_one_species_and_species_absent_from_training():
    cu = _cells(4, 13, species=("Cu",))
    au = _cells(1, 14, species=("Au",))
    # one species everywhere
    _pipeline(cu, [True, True, False, False])
    # the test frame's species never occurs in training: its baseline column is in the
    # null space: finite LPR, and flagged while alpha is below the resolution
    ds, out = _pipeline(cu + au, [True, True, True, True, False], kinds=("linear",))
    au_atoms = ds.structure_index == 4
    res0 = out["linear", True][0]
    assert res0.undetermined[au_atoms].all()
    assert not res0.undetermined[~au_atoms].any() or res0.rank_diff > 0
