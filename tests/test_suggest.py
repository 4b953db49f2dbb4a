"""Guided training-set improvement: predicted gains against refits with the structures added."""

from __future__ import annotations

import numpy as np
import pytest

from lprviz.errors import InputError
from lprviz.rigidity import RigiditySolver
from lprviz.suggest import (
    addition_curve,
    lowest_lpr_atoms,
    pool_rows,
    random_additions,
    suggest,
)

ALPHA = 1e-3


def _mean_log_lpr(solver, X, alpha=ALPHA):
    return float(np.mean(np.log(solver.lpr(X, alpha))))


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(7)
    d = 24
    train = [rng.normal(size=(rng.integers(2, 7), d)) for _ in range(10)]
    # candidates shifted away from training so the gains differ clearly
    pool = [rng.normal(size=(rng.integers(1, 6), d)) + rng.normal(size=d) for _ in range(18)]
    target = rng.normal(size=(40, d)) + 0.5 * rng.normal(size=d)
    return train, pool, target


@pytest.mark.parametrize("convention", ["mean", "sum"])
def test_predicted_gain_equals_realised_gain(case, convention):
    train, pool, target = case
    solver = RigiditySolver.from_structures(train, convention=convention)
    sug = suggest(solver, target, pool, ALPHA, k=3)
    base = _mean_log_lpr(solver, target)
    realised = np.array(
        [_mean_log_lpr(solver.with_structures([p]), target) - base for p in pool]
    )
    assert np.all(realised > 0)
    np.testing.assert_allclose(sug.first_gains, realised, rtol=1e-8, atol=0)


def test_greedy_curve_equals_sequential_refits(case):
    train, pool, target = case
    solver = RigiditySolver.from_structures(train)
    sug = suggest(solver, target, pool, ALPHA, k=5)
    assert len(set(sug.chosen.tolist())) == 5
    current, curve = solver, [_mean_log_lpr(solver, target)]
    for c in sug.chosen:
        current = current.with_structures([pool[c]])
        curve.append(_mean_log_lpr(current, target))
    curve = np.array(curve)
    np.testing.assert_allclose(sug.curve, curve, rtol=1e-10)
    np.testing.assert_allclose(sug.gains, np.diff(curve), rtol=1e-8)


def test_greedy_picks_equal_brute_force(case):
    train, pool, target = case
    solver = RigiditySolver.from_structures(train)
    sug = suggest(solver, target, pool, ALPHA, k=2)
    brute1 = [_mean_log_lpr(solver.with_structures([p]), target) for p in pool]
    assert sug.chosen[0] == int(np.argmax(brute1))
    assert sug.ranking[0] == sug.chosen[0]
    after = solver.with_structures([pool[sug.chosen[0]]])
    brute2 = [
        _mean_log_lpr(after.with_structures([p]), target) if i != sug.chosen[0] else -np.inf
        for i, p in enumerate(pool)
    ]
    assert sug.chosen[1] == int(np.argmax(brute2))


def test_rank_deficient_training_set_is_finite_and_matches():
    # 4 structures, 30 features, tiny alpha: the data null space dominates
    rng = np.random.default_rng(1)
    d = 30
    train = [rng.normal(size=(3, d)) for _ in range(4)]
    pool = [rng.normal(size=(2, d)) for _ in range(6)]
    target = rng.normal(size=(10, d))
    solver = RigiditySolver.from_structures(train)
    alpha = 1e-6
    sug = suggest(solver, target, pool, alpha, k=6)
    assert np.all(np.isfinite(sug.curve)) and np.all(sug.gains >= 0)
    base = _mean_log_lpr(solver, target, alpha)
    realised = [_mean_log_lpr(solver.with_structures([p]), target, alpha) - base for p in pool]
    np.testing.assert_allclose(sug.first_gains, realised, rtol=1e-6)


def test_random_additions_match_refits_and_never_lower(case):
    train, pool, target = case
    solver = RigiditySolver.from_structures(train)
    rows = pool_rows(solver, pool)
    P, Q = solver.projections(target), solver.projections(rows)
    curves = random_additions(solver, P, Q, ALPHA, 4, n_seeds=3, seed=5)
    assert curves.shape == (3, 5)
    assert np.all(np.diff(curves, axis=1) >= -1e-12)  # adding data never lowers the LPR
    order = np.random.default_rng(5).choice(len(pool), 4, replace=False)
    current, ref = solver, [_mean_log_lpr(solver, target)]
    for c in order:
        current = current.with_structures([pool[c]])
        ref.append(_mean_log_lpr(current, target))
    np.testing.assert_allclose(curves[0], ref, rtol=1e-10)
    # the greedy curve is at least as high after one pick as any random first pick
    sug = suggest(solver, target, pool, ALPHA, k=4)
    assert sug.curve[1] >= curves[:, 1].max() - 1e-12
    np.testing.assert_allclose(addition_curve(solver, P, Q, sug.chosen, ALPHA), sug.curve)


def test_pool_rows_forms_agree(case):
    train, pool, target = case
    solver = RigiditySolver.from_structures(train)
    rows = np.vstack([p.mean(axis=0) for p in pool])
    a = suggest(solver, target, pool, ALPHA, k=3)
    b = suggest(solver, target, rows, ALPHA, k=3)
    np.testing.assert_array_equal(a.chosen, b.chosen)
    np.testing.assert_allclose(a.first_gains, b.first_gains, rtol=1e-12)


def test_input_errors(case):
    train, pool, target = case
    solver = RigiditySolver.from_structures(train)
    with pytest.raises(InputError, match="features"):
        suggest(solver, target, [np.ones((2, 5))], ALPHA)
    with pytest.raises(InputError, match="k:"):
        suggest(solver, target, pool, ALPHA, k=0)
    with pytest.raises(InputError, match="alpha"):
        suggest(solver, target, pool, -1.0)
    with pytest.raises(InputError, match="pool"):
        suggest(solver, target, [], ALPHA)
    with pytest.raises(InputError, match="fraction"):
        lowest_lpr_atoms(np.ones(4), 0.0)


def test_lowest_lpr_atoms():
    lpr = np.array([5.0, 0.1, 3.0, 0.01, 2.0, 9.0, 7.0, 8.0, 6.0, 4.0])
    assert lowest_lpr_atoms(lpr, 0.2).tolist() == [3, 1]
    assert lowest_lpr_atoms(lpr, 0.01).tolist() == [3]


def test_pipeline_projections_predict_the_refit_at_fixed_scale():
    """Suggest on a Fit's cached projections; refit via pipeline.prepare with the picks added
    at the same scale: the realised gain is the predicted one (what the app's Compare shows)."""
    from lprviz import datasets, features, pipeline
    from lprviz.suggest import suggest_from_projections

    ds = datasets.load("emt-alloys")
    frames = np.flatnonzero(np.isin(ds.groups, ["bulk-pure", "bulk-alloy", "surface"]))[::3]
    ds = ds.subset(frames)
    desc = features.compute_soap(ds.frames, features.SOAP_PRESETS["fast"], species=ds.species)
    train = np.asarray([g.startswith("bulk") for g in ds.groups])
    fit = pipeline.prepare(ds, desc, train, pipeline.ModelSpec())
    alpha = 1e-3
    res = pipeline.evaluate(fit, alpha)
    surface_atoms = np.flatnonzero(np.asarray(ds.groups)[ds.structure_index] == "surface")
    pool = np.flatnonzero(~train)
    sug = suggest_from_projections(
        fit.solver, fit.atom_projections(surface_atoms), fit.structure_projections[pool], alpha, 2
    )
    np.testing.assert_allclose(sug.curve[0], np.mean(np.log(res.lpr[surface_atoms])))
    new_train = train.copy()
    new_train[pool[sug.chosen]] = True
    fit2 = pipeline.prepare(ds, desc, new_train, pipeline.ModelSpec(), scale=fit.scale)
    res2 = pipeline.evaluate(fit2, alpha)
    realised = np.mean(np.log(res2.lpr[surface_atoms])) - np.mean(np.log(res.lpr[surface_atoms]))
    np.testing.assert_allclose(sug.curve[-1] - sug.curve[0], realised, rtol=1e-8)


def test_cli_suggest_dataset_groups(tmp_path, capsys):
    import pandas as pd

    from lprviz import datasets
    from lprviz.cli import main

    out = tmp_path / "picks.csv"
    argv = ["suggest", "--dataset", "emt-alloys", "--train-groups", "bulk-pure,bulk-alloy",
            "--pool-groups", "surface", "--target-groups", "surface", "-k", "3",
            "--preset", "fast", "--alpha", "1e-3", "--random-seeds", "2", "--csv", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "random 3 additions" in printed
    table = pd.read_csv(out)
    ds = datasets.load("emt-alloys")
    assert table["step"].tolist() == [1, 2, 3]
    assert set(ds.groups[table["frame"]]) == {"surface"}
    assert table["name"].tolist() == [ds.names[i] for i in table["frame"]]
    assert np.all(np.diff(table["lpr_factor"]) > 0) and table["lpr_factor"].iloc[0] > 1
    # greedy: the first pick has the best gain alone
    assert table["gain_mean_ln_lpr"].iloc[0] == pytest.approx(table["alone_gain"].iloc[0])
    assert table["alone_gain"].iloc[0] >= table["alone_gain"].max()


def test_cli_suggest_files_and_errors(tmp_path, capsys):
    import ase.io

    from lprviz import datasets
    from lprviz.cli import main

    ds = datasets.load("emt-alloys")
    groups = np.asarray(ds.groups)
    paths = {}
    for label, frames in (("train", np.flatnonzero(groups == "bulk-alloy")[:20]),
                          ("pool", np.flatnonzero(groups == "cluster")[:10])):
        paths[label] = tmp_path / f"{label}.extxyz"
        ase.io.write(paths[label], [ds.frames[i] for i in frames])
    argv = ["suggest", "--train", str(paths["train"]), "--pool", str(paths["pool"]), "-k", "2",
            "--preset", "fast", "--random-seeds", "0"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "lowest-LPR 5% of non-training atoms" in printed
    assert main(["suggest", "--dataset", "emt-alloys", "--train-groups", "nope"]) == 2
    assert "no group nope" in capsys.readouterr().err
    assert main(["suggest", "--train", str(paths["train"])]) == 2


def _write_with_array(path, frames, seed: int) -> list[np.ndarray]:
    """Write ``frames`` with a per-atom array ``feat`` (a fixed nonlinear map of the scaled
    positions and species); return the arrays."""
    import ase.io

    mix = np.random.default_rng(seed).normal(size=(4, 9))
    out = []
    for atoms in frames:
        base = np.hstack([atoms.get_scaled_positions(), atoms.numbers[:, None] / 79.0])
        atoms.arrays["feat"] = np.tanh(base @ mix)
        out.append(atoms.arrays["feat"].copy())
    ase.io.write(path, frames, format="extxyz")
    return out


def test_cli_suggest_features_array_ranks_as_the_library(tmp_path):
    """``lprviz suggest --features-array`` picks what :func:`lprviz.suggest.suggest` picks on
    the same arrays (a mean-convention ridge at the training atoms' scale, no baseline)."""
    import pandas as pd

    from lprviz import datasets
    from lprviz.cli import main
    from lprviz.suggest import suggest as suggest_library

    ds = datasets.load("emt-alloys")
    groups = np.asarray(ds.groups)
    arrays, paths = {}, {}
    for label, frames in (("train", np.flatnonzero(groups == "bulk-alloy")[:15]),
                          ("pool", np.flatnonzero(groups == "cluster")[:8]),
                          ("target", np.flatnonzero(groups == "surface")[:3])):
        paths[label] = tmp_path / f"{label}.extxyz"
        copies = []
        for i in frames:
            atoms = ds.frames[i].copy()
            atoms.calc = ds.frames[i].calc
            copies.append(atoms)
        arrays[label] = _write_with_array(paths[label], copies, seed=1)
    out = tmp_path / "picks.csv"
    argv = ["suggest", "--train", str(paths["train"]), "--pool", str(paths["pool"]),
            "--target", str(paths["target"]), "--features-array", "feat", "--no-baseline",
            "-k", "4", "--alpha", "1e-3", "--random-seeds", "0", "-q", "--csv", str(out)]
    assert main(argv) == 0
    table = pd.read_csv(out)
    solver = RigiditySolver.from_structures(arrays["train"], convention="mean")
    ref = suggest_library(solver, np.vstack(arrays["target"]), arrays["pool"], 1e-3, k=4)
    assert table["frame"].tolist() == [int(i) for i in ref.chosen]  # in the pool file
    np.testing.assert_allclose(table["gain_mean_ln_lpr"], ref.gains, rtol=1e-6)
    np.testing.assert_allclose(table["alone_gain"], ref.first_gains[ref.chosen], rtol=1e-6)


def test_cli_suggest_model_errors_are_one_line(tmp_path, capsys):
    from lprviz.cli import main

    base = ["suggest", "--dataset", "emt-alloys", "--train-groups", "bulk-pure", "-q"]
    assert main([*base, "--model", "transformer"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--model: expected one of linear, sparse-kernel, nn" in err and "transformer" in err
    assert main([*base, "--features-array", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "per-atom array 'nope'" in err and "missing" in err
    assert main([*base, "--features-array", "x", "--preset", "fast"]) == 2
    assert "--preset: a SOAP option" in capsys.readouterr().err


def test_cli_suggest_nn_model_runs(capsys):
    from optional import require_torch

    from lprviz.cli import main

    require_torch()
    argv = ["suggest", "--dataset", "emt-alloys", "--train-groups", "bulk-pure,bulk-alloy",
            "--pool-groups", "surface", "--target-groups", "surface", "-k", "2",
            "--preset", "fast", "--model", "nn", "--nn-hidden", "8", "--random-seeds", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "random 2 additions" in printed and "geometric-mean target LPR" in printed
