"""Time last-layer feature extraction (lprviz.backbones) against each model's own prediction.

For CHGNet and SevenNet on CPU, on the first ``--frames`` frames of emt-alloys (and the
mlearn Si test set when it is present), in one process:

* ``features``: ``last_layer_features(..., cache=False)`` (graphs + one forward pass per
  batch, no gradients), seconds and ms per atom;
* ``model``: the model's own energy through its public API on the same frames --
  CHGNet ``predict_structure(task="e")`` (batched, energy only), SevenNet's ASE calculator
  (one frame at a time; its model always computes forces too);
* ``ratio`` = features / model;
* ``disk hit`` / ``memory hit``: the same call again with the cache on (the per-call disk
  entry after clearing memory; then the per-structure memory cache alone).

Model loading is done before the timings (one load per process, ``lprviz.backbones._load``).
Usage: ``python benchmarks/bench_backbones.py [--frames 300] [--si-frames N] [--quick]
[--threads N]``.
Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

from lprviz import backbones, datasets
from lprviz import features as lpr_features


def chgnet_energies(frames):
    from pymatgen.io.ase import AseAtomsAdaptor

    model = backbones._load("chgnet").model
    structures = [AseAtomsAdaptor.get_structure(backbones._periodic(a, 6.0)) for a in frames]
    return model.predict_structure(structures, task="e", batch_size=16)


def sevenn_energies(frames, calc=[]):  # noqa: B006 (one calculator per process)
    if not calc:
        from sevenn.calculator import SevenNetCalculator

        calc.append(SevenNetCalculator("7net-0", device="cpu"))
    out = []
    for atoms in frames:
        boxed = backbones._periodic(atoms, 5.0)
        boxed.calc = calc[0]
        out.append(boxed.get_potential_energy())
    return out


MODEL = {"chgnet": chgnet_energies, "sevenn": sevenn_energies}


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(label, frames, name):
    n_atoms = sum(len(a) for a in frames)
    MODEL[name](frames[:2])  # warm-up: first calls build kernels and caches
    backbones.last_layer_features(frames[:2], name, cache=False)
    t_feat = timed(lambda: backbones.last_layer_features(frames, name, cache=False))
    t_model = timed(lambda: MODEL[name](frames))
    backbones.last_layer_features(frames, name, cache=True)  # fills disk + memory
    lpr_features.clear_memory_cache()
    t_disk = timed(lambda: backbones.last_layer_features(frames, name, cache=True))
    for path in backbones.cache_dir().glob(f"{name}-*.npz"):
        path.unlink()
    t_mem = timed(lambda: backbones.last_layer_features(frames, name, cache=True))
    print(f"| {label} | {name} | {len(frames)} / {n_atoms} | {t_feat:.2f} s "
          f"({1e3 * t_feat / n_atoms:.2f} ms/atom) | {t_model:.2f} s | "
          f"{t_feat / t_model:.2f} | {1e3 * t_disk:.1f} ms | {1e3 * t_mem:.1f} ms |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="emt-alloys frames (of 300)")
    parser.add_argument("--si-frames", type=int, default=None, help="Si test frames (all)")
    parser.add_argument("--quick", action="store_true", help="40 frames, 3 Si frames")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    n_frames = 40 if args.quick else args.frames
    os.environ["LPRVIZ_CACHE_DIR"] = tempfile.mkdtemp(prefix="lprviz-bench-")
    warnings.simplefilter("ignore")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          + "; ".join(backbones.model_version(n) for n in backbones.BACKBONES))
    sets = [("emt-alloys", datasets.load("emt-alloys").frames[:n_frames])]
    si = Path(os.environ.get("LPRVIZ_MLEARN_DIR", Path(__file__).resolve().parents[2]
                             / "shared" / "data" / "mlearn_zuo2020")) / "Si_test.json"
    if si.is_file():
        frames = datasets.load(str(si)).frames
        sets.append(("mlearn Si test", frames[:3 if args.quick else args.si_frames]))
    for name in backbones.BACKBONES:
        backbones._load(name)
    print("| data | model | frames / atoms | features | model energy | ratio | disk hit "
          "| memory hit |\n|---|---|---|---|---|---|---|---|")
    for label, frames in sets:
        for name in backbones.BACKBONES:
            bench(label, frames, name)


if __name__ == "__main__":
    main()
