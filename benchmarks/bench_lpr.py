"""Time lprviz's LPR against scikit-matter's reference implementation.

Random SOAP-like (positive) descriptors, per-atom mean convention. For each test-set size:

* first call: ``skmatter.metrics.local_prediction_rigidity`` vs
  ``lprviz.rigidity.local_prediction_rigidity`` (same inputs, same outputs);
* each further alpha: scikit-matter has to redo the whole computation; lprviz re-uses the
  cached eigendecomposition and projections (``RigiditySolver.lpr_from_projections``);
* peak memory of each path (tracemalloc, in a separate untimed run).

Usage: ``python benchmarks/bench_lpr.py [--quick]``. Prints ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from functools import partial

import numpy as np
from skmatter.metrics import local_prediction_rigidity as sk_lpr

from lprviz.rigidity import RigiditySolver, local_prediction_rigidity


def make_structures(rng, n_structures, d, sizes):
    return [rng.random((rng.integers(sizes[0], sizes[1] + 1), d)) for _ in range(n_structures)]


def split_atoms(rng, n_atoms, d, size=50):
    X = rng.random((n_atoms, d))
    return np.split(X, np.arange(size, n_atoms, size))


def timed(fn, repeat=1):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def peak_mib(fn):
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    args = parser.parse_args(argv)
    if args.quick:
        d, n_train, sizes, test_sizes = 100, 40, (5, 20), [1000, 2000]
    else:
        d, n_train, sizes, test_sizes = 500, 200, (20, 100), [10_000, 20_000]
    alpha, more_alphas = 1e-4, [1e-6, 1e-3, 1e-2, 1e-1]

    rng = np.random.default_rng(0)
    train = make_structures(rng, n_train, d, sizes)
    n_train_atoms = sum(len(X) for X in train)
    print(
        f"d={d}, {n_train} training structures ({n_train_atoms} atoms), alpha={alpha}, "
        f"further alphas {more_alphas}"
    )
    header = (
        f"{'test atoms':>10} | {'skmatter 1st':>12} {'lprviz 1st':>10} {'ratio':>6} | "
        f"{'sk/alpha':>9} {'ours/alpha':>10} {'ratio':>7} | {'max rel diff':>12}"
    )
    print(header)
    print("-" * len(header))
    for n_test in test_sizes:
        run_one(train, split_atoms(rng, n_test, d), alpha, more_alphas)


def run_one(train, test, alpha, more_alphas) -> None:
    """Time and measure one test set; print one table row and a memory line."""
    X_test = np.vstack(test)
    t_sk, (ref, _) = timed(lambda: sk_lpr(train, test, alpha))
    t_ours, (ours, _) = timed(lambda: local_prediction_rigidity(train, test, alpha), repeat=3)
    diff = np.max(np.abs(np.concatenate(ours) / np.concatenate(ref) - 1))

    # further alphas: skmatter recomputes from scratch; lprviz re-uses the projections
    t_sk_more, (ref_more, _) = timed(lambda: sk_lpr(train, test, more_alphas[1]))
    solver = RigiditySolver.from_structures(train)
    P = solver.projections(X_test)
    t_more = []
    for a in more_alphas:
        t, lpr = timed(partial(solver.lpr_from_projections, P, a), repeat=3)
        t_more.append(t)
        if a == more_alphas[1]:
            diff = max(diff, np.max(np.abs(lpr / np.concatenate(ref_more) - 1)))
    t_ours_more = float(np.mean(t_more))
    print(
        f"{len(X_test):>10} | {t_sk:>11.3f}s {t_ours:>9.3f}s {t_sk / t_ours:>5.1f}x | "
        f"{t_sk_more:>8.3f}s {t_ours_more * 1e3:>8.2f}ms {t_sk_more / t_ours_more:>6.0f}x | "
        f"{diff:>12.1e}"
    )

    mem_sk = peak_mib(lambda: sk_lpr(train, test, alpha))
    mem_ours = peak_mib(lambda: local_prediction_rigidity(train, test, alpha))
    mem_proj = peak_mib(partial(solver.lpr_from_projections, P, 1e-3))
    print(
        f"{'':>10}   peak memory (tracemalloc): skmatter {mem_sk:.0f} MiB, "
        f"lprviz first call {mem_ours:.0f} MiB, lprviz further alpha {mem_proj:.0f} MiB "
        f"(cached projections P: {P.nbytes / 2**20:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
