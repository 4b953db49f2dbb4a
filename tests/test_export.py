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
