"""``lprviz lpr --reference-train``: runs on nested training sets become comparable.

LPR_NOTES §3: with the feature space fixed (scale, sparse-kernel active set), adding a
training structure adds a positive semi-definite term to ``X^T X``, so no LPR can drop.
Without the reference each run picks its own scale and active set from its training set,
and on this data some LPRs do drop: the comparison below detects it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest

from lprviz.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import write_valid  # noqa: E402

SMALL = ["bulk-pure"]
LARGE = ["bulk-pure", "bulk-alloy"]


pytestmark = pytest.mark.usefixtures("isolated_cache")


def _lpr_by_atom(path: Path) -> dict[str, np.ndarray]:
    """Frame name -> per-atom LPR of an output file."""
    return {a.info["name"]: a.arrays["lpr"] for a in ase.io.read(path, ":")}


def _lowest_ratio(tmp_path: Path, model: list[str], reference: list[str]) -> float:
    """min over shared test atoms of LPR(large training set) / LPR(small one)."""
    out = {}
    for label, groups in (("small", SMALL), ("large", LARGE)):
        out[label] = tmp_path / f"{label}.extxyz"
        argv = ["lpr", "--dataset", "emt-alloys", "--train-groups", ",".join(groups),
                "--preset", "fast", "--alpha", "1e-4", "-q", *model, *reference,
                "-o", str(out[label])]
        assert main(argv) == 0
    small, large = _lpr_by_atom(out["small"]), _lpr_by_atom(out["large"])
    shared = sorted(set(small) & set(large))
    assert len(shared) > 100  # every frame outside both training sets
    return min(float(np.min(large[name] / small[name])) for name in shared)


@pytest.mark.parametrize("model", [["--model", "linear"],
                                   ["--model", "sparse-kernel", "--n-sparse", "100"]],
                         ids=["linear", "sparse-kernel"])
def test_adding_training_structures_never_lowers_lpr_with_a_reference(tmp_path, model):
    reference = ["--reference-train-groups", ",".join(LARGE)]
    assert _lowest_ratio(tmp_path, model, reference) >= 1 - 1e-9
    # Without the reference the two runs live in different feature spaces: some atoms lose
    # rigidity by "adding" data (scale 0.79x for the linear model, active set 0.03x for the
    # sparse kernel on this data), which is exactly what the check above would flag.
    assert _lowest_ratio(tmp_path, model, []) < 0.95


def test_reference_file_fixes_the_feature_space(tmp_path):
    small = write_valid(tmp_path / "small.extxyz", 8, 1)
    extra = write_valid(tmp_path / "extra.extxyz", 8, 3)
    large = tmp_path / "large.extxyz"
    ase.io.write(large, ase.io.read(small, ":") + ase.io.read(extra, ":"), format="extxyz")
    test = write_valid(tmp_path / "test.extxyz", 4, 2, energies=False)
    soap = ["--cutoff", "3.5", "--max-radial", "2", "--max-angular", "1", "--alpha", "1e-3"]
    lpr, scale = {}, {}
    for train in (small, large):
        out = tmp_path / f"out-{train.stem}.extxyz"
        assert main(["lpr", "--train", str(train), "--test", str(test), *soap, "-q",
                     "--reference-train", str(large), "-o", str(out)]) == 0
        frames = ase.io.read(out, ":")
        lpr[train.stem] = np.concatenate([a.arrays["lpr"] for a in frames])
        scale[train.stem] = frames[0].info["lprviz_feature_scale"]
        assert frames[0].info["lprviz_scale_from"] == "reference"
        assert frames[0].info["lprviz_reference_n_frames"] == 16
    assert scale["small"] == pytest.approx(scale["large"], rel=1e-12)
    assert np.all(lpr["large"] >= lpr["small"] * (1 - 1e-9))
    assert np.any(lpr["large"] > lpr["small"] * 1.01)  # and the extra data do help


def test_reference_options_are_checked(tmp_path, capsys):
    train = write_valid(tmp_path / "train.extxyz", 4, 1)
    test = write_valid(tmp_path / "test.extxyz", 2, 2, energies=False)
    copper = tmp_path / "copper.extxyz"
    frames = ase.io.read(train, ":")
    for atoms in frames:
        atoms.numbers[:] = 29
    ase.io.write(copper, frames, format="extxyz")
    out = str(tmp_path / "out.extxyz")
    base = ["lpr", "--train", str(train), "--test", str(test), "-q", "-o", out]
    cases = [
        ([*base, "--reference-train", str(copper)], "has no Au atoms"),
        ([*base, "--reference-train", str(train), "--scale", "2"], "--scale"),
        ([*base, "--reference-train-groups", "bulk-pure"], "only with --dataset"),
        (["lpr", "--dataset", "emt-alloys", "--train-groups", "bulk-pure", "-q", "-o", out,
          "--reference-train-groups", "nope"], "nope"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lprviz: error:") and "\n" not in err and expected in err
    assert not Path(out).exists()


def test_nn_with_a_reference_groups_set_never_lowers_lpr(tmp_path):
    """--model nn with a reference: the network is trained once on the reference (here the
    larger set), so both runs share its last-layer features and scale, and adding training
    structures never lowers an LPR (what --reference-train promises for every model)."""
    from optional import require_torch

    require_torch()
    model = ["--model", "nn", "--nn-hidden", "8"]
    reference = ["--reference-train-groups", ",".join(LARGE)]
    assert _lowest_ratio(tmp_path, model, reference) >= 1 - 1e-9
    info = ase.io.read(tmp_path / "small.extxyz", 0).info
    assert info["lprviz_nn_trained_on"] == "reference"
    assert info["lprviz_scale_from"] == "reference"


def test_nn_reference_file_trains_the_network_there(tmp_path, capsys):
    from optional import require_torch

    require_torch()
    small = write_valid(tmp_path / "small.extxyz", 8, 1)
    large = tmp_path / "large.extxyz"
    ase.io.write(large, ase.io.read(small, ":") + ase.io.read(
        write_valid(tmp_path / "extra.extxyz", 8, 3), ":"), format="extxyz")
    test = write_valid(tmp_path / "test.extxyz", 4, 2, energies=False)
    soap = ["--cutoff", "3.5", "--max-radial", "2", "--max-angular", "1", "--alpha", "1e-3",
            "--model", "nn", "--nn-hidden", "6", "-q"]
    lpr, info = {}, {}
    for train, ref in ((small, []), (small, ["--reference-train", str(large)]),
                       (large, ["--reference-train", str(large)])):
        key = (train.stem, bool(ref))
        out = tmp_path / f"out-{train.stem}-{bool(ref)}.extxyz"
        assert main(["lpr", "--train", str(train), "--test", str(test), *soap, *ref,
                     "-o", str(out)]) == 0
        frames = ase.io.read(out, ":")
        lpr[key] = np.concatenate([a.arrays["lpr"] for a in frames])
        info[key] = frames[0].info
    assert info[("small", False)]["lprviz_nn_trained_on"] == "training"
    assert info[("small", True)]["lprviz_nn_trained_on"] == "reference"
    assert info[("small", True)]["lprviz_feature_scale"] == pytest.approx(
        info[("large", True)]["lprviz_feature_scale"], rel=1e-12)
    # trained on the reference = the large training set: that run is the plain nn run on it
    assert np.all(lpr[("large", True)] >= lpr[("small", True)] * (1 - 1e-9))
    assert not np.allclose(lpr[("small", True)], lpr[("small", False)], rtol=1e-3)
    # a reference without energies cannot train the network: one line
    unlabelled = write_valid(tmp_path / "unlabelled.extxyz", 4, 1, energies=False)
    assert main(["lpr", "--train", str(small), "--test", str(test), *soap,
                 "--reference-train", str(unlabelled), "-o", str(tmp_path / "x.extxyz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "needs energies" in err and "unlabelled.extxyz" in err
