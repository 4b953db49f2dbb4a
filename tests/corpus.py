"""Generator of the bad-input corpus (issue 6): hostile and broken structure files.

Nothing binary is committed: :func:`build_corpus` writes every case into a directory at test
time. Each :class:`Case` records what must happen when the file is given as training data
and as test data: ``"error"`` (one-line :class:`lprviz.InputError` naming the file, plus the
``needles`` naming frame/field where the loader can know them) or ``"ok"`` (accepted: e.g.
duplicates, HTML text kept as plain text, mixed periodicity).

Pickle cases are built so that unpickling them would create ``MARKER_NAME`` beside the corpus:
tests assert the marker never appears.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["MARKER_NAME", "XSS", "Case", "build_corpus", "valid_frames", "write_valid"]

#: Elements of the many-species case: enough that the linear model's width exceeds the
#: default ``LPRVIZ_MAX_FEATURES`` even at the tests' small SOAP basis (18 per pair).
MANY_SPECIES = ("H", "Li", "Be", "B", "C", "N", "O", "F", "Na", "Mg", "Al", "Si", "P", "S",
                "Cl", "K", "Ca", "Ti", "Fe", "Ni", "Cu", "Zn", "Ag", "Au")

#: A structure name / label that would run script if it reached HTML unescaped.
XSS = "<img src=x onerror=alert(1)>"
MARKER_NAME = "UNPICKLED_MARKER"
#: Decompressed size of the gzip bomb (bytes); the file itself is ~1000x smaller.
BOMB_BYTES = 4 << 30


@dataclass(frozen=True)
class Case:
    """One corpus file and the outcome it must produce.

    Attributes
    ----------
    name : str
        Short identifier (pytest id).
    path : pathlib.Path
    train, test : {"error", "ok"}
        Outcome as ``--train`` / as ``--test``.
    needles : tuple of str
        Lower-case words the error message must contain besides the file name.
    in_process : bool
        False for cases only safe in a memory-limited subprocess (the gzip bomb).
    limit_class : str
        Issue 11 class the case belongs to ("work", "json", "numeric", "silent"; "" for the
        older cases): work that explodes after validation, malformed JSON, numeric extremes,
        silently wrong structures.
    """

    name: str
    path: Path
    train: str
    test: str
    needles: tuple[str, ...] = ()
    in_process: bool = True
    note: str = field(default="", compare=False)
    limit_class: str = ""


class _Marker:
    """Unpickling this object creates the marker file (it must never happen)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def valid_frames(n: int = 6, seed: int = 0, *, energies: bool = True):
    """Small Cu/Au fcc cells with EMT energies (periodic, 4 atoms each)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=rng.uniform(3.6, 3.9), cubic=True)
        atoms.numbers[rng.random(len(atoms)) < 0.4] = 79
        atoms.rattle(0.08, seed=seed * 1000 + i)
        if energies:
            atoms.calc = EMT()
            atoms.get_potential_energy()
        frames.append(atoms)
    return frames


def write_valid(path: Path, n: int = 6, seed: int = 0, *, energies: bool = True) -> Path:
    """Write a valid extxyz file of :func:`valid_frames`."""
    import ase.io

    ase.io.write(path, valid_frames(n, seed, energies=energies), format="extxyz")
    return path


def _frame_text(symbols, positions, *, comment: str) -> str:
    lines = [str(len(symbols)), comment]
    lines += [f"{s} {x} {y} {z}" for s, (x, y, z) in zip(symbols, positions, strict=True)]
    return "\n".join(lines) + "\n"


_CELL = 'Lattice="3.7 0.0 0.0 0.0 3.7 0.0 0.0 0.0 3.7" pbc="T T T"'
_PROPS = "Properties=species:S:1:pos:R:3"
_POS = [(0.0, 0.0, 0.0), (1.85, 1.85, 0.0), (1.85, 0.0, 1.85), (0.0, 1.85, 1.85)]
_SYM = ["Cu", "Au", "Cu", "Cu"]


def _good(energy: float = -1.0, *, extra: str = "", cell: str = _CELL, symbols=None,
          positions=None) -> str:
    comment = f"{cell} {_PROPS} energy={energy} {extra}".strip()
    return _frame_text(symbols or _SYM, positions or _POS, comment=comment)


def _mlearn_entry(energy: float | None = -10.0) -> dict:
    entry = {
        "structure": {
            "lattice": {"matrix": [[3.7, 0, 0], [0, 3.7, 0], [0, 0, 3.7]]},
            "sites": [{"xyz": list(p), "species": [{"element": "Si", "occu": 1}]}
                      for p in _POS],
        },
        "outputs": {"energy": energy, "forces": [[0.0, 0.0, 0.0]] * 4},
        "group": "Elastic",
        "num_atoms": 4,
    }
    if energy is None:
        del entry["outputs"]["energy"]
    return entry


def _gzip_bomb(path: Path) -> None:
    # Concatenated gzip members are one valid stream: 64 MiB of zeros compressed once
    # (~64 KiB), repeated, expands to BOMB_BYTES without a single newline.
    member = gzip.compress(b"0" * (64 << 20), compresslevel=9)
    with open(path, "wb") as fh:
        for _ in range(BOMB_BYTES // (64 << 20)):
            fh.write(member)


def build_corpus(directory: str | os.PathLike, *, big: bool = True) -> list[Case]:
    """Write the corpus into ``directory``; return its cases.

    Parameters
    ----------
    directory : path-like
        Existing directory (a pytest ``tmp_path``).
    big : bool
        Include the large cases (100k-atom frame, 10 MB comment line, gzip bomb).

    Returns
    -------
    list of Case
    """
    d = Path(directory)
    marker = str(d / MARKER_NAME)
    cases: list[Case] = []

    def text(name: str, content: str, train: str, test: str, *needles: str,
             ext: str = ".xyz", **kw) -> None:
        path = d / f"{name}{ext}"
        path.write_text(content, encoding="utf-8")
        cases.append(Case(name, path, train, test, tuple(needles), **kw))

    def binary(name: str, content: bytes, train: str, test: str, *needles: str,
               ext: str = ".xyz", **kw) -> None:
        path = d / f"{name}{ext}"
        path.write_bytes(content)
        cases.append(Case(name, path, train, test, tuple(needles), **kw))

    good2 = _good(-1.0) + _good(-1.1)
    # --- empty and truncated
    text("empty", "", "error", "error", "empty")
    text("whitespace_only", "\n  \n\n", "error", "error")
    text("truncated_frame", good2[: good2.rindex("Cu") - 1], "error", "error")
    text("truncated_mid_number", good2[:-4], "ok", "ok",
         note="the last coordinate loses digits but stays a number: accepted")
    text("truncated_in_header", good2 + "4\nLattice=\"3.7 0.0", "error", "error")
    # --- atom count line
    text("count_too_high", good2.replace("4\n", "9\n", 1), "error", "error")
    text("count_too_low", good2.replace("4\n", "2\n", 1), "error", "error")
    text("count_not_integer", good2.replace("4\n", "four\n", 1), "error", "error")
    text("count_negative", good2.replace("4\n", "-4\n", 1), "error", "error")
    # 12 bytes that claim 1e11 atoms: ASE's frame scan calls readline() once per claimed
    # atom, so an unguarded loader spins for hours (subprocess only, with a timeout).
    text("count_absurd", "99999999999\n" + good2.split("\n", 1)[1], "error", "error",
         in_process=False)
    # --- non-numeric and non-finite fields
    text("position_not_numeric", good2.replace("Au 1.85 1.85 0.0", "Au 1.85 abc 0.0"),
         "error", "error")
    text("energy_not_numeric", _good(-1.0) + _good(-1.0).replace("energy=-1.0", "energy=abc"),
         "error", "error", "frame 1", "energy")
    text("nan_position", _good() + _good(positions=[(0, 0, 0), (np.nan, 1, 1), (1, 0, 1),
                                                    (0, 1, 1)]),
         "error", "error", "frame 1", "position")
    text("inf_position", _good(positions=[(0, 0, 0), (np.inf, 1, 1), (1, 0, 1), (0, 1, 1)]),
         "error", "error", "frame 0", "position")
    text("nan_cell", _good(cell='Lattice="nan 0 0 0 3.7 0 0 0 3.7" pbc="T T T"'),
         "error", "error", "frame 0", "cell")
    text("inf_cell", _good(cell='Lattice="3.7 0 0 0 inf 0 0 0 3.7" pbc="T T T"'),
         "error", "error", "frame 0", "cell")
    text("degenerate_cell", _good(cell='Lattice="0 0 0 0 0 0 0 0 0" pbc="T T T"'),
         "error", "error", "frame 0", "cell")
    text("nan_energy", _good(-1.0) + _good(float("nan")), "error", "error", "frame 1", "energy")
    text("inf_energy", _good(float("inf")), "error", "error", "frame 0", "energy")
    text("nan_forces", _good().replace(_PROPS, "Properties=species:S:1:pos:R:3:forces:R:3")
         .replace("0.0 0.0 0.0\n", "0.0 0.0 0.0 nan 0 0\n")
         .replace("1.85 1.85 0.0\n", "1.85 1.85 0.0 0 0 0\n")
         .replace("1.85 0.0 1.85\n", "1.85 0.0 1.85 0 0 0\n")
         .replace("0.0 1.85 1.85\n", "0.0 1.85 1.85 0 0 0\n"),
         "error", "error", "frame 0", "forces")
    # --- atoms and elements
    text("zero_atoms", _good(-1.0) + f"0\n{_CELL} {_PROPS} energy=0.0\n", "error", "error",
         "frame 1", "zero atoms")
    text("unknown_element", _good(symbols=["Cu", "Xx", "Cu", "Cu"]), "error", "error")
    text("dummy_element_X", _good(symbols=["Cu", "X", "Cu", "Cu"]), "error", "error",
         "element")
    # --- accepted variants
    text("mixed_periodicity", _good(-1.0) + _good(-2.0, cell='pbc="F F F"'), "ok", "ok",
         note="a molecule next to a crystal: SOAP handles mixed periodicity")
    text("duplicated_structures", _good(-1.0) * 5, "ok", "ok")
    text("missing_energy_in_training", _good(-1.0) + _good(-1.0).replace(" energy=-1.0", ""),
         "error", "ok", "frame 1", "energy")
    text("html_in_comment", _good(-1.0, extra='note="<script>alert(1)</script>"')
         + _good(-1.2).replace(_PROPS, _PROPS + " <b>bold</b>"), "ok", "ok")
    text("html_in_name", _good(-1.0, extra=f'name="{XSS}"'), "ok", "ok")
    text("html_in_group", _good(-1.0, extra='group="<script>alert(1)</script>"'), "ok", "ok")
    # --- binary and foreign formats renamed to .xyz
    rng = np.random.default_rng(6)
    binary("random_bytes", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
           "error", "error")
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 3)))
    binary("npy_renamed", buf.getvalue(), "error", "error")
    buf = io.BytesIO()
    np.savez(buf, positions=np.zeros((4, 3)))
    binary("npz_renamed", buf.getvalue(), "error", "error")
    buf = io.BytesIO()
    np.save(buf, np.array([_Marker(marker)], dtype=object), allow_pickle=True)
    binary("npy_object_renamed", buf.getvalue(), "error", "error")
    binary("pickle_renamed", pickle.dumps(_Marker(marker), protocol=4), "error", "error")
    binary("pickle_proto0_renamed", pickle.dumps(_Marker(marker), protocol=0), "error",
           "error", note="ASCII pickle: passes a text sniff, must still never be unpickled")
    binary("pickle_as_json", pickle.dumps(_Marker(marker), protocol=4), "error", "error",
           ext=".json")
    binary("pickle_as_traj", pickle.dumps(_Marker(marker), protocol=4), "error", "error",
           ext=".traj")
    binary("pickle_trajectory_header", b"PickleTrajectory" + pickle.dumps(_Marker(marker)),
           "error", "error", ext=".traj")
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("a.xyz", _good())
    binary("zip_renamed", zbuf.getvalue(), "error", "error")
    binary("utf16_text", _good().encode("utf-16"), "error", "error")
    # --- mlearn JSON
    def js(name: str, obj, train: str, test: str, *needles: str) -> None:
        text(name, json.dumps(obj), train, test, *needles, ext=".json")

    e = _mlearn_entry()
    js("mlearn_missing_structure", [e, {"outputs": {"energy": 1.0}}], "error", "error",
       "entry 1", "structure")
    no_lattice = _mlearn_entry()
    del no_lattice["structure"]["lattice"]
    js("mlearn_missing_lattice", [no_lattice], "error", "error", "entry 0", "lattice")
    no_xyz = _mlearn_entry()
    del no_xyz["structure"]["sites"][2]["xyz"]
    js("mlearn_missing_site_xyz", [e, no_xyz], "error", "error", "entry 1")
    no_species = _mlearn_entry()
    no_species["structure"]["sites"][0]["species"] = []
    js("mlearn_empty_species", [no_species], "error", "error", "entry 0")
    js("mlearn_missing_energy", [e, _mlearn_entry(None)], "error", "ok", "frame 1", "energy")
    bad_energy = _mlearn_entry()
    bad_energy["outputs"]["energy"] = "NaN-ish"
    js("mlearn_energy_not_number", [bad_energy], "error", "error", "entry 0", "energy")
    js("mlearn_empty_list", [], "error", "error")
    js("mlearn_not_a_list", {"hello": 1}, "error", "error")
    text("mlearn_truncated", json.dumps([e, e])[:-40], "error", "error", ext=".json")
    html_group = _mlearn_entry()
    html_group["group"] = XSS
    js("mlearn_html_group", [html_group, _mlearn_entry(-10.5)], "ok", "ok")
    _limit_cases(text, big=big)
    if big:
        # A single frame of 100k atoms: at the default limit (200k) it is accepted by the
        # loader; the CLI tests use it with a lowered limit (see the test).
        # Atoms on a jittered 47^3 grid (4.26 A apart): uniform random positions would put
        # pairs 0.06 A apart, which the loader rightly refuses (min_distance).
        n = 100_000
        g = np.arange(47) * (200 / 47)
        pos = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)[:n]
        pos = pos + np.random.default_rng(1).uniform(-0.5, 0.5, pos.shape)
        lines = [str(n), 'Lattice="200 0 0 0 200 0 0 0 200" pbc="T T T" '
                 f"{_PROPS} energy=-1.0"]
        lines += [f"Cu {x:.4f} {y:.4f} {z:.4f}" for x, y, z in pos]
        text("frame_100k_atoms", "\n".join(lines) + "\n", "ok", "ok", in_process=True,
             note="accepted under the default max_atoms, rejected with a lower limit")
        # A 10 MB comment line (one quoted value).
        text("huge_comment_line", _good(-1.0, extra='note="' + "A" * (10 << 20) + '"'),
             "ok", "ok", note="accepted as text")
        text("huge_comment_garbage", _good(-1.0, extra="=" * (1 << 20)), "error", "error")
        path = d / "gzip_bomb.xyz.gz"
        _gzip_bomb(path)
        cases.append(Case("gzip_bomb", path, "error", "error", (), in_process=False,
                          note=f"{BOMB_BYTES >> 30} GiB of '0' without a newline"))
    return cases


def _limit_cases(text, *, big: bool) -> None:
    """Issue 11: files whose cost explodes after a naive validation, malformed JSON, numeric
    extremes and silently wrong structures. Each must be refused before the expensive step."""
    def case(cls, name, content, *needles, ext=".xyz", train="error", test="error", **kw):
        text(name, content, train, test, *needles, ext=ext, limit_class=cls, **kw)

    pos4 = "Properties=species:S:1:pos:R:3"
    # --- 1. work that explodes after validation
    case("work", "thin_cell_issue",
         f'1\nLattice="1 0 0 1e6 1 0 0 0 1" {pos4} energy=-1\nCu 0 0 0\n',
         "frame 0", note="the 75-byte file of the issue: featomic allocated 4 GiB and aborted")
    case("work", "thin_skewed_cell",
         _good(cell='Lattice="3.7 0 0 3700 3.7 0 0 0 3.7" pbc="T T T"'), "frame 0", "thick",
         note="a cubic lattice in a basis 1e-3 A thick: 1e4 periodic images to search")
    case("work", "tiny_cell", _good(cell='Lattice="0.01 0 0 0 0.01 0 0 0 0.01" pbc="T T T"'),
         "frame 0")
    for name, count in (("count_arabic_indic", "\u0669" * 11), ("count_fullwidth", "\uff19" * 11),
                        ("count_trailing_nbsp", "99999999999\u00a0")):
        # ASE's int(str) reads these as 99999999999; bytes-level checks did not.
        case("work", name, _good(-1.0) + count + "\n" + _good(-1.1).split("\n", 1)[1],
             "frame 1", in_process=False)
    case("work", "count_cr_newlines", (_good(-1.0) + "99999999999\n" + _good().split("\n", 1)[1])
         .replace("\n", "\r"), "frame 1", in_process=False,
         note="old Mac line ends: one line for a bytes reader, many for ASE")
    symbols = list(MANY_SPECIES)
    grid = [(1.6 * (i % 3), 1.6 * (i // 3 % 3), 1.6 * (i // 9)) for i in range(len(symbols))]
    case("work", "properties_1e8_columns", _good().replace(_PROPS, _PROPS + ":x:R:100000000"),
         "frame 0", "columns", note="60 bytes: ASE would build a 1e8-field record type")
    case("work", "many_species", _good(symbols=symbols, positions=grid, cell='pbc="F F F"'),
         "features", "limit",
         note=f"{len(symbols)} elements: the linear model would be >4096 features wide")
    if big:
        # 27k atoms 1 A apart crowded into one corner of a 1e4 A cell: every atom lands in
        # the same search sub-cell (3.6e8 candidate pairs, ~12 GB in featomic).
        g = np.arange(30, dtype=float)
        clump = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
        case("work", "clump_in_huge_cell",
             _frame_text(["Cu"] * len(clump), clump.tolist(),
                         comment=f'Lattice="1e4 0 0 0 1e4 0 0 0 1e4" {pos4} energy=-1.0'),
             "neighbour", "limit")
        # A 20k-atom molecule without a cell: featomic compares all n^2/2 pairs of a
        # cell-less structure (~6 GB); lprviz boxes it first, so it must be accepted.
        rng = np.random.default_rng(3)
        side = 27
        g = np.arange(side, dtype=float) * 2.2
        mol = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)[:20_000]
        mol = mol + rng.uniform(-0.2, 0.2, mol.shape)
        case("work", "molecule_20k_atoms",
             _frame_text(["Cu"] * len(mol), mol.tolist(), comment=f"{pos4} energy=-1.0"),
             train="ok", test="ok")
    # --- 2. malformed JSON (mlearn format)
    case("json", "mlearn_deep_nesting", "[" * 100_000 + "]" * 100_000, "nested", ext=".json")
    for name, change, needles in (
        ("mlearn_outputs_list", ("outputs", [1.0, 2.0]), ("entry 0", "outputs")),
        ("mlearn_outputs_string", ("outputs", "energy=-1"), ("entry 0", "outputs")),
        ("mlearn_forces_strings", ("forces", [["0", "0", "0"]] * 4), ("entry 0", "forces")),
        ("mlearn_forces_ragged", ("forces", [[0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]),
         ("entry 0", "forces[0]")),
        ("mlearn_site_4_coords", ("xyz", [0.0, 0.0, 0.0, 1.0]), ("entry 0", "xyz")),
        ("mlearn_sites_object", ("sites", {"0": 1}), ("entry 0", "sites")),
        ("mlearn_lattice_strings", ("matrix", [["3.7", "0", "0"]] * 3), ("entry 0", "lattice")),
        ("mlearn_energy_bool", ("energy", True), ("entry 0", "energy")),
        ("mlearn_energy_400_digits", ("energy", 10**400), ("entry 0", "energy")),
        ("mlearn_group_object", ("group", {"a": [1]}), ("entry 0", "group")),
    ):
        entry = _mlearn_entry()
        key, value = change
        if key in ("forces", "energy"):
            entry["outputs"][key] = value
        elif key == "xyz":
            entry["structure"]["sites"][1]["xyz"] = value
        elif key == "matrix":
            entry["structure"]["lattice"]["matrix"] = value
        elif key == "sites":
            entry["structure"]["sites"] = value
        else:
            entry[key] = value
        case("json", name, json.dumps([entry]), *needles, ext=".json")
    huge_int = json.dumps([_mlearn_entry()]).replace('"energy": -10.0', '"energy": ' + "7" * 5000)
    case("json", "mlearn_5000_digit_integer", huge_int, ext=".json",
         note="Python refuses to parse integers over 4300 digits (ValueError)")
    # --- 3. numeric extremes
    case("numeric", "huge_lattice", _good(cell='Lattice="1e300 0 0 0 1e300 0 0 0 1e300" '
                                               'pbc="T T T"'), "frame 0", "cell")
    case("numeric", "huge_position", _good(positions=[(0, 0, 0), (1e300, 0, 0), (1.85, 0, 1.85),
                                                      (0, 1.85, 1.85)]), "frame 0", "positions")
    case("numeric", "huge_energy", _good(-1.0) + _good(float("1e300")), "frame 1", "energy")
    # --- 4. silently wrong structures
    case("silent", "no_pos_column", _good().replace(_PROPS, "Properties=species:S:1:p:R:3"),
         "frame 0", "pos")
    twin = [(0, 0, 0), (1.85, 1.85, 0), (0, 0, 0), (0, 1.85, 1.85)]
    case("silent", "coincident_atoms", _good(-1.0) + _good(positions=twin),
         "frame 1", "atoms 0 and 2")
    case("silent", "close_across_boundary", _good(positions=[(0.05, 0, 0), (1.85, 1.85, 0),
                                                             (3.6, 0, 0), (0, 1.85, 1.85)]),
         "frame 0", "atoms 0 and 2", note="0.15 A apart through the periodic boundary")
    case("silent", "nanometre_units", _good(positions=[(0, 0, 0), (0.185, 0.185, 0),
                                                       (0.185, 0, 0.185), (0, 0.185, 0.185)],
                                            cell='pbc="F F F"'), "frame 0", "atoms")
    case("silent", "slab_with_vacuum", _good(cell='Lattice="3.7 0 0 0 3.7 0 0 0 40" pbc="T T T"'),
         train="ok", test="ok", note="realistic: 36 A of vacuum")
