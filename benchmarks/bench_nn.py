"""Time the nn model and the alpha slider for every feature source on emt-alloys.

* NN training (``lprviz.nn.fit_nn`` through ``pipeline.prepare``) vs the linear model's
  ``prepare`` on the same training set and SOAP (reference timed in the same run);
* the alpha slider per feature source: one ``pipeline.evaluate`` vs one float32 ``P @ w``
  pass over the same projections (the floor of any alpha change). Sources: SOAP (linear,
  sparse kernel), a per-atom array of width 128 stored in the frames (as a MACE descriptor
  would be), the nn model;
* Spearman rank correlation of 1/LLPR with the spread of the local energies of a committee
  of 4 networks (seeds 0..3) on the test atoms, and with a bootstrap committee of ridge
  readouts on the network's last-layer features (``validation.committee_check``).

Training set: bulk, vacancy and interstitial groups (the rest is the test set).
Usage: ``python benchmarks/bench_nn.py [--preset fast] [--repeat 20]``. Prints ratios;
asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import spearmanr

from lprviz import datasets, sources, validation
from lprviz.features import SOAP_PRESETS
from lprviz.pipeline import ModelSpec, evaluate, prepare
from lprviz.rigidity import project_dot

TRAIN_GROUPS = ("bulk-pure", "bulk-alloy", "vacancy", "interstitial")


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default", choices=list(SOAP_PRESETS))
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    data = datasets.load("emt-alloys")
    train = np.isin(data.groups, TRAIN_GROUPS)
    test_atoms = ~train[data.structure_index]
    soap = sources.descriptors_for(
        data, sources.FeatureSource("soap", hypers=SOAP_PRESETS[args.preset]))
    print(f"emt-alloys: {data.n_atoms} atoms, {train.sum()} training frames, SOAP "
          f"'{args.preset}' d = {soap.values.shape[1]}")

    t0 = time.perf_counter()
    prepare(data, soap, train, ModelSpec())
    t_linear = time.perf_counter() - t0
    t0 = time.perf_counter()
    nn_fit = prepare(data, soap, train, ModelSpec(kind="nn"))
    t_nn = time.perf_counter() - t0
    hist = nn_fit.nn.history
    print(f"\nnn training + factorisation: {t_nn:.2f} s ({len(hist)} epochs, best "
          f"{nn_fit.nn.best_epoch}; loss {hist[0, 0]:.3g} -> {hist[-1, 0]:.3g}, held-out "
          f"{hist[0, 1]:.3g} -> {hist[nn_fit.nn.best_epoch, 1]:.3g}); linear prepare "
          f"{t_linear:.2f} s; ratio {t_nn / t_linear:.1f}x")

    # a per-atom array like a foundation model's descriptor: width 128, stored in the frames
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(soap.values.shape[1], 128)) / np.sqrt(soap.values.shape[1])
    width = np.tanh(soap.values / soap.values.std() @ mix)
    for atoms, part in zip(data.frames, np.split(width, np.cumsum(data.frame_sizes)[:-1]),
                           strict=True):
        atoms.arrays["bench_desc"] = part
    array = sources.descriptors_for(data, sources.FeatureSource("array", array="bench_desc"))
    fits = {
        "SOAP, linear": prepare(data, soap, train, ModelSpec()),
        "SOAP, sparse kernel (500)": prepare(data, soap, train, ModelSpec(kind="sparse-kernel")),
        "array (d = 128), linear": prepare(data, array, train, ModelSpec()),
        "SOAP, nn (32 hidden)": nn_fit,
    }
    print("\nalpha slider: one pipeline.evaluate vs one float32 P @ w pass (best of "
          f"{args.repeat})")
    print("| source | d | evaluate | P @ w | ratio |\n|---|---|---|---|---|")
    for name, fit in fits.items():
        w = rng.normal(size=fit.solver.n_features)
        t_eval = _best(lambda fit=fit: evaluate(fit, 1e-3), args.repeat)
        t_floor = _best(lambda fit=fit, w=w: project_dot(fit.projections, w), args.repeat)
        print(f"| {name} | {fit.solver.n_features} | {t_eval * 1e3:.1f} ms | "
              f"{t_floor * 1e3:.2f} ms | {t_eval / t_floor:.1f}x |")

    res = evaluate(nn_fit, 1e-4)
    inv = 1.0 / res.lpr[test_atoms]
    members = [nn_fit.nn] + [prepare(data, soap, train, ModelSpec(kind="nn", seed=s)).nn
                             for s in (1, 2, 3)]
    local = np.stack([m.predict_local(soap.values[test_atoms], data.atom_numbers[test_atoms])
                      for m in members])
    rho_seeds = spearmanr(inv, local.std(axis=0)).statistic
    phi = nn_fit.model_features(soap.values, data.atom_numbers)
    check = validation.committee_check(phi, data.structure_index, data.energies, train, 1e-4,
                                       atoms=np.flatnonzero(test_atoms),
                                       solver=nn_fit.solver, n_models=8, seed=0)
    print(f"\nSpearman(1/LLPR, spread) on {test_atoms.sum()} test atoms at alpha = 1e-4: "
          f"4 networks (seeds 0-3) {rho_seeds:.2f}; 8 bootstrap readouts on the last layer "
          f"{check.spearman:.2f}")


if __name__ == "__main__":
    main()
