"""Where the optional real DFT reference files are (a helper module of the tests).

Some tests check the whole pipeline on real data: the mlearn Si files of Zuo et al. 2020
(``Si_training.json``, ``Si_test.json``). They are not in the repository. The tests look in
``$LPRVIZ_MLEARN_DIR``, else in ``shared/data/mlearn_zuo2020`` beside the repository (where
this project's CI lays them); with neither they skip and say so. ``.ci/run`` sets
``LPRVIZ_REQUIRE_REFERENCE_DATA=1`` when the folder is there, so that a test that cannot find
files that are present fails instead of skipping.
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
