"""Compare's per-structure gain/loss tables (lprviz.comparison)."""

from __future__ import annotations

import numpy as np
import pytest

from lprviz.comparison import RATIO, gain_loss
from lprviz.errors import InputError
from lprviz.rigidity import RigiditySolver

NAMES = ["s0", "s1", "s2", "s3"]
GROUPS = ["bulk", "bulk", "surface", "surface"]
SIDX = np.array([0, 0, 1, 1, 2, 3, 3])


def test_gains_and_losses_ranked_by_median_ratio():
    lpr_a = np.ones(7)
    lpr_b = np.array([2.0, 4.0, 0.5, 0.5, 1.0, 0.25, 8.0])
    out = gain_loss(NAMES, GROUPS, SIDX, lpr_a, lpr_b, train_a=[0], train_b=[1], k=10)
    # medians: s0 3, s1 0.5, s2 1, s3 4.125
    assert list(out.table["structure"]) == ["s3", "s0", "s2", "s1"]
    assert out.table.loc[0, RATIO] == pytest.approx(4.125)
    # s2 did not change at all: in neither table; s3 both gained and lost atoms
    assert list(out.gained["structure"]) == ["s3", "s0"]
    assert list(out.lost["structure"]) == ["s1", "s3"]
    assert out.lost_note is None and out.gained_note is None
    assert "Gained" in out.gained_heading and "Lost" in out.lost_heading
    assert list(out.table["in A"]) == [False, True, False, False]  # sorted rows: s0 second


def test_nothing_lost_is_said_not_listed():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 4))
    sidx = np.arange(10) // 2
    a = RigiditySolver.from_atoms(X[:4], sidx[:4])
    b = RigiditySolver.from_atoms(X, sidx, scale=a.scale)  # B = A + more structures
    lpr_a, lpr_b = a.lpr(X, 1e-3), b.lpr(X, 1e-3)
    out = gain_loss([f"s{i}" for i in range(5)], ["g"] * 5, sidx, lpr_a, lpr_b,
                    train_a=[0, 1], train_b=range(5))
    assert out.lost.empty
    assert out.lost_note is not None and "Nothing lost" in out.lost_note
    assert "B contains A" in out.lost_note
    assert not out.gained.empty and out.gained_note is None
    # swapped: nothing gained, and A contains B
    back = gain_loss([f"s{i}" for i in range(5)], ["g"] * 5, sidx, lpr_b, lpr_a,
                     train_a=range(5), train_b=[0, 1])
    assert back.gained.empty and "A contains B" in back.gained_note


def test_k_limits_rows_and_shapes_are_checked():
    lpr_b = np.array([2.0, 2.0, 3.0, 3.0, 4.0, 5.0, 5.0])
    out = gain_loss(NAMES, GROUPS, SIDX, np.ones(7), lpr_b, train_a=[], train_b=[0], k=2)
    assert len(out.gained) == 2 and list(out.gained["structure"]) == ["s3", "s2"]
    assert "B contains A" in out.lost_note  # the empty set is in every set
    with pytest.raises(InputError, match="LPR of A and B"):
        gain_loss(NAMES, GROUPS, SIDX, np.ones(6), lpr_b, train_a=[], train_b=[])
