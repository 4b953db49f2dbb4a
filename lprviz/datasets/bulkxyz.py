"""Extended XYZ read in bulk: the frames ``ase.io.read(path, index=":", format="extxyz")``
returns, built the way ASE builds them, with the atom lines of the whole file parsed by
NumPy at once.

ASE's reader converts every token of every atom line in Python (``float(token)`` per
number, a tuple per line); on a 100k-atom file that is most of the reading time. Here:

- each comment line goes through ASE's own parser (``key_val_str_to_dict``), and the
  ``pbc``/``Lattice``/``Properties`` rules, the array names and the calculator results
  follow ASE's frame builder, calling its ``parse_properties`` and ``set_calc_and_arrays``;
- the atom lines of all frames that declare the same ``Properties`` are parsed by one
  :func:`numpy.loadtxt` call (C), into the column types ASE declares for them.

Anything this reader does not reproduce exactly makes :func:`read_extxyz` return ``None``,
and the caller reads the file with ASE (which also names any problem): non-ASCII text or
control characters (``str.split`` and NumPy split on different whitespace), ``VEC`` cell
lines, logical (``L``) columns, ``move_mask`` constraints, strings of
:data:`_MAX_STRING` characters or more, and any token NumPy does not parse. NumPy rejects
every token Python's ``int``/``float`` rejects and some they take (``1_0``, non-ASCII
digits): those files fall back too. Blank lines inside a frame, and atom lines with too
few columns, and a last frame cut before its comment line, also fall back (NumPy skips
or refuses what ASE reports). Extra tokens on an
atom line are ignored, as ASE ignores them.
"""
from __future__ import annotations

import re

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.io.extxyz import key_val_str_to_dict, parse_properties, set_calc_and_arrays

# Strings (species and other S columns) are parsed into fixed-width NumPy strings; a value
# that fills the width might have been cut, so the file falls back to ASE.
_MAX_STRING = 64

# Printable ASCII, tab and newline: the only characters this reader takes.
_USUAL = bytes(range(0x20, 0x7F)) + b"\t\n"


def _unusual(text: str) -> bool:
    """Whether ``text`` has a character other than printable ASCII, tab and newline.

    ``str.isascii`` is a flag lookup, and deleting the usual bytes leaves any other: 20 ms
    for 14 MB, where one regular-expression scan for them took 130 ms.
    """
    return not text.isascii() or bool(text.encode("ascii").translate(None, _USUAL))


_DEFAULT_PROPERTIES = "species:S:1:pos:R:3"


def read_extxyz(text: str) -> list[Atoms] | None:
    """Frames of an extended XYZ text, as ASE's extxyz reader gives them for ``index=":"``.

    Parameters
    ----------
    text : str
        The whole file, read as text with universal newlines (``open(path).read()``).

    Returns
    -------
    list of ase.Atoms, or None
        ``None`` when the text uses something this reader leaves to ASE, or is not valid
        extended XYZ (see the module docstring): read it with ASE, which reports problems.
    """
    if _unusual(text):
        return None
    lines = text.split("\n")
    frames = _frame_table(lines)
    if frames is None:
        return None
    try:
        tokens: dict[str, dict] = {}
        headers = [_header(lines[comment], tokens) for comment, _ in frames]
        if any(h is None for h in headers):
            return None
        groups: dict[str, list[int]] = {}
        for k, header in enumerate(headers):
            groups.setdefault(header[3], []).append(k)
        atoms: list[Atoms | None] = [None] * len(frames)
        for props, members in groups.items():
            built = _build_group(lines, frames, headers, props, members)
            if built is None:
                return None
            for k, a in zip(members, built, strict=True):
                atoms[k] = a
    except Exception:  # noqa: BLE001 - anything unexpected: ASE reads the file and reports it
        return None
    return atoms


def _frame_table(lines: list[str]) -> list[tuple[int, int]] | None:
    """``(comment line index, n_atoms)`` per frame, walking the lines as ASE does (the
    first blank line ends the file); None for anything ASE would reject or read with VEC
    cell lines."""
    frames = []
    # the "" after a final newline is no line (ASE's reader meets the end of the file there)
    i, end = 0, len(lines) - (lines[-1] == "")
    while i < end and lines[i].strip():
        try:
            n = int(lines[i])
        except ValueError:
            return None
        if n < 0 or i + 2 + n > end:
            return None
        frames.append((i + 1, n))
        i += 2 + n
        if i < end and lines[i].lstrip().startswith("VEC"):
            return None
    return frames


# A comment line made only of ``key=value`` tokens, each value bare or in double quotes,
# never empty, without the characters ASE's parser treats specially (quotes, brackets,
# backslash, "=") inside: ASE's parser reads each such token on its own, so the line's dict
# is the tokens' dicts merged in order, and repeated tokens (Properties, pbc, groups, often
# the cell) are parsed once per file. An empty value (``a=""``) is not such a token: ASE
# then glues the next token onto it (``a="" b=1`` gives ``{"a": "b=1"}``).
_KEY = r"[^\s\"'\\=\[\]{}]+"
_VALUE = r"(?:\"[^\"'\\=\[\]{}]+\"|[^\s\"'\\=\[\]{}]+)"
_TOKEN = re.compile(rf"{_KEY}={_VALUE}")
_SIMPLE_LINE = re.compile(rf"(?:{_KEY}={_VALUE}\s+)*(?:{_KEY}={_VALUE})?")


def _comment_dict(line: str, tokens: dict[str, dict]) -> dict:
    """``key_val_str_to_dict(line)`` (ASE's parser), through the per-token memo ``tokens``
    for simple lines (see :data:`_SIMPLE_LINE`); arrays and lists are copied out of it."""
    if not _SIMPLE_LINE.fullmatch(line):
        return key_val_str_to_dict(line)
    out = {}
    for token in _TOKEN.findall(line):
        parsed = tokens.get(token)
        if parsed is None:
            parsed = tokens[token] = key_val_str_to_dict(token)
        for key, value in parsed.items():
            out[key] = value.copy() if isinstance(value, (np.ndarray, list)) else value
    return out


def _header(comment: str, tokens: dict[str, dict]):
    """``(info, pbc, cell, Properties string)`` of one comment line, by ASE's rules."""
    line = comment.strip()
    info = _comment_dict(line, tokens) if line else {}
    pbc = None
    if "pbc" in info:
        pbc = info.pop("pbc")
    elif "Lattice" in info:
        pbc = [True, True, True]  # ASE's default with a Lattice
    cell = info.pop("Lattice").T if "Lattice" in info else None  # ASE's cell: the transpose
    props = info.pop("Properties", _DEFAULT_PROPERTIES)
    if not isinstance(props, str):
        return None
    return info, pbc, cell, props


def _build_group(lines, frames, headers, props: str, members: list[int]):
    """The frames ``members`` (all declaring ``props``), their atom lines parsed at once."""
    properties, names, dtype, _ = parse_properties(props)
    if "move_mask" in properties:
        return None
    fields = []
    for name in dtype.names:
        kind = dtype[name]
        if kind == np.dtype(bool):
            return None
        fields.append((name, f"U{_MAX_STRING}" if kind == np.dtype(object) else kind))
    sizes = [frames[k][1] for k in members]
    rows = [line for k in members
            for line in lines[frames[k][0] + 1 : frames[k][0] + 1 + frames[k][1]]]
    if rows:
        data = np.loadtxt(rows, dtype=fields, comments=None, usecols=range(len(fields)),
                          ndmin=1)
        if data.shape != (len(rows),):
            return None  # NumPy skipped blank lines, which ASE reports
    else:
        data = np.zeros(0, dtype=fields)
    strings = [name for name, kind in fields if isinstance(kind, str)]
    for name in strings:
        if data.size and np.char.str_len(data[name]).max() >= _MAX_STRING:
            return None
    columns, species = _group_columns(data, properties, names, strings)
    out = []
    start = 0
    for k, n in zip(members, sizes, strict=True):
        info, pbc, cell, _ = headers[k]
        rows = slice(start, start + n)
        out.append(_atoms({name: value[rows] for name, value in columns.items()},
                          None if species is None else species[rows], info, pbc, cell))
        start += n
    return out


def _group_columns(data, properties, names, strings):
    """The ASE arrays of a group's parsed rows, each for all its frames at once (one value
    per row, multi-column properties as (n, k) arrays, S columns as Python strings), and the
    atomic numbers of a species column when there is no Z column (which ASE would use
    instead): ASE's ``symbols2numbers`` of the capitalised names, one lookup per distinct
    name. An unknown name, or a species property of several columns, raises (ASE reads the
    file and reports it)."""
    out = {}
    for name in names:
        ase_name, cols = properties[name]
        if cols == 1:
            value = data[name]
            if name in strings:
                value = value.astype(object)  # ASE keeps S columns as Python strings
        else:
            value = np.column_stack([data[name + str(c)] for c in range(cols)])
            if any(name + str(c) in strings for c in range(cols)):
                value = value.astype(object)
        out[ase_name] = value
    symbols = out.pop("symbols", None)  # never an array of its own, as in ASE
    if symbols is None or "numbers" in out:
        return out, None
    if symbols.ndim != 1:
        raise ValueError("a species property of several columns")
    names_, inverse = np.unique(symbols.astype(str), return_inverse=True)
    numbers = np.array([atomic_numbers[s.capitalize()] for s in names_.tolist()], dtype=int)
    return out, numbers[inverse.reshape(-1)]


def _atoms(arrays: dict[str, np.ndarray], species: np.ndarray | None, info, pbc,
           cell) -> Atoms:
    """One frame from its ASE arrays and species numbers, built as ASE's
    ``_read_xyz_frame`` builds it: a Z column goes in as ASE passes it (converted value by
    value), species names as their numbers (the same ``numbers`` array). Every array is
    copied by ``Atoms`` or the calculator, so views of the group's arrays are fine."""
    atoms = Atoms(arrays.pop("numbers", None), numbers=species,
                  positions=arrays.pop("positions", None),
                  charges=arrays.pop("initial_charges", None),
                  cell=cell, pbc=pbc, info=info)
    set_calc_and_arrays(atoms, arrays)
    return atoms
