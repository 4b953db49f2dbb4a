"""Time lprviz's LPR against scikit-matter's reference implementation.

Random SOAP-like (positive) descriptors, per-atom mean convention. For each test-set size:

* first call: ``skmatter.metrics.local_prediction_rigidity`` vs
  ``lprviz.rigidity.local_prediction_rigidity`` (same inputs, same outputs);
* each further alpha: scikit-matter has to redo the whole computation; lprviz re-uses the
  cached factorisation and the projections ``pipeline.prepare`` keeps for this shape: thin
  (``r`` span coordinates and the out-of-span norm per atom,
  ``RigiditySolver.lpr_and_undetermined_from_thin``) on the dual route, which fewer training
  structures than half the features take, else full float32 ones
  (``RigiditySolver.lpr_from_projections``); the full ones are timed as well;
* peak memory of each path (tracemalloc, in a separate untimed run);
* a sweep over 21 alphas in one ``(P*P) @ W`` product vs 21 single-alpha passes;
* ``eigh`` of a d = 1470 matrix on 1 vs 2 BLAS threads (threadpoolctl), which is why
  :data:`lprviz.rigidity._FACTOR_THREADS` is 1.

With ``--load`` a second process keeps one core busy (a numpy matrix-product loop) during all
of it: the shared-machine case. Targets: first call >= 5x scikit-matter, each further alpha
>= 300x (d = 500, 200 training structures, 10k test atoms).

Usage: ``python benchmarks/bench_lpr.py [--quick] [--load]``. Prints ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
import tracemalloc
from functools import partial

import numpy as np
from skmatter.metrics import local_prediction_rigidity as sk_lpr
from threadpoolctl import threadpool_limits

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


def _busy(stop) -> None:
    """Keep one core busy until ``stop`` is set (the 'second process loading the CPU')."""
    with threadpool_limits(1):
        A = np.random.default_rng(1).random((400, 400))
        while not stop.is_set():
            A = A @ A
            A /= np.abs(A).max()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--load", action="store_true",
                        help="a second process keeps one core busy meanwhile")
    args = parser.parse_args(argv)
    stop = multiprocessing.Event()
    loader = None
    if args.load:
        loader = multiprocessing.Process(target=_busy, args=(stop,), daemon=True)
        loader.start()
        print("a second process keeps one core busy (--load)")
    try:
        _run(args)
    finally:
        stop.set()
        if loader is not None:
            loader.join()


def _run(args) -> None:
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
        f"{'sk/alpha':>9} {'ours/alpha':>10} {'ratio':>7} | {'rel diff 1st':>12} "
        f"{'f32 / alpha':>12}"
    )
    print(header)
    print("-" * len(header))
    for n_test in test_sizes:
        run_one(train, split_atoms(rng, n_test, d), alpha, more_alphas)
    sweep(train, split_atoms(rng, test_sizes[0], d))
    factor_threads(200 if args.quick else 1470)


def sweep(train, test) -> None:
    """21 alphas: one (P*P) @ W product vs 21 single-alpha passes (float32 projections)."""
    solver = RigiditySolver.from_structures(train)
    P = solver.projections(np.vstack(test), dtype=np.float32)
    alphas = np.logspace(-8, 2, 21)
    t_one, one = timed(lambda: solver.lpr_sweep_from_projections(P, alphas), repeat=3)
    t_many, many = timed(lambda: [solver.lpr_from_projections(P, a) for a in alphas], repeat=3)
    diff = np.max(np.abs(one / np.asarray(many) - 1))
    print(f"sweep of 21 alphas, {P.shape[0]} atoms: one product {t_one * 1e3:.1f} ms, 21 passes "
          f"{t_many * 1e3:.1f} ms ({t_many / t_one:.1f}x), max rel diff {diff:.1e}")


def factor_threads(d: int) -> None:
    """eigh of a d x d Gram matrix on 1 and 2 BLAS threads."""
    X = np.random.default_rng(2).random((d + 50, d))
    G = X.T @ X
    times = {}
    for n in (1, 2):
        with threadpool_limits(n):
            times[n], _ = timed(lambda: np.linalg.eigh(G), repeat=2)
    print(f"eigh d={d}: 1 thread {times[1]:.2f} s, 2 threads {times[2]:.2f} s "
          f"(2 threads / 1 thread = {times[2] / times[1]:.2f})")


def _thin_lpr(solver, P, rho2, alpha):
    """LPR of one alpha from thin projections: the app's per-alpha pass on the dual route
    (:meth:`~lprviz.rigidity.RigiditySolver.lpr_and_undetermined_from_thin`)."""
    return solver.lpr_and_undetermined_from_thin(P, rho2, alpha)[0]


def further_alphas(lpr_of, alphas, ref) -> tuple[float, float]:
    """Mean over ``alphas`` of the best-of-3 time of ``lpr_of(alpha)``, and the largest
    relative difference from ``ref`` (scikit-matter's LPR at ``alphas[1]``)."""
    times, diff = [], 0.0
    for a in alphas:
        t, lpr = timed(partial(lpr_of, a), repeat=3)
        times.append(t)
        if a == alphas[1]:
            diff = float(np.max(np.abs(lpr / ref - 1)))
    return float(np.mean(times)), diff


def run_one(train, test, alpha, more_alphas) -> None:
    """Time and measure one test set; print one table row and a memory line."""
    X_test = np.vstack(test)
    t_sk, (ref, _) = timed(lambda: sk_lpr(train, test, alpha))
    t_ours, (ours, _) = timed(lambda: local_prediction_rigidity(train, test, alpha), repeat=3)
    diff = np.max(np.abs(np.concatenate(ours) / np.concatenate(ref) - 1))

    # further alphas: skmatter recomputes from scratch; lprviz re-uses the projections
    # pipeline.prepare keeps for this shape (thin on the dual route, full otherwise)
    t_sk_more, (ref_more, _) = timed(lambda: sk_lpr(train, test, more_alphas[1]))
    ref_more = np.concatenate(ref_more)
    solver = RigiditySolver.from_structures(train)
    P = solver.projections(X_test, dtype=np.float32)
    if solver.route == "dual":
        P_thin, rho2 = solver.thin_projections(X_test, dtype=np.float32)
        kept = partial(_thin_lpr, solver, P_thin, rho2)
    else:
        kept = partial(solver.lpr_from_projections, P)
    t_kept, diff_more = further_alphas(kept, more_alphas, ref_more)
    t_full, diff_full = further_alphas(partial(solver.lpr_from_projections, P), more_alphas,
                                       ref_more)
    print(
        f"{len(X_test):>10} | {t_sk:>11.3f}s {t_ours:>9.3f}s {t_sk / t_ours:>5.1f}x | "
        f"{t_sk_more:>8.3f}s {t_kept * 1e3:>8.2f}ms {t_sk_more / t_kept:>6.0f}x | "
        f"{diff:>12.1e} {diff_more:>12.1e}"
    )
    print(f"{'':>10}   further alpha from {solver.route} route's kept projections "
          f"({'thin: r + 1 numbers per atom' if solver.route == 'dual' else 'full'}); from "
          f"full float32 projections (n x d): {t_full * 1e3:.2f} ms = "
          f"{t_sk_more / t_full:.0f}x, rel diff {diff_full:.1e}")

    mem_sk = peak_mib(lambda: sk_lpr(train, test, alpha))
    mem_ours = peak_mib(lambda: local_prediction_rigidity(train, test, alpha))
    mem_proj = peak_mib(partial(kept, 1e-3))
    kept_bytes = P_thin.nbytes + rho2.nbytes if solver.route == "dual" else P.nbytes
    print(
        f"{'':>10}   peak memory (tracemalloc): skmatter {mem_sk:.0f} MiB, "
        f"lprviz first call {mem_ours:.0f} MiB, lprviz further alpha {mem_proj:.0f} MiB "
        f"(kept projections: {kept_bytes / 2**20:.0f} MiB; full float32: "
        f"{P.nbytes / 2**20:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
