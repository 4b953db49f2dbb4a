"""Where the optional real DFT reference files are (a helper module of the tests).

Some tests check the whole pipeline on real data: the mlearn Si files of Zuo et al. 2020
(``Si_training.json``, ``Si_test.json``). They are not in the repository. The tests look in
``$LPRVIZ_MLEARN_DIR``, else in ``shared/data/mlearn_zuo2020`` beside the repository (where
this project's CI lays them); with neither they skip and say so. ``.ci/run`` sets
``LPRVIZ_REQUIRE_REFERENCE_DATA=1`` when the folder is there, so that a test that cannot find
files that are present fails instead of skipping. :func:`emt_subset` gives the tests' small
random subsets of the shipped EMT set with their SOAP.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MLEARN_DIR = Path(os.environ.get(
    "LPRVIZ_MLEARN_DIR", ROOT.parent / "shared" / "data" / "mlearn_zuo2020"))


def mlearn_dir() -> Path:
    """The folder with ``Si_training.json`` and ``Si_test.json``, or skip the test."""
    if (MLEARN_DIR / "Si_training.json").is_file() and (MLEARN_DIR / "Si_test.json").is_file():
        return MLEARN_DIR
    message = (f"mlearn Si reference files not found in {MLEARN_DIR} (set LPRVIZ_MLEARN_DIR, "
               "or run: lprviz datasets fetch mlearn-Si)")
    if os.environ.get("LPRVIZ_REQUIRE_REFERENCE_DATA") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def emt_subset(n_frames: int, n_train: int, hypers, *, seed: int):
    """``(data, descriptors, train_mask)``: ``n_frames`` random frames of the shipped
    emt-alloys set (every group), their SOAP with ``hypers`` (the full set's species) and
    ``n_train`` of them as the training set."""
    import numpy as np

    from lprviz import datasets
    from lprviz.features import compute_soap

    full = datasets.load("emt-alloys")
    rng = np.random.default_rng(seed)
    data = full.subset(np.sort(rng.choice(len(full.frames), size=n_frames, replace=False)))
    desc = compute_soap(data.frames, hypers, species=full.species, cache=False)
    train = np.zeros(len(data.frames), dtype=bool)
    train[rng.choice(len(data.frames), size=n_train, replace=False)] = True
    return data, desc, train
