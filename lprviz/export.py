"""Results to files: extxyz at full precision, per-atom CSV, chemiscope input.

Used by the ``lprviz lpr`` command and the app's Export page; functions take a
:class:`~lprviz.datasets.Dataset` and :class:`~lprviz.pipeline.Results` and return bytes.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
from ase import Atoms
from ase.io.extxyz import output_column_format, save_calc_results
from ase.stress import voigt_6_to_full_3x3_stress

__all__ = ["annotated_frames", "chemiscope_bytes", "csv_bytes", "extxyz_bytes", "write_extxyz"]


def write_extxyz(file: str | Path | IO[str], frames: Iterable[Atoms]) -> None:
    """Write extxyz with floats at full precision.

    ASE's writer prints floats as ``%16.8f``, which rounds an LPR of 1e-9 to zero; this
    uses ASE's own header builder and calculator-results handling, with ``%.15e`` floats.

    Parameters
    ----------
    file : str, pathlib.Path or text file object
    frames : iterable of ase.Atoms
        Per-atom arrays and info entries are written as ASE's writer would write them.
    """
    with contextlib.ExitStack() as stack:
        fh = file if hasattr(file, "write") else stack.enter_context(open(file, "w"))
        for original in frames:
            atoms = original.copy()
            save_calc_results(atoms, original.calc, calc_prefix="")
            # As ASE's writer does: its reader only accepts a 9-long (3x3) stress.
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
            for row in data:
                fh.write(fmt % tuple(row))


def annotated_frames(ds, res) -> list:
    """Copies of the frames with per-atom ``lpr``, ``log10_lpr``, ``local_energy``,
    ``undetermined`` arrays.

    ``log10_lpr`` is there for viewers that colour better on a log scale.
    """
    out = []
    sidx = ds.structure_index
    for i, atoms in enumerate(ds.frames):
        sel = sidx == i
        a = atoms.copy()
        a.calc = atoms.calc  # keep the reference energy (written as a calculator result)
        a.arrays["lpr"] = res.lpr[sel]
        a.arrays["log10_lpr"] = np.log10(res.lpr[sel])
        a.arrays["local_energy"] = res.local_energy[sel]
        a.arrays["undetermined"] = np.asarray(res.undetermined)[sel].astype(int)
        a.info["energy_pred"] = float(res.energy_pred[i])
        a.info["pr"] = float(res.pr[i])
        a.info["in_training"] = bool(res.train_mask[i])
        a.info["lpr_alpha"] = float(res.alpha)
        out.append(a)
    return out


def extxyz_bytes(ds, res) -> bytes:
    """Extended XYZ of every frame with the per-atom results."""
    buf = io.StringIO()
    write_extxyz(buf, annotated_frames(ds, res))
    return buf.getvalue().encode()


def _csv_text(value: object) -> str:
    """User text for a CSV cell that a spreadsheet will not run as a formula."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_bytes(ds, res) -> bytes:
    """One CSV row per atom: frame, name, group, species, position, LPR, local energy.

    Names and groups that start like a spreadsheet formula get a leading ``'``.
    """
    sidx = ds.structure_index
    pos = np.concatenate([a.positions for a in ds.frames])
    df = pd.DataFrame({
        "frame": sidx, "name": np.asarray([_csv_text(n) for n in ds.names])[sidx],
        "group": np.asarray([_csv_text(g) for g in ds.groups])[sidx],
        "atom": np.arange(len(sidx)) - np.searchsorted(sidx, sidx),
        "Z": ds.atom_numbers, "x": pos[:, 0], "y": pos[:, 1], "z": pos[:, 2],
        "lpr": res.lpr, "undetermined": np.asarray(res.undetermined, bool),
        "local_energy": res.local_energy,
        "in_training": np.asarray(res.train_mask, bool)[sidx],
    })
    if ds.true_local_energies is not None:
        df["true_local_energy"] = ds.true_local_energies
    return df.to_csv(index=False).encode()


def chemiscope_bytes(ds, res) -> bytes:
    """A chemiscope input file (gzipped JSON) with LPR as an atom property."""
    import chemiscope

    frames = [a.copy() for a in ds.frames]
    properties = {
        "LPR": {"target": "atom", "values": res.lpr.tolist(),
                "description": f"local prediction rigidity at alpha={res.alpha:.3g}"},
        "log10 LPR": {"target": "atom", "values": np.log10(res.lpr).tolist()},
        "local energy": {"target": "atom", "values": res.local_energy.tolist(), "units": "eV"},
        "in training": {"target": "structure",
                        "values": [str(bool(t)) for t in res.train_mask]},
        "group": {"target": "structure", "values": [str(g) for g in ds.groups]},
    }
    per_atom = np.asarray(ds.energies, dtype=float) / ds.frame_sizes
    # JSON has no NaN: with unlabelled structures the property would make an invalid file.
    if np.all(np.isfinite(per_atom)):
        properties["energy per atom"] = {"target": "structure", "values": per_atom.tolist(),
                                         "units": "eV"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lprviz.json.gz"
        chemiscope.write_input(
            str(path), structures=frames, properties=properties,
            environments=chemiscope.all_atomic_environments(frames),
            metadata={"name": f"lprviz: {ds.name}"},
            settings={"structure": [{"color": {"property": "log10 LPR"}}]},
        )
        return path.read_bytes()
