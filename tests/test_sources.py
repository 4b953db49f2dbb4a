"""Tests of lprviz.sources: features from a per-atom array of the file (``--features-array``).

The LPR of array features must be scikit-matter's ``local_prediction_rigidity`` on the same
arrays (docs/science.md §7.1: same mean convention, alpha and sfactor scale), through the
library and through ``lprviz lpr``; bad arrays give one line naming the file and array.
"""

from __future__ import annotations

import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from skmatter.metrics import local_prediction_rigidity as skmatter_lpr

from lprviz import datasets, sources
from lprviz.cli import main
from lprviz.errors import InputError
from lprviz.pipeline import ModelSpec, evaluate, prepare
from lprviz.rigidity import RigiditySolver

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import valid_frames  # noqa: E402

WIDTH = 7


def _with_features(frames, seed: int, width: int = WIDTH):
    """Frames carrying a per-atom array ``feat``: a smooth function of the geometry plus
    noise (any numbers would do: the LPR only sees the array)."""
    rng = np.random.default_rng(seed)
    for atoms in frames:
        base = np.hstack([atoms.positions, atoms.numbers[:, None] / 79.0])
        mix = rng.normal(size=(base.shape[1], width))
        atoms.arrays["feat"] = np.tanh(base @ mix / 4) + 0.1 * rng.normal(size=(len(atoms),
                                                                               width))
    return frames


@pytest.fixture
def files(tmp_path):
    train, test = tmp_path / "train.extxyz", tmp_path / "test.extxyz"
    ase.io.write(train, _with_features(valid_frames(30, 1), 1))
    ase.io.write(test, _with_features(valid_frames(6, 2, energies=False), 2))
    return train, test


def _per_frame(path: Path) -> list[np.ndarray]:
    return [np.asarray(a.arrays["feat"], dtype=float) for a in ase.io.read(path, ":")]


@pytest.mark.parametrize("alpha", [1e-6, 1e-3, 1.0])
def test_array_lpr_equals_scikit_matter(files, alpha):
    train, test = files
    data = datasets.combine(datasets.load(train), datasets.load(test))
    desc = sources.descriptors_for(data, sources.FeatureSource("array", array="feat"))
    assert desc.values.shape == (data.n_atoms, WIDTH)
    assert desc.blocks == {} and desc.hypers is None
    assert desc.provenance == {"features": "array", "features_array": "feat"}
    is_train = (data.splits == "train")[desc.structure_index]
    ref, _ = skmatter_lpr(_per_frame(train), _per_frame(test), alpha=alpha)
    solver = RigiditySolver.from_atoms(desc.values[is_train], desc.structure_index[is_train])
    np.testing.assert_allclose(solver.lpr(desc.values[~is_train], alpha), np.concatenate(ref),
                               rtol=1e-8)
    # the pipeline (float32 projections: a relative 1e-5, DEVELOPING.md) on the same features
    fit = prepare(data, desc, data.splits == "train", ModelSpec(baseline=False))
    res = evaluate(fit, alpha)
    np.testing.assert_allclose(res.lpr[~is_train], np.concatenate(ref), rtol=1e-5)
    assert fit.hypers is None and res.features["features_array"] == "feat"


def test_cli_features_array_equals_scikit_matter(files, tmp_path):
    train, test = files
    out = tmp_path / "out.extxyz"
    assert main(["lpr", "--train", str(train), "--test", str(test), "--features-array", "feat",
                 "--alpha", "1e-4,1e-2", "--no-baseline", "-q", "-o", str(out)]) == 0
    frames = ase.io.read(out, ":")
    for i, alpha in enumerate((1e-4, 1e-2)):
        ref, _ = skmatter_lpr(_per_frame(train), _per_frame(test), alpha=alpha)
        got = np.concatenate([a.arrays[f"lpr_{i}"] for a in frames])
        np.testing.assert_allclose(got, np.concatenate(ref), rtol=1e-8)
    info = frames[0].info
    assert info["lprviz_features"] == "array" and info["lprviz_features_array"] == "feat"
    assert not any(k.startswith("lprviz_soap_") for k in info)
    # a reference file is read through the same source: the training file itself as the
    # reference fixes the scale the run would pick anyway
    ref_out = tmp_path / "ref.extxyz"
    assert main(["lpr", "--train", str(train), "--test", str(test), "--features-array", "feat",
                 "--alpha", "1e-4,1e-2", "--no-baseline", "-q", "--reference-train",
                 str(train), "-o", str(ref_out)]) == 0
    with_ref = ase.io.read(ref_out, ":")
    assert with_ref[0].info["lprviz_scale_from"] == "reference"
    np.testing.assert_allclose(np.concatenate([a.arrays["lpr"] for a in with_ref]),
                               np.concatenate([a.arrays["lpr"] for a in frames]), rtol=1e-10)
    # the baseline is part of the model: its LPR differs, but stays finite and positive
    out2 = tmp_path / "out2.extxyz"
    assert main(["lpr", "--train", str(train), "--test", str(test), "--features-array", "feat",
                 "-q", "-o", str(out2)]) == 0
    lpr = np.concatenate([a.arrays["lpr"] for a in ase.io.read(out2, ":")])
    assert np.all(np.isfinite(lpr)) and np.all(lpr > 0)


def _bad(tmp_path, change) -> Path:
    frames = _with_features(valid_frames(4, 3), 3)
    change(frames)
    path = tmp_path / "bad.extxyz"
    ase.io.write(path, frames)
    return path


def _drop(frames):
    del frames[2].arrays["feat"]


def _strings(frames):
    for a in frames:
        del a.arrays["feat"]
        a.arrays["feat"] = np.array(["x"] * len(a))


def _one_d(frames):
    for a in frames:
        a.arrays["feat"] = a.arrays["feat"][:, 0].copy()


def _nan(frames):
    frames[1].arrays["feat"][2, 3] = np.nan


def _huge(frames):
    frames[1].arrays["feat"][2, 3] = -1.5e150  # finite, but its square overflows


def _width(frames):
    frames[3].arrays["feat"] = np.ones((len(frames[3]), WIDTH + 2))


@pytest.mark.parametrize(("change", "needle"), [
    (_drop, "frame 2 ('bad.extxyz#2'): missing"),
    (_strings, "expected numbers"),
    (_one_d, "expected a 2D per-atom array of shape (4, d), got shape (4,)"),
    (_nan, "frame 1 ('bad.extxyz#1'): NaN or inf at atom 2"),
    (_huge, "frame 1 ('bad.extxyz#1'): a value of -1.5e+150 at atom 2, beyond 1e+100"),
    (_width, "frame 3 ('bad.extxyz#3'): 9 columns, but frame 0 has 7"),
], ids=["missing", "strings", "1d", "nan", "huge", "width"])
def test_bad_arrays_give_one_line_naming_file_and_array(tmp_path, capsys, change, needle):
    path = _bad(tmp_path, change)
    with pytest.raises(InputError) as info:
        sources.read_array(datasets.load(path), "feat")
    message = str(info.value)
    assert "\n" not in message and "bad.extxyz" in message and "'feat'" in message
    assert needle in message
    test = tmp_path / "test.extxyz"
    ase.io.write(test, _with_features(valid_frames(2, 4, energies=False), 4))
    code = main(["lpr", "--train", str(path), "--test", str(test), "--features-array", "feat",
                 "-q", "-o", str(tmp_path / "out.extxyz")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and needle in err
    assert not (tmp_path / "out.extxyz").exists()
    # the bad file as --test (lpr) or --pool (suggest): named by itself and its own frame
    # numbers, not as frames of the combined train+test set
    train = tmp_path / "train.extxyz"
    ase.io.write(train, _with_features(valid_frames(5, 5), 5))
    for argv in (["lpr", "--test", str(path), "-o", str(tmp_path / "out.extxyz")],
                 ["suggest", "--pool", str(path)]):
        code = main([*argv, "--train", str(train), "--features-array", "feat", "-q"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and needle in err, (argv[0], err)
        assert "lprviz: error: bad.extxyz: per-atom array 'feat'" in err


def test_large_but_allowed_features_give_the_same_lpr(files, tmp_path):
    """Features 1e45 times larger (within MAX_DESCRIPTOR_VALUE; their Gram entries ~1e90,
    the scaled baseline columns ~1e45) with a scale 1e45 times larger describe the same
    model: the same LPR, no error from the Gram or rows checks."""
    train, test = files
    big = {}
    for name, path in (("train", train), ("test", test)):
        frames = ase.io.read(path, ":")
        for a in frames:
            a.arrays["feat"] = a.arrays["feat"] * 1e45
        big[name] = tmp_path / f"big_{name}.extxyz"
        ase.io.write(big[name], frames)
    lprs = []
    for (tr, te), scale in (((train, test), "2.5"), ((big["train"], big["test"]), "2.5e45")):
        out = tmp_path / f"out_{scale}.extxyz"
        assert main(["lpr", "--train", str(tr), "--test", str(te), "--features-array", "feat",
                     "--scale", scale, "-q", "-o", str(out)]) == 0
        lprs.append(np.concatenate([a.arrays["lpr"] for a in ase.io.read(out, ":")]))
    assert np.all(np.isfinite(lprs[1])) and np.all(lprs[1] > 0)
    np.testing.assert_allclose(lprs[1], lprs[0], rtol=1e-6)


def test_cli_refuses_soap_options_and_lcpr_with_an_array(files, tmp_path, capsys):
    train, test = files
    base = ["lpr", "--train", str(train), "--test", str(test), "--features-array", "feat",
            "-q", "-o", str(tmp_path / "out.extxyz")]
    assert main([*base, "--cutoff", "4"]) == 2
    assert "--cutoff: a SOAP option" in capsys.readouterr().err
    assert main([*base, "--preset", "fast"]) == 2
    assert "--preset: a SOAP option" in capsys.readouterr().err
    assert main([*base, "--lcpr"]) == 2
    assert "needs SOAP features" in capsys.readouterr().err


def test_array_names_offer_numeric_per_atom_arrays_only(files):
    train, _ = files
    frames = ase.io.read(train, ":")
    for a in frames:
        a.arrays["label"] = np.array(["x"] * len(a))
        a.arrays["forces"] = np.zeros((len(a), 3))
        # the reference answer, an earlier run's outputs, a one-column array (ASE keeps it
        # 1-D, and read_array takes (n_atoms, d) only): none is offered
        a.arrays["true_local_energy"] = np.zeros(len(a))
        a.arrays["forces_pred"] = np.zeros((len(a), 3))
        a.arrays["lcpr_Cu_Cu"] = np.zeros(len(a))
        a.arrays["one_column"] = np.ones(len(a))
    assert sources.array_names(frames) == ["feat"]
    assert sources.array_names(frames[:1] + [valid_frames(1, 9)[0]]) == []


def test_source_keys_round_trip_and_bad_kinds():
    for key in ("default", "fast", "array:mace_desc"):
        assert sources.from_key(key).key == key
    assert sources.from_key("array:x").label == "per-atom array 'x'"
    assert sources.key_label("array:x") == "per-atom array 'x'"
    assert sources.key_label("fast") == "SOAP 'fast'"
    with pytest.raises(InputError, match="features: expected one of"):
        sources.FeatureSource("magic")
    with pytest.raises(InputError, match="features-array"):
        sources.FeatureSource("array")


def test_backbone_without_the_extra_is_one_line(monkeypatch, files, tmp_path, capsys):
    """Without ``lprviz.backbones`` (or its packages) a backbone is refused in one line
    saying how to add it; with a fake backbone module the source layer uses it."""
    train, test = files
    reason = sources.backbone_unavailable("chgnet")
    if reason is not None:
        assert "pip install 'lprviz[nn]'" in reason and "\n" not in reason
        code = main(["lpr", "--train", str(train), "--test", str(test), "--model", "chgnet",
                     "-q", "-o", str(tmp_path / "o.extxyz")])
        assert code == 2 and "lprviz[nn]" in capsys.readouterr().err

    class Fake:
        BACKBONES = ("chgnet", "sevenn")

        @staticmethod
        def unavailable(name):
            return None

        @staticmethod
        def last_layer_features(frames, name, *, batch_size=16, cache=True, progress=None,
                                names=None):
            assert len(names) == len(frames)
            return np.concatenate([np.asarray(a.arrays["feat"]) for a in frames])

        @staticmethod
        def model_version(name):
            return "0.0-fake"

    monkeypatch.setattr(sources, "_backbones", lambda: Fake)
    out = tmp_path / "fake.extxyz"
    assert main(["lpr", "--train", str(train), "--test", str(test), "--model", "sevenn",
                 "--alpha", "1e-3", "--no-baseline", "-q", "-o", str(out)]) == 0
    frames = ase.io.read(out, ":")
    ref, _ = skmatter_lpr(_per_frame(train), _per_frame(test), alpha=1e-3)
    np.testing.assert_allclose(np.concatenate([a.arrays["lpr"] for a in frames]),
                               np.concatenate(ref), rtol=1e-8)
    info = frames[0].info
    assert info["lprviz_features_model"] == "sevenn"
    assert info["lprviz_features_model_version"] == "0.0-fake"
    assert info["lprviz_model"] == "linear"
