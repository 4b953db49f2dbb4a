"""Cost of the fixed summation order of X^T X (lprviz.gramsum) against one GEMM.

Training rows of d = 1473 (default SOAP of emt-alloys with the composition columns), one per
frame of 10-60 atoms, random values. Per size it times, best of ``--repeat``:

* ``gramsum.training_sums``: blocks of :data:`lprviz.gramsum.BLOCK_ATOMS` atoms, each block
  product on 1 BLAS thread, block sums added as the pairwise tree (what ``prepare`` and the
  distributed run do);
* one GEMM ``R^T R`` (plus ``R^T y``) of all rows on 1 and on 2 BLAS threads;

and prints the ratios and the largest relative difference. The machine's other jobs show in
the seconds: compare the ratios, measured in the same run.

    python benchmarks/bench_gramsum.py [--rows 1500,6000,24000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import timeit

import numpy as np
from threadpoolctl import threadpool_limits

from lprviz import gramsum

D = 1473


def _best(fn, repeat: int) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1500,6000,24000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"d = {D}, blocks of {gramsum.BLOCK_ATOMS} atoms")
    print("rows | atoms | blocks | gramsum | GEMM 1 thr | GEMM 2 thr | ratio vs 1 thr | "
          "ratio vs 2 thr | max rel. diff")
    for n in [int(v) for v in args.rows.split(",")]:
        rows, y = rng.random((n, D)), rng.normal(size=n)
        sizes = rng.integers(10, 61, size=n)
        stops = gramsum.block_stops(sizes)
        t_tree = _best(lambda rows=rows, y=y, stops=stops:
                       gramsum.training_sums(rows, y, stops), args.repeat)
        gemm = {}
        for threads in (1, 2):
            with threadpool_limits(threads, user_api="blas"):
                gemm[threads] = _best(lambda rows=rows, y=y: (rows.T @ rows, rows.T @ y),
                                      args.repeat)
        tree = gramsum.training_sums(rows, y, stops)[0]
        ref = rows.T @ rows
        diff = float(np.abs(tree - ref).max() / np.abs(ref).max())
        print(f"{n} | {int(sizes.sum())} | {len(stops)} | {t_tree:.3f} s | {gemm[1]:.3f} s | "
              f"{gemm[2]:.3f} s | {t_tree / gemm[1]:.2f}x | {t_tree / gemm[2]:.2f}x | "
              f"{diff:.1e}")


if __name__ == "__main__":
    main()
