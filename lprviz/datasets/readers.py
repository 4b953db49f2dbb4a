"""Readers: extended XYZ (and other ASE formats), the mlearn JSON format, compressed files,
and the checks every frame passes (:func:`validate_frames`)."""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols

from lprviz.errors import InputError

#: Largest total number of atoms :func:`load` accepts unless told otherwise.
DEFAULT_MAX_ATOMS = 200_000


#: Info keys tried, in order, for a frame's group when no ``group_key`` is given.
GROUP_KEYS = ("group", "config_type")


UNGROUPED = "ungrouped"


#: Info keys tried, in order, for a frame's total energy (after the calculator's result).
ENERGY_KEYS = ("energy", "REF_energy", "dft_energy", "total_energy", "Energy")


def _sniff(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(8192)
    except OSError as exc:
        raise InputError(f"{path}: cannot read file ({exc.strerror})") from None


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sniffed block is fine.
        return exc.start >= len(head) - 4
    return True


def _read_file(
    path: Path, *, group_key: str | None, max_atoms: int = DEFAULT_MAX_ATOMS
) -> tuple[list[Atoms], dict[str, list]]:
    """Frames and per-frame metadata (groups, names, splits) of one file."""
    if path.suffix.lower() in _DECOMPRESSORS:
        return _read_compressed(path, group_key=group_key, max_atoms=max_atoms)
    head = _sniff(path)
    if not head:
        raise InputError(f"{path.name}: file is empty, expected structures (extxyz or JSON)")
    # Pickles are never read (ASE's legacy trajectory and some formats would unpickle).
    if head[:1] == b"\x80" or head.startswith(b"PickleTrajectory"):
        raise InputError(f"{path.name}: looks like a Python pickle; pickles are never loaded, "
                         "convert it to extxyz")
    suffix = path.suffix.lower()
    if suffix == ".json":
        if not _is_text(head):
            raise InputError(f"{path.name}: binary data, expected a JSON text file")
        if head.lstrip()[:1] == b"[":
            frames, meta = read_mlearn_json(path)
            return frames, meta
        fmt = "json"
    elif suffix in (".xyz", ".extxyz", ""):
        if not _is_text(head):
            raise InputError(f"{path.name}: binary data, expected an extended XYZ text file")
        _check_xyz_counts(path, max_atoms=max_atoms)
        fmt = "extxyz"
    else:
        fmt = None
    try:
        frames = ase.io.read(path, index=":", format=fmt)
    except Exception as exc:  # ASE raises many types for malformed files
        msg = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise InputError(f"{path.name}: cannot read structures ({msg})") from None
    if isinstance(frames, Atoms):
        frames = [frames]
    frames = list(frames)
    groups = _groups_from_info(frames, group_key, source=path.name)
    names = [str(a.info.get("name", f"{path.name}#{i}")) for i, a in enumerate(frames)]
    splits = [_split_from_info(a) for a in frames]
    for a in frames:
        _energy_to_calc(a)
    return frames, {"groups": groups, "names": names, "splits": splits}


# Compressed inputs are expanded into memory up to this many bytes per allowed atom (an
# extxyz atom line with forces and a few per-atom arrays is ~100-200 bytes), so that a
# small "bomb" that expands to gigabytes is refused instead of exhausting memory.
_BYTES_PER_ATOM = 512


_DECOMPRESSORS = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}


def _read_compressed(
    path: Path, *, group_key: str | None, max_atoms: int
) -> tuple[list[Atoms], dict[str, list]]:
    import importlib

    module = importlib.import_module(_DECOMPRESSORS[path.suffix.lower()])
    limit = max(_BYTES_PER_ATOM * max_atoms, 1 << 20)
    try:
        with module.open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except (OSError, EOFError, ValueError) as exc:
        raise InputError(f"{path.name}: cannot decompress ({exc})") from None
    if len(data) > limit:
        raise InputError(f"{path.name}: expands to more than {limit >> 20} MB, beyond what "
                         f"{max_atoms} atoms (max_atoms) need; decompress and check it")
    inner = Path(path.stem)  # e.g. "frames.xyz" of "frames.xyz.gz"
    with tempfile.TemporaryDirectory(prefix="lprviz-") as tmp:
        plain = Path(tmp) / f"data{inner.suffix}"
        plain.write_bytes(data)
        try:
            return _read_file(plain, group_key=group_key, max_atoms=max_atoms)
        except InputError as exc:
            raise InputError(str(exc).replace(plain.name, path.name)) from None


def _check_xyz_counts(path: Path, *, max_atoms: int) -> None:
    """Walk the atom-count lines of an (ext)xyz file before ASE does.

    ASE reads one line per atom a frame claims, even past the end of the file, so a 12-byte
    file that claims 1e11 atoms would keep it busy for hours. Lines that are not counts are
    left for ASE to report.
    """
    total, frame = 0, 0
    with open(path, "rb") as fh:
        while line := fh.readline():
            if not line.strip():
                continue
            try:
                n = int(line)
            except ValueError:
                return
            total += n
            if n < 0 or total > max_atoms:
                raise InputError(f"{path.name}: frame {frame}: more than {max_atoms} atoms in "
                                 f"total (limit max_atoms; this frame claims {n})")
            for _ in range(n + 1):
                if not fh.readline():
                    return  # truncated: ASE names the problem
            frame += 1


def _groups_from_info(frames: list[Atoms], group_key: str | None, *, source: str) -> list[str]:
    if group_key is not None:
        if frames and not any(group_key in a.info for a in frames):
            keys = sorted({k for a in frames for k in a.info})
            raise InputError(f"{source}: no frame has info key '{group_key}' for groups; "
                             f"available keys: {', '.join(keys) or 'none'}")
        keys: tuple[str, ...] = (group_key,)
    else:
        keys = GROUP_KEYS
    out = []
    for a in frames:
        label = next((a.info[k] for k in keys if k in a.info), UNGROUPED)
        out.append(str(label))
    return out


def _split_from_info(atoms: Atoms) -> str:
    value = str(atoms.info.get("split", "")).lower()
    return {"train": "train", "training": "train", "test": "test"}.get(value, "")


def _energy_to_calc(atoms: Atoms) -> None:
    """Make the frame's energy (and forces) a calculator result, wherever the file put it."""
    energy = _frame_energy(atoms)
    if energy is None:
        return
    if atoms.calc is not None and "energy" in atoms.calc.results:
        # ASE keeps a non-numeric ``energy=abc`` as a string: store the float (NaN then,
        # which validate_frames reports by frame) so nothing downstream meets a string.
        atoms.calc.results["energy"] = energy
        return
    results: dict = {"energy": energy}
    if atoms.calc is not None:
        results = {**atoms.calc.results, **results}
    elif "forces" in atoms.arrays:
        results["forces"] = np.asarray(atoms.arrays.pop("forces"), dtype=float)
    atoms.calc = SinglePointCalculator(atoms, **results)


def _frame_energy(atoms: Atoms) -> float | None:
    """Total energy of a frame from its calculator results or info, None if absent."""
    calc = atoms.calc
    if calc is not None and "energy" in getattr(calc, "results", {}):
        return _as_float(calc.results["energy"])
    for key in ENERGY_KEYS:
        if key in atoms.info:
            return _as_float(atoms.info[key])
    return None


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan  # reported by validate_frames, naming the frame


def read_mlearn_json(path: str | os.PathLike) -> tuple[list[Atoms], dict[str, list]]:
    """Read the mlearn JSON format (a list of pymatgen Structure dicts with outputs).

    Each entry needs ``structure.lattice.matrix`` (3x3, A), ``structure.sites[*].xyz``
    (Cartesian, A) and ``structure.sites[*].species[0].element``; ``outputs.energy`` (eV)
    and ``outputs.forces`` (eV/A) are optional, ``group`` gives the group. Structures are
    periodic in all directions. No pymatgen needed.

    Returns
    -------
    frames : list of ase.Atoms
    meta : dict with lists ``groups``, ``names``, ``splits`` (one entry per frame)
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except UnicodeDecodeError:
        raise InputError(f"{path.name}: not UTF-8 text, expected mlearn JSON") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path.name}: invalid JSON at line {exc.lineno} ({exc.msg}); "
                         "truncated file?") from None
    except OSError as exc:
        raise InputError(f"{path.name}: cannot read file ({exc.strerror})") from None
    if isinstance(data, dict) and "structure" in data:
        data = [data]
    if not isinstance(data, list):
        raise InputError(f"{path.name}: expected a JSON list of entries with a 'structure'")
    frames, groups, names, splits = [], [], [], []
    for i, entry in enumerate(data):
        where = f"{path.name}: entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("structure"), dict):
            raise InputError(f"{where}: missing 'structure' (a pymatgen Structure dict)")
        s = entry["structure"]
        try:
            cell = np.asarray(s["lattice"]["matrix"], dtype=float)
            sites = s["sites"]
            positions = np.asarray([site["xyz"] for site in sites], dtype=float).reshape(-1, 3)
            symbols = [str(site["species"][0]["element"]) for site in sites]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: malformed structure (field {exc}); expected "
                             "lattice.matrix, sites[*].xyz, sites[*].species[0].element") from None
        if cell.shape != (3, 3):
            raise InputError(f"{where}: lattice.matrix has shape {cell.shape}, expected (3, 3)")
        unknown = [x for x in symbols if x not in chemical_symbols or x == "X"]
        if unknown:
            raise InputError(f"{where}: unknown element '{unknown[0]}'")
        atoms = Atoms(symbols=symbols, positions=positions, cell=cell, pbc=True)
        outputs = entry.get("outputs") or {}
        results = {}
        if outputs.get("energy") is not None:
            try:
                results["energy"] = float(outputs["energy"])
            except (TypeError, ValueError):
                raise InputError(f"{where}: outputs.energy is not a number") from None
        if outputs.get("forces") is not None:
            forces = np.asarray(outputs["forces"], dtype=float)
            if forces.shape != (len(atoms), 3):
                raise InputError(f"{where}: outputs.forces has shape {forces.shape}, "
                                 f"expected ({len(atoms)}, 3)")
            results["forces"] = forces
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
        groups.append(str(entry.get("group") or UNGROUPED))
        names.append(f"{path.name}#{i}")
        tag = str(entry.get("tag", "")).lower()
        splits.append({"train": "train", "training": "train", "test": "test"}.get(tag, ""))
    return frames, {"groups": groups, "names": names, "splits": splits}


def validate_frames(
    frames: Iterable[Atoms],
    *,
    source: str,
    require_energy: bool = False,
    max_atoms: int = DEFAULT_MAX_ATOMS,
) -> None:
    """Check frames for what the rest of lprviz assumes; raise on the first problem.

    Checks: at least one frame; no zero-atom frames; known elements; finite positions and
    cells; a non-degenerate cell along periodic directions; finite energies where present
    (and present in every frame if ``require_energy``); finite forces and per-atom
    ``true_local_energy`` of the right shape where present; total atoms <= ``max_atoms``.

    Parameters
    ----------
    frames : iterable of ase.Atoms
    source : str
        File or dataset name used in the messages.
    require_energy : bool
        Whether every frame needs a total energy (training structures do).
    max_atoms : int
        Largest total number of atoms accepted.

    Raises
    ------
    InputError
        One line naming the source, the frame and the field.
    """
    frames = list(frames)
    if not frames:
        raise InputError(f"{source}: no structures found")
    total = 0
    for i, atoms in enumerate(frames):
        where = f"{source}: frame {i}"
        n = len(atoms)
        if n == 0:
            raise InputError(f"{where}: has zero atoms")
        total += n
        if total > max_atoms:
            raise InputError(f"{source}: more than {max_atoms} atoms in total (limit max_atoms); "
                             "use a smaller file or raise the limit")
        numbers = atoms.numbers
        if numbers.min() < 1 or numbers.max() >= len(chemical_symbols):
            bad = int(numbers[(numbers < 1) | (numbers >= len(chemical_symbols))][0])
            raise InputError(f"{where}: unknown element (atomic number {bad})")
        if not np.all(np.isfinite(atoms.positions)):
            raise InputError(f"{where}: positions contain NaN or inf")
        cell = np.asarray(atoms.cell)
        if not np.all(np.isfinite(cell)):
            raise InputError(f"{where}: cell contains NaN or inf")
        pbc = np.asarray(atoms.pbc, dtype=bool)
        if pbc.any():
            lengths = np.linalg.norm(cell, axis=1)
            if np.any(lengths[pbc] < 1e-6) or (pbc.all() and abs(np.linalg.det(cell)) < 1e-6):
                raise InputError(f"{where}: periodic cell is degenerate (pbc={pbc.tolist()})")
        energy = _frame_energy(atoms)
        if energy is None:
            if require_energy:
                raise InputError(f"{where}: missing total energy (required for training)")
        elif not math.isfinite(energy):
            raise InputError(f"{where}: energy is not a finite number")
        calc_results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
        forces = calc_results.get("forces", atoms.arrays.get("forces"))
        if forces is not None:
            forces = np.asarray(forces, dtype=float)
            if forces.shape != (n, 3) or not np.all(np.isfinite(forces)):
                raise InputError(f"{where}: forces must be finite with shape ({n}, 3)")
        if "true_local_energy" in atoms.arrays:
            local = np.asarray(atoms.arrays["true_local_energy"], dtype=float).reshape(-1)
            if local.shape != (n,) or not np.all(np.isfinite(local)):
                raise InputError(f"{where}: true_local_energy must be finite, one per atom")

