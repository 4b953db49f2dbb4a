"""Time the sparse kernel's force rows (the Nyström chain rule) in blocks, on one BLAS thread.

``lprviz.forces.position_gradients`` with a Nyström map on emt-alloys frames (default SOAP,
M active environments), four ways in one run: the chain rule over each featomic key at once
(the old code) or in blocks of ``_KERNEL_BLOCK`` gradient samples, each with BLAS on one
thread or on all. featomic's own time (gradients without the kernel) is printed as the
floor. CPU and wall seconds are both printed: on a shared machine the wall time shows what
waiting for busy cores costs.

Usage: ``python benchmarks/bench_forces_kernel.py [--every 3] [--n-sparse 500]``. Prints
ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lprviz import datasets, forces
from lprviz.features import SOAP_PRESETS, compute_soap
from lprviz.models import fit_nystrom


def timed(frames, hypers, species, nystrom):
    w, c = time.perf_counter(), time.process_time()
    grads = np.concatenate([g for _, g in forces.position_gradients(
        frames, hypers, species=species, nystrom=nystrom)])
    return time.perf_counter() - w, time.process_time() - c, grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=3, help="every n-th frame (default 3)")
    parser.add_argument("--n-sparse", type=int, default=500)
    args = parser.parse_args()
    ds = datasets.load("emt-alloys")
    frames = ds.frames[:: args.every]
    hypers = SOAP_PRESETS["default"]
    desc = compute_soap(frames, hypers, species=ds.species)
    nystrom = fit_nystrom(desc.values, args.n_sparse, zeta=2)
    n_atoms = sum(len(a) for a in frames)
    print(f"emt-alloys every {args.every}th frame: {len(frames)} frames, {n_atoms} atoms, "
          f"d = {desc.values.shape[1]}, M = {nystrom.active.shape[0]}")
    floor = timed(frames, hypers, ds.species, None)
    print(f"featomic + sum, no kernel:             wall {floor[0]:7.1f} s  cpu {floor[1]:7.1f} s")
    block, one = forces._KERNEL_BLOCK, forces._KERNEL_ONE_THREAD
    results = {}
    try:
        for label, size, single in (("whole keys, all threads (old)", 10**12, False),
                                    ("whole keys, one thread", 10**12, True),
                                    (f"blocks of {block}, all threads (new)", block, False),
                                    (f"blocks of {block}, one thread", block, True)):
            forces._KERNEL_BLOCK, forces._KERNEL_ONE_THREAD = size, single
            results[label] = timed(frames, hypers, ds.species, nystrom)
            wall, cpu, _ = results[label]
            print(f"{label:38s} wall {wall:7.1f} s  cpu {cpu:7.1f} s")
    finally:
        forces._KERNEL_BLOCK, forces._KERNEL_ONE_THREAD = block, one
    (old, new) = (results["whole keys, all threads (old)"],
                  results[f"blocks of {block}, all threads (new)"])
    diff = np.max(np.abs(old[2] - new[2])) / np.max(np.abs(old[2]))
    print(f"ratio old / new: wall {old[0] / new[0]:.2f}x, cpu {old[1] / new[1]:.2f}x; "
          f"new / featomic floor: wall {new[0] / floor[0]:.2f}x; max rel. difference {diff:.1e}")


if __name__ == "__main__":
    main()
