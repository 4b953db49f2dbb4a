"""lprviz.export: full-precision extxyz, per-atom CSV and chemiscope files round-trip."""

from __future__ import annotations

import gzip
import io
import json

import ase.io
import numpy as np
import pandas as pd
import pytest

from lprviz import datasets, export, features, pipeline, selection


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
