"""Time Improve on a force-trained fit: Woodbury block updates against refits.

emt-alloys, linear model with the composition baseline, trained on energies and forces
(lambda_F = 0.03) on the bulk frames; target: the lowest-LPR 5 % of the other atoms (the
default of the Improve page and ``lprviz suggest``); pool: every other frame (each adds
1 + 3 N rows).

* ``force_pool`` + ``suggest_from_projections``: the blocks of every candidate projected
  once, the step-1 ranking of the whole pool, then greedy picks (block updates);
* refit: for each candidate, ``RigiditySolver.with_structures`` with its energy row and its
  weighted force Gram (a new eigendecomposition) and the target's LPR; timed on a few and
  extrapolated to the pool;
* the largest relative difference of the gains on those few.

The fit itself (featurisation with gradients, factorisation) is outside the timings: both
paths start from it. Usage: ``python benchmarks/bench_suggest_forces.py [--preset fast]
[--k 5] [--n-refit 5]``. Prints ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_info

from lprviz import datasets
from lprviz.features import SOAP_PRESETS, compute_soap
from lprviz.pipeline import DEFAULT_FORCE_WEIGHT, ModelSpec, evaluate, prepare
from lprviz.suggest import force_pool, lowest_lpr_atoms, suggest_from_projections


def refit_gain(fit, ds, desc, frame, P_values, base, alpha):
    """Realised gain of adding ``frame``'s energy and force rows, by a refit."""
    a, b = int(ds.frame_starts[frame]), int(ds.frame_starts[frame + 1])
    X = fit.model_features(np.asarray(desc.values[a:b], dtype=np.float64), ds.atom_numbers[a:b])
    g = np.asarray(fit.force_gradients[a:b], dtype=np.float64).reshape(3 * (b - a), -1)
    G = np.zeros((g.shape[0], fit.solver.n_features))
    G[:, : g.shape[1]] = g
    after = fit.solver.with_structures(X, np.zeros(b - a, dtype=int),
                                       extra_gram=fit.force_weight * G.T @ G,
                                       n_extra_rows=G.shape[0])
    return float(np.mean(np.log(after.lpr(P_values, alpha)))) - base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default", choices=sorted(SOAP_PRESETS))
    parser.add_argument("--k", type=int, default=5, help="greedy picks (default 5)")
    parser.add_argument("--n-refit", type=int, default=5,
                        help="candidates refitted for the reference (default 5)")
    args = parser.parse_args()
    alpha = 1e-4
    ds = datasets.load("emt-alloys")
    groups = np.asarray(ds.groups)
    desc = compute_soap(ds.frames, SOAP_PRESETS[args.preset], species=ds.species)
    train = np.isin(groups, ["bulk-pure", "bulk-alloy"])
    t0 = time.perf_counter()
    fit = prepare(ds, desc, train, ModelSpec(), force_weight=DEFAULT_FORCE_WEIGHT)
    t_fit = time.perf_counter() - t0
    _ = fit.solver.eigvals
    pool = np.flatnonzero(~train)
    rest = np.flatnonzero(~train[ds.structure_index])
    target = rest[lowest_lpr_atoms(evaluate(fit, alpha).lpr[rest], 0.05)]
    X_t = fit.model_features(np.asarray(desc.values[target], dtype=np.float64),
                             ds.atom_numbers[target])
    P = fit.solver.projections(X_t)

    t0 = time.perf_counter()
    blocks = force_pool(fit, ds, pool)
    t_blocks = time.perf_counter() - t0
    t0 = time.perf_counter()
    sug1 = suggest_from_projections(fit.solver, P, blocks, alpha, 1)
    t_rank = time.perf_counter() - t0
    t0 = time.perf_counter()
    sug = suggest_from_projections(fit.solver, P, blocks, alpha, args.k)
    t_greedy = time.perf_counter() - t0

    base = float(np.mean(np.log(fit.solver.lpr(X_t, alpha))))
    t0 = time.perf_counter()
    refits = [refit_gain(fit, ds, desc, int(pool[c]), X_t, base, alpha)
              for c in range(args.n_refit)]
    t_refit = (time.perf_counter() - t0) / args.n_refit
    diff = np.max(np.abs(sug1.first_gains[: args.n_refit] - refits) / np.abs(refits))

    blas = ", ".join(f"{i['internal_api']} {i['num_threads']} threads" for i in threadpool_info())
    n_rows = int(blocks.starts[-1])
    print(f"emt-alloys, preset {args.preset}: d={fit.solver.n_features}, "
          f"{int(train.sum())} training frames, target {target.size} atoms, "
          f"pool {pool.size} frames ({n_rows} rows); BLAS: {blas}")
    print(f"prepare with forces (not in the ratios): {t_fit:8.2f} s")
    print(f"force_pool (project every block):        {t_blocks:8.2f} s")
    print(f"rank whole pool (k=1):                   {t_rank:8.2f} s")
    print(f"greedy k={args.k:<3d}                            {t_greedy:8.2f} s")
    print(f"refit per candidate:                     {t_refit:8.2f} s each (timed on "
          f"{args.n_refit}), extrapolated {t_refit * pool.size:8.1f} s for the pool")
    print(f"ratio (refit pool / (blocks + rank)):    "
          f"{t_refit * pool.size / (t_blocks + t_rank):8.1f}x")
    print(f"ratio (k * refit pool / (blocks + greedy)): "
          f"{t_refit * pool.size * args.k / (t_blocks + t_greedy):8.1f}x")
    print(f"max relative difference of gains vs refits (first {args.n_refit}): {diff:.1e}")
    print(f"greedy picks: {[str(ds.names[i]) for i in pool[sug.chosen]]}")


if __name__ == "__main__":
    main()
