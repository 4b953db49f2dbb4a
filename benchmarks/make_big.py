"""Write a large dataset for the benchmarks: the shipped emt-alloys set repeated.

    python benchmarks/make_big.py --copies 13 [-o PATH] [--rattle 0.01]

``--copies 13`` gives 3,900 frames and 101,972 atoms (the size of issue 13). Copy 0 is the
original; with ``--rattle`` every further copy has its positions displaced by a Gaussian of
that width (Angstrom, seeded), so every frame is a distinct structure (the CLI benchmark
needs that: ``lprviz lpr`` featurises identical structures once); energies and per-atom
EMT energies are copied, not recomputed (they only enter the timings). Written to the
system temporary directory at benchmark time, never committed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import ase.io
import numpy as np

from lprviz import datasets


def replicated_emt(copies: int, *, rattle: float = 0.0, path: str | None = None) -> str:
    """Path of emt-alloys written ``copies`` times (created once, then reused)."""
    tag = f"x{copies}" + (f"-r{rattle:g}" if rattle else "")
    out = Path(path) if path else Path(tempfile.gettempdir()) / f"lprviz-bench-emt-{tag}.extxyz"
    if out.exists():
        return str(out)
    ds = datasets.load(datasets.DEFAULT_DATASET)
    rng = np.random.default_rng(13)
    frames = []
    for k in range(copies):
        for a in ds.frames:
            b = a.copy()
            b.calc = a.calc
            if k and rattle:
                b.positions += rng.normal(scale=rattle, size=b.positions.shape)
            b.info["name"] = f"{b.info.get('name', 'frame')}-copy{k}"
            frames.append(b)
    tmp = out.with_suffix(".tmp.extxyz")
    ase.io.write(tmp, frames, format="extxyz")
    tmp.replace(out)
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=13)
    parser.add_argument("--rattle", type=float, default=0.0)
    parser.add_argument("-o", "--output", default=None)
    args = parser.parse_args()
    print(replicated_emt(args.copies, rattle=args.rattle, path=args.output))


if __name__ == "__main__":
    main()
