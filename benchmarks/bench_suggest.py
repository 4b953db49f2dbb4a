"""Time the guided-suggestion ranking against a naive refit per candidate.

Random SOAP-like (positive) descriptors, per-atom mean convention: a training set of 300
structures, a target of 2000 atoms, a pool of 500 candidate structures, d = 500.

* ``lprviz.suggest.suggest``: step-1 ranking of the whole pool plus greedy picks (one
  projection of target and pool, Sherman–Morrison updates);
* naive: for each candidate, ``RigiditySolver.with_structures`` (a new eigendecomposition)
  and the target's LPR; timed on a subset and extrapolated to the pool;
* the largest relative difference between the two on the subset.

Usage: ``python benchmarks/bench_suggest.py [--quick]``. Prints ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lprviz.rigidity import RigiditySolver
from lprviz.suggest import suggest


def make_structures(rng, n, d, sizes):
    return [rng.random((rng.integers(sizes[0], sizes[1] + 1), d)) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (seconds)")
    args = parser.parse_args()
    d, n_train, n_target, n_pool, n_naive, k = (
        (200, 100, 500, 100, 5, 5) if args.quick else (500, 300, 2000, 500, 10, 10)
    )
    alpha = 1e-4
    rng = np.random.default_rng(0)
    train = make_structures(rng, n_train, d, (20, 60))
    pool = make_structures(rng, n_pool, d, (2, 40))
    target = rng.random((n_target, d))
    solver = RigiditySolver.from_structures(train)
    _ = solver.eigvals  # factorise outside the timings: both paths start from it

    t0 = time.perf_counter()
    sug1 = suggest(solver, target, pool, alpha, k=1)
    t_rank = time.perf_counter() - t0
    t0 = time.perf_counter()
    sug = suggest(solver, target, pool, alpha, k=k)
    t_greedy = time.perf_counter() - t0

    t0 = time.perf_counter()
    base = np.mean(np.log(solver.lpr(target, alpha)))
    naive = []
    for c in range(n_naive):
        after = solver.with_structures([pool[c]])
        naive.append(np.mean(np.log(after.lpr(target, alpha))) - base)
    t_naive = (time.perf_counter() - t0) / n_naive
    diff = np.max(np.abs(sug1.first_gains[:n_naive] - naive) / np.abs(naive))

    print(f"d={d}, {n_train} training structures, target {n_target} atoms, pool {n_pool}")
    print(f"suggest, rank whole pool (k=1):     {t_rank:8.3f} s")
    print(f"suggest, greedy k={k:<3d}             {t_greedy:8.3f} s")
    print(f"naive refit per candidate:          {t_naive:8.3f} s each "
          f"(timed on {n_naive}), extrapolated {t_naive * n_pool:8.1f} s for the pool")
    print(f"ratio (naive pool / suggest rank):  {t_naive * n_pool / t_rank:8.0f}x")
    print(f"naive greedy k={k} would refit k*pool times: ~{t_naive * n_pool * k:8.0f} s, "
          f"ratio {t_naive * n_pool * k / t_greedy:8.0f}x")
    print(f"max relative difference of gains vs naive (first {n_naive}): {diff:.1e}")
    print(f"greedy picks: {sug.chosen.tolist()}")


if __name__ == "__main__":
    main()
