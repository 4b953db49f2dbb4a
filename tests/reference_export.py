"""The extxyz writing route lprviz used before ``export.write_annotated`` (a helper module of
the tests and ``benchmarks/bench_export.py``): the reference its output must equal byte for
byte."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import IO

import numpy as np
from ase import Atoms
from ase.io.extxyz import output_column_format, save_calc_results
from ase.stress import voigt_6_to_full_3x3_stress


def reference_write(fh: IO[str], frames: Iterable[Atoms]) -> None:
    """The ASE-copy route the fast writer replaced: copy each frame, add its calculator
    results with ASE's ``save_calc_results``, build the header and the column format with
    ASE's ``output_column_format``, then one ``%`` per frame with floats at ``%.15e``."""
    for original in frames:
        atoms = original.copy()
        save_calc_results(atoms, original.calc, calc_prefix="")
        if np.shape(atoms.info.get("stress", ())) == (6,):
            atoms.info["stress"] = voigt_6_to_full_3x3_stress(atoms.info["stress"])
        skip = {"numbers", "positions", "symbols", "species", "pos"}
        columns = ["symbols", "positions", *[k for k in atoms.arrays if k not in skip]]
        arrays = {k: atoms.arrays[k] for k in columns[2:]}
        arrays["symbols"] = np.array(atoms.get_chemical_symbols())
        arrays["positions"] = atoms.positions
        comment, ncols, dtype, fmt = output_column_format(atoms, columns, arrays, True)
        fmt = fmt.replace("%16.8f", "%22.15e")
        data = np.zeros(len(atoms), dtype)
        for column, ncol in zip(columns, ncols, strict=True):
            value = arrays[column]
            if ncol == 1:
                data[column] = np.squeeze(value)
            else:
                for c in range(ncol):
                    data[column + str(c)] = value[:, c]
        fh.write(f"{len(atoms)}\n{comment}\n")
        fh.write((fmt * len(data)) % tuple(itertools.chain.from_iterable(data.tolist())))
