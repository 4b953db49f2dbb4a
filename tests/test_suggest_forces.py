"""Improve with forces: a candidate adds 1 + 3N rows (Woodbury block update).

References: the explicit inverse of small matrices, and refits of the force-trained solver
with each candidate's energy and force rows added (``RigiditySolver.with_structures``).
"""

from __future__ import annotations

import numpy as np
import pytest

from lprviz import datasets
from lprviz.errors import InputError
from lprviz.features import SoapHypers, compute_soap
from lprviz.pipeline import ModelSpec, prepare
from lprviz.rigidity import RigiditySolver
from lprviz.suggest import (
    PoolBlocks,
    addition_curve,
    force_pool,
    random_additions,
    suggest_from_projections,
)

HYPERS = SoapHypers(cutoff=3.5, max_radial=2, max_angular=2)
ALPHA = 1e-3


def _mean_log_lpr_explicit(H: np.ndarray, T: np.ndarray) -> float:
    return float(-np.mean(np.log(np.einsum("ij,ji->i", T, np.linalg.solve(H, T.T)))))


def test_block_update_equals_explicit_small_matrices():
    rng = np.random.default_rng(11)
    d, s, lam = 10, 1.6, 0.4
    rows, G = rng.random((4, d)), rng.standard_normal((6, d))
    solver = RigiditySolver.from_rows(rows, scale=s, extra_gram=lam * G.T @ G, n_extra_rows=6)
    # three candidates of 1 + 3 n_atoms raw rows (energy row, then sqrt(lam) force rows)
    blocks = [np.vstack([rng.random(d), np.sqrt(lam) * rng.standard_normal((3 * n, d))])
              for n in (1, 2, 0)]
    target = rng.standard_normal((7, d))
    pool = PoolBlocks(rows=solver.projections(np.vstack(blocks)),
                      starts=np.cumsum([0, *(len(b) for b in blocks)]))
    sug = suggest_from_projections(solver, solver.projections(target), pool, ALPHA, k=3)

    H = (rows.T @ rows + lam * G.T @ G) / s**2 + ALPHA * np.eye(d)
    T = target / s
    base = _mean_log_lpr_explicit(H, T)
    alone = [_mean_log_lpr_explicit(H + b.T @ b / s**2, T) - base for b in blocks]
    np.testing.assert_allclose(sug.first_gains, alone, rtol=1e-9)
    curve = [base]
    for c in sug.chosen:
        H = H + blocks[c].T @ blocks[c] / s**2
        curve.append(_mean_log_lpr_explicit(H, T))
    np.testing.assert_allclose(sug.curve, curve, rtol=1e-9)
    assert sug.chosen[0] == int(np.argmax(alone))


@pytest.fixture(scope="module")
def force_case():
    """A force-trained linear fit on six of 18 emt-alloys frames; twelve candidates."""
    ds = datasets.load("emt-alloys")
    groups = np.asarray(ds.groups)
    picks = []
    for g in ("bulk-alloy", "surface", "vacancy", "cluster", "interstitial", "antisite"):
        picks += [int(i) for i in np.flatnonzero(groups == g)[:3]]
    ds = ds.subset(sorted(picks))
    desc = compute_soap(ds.frames, HYPERS, species=ds.species, cache=False)
    train = np.zeros(len(ds.frames), dtype=bool)
    train[::3] = True
    fit = prepare(ds, desc, train, ModelSpec(), force_weight=0.2)
    pool = np.flatnonzero(~train)
    target = np.flatnonzero(np.isin(np.asarray(ds.groups)[ds.structure_index],
                                    ["surface", "vacancy"]) & ~train[ds.structure_index])
    return ds, desc, fit, pool, target


def _refit(fit, ds, desc, frames):
    """fit.solver with the frames' energy and force rows added, by explicit Gram."""
    solver = fit.solver
    for i in frames:
        a, b = int(ds.frame_starts[i]), int(ds.frame_starts[i + 1])
        X = fit.model_features(np.asarray(desc.values[a:b], dtype=np.float64),
                               ds.atom_numbers[a:b])
        g = np.asarray(fit.force_gradients[a:b], dtype=np.float64).reshape(3 * (b - a), -1)
        G = np.zeros((g.shape[0], solver.n_features))
        G[:, : g.shape[1]] = g
        solver = solver.with_structures(X, np.zeros(b - a, dtype=int),
                                        extra_gram=fit.force_weight * G.T @ G,
                                        n_extra_rows=G.shape[0])
    return solver


def _target_value(solver, fit, ds, desc, target):
    X = fit.model_features(np.asarray(desc.values[target], dtype=np.float64),
                           ds.atom_numbers[target])
    return float(np.mean(np.log(solver.lpr(X, ALPHA))))


def test_gains_and_greedy_curve_equal_refits(force_case):
    ds, desc, fit, pool, target = force_case
    blocks = force_pool(fit, ds, pool)
    assert blocks.notice is None
    np.testing.assert_array_equal(np.diff(blocks.starts), 1 + 3 * ds.frame_sizes[pool])
    X_t = fit.model_features(np.asarray(desc.values[target], dtype=np.float64),
                             ds.atom_numbers[target])
    P = fit.solver.projections(X_t)
    sug = suggest_from_projections(fit.solver, P, blocks, ALPHA, k=3)
    base = _target_value(fit.solver, fit, ds, desc, target)
    assert sug.curve[0] == pytest.approx(base, rel=1e-10)
    realised = [_target_value(_refit(fit, ds, desc, [i]), fit, ds, desc, target) - base
                for i in pool]
    np.testing.assert_allclose(sug.first_gains, realised, rtol=1e-8)
    curve = [base] + [_target_value(_refit(fit, ds, desc, pool[sug.chosen[: j + 1]]), fit, ds,
                                    desc, target) for j in range(3)]
    np.testing.assert_allclose(sug.curve, curve, rtol=1e-8)
    # The energy row alone underestimates what a force-carrying candidate adds.
    energy_only = suggest_from_projections(fit.solver, P, fit.structure_projections[pool],
                                           ALPHA, k=1)
    assert np.all(sug.first_gains > energy_only.first_gains)


def test_random_additions_with_blocks_equal_refits(force_case):
    ds, desc, fit, pool, target = force_case
    blocks = force_pool(fit, ds, pool)
    P = fit.solver.projections(fit.model_features(
        np.asarray(desc.values[target], dtype=np.float64), ds.atom_numbers[target]))
    curves = random_additions(fit.solver, P, blocks, ALPHA, 2, n_seeds=2, seed=3)
    order = np.random.default_rng(3).choice(pool.size, 2, replace=False)
    np.testing.assert_allclose(addition_curve(fit.solver, P, blocks, order, ALPHA), curves[0],
                               rtol=1e-12)
    ref = [_target_value(_refit(fit, ds, desc, pool[order[:j]]), fit, ds, desc, target)
           for j in range(3)]
    np.testing.assert_allclose(curves[0], ref, rtol=1e-8)
    assert np.all(np.diff(curves, axis=1) > 0)


def test_candidates_without_forces_keep_their_energy_row(force_case):
    ds, desc, fit, pool, target = force_case
    no_forces = fit.forces.copy()
    a, b = int(ds.frame_starts[pool[1]]), int(ds.frame_starts[pool[1] + 1])
    no_forces[a:b] = np.nan
    stripped = type(fit)(**{**fit.__dict__, "forces": no_forces})
    blocks = force_pool(stripped, ds, pool)
    assert blocks.notice.startswith("1 of") and ds.names[pool[1]] in blocks.notice
    assert np.diff(blocks.starts)[1] == 1
    P = fit.solver.projections(fit.model_features(
        np.asarray(desc.values[target], dtype=np.float64), ds.atom_numbers[target]))
    gains = suggest_from_projections(fit.solver, P, blocks, ALPHA, k=1).first_gains
    energy_only = suggest_from_projections(fit.solver, P, fit.structure_projections[pool[1:2]],
                                           ALPHA, k=1).first_gains
    assert gains[1] == pytest.approx(energy_only[0], rel=1e-9)
    # float32 storage: the app's choice; same ranking, gains within float32 rounding
    g32 = suggest_from_projections(fit.solver, P, force_pool(fit, ds, pool, dtype=np.float32),
                                   ALPHA, k=1).first_gains
    full = suggest_from_projections(fit.solver, P, force_pool(fit, ds, pool), ALPHA,
                                    k=1).first_gains
    np.testing.assert_allclose(g32, full, rtol=1e-4)


def test_force_pool_errors(force_case):
    ds, desc, fit, pool, _ = force_case
    plain = prepare(ds, desc, fit.train_mask, ModelSpec())
    with pytest.raises(InputError, match="force-trained"):
        force_pool(plain, ds, pool)
    with pytest.raises(InputError, match="pool: expected frame indices"):
        force_pool(fit, ds, [len(ds.frames)])
    with pytest.raises(InputError, match="target"):
        suggest_from_projections(fit.solver, np.ones((2, 3)), force_pool(fit, ds, pool),
                                 ALPHA, 1)


def test_force_pool_chunks_do_not_change_rows(force_case, monkeypatch):
    import lprviz.suggest as suggest_module

    ds, _, fit, pool, _ = force_case
    whole = force_pool(fit, ds, pool)
    monkeypatch.setattr(suggest_module, "_POOL_CHUNK_ATOMS", 7)  # splits candidates
    np.testing.assert_allclose(force_pool(fit, ds, pool).rows, whole.rows, rtol=1e-12,
                               atol=1e-14 * np.abs(whole.rows).max())


def test_cli_suggest_forces_matches_library_and_notes_missing_forces(tmp_path, capsys):
    import ase.io
    import pandas as pd

    from lprviz.cli import _suggest_inputs, build_parser, main
    from lprviz.features import SOAP_PRESETS

    ds = datasets.load("emt-alloys")
    groups = np.asarray(ds.groups)
    pool_frames = [ds.frames[i] for i in np.flatnonzero(groups == "surface")[:5]]
    bare = pool_frames[0].copy()  # positions only: no energy, no forces
    bare.calc = None
    paths = {"train": tmp_path / "train.extxyz", "pool": tmp_path / "pool.extxyz"}
    ase.io.write(paths["train"], [ds.frames[i] for i in np.flatnonzero(groups == "bulk-alloy")[:8]])
    ase.io.write(paths["pool"], [bare, *pool_frames[1:]])
    argv = ["suggest", "--train", str(paths["train"]), "--pool", str(paths["pool"]), "-k", "2",
            "--preset", "fast", "--random-seeds", "2", "--alpha", "1e-3"]
    plain, forced = tmp_path / "plain.csv", tmp_path / "forced.csv"
    assert main([*argv, "--csv", str(plain)]) == 0
    capsys.readouterr()
    assert main([*argv, "--forces", "--force-weight", "0.1", "--csv", str(forced)]) == 0
    err = capsys.readouterr().err
    assert "1 of 5 candidates have no forces" in err and "energy row only" in err
    t0, t1 = pd.read_csv(plain), pd.read_csv(forced)
    # the library on the same inputs
    args = build_parser().parse_args([*argv, "--forces", "--force-weight", "0.1"])
    data, train, pool, _ = _suggest_inputs(args)
    desc = compute_soap(data.frames, SOAP_PRESETS["fast"], species=data.species)
    fit = prepare(data, desc, train, ModelSpec(), force_weight=0.1)
    rest = np.flatnonzero(~train[data.structure_index])
    from lprviz.pipeline import evaluate
    from lprviz.suggest import lowest_lpr_atoms

    target = rest[lowest_lpr_atoms(evaluate(fit, 1e-3).lpr[rest], 0.05)]
    sug = suggest_from_projections(fit.solver, fit.atom_projections(target),
                                   force_pool(fit, data, pool), 1e-3, 2)
    np.testing.assert_array_equal(t1["frame"], sug.chosen)  # pool-file indices
    np.testing.assert_allclose(t1["gain_mean_ln_lpr"], sug.gains, rtol=1e-6)
    assert t1["lpr_factor"].iloc[-1] > 1 and t0["lpr_factor"].iloc[-1] > 1
