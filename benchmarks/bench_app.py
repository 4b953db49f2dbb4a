"""Server-side time and memory of the app's reactions at 8k, 24k and 100k atoms.

Runs the Explore page headless (streamlit.testing AppTest: the whole script, every plot and
the viewer HTML, without a browser) on emt-alloys written 1, 3 and 13 times
(``make_big.py``: 7.8k, 23.5k, 102k atoms) and prints, per scale, ratios against references
timed in the same run:

* alpha change, whole page vs one pass ``P @ w`` over a float64 (n_atoms x d) array
  (target <= 3x at 100k);
* training-set change, whole page vs one (n_atoms x d)(d x d) product (target <= 2x);
* per-atom cost of the alpha change relative to the smallest scale (target <= 1.5x at 100k);
* process RSS after the first load and after three training sets vs the dense descriptors
  (n_atoms x d float64; target <= 3x). Each scale runs in a process of its own (the app's
  caches live per process).

    python benchmarks/bench_app.py [--scale 1,3,13] [--repeat 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from make_big import replicated_emt
from streamlit.runtime.scriptrunner.script_cache import ScriptCache
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1 import app_test as _app_test
from streamlit.testing.v1 import local_script_runner as _local_runner

from lprviz import datasets, features, pipeline, selection

APP = str(Path(__file__).resolve().parents[1] / "app.py")

# A server compiles each page script once (one ScriptCache per runtime); AppTest makes a new
# cache per run, so every rerun would recompile app.py and the page. One shared cache makes
# a rerun measure the page, as a user of the server sees it.
_SCRIPTS = ScriptCache()
_app_test.ScriptCache = _local_runner.ScriptCache = lambda: _SCRIPTS


def _app(source: str | None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=3600)
    if source is not None:
        at.session_state["uploads"] = {Path(source).name: source}
        at.session_state["dataset_label"] = Path(source).name
    return at


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _rss() -> float:
    """Resident set size of this process (bytes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) * 1024
    return float("nan")


def _references(n_atoms: int, d: int) -> tuple[float, float]:
    """Seconds of one pass P @ w over float64 (n_atoms, d), and of one (n_atoms x d)(d x d)
    product (written block by block into one buffer, so memory stays at the input)."""
    P = np.full((n_atoms, d), 0.5)
    w = np.ones(d)
    t_pass = min(_timed(lambda: P @ w) for _ in range(3))
    V = np.random.default_rng(0).random((d, d))
    out = np.empty((4096, d))

    def product():
        for s in range(0, n_atoms, 4096):
            block = P[s : s + 4096]
            np.matmul(block, V, out=out[: len(block)])

    t_gemm = _timed(product)
    return t_pass, t_gemm


def _library(ds, mask) -> tuple[float, float, int]:
    """Seconds of pipeline.prepare and pipeline.evaluate alone, and the model's d."""
    desc = features.compute_soap(ds.frames, features.SOAP_PRESETS["default"],
                                 species=ds.species)
    # float32, as the app holds them (lprviz.app.caches.descriptors): on the primal route
    # its projection products run in float32, about twice as fast as on float64
    desc = dataclasses.replace(desc, values=desc.values.astype(np.float32))
    t_prep = _timed(lambda: pipeline.prepare(ds, desc, mask, pipeline.ModelSpec()))
    fit = pipeline.prepare(ds, desc, mask, pipeline.ModelSpec())
    t_eval = min(_timed(lambda: pipeline.evaluate(fit, 1e-3)) for _ in range(3))
    return t_prep, t_eval, fit.solver.n_features


def bench(source: str | None, label: str, repeat: int) -> dict:
    at = _app(source)
    t_first = _timed(at.run)
    assert not at.exception, [e.value for e in at.exception]
    rss_load = _rss()
    src = source or datasets.DEFAULT_DATASET
    ds = datasets.load(src)
    alphas = [-3.0, -2.0, -5.0, -4.0, -1.0, -6.0][: 2 * repeat]
    t_alpha = [_timed(at.slider(key="alpha_log10").set_value(a).run) for a in alphas]
    assert not at.exception, [e.value for e in at.exception]

    numbers = [a.numbers for a in ds.frames]
    masks = [selection.preset_mask("bulk + a few surface/defect structures", ds.groups,
                                   numbers, seed=s) for s in range(3)]
    t_train = []
    for m in masks:
        at.session_state["train"] = {src: tuple(int(i) for i in np.flatnonzero(m))}
        t_train.append(_timed(at.run))
    assert not at.exception, [e.value for e in at.exception]
    rss_train = _rss()
    del at

    t_prep, t_eval, d = _library(ds, masks[0])
    n = ds.n_atoms
    t_pass, t_gemm = _references(n, d)
    dense = n * d * 8.0
    row = {"atoms": n, "alpha": float(np.median(t_alpha)), "train": float(np.median(t_train)),
           "pass": t_pass, "gemm": t_gemm}
    print(f"\n{label}: {len(ds.frames)} structures, {n} atoms, d = {d}, "
          f"{int(masks[0].sum())} training structures")
    print(f"  first page load (featurise + factorise + draw): {t_first:7.2f} s")
    print(f"  alpha change, whole page (median of {len(t_alpha)}): {row['alpha']:7.3f} s = "
          f"{row['alpha'] / t_pass:6.1f}x one float64 pass P @ w ({t_pass * 1e3:.1f} ms; "
          f"target <= 3x); pipeline.evaluate {t_eval:.3f} s = {t_eval / t_pass:.1f}x")
    print(f"  training-set change, whole page (median of 3): {row['train']:7.2f} s = "
          f"{row['train'] / t_gemm:5.2f}x one (n_atoms x d)(d x d) product ({t_gemm:.2f} s; "
          f"target <= 2x); pipeline.prepare {t_prep:.2f} s = {t_prep / t_gemm:.2f}x")
    print(f"  RSS after load {rss_load / 2**30:.2f} GiB, after three training sets "
          f"{rss_train / 2**30:.2f} GiB = {rss_train / dense:.2f}x the dense descriptors "
          f"({dense / 2**30:.2f} GiB; target <= 3x)")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="1,3",
                        help="copies of emt-alloys, comma-separated (1,3,13: 8k/24k/100k atoms)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:  # one scale in this process (the app's caches are per process)
        source = None if args.one == 1 else replicated_emt(args.one)
        label = datasets.DEFAULT_DATASET if args.one == 1 else Path(source).name
        row = bench(source, f"{label} (x{args.one})", args.repeat)
        print("ROW " + json.dumps(row), flush=True)
        return
    rows = []
    for copies in (int(c) for c in args.scale.split(",")):
        proc = subprocess.run([sys.executable, __file__, "--one", str(copies), "--repeat",
                               str(args.repeat)], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"scale x{copies} failed:\n{proc.stderr[-3000:]}")
        for line in proc.stdout.splitlines():
            if line.startswith("ROW "):
                rows.append(json.loads(line[4:]))
            else:
                print(line, flush=True)
    base = rows[0]
    for row in rows[1:]:
        per_atom = (row["alpha"] / row["atoms"]) / (base["alpha"] / base["atoms"])
        print(f"per-atom cost of an alpha change at {row['atoms']} atoms: {per_atom:.2f}x that "
              f"at {base['atoms']} atoms (target <= 1.5x)")


if __name__ == "__main__":
    main()
