"""Server-side time of the app's reactions: an alpha change and a training-set change.

Runs the Explore page headless (streamlit.testing AppTest: the whole script, every plot and
the viewer HTML, without a browser) on the default dataset and on a ~20k-atom dataset, and
prints times with the ratio to the target (alpha change < 0.3 s at 20k atoms) plus the
library parts (pipeline.prepare / evaluate) for reference.

    python benchmarks/bench_app.py [--big PATH_OR_NAME] [--repeat 3]

``--big`` defaults to the EMT set replicated three times (~23k atoms); pass e.g.
``../shared/data/mlearn_zuo2020/Si_training.json`` for real Si (13k atoms).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
from streamlit.testing.v1 import AppTest

from lprviz import datasets, features, pipeline, selection

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TARGET_ALPHA_S = 0.3


def _replicated_emt(copies: int) -> str:
    ds = datasets.load(datasets.DEFAULT_DATASET)
    frames = []
    for k in range(copies):
        for a in ds.frames:
            b = a.copy()
            b.calc = a.calc
            b.info["name"] = f"{b.info.get('name', 'frame')}-copy{k}"
            frames.append(b)
    path = Path(tempfile.gettempdir()) / f"lprviz-bench-emt-x{copies}.extxyz"
    if not path.exists():
        ase.io.write(path, frames, format="extxyz")
    return str(path)


def _app(source: str | None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=1800)
    if source is not None:
        at.session_state["uploads"] = {Path(source).name: source}
        at.session_state["dataset_label"] = Path(source).name
    return at


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench(source: str | None, label: str, repeat: int) -> None:
    at = _app(source)
    t_first = _timed(at.run)
    assert not at.exception, [e.value for e in at.exception]
    src = source or datasets.DEFAULT_DATASET
    ds = datasets.load(src)
    alphas = [-3.0, -2.0, -5.0, -4.0, -1.0, -6.0][: 2 * repeat]
    t_alpha = [_timed(at.slider(key="alpha_log10").set_value(a).run) for a in alphas]

    numbers = [a.numbers for a in ds.frames]
    masks = [selection.preset_mask("bulk + a few surface/defect structures", ds.groups,
                                   numbers, seed=s) for s in range(repeat)]
    t_train = []
    for m in masks:
        at.session_state["train"] = {src: tuple(int(i) for i in np.flatnonzero(m))}
        t_train.append(_timed(at.run))
    assert not at.exception, [e.value for e in at.exception]

    desc = features.compute_soap(ds.frames, features.SOAP_PRESETS["default"],
                                 species=ds.species)
    t_prep = _timed(lambda: pipeline.prepare(ds, desc, masks[0], pipeline.ModelSpec()))
    fit = pipeline.prepare(ds, desc, masks[0], pipeline.ModelSpec())
    t_eval = min(_timed(lambda: pipeline.evaluate(fit, 1e-3)) for _ in range(3))
    t_alpha_med = float(np.median(t_alpha))
    print(f"\n{label}: {len(ds.frames)} structures, {ds.n_atoms} atoms, "
          f"d = {desc.values.shape[1]}")
    print(f"  first page load (featurise + factorise + draw): {t_first:7.2f} s")
    print(f"  alpha change, whole page (median of {len(t_alpha)}): {t_alpha_med:7.3f} s"
          f"   ratio to target {TARGET_ALPHA_S} s: {t_alpha_med / TARGET_ALPHA_S:5.2f}")
    print(f"    of which pipeline.evaluate: {t_eval:7.3f} s")
    print(f"  training-set change, whole page (median of {len(t_train)}): "
          f"{np.median(t_train):7.3f} s")
    print(f"    of which pipeline.prepare (one d x d factorisation): {t_prep:7.3f} s"
          f"   ratio page/prepare: {np.median(t_train) / t_prep:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", default=None, help="~20k-atom dataset (name or path)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    bench(None, datasets.DEFAULT_DATASET, args.repeat)
    big = args.big or _replicated_emt(3)
    bench(big, Path(big).name, args.repeat)


if __name__ == "__main__":
    main()
