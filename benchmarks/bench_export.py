"""Writing ``lprviz lpr``'s output extxyz: ``export.write_annotated`` vs the route it replaced.

The old route (``tests/reference_export.py``) copies every frame (``annotated_frames``),
then ASE's header builder per frame and Python's ``%`` for every float; the new one builds
each frame's columns and header from the dataset frame and the results table, formats the
shared header entries once and the float fields in vectorised batches. Both write the test
frames of emt-alloys written ``--copies`` times (``make_big.py``, rattled copies; 3,760
test frames, 98k atoms at 13 copies) into memory, alternating, best of ``--repeat``; the
texts must be equal. The results are copy 0's, fitted on its bulk and vacancy frames (as in
``bench_cli.py``), repeated for every copy: writing does not depend on the values.

    python benchmarks/bench_export.py [--copies 13] [--alphas 1e-4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from make_big import replicated_emt  # noqa: E402
from reference_export import reference_write  # noqa: E402

from lprviz import datasets, export, features, pipeline  # noqa: E402

TRAIN_GROUPS = ("bulk-pure", "bulk-alloy", "vacancy")


def _tiled_results(copies: int, alphas: list[float]) -> list[pipeline.Results]:
    """Results of emt-alloys (trained on copy 0's bulk and vacancy frames) for ``copies``
    copies of it: per-atom and per-frame arrays repeated, training frames in copy 0 only."""
    ds = datasets.load(datasets.DEFAULT_DATASET)
    mask = np.isin(ds.groups, TRAIN_GROUPS)
    desc = features.compute_soap(ds.frames, features.SOAP_PRESETS["fast"], species=ds.species)
    fit = pipeline.prepare(ds, desc, mask, pipeline.ModelSpec())
    out = []
    for alpha in alphas:
        res = pipeline.evaluate(fit, alpha)
        tiled = {f.name: np.concatenate([v] * copies) for f in dataclasses.fields(res)
                 if isinstance(v := getattr(res, f.name), np.ndarray)}
        tiled["train_mask"] = np.concatenate([mask, np.zeros(len(mask) * (copies - 1), bool)])
        out.append(dataclasses.replace(res, **tiled))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=13)
    parser.add_argument("--alphas", default="1e-4", help="comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    alphas = [float(a) for a in args.alphas.split(",")]
    ds = datasets.load(replicated_emt(args.copies, rattle=0.01))
    results = _tiled_results(args.copies, alphas)
    kwargs = {"include_training": False}

    def old() -> str:
        buf = io.StringIO()
        reference_write(buf, export.annotated_frames(ds, results, **kwargs))
        return buf.getvalue()

    def new() -> str:
        buf = io.StringIO()
        export.write_annotated(buf, ds, results, **kwargs)
        return buf.getvalue()

    best = {"old": np.inf, "new": np.inf}
    texts = {}
    for _ in range(args.repeat):
        for name, run in (("old", old), ("new", new)):
            start = time.perf_counter()
            texts[name] = run()
            best[name] = min(best[name], time.perf_counter() - start)
    n_frames = int((~results[0].train_mask).sum())
    print(f"{n_frames} test frames, {len(texts['new']) / 2**20:.1f} MiB of extxyz, "
          f"{len(alphas)} alpha(s); best of {args.repeat}")
    print(f"old route (Atoms copies, ASE header per frame, % per float): {best['old']:.3f} s")
    print(f"write_annotated:                                           {best['new']:.3f} s")
    print(f"speed-up {best['old'] / best['new']:.2f}x; identical text: "
          f"{texts['old'] == texts['new']}")


if __name__ == "__main__":
    main()
