"""``lprviz lpr --forces``: force-trained LPR and predicted forces in the output."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest

# EMT frames (its EMT stores forces with the energy) and the autouse cache fixture
from test_cli_lpr import HYPERS, SOAP_ARGS, _emt_frames

from lprviz import datasets
from lprviz.cli import build_parser, main
from lprviz.features import compute_soap
from lprviz.forces import position_gradients
from lprviz.models import predict_forces
from lprviz.pipeline import DEFAULT_FORCE_WEIGHT, ModelSpec, prepare

pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture
def files(tmp_path):
    paths = (tmp_path / "train.extxyz", tmp_path / "test.extxyz")
    for path, frames in zip(paths, (_emt_frames(12, 1), _emt_frames(3, 2, energies=False)),
                            strict=True):
        ase.io.write(path, frames)
    return paths


@pytest.mark.parametrize("model", ["linear", "sparse-kernel"])
def test_forces_output_matches_library_and_raises_lpr(files, tmp_path, capsys, model):
    train, test = files
    argv = ["lpr", "--train", str(train), "--test", str(test), "--alpha", "1e-3",
            "--model", model, *(["--n-sparse", "40"] if model == "sparse-kernel" else []),
            "--scale", "2.0", *SOAP_ARGS, "-q"]
    plain, forced = tmp_path / "plain.extxyz", tmp_path / "forced.extxyz"
    assert main([*argv, "-o", str(plain)]) == 0
    assert main([*argv, "--forces", "--force-weight", "0.1", "-o", str(forced)]) == 0
    out0 = ase.io.read(plain, index=":")
    out1 = ase.io.read(forced, index=":")
    assert "forces_pred" not in out0[0].arrays
    assert out1[0].info["lprviz_force_weight"] == pytest.approx(0.1)
    lpr0 = np.concatenate([a.arrays["lpr"] for a in out0])
    lpr1 = np.concatenate([a.arrays["lpr"] for a in out1])
    assert np.all(lpr1 >= lpr0 * (1 - 1e-7)) and np.median(lpr1) > np.median(lpr0)
    # the same model built with the library
    tr = datasets.load(str(train))
    te = datasets.load(str(test))
    assert all("forces" in a.calc.results for a in tr.frames)
    desc = compute_soap(tr.frames, HYPERS, species=tr.species, cache=False)
    fit = prepare(tr, desc, np.ones(len(tr.frames), dtype=bool),
                  ModelSpec(kind=model, n_sparse=40), scale=2.0, force_weight=0.1,
                  project=False)
    d_test = compute_soap(te.frames, HYPERS, species=tr.species, cache=False)
    phi = fit.model_features(d_test.values, d_test.atom_numbers)
    np.testing.assert_allclose(lpr1, fit.solver.lpr(phi, 1e-3), rtol=1e-6)
    grads = np.concatenate([g for _, g in position_gradients(
        te.frames, HYPERS, species=tr.species, nystrom=fit.nystrom, cache=False)])
    expected = predict_forces(grads, fit.solver.solve(fit.xty, 1e-3), fit.scale)
    got = np.concatenate([a.arrays["forces_pred"] for a in out1])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8 * np.abs(expected).max())


def test_frames_without_forces_note_or_error(tmp_path, capsys):
    frames = _emt_frames(8, 3)
    for atoms in frames[:3]:  # energies only
        energy = atoms.get_potential_energy()
        atoms.calc = None
        atoms.info["energy"] = energy
    train = tmp_path / "mixed.extxyz"
    ase.io.write(train, frames)
    test = tmp_path / "test.extxyz"
    ase.io.write(test, _emt_frames(1, 4, energies=False))
    out = tmp_path / "out.extxyz"
    base = ["lpr", "--test", str(test), *SOAP_ARGS, "-q", "--forces", "-o", str(out)]
    assert main([*base, "--train", str(train)]) == 0
    err = capsys.readouterr().err
    assert "3 of 8 training frames have no forces" in err and "energies only" in err
    only = tmp_path / "noforces.extxyz"
    ase.io.write(only, frames[:3])
    assert main([*base, "--train", str(only)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no training frame has forces" in err and len(err.splitlines()) == 1


def test_bad_force_weight_and_help(files, tmp_path, capsys):
    train, test = files
    code = main(["lpr", "--train", str(train), "--test", str(test), "--forces",
                 "--force-weight", "-1", "-o", str(tmp_path / "o.extxyz")])
    assert code == 2
    assert "--force-weight" in capsys.readouterr().err
    code = main(["lpr", "--train", str(train), "--test", str(test), "--force-weight", "0.5",
                 "-o", str(tmp_path / "o.extxyz")])  # without --forces it would be ignored
    assert code == 2
    err = capsys.readouterr().err
    assert "--force-weight: only with --forces" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.extxyz").exists()
    # options of a model or mode not in use would be ignored without a word: refused
    for extra, message in ((["--forces", "--force-weight", "0"], "--force-weight 0: forces "
                            "would count for nothing"),
                           (["--n-sparse", "40"], "--n-sparse: only with --model sparse-kernel"),
                           (["--nn-seed", "3"], "--nn-seed: only with --model nn"),
                           (["--model", "sparse-kernel", "--nn-hidden", "8"],
                            "--nn-hidden: only with --model nn (the sparse-kernel model")):
        code = main(["lpr", "--train", str(train), "--test", str(test), *extra,
                     "-o", str(tmp_path / "o.extxyz")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.splitlines()) == 1, (extra, err)
    assert not (tmp_path / "o.extxyz").exists()
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["lpr"]
                         .format_help().split())
    assert "A^2/atom^2" in help_text and f"Default {DEFAULT_FORCE_WEIGHT:g}" in help_text


def test_csv_and_extxyz_exports_carry_predicted_forces(files):
    import io

    import pandas as pd

    from lprviz.export import annotated_frames, csv_bytes
    from lprviz.pipeline import evaluate

    train, _ = files
    tr = datasets.load(str(train))
    desc = compute_soap(tr.frames, HYPERS, species=tr.species, cache=False)
    mask = np.arange(len(tr.frames)) < 8
    res = evaluate(prepare(tr, desc, mask, force_weight=0.2), 1e-3)
    df = pd.read_csv(io.BytesIO(csv_bytes(tr, res)))
    np.testing.assert_allclose(df[["forces_pred_x", "forces_pred_y", "forces_pred_z"]],
                               res.forces_pred, rtol=1e-12)
    frames = annotated_frames(tr, res)
    np.testing.assert_array_equal(frames[3].arrays["forces_pred"],
                                  res.forces_pred[tr.atoms_of(3)])
    import gzip
    import json

    from lprviz.export import chemiscope_bytes

    props = json.loads(gzip.decompress(chemiscope_bytes(tr, res)))["properties"]
    np.testing.assert_allclose(props["forces_pred_z"]["values"], res.forces_pred[:, 2])
    # the reference forces pass through untouched
    np.testing.assert_array_equal(frames[3].calc.results["forces"], tr.frames[3].get_forces())
