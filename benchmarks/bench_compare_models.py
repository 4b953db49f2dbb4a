"""Compare two models: rank agreement at 100k atoms, and Spearman between models on emt-alloys.

* ``lprviz.comparison.rank_agreement`` (Spearman overall and per group, percentile ranks,
  round-off ties) on 100k atoms in 12 groups, against one plain ``scipy.stats.spearmanr`` of
  the same arrays and one float32 ``P @ w`` pass at d = 500 (the floor of an alpha change,
  which the Compare page pays twice per alpha), all timed in the same run;
* ``--emt``: Spearman rank correlation between the LPRs of linear ridge, sparse kernel and
  the nn model (LLPR) on SOAP, the same training set and alpha, on the test atoms of
  emt-alloys (the nn only with the ``nn`` extra); what Compare's "two models" shows.

Usage: ``python benchmarks/bench_compare_models.py [--atoms 100000] [--emt]``. Prints
ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import timeit

import numpy as np
from scipy import stats
from threadpoolctl import threadpool_limits

from lprviz import comparison

TRAIN_GROUPS = ("bulk-pure", "bulk-alloy", "vacancy", "interstitial")


def _best(fn, repeat: int = 5) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeat))


def rank_timing(n_atoms: int) -> None:
    rng = np.random.default_rng(0)
    groups = np.array([f"group-{i}" for i in range(12)])[rng.integers(0, 12, n_atoms)]
    lpr_a = rng.lognormal(size=n_atoms)
    lpr_b = lpr_a * rng.lognormal(sigma=0.5, size=n_atoms)
    lpr_b[: n_atoms // 10] = lpr_b[0]  # a tenth tied (symmetry-equivalent atoms)
    P = rng.normal(size=(n_atoms, 500)).astype(np.float32)
    w = rng.normal(size=500).astype(np.float32)
    with threadpool_limits(1):
        t_agree = _best(lambda: comparison.rank_agreement(lpr_a, lpr_b, groups))
        t_scipy = _best(lambda: stats.spearmanr(lpr_a, lpr_b))
        t_pass = _best(lambda: P @ w)
    print(f"{n_atoms} atoms, 12 groups (1 BLAS thread):")
    print(f"  rank_agreement          {t_agree * 1e3:8.1f} ms")
    print(f"  scipy spearmanr overall {t_scipy * 1e3:8.1f} ms   ratio {t_agree / t_scipy:.2f}x")
    print(f"  one float32 P @ w, d=500 {t_pass * 1e3:7.1f} ms   ratio {t_agree / t_pass:.2f}x")


def emt_spearman(alpha: float) -> None:
    from lprviz import datasets, nn
    from lprviz.features import SOAP_PRESETS, compute_soap
    from lprviz.pipeline import ModelSpec, evaluate, prepare

    data = datasets.load("emt-alloys")
    train = np.isin(data.groups, TRAIN_GROUPS)
    test = ~train[data.structure_index]
    desc = compute_soap(data.frames, SOAP_PRESETS["default"], species=data.species)
    kinds = ["linear", "sparse-kernel"] + (["nn"] if nn.torch_missing() is None else [])
    lpr = {k: evaluate(prepare(data, desc, train, ModelSpec(kind=k)), alpha).lpr[test]
           for k in kinds}
    groups = np.asarray(data.groups)[data.structure_index][test]
    print(f"emt-alloys, SOAP default, training groups {', '.join(TRAIN_GROUPS)}, alpha "
          f"{alpha:g}; {int(test.sum())} test atoms:")
    for i, a in enumerate(kinds):
        for b in kinds[i + 1:]:
            agree = comparison.rank_agreement(lpr[a], lpr[b], groups)
            per = ", ".join(f"{r.group} {r.spearman:.2f}" for r in agree.per_group.itertuples())
            print(f"  {a} vs {b}: Spearman {agree.spearman:.3f} (per group: {per})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atoms", type=int, default=100_000)
    parser.add_argument("--emt", action="store_true", help="Spearman between models on "
                        "emt-alloys (trains the nn model: about a minute)")
    parser.add_argument("--alpha", type=float, default=1e-4)
    args = parser.parse_args()
    rank_timing(args.atoms)
    if args.emt:
        emt_spearman(args.alpha)


if __name__ == "__main__":
    main()
