"""lprviz.export: full-precision extxyz, per-atom CSV and chemiscope files round-trip."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json

import ase.io
import numpy as np
import pandas as pd
import pytest
from reference_export import reference_write

from lprviz import datasets, export, features, pipeline, selection
from lprviz.datasets import Dataset
from lprviz.errors import InputError


@pytest.fixture(scope="module")
def results():
    ds = datasets.load("teaching-stoichiometry")
    desc = features.compute_soap(ds.frames, features.SOAP_PRESETS["fast"], species=ds.species)
    mask = selection.preset_mask("varied compositions", ds.groups, [a.numbers for a in ds.frames])
    res = pipeline.evaluate(pipeline.prepare(ds, desc, mask, pipeline.ModelSpec()), 1e-4)
    return ds, res


def test_extxyz_round_trip_keeps_full_precision(results):
    ds, res = results
    frames = ase.io.read(io.StringIO(export.extxyz_bytes(ds, res).decode()), index=":",
                         format="extxyz")
    assert len(frames) == len(ds.frames)
    lpr = np.concatenate([a.arrays["lpr"] for a in frames])
    np.testing.assert_allclose(lpr, res.lpr, rtol=1e-14)  # ASE's own writer keeps 8 decimals
    np.testing.assert_allclose(np.concatenate([a.arrays["local_energy"] for a in frames]),
                               res.local_energy, rtol=1e-14)
    log_lpr = np.concatenate([a.arrays["log10_lpr"] for a in frames])
    np.testing.assert_allclose(10**log_lpr, res.lpr, rtol=1e-12)
    # the reference energies survive as calculator results, as ASE writes them
    np.testing.assert_allclose([a.get_potential_energy() for a in frames], ds.energies)
    assert [bool(a.info["in_training"]) for a in frames] == list(res.train_mask)


def test_frames_without_a_name_or_group_get_the_datasets(results, tmp_path):
    """A frame whose own info has no name or group (an mlearn JSON entry, an unnamed extxyz
    frame) is written with the dataset's, as summaries and tables name it; a frame's own
    name and group are left as they are."""
    ds, res = results
    frames = [a.copy() for a in ds.frames]
    for a in frames[::2]:
        a.info.pop("name", None)
        a.info.pop("group", None)
    bare = dataclasses.replace(ds, frames=frames,
                               names=[f"mine.json#{i}" for i in range(len(frames))])
    out = ase.io.read(io.StringIO(export.extxyz_bytes(bare, res).decode()), index=":",
                      format="extxyz")
    for i, (a, b) in enumerate(zip(out, ds.frames, strict=True)):
        if i % 2:
            assert a.info["name"] == b.info["name"] and a.info["group"] == b.info["group"]
        else:
            assert a.info["name"] == f"mine.json#{i}" and a.info["group"] == ds.groups[i]
    (tmp_path / "out.extxyz").write_bytes(export.extxyz_bytes(bare, res))
    again = datasets.load(tmp_path / "out.extxyz")  # read back: the same names and groups
    assert again.names == [a.info["name"] for a in out]
    assert again.groups.tolist() == ds.groups.tolist()


def test_every_export_carries_the_data_share(results):
    """docs/science.md §11: the per-atom share of the LPR due to the data, in [0, 1], under
    one name in the extxyz and the CSV (docs/output_schema.md)."""
    ds, res = results
    frames = ase.io.read(io.StringIO(export.extxyz_bytes(ds, res).decode()), index=":",
                         format="extxyz")
    share = np.concatenate([a.arrays["data_share"] for a in frames])
    np.testing.assert_allclose(share, res.data_share, rtol=1e-14)
    assert np.all((share >= 0) & (share <= 1))
    table = pd.read_csv(io.BytesIO(export.csv_bytes(ds, res)))
    np.testing.assert_allclose(table["data_share"], res.data_share, rtol=1e-9)


def test_write_extxyz_tiny_values_and_path(tmp_path):
    atoms = ase.Atoms("Cu2", positions=[[0, 0, 0], [1.1, 0, 0]])
    atoms.arrays["lpr"] = np.array([1.234567890123e-9, 3.0e-15])
    path = tmp_path / "tiny.extxyz"
    export.write_extxyz(path, [atoms])
    back = ase.io.read(path)
    np.testing.assert_allclose(back.arrays["lpr"], atoms.arrays["lpr"], rtol=1e-14)


def test_write_extxyz_round_trips_every_column_kind(tmp_path):
    """Frames of different sizes with float, int, bool and 3-vector per-atom columns, info
    entries and a cell: ase.io.read gives back every value (floats to full precision), and
    the same values as ASE's own writer (which rounds floats to 8 decimals)."""
    from ase.build import bulk, molecule

    rng = np.random.default_rng(5)
    frames = [bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1)), molecule("CH3CH2OH")]
    for i, atoms in enumerate(frames):
        n = len(atoms)
        atoms.arrays["lpr_0"] = rng.lognormal(size=n) * 10.0 ** rng.integers(-12, 3, n)
        atoms.arrays["count"] = rng.integers(-5, 50, n)
        atoms.arrays["undetermined_0"] = rng.random(n) < 0.5
        atoms.arrays["forces_pred"] = rng.standard_normal((n, 3))
        atoms.info["pr_0"] = float(rng.random())
        atoms.info["name"] = f"frame{i}"
    path = tmp_path / "all.extxyz"
    export.write_extxyz(path, frames)
    back = ase.io.read(path, ":")
    ase.io.write(tmp_path / "ase.extxyz", frames, format="extxyz")
    theirs = ase.io.read(tmp_path / "ase.extxyz", ":")
    assert len(back) == len(frames)
    for got, want, ref in zip(back, frames, theirs, strict=True):
        np.testing.assert_allclose(got.positions, want.positions, rtol=0, atol=1e-14)
        np.testing.assert_allclose(got.cell.array, want.cell.array)
        assert list(got.symbols) == list(want.symbols)
        np.testing.assert_allclose(got.arrays["lpr_0"], want.arrays["lpr_0"], rtol=1e-14)
        np.testing.assert_allclose(got.arrays["forces_pred"], want.arrays["forces_pred"],
                                   rtol=1e-14)
        np.testing.assert_array_equal(got.arrays["count"], want.arrays["count"])
        np.testing.assert_array_equal(got.arrays["undetermined_0"],
                                      want.arrays["undetermined_0"])
        assert got.info["pr_0"] == pytest.approx(want.info["pr_0"]) and got.info["name"] == (
            want.info["name"])
        np.testing.assert_allclose(got.arrays["forces_pred"], ref.arrays["forces_pred"],
                                   atol=1e-8)
        np.testing.assert_array_equal(got.arrays["undetermined_0"],
                                      ref.arrays["undetermined_0"])


def test_csv_and_chemiscope(results):
    ds, res = results
    table = pd.read_csv(io.BytesIO(export.csv_bytes(ds, res)))
    assert len(table) == ds.n_atoms
    np.testing.assert_allclose(table["lpr"], res.lpr, rtol=1e-9)
    np.testing.assert_allclose(table["true_local_energy"], ds.true_local_energies, rtol=1e-9)
    data = json.loads(gzip.decompress(export.chemiscope_bytes(ds, res)))
    prop = data["properties"]["lpr"]
    assert prop["target"] == "atom" and len(prop["values"]) == ds.n_atoms
    np.testing.assert_allclose(prop["values"], res.lpr, rtol=1e-12)
    assert len(data["structures"]) == len(ds.frames)
    # the dataset's own per-atom reference, as in the CSV and extxyz outputs
    local = data["properties"]["true_local_energy"]
    assert local["target"] == "atom" and local["units"] == "eV"
    np.testing.assert_allclose(local["values"], ds.true_local_energies, rtol=1e-12)
    # only the selected frames' atoms
    test = export.chemiscope_bytes(ds, res, include_training=False)
    values = json.loads(gzip.decompress(test))["properties"]["true_local_energy"]["values"]
    np.testing.assert_allclose(
        values, ds.true_local_energies[~np.asarray(res.train_mask)[ds.structure_index]],
        rtol=1e-12)


def test_csv_cells_never_start_a_spreadsheet_formula(results):
    ds, res = results
    hostile = ds.subset(np.arange(2))
    hostile.names[0] = "=HYPERLINK(\"http://x\")"
    hostile.groups[1] = "@SUM(A1)"
    sub = pipeline.evaluate(pipeline.prepare(
        hostile, features.compute_soap(hostile.frames, features.SOAP_PRESETS["fast"],
                                       species=hostile.species),
        np.array([True, True]), pipeline.ModelSpec()), 1e-4)
    table = pd.read_csv(io.BytesIO(export.csv_bytes(hostile, sub)))
    for column in ("name", "group"):
        assert not table[column].astype(str).str.match(r"^[=+\-@]").any()
    assert table["name"].iloc[0] == "'=HYPERLINK(\"http://x\")"


def test_chemiscope_file_is_strict_json_with_unlabelled_structures(results):
    ds, res = results
    part = ds.subset(np.arange(3))
    part.energies[2] = np.nan
    part.has_energy[2] = False
    mask = np.array([True, True, False])
    sub = pipeline.evaluate(pipeline.prepare(
        part, features.compute_soap(part.frames, features.SOAP_PRESETS["fast"],
                                    species=part.species), mask, pipeline.ModelSpec()), 1e-4)

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    data = json.loads(gzip.decompress(export.chemiscope_bytes(part, sub)),
                      parse_constant=no_constants)
    assert "energy" not in data["properties"]
    assert len(data["properties"]["lpr"]["values"]) == part.n_atoms


# --------------------------------------------------------------------------- byte identity


def _assert_same_bytes(ds, res, **kwargs):
    """The fast path, ``write_extxyz`` of the copies and the reference route agree byte for
    byte; returns the frames ASE reads back from the fast path's text."""
    want = io.StringIO()
    reference_write(want, export.annotated_frames(ds, res, **kwargs))
    fast = export.extxyz_bytes(ds, res, **kwargs).decode()
    assert fast == want.getvalue()
    copies = io.StringIO()
    export.write_extxyz(copies, export.annotated_frames(ds, res, **kwargs))
    assert copies.getvalue() == fast
    return ase.io.read(io.StringIO(fast), index=":", format="extxyz")


def test_shared_entries_are_replaced_schema_names():
    """The fast writer formats the entries every frame shares once, as one block after the
    frame's own: that holds because each is a name removed from input frames first."""
    ds = datasets.load("teaching-stoichiometry")
    mask = np.zeros(len(ds.frames), dtype=bool)
    mask[:5] = True
    shared, _ = export._annotations(ds, _fit(ds, mask, [1e-3, 1e-1]),
                                    extra_provenance={"note": "x"})
    assert {"alpha", "alphas", "lprviz_note"} <= shared.keys()
    assert all(export._STALE_INFO.match(k) for k in shared)


def _fit(ds, mask, alphas):
    desc = features.compute_soap(ds.frames, features.SOAP_PRESETS["fast"], species=ds.species)
    fit = pipeline.prepare(ds, desc, mask, pipeline.ModelSpec())
    return [pipeline.evaluate(fit, a) for a in alphas]


@pytest.mark.parametrize("name", [row.name for row in datasets.list_available()
                                  if row.kind == "shipped"])
def test_fast_writer_matches_the_reference_on_shipped_datasets(name):
    ds = datasets.load(name)
    mask = np.zeros(len(ds.frames), dtype=bool)
    mask[::4] = True
    res = _fit(ds, mask, [1e-4, 1e-2])
    rng = np.random.default_rng(1)
    lcpr = {"lcpr_radial": rng.lognormal(size=ds.n_atoms),
            "lcpr_angular": np.where(rng.random(ds.n_atoms) < 0.1, np.nan,
                                     rng.lognormal(size=ds.n_atoms))}
    back = _assert_same_bytes(ds, res, include_training=False, atom_arrays=lcpr,
                              extra_provenance={"scale_from": "reference"})
    test = np.flatnonzero(~mask)
    assert len(back) == test.size
    atoms = np.isin(ds.structure_index, test)
    for i, r in enumerate(res):
        np.testing.assert_allclose(np.concatenate([a.arrays[f"lpr_{i}"] for a in back]),
                                   r.lpr[atoms], rtol=1e-15)
    np.testing.assert_allclose(np.concatenate([a.arrays["lcpr_angular"] for a in back]),
                               lcpr["lcpr_angular"][atoms], rtol=1e-15)
    np.testing.assert_allclose([a.get_potential_energy() for a in back], ds.energies[test],
                               rtol=1e-15)
    _assert_same_bytes(ds, res[0])  # one alpha, every frame


def _odd_frames():
    """Frames with everything a user file can bring: calculator forces, energy, stress
    (6-vector, in calc results or info), free energy, no cell, mixed pbc, info values of
    every kind, extra per-atom columns of every kind, and stale lprviz output."""
    from ase.build import bulk, molecule
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(7)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.calc = SinglePointCalculator(cu, energy=-14.5, free_energy=-14.6,
                                    forces=rng.standard_normal((4, 3)),
                                    stress=rng.standard_normal(6))
    cu.info.update({"name": "bulk Cu", "config_type": "bulk", "count": 3, "weight": 0.25,
                    "flag": True, "np_flag": np.bool_(False), "np_int": np.int32(-4),
                    "np_float": np.float32(1.5), "vector": np.array([1.5, -2.0, 3.25]),
                    "ints": np.array([1, 2, 3]), "bools": np.array([True, False]),
                    "virial": rng.standard_normal((3, 3)), "quote": 'say "hi" [x]',
                    "listed": [1, "a"], "mapping": {"k": 1}, "pr": 9.0, "lprviz_version": "0",
                    "tabbed": "x\t"})
    cu.arrays["lpr"] = np.ones(4)  # stale outputs of an earlier run
    cu.arrays["lpr_2"] = np.ones(4)
    cu.arrays["forces_pred"] = np.zeros((4, 3))
    cu.arrays["tag"] = np.array(["a", "bb", "c", "dd"])
    cu.arrays["count"] = np.arange(4, dtype=np.int32)
    cu.arrays["mask"] = np.array([True, False, True, True])
    cu.arrays["single"] = rng.standard_normal((4, 1)).astype(np.float32)
    mol = molecule("CH3CH2OH")  # no cell, not periodic
    mol.calc = SinglePointCalculator(mol, energy=-40.0, forces=rng.standard_normal((9, 3)))
    mol.info.update({"stress": rng.standard_normal(6), "alpha": 3.0, "in_training": True})
    slab = bulk("Au", "fcc", a=4.1, cubic=True).repeat((1, 1, 2))  # mixed pbc
    slab.pbc = [True, True, False]
    slab.positions += rng.normal(scale=0.01, size=slab.positions.shape)
    slab.calc = SinglePointCalculator(slab, energy=-25.0)
    slab.info["pbc"] = "old"  # replaced in place by the frame's pbc, as ASE's writer does
    bare = bulk("Ag", "fcc", a=4.0) * (2, 2, 2)  # no calculator at all
    bare.arrays["tag"] = np.array(list("abcdefgh"))
    return [cu, mol, slab, bare]


def test_fast_writer_matches_the_reference_on_odd_frames():
    frames = _odd_frames()
    energies = np.array([-14.5, -40.0, -25.0, np.nan])
    ds = Dataset(name="odd frames", frames=frames, energies=energies,
                 has_energy=np.isfinite(energies), groups=np.array(["a", "b", "a", "c"]),
                 names=["cu", "mol", "slab", "bare"], splits=np.array([""] * 4))
    res = _fit(ds, np.array([True, True, True, False]), [1e-6, 1e-3, 1.0])
    rng = np.random.default_rng(3)
    res = [dataclasses.replace(r, forces_pred=rng.standard_normal((ds.n_atoms, 3)))
           for r in res]
    for kwargs in ({"include_training": False},
                   {"atom_arrays": {"lcpr_x": rng.lognormal(size=ds.n_atoms)}}):
        _assert_same_bytes(ds, res, **kwargs)
    back = _assert_same_bytes(ds, res)
    for got, frame in zip(back, frames, strict=True):
        np.testing.assert_array_equal(got.pbc, frame.pbc)
        np.testing.assert_allclose(got.positions, frame.positions, rtol=1e-15, atol=1e-300)
    sizes = ds.frame_sizes
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for j, got in enumerate(back):
        rows = slice(starts[j], starts[j + 1])
        np.testing.assert_allclose(got.arrays["forces_pred"], res[0].forces_pred[rows],
                                   rtol=1e-15)
        np.testing.assert_allclose(got.arrays["lpr_2"], res[2].lpr[rows], rtol=1e-15)
        assert "lpr_3" not in got.arrays
        assert got.info["pr"] == pytest.approx(res[0].pr[j], rel=1e-15)
    cu = back[0]
    np.testing.assert_allclose(cu.get_forces(), frames[0].calc.results["forces"], rtol=1e-15)
    np.testing.assert_allclose(cu.get_stress(), frames[0].calc.results["stress"], rtol=1e-15)
    assert cu.info["name"] == "bulk Cu" and cu.info["quote"] == 'say "hi" [x]'
    assert cu.info["count"] == 3 and cu.info["flag"] is True and cu.info["np_flag"] is False
    np.testing.assert_array_equal(cu.info["ints"], [1, 2, 3])
    np.testing.assert_allclose(cu.info["virial"], frames[0].info["virial"], rtol=1e-15)
    assert cu.info["lprviz_version"] != "0" and cu.info["mapping"] == {"k": 1}
    np.testing.assert_array_equal(cu.arrays["tag"], ["a", "bb", "c", "dd"])
    np.testing.assert_array_equal(cu.arrays["count"], np.arange(4))
    np.testing.assert_allclose(cu.arrays["single"], frames[0].arrays["single"].ravel())
    assert back[1].info["alpha"] == 1e-6 and back[1].info["in_training"] is True
    np.testing.assert_allclose(back[1].get_stress(), frames[1].info["stress"], rtol=1e-15)


def _hard_floats(rng, n):
    """Values where 16-digit rounding is hard: every magnitude, neighbours of powers of ten,
    exact ties at the 17th digit, integers beyond 2**53, zeros, inf and NaN."""
    powers = 10.0 ** rng.integers(-110, 110, n).astype(float)
    return np.concatenate([
        rng.standard_normal(n),
        rng.lognormal(sigma=40, size=n) * rng.choice([-1, 1], n),
        np.nextafter(powers, rng.choice([0.0, np.inf], n)),
        powers * rng.choice([-1, 1], n),
        # 17-digit decimals ending in 5 (ties where the binary value is exact, else near)
        (rng.integers(10**15, 10**16, n) * 10 + 5) / 10.0 ** rng.integers(0, 30, n),
        rng.integers(0, 2**53, n).astype(float) * 2.0 ** rng.integers(-200, 200, n),
        [0.0, -0.0, 1.0, 0.5, 2.5, 1234567890123456.5, 9.9999999999999995e-1, 1e-99,
         9.999999999999999e98, 1e99, 1e-100, 5e-324, 1.7976931348623157e308, np.inf,
         -np.inf, np.nan],
    ])


@pytest.mark.parametrize("width", [1, 3, 5])
def test_vectorised_float_text_is_pythons(width):
    """Every text of the vectorised ``%22.15e`` equals Python's own, over ~1.2M values."""
    values = _hard_floats(np.random.default_rng(width), 200_000 // width * width)
    values = values[: values.size // width * width].reshape(-1, width)
    got = export._e15_rows(values)
    want = [" ".join("%22.15e" % v for v in row) for row in values.tolist()]  # noqa: UP031
    assert got == want


def test_write_extxyz_matches_the_reference_on_any_frames():
    """The generic path (any Atoms): odd frames, an empty frame, float32 and long-double
    columns, inf/NaN and 3-digit exponents in a column, a non-orthogonal cell."""
    from ase.build import bulk

    frames = _odd_frames()
    tri = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)  # primitive: non-orthogonal cell
    tri.arrays["x32"] = np.array([1.1, -2.5e-7], dtype=np.float32)
    tri.arrays["xld"] = np.array([1 / 3, 2e-300], dtype=np.longdouble)
    tri.arrays["odd"] = np.array([[np.inf, 1e200], [np.nan, -1e-150]])
    frames += [tri, ase.Atoms()]
    want = io.StringIO()
    reference_write(want, frames)
    got = io.StringIO()
    export.write_extxyz(got, frames)
    assert got.getvalue() == want.getvalue()
    back = ase.io.read(io.StringIO(got.getvalue()), index=":", format="extxyz")
    np.testing.assert_allclose(back[-2].arrays["odd"], tri.arrays["odd"], rtol=1e-15)
    assert len(back[-1]) == 0


def test_bad_columns_and_calculator_results_are_one_line_errors():
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.arrays["blocks"] = np.zeros((4, 2, 2))
    with pytest.raises(InputError, match=r"array 'blocks': expected one value or row "
                                                r"per atom \(4\), got shape \(4, 2, 2\)"):
        export.write_extxyz(io.StringIO(), [atoms])
    del atoms.arrays["blocks"]
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0)
    atoms.calc.results["bogus"] = 1.0  # a calculator may hold results ASE does not know
    ds = Dataset(name="one", frames=[atoms], energies=np.array([-1.0]),
                 has_energy=np.array([True]), groups=np.array(["a"]), names=["cu"],
                 splits=np.array([""]))
    res = _fit(ds, np.array([True]), [1e-3])
    with pytest.raises(InputError, match="calculator result 'bogus'"):
        export.write_annotated(io.StringIO(), ds, res)


def test_info_text_is_ases_header_text():
    """The writer's own header text of simple entries (bools, Python and NumPy real
    scalars, strings, None, 1-D bool arrays) equals ASE's ``key_val_dict_to_str``, awkward
    strings and numbers included; other values (float arrays, 2-D arrays, lists, dicts)
    go to ASE."""
    from ase.io.extxyz import key_val_dict_to_str

    rng = np.random.default_rng(41)
    strings = ["", "a", "two words", 'q"uote', "s'ingle", "{brace}", "[x]", "tab\there",
               " lead", "trail ", "é", "a=b", "T", "1.5", "\t"]
    numbers = [0.0, -0.0, 1.5, -2.25e-300, 5e-324, 1e300, float("inf"), float("-inf"),
               float("nan"), 0.1 + 0.2, 7, -3, 10**30, 0]
    values = [*strings, *numbers, True, False, None, np.float64(1.5), np.float32(0.1),
              np.longdouble(2.5), np.int64(-3), np.uint8(7), np.bool_(True), np.bool_(False),
              np.array([True, False, True]), np.array([], dtype=bool), np.array([False])]
    others = [np.array([1.0, 2.0]), np.array([[True]]), np.array([1, 2]), [1, 2], {"a": 1},
              (1, 2)]
    keys = ["k", "two words", "energy_pred", "x\ty", "", "T", "pbc", "stress"]
    for trial in range(400):
        n = int(rng.integers(0, 6))
        info = {f"{keys[int(rng.integers(len(keys)))]}{i}": values[int(rng.integers(len(values)))]
                for i in range(n)}
        if trial % 4 == 0 and n:
            info[f"other{trial}"] = others[int(rng.integers(len(others)))]
        assert export._info_text(info) == key_val_dict_to_str(info), info
    for s in strings:  # each awkward string as a key and as the value of the last entry
        info = {s: s} if s else {"k": s}
        assert export._info_text(info) == key_val_dict_to_str(info)
    for info in ({"pbc": np.array([True, False, True])}, {"energy": np.float64(-1.25),
                 "stress": np.ones(9, dtype=bool)}, {"virial": np.zeros(9, dtype=bool)}):
        assert export._info_text(info) == key_val_dict_to_str(info)


def _column_frames(rng, n_frames=40):
    """Frames sharing one layout, with a column of every kind the fixed-width rows take
    (species, floats of any magnitude, float32, ints at the edges of "%8d" and an (n, 2)
    int32 column, booleans (n,) and (n, 1), short text)."""
    from ase.build import bulk

    frames = []
    for k in range(n_frames):
        a = bulk("Cu", "fcc", a=3.6, cubic=True) * (1, 1, 1 + k % 2)
        a.numbers[::3] = rng.choice([1, 8, 79, 118], len(a.numbers[::3]))  # 1- and 2-letter
        a.positions += rng.normal(scale=1e-3, size=a.positions.shape)
        x = _hard_floats(rng, len(a))[rng.permutation(len(a) * 8)[: len(a)]]
        # inf and NaN fit the width; negative values with a 3-digit exponent do not
        wide = (np.abs(x) >= 1e100) | ((np.abs(x) < 1e-99) & (x != 0))
        a.arrays["x"] = np.where(wide, np.abs(x), x)
        a.arrays["v32"] = rng.standard_normal((len(a), 2)).astype(np.float32)
        a.arrays["n"] = rng.choice([0, 7, -1, -9, 10, -10, 9_999_999, -9_999_999,
                                    99_999_999, 12345], len(a))
        a.arrays["ok"] = rng.random(len(a)) < 0.5
        a.arrays["pair"] = rng.integers(-99, 99, (len(a), 2)).astype(np.int32)
        a.arrays["flag"] = rng.random((len(a), 1)) < 0.5
        a.arrays["label"] = rng.choice(["", "a", "ab", "Z"], len(a))
        frames.append(a)
    return frames


def _assert_written_as_reference(frames):
    want = io.StringIO()
    reference_write(want, frames)
    got = io.StringIO()
    export.write_extxyz(got, frames)
    assert got.getvalue() == want.getvalue()


def test_fixed_width_rows_are_the_reference_text(monkeypatch):
    """Frames of one layout go through the fixed-width rows (the % route is made to fail),
    and their text is the reference writer's, byte for byte."""
    frames = _column_frames(np.random.default_rng(11))

    def refuse(*_args):
        raise AssertionError("the % route was taken")

    monkeypatch.setattr(export, "_percent_text", refuse)
    _assert_written_as_reference(frames)


def test_rows_without_a_fixed_width_fall_back_to_percent(monkeypatch):
    """A negative value with a 3-digit exponent, an integer beyond 8 characters, a text value
    longer than 2, not ASCII or starting with NUL, or a string column sends that run of
    frames to the % route; the text stays the reference's."""
    rng = np.random.default_rng(12)
    cases = [("x", -1e-150), ("n", 100_000_000), ("n", -10_000_000), ("label", "abc"),
             ("label", "\u00e9"), ("label", "\x00a")]
    taken = []
    real = export._percent_text
    monkeypatch.setattr(export, "_percent_text",
                        lambda frames: taken.append(len(frames)) or real(frames))
    for column, value in cases:
        frames = _column_frames(rng, 6)
        for a in frames:  # a column wide enough for the value
            a.arrays["label"] = a.arrays["label"].astype("U3")
        taken.clear()
        _assert_written_as_reference(frames)
        assert taken == []  # as drawn, these frames take the fixed-width rows
        frames[3].arrays[column][1] = value
        _assert_written_as_reference(frames)
        assert taken == [6], (column, value)  # one batch, one layout: all its frames by %
    frames = _column_frames(rng, 4)
    frames[2].arrays["note"] = np.array(["x"] * len(frames[2]), dtype=object)  # '%s'
    taken.clear()
    _assert_written_as_reference(frames)
    assert taken == [1]  # only the frame of its own layout


def test_a_float_column_without_columns_has_no_field():
    a = ase.Atoms("Cu3", positions=np.eye(3), cell=np.eye(3) * 5, pbc=True)
    a.arrays["i"] = np.arange(3)
    a.arrays["f0"] = np.zeros((3, 0))
    a.arrays["b"] = np.ones(3, dtype=bool)
    b = a.copy()
    del b.arrays["b"]  # the empty float run last
    _assert_written_as_reference([a, b])


def test_int_text_is_pythons():
    values = np.concatenate([np.arange(-10_000, 10_000), 10 ** np.arange(8) - 1,
                             -(10 ** np.arange(7)) + 1, 10 ** np.arange(8), -(10 ** np.arange(7)),
                             np.random.default_rng(0).integers(-9_999_999, 99_999_999, 10_000)])
    text = export._int8_text(values)
    assert [bytes(row).decode() for row in text] == ["%8d" % v for v in values.tolist()]  # noqa: UP031
    for wide in (100_000_000, -10_000_000):
        assert export._int8_text(np.array([1, wide])) is None
