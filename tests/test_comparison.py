"""Compare's per-structure gain/loss tables and two-model rank agreement (lprviz.comparison)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from lprviz.comparison import RATIO, gain_loss, percentile_ranks, rank_agreement, spearman
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


def test_spearman_explicit_small_case_and_scipy():
    # ranks a = 1 2 3 4 5, ranks b = 2 1 4 3 5: sum d^2 = 4, rho = 1 - 6*4/(5*24) = 0.8
    a = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    b = np.array([20.0, 10.0, 40.0, 30.0, 50.0])
    assert spearman(a, b) == pytest.approx(0.8, abs=1e-12)
    assert spearman(a, -b) == pytest.approx(-0.8, abs=1e-12)
    assert spearman(a, np.exp(a)) == pytest.approx(1.0)  # monotone map: identical order
    rng = np.random.default_rng(3)
    x = rng.lognormal(size=200)
    y = x * rng.lognormal(sigma=0.7, size=200)
    y[:10] = y[0]  # ties: average ranks, as scipy
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert np.isnan(spearman(x[:1], y[:1])) and np.isnan(spearman(np.ones(5), a))


def test_percentile_ranks_explicit():
    np.testing.assert_allclose(percentile_ranks([3.0, 1.0, 2.0]), [100.0, 0.0, 50.0])
    np.testing.assert_allclose(percentile_ranks([1.0, 1.0, 5.0]), [25.0, 25.0, 100.0])
    np.testing.assert_allclose(percentile_ranks([7.0]), [50.0])
    assert percentile_ranks(np.array([])).shape == (0,)


def test_rank_agreement_overall_and_per_group():
    rng = np.random.default_rng(4)
    groups = np.array(["bulk"] * 60 + ["surface"] * 40 + ["lone"])
    lpr_a = rng.lognormal(size=101)
    lpr_b = lpr_a.copy()
    lpr_b[60:100] = 1.0 / lpr_a[60:100]  # surface order reversed, bulk kept
    out = rank_agreement(lpr_a, 3.0 * lpr_b, groups)  # a scale factor changes no rank
    assert list(out.per_group["group"]) == ["bulk", "surface", "lone"]
    assert list(out.per_group["atoms"]) == [60, 40, 1]
    rho = out.per_group["spearman"].to_numpy()
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(-1.0) and np.isnan(rho[2])
    assert out.spearman == pytest.approx(stats.spearmanr(lpr_a, lpr_b).statistic, abs=1e-12)
    np.testing.assert_allclose(out.percentile_a, 100 * (stats.rankdata(lpr_a) - 1) / 100)
    diff = out.rank_difference
    assert np.all(diff[:60] == out.percentile_b[:60] - out.percentile_a[:60])
    assert np.abs(diff[60:100]).max() > 10  # reversed atoms moved in rank


def test_rank_agreement_ties_round_off_but_not_real_differences():
    groups = ["g"] * 4
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([5.0, 5.0 * (1 + 1e-7), 5.0 * (1 - 1e-7), 6.0])  # three round-off twins
    out = rank_agreement(a, b, groups)
    np.testing.assert_allclose(out.percentile_b, [100 / 3, 100 / 3, 100 / 3, 100.0])
    tied = np.array([5.0, 5.0, 5.0, 6.0])
    assert out.spearman == pytest.approx(stats.spearmanr(a, tied).statistic, abs=1e-12)
    exact = rank_agreement(a, b, groups, rtol=0.0)  # no tolerance: the twins are ordered
    assert exact.spearman == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    apart = rank_agreement(a, np.array([5.0, 5.01, 4.99, 6.0]), groups)  # 0.2%: real
    assert len(set(apart.percentile_b)) == 4


def test_rank_agreement_refuses_bad_input():
    with pytest.raises(InputError, match="one length"):
        rank_agreement(np.ones(3), np.ones(4), ["g"] * 3)
    with pytest.raises(InputError, match="NaN"):
        rank_agreement(np.array([1.0, np.nan]), np.ones(2), ["g", "g"])
