"""Where the Explore page's time goes: pyinstrument over one alpha change and one
training-set change (streamlit AppTest, server side) on emt-alloys written N times.

    python benchmarks/profile_app.py [--copies 13] [--min-share 0.02]

Prints the call tree of each reaction (frames under ``--min-share`` of it hidden). The
first page load (featurising, unless the descriptors are in the disk cache) is not profiled.
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_app import _app
from make_big import replicated_emt
from pyinstrument import Profiler
from streamlit.testing.v1.local_script_runner import LocalScriptRunner

from lprviz import datasets, selection

_ACTIVE: list[Profiler] = []
_thread_body = LocalScriptRunner._run_script_thread


def _profiled_thread(self) -> None:
    """The script thread's body under the active profiler (AppTest runs the page in a
    thread of its own; a profiler only samples the thread that started it)."""
    if not _ACTIVE:
        return _thread_body(self)
    _ACTIVE[0].start()
    try:
        return _thread_body(self)
    finally:
        _ACTIVE[0].stop()


LocalScriptRunner._run_script_thread = _profiled_thread


def _profiled(label: str, run, min_share: float) -> None:
    profiler = Profiler(interval=0.005)
    _ACTIVE.append(profiler)
    try:
        run()
    finally:
        _ACTIVE.clear()
    print(f"\n===== {label}")
    print(profiler.output_text(show_all=False, time="seconds",
                               processor_options={"filter_threshold": min_share}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=13)
    parser.add_argument("--min-share", type=float, default=0.02)
    args = parser.parse_args()
    source = None if args.copies == 1 else replicated_emt(args.copies)
    at = _app(source)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.slider(key="alpha_log10").set_value(-3.0).run()  # the first alpha builds the grid
    _profiled("alpha change", at.slider(key="alpha_log10").set_value(-2.0).run,
              args.min_share)
    ds = datasets.load(source or datasets.DEFAULT_DATASET)
    mask = selection.preset_mask("bulk + a few surface/defect structures", ds.groups,
                                 [a.numbers for a in ds.frames], seed=1)
    at.session_state["train"] = {source or datasets.DEFAULT_DATASET:
                                 tuple(int(i) for i in np.flatnonzero(mask))}
    _profiled("training-set change", at.run, args.min_share)
    assert not at.exception, [e.value for e in at.exception]


if __name__ == "__main__":
    main()
