"""Committee spread vs 1/LPR (Spearman), energy-only against force-trained, on emt-alloys.

The app's defaults: train on the bulk frames, SOAP preset ``default``, alpha = 1e-4, a
committee of members on 70 % of the training frames; every atom of the dataset is ranked.
Force-trained: lambda_F = 0.03 (``DEFAULT_FORCE_WEIGHT``), every member fitted to the
energies and forces of its frames, 1/LPR of the force-trained model.

Usage: ``python benchmarks/committee_forces.py [--preset fast] [--n-models 8]``. Prints the
two correlations and the times; asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lprviz import datasets
from lprviz.features import SOAP_PRESETS, compute_soap
from lprviz.pipeline import DEFAULT_FORCE_WEIGHT, ModelSpec, prepare
from lprviz.validation import committee_check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default", choices=sorted(SOAP_PRESETS))
    parser.add_argument("--n-models", type=int, default=8)
    args = parser.parse_args()
    alpha = 1e-4
    ds = datasets.load("emt-alloys")
    desc = compute_soap(ds.frames, SOAP_PRESETS[args.preset], species=ds.species)
    train = np.isin(np.asarray(ds.groups), ["bulk-pure", "bulk-alloy"])
    for weight in (None, DEFAULT_FORCE_WEIGHT):
        fit = prepare(ds, desc, train, ModelSpec(), force_weight=weight)
        phi = fit.model_features(np.asarray(desc.values, dtype=np.float64), desc.atom_numbers)
        t0 = time.perf_counter()
        check = committee_check(phi, ds.structure_index, ds.energies, train, alpha,
                                solver=fit.solver, n_models=args.n_models, seed=0,
                                force_gradients=fit.force_gradients, forces=fit.forces,
                                force_weight=fit.force_weight)
        what = "energy-only  " if weight is None else f"forces {weight:g}"
        print(f"{what}: Spearman(spread, 1/LPR) = {check.spearman:.3f} over {ds.n_atoms} "
              f"atoms, {args.n_models} members in {time.perf_counter() - t0:.1f} s "
              f"(preset {args.preset}, d = {fit.solver.n_features})")


if __name__ == "__main__":
    main()
