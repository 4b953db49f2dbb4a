"""Readers: extended XYZ (and other ASE formats), the mlearn JSON format, compressed files,
and the checks every frame passes (:func:`validate_frames`)."""
from __future__ import annotations

import functools
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols
from ase.io.extxyz import REV_PROPERTY_NAME_MAP

from lprviz.errors import InputError
from lprviz.limits import (
    Limits,
    cell_heights,
    closest_pair,
    frames_with_close_pairs,
    get_limits,
)

#: Largest total number of atoms :func:`load` accepts by default: ``Limits.max_atoms``
#: (``LPRVIZ_MAX_ATOMS`` changes the limit in force, :func:`max_atoms_in_force`).
DEFAULT_MAX_ATOMS = Limits.max_atoms


def max_atoms_in_force(max_atoms: int | None = None) -> int:
    """The atom limit of a load: ``max_atoms`` when given, else the limit in force.

    Parameters
    ----------
    max_atoms : int, optional
        An explicit limit (a ``max_atoms=`` argument).

    Returns
    -------
    int
        ``max_atoms``, or ``Limits.max_atoms`` (changed by ``LPRVIZ_MAX_ATOMS``).
    """
    return get_limits().max_atoms if max_atoms is None else int(max_atoms)


#: Info keys tried, in order, for a frame's group when no ``group_key`` is given.
GROUP_KEYS = ("group", "config_type")


UNGROUPED = "ungrouped"


#: Info keys tried, in order, for a frame's total energy (after the calculator's result).
ENERGY_KEYS = ("energy", "REF_energy", "dft_energy", "total_energy", "Energy")


def _sniff(path: Path, label: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(8192)
    except OSError as exc:
        raise InputError(f"{label}: cannot read file ({exc.strerror})") from None


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sniffed block is fine.
        return exc.start >= len(head) - 4
    return True


def _check_size(path: Path, label: str) -> None:
    """Refuse a file larger than ``Limits.max_file_bytes`` before reading it."""
    limit = get_limits().max_file_bytes
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"{label}: cannot read file ({exc.strerror})") from None
    if size > limit:
        raise InputError(f"{label}: {size / 2**20:.0f} MiB, larger than the limit of "
                         f"{limit / 2**20:.0f} MiB (LPRVIZ_MAX_FILE_BYTES)")


def _read_file(
    path: Path, *, group_key: str | None, max_atoms: int,
    label: str | None = None,
) -> tuple[list[Atoms], dict[str, list]]:
    """Frames and per-frame metadata (groups, names, splits) of one file.

    ``label`` is the file's name for people (default ``path.name``): messages and default
    structure names (``"<label>#<i>"``) use it, never ``path`` (an upload's stored path).
    """
    label = label or path.name
    if path.suffix.lower() in _DECOMPRESSORS:
        return _read_compressed(path, group_key=group_key, max_atoms=max_atoms, label=label)
    _check_size(path, label)
    head = _sniff(path, label)
    if not head:
        raise InputError(f"{label}: file is empty, expected structures (extxyz or JSON)")
    # Pickles are never read (ASE's legacy trajectory and some formats would unpickle).
    if head[:1] == b"\x80" or head.startswith(b"PickleTrajectory"):
        raise InputError(f"{label}: looks like a Python pickle; pickles are never loaded, "
                         "convert it to extxyz")
    suffix = path.suffix.lower()
    if suffix == ".json":
        if not _is_text(head):
            raise InputError(f"{label}: binary data, expected a JSON text file")
        if head.lstrip()[:1] == b"[":
            frames, meta = read_mlearn_json(path, label=label)
            return frames, meta
        fmt = "json"
    elif suffix in (".xyz", ".extxyz") or (suffix == "" and _xyz_count_line(head)):
        if not _is_text(head):
            raise InputError(f"{label}: binary data, expected an extended XYZ text file")
        _check_xyz_counts(path, max_atoms=max_atoms, label=label)
        fmt = "extxyz"
    else:
        fmt = None
    frames = _read_bulk(path) if fmt == "extxyz" else None
    try:
        if frames is None:
            frames = ase.io.read(path, index=":", format=fmt)
    except Exception as exc:  # ASE raises many types for malformed files
        msg = " ".join(str(exc).split())[:200] or type(exc).__name__
        if isinstance(exc, KeyError):  # ASE's lookups: most often an unknown element symbol
            msg = f"unknown element symbol or key {msg}"
        if suffix == ".json":
            msg = f"expected an mlearn JSON list or an ASE JSON database: {msg}"
        raise InputError(f"{label}: cannot read structures ({msg})") from None
    if isinstance(frames, Atoms):
        frames = [frames]
    frames = list(frames)
    groups = _groups_from_info(frames, group_key, source=label)
    names = [str(a.info.get("name", f"{label}#{i}")) for i, a in enumerate(frames)]
    splits = [_split_from_info(a) for a in frames]
    for a in frames:
        _energy_to_calc(a)
    return frames, {"groups": groups, "names": names, "splits": splits}


def _read_bulk(path: Path) -> list[Atoms] | None:
    """The frames of an extxyz file read in bulk (:func:`lprviz.datasets.bulkxyz.read_extxyz`:
    the frames ASE's reader gives), or None where that reader leaves the file to ASE."""
    from lprviz.datasets.bulkxyz import read_extxyz

    try:
        with open(path) as fh:  # default encoding and newlines: what ase.io.read uses
            text = fh.read()
    except (OSError, UnicodeDecodeError):
        return None  # ASE reads it again and names the problem
    return read_extxyz(text)


# Compressed inputs are expanded into memory up to this many bytes per allowed atom (an
# extxyz atom line with forces and a few per-atom arrays is ~100-200 bytes), so that a
# small "bomb" that expands to gigabytes is refused instead of exhausting memory.
_BYTES_PER_ATOM = 512


_DECOMPRESSORS = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}


def split_format_suffix(path: Path) -> tuple[str, str]:
    """``(stem, suffix)`` of a data file's name, the suffix being its format's with the
    compression's after it, lower case: ``("frames", ".extxyz.gz")`` of ``frames.extxyz.gz``,
    ``("frames", ".json")`` of ``frames.json`` (the name a file is imported and listed by).
    Before a compression suffix only a format's suffix counts (``("v1.2", ".gz")`` of
    ``v1.2.gz``)."""
    name = path.name
    suffix = path.suffix.lower()
    if suffix in _DECOMPRESSORS:
        inner = Path(path.stem).suffix.lower()
        if inner[1:] in _format_extensions():
            suffix = inner + suffix
    return name[: len(name) - len(suffix)], suffix


@functools.cache
def _format_extensions() -> frozenset[str]:
    """File extensions of the formats ASE reads (``xyz``, ``json``, ``traj``...) and
    ``extxyz``."""
    from ase.io.formats import ioformats

    return frozenset({"extxyz", *(ext for fmt in ioformats.values() for ext in fmt.extensions)})


def _xyz_count_line(head: bytes) -> bool:
    """Whether a file's first line is an (ext)xyz atom count: a file without a suffix is
    read as extxyz then, else ASE tells its format by name and content (``POSCAR``,
    ``OUTCAR``...)."""
    first = head.split(b"\n", 1)[0].strip()
    return first.isdigit()


def _read_compressed(
    path: Path, *, group_key: str | None, max_atoms: int, label: str
) -> tuple[list[Atoms], dict[str, list]]:
    import importlib

    module = importlib.import_module(_DECOMPRESSORS[path.suffix.lower()])
    limit = min(max(_BYTES_PER_ATOM * max_atoms, 1 << 20), get_limits().max_file_bytes)
    try:
        with module.open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except (OSError, EOFError, ValueError) as exc:
        raise InputError(f"{label}: cannot decompress ({exc})") from None
    if len(data) > limit:
        raise InputError(f"{label}: expands to more than {limit >> 20} MB, beyond what "
                         f"{max_atoms} atoms (max_atoms, LPRVIZ_MAX_ATOMS) need; decompress and "
                         "check it")
    # the format's suffix: ".xyz" of "frames.xyz.gz", none of "v1.2.gz" (read as extxyz
    # when its first line is an atom count, else by ASE's format detection)
    inner = split_format_suffix(path)[1][: -len(path.suffix)]
    with tempfile.TemporaryDirectory(prefix="lprviz-") as tmp:
        plain = Path(tmp) / f"data{inner}"
        plain.write_bytes(data)
        try:
            return _read_file(plain, group_key=group_key, max_atoms=max_atoms, label=label)
        except InputError as exc:  # an ASE message may still quote the temporary file
            raise InputError(str(exc).replace(str(plain), label)) from None


def _check_xyz_counts(path: Path, *, max_atoms: int, label: str) -> None:
    """Walk the frames of an (ext)xyz file exactly as ASE's reader will, before it does.

    ASE reads one line per atom a frame claims, even past the end of the file, so a 12-byte
    file that claims 1e11 atoms would keep it busy for hours. The walk uses ASE's own
    parsing: the file opened as text the way ``ase.io.read`` opens it (universal newlines),
    counts read by ``int(str)`` (which takes Arabic-Indic or fullwidth digits, "_" and
    no-break spaces), stop at the first blank line, ``VEC`` lines skipped. It also refuses a
    ``Properties`` without positions or with too many columns (:func:`_check_properties`).
    Lines that are not counts, and undecodable text, are left for ASE to report.
    """
    total, frame = 0, 0
    limit = get_limits().max_columns  # read once, not per frame
    try:
        with open(path) as fh:  # default encoding and newlines: what ase.io.read uses
            line = fh.readline()
            while line.strip():
                try:
                    n = int(line)
                except ValueError:
                    return
                total += n
                if n < 0 or total > max_atoms:
                    raise InputError(f"{label}: frame {frame}: more than {max_atoms} atoms "
                                     f"in total (limit max_atoms, LPRVIZ_MAX_ATOMS; this "
                                     f"frame claims {n})")
                comment = fh.readline()
                if n:
                    _check_properties(comment, f"{label}: frame {frame}", limit)
                for _ in range(n):
                    if not fh.readline():
                        return  # truncated: ASE names the problem
                line = fh.readline()
                while line.lstrip().startswith("VEC"):
                    line = fh.readline()
                frame += 1
    except UnicodeDecodeError:
        return


_PROPERTIES = re.compile(r"""(?:^|\s)Properties=(?:"([^"]*)"|'([^']*)'|(\S*))""")


def _check_properties(comment: str, where: str, limit: int) -> None:
    """Refuse an extxyz ``Properties`` without positions (ASE then puts every atom at the
    origin) or with more than ``limit`` columns (``Limits.max_columns``, read once per file
    by the caller: ASE builds a record type of every column first, so 60 bytes declaring
    1e8 columns would take minutes and GBs)."""
    found = _PROPERTIES.findall(comment)
    if not found:
        return  # ASE's default: species and pos
    fields = "".join(found[-1]).split(":")  # the last one wins, as in ASE
    try:
        columns = sum(int(x) for x in fields[2::3])  # int(str), as ASE reads them
    except ValueError:
        return  # ASE reports it
    if columns > limit:
        raise InputError(f"{where}: Properties declares {columns} columns per atom (limit "
                         f"{limit}, LPRVIZ_MAX_COLUMNS)")
    if not any(REV_PROPERTY_NAME_MAP.get(n, n) == "positions" for n in fields[::3]):
        raise InputError(f"{where}: Properties has no 'pos' column, so every atom would sit "
                         "at the origin")


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
    except (TypeError, ValueError, OverflowError):  # text, or an integer beyond float
        return math.nan  # reported by validate_frames, naming the frame


def read_mlearn_json(
    path: str | os.PathLike, *, label: str | None = None
) -> tuple[list[Atoms], dict[str, list]]:
    """Read the mlearn JSON format (a list of pymatgen Structure dicts with outputs).

    Each entry needs ``structure.lattice.matrix`` (3x3, A), ``structure.sites[*].xyz``
    (Cartesian, A) and ``structure.sites[*].species[0].element``; ``outputs.energy`` (eV)
    and ``outputs.forces`` (eV/A) are optional, ``group`` gives the group. Structures are
    periodic in all directions. No pymatgen needed.

    Every field is checked for its JSON type and shape before use (see
    :func:`_mlearn_entry`); parsing errors, nesting too deep for Python's parser and
    integers too long for it become one-line errors too.

    Parameters
    ----------
    path : str or path-like
    label : str, optional
        The file's name in messages and default structure names (default: the file name).

    Returns
    -------
    frames : list of ase.Atoms
    meta : dict with lists ``groups``, ``names``, ``splits`` (one entry per frame)

    Raises
    ------
    InputError
        One line naming the file, the entry and the field.
    """
    path = Path(path)
    label = label or path.name
    _check_size(path, label)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except UnicodeDecodeError:
        raise InputError(f"{label}: not UTF-8 text, expected mlearn JSON") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{label}: invalid JSON at line {exc.lineno} ({exc.msg}); "
                         "truncated file?") from None
    except RecursionError:
        raise InputError(f"{label}: JSON nested too deeply to parse; expected mlearn "
                         "entries (a list of objects)") from None
    except ValueError as exc:  # e.g. an integer longer than Python's int_max_str_digits
        msg = str(exc).split(";")[0]
        raise InputError(f"{label}: invalid JSON ({msg})") from None
    except OSError as exc:
        raise InputError(f"{label}: cannot read file ({exc.strerror})") from None
    if isinstance(data, dict) and "structure" in data:
        data = [data]
    if not isinstance(data, list):
        raise InputError(f"{label}: expected a JSON list of entries with a 'structure', "
                         f"got {_json_kind(data)}")
    frames, groups, names, splits = [], [], [], []
    for i, entry in enumerate(data):
        atoms, group, tag = _mlearn_entry(entry, f"{label}: entry {i}")
        frames.append(atoms)
        groups.append(group)
        names.append(f"{label}#{i}")
        splits.append({"train": "train", "training": "train", "test": "test"}.get(tag, ""))
    return frames, {"groups": groups, "names": names, "splits": splits}


def _json_kind(value) -> str:
    """How a JSON value reads in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return "an object"


def _json_field(obj: dict, key: str, kind: type, where: str, name: str, *, optional=False):
    """``obj[key]`` if it is a ``kind`` (None when optional and absent or null)."""
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        what = {dict: "an object", list: "a list", str: "a string"}[kind]
        got = "missing" if key not in obj else _json_kind(value)
        raise InputError(f"{where}: {name}: expected {what}, got {got}")
    return value


def _json_row(row, where: str, name: str) -> None:
    """Check that ``row`` is a JSON list of 3 numbers."""
    if not isinstance(row, list) or len(row) != 3:
        raise InputError(f"{where}: {name}: expected 3 numbers, got {_json_kind(row)}")
    for x in row:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise InputError(f"{where}: {name}: expected 3 numbers, got {_json_kind(x)} inside")


def _json_vectors(value, n: int | None, where: str, name: str) -> np.ndarray:
    """A JSON list of ``n`` (any number if None) lists of 3 finite numbers, as (n, 3)."""
    if not isinstance(value, list) or (n is not None and len(value) != n):
        want = f"{n} rows of 3 numbers" if n is not None else "rows of 3 numbers"
        raise InputError(f"{where}: {name}: expected {want}, got {_json_kind(value)}")
    for k, row in enumerate(value):
        _json_row(row, where, name.replace("[*]", f"[{k}]") if "[*]" in name else f"{name}[{k}]")
    try:
        out = np.array(value, dtype=float).reshape(-1, 3)
    except OverflowError:  # an integer beyond the float range
        raise InputError(f"{where}: {name}: a number is too large") from None
    if not np.all(np.isfinite(out)):
        raise InputError(f"{where}: {name}: contains NaN or inf")
    return out


def _mlearn_entry(entry, where: str) -> tuple[Atoms, str, str]:
    """One mlearn entry as ``(atoms, group, tag)``, every field checked before use.

    Schema: ``{"structure": {"lattice": {"matrix": 3x3 numbers}, "sites": [{"xyz": 3
    numbers, "species": [{"element": str}, ...]}, ...]}, "outputs": {"energy": number|null,
    "forces": n x 3 numbers|null}|null, "group": str|number|null, "tag": str|null}``; other
    keys are ignored.
    """
    if not isinstance(entry, dict) or not isinstance(entry.get("structure"), dict):
        got = _json_kind(entry.get("structure")) if isinstance(entry, dict) else \
            _json_kind(entry) + " as the entry"
        raise InputError(f"{where}: missing 'structure' (a pymatgen Structure dict), got {got}")
    s = entry["structure"]
    lattice = _json_field(s, "lattice", dict, where, "structure.lattice")
    if "matrix" not in lattice:
        raise InputError(f"{where}: structure.lattice.matrix: missing (3 rows of 3 numbers)")
    cell = _json_vectors(lattice["matrix"], 3, where, "structure.lattice.matrix")
    sites = _json_field(s, "sites", list, where, "structure.sites")
    if not sites:
        raise InputError(f"{where}: structure.sites: empty, expected at least one site")
    symbols = []
    for k, site in enumerate(sites):
        name = f"structure.sites[{k}]"
        if not isinstance(site, dict):
            raise InputError(f"{where}: {name}: expected an object, got {_json_kind(site)}")
        species = _json_field(site, "species", list, where, f"{name}.species")
        first = species[0] if species else None
        if not isinstance(first, dict) or not isinstance(first.get("element"), str):
            raise InputError(f"{where}: {name}.species: expected a non-empty list of "
                             "{\"element\": symbol} objects")
        symbols.append(first["element"])
    positions = _json_vectors([site.get("xyz") for site in sites], len(sites), where,
                              "structure.sites[*].xyz")  # rows named sites[k].xyz
    unknown = [x for x in symbols if x not in chemical_symbols or x == "X"]
    if unknown:
        raise InputError(f"{where}: unknown element '{unknown[0][:20]}'")
    atoms = Atoms(symbols=symbols, positions=positions, cell=cell, pbc=True)
    outputs = _json_field(entry, "outputs", dict, where, "outputs", optional=True) or {}
    results = {}
    energy = outputs.get("energy")
    if energy is not None:
        if isinstance(energy, bool) or not isinstance(energy, (int, float)):
            raise InputError(f"{where}: outputs.energy is not a number ({_json_kind(energy)})")
        try:
            results["energy"] = float(energy)
        except OverflowError:
            raise InputError(f"{where}: outputs.energy is not a number (too large)") from None
    if outputs.get("forces") is not None:
        results["forces"] = _json_vectors(outputs["forces"], len(atoms), where, "outputs.forces")
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    group = entry.get("group")
    if group is not None and (isinstance(group, bool) or not isinstance(group, (str, int, float))):
        raise InputError(f"{where}: group: expected a string, got {_json_kind(group)}")
    tag = _json_field(entry, "tag", str, where, "tag", optional=True) or ""
    return atoms, str(group or UNGROUPED), tag.lower()


def validate_frames(
    frames: Iterable[Atoms],
    *,
    source: str,
    require_energy: bool = False,
    max_atoms: int | None = None,
) -> None:
    """Check frames for what the rest of lprviz assumes; raise on the first problem.

    Checks: at least one frame; no zero-atom frames; known elements; finite positions and
    cells within ``Limits.max_length``; a non-degenerate cell along periodic directions,
    with every height (lattice-plane spacing) at least ``Limits.min_distance``; no two
    atoms (periodic images included) closer than ``Limits.min_distance``; finite energies
    where present (and present in every frame if ``require_energy``); finite forces and
    per-atom ``true_local_energy`` of the right shape where present; total atoms <=
    ``max_atoms``. Limits: :mod:`lprviz.limits` (``LPRVIZ_*`` environment variables).

    Parameters
    ----------
    frames : iterable of ase.Atoms
    source : str
        File or dataset name used in the messages.
    require_energy : bool
        Whether every frame needs a total energy (training structures do).
    max_atoms : int, optional
        Largest total number of atoms accepted (default: ``Limits.max_atoms``, changed by
        ``LPRVIZ_MAX_ATOMS``).

    Raises
    ------
    InputError
        One line naming the source, the frame and the field.
    """
    frames = list(frames)
    if not frames:
        raise InputError(f"{source}: no structures found")
    limits = get_limits()
    max_atoms = limits.max_atoms if max_atoms is None else int(max_atoms)
    totals = np.cumsum([len(a) for a in frames])
    # The geometry of every frame is checked at once after this loop (one KD-tree, not
    # one per frame); a failure here is raised after the geometry of the frames before it
    # (and of its own frame when the failure comes later in a frame's order of checks).
    # The per-frame checks run only on the frames the array-wide screen cannot clear.
    failure: tuple[int, InputError, bool] | None = None
    for i in _suspects(frames, limits, require_energy=require_energy, max_atoms=max_atoms):
        atoms = frames[i]
        where = f"{source}: frame {i}"
        try:
            _check_values(atoms, where, limits, total=int(totals[i]), max_atoms=max_atoms,
                          source=source)
        except InputError as exc:
            failure = (i, exc, False)
            break
        try:
            _check_results(atoms, where, limits, require_energy=require_energy)
        except InputError as exc:
            failure = (i, exc, True)
            break
    checked = frames if failure is None else frames[: failure[0] + failure[2]]
    _check_geometry(checked, source, limits)
    if failure is not None:
        raise failure[1]


def _suspects(frames: list[Atoms], limits, *, require_energy: bool,
              max_atoms: int) -> list[int]:
    """Indices (ascending) of the frames that may fail :func:`_check_values` or
    :func:`_check_results`, screened over all frames at once: every frame that fails is
    listed (the screen's thresholds are the checks' own, or looser), so the exact per-frame
    checks need to run on these only."""
    n = len(frames)
    sizes = np.array([len(a) for a in frames], dtype=np.int64)
    bad = (sizes == 0) | (np.cumsum(sizes) > max_atoms)
    owner = np.repeat(np.arange(n), sizes)

    def flag_atoms(mask: np.ndarray) -> None:
        bad[owner[mask]] = True

    numbers = np.concatenate([a.numbers for a in frames])
    flag_atoms((numbers < 1) | (numbers >= len(chemical_symbols)))
    positions = np.concatenate([a.positions for a in frames]).reshape(-1, 3)
    flag_atoms(~(np.abs(positions) <= limits.max_length).all(axis=1))  # NaN fails too
    cells = np.array([a.cell.array for a in frames], dtype=float).reshape(n, 3, 3)
    pbcs = np.array([a.pbc for a in frames], dtype=bool).reshape(n, 3)
    bad |= ~(np.abs(cells) <= limits.max_length).all(axis=(1, 2))
    with np.errstate(invalid="ignore", over="ignore"):
        short = (np.linalg.norm(cells, axis=2) < 2e-6) & pbcs  # the check's 1e-6, looser
        flat = pbcs.all(axis=1) & ~(np.abs(np.linalg.det(cells)) >= 2e-6)
    bad |= short.any(axis=1) | flat
    for i, atoms in enumerate(frames):
        if bad[i]:
            continue
        energy = _frame_energy(atoms)
        if energy is None:
            bad[i] = require_energy
        elif not math.isfinite(energy) or abs(energy) > limits.max_energy_per_atom * len(atoms):
            bad[i] = True
        results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
        forces = results.get("forces", atoms.arrays.get("forces"))
        local = atoms.arrays.get("true_local_energy")
        if forces is not None and not _finite_floats(forces, (len(atoms), 3)):
            bad[i] = True
        if local is not None and not _finite_floats(local.reshape(-1), (len(atoms),)):
            bad[i] = True
    return np.flatnonzero(bad).tolist()


def _finite_floats(values, shape: tuple[int, ...]) -> bool:
    """Whether ``values`` is a finite real array of ``shape``: what the result checks
    accept without a second look."""
    if (not isinstance(values, np.ndarray) or values.dtype.kind not in "fiu"
            or values.dtype.itemsize > 8):  # a long double may overflow float64
        return False
    return values.shape == shape and bool(np.isfinite(values).all())


def _check_values(atoms: Atoms, where: str, limits, *, total: int, max_atoms: int,
                  source: str) -> None:
    """A frame's atom count, elements, finite positions and cell within the limits."""
    n = len(atoms)
    if n == 0:
        raise InputError(f"{where}: has zero atoms")
    if total > max_atoms:
        raise InputError(f"{source}: more than {max_atoms} atoms in total (limit max_atoms, "
                         "LPRVIZ_MAX_ATOMS); use a smaller file or raise the limit")
    numbers = atoms.numbers
    if numbers.min() < 1 or numbers.max() >= len(chemical_symbols):
        bad = int(numbers[(numbers < 1) | (numbers >= len(chemical_symbols))][0])
        raise InputError(f"{where}: unknown element (atomic number {bad})")
    if not np.all(np.isfinite(atoms.positions)):
        raise InputError(f"{where}: positions contain NaN or inf")
    cell = np.asarray(atoms.cell)
    if not np.all(np.isfinite(cell)):
        raise InputError(f"{where}: cell contains NaN or inf")
    for field, values in (("positions", atoms.positions), ("cell entries", cell)):
        largest = float(np.abs(values).max())
        if largest > limits.max_length:
            raise InputError(f"{where}: {field} reach {largest:.3g} A, beyond the limit "
                             f"of {limits.max_length:g} A (LPRVIZ_MAX_LENGTH); wrong units?")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any():
        lengths = np.linalg.norm(cell, axis=1)
        if np.any(lengths[pbc] < 1e-6) or (pbc.all() and abs(np.linalg.det(cell)) < 1e-6):
            raise InputError(f"{where}: periodic cell is degenerate (pbc={pbc.tolist()})")


def _check_results(atoms: Atoms, where: str, limits, *, require_energy: bool) -> None:
    """A frame's energy, forces and per-atom reference energies, where present."""
    n = len(atoms)
    energy = _frame_energy(atoms)
    if energy is None:
        if require_energy:
            raise InputError(f"{where}: missing total energy (required for training)")
    elif not math.isfinite(energy):
        raise InputError(f"{where}: energy is not a finite number")
    elif abs(energy) > limits.max_energy_per_atom * n:
        raise InputError(f"{where}: energy {energy:.3g} eV is beyond "
                         f"{limits.max_energy_per_atom:g} eV per atom (limit "
                         "LPRVIZ_MAX_ENERGY_PER_ATOM); wrong units?")
    calc_results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    forces = calc_results.get("forces", atoms.arrays.get("forces"))
    if forces is not None:
        forces = _numbers(forces, f"{where}: forces")
        if forces.shape != (n, 3) or not np.all(np.isfinite(forces)):
            raise InputError(f"{where}: forces must be finite with shape ({n}, 3)")
    if "true_local_energy" in atoms.arrays:
        local = _numbers(atoms.arrays["true_local_energy"],
                         f"{where}: true_local_energy").reshape(-1)
        if local.shape != (n,) or not np.all(np.isfinite(local)):
            raise InputError(f"{where}: true_local_energy must be finite, one per atom")


def _numbers(values, what: str) -> np.ndarray:
    """``values`` as a float array, or one line naming ``what`` (a text column, say)."""
    try:
        with np.errstate(over="ignore"):  # a long double beyond float64: inf, reported
            return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{what}: expected numbers, got text or other values") from None


def _check_geometry(frames: list[Atoms], source: str, limits) -> None:
    """Cell heights and the closest pair of atoms of every frame against
    ``limits.min_distance``; raises for the first frame (in order) that fails either.

    A periodic cell thinner than that is either crowded with its own images or written in a
    needlessly skewed basis that makes every neighbour search visit millions of images; two
    atoms closer than that are duplicated lines, a lost position column, or the wrong units.
    All frames are screened at once (:func:`~lprviz.limits.frames_with_close_pairs`); the
    pair named is that of :func:`~lprviz.limits.closest_pair` on the first failing frame.
    """
    if not frames:
        return
    floor = limits.min_distance
    cells = np.array([a.cell.array for a in frames], dtype=float)
    pbcs = np.array([a.pbc for a in frames], dtype=bool)
    heights = cell_heights(cells, pbcs)
    thin = np.flatnonzero((heights < floor).any(axis=1))
    stop = int(thin[0]) if thin.size else len(frames)  # pairs need heights >= floor
    sizes = [len(a) for a in frames[:stop]]
    if stop:
        close = np.flatnonzero(frames_with_close_pairs(
            np.concatenate([a.positions for a in frames[:stop]]), sizes, cells[:stop],
            pbcs[:stop], floor))
        for k in close.tolist():  # the screen may only over-report: the pair decides
            pair = closest_pair(frames[k].positions, cells[k], pbcs[k], floor)
            if pair is not None:
                i, j, dist = pair
                raise InputError(f"{source}: frame {k}: atoms {i} and {j} are {dist:.3g} A "
                                 f"apart, closer than {floor:g} A (limit min_distance, "
                                 "LPRVIZ_MIN_DISTANCE); duplicated atoms or wrong units?")
    if thin.size:
        axis = int(np.argmin(heights[stop]))
        raise InputError(
            f"{source}: frame {stop}: periodic cell is only {heights[stop, axis]:.3g} A thick "
            f"along cell vector {axis + 1} (limit min_distance {floor:g} A, "
            "LPRVIZ_MIN_DISTANCE): too small for its atoms, or a skewed basis to reduce "
            "(ase.geometry.minkowski_reduce)")
