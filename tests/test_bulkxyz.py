"""The bulk extxyz reader gives exactly the frames ASE's reader gives, or leaves the file
to ASE (``None``); it never accepts a file ASE rejects."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.io.extxyz import key_val_str_to_dict

from lprviz import InputError, datasets
from lprviz.datasets import bulkxyz, readers
from lprviz.datasets.bulkxyz import _unusual, read_extxyz

sys.path.insert(0, str(Path(__file__).parent))
from corpus import build_corpus  # noqa: E402


def _same_value(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return (a.dtype == b.dtype and a.shape == b.shape
                and bool(np.all((a == b) | ((a != a) & (b != b)))))
    return type(a) is type(b) and (a == b or (a != a and b != b))


def assert_same_frames(fast, ref) -> None:
    """Every field ASE sets, compared exactly (types and dtypes included)."""
    assert len(fast) == len(ref)
    for k, (x, y) in enumerate(zip(fast, ref, strict=True)):
        where = f"frame {k}"
        assert np.array_equal(x.numbers, y.numbers), where
        assert _same_value(x.positions, y.positions), where
        assert _same_value(x.cell.array, y.cell.array), where
        assert _same_value(x.pbc, y.pbc), where
        assert list(x.info) == list(y.info), where
        for key in x.info:
            assert _same_value(x.info[key], y.info[key]), (where, key)
        assert list(x.arrays) == list(y.arrays), where
        for key in x.arrays:
            assert _same_value(x.arrays[key], y.arrays[key]), (where, key)
        assert (x.calc is None) == (y.calc is None), where
        if x.calc is not None:
            assert list(x.calc.results) == list(y.calc.results), where
            for key in x.calc.results:
                assert _same_value(x.calc.results[key], y.calc.results[key]), (where, key)
        assert len(x.constraints) == len(y.constraints) == 0, where


def _ase(path):
    return ase.io.read(path, index=":", format="extxyz")


_CELL = 'Lattice="4.0 0.0 0.0 0.0 4.1 0.0 0.0 0.0 4.2"'
_ATOMS = ("Cu 0.0 0.0 0.0", "au 2.0 2.0 0.0", "Cu 0.0 2.0 2.0", "Au 2.0 0.0 2.0")


def _file(tmp_path, name, *frames: tuple[str, list[str]]) -> Path:
    path = tmp_path / f"{name}.xyz"
    path.write_text("".join(f"{len(rows)}\n{comment}\n" + "".join(r + "\n" for r in rows)
                            for comment, rows in frames))
    return path


# Files the bulk reader must read itself (not leave to ASE), equal to ASE's frames.
_READ = {
    "default-properties": [(f"{_CELL} energy=-1.5", list(_ATOMS))],
    "no-comment": [("", list(_ATOMS))],
    "no-lattice-pbc-given": [('pbc="T F T" energy=1', list(_ATOMS))],
    "extra-columns": [(f"{_CELL} Properties=species:S:1:pos:R:3:forces:R:3:tag:I:1:"
                       "label:S:1:q:R:1:vec:I:2 energy=2.5 free_energy=2.0",
                       [r + f" 0.1 -0.2 0.3 {i} lab{i} {i / 3:.17g} {i} {-i}"
                        for i, r in enumerate(_ATOMS)])],
    "z-column": [(f"{_CELL} Properties=Z:I:1:pos:R:3",
                  ["29 0 0 0", "79 2 2 0", "29 0 2 2", "79 2 0 2"])],
    "info-kinds": [(f'{_CELL} stress="1 2 3 2 4 5 3 5 6" virial="1 0 0 0 1 0 0 0 1" '
                    'flags="T F T" ints="1 2 3" name="a b c" group=g1 '
                    'config_type=bulk x=1.5e-3 n=7 ok=T text="hello world" '
                    'energy=-3.25 dipole="0.1 0.2 0.3" n=8', list(_ATOMS))],
    "special-lines": [(f'{_CELL} key_without_value "quoted key"=3 a=[1,2,3] b={{4 5}} '
                       "c='x y' energy=1", list(_ATOMS))],
    "tabs-and-spaces": [(f"{_CELL}\tenergy=1", ["Cu\t0.0  0.0\t0.0", *_ATOMS[1:]])],
    "extra-tokens": [(_CELL, [r + " 9 9 trailing" for r in _ATOMS])],
    "many-frames": [(f"{_CELL} energy={-i} group=g{i % 3} name=s{i}",
                     [r.replace("0.0", f"{0.01 * i:.3f}", 1) for r in _ATOMS])
                    for i in range(30)],
    "mixed-properties": [
        (f"{_CELL} energy=1", list(_ATOMS)),
        (f"{_CELL} Properties=species:S:1:pos:R:3:forces:R:3 energy=2",
         [r + " 1 2 3" for r in _ATOMS]),
        (f"{_CELL} energy=3", list(_ATOMS))],
    "empty-frame": [(_CELL, [])],
    "z-and-species": [("Properties=species:S:1:Z:I:1:pos:R:3",
                       ["Cu 29 0 0 0", "Au 79 2 2 2", "cu 47 0 2 2"])],  # Z wins, as in ASE
    "z-real": [("Properties=Z:R:1:pos:R:3", ["29.0 0 0 0", "79 2 2 2"])],
    "species-case": [(_CELL, ["cu 0 0 0", "AU 2 2 0", "Cu 0 2 2", "aU 2 0 2"]),
                     (_CELL, ["X 0 0 0", "h 1 1 1"])],
    # ASE glues the token after an empty value onto it: no cell, no energy here
    "empty-quoted-value": [(f'{_CELL} note="" energy=-1.5', list(_ATOMS)),
                           (f'a="" {_CELL} energy=2', list(_ATOMS))],
    "exponents-and-signs": [(_CELL, ["Cu +1e-3 -2.5E+0 .5", "Au 5. 1e400 -0.0",
                                     "Cu nan 0 0", "Au inf -inf 1"])],
}

# Files it must leave to ASE (None), with why.
_LEFT = {
    "logical-column": [("Properties=species:S:1:pos:R:3:fix:L:1",
                        [r + " T" for r in _ATOMS])],
    "move-mask": [("Properties=species:S:1:pos:R:3:move_mask:L:1",
                   [r + " T" for r in _ATOMS])],
    "underscore-number": [(_CELL, ["Cu 1_0.0 0 0", *_ATOMS[1:]])],
    "non-ascii-digit": [(_CELL, ["Cu \u0661 0 0", *_ATOMS[1:]])],
    "non-ascii-name": [(f"{_CELL} name=caf\u00e9", list(_ATOMS))],
    "control-character": [(f"{_CELL} name=a\x0bb", list(_ATOMS))],
    "blank-atom-line": [(_CELL, ["Cu 0 0 0", "", *_ATOMS[2:]])],
    "short-atom-line": [(_CELL, ["Cu 0 0", *_ATOMS[1:]])],
    "long-string": [(_CELL, ["C" * 80 + " 0 0 0", *_ATOMS[1:]])],
    "unknown-species": [(_CELL, ["Xy 0 0 0", *_ATOMS[1:]])],
    "two-column-species": [("Properties=species:S:2:pos:R:3",
                            ["Cu Au 0 0 0", "Au Cu 2 2 2"])],
    "string-z": [("Properties=Z:S:1:pos:R:3", ["6 0 0 0", "8 2 2 2"])],
    "int-column-float": [("Properties=species:S:1:pos:R:3:tag:I:1",
                          [r + " 1.5" for r in _ATOMS])],
}


@pytest.mark.parametrize("name", sorted(_READ))
def test_reads_what_ase_reads(tmp_path, name):
    path = _file(tmp_path, name, *_READ[name])
    fast = read_extxyz(path.read_text())
    assert fast is not None, "the bulk reader left this file to ASE"
    assert_same_frames(fast, _ase(path))


@pytest.mark.parametrize("name", sorted(_LEFT))
def test_leaves_to_ase(tmp_path, name):
    path = _file(tmp_path, name, *_LEFT[name])
    assert read_extxyz(path.read_text()) is None


def test_empty_value_glues_the_next_token_as_in_ase(tmp_path):
    path = _file(tmp_path, "glued", *_READ["empty-quoted-value"])
    first, second = read_extxyz(path.read_text())
    assert first.info["note"] == "energy=-1.5" and first.calc is None
    assert not second.pbc.any() and "energy" in second.calc.results


def test_missing_comment_line_at_the_end_left_to_ase(tmp_path):
    """A last frame of 0 atoms without its comment line: ASE fails, so the bulk reader does
    not read it either."""
    path = _file(tmp_path, "cut", (_CELL, list(_ATOMS)))
    path.write_text(path.read_text() + "0\n")
    assert read_extxyz(path.read_text()) is None
    with pytest.raises(Exception):  # noqa: B017 - whatever ASE raises
        _ase(path)


def test_vec_lines_left_to_ase(tmp_path):
    path = tmp_path / "vec.xyz"
    path.write_text("1\ncomment\nH 0 0 0\nVEC1 3 0 0\n")
    assert read_extxyz(path.read_text()) is None
    assert np.allclose(_ase(path)[0].cell[0], [3, 0, 0])  # ASE reads it


@pytest.mark.parametrize("name", ["emt-alloys", "teaching-stoichiometry"])
def test_shipped_datasets(name):
    path = Path(datasets.__file__).parents[1] / "data" / f"{name}.extxyz"
    fast = read_extxyz(path.read_text())
    assert fast is not None
    assert_same_frames(fast, _ase(path))


def test_corpus_never_accepts_what_ase_rejects(tmp_path):
    """Every text file of the bad-input corpus: either left to ASE, or ASE reads it too and
    to the same frames."""
    seen = read = 0
    for case in build_corpus(tmp_path, big=False):
        if case.path.suffix not in (".xyz", ".extxyz", ""):
            continue
        try:
            text = case.path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        try:  # what load checks before any reader: ASE would loop on a false count
            readers._check_xyz_counts(case.path, max_atoms=readers.DEFAULT_MAX_ATOMS,
                                      label=case.name)
        except InputError:
            continue
        seen += 1
        fast = read_extxyz(text)
        try:
            ref = _ase(case.path)
        except Exception:  # noqa: BLE001 - any ASE failure
            assert fast is None, case.name
            continue
        if fast is not None:
            read += 1
            assert_same_frames(fast, ref)
    assert seen > 20 and read > 5  # the corpus reached both branches


def test_comment_tokens_parse_as_whole_lines():
    """Simple lines are parsed token by token (memoised): the same dict as ASE's parser on
    the whole line, and no value shared between frames."""
    lines = [
        f"{_CELL} Properties=species:S:1:pos:R:3 energy=-1.5 pbc=\"T T T\" group=a",
        'stress="1 2 3 4 5 6 7 8 9" flags="T F" n=3 n=4 x=1e5 s=abc',
        "a=1 b=2.5 c=T d=F e=true f=False g=1,2,3",
    ]
    memo: dict = {}
    for line in lines:
        assert bulkxyz._SIMPLE_LINE.fullmatch(line)
        first = bulkxyz._comment_dict(line, memo)
        second = bulkxyz._comment_dict(line, memo)  # from the memo
        want = key_val_str_to_dict(line)
        for got in (first, second):
            assert list(got) == list(want)
            for key in want:
                assert _same_value(got[key], want[key]), key
        for key, value in first.items():
            if isinstance(value, (np.ndarray, list)):
                assert value is not second[key]
    assert not bulkxyz._SIMPLE_LINE.fullmatch('a="x\\" y" b=1')  # escapes: whole-line parse
    assert not bulkxyz._SIMPLE_LINE.fullmatch('a="" b=1')  # ASE glues b=1 onto a


def test_load_uses_it_and_falls_back(tmp_path, monkeypatch):
    """``datasets.load`` reads extxyz through the bulk reader, and through ASE when it
    leaves the file (same dataset either way)."""
    path = _file(tmp_path, "data", *_READ["many-frames"])
    calls = []
    real = readers._read_bulk
    monkeypatch.setattr(readers, "_read_bulk", lambda p: calls.append(p) or real(p))
    bulk = datasets.load(str(path))
    assert calls and real(path) is not None
    monkeypatch.setattr(readers, "_read_bulk", lambda p: None)
    plain = datasets.load(str(path))
    assert_same_frames(bulk.frames, plain.frames)
    assert np.array_equal(bulk.energies, plain.energies)
    assert list(bulk.groups) == list(plain.groups) and list(bulk.names) == list(plain.names)


def test_real_dft_frames_written_by_ase(tmp_path):
    """Real DFT structures (mlearn Si: energies, forces, bulk and surfaces, dislocations) as
    ASE's extxyz writer writes them, with a stress and a group added: the bulk reader gives
    ASE's frames, and ``load`` the same dataset either way."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from reference_data import mlearn_dir

    frames, meta = readers.read_mlearn_json(mlearn_dir() / "Si_training.json")
    rng = np.random.default_rng(3)
    for atoms, group in zip(frames, meta["groups"], strict=True):
        results = dict(atoms.calc.results)
        results["stress"] = rng.normal(0, 0.01, 6)
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info["group"] = group
    path = tmp_path / "si.extxyz"
    ase.io.write(path, frames, format="extxyz")
    fast = read_extxyz(path.read_text())
    assert fast is not None and len(fast) == len(frames)
    ref = _ase(path)
    assert_same_frames(fast, ref)
    assert all("forces" in a.calc.results and "stress" in a.calc.results for a in fast)
    data = datasets.load(str(path))
    assert np.array_equal(data.energies, [a.calc.results["energy"] for a in ref])
    assert list(data.groups) == meta["groups"]


def test_unusual_characters_are_those_outside_printable_ascii_tab_and_newline():
    # the definition as a regular expression (what the reader scanned with before)
    pattern = re.compile(r"[^\t\n\x20-\x7e]")
    chars = [chr(c) for c in [*range(0x300), 0x7FF, 0x800, 0xFFFD, 0x10000, 0x10FFFF]]
    for c in chars:
        for text in (c, f"Cu 0 0 0\n{c}", f"{c}\n\t  x"):
            assert _unusual(text) == bool(pattern.search(text)), repr(text)
    assert not _unusual("") and not _unusual("1\nCu 0 0 0\n")
