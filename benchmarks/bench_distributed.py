"""``lprviz lpr --workers N``: wall time and client peak memory, 1 vs 2 workers.

The dataset is emt-alloys written 26 times with rattled copies (``make_big.py``: 7,800
distinct structures, 203,944 atoms); training = the bulk and vacancy groups of every copy
(3,640 structures), test = the rest. Both phases run on the workers: SOAP and X^T X of the
training chunks (reduced as a tree of partial sums), then SOAP, LPR and extxyz text of the
test chunks. Prints per run: wall time, the client's peak RSS (its own process, measured
inside it with ``resource``; the worker processes are not counted), and the speed-up of 2
workers over 1 measured in the same run. The client reads the file three times (scan,
training, test); its read time is printed as a separate reference (one ``ase.io.iread``
pass), since it bounds the speed-up.

    python benchmarks/bench_distributed.py [--copies 26] [--preset default] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.io
from make_big import replicated_emt

ROOT = Path(__file__).resolve().parents[1]
TRAIN_GROUPS = "bulk-pure,bulk-alloy,vacancy"

# Runs ``lprviz lpr`` in a fresh interpreter and prints its own peak RSS (bytes) as JSON.
_CLIENT = """
import json, resource, sys, time
from lprviz.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
wall = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"code": code, "wall": wall, "rss": rss}))
"""


def run(argv: list[str]) -> dict:
    """Wall time, client peak RSS and the step lines (``label... done in t s``) of one run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, "-c", _CLIENT, *argv], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"lprviz failed:\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["steps"] = [line.strip() for line in proc.stderr.splitlines() if "done in" in line]
    out["load"] = (load, os.getloadavg()[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=26)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--ref-copies", type=int, default=6,
                        help="copies of the client-RSS reference set (default 6: 47k atoms)")
    args = parser.parse_args()
    path = replicated_emt(args.copies, rattle=0.01)
    start = time.perf_counter()
    n_frames = n_atoms = 0
    for atoms in ase.io.iread(path, index=":", format="extxyz"):
        n_frames += 1
        n_atoms += len(atoms)
    read = time.perf_counter() - start
    print(f"{path}: {n_frames} frames, {n_atoms} atoms; one ase.io.iread pass {read:.1f} s "
          f"(the client makes three)")
    runs = {}
    with tempfile.TemporaryDirectory(prefix="lprviz-bench-") as tmp:
        # reference: the same client on a set 4x smaller, with as many training rows as
        # features or more (the same primal route: one d x d eigendecomposition on the
        # client), so the difference in RSS is what grows with the number of atoms
        small_path = replicated_emt(args.ref_copies, rattle=0.01)
        small = run(["lpr", "--dataset", small_path, "--train-groups", TRAIN_GROUPS,
                     "--preset", args.preset, "-o", str(Path(tmp) / "small.extxyz"),
                     "--summary", str(Path(tmp) / "small.json"), "--workers", "1"])
        print(f"reference, emt-alloys x{args.ref_copies} ({args.ref_copies * 7844} atoms), "
              f"--workers 1: wall {small['wall']:.1f} s, client peak RSS "
              f"{small['rss'] / 2**20:.0f} MiB")
        for workers in [int(w) for w in args.workers.split(",")]:
            out = Path(tmp) / f"out{workers}.extxyz"
            summary = Path(tmp) / f"summary{workers}.json"
            res = run(["lpr", "--dataset", path, "--train-groups", TRAIN_GROUPS,
                       "--preset", args.preset, "-o", str(out),
                       "--summary", str(summary), "--workers", str(workers)])
            runs[workers] = res
            test_atoms = json.loads(summary.read_text())["quantiles"][0]["count"]
            print(f"--workers {workers}: wall {res['wall']:.1f} s "
                  f"({1e6 * res['wall'] / n_atoms:.0f} us per atom), client peak RSS "
                  f"{res['rss'] / 2**20:.0f} MiB; {test_atoms} test atoms, output "
                  f"{out.stat().st_size / 2**20:.0f} MiB; load average {res['load'][0]:.1f} "
                  f"before, {res['load'][1]:.1f} after (2 cores)")
            for line in res["steps"]:
                print(f"    {line}")
            out.unlink()
    if 1 in runs:
        for workers, res in runs.items():
            if workers != 1:
                print(f"speed-up of {workers} workers over 1: "
                      f"{runs[1]['wall'] / res['wall']:.2f}x (ideal {workers}x on "
                      f"{os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
