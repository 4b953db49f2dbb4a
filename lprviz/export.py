"""Results to files: one output schema for extxyz, CSV and chemiscope (CLI and app).

The ``lprviz lpr`` command (:func:`write_annotated`) and the app's Export page
(:func:`extxyz_bytes`, which calls it) write the same annotations (:func:`annotated_frames`
returns them as copies), so a file says the same thing under the same names whoever wrote
it; :func:`csv_bytes` and :func:`chemiscope_bytes` draw their columns from the same table.
``docs/output_schema.md`` lists every name.

Every name written is a plain identifier (``[A-Za-z_][A-Za-z0-9_]*``) and every info value a
number, a ``T``/``F`` boolean or a plain string (no quotes, commas, ``=`` or backslashes,
never empty): ASE's reader, the ``extxyz`` package's parsers and chemfiles all read such a
header, while a name like ``lpr_alpha=0.0001`` or a bare ``a,b`` value breaks the last two.
Several alphas give indexed arrays ``lpr_0, lpr_1, ...`` in the order of the ``alphas`` info
entry; ``lpr`` is always the first alpha's.

:func:`atomic_output` is how the CLI writes files: a temporary file beside the target,
flushed and fsynced, then renamed over it, so a failure never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import itertools
import math
import os
import re
import tempfile
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import IO

import numpy as np
from ase import Atoms
from ase.calculators.calculator import all_properties
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols
from ase.io.extxyz import (
    SPECIAL_3_3_KEYS,
    escape,
    key_val_dict_to_str,
    output_column_format,
    save_calc_results,
)
from ase.stress import voigt_6_to_full_3x3_stress

from lprviz.datasets.readers import GROUP_KEYS, UNGROUPED
from lprviz.errors import InputError

__all__ = [
    "annotated_frames", "atomic_output", "chemiscope_bytes", "csv_bytes", "extxyz_bytes",
    "group_summary", "plain_text", "provenance", "write_annotated", "write_extxyz",
]

PROVENANCE_PREFIX = "lprviz_"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NOT_PLAIN = re.compile(r"[^A-Za-z0-9_.+\-:/ ]")
# Names this schema writes (also older lprviz names): removed from input frames first, so a
# file written by an earlier run never keeps a stale ``lpr_2`` beside fresh ``lpr_0, lpr_1``.
_STALE_ARRAYS = re.compile(
    r"(?:(?:lpr|lcpr|undetermined)(?:_.*)?|log10_lpr|local_energy|data_share|forces_pred)\Z")
_STALE_INFO = re.compile(r"(?:lpr.*|alphas?|pr(?:_\d+)?|energy_pred|in_training)\Z")


def write_extxyz(file: str | Path | IO[str], frames: Iterable[Atoms]) -> None:
    """Write extxyz with floats at full precision.

    ASE's writer prints floats as ``%16.8f``, which rounds an LPR of 1e-9 to zero; this
    writes what ASE's writer would (its header builder, column format and calculator-results
    handling), with ``%.15e`` floats.

    Parameters
    ----------
    file : str, pathlib.Path or text file object
    frames : iterable of ase.Atoms
        Per-atom arrays and info entries are written as ASE's writer would write them.
    """
    _write_records(file, map(_atoms_record, frames))


def write_annotated(file: str | Path | IO[str], ds, results, **kwargs) -> None:
    """Write :func:`annotated_frames` (same keyword arguments) as :func:`write_extxyz` would.

    The same bytes, without copying any ``Atoms``: each frame's columns and header come
    straight from the dataset frame and the results table, and the header entries every
    frame shares (alphas, provenance) are formatted once.

    Parameters
    ----------
    file : str, pathlib.Path or text file object
    ds : lprviz.datasets.Dataset
    results : lprviz.pipeline.Results or sequence of Results
    **kwargs
        ``include_training``, ``atom_arrays``, ``extra_provenance`` of
        :func:`annotated_frames`.
    """
    shared, frames = _annotations(ds, results, **kwargs)
    shared_text = _raw_info(shared)
    _write_records(file, (_annotated_record(original, columns, info, shared, shared_text)
                          for original, columns, info in frames))


# --------------------------------------------------------------------------- extxyz writing

# Columns ASE's writer never takes from ``atoms.arrays`` (symbols and positions come first).
_SKIP_ARRAYS = frozenset({"numbers", "positions", "symbols", "species", "pos"})
_SYMBOLS = np.array(chemical_symbols)


@dataclasses.dataclass
class _Record:
    """One frame as ASE's writer sees its copy of the ``Atoms``: the per-atom columns after
    symbols and positions (calculator results included) and the header's info text (ASE's
    ``key_val_dict_to_str`` of the info entries and ``pbc``)."""

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    arrays: dict[str, np.ndarray]
    info: str


@functools.lru_cache(maxsize=4096)
def _escaped(text: str) -> str:
    """ASE's ``escape`` of a text that recurs from frame to frame (keys, pbc flags)."""
    return escape(text)


def _info_text(info: Mapping) -> str:
    """ASE's ``key_val_dict_to_str(info)``, written here when every key is a ``str`` and
    every value a bool, a real number (Python or NumPy scalar), a ``str``, None or a 1-D
    NumPy bool array (``pbc``): the entries the writer adds per frame, ~4x faster than ASE's
    type dispatch. Any other entry sends the whole dict to ASE. The same text: ``T``/``F``,
    ``f"{value}"`` and ASE's ``escape``, a bare key for None."""
    parts = []
    for key, value in info.items():
        kind = type(value)
        if type(key) is not str:
            return key_val_dict_to_str(info)
        if kind is bool or kind is np.bool_:
            parts.append(f"{_escaped(key)}={'T' if value else 'F'}")
        elif kind is float or kind is int or isinstance(value, (np.floating, np.integer)):
            # a real number's text has none of the characters escape quotes for
            parts.append(f"{_escaped(key)}={value}")
        elif kind is str:
            parts.append(f"{_escaped(key)}={escape(value)}")
        elif value is None:
            parts.append(_escaped(key))
        elif (kind is np.ndarray and value.ndim == 1 and value.dtype.kind == "b"
              and key not in SPECIAL_3_3_KEYS):
            flags = " ".join("T" if v else "F" for v in value.tolist())
            parts.append(f"{_escaped(key)}={_escaped(flags)}")
        else:
            return key_val_dict_to_str(info)
    return " ".join(parts).strip()


def _raw_info(info: Mapping) -> str:
    """ASE's header text of ``info`` (``key_val_dict_to_str``) before its final strip.

    Entries are formatted one by one and joined, so the texts of consecutive parts join into
    the text of their union; two marker keys (longer than any key of ``info``, so new) keep
    ASE's strip off the ends of the part.
    """
    left = "_" * (1 + max(map(len, info), default=0))
    right = left + "_"
    text = _info_text({left: None, **info, right: None})
    return text[len(left) + 1:-len(right)]


def _calc_info(info: dict, arrays: dict, results: Mapping | None) -> None:
    """Add calculator results to ``info`` and ``arrays`` as ASE's writer does (its
    ``save_calc_results``: a name already present is a KeyError), then the pbc-less part of
    its header rules: a 6-long ``stress`` becomes 3x3, the only shape its reader accepts."""
    if results is not None:
        save_calc_results(types.SimpleNamespace(info=info, arrays=arrays),
                          types.SimpleNamespace(results=results), calc_prefix="")
    if np.shape(info.get("stress", ())) == (6,):
        info["stress"] = voigt_6_to_full_3x3_stress(info["stress"])


def _atoms_record(atoms: Atoms) -> _Record:
    """What ASE's writer takes from ``atoms`` (arrays and info are not copied)."""
    arrays = dict(atoms.arrays)
    info = dict(atoms.info)
    _calc_info(info, arrays, None if atoms.calc is None else atoms.calc.results)
    info["pbc"] = atoms.get_pbc()  # always written, as ASE does
    return _Record(atoms.numbers, atoms.positions, atoms.cell.array, arrays,
                   key_val_dict_to_str(info))


def _single_point(results: Mapping) -> dict:
    """``SinglePointCalculator(atoms, **results).results``, without its copy of the atoms."""
    out = {}
    for name, value in results.items():
        if name not in all_properties:
            raise InputError(f"calculator result {name!r}: expected one of ASE's properties")
        if value is not None:
            out[name] = value if name in ("energy", "magmom", "free_energy") else (
                np.array(value, float))
    return out


def _annotated_record(original: Atoms, columns: dict, frame_info: dict, shared: dict,
                      shared_text: str) -> _Record:
    """The :class:`_Record` of ``original`` annotated as :func:`annotated_frames` does."""
    arrays = {k: v for k, v in original.arrays.items() if not _STALE_ARRAYS.match(k)}
    arrays.update(columns)
    before = {k: v for k, v in original.info.items() if not _STALE_INFO.match(k)}
    info = {**before, **shared, **frame_info}
    calc_results = getattr(original.calc, "results", None)
    _calc_info(info, arrays, _single_point(calc_results) if calc_results else None)
    info["pbc"] = original.get_pbc()
    # The shared entries (all stale names, so none is among the frame's own) follow the
    # frame's own and nothing changes them per frame: their text is the one formatted once.
    # The entries after them start with the schema's "energy_pred", so ASE's strip of their
    # text only takes the end, as the strip of the whole would.
    keys = list(info)
    n = len(before)
    after = _info_text({k: info[k] for k in keys[n + len(shared):]})
    text = (_raw_info({k: info[k] for k in keys[:n]}) if n else "") + shared_text + after
    return _Record(original.numbers, original.positions, original.cell.array, arrays,
                   text.strip())


@functools.lru_cache(maxsize=256)
def _column_format(layout: tuple) -> tuple[str, str]:
    """The ``Properties=`` value and the row ``%`` format of a column layout (name, dtype,
    trailing shape per column), from ASE's ``output_column_format``. Each run of adjacent
    float fields becomes one ``%s``, filled with the run's text from :func:`_e15_rows`."""
    arrays = {name: np.empty((0, *shape), dtype) for name, dtype, shape in layout}
    comment, _, _, fmt = output_column_format(Atoms(), list(arrays), arrays, False)
    # no cell and no info: "Properties=<spec> pbc=..." (``pbc`` is always written)
    spec = comment.removeprefix("Properties=").removesuffix(' pbc="F F F"')
    # ASE joins the fields with single spaces; "%16.8f" is only ever a float's
    return spec, re.sub(r"%16\.8f(?: %16\.8f)*", "%s", fmt)


def _powers_of_ten() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``10**s`` for ``s`` in ``_POWERS``: its top 26 bits, the next 53 bits, and the nearest
    float64 (exact rationals, so every entry is correctly rounded)."""
    top, rest, nearest = [], [], []
    for s in _POWERS:
        exact = Fraction(10) ** s
        mantissa, exponent = math.frexp(float(exact))
        high = math.ldexp(math.floor(math.ldexp(mantissa, 26)), exponent - 26)
        top.append(high)
        rest.append(float(exact - Fraction(high)))
        nearest.append(float(exact))
    return np.array(top), np.array(rest), np.array(nearest)


# 16 significant digits of |x| in [1e-99, 1e99) need 10**s for s = 15 - exponent in
# [-83, 114]; a margin either side for a log10 one off.
_POWERS = range(-90, 121)
_POW_TOP, _POW_REST, _POW = _powers_of_ten()
# The four ASCII digits of 0..9999 as one uint32 each (bytes in memory order), and the two
# of 0..99 as one uint16: gathering whole groups is several times faster than byte rows.
_DIGITS4 = np.frombuffer("".join(f"{i:04d}" for i in range(10**4)).encode(), np.uint32)
_DIGITS2 = np.frombuffer("".join(f"{i:02d}" for i in range(10**2)).encode(), np.uint16)
_SPLIT = 134217729.0  # 2**27 + 1: Dekker's split of a float64 into two 26-bit halves


def _scaled(a: np.ndarray, exponent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a * 10**(15 - exponent)`` as integer part and fraction, to within ~2e-7.

    The top halves' product is exact (26 x 26 bits); the other terms are at most ~2**-25 of
    it (< 2**28 for a 16-digit integer part), so their few roundings cost < 2e-7 in all.
    """
    i = 15 - exponent - _POWERS.start
    c = _SPLIT * a
    top = c - (c - a)
    whole = top * _POW_TOP[i]
    rest = top * _POW_REST[i] + (a - top) * _POW[i]
    floor = np.floor(whole)
    frac = (whole - floor) + rest
    carry = np.floor(frac)
    return floor.astype(np.int64) + carry.astype(np.int64), frac - carry


def _e15_bytes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed-width text of each row of the float64 array ``x`` (n, k): an (n, 23 k)
    uint8 array holding ``" ".join("%22.15e" % v ...)`` followed by a space, and a bool
    (n,) of the rows that are not yet right (Python's ``%`` must format those).

    16 significant digits of ``|v|`` in [1e-99, 1e99) and zeros are built with integer
    arithmetic (a scaled product to ~2e-7, rounded to nearest); rows with a value this cannot
    decide -- a fraction within 1e-6 of one half (ties included), other magnitudes, inf,
    NaN -- are left to Python, so every text is Python's own (tests compare millions).
    """
    n, k = x.shape
    flat = x.reshape(-1)
    a = np.abs(flat)
    ok = (a >= 1e-99) & (a < 1e99)
    a = np.where(ok, a, 1.0)
    exponent = np.floor(np.log10(a)).astype(np.int64)
    digits, frac = _scaled(a, exponent)
    low, high = digits < 10**15, digits >= 10**16  # log10 one off near powers of ten
    redo = np.flatnonzero(low | high)
    if redo.size:
        exponent[redo] += high[redo].astype(np.int64) - low[redo]
        digits[redo], frac[redo] = _scaled(a[redo], exponent[redo])
    ok &= (digits >= 10**15) & (digits < 10**16) & (np.abs(frac - 0.5) > 1e-6)
    digits += frac > 0.5
    carry = digits == 10**16  # 9.99...95 rounds up to 1.000...e+1
    digits[carry] = 10**15
    exponent += carry
    zero = flat == 0
    digits[zero] = 0
    exponent[zero] = 0
    ok = (ok & (np.abs(exponent) < 100)) | zero
    # " d.ddddddddddddddde+dd" or "-d...": 22 characters and a space
    high8 = digits // 10**8
    low8 = (digits - high8 * 10**8).astype(np.int32)
    high8 = high8.astype(np.int32)
    groups = np.empty((n * k, 4), dtype=np.uint32)
    for j, group in enumerate((high8 // 10**4, high8 % 10**4, low8 // 10**4, low8 % 10**4)):
        groups[:, j] = _DIGITS4[group]
    sixteen = groups.view(np.uint8)
    text = np.empty((n * k, 23), dtype=np.uint8)
    text[:, 0] = np.where(np.signbit(flat), ord("-"), ord(" "))
    text[:, 1] = sixteen[:, 0]
    text[:, 2] = ord(".")
    text[:, 3:18] = sixteen[:, 1:]
    text[:, 18] = ord("e")
    text[:, 19] = np.where(exponent < 0, ord("-"), ord("+"))
    text[:, 20:22] = _DIGITS2[np.abs(exponent) % 100].view(np.uint8).reshape(-1, 2)
    text[:, 22] = ord(" ")
    return text.reshape(n, 23 * k), ~ok.reshape(n, k).all(axis=1)


def _python_e15(row: np.ndarray) -> str:
    return " ".join(["%22.15e" % v for v in row.tolist()])  # noqa: UP031 (the format reproduced)


def _e15_rows(x: np.ndarray) -> list[str]:
    """Each row of the float64 array ``x`` (n, k) as ``" ".join("%22.15e" % v ...)``,
    vectorised (:func:`_e15_bytes`; the rows it leaves are formatted by Python)."""
    text, left = _e15_bytes(x)
    text[:, -1] = ord("\n")
    out = text.tobytes().decode("ascii").split("\n")
    out.pop()  # after the last row
    for i in np.flatnonzero(left).tolist():
        out[i] = _python_e15(x[i])
    return out


def _float_run(columns: list[np.ndarray]) -> np.ndarray:
    """Adjacent float columns (n, k_i) as one float64 (n, sum k_i) array."""
    if len(columns) == 1:
        return columns[0].astype(np.float64, copy=False)
    return np.concatenate(columns, axis=1, dtype=np.float64, casting="same_kind")


def _columns(record: _Record) -> tuple[int, dict[str, np.ndarray], tuple]:
    """A frame's atom count, its columns in the order written (symbols, positions, the
    other arrays) and their layout: (name, dtype, trailing shape) per column."""
    n = len(record.numbers)
    # np.array of no symbols is a float array, as in ASE's writer
    symbols = _SYMBOLS[record.numbers] if n else np.array([])
    columns = {}
    for name, array in {"symbols": symbols, "positions": record.positions,
                        **{k: v for k, v in record.arrays.items()
                           if k not in _SKIP_ARRAYS}}.items():
        array = np.asarray(array)
        if array.ndim > 2 or len(array) != n:
            raise InputError(f"array {name!r}: expected one value or row per atom ({n}), got "
                             f"shape {array.shape}")
        columns[name] = array
    return n, columns, tuple((k, v.dtype, v.shape[1:]) for k, v in columns.items())


def _fields(columns: dict[str, np.ndarray], n: int, *, as_lists: bool = True) -> list:
    """The fields of a row format in order: float64 (n, k) arrays for runs of ``k`` adjacent
    float fields (one ``%s`` each), and each other field's values (a list, or with
    ``as_lists=False`` a 1-D array)."""
    fields: list = []
    run: list = []  # float columns since the last other field
    for array in columns.values():
        # (n, 1) is one field, as in ASE's writer
        array = array if array.ndim == 2 else array.reshape(n, 1)
        if array.dtype.kind == "f":  # any float prints as Python's float of it: float64
            run.append(array)
            continue
        if run:
            fields.extend(_float_runs(run))
            run = []
        fields.extend(array.T.tolist() if as_lists else list(array.T))
    return fields + _float_runs(run)


def _float_runs(run: list[np.ndarray]) -> list[np.ndarray]:
    """The run of adjacent float columns as one field, or none when they have no column
    (an (n, 0) array has no field in the row format)."""
    return [_float_run(run)] if sum(c.shape[1] for c in run) else []


def _header(record: _Record, n: int, spec: str) -> str:
    """A frame's first two lines."""
    head = ""
    if record.cell.any():  # as ASE: the transposed cell, in Fortran order
        head = 'Lattice="' + " ".join(
            str(x) for x in np.reshape(record.cell.T, 9, order="F")) + '" '
    return f"{n}\n{head}Properties={spec} {record.info}\n"


# Atoms whose float fields are formatted in one vectorised call (bounds its memory).
_BATCH_ATOMS = 16384


def _write_records(file: str | Path | IO[str], records: Iterable[_Record]) -> None:
    with contextlib.ExitStack() as stack:
        fh = file if hasattr(file, "write") else stack.enter_context(open(file, "w"))
        batch, n_atoms = [], 0
        for record in itertools.chain(records, [None]):
            if record is not None:
                batch.append((record, *_columns(record)))
                n_atoms += batch[-1][1]
            if batch and (record is None or n_atoms >= _BATCH_ATOMS):
                fh.write(_batch_text(batch))
                batch, n_atoms = [], 0


def _batch_text(batch: list[tuple[_Record, int, dict, tuple]]) -> str:
    """The text of consecutive frames (record, atom count, columns, layout of
    :func:`_columns`). Each run of frames with one layout is written as fixed-width rows
    (:func:`_fixed_rows`: a few array operations for all its atoms) when every field has a
    fixed width there, else by :func:`_percent_text`."""
    out = []
    for layout, group in itertools.groupby(batch, key=lambda frame: frame[3]):
        group = list(group)
        spec, fmt = _column_format(layout)
        heads = [_header(record, n, spec) for record, n, _, _ in group]
        rows = (_fixed_rows(fmt, [columns for _, _, columns, _ in group])
                if all(n for _, n, _, _ in group) else None)
        if rows is None:
            out.append(_percent_text([(n, head, fmt, _fields(columns, n))
                                      for (_, n, columns, _), head in zip(group, heads,
                                                                          strict=True)]))
            continue
        width = rows.shape[1]
        text = rows.tobytes().decode("ascii")
        start = 0
        for (_, n, _, _), head in zip(group, heads, strict=True):
            out.append(head)
            out.append(text[start * width:(start + n) * width])
            start += n
    return "".join(out)


def _percent_text(frames: list[tuple[int, str, str, list]]) -> str:
    """The text of frames as (atom count, first two lines, row format, :func:`_fields`),
    the float runs of one width formatted together, then one Python ``%`` per frame."""
    runs: dict[int, list] = {}
    for *_, fields in frames:
        for f in fields:
            if isinstance(f, np.ndarray):
                runs.setdefault(f.shape[1], []).append(f)
    texts = {k: iter(_e15_rows(np.concatenate(v))) for k, v in runs.items()}
    out = []
    for n, head, fmt, fields in frames:
        values = [list(itertools.islice(texts[f.shape[1]], n)) if isinstance(f, np.ndarray)
                  else f for f in fields]
        # One % over the whole frame: the same text as row by row, without a Python
        # iteration and a write per atom.
        out.append(head + (fmt * n) % tuple(
            itertools.chain.from_iterable(zip(*values, strict=True))))
    return "".join(out)


# The field formats of _column_format's row formats: "%s" is a float run's text or a
# string column.
_FIELD = re.compile(r"%-2s|%8d|%\.1s|%s")


def _fixed_rows(fmt: str, frames: list[dict[str, np.ndarray]]) -> np.ndarray | None:
    """The atom lines of frames of one layout (their :func:`_columns`, row format ``fmt``)
    as one (n_atoms, width) uint8 array of ASCII, every line ending in a newline: the same
    text as Python's ``%``, built column by column. None when a field has no fixed width
    here (a ``%s`` string column; a ``%-2s`` text column with a value longer than 2, not
    ASCII or starting with NUL; an integer beyond 8 characters; a negative float with a
    3-digit exponent): those frames go to :func:`_percent_text`."""
    merged = {name: np.concatenate([columns[name] for columns in frames])
              for name in frames[0]}
    n = len(merged["positions"])
    fields = _fields(merged, n, as_lists=False)
    specs = _FIELD.findall(fmt)
    literals = _FIELD.split(fmt)  # around the fields; the last one is the newline
    if len(specs) != len(fields):
        return None
    blocks = []
    for literal, spec, values in zip(literals[:-1], specs, fields, strict=True):
        if literal:
            blocks.append(_constant(literal, n))
        block = _fixed_field(spec, values)
        if block is None:
            return None
        blocks.append(block)
    blocks.append(_constant(literals[-1], n))
    return np.concatenate(blocks, axis=1)


def _constant(text: str, n: int) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(text.encode("ascii"), np.uint8), (n, len(text)))


def _fixed_field(spec: str, values: np.ndarray) -> np.ndarray | None:
    """One field's text for every row, (n, width) uint8, or None if its width varies."""
    if spec == "%s" and values.ndim == 2:  # a float run
        text, left = _e15_bytes(values)
        text = text[:, :-1]  # the last value's trailing space
        for i in np.flatnonzero(left).tolist():
            row = _python_e15(values[i]).encode("ascii")
            if len(row) != text.shape[1]:
                return None
            text[i] = np.frombuffer(row, np.uint8)
        return text
    if spec == "%8d" and values.dtype.kind == "i":
        return _int8_text(values)
    if spec == "%.1s" and values.dtype.kind == "b":
        return np.where(values, ord("T"), ord("F")).astype(np.uint8)[:, None]
    if spec == "%-2s" and values.dtype.kind == "U":
        try:
            text = values.astype("S2")  # ASCII, cut to 2 characters
        except UnicodeEncodeError:
            return None
        text = text.view(np.uint8).reshape(-1, 2).copy()
        # longer names (cut above), or a NUL before a character (not padding)
        if (np.char.str_len(values) > 2).any() or ((text[:, 0] == 0) & (text[:, 1] != 0)).any():
            return None
        text[text == 0] = ord(" ")  # "%-2s": padded on the right
        return text
    return None


def _int8_text(values: np.ndarray) -> np.ndarray | None:
    """``"%8d" % v`` for every value, (n, 8) uint8; None if one needs more than 8
    characters."""
    v = values.astype(np.int64)
    if v.size and (v.min() < -9_999_999 or v.max() > 99_999_999):
        return None
    a = np.abs(v)
    groups = np.empty((len(a), 2), dtype=np.uint32)
    groups[:, 0] = _DIGITS4[a // 10**4]
    groups[:, 1] = _DIGITS4[a % 10**4]
    n_digits = 1 + sum((a >= 10**p).astype(np.int64) for p in range(1, 8))
    text = np.where(np.arange(8) >= 8 - n_digits[:, None], groups.view(np.uint8), ord(" "))
    text = text.astype(np.uint8)
    negative = np.flatnonzero(v < 0)
    text[negative, 7 - n_digits[negative]] = ord("-")
    return text


# --------------------------------------------------------------------------- the schema


def plain_text(value: object) -> str:
    """``value`` as a string every extxyz reader takes as one header value.

    Characters other than letters, digits, ``_ . + - : /`` and spaces become ``_``
    (quotes, commas, ``=`` and backslashes break some parsers); an empty string becomes
    ``none`` (ASE reads an empty value as the next key).
    """
    text = _NOT_PLAIN.sub("_", " ".join(str(value).split()))
    return text or "none"


def group_summary(groups: Sequence[str] | np.ndarray) -> str:
    """``"name:count ..."`` of the groups of some frames (sorted by name), as a plain string."""
    names, counts = np.unique(np.asarray(groups, dtype=str), return_counts=True)
    return plain_text(" ".join(
        f"{plain_text(n).replace(' ', '_')}:{c}" for n, c in zip(names, counts, strict=True)
    ))


def _results_list(results) -> list:
    """One :class:`~lprviz.pipeline.Results` or a non-empty sequence of them (one per alpha)."""
    out = list(results) if isinstance(results, Sequence) else [results]
    if not out:
        raise InputError("results: expected at least one alpha's results")
    return out


def provenance(ds, results, extra: Mapping[str, object] | None = None) -> dict[str, object]:
    """How the numbers were made, as ``lprviz_*`` info entries.

    Parameters
    ----------
    ds : lprviz.datasets.Dataset
    results : lprviz.pipeline.Results or sequence of Results
        One per alpha, all from the same fit.
    extra : mapping, optional
        More entries (names without the prefix, e.g. ``{"scale_from": "reference"}``); they
        override the defaults.

    Returns
    -------
    dict
        Plain identifiers -> int, float, bool or plain string: the lprviz version, dataset,
        model kind, baseline, active environments and zeta (sparse kernel), the feature
        source (``features``: soap, array, a backbone; ``features_array``,
        ``features_model``, ``features_model_version``), SOAP hyper-parameters, feature
        scale and where it came from, and the training set's size and groups.
    """
    from lprviz import __version__

    first = _results_list(results)[0]
    train = np.asarray(first.train_mask, dtype=bool)
    out: dict[str, object] = {"version": __version__, "dataset": ds.name}
    spec = getattr(first, "spec", None)
    if spec is not None:
        out["model"] = spec.kind
        out["baseline"] = bool(spec.baseline)
        if spec.kind == "sparse-kernel":
            n_active = getattr(first, "n_active", None)
            out["n_sparse"] = int(spec.n_sparse if n_active is None else n_active)
            out["zeta"] = int(spec.zeta)
        if spec.kind == "nn":
            out["nn_hidden"] = int(spec.hidden)
            out["nn_seed"] = int(spec.seed)
    hypers = getattr(first, "hypers", None)
    # the feature source (lprviz.sources): SOAP unless the results say otherwise
    out.update(getattr(first, "features", None) or ({"features": "soap"} if hypers else {}))
    if hypers is not None:
        for key, value in dataclasses.asdict(hypers).items():
            out[f"soap_{key}"] = value
    if getattr(first, "scale", None) is not None:
        out["feature_scale"] = float(first.scale)
        out["scale_from"] = "training"
    if getattr(first, "force_weight", None) is not None:
        out["force_weight"] = float(first.force_weight)
    out["n_train_frames"] = int(train.sum())
    out["train_groups"] = group_summary(np.asarray(ds.groups)[train])
    out.update(extra or {})
    return {PROVENANCE_PREFIX + _identifier(k, "provenance"): _info_value(v)
            for k, v in out.items()}


def _identifier(name: str, what: str) -> str:
    if not _IDENTIFIER.match(name):
        raise InputError(
            f"{what} name {name!r}: expected a plain identifier [A-Za-z_][A-Za-z0-9_]*")
    return name


def _info_value(value: object) -> object:
    """A header value every reader parses: bool, int, float or a plain string."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return plain_text(value)


def _table(ds, results: list, frames: np.ndarray) -> tuple[dict, dict]:
    """The schema's per-atom and per-frame columns for ``frames`` (indices, in order).

    Returns ``(atom_columns, frame_columns)``: name -> array over the atoms of ``frames``
    (dataset atom order) and name -> array over ``frames``.
    """
    first = results[0]
    atoms = np.isin(ds.structure_index, frames)
    atom_cols = {
        "lpr": first.lpr[atoms],
        "log10_lpr": np.log10(first.lpr[atoms]),
        "undetermined": np.asarray(first.undetermined, dtype=bool)[atoms],
        "local_energy": first.local_energy[atoms],
    }
    if first.data_share is not None:  # Results made by hand may lack it
        atom_cols["data_share"] = np.asarray(first.data_share, dtype=float)[atoms]
    if getattr(first, "forces_pred", None) is not None:  # force-trained models
        atom_cols["forces_pred"] = np.asarray(first.forces_pred, dtype=float)[atoms]
    frame_cols = {
        "energy_pred": np.asarray(first.energy_pred, dtype=float)[frames],
        "pr": np.asarray(first.pr, dtype=float)[frames],
        "in_training": np.asarray(first.train_mask, dtype=bool)[frames],
    }
    if len(results) > 1:
        for i, res in enumerate(results):
            atom_cols[f"lpr_{i}"] = res.lpr[atoms]
            atom_cols[f"undetermined_{i}"] = np.asarray(res.undetermined, dtype=bool)[atoms]
            frame_cols[f"pr_{i}"] = np.asarray(res.pr, dtype=float)[frames]
    return atom_cols, frame_cols


def _flat(columns: dict) -> dict:
    """Vector columns (``forces_pred``, n x 3) split into ``<name>_x``, ``_y``, ``_z`` for
    tables that hold one number per cell (CSV, chemiscope properties)."""
    out = {}
    for name, values in columns.items():
        if np.ndim(values) == 2:
            out.update({f"{name}_{c}": values[:, i] for i, c in enumerate("xyz")})
        else:
            out[name] = values
    return out


def _selected_frames(results: list, include_training: bool) -> np.ndarray:
    train = np.asarray(results[0].train_mask, dtype=bool)
    return np.flatnonzero(np.ones_like(train) if include_training else ~train)


def annotated_frames(
    ds,
    results,
    *,
    include_training: bool = True,
    atom_arrays: Mapping[str, np.ndarray] | None = None,
    extra_provenance: Mapping[str, object] | None = None,
) -> list[Atoms]:
    """Copies of the frames carrying the results under the schema's names.

    Per-atom arrays ``lpr``, ``log10_lpr``, ``undetermined`` (bool), ``local_energy``,
    ``data_share`` (share of the LPR due to the data, docs/science.md §11), ``forces_pred``
    (n x 3, eV/A; force-trained models only);
    with several alphas also ``lpr_<i>`` and ``undetermined_<i>`` (``i`` indexes the
    ``alphas`` info entry). Per-frame info ``alpha``, ``alphas``, ``pr`` (and ``pr_<i>``),
    ``energy_pred`` (predicted total energy, eV), ``in_training`` and the ``lprviz_*``
    provenance of :func:`provenance`. The reference energy, forces and the frame's own
    arrays and info are kept (entries under this schema's names are replaced).

    Parameters
    ----------
    ds : lprviz.datasets.Dataset
    results : lprviz.pipeline.Results or sequence of Results
        One per alpha, all from the same fit; the first is the one ``lpr``, ``pr``,
        ``local_energy`` and ``energy_pred`` refer to.
    include_training : bool
        All frames (the app's export) or only the non-training ones (``lprviz lpr``).
    atom_arrays : mapping, optional
        More per-atom arrays in dataset atom order (e.g. ``lcpr_<block>``), plain names.
    extra_provenance : mapping, optional
        More ``lprviz_*`` entries, passed to :func:`provenance`.

    Returns
    -------
    list of ase.Atoms
    """
    shared, frames = _annotations(ds, results, include_training=include_training,
                                  atom_arrays=atom_arrays, extra_provenance=extra_provenance)
    out = []
    for original, columns, frame_info in frames:
        atoms = original.copy()
        for key in [k for k in atoms.arrays if _STALE_ARRAYS.match(k)]:
            del atoms.arrays[key]
        for key in [k for k in atoms.info if _STALE_INFO.match(k)]:
            del atoms.info[key]
        calc_results = getattr(original.calc, "results", None)
        if calc_results:  # the reference energy/forces, written as calculator results
            atoms.calc = SinglePointCalculator(atoms, **dict(calc_results))
        atoms.arrays.update(columns)
        atoms.info.update(shared)
        atoms.info.update(frame_info)
        out.append(atoms)
    return out


def _annotations(ds, results, *, include_training: bool = True, atom_arrays=None,
                 extra_provenance=None) -> tuple[dict, Iterator[tuple[Atoms, dict, dict]]]:
    """What :func:`annotated_frames` adds (its arguments): the info entries every frame gets,
    and per frame ``(dataset Atoms, per-atom columns, per-frame info entries)``."""
    results = _results_list(results)
    frames = _selected_frames(results, include_training)
    atom_cols, frame_cols = _table(ds, results, frames)
    selected = np.isin(ds.structure_index, frames)
    for name, values in (atom_arrays or {}).items():
        atom_cols[_identifier(name, "array")] = np.asarray(values)[selected]
    shared = {"alpha": float(results[0].alpha),
              "alphas": np.array([float(r.alpha) for r in results]),
              **provenance(ds, results, extra_provenance)}
    sizes = np.asarray(ds.frame_sizes)[frames]
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    frame_values = {k: v.tolist() for k, v in frame_cols.items()}  # Python scalars

    def per_frame() -> Iterator[tuple[Atoms, dict, dict]]:
        for j, frame in enumerate(frames.tolist()):
            rows = slice(starts[j], starts[j + 1])
            atoms = ds.frames[frame]
            info = {k: v[j] for k, v in frame_values.items()}
            # the dataset's name and group of a frame whose own info has none (an mlearn JSON
            # entry, an unnamed extxyz frame): how summaries and tables name it
            if "name" not in atoms.info:
                info["name"] = str(ds.names[frame])
            if not any(k in atoms.info for k in GROUP_KEYS) and ds.groups[frame] != UNGROUPED:
                info["group"] = str(ds.groups[frame])
            yield atoms, {k: v[rows] for k, v in atom_cols.items()}, info

    return shared, per_frame()


def extxyz_bytes(ds, results, **kwargs) -> bytes:
    """Extended XYZ of :func:`annotated_frames` (same keyword arguments), full precision."""
    buf = io.StringIO()
    write_annotated(buf, ds, results, **kwargs)
    return buf.getvalue().encode()


def _csv_text(value: object) -> str:
    """User text for a CSV cell that a spreadsheet will not run as a formula."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_bytes(ds, results, *, include_training: bool = True) -> bytes:
    """One CSV row per atom: where it is, then the schema's columns.

    ``frame, name, group, atom, Z, x, y, z``, the per-atom columns of
    :func:`annotated_frames`, its per-frame columns repeated on each atom of the frame, and
    ``true_local_energy`` when the dataset has it. Names and groups that start like a
    spreadsheet formula get a leading ``'``.
    """
    import pandas as pd  # here, not at the top: 0.2 s of import `lprviz lpr` never needs

    results = _results_list(results)
    frames = _selected_frames(results, include_training)
    atom_cols, frame_cols = _table(ds, results, frames)
    atom_cols = _flat(atom_cols)
    selected = np.isin(ds.structure_index, frames)
    sidx = ds.structure_index[selected]
    pos = np.concatenate([ds.frames[i].positions for i in frames])
    df = pd.DataFrame({
        "frame": sidx, "name": np.asarray([_csv_text(n) for n in ds.names])[sidx],
        "group": np.asarray([_csv_text(g) for g in ds.groups])[sidx],
        "atom": np.concatenate([np.arange(n) for n in np.asarray(ds.frame_sizes)[frames]]),
        "Z": ds.atom_numbers[selected], "x": pos[:, 0], "y": pos[:, 1], "z": pos[:, 2],
        **atom_cols,
        **{k: v[np.searchsorted(frames, sidx)] for k, v in frame_cols.items()},
    })
    if ds.true_local_energies is not None:
        df["true_local_energy"] = np.asarray(ds.true_local_energies)[selected]
    return df.to_csv(index=False).encode()


def chemiscope_bytes(ds, results, *, include_training: bool = True) -> bytes:
    """A chemiscope input file (gzipped JSON) with the schema's columns as properties.

    Per-atom columns are atom properties, per-frame columns structure properties (booleans
    as ``"True"``/``"False"`` categories), plus ``group``, the reference ``energy`` when
    every frame has one and ``true_local_energy`` when the dataset has it; the provenance is
    in the metadata description.
    """
    import chemiscope

    results = _results_list(results)
    frames = _selected_frames(results, include_training)
    atom_cols, frame_cols = _table(ds, results, frames)
    atom_cols = _flat(atom_cols)
    if ds.true_local_energies is not None:  # as in the extxyz and CSV outputs
        atom_cols["true_local_energy"] = np.asarray(ds.true_local_energies)[
            np.isin(ds.structure_index, frames)]
    structures = [ds.frames[i].copy() for i in frames]
    properties = {}
    for target, columns in (("atom", atom_cols), ("structure", frame_cols)):
        for name, values in columns.items():
            if values.dtype == bool:
                values = values.astype(str)
            properties[name] = {"target": target, "values": values.tolist()}
    properties["lpr"]["description"] = (
        f"local prediction rigidity at alpha={float(results[0].alpha):.6g}")
    properties["local_energy"]["units"] = properties["energy_pred"]["units"] = "eV"
    if "true_local_energy" in properties:
        properties["true_local_energy"]["units"] = "eV"
    properties["group"] = {"target": "structure",
                           "values": [str(ds.groups[i]) for i in frames]}
    energies = np.asarray(ds.energies, dtype=float)[frames]
    # JSON has no NaN: with unlabelled structures the property would make an invalid file.
    if np.all(np.isfinite(energies)):
        properties["energy"] = {"target": "structure", "values": energies.tolist(),
                                "units": "eV", "description": "reference total energy"}
    info = provenance(ds, results)
    info["alphas"] = " ".join(f"{float(r.alpha):.17g}" for r in results)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lprviz.json.gz"
        chemiscope.write_input(
            str(path), structures=structures, properties=properties,
            environments=chemiscope.all_atomic_environments(structures),
            metadata={"name": f"lprviz: {ds.name}",
                      "description": "\n".join(f"{k}={v}" for k, v in info.items())},
            settings={"structure": [{"color": {"property": "log10_lpr"}}]},
        )
        return path.read_bytes()


# --------------------------------------------------------------------------- safe writing


def _new_file_mode() -> int:
    """Permissions a plain ``open(path, "w")`` would give a new file (``0o666 & ~umask``).

    Reading the umask means setting it for a moment (process-wide): fine for the CLI.
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# Output names ending so are written compressed, as the readers take them: the module and
# its options (gzip's own command-line default level: its library default, 9, is ~3x slower
# for ~1 % smaller extxyz).
_COMPRESSED_OUTPUT = {".gz": ("gzip", {"compresslevel": 6}), ".bz2": ("bz2", {}),
                      ".xz": ("lzma", {})}


@contextlib.contextmanager
def atomic_output(path: str | Path, *, newline: str | None = None) -> Iterator[IO[str]]:
    """Open ``path`` for writing text so it is replaced whole or not at all.

    Writes go to a temporary file in the same directory (so the final rename stays on one
    file system); on success it is flushed, fsynced and renamed over ``path`` with
    :func:`os.replace`. On any exception the temporary file is removed and an existing
    ``path`` is left untouched. A symbolic link is followed: its target is replaced. A name
    ending in ``.gz``, ``.bz2`` or ``.xz`` is written compressed so (UTF-8 text inside), as
    the readers and ASE expect of such a name.

    Parameters
    ----------
    path : str or pathlib.Path
    newline : str, optional
        As for :func:`open` (``""`` for the csv module and pandas).

    Yields
    ------
    text file object
    """
    target = Path(path).resolve()
    mode = (target.stat().st_mode & 0o7777) if target.is_file() else _new_file_mode()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    compressor = _COMPRESSED_OUTPUT.get(Path(path).suffix.lower())
    try:
        with os.fdopen(fd, "wb") as raw:
            packed = None
            if compressor is not None:
                import importlib

                module, options = compressor
                packed = importlib.import_module(module).open(raw, "wb", **options)
            fh = io.TextIOWrapper(packed or raw, encoding="utf-8", newline=newline)
            try:
                yield fh
                fh.flush()
            except BaseException:
                # nothing may write into ``raw`` once it is closed (the garbage collector
                # would, closing these): the file is removed below anyway
                with contextlib.suppress(Exception):
                    fh.detach()
                    if packed is not None:
                        packed.close()
                raise
            fh.detach()  # leaves the file objects under it open
            if packed is not None:
                packed.close()  # the compressed stream's end; ``raw`` stays open
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
