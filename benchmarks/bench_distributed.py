"""``lprviz lpr`` on Dask: wall time, CPU time and client peak memory, 1 vs 2 workers.

The dataset is emt-alloys written 26 times with rattled copies (``make_big.py``: 7,800
distinct structures, 203,944 atoms); training = the bulk and vacancy groups of every copy
(3,640 structures), test = the rest. Both phases run on the workers: parse and check
(scan), SOAP and X^T X of the training chunks (partial sums), then SOAP, LPR and extxyz
text of the test chunks.

This script starts a LocalCluster of N single-threaded worker processes itself and runs
``lprviz lpr --scheduler`` in a fresh interpreter, so the client process measured is the
command alone (with ``--workers N`` the scheduler would run inside it). Per run it prints
the wall time, the client's peak RSS and CPU time (measured inside it with ``resource``),
the CPU seconds the workers spent (their ``getrusage`` before and after) and the step lines.
The speed-up of 2 workers over 1 is measured in the same run; on a machine whose cores are
busy with other work the wall-time speed-up cannot show, while the worker CPU seconds show
whether splitting the work adds any. A reference run on a set 4.4x smaller (same route:
one d x d eigendecomposition on the client) shows what of the client's RSS grows with atoms.

    python benchmarks/bench_distributed.py [--copies 26] [--preset default] [--workers 1,2]
        [--model linear|sparse-kernel] [--ref-copies 6]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import distributed
from make_big import replicated_emt

ROOT = Path(__file__).resolve().parents[1]
TRAIN_GROUPS = "bulk-pure,bulk-alloy,vacancy"

# Runs ``lprviz lpr`` in a fresh interpreter and prints its own peak RSS and CPU time.
_CLIENT = """
import json, resource, sys, time
from lprviz.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
wall = time.perf_counter() - t
use = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"code": code, "wall": wall, "rss": use.ru_maxrss * 1024,
                  "cpu": use.ru_utime + use.ru_stime}))
"""


def _cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def run(n_workers: int, path: str, preset: str, tmp: str, model: str = "linear") -> dict:
    """One ``lprviz lpr --scheduler`` run on a new LocalCluster of ``n_workers``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=50,
                                  env={"RAYON_NUM_THREADS": "1"}) as cluster, \
            distributed.Client(cluster) as client:
        before = client.run(_cpu)
        load = os.getloadavg()[0]
        argv = ["lpr", "--dataset", path, "--train-groups", TRAIN_GROUPS, "--preset", preset,
                "--model", model,
                "-o", str(Path(tmp) / "out.extxyz"), "--summary", str(Path(tmp) / "s.json"),
                "--scheduler", cluster.scheduler_address]
        proc = subprocess.run([sys.executable, "-c", _CLIENT, *argv], env=env,
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            raise SystemExit(f"lprviz failed:\n{proc.stderr}")
        after = client.run(_cpu)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["workers_cpu"] = sum(after[w] - before[w] for w in after)
    out["steps"] = [line.strip() for line in proc.stderr.splitlines() if "done in" in line]
    out["load"] = (load, os.getloadavg()[0])
    out["test_atoms"] = json.loads((Path(tmp) / "s.json").read_text())["quantiles"][0]["count"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=26)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--model", default="linear", choices=("linear", "sparse-kernel"),
                        help="sparse-kernel: the client also gathers the training SOAP for FPS")
    parser.add_argument("--ref-copies", type=int, default=6,
                        help="copies of the client-RSS reference set (default 6: 47k atoms)")
    args = parser.parse_args()
    path = replicated_emt(args.copies, rattle=0.01)
    n_atoms = 7844 * args.copies
    print(f"{path}: {n_atoms} atoms; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="lprviz-bench-") as tmp:
        small = run(1, replicated_emt(args.ref_copies, rattle=0.01), args.preset, tmp,
                    args.model)
        print(f"reference, x{args.ref_copies} ({7844 * args.ref_copies} atoms), 1 worker: "
              f"wall {small['wall']:.1f} s, client peak RSS {small['rss'] / 2**20:.0f} MiB")
        runs = {}
        for workers in [int(w) for w in args.workers.split(",")]:
            res = runs[workers] = run(workers, path, args.preset, tmp, args.model)
            print(f"{workers} worker(s): wall {res['wall']:.1f} s "
                  f"({1e6 * res['wall'] / n_atoms:.0f} us per atom); workers' CPU "
                  f"{res['workers_cpu']:.1f} s ({1e6 * res['workers_cpu'] / n_atoms:.0f} us "
                  f"per atom); client CPU {res['cpu']:.1f} s, peak RSS "
                  f"{res['rss'] / 2**20:.0f} MiB; {res['test_atoms']} test atoms; load "
                  f"average {res['load'][0]:.1f} before, {res['load'][1]:.1f} after")
            for line in res["steps"]:
                print(f"    {line}")
    if 1 in runs:
        for workers, res in runs.items():
            if workers != 1:
                print(f"{workers} workers over 1: wall speed-up "
                      f"{runs[1]['wall'] / res['wall']:.2f}x (ideal {workers}x); workers' CPU "
                      f"{res['workers_cpu'] / runs[1]['workers_cpu']:.2f}x that of one worker")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"benchmark time {time.perf_counter() - start:.0f} s")
