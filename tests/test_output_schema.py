"""One output schema: the CLI and the app's export write the same names, and three independent
extxyz readers (ASE, the ``extxyz`` package's C and Python parsers, chemfiles) read them back."""

from __future__ import annotations

import gzip
import io
import json
import re
import sys
from pathlib import Path

import ase.io
import chemfiles
import extxyz
import numpy as np
import pandas as pd
import pytest

from lprviz import datasets, export, features, pipeline
from lprviz.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import write_valid  # noqa: E402

TRAIN_GROUPS = ["bulk-pure", "bulk-alloy"]
ALPHAS = [1e-4, 1e-2, 1.0]
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# What every reader reports besides our names (positions, species, the reference energy...).
FORMAT_KEYS = {"pos", "species", "positions", "numbers", "Lattice", "Properties", "pbc",
               "energy", "forces"}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """The CLI's multi-alpha output and the app's export of the same training set."""
    d = tmp_path_factory.mktemp("schema")
    cli_out = d / "cli.extxyz"
    argv = ["lpr", "--dataset", "emt-alloys", "--train-groups", ",".join(TRAIN_GROUPS),
            "--alpha", ",".join(map(str, ALPHAS)), "--preset", "fast", "-q", "-o", str(cli_out)]
    assert main(argv) == 0
    # as the app does (lprviz/app/common.py fit/results, pages/export.py)
    ds = datasets.load("emt-alloys")
    desc = features.compute_soap(ds.frames, features.SOAP_PRESETS["fast"], species=ds.species)
    fit = pipeline.prepare(ds, desc, np.isin(ds.groups, TRAIN_GROUPS), pipeline.ModelSpec())
    res = pipeline.evaluate(fit, ALPHAS[0])
    app_out = d / "app.extxyz"
    app_out.write_bytes(export.extxyz_bytes(ds, res))
    return {"cli": cli_out, "app": app_out, "ds": ds, "res": res, "fit": fit}


def _read(path: Path, reader: str) -> list[tuple[dict, dict]]:
    """(info, per-atom arrays) of every frame as ``reader`` gives them."""
    if reader == "ase":
        return [(dict(a.info), dict(a.arrays)) for a in ase.io.read(path, ":", format="extxyz")]
    if reader.startswith("extxyz"):
        frames = extxyz.read_dicts(str(path), use_cextxyz=reader == "extxyz-c")
        return [(dict(f.info), dict(f.arrays)) for f in frames]
    out = []
    with chemfiles.Trajectory(str(path), "r", format="XYZ") as trajectory:
        for _ in range(trajectory.nsteps):
            frame = trajectory.read()
            info = {k: frame[k] for k in frame.list_properties()}
            names = frame.atoms[0].list_properties()
            out.append((info, {k: np.array([atom[k] for atom in frame.atoms]) for k in names}))
    return out


READERS = ["ase", "extxyz-c", "extxyz-python", "chemfiles"]


@pytest.fixture(scope="module")
def read_back(outputs):
    return {(who, reader): _read(outputs[who], reader)
            for who in ("cli", "app") for reader in READERS}


def _column(frames, name) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[name], dtype=float) for _, arrays in frames])


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_gets_the_cli_arrays_and_info(outputs, read_back, reader):
    ds, res = outputs["ds"], outputs["res"]
    frames = read_back["cli", reader]
    test = ~np.isin(ds.groups, TRAIN_GROUPS)
    assert len(frames) == test.sum()
    atoms = test[ds.structure_index]
    # The CLI streams float64 features; the app's Fit holds float32 projections: LPR to a
    # relative 1e-5, local energies to ~1e-6 eV (pipeline.Fit)
    np.testing.assert_allclose(_column(frames, "lpr"), res.lpr[atoms], rtol=1e-5)
    np.testing.assert_allclose(_column(frames, "local_energy"), res.local_energy[atoms],
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(10 ** _column(frames, "log10_lpr"), res.lpr[atoms], rtol=1e-5)
    fit = outputs["fit"]
    for i, alpha in enumerate(ALPHAS):
        np.testing.assert_allclose(_column(frames, f"lpr_{i}"),
                                   pipeline.evaluate(fit, alpha).lpr[atoms], rtol=1e-5)
        assert not _column(frames, f"undetermined_{i}").any()
    info = frames[0][0]
    # chemfiles gives every header value as text; the others parse numbers and T/F
    alphas = info["alphas"]
    alphas = [float(a) for a in alphas.split()] if isinstance(alphas, str) else alphas
    np.testing.assert_allclose(alphas, ALPHAS, rtol=1e-12)
    first = np.flatnonzero(test)[0]
    assert float(info["energy_pred"]) == pytest.approx(res.energy_pred[first], abs=1e-5)
    assert float(info["pr"]) == pytest.approx(res.pr[first], rel=1e-9)
    assert float(info["lprviz_feature_scale"]) == pytest.approx(fit.scale, rel=1e-12)
    assert int(info["lprviz_n_train_frames"]) == np.isin(ds.groups, TRAIN_GROUPS).sum()
    assert str(info["in_training"]) in ("False", "F")
    assert str(info["lprviz_model"]) == "linear"
    assert str(info["lprviz_train_groups"]) == "bulk-alloy:40 bulk-pure:60"


@pytest.mark.parametrize("reader", READERS)
def test_app_export_reads_back_with_the_same_names(outputs, read_back, reader):
    """Same names as the CLI's except the per-alpha ones (the app exports one alpha), same
    values on the test frames (the app writes every frame, flagged ``in_training``)."""
    ds = outputs["ds"]
    app, cli = read_back["app", reader], read_back["cli", reader]
    assert len(app) == len(ds.frames)
    in_training = [str(info["in_training"]) in ("True", "T") for info, _ in app]
    assert in_training == np.isin(ds.groups, TRAIN_GROUPS).tolist()
    indexed = re.compile(r"(lpr|undetermined|pr)_\d+\Z")
    assert set(app[0][1]) == {k for k in cli[0][1] if not indexed.match(k)}
    assert set(app[0][0]) == {k for k in cli[0][0] if not indexed.match(k)}
    test_frames = [f for f, flag in zip(app, in_training, strict=True) if not flag]
    # the app's Fit holds float32 projections (pipeline.Fit): LPR to a relative 1e-5, local
    # energies to ~1e-6 eV; log10 LPR, data share and flags as close
    for name, rtol, atol in (("lpr", 1e-5, 0), ("log10_lpr", 0, 1e-5),
                             ("local_energy", 1e-6, 1e-6), ("undetermined", 0, 0),
                             ("data_share", 0, 1e-5), ("true_local_energy", 1e-12, 1e-12)):
        np.testing.assert_allclose(_column(test_frames, name), _column(cli, name),
                                   rtol=rtol, atol=atol, err_msg=name)
    for (app_info, _), (cli_info, _) in zip(test_frames, cli, strict=True):
        for key, tol in (("energy_pred", 1e-5), ("pr", 1e-9), ("alpha", 1e-12),
                         ("lprviz_feature_scale", 1e-12)):
            assert float(app_info[key]) == pytest.approx(float(cli_info[key]), rel=tol,
                                                         abs=tol), key


def test_names_are_identifiers_and_values_plain(read_back):
    for who in ("cli", "app"):
        info, arrays = read_back[who, "ase"][0]
        for name in [*info, *arrays]:
            assert IDENTIFIER.match(name), name
        for key, value in info.items():
            assert isinstance(value, (bool, int, float, str, np.number, np.ndarray)), key
            if isinstance(value, str):
                assert value and not re.search(r"[\"',=\\]", value), (key, value)
        provenance = {k for k in info if k.startswith("lprviz_")}
        assert {"lprviz_version", "lprviz_model", "lprviz_baseline", "lprviz_soap_cutoff",
                "lprviz_soap_max_radial", "lprviz_soap_max_angular", "lprviz_feature_scale",
                "lprviz_n_train_frames", "lprviz_train_groups"} <= provenance


def test_csv_and_chemiscope_use_the_schema_names(outputs, read_back):
    ds, res = outputs["ds"], outputs["res"]
    info, arrays = read_back["app", "ase"][0]
    # every per-atom array lprviz added to the extxyz (not the dataset's own) is a CSV column
    schema_atoms = set(arrays) - FORMAT_KEYS - set(ds.frames[0].arrays)
    assert {"lpr", "log10_lpr", "undetermined", "local_energy"} <= schema_atoms
    schema_frames = {"energy_pred", "pr", "in_training"}
    table = pd.read_csv(io.BytesIO(export.csv_bytes(ds, res)))
    assert schema_atoms | schema_frames <= set(table.columns)
    np.testing.assert_allclose(table["lpr"], res.lpr, rtol=1e-12)
    np.testing.assert_allclose(table["energy_pred"], res.energy_pred[ds.structure_index],
                               rtol=1e-12)
    data = json.loads(gzip.decompress(export.chemiscope_bytes(ds, res)))
    props = data["properties"]
    assert {"lpr", "log10_lpr", "local_energy", "undetermined"} <= set(props)
    assert schema_frames <= set(props)
    assert props["lpr"]["target"] == "atom"
    np.testing.assert_allclose(props["lpr"]["values"], res.lpr, rtol=1e-12)
    assert props["pr"]["target"] == "structure" and len(props["pr"]["values"]) == len(ds.frames)
    assert data["settings"]["structure"][0]["color"]["property"] == "log10_lpr"
    assert "lprviz_feature_scale=" in data["meta"]["description"]
    assert len(data["structures"]) == len(ds.frames)


def test_rerun_on_own_output_replaces_every_old_name(tmp_path):
    """A test file that is an earlier lprviz output (3 alphas) gets 2 fresh alphas: no stale
    ``lpr_2`` or old-style entries survive."""
    train = write_valid(tmp_path / "train.extxyz", 8, 1)
    test = write_valid(tmp_path / "test.extxyz", 3, 2, energies=False)
    soap = ["--cutoff", "3.5", "--max-radial", "2", "--max-angular", "1", "-q"]
    first, second = tmp_path / "first.extxyz", tmp_path / "second.extxyz"
    assert main(["lpr", "--train", str(train), "--test", str(test), "--alpha", "1e-4,1e-3,1e-2",
                 *soap, "-o", str(first)]) == 0
    old = ase.io.read(first, ":")
    for atoms in old:  # and names of older lprviz versions
        atoms.info["lpr_pr"] = 1.0
        atoms.arrays["lpr_undetermined"] = np.zeros(len(atoms), dtype=bool)
    ase.io.write(first, old, format="extxyz")
    assert main(["lpr", "--train", str(train), "--test", str(first), "--alpha", "1e-3,1e-1",
                 *soap, "-o", str(second)]) == 0
    for atoms in ase.io.read(second, ":"):
        assert {"lpr_0", "lpr_1"} <= set(atoms.arrays)
        assert not {"lpr_2", "undetermined_2", "lpr_undetermined"} & set(atoms.arrays)
        assert "pr_2" not in atoms.info and "lpr_pr" not in atoms.info
        np.testing.assert_allclose(atoms.info["alphas"], [1e-3, 1e-1])
        np.testing.assert_allclose(atoms.arrays["lpr"], atoms.arrays["lpr_0"], rtol=1e-12)


def test_plain_text_and_names_are_enforced(outputs):
    assert export.plain_text('a "b",c=d\\e\n') == "a _b__c_d_e"
    assert export.plain_text("") == "none"
    assert export.group_summary(["b b", "a", "b b"]) == "a:1 b_b:2"
    with pytest.raises(ValueError, match="lpr alpha"):
        export.annotated_frames(outputs["ds"], outputs["res"],
                                atom_arrays={"lpr alpha": outputs["res"].lpr})
