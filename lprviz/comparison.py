"""Compare's bookkeeping: two training sets, or two models on one training set.

Bookkeeping only: the per-atom LPRs come from :func:`lprviz.pipeline.evaluate`.

* Two training sets A and B (B at A's feature scale): :func:`gain_loss` reduces the ratio
  B/A per structure and says which structures gained and which lost, or that none did.
* Two models a and b (feature source and readout) on the same training set and alpha: their
  LPRs have different units (each model has its own feature scale), so only their *order*
  is compared: :func:`rank_agreement` gives Spearman's rank correlation over all atoms and
  per group, and each atom's percentile rank under both models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from lprviz.errors import InputError

__all__ = ["GainLoss", "RankAgreement", "gain_loss", "percentile_ranks", "rank_agreement",
           "spearman"]

RATIO = "median ratio B/A"


@dataclass(frozen=True)
class GainLoss:
    """Structures that gained or lost most LPR from training set A to B.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per structure (all of them), largest median ratio first. Columns:
        ``structure``, ``group``, ``in A``, ``in B``, ``median ratio B/A``,
        ``min ratio B/A``, ``max ratio B/A``, ``min LPR A``, ``min LPR B``.
    gained, lost : pandas.DataFrame
        Up to ``k`` structures with an atom whose LPR rose (fell), most gained (lost) first;
        empty when there is none.
    gained_heading, lost_heading : str
        Headings to show above the two tables.
    gained_note, lost_note : str or None
        Shown *instead of* an empty table ("nothing lost ..."), else None.
    """

    table: pd.DataFrame
    gained: pd.DataFrame
    lost: pd.DataFrame
    gained_heading: str
    lost_heading: str
    gained_note: str | None
    lost_note: str | None


def gain_loss(
    names: Sequence[str],
    groups: Sequence[str],
    structure_index: np.ndarray,
    lpr_a: np.ndarray,
    lpr_b: np.ndarray,
    *,
    train_a: Sequence[int],
    train_b: Sequence[int],
    k: int = 10,
    rtol: float = 1e-6,
) -> GainLoss:
    """Per-structure LPR ratio B/A and the "gained most" / "lost most" tables.

    A structure counts as gained (lost) when one of its atoms' LPR rose (fell) by more
    than ``rtol``; tables are ranked by the median ratio of the structure's atoms. When no
    atom lost, :attr:`GainLoss.lost_note` says so instead of listing the smallest gains.

    Parameters
    ----------
    names, groups : sequences of str of length n_frames
    structure_index : numpy.ndarray of int of shape (n_atoms,)
    lpr_a, lpr_b : numpy.ndarray of shape (n_atoms,)
        LPR with training set A and with B (B at A's scale).
    train_a, train_b : sequences of int
        Training frame indices of A and B.
    k : int
        Rows per table.
    rtol : float
        Relative change below which an atom counts as unchanged (round-off).

    Returns
    -------
    GainLoss
    """
    sidx = np.asarray(structure_index, dtype=np.int64)
    lpr_a = np.asarray(lpr_a, dtype=float)
    lpr_b = np.asarray(lpr_b, dtype=float)
    n = len(names)
    if lpr_a.shape != sidx.shape or lpr_b.shape != sidx.shape:
        raise InputError(f"LPR of A and B: expected {sidx.size} atoms each, got "
                         f"{lpr_a.size} and {lpr_b.size}")
    ratio = pd.Series(lpr_b / lpr_a).groupby(sidx)
    frame = np.arange(n)
    table = pd.DataFrame({
        "structure": [str(x) for x in names], "group": [str(g) for g in groups],
        "in A": np.isin(frame, np.asarray(train_a, dtype=int)),
        "in B": np.isin(frame, np.asarray(train_b, dtype=int)),
        RATIO: ratio.median().reindex(frame).to_numpy(),
        "min ratio B/A": ratio.min().reindex(frame).to_numpy(),
        "max ratio B/A": ratio.max().reindex(frame).to_numpy(),
        "min LPR A": pd.Series(lpr_a).groupby(sidx).min().reindex(frame).to_numpy(),
        "min LPR B": pd.Series(lpr_b).groupby(sidx).min().reindex(frame).to_numpy(),
    }).sort_values(RATIO, ascending=False, kind="stable").reset_index(drop=True)
    gained = table[table["max ratio B/A"] > 1 + rtol].head(k).reset_index(drop=True)
    lost = (table[table["min ratio B/A"] < 1 - rtol].sort_values(RATIO, kind="stable")
            .head(k).reset_index(drop=True))
    a_in_b = set(int(i) for i in train_a) <= set(int(i) for i in train_b)
    b_in_a = set(int(i) for i in train_b) <= set(int(i) for i in train_a)
    lost_note = gained_note = None
    if lost.empty:
        lost_note = "Nothing lost: no atom's LPR is lower with B than with A" + (
            " (B contains A, and adding structures never lowers an LPR)." if a_in_b else ".")
    if gained.empty:
        gained_note = "Nothing gained: no atom's LPR is higher with B than with A" + (
            " (A contains B)." if b_in_a else ".")
    return GainLoss(
        table=table, gained=gained, lost=lost,
        gained_heading=f"Gained most (largest {RATIO} first)",
        lost_heading=f"Lost most (smallest {RATIO} first)",
        gained_note=gained_note, lost_note=lost_note,
    )


@dataclass(frozen=True)
class RankAgreement:
    """How alike two models order the same atoms by LPR.

    Attributes
    ----------
    spearman : float
        Spearman's rank correlation of LPR a and LPR b over all atoms (NaN when either is
        constant or there are fewer than 2 atoms).
    per_group : pandas.DataFrame
        One row per group (first-seen order): ``group``, ``atoms``, ``spearman`` (NaN for a
        group of one atom or with a constant LPR).
    percentile_a, percentile_b : numpy.ndarray of shape (n_atoms,)
        Each atom's percentile rank (0 = lowest LPR, 100 = highest) under model a and b.
    """

    spearman: float
    per_group: pd.DataFrame
    percentile_a: np.ndarray
    percentile_b: np.ndarray

    @property
    def rank_difference(self) -> np.ndarray:
        """``percentile_b - percentile_a`` per atom: > 0 where model b finds the atom
        relatively more rigid than model a does."""
        return self.percentile_b - self.percentile_a


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of ``a`` and ``b`` (ties get average ranks).

    Returns NaN, without a warning, for fewer than 2 values or a constant input (no order).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """Percentile rank of each value, :math:`100 (r - 1) / (n - 1)` with ``r`` its average
    rank (1 = smallest): 0 for the smallest, 100 for the largest, 50 for a single value.

    Parameters
    ----------
    values : numpy.ndarray of shape (n,)

    Returns
    -------
    numpy.ndarray of shape (n,), float
    """
    values = np.asarray(values, dtype=float)
    if values.size <= 1:
        return np.full(values.size, 50.0)
    return 100.0 * (stats.rankdata(values) - 1.0) / (values.size - 1)


def rank_agreement(lpr_a: np.ndarray, lpr_b: np.ndarray,
                   groups: Sequence[str] | np.ndarray, *, rtol: float = 1e-5) -> RankAgreement:
    """Rank agreement of two models' per-atom LPRs, overall and per group.

    LPRs within a relative ``rtol`` of each other count as tied: symmetry-equivalent atoms
    have equal LPRs, and round-off (the app's float32 features move an LPR by up to ~4e-6)
    must not order them at random, which would move Spearman's coefficient.

    Parameters
    ----------
    lpr_a, lpr_b : numpy.ndarray of shape (n_atoms,)
        LPR of the same atoms under model a and model b (any positive scale each: only the
        order matters).
    groups : sequence of str of length n_atoms
        Group of each atom (its structure's group).
    rtol : float
        Relative difference below which two LPRs tie (0: exact ties only).

    Returns
    -------
    RankAgreement

    Raises
    ------
    InputError
        Arrays of different lengths, or NaN in an LPR.
    """
    lpr_a = np.asarray(lpr_a, dtype=float)
    lpr_b = np.asarray(lpr_b, dtype=float)
    groups = np.asarray(groups).astype(str)
    if not (lpr_a.shape == lpr_b.shape == groups.shape) or lpr_a.ndim != 1:
        raise InputError(f"rank agreement: expected LPR a, LPR b and groups of one length, got "
                         f"{lpr_a.shape}, {lpr_b.shape} and {groups.shape}")
    if np.isnan(lpr_a).any() or np.isnan(lpr_b).any():
        raise InputError("rank agreement: an LPR is NaN")
    lpr_a, lpr_b = _tie_within(lpr_a, rtol), _tie_within(lpr_b, rtol)
    names, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    rows = []
    for g in np.argsort(first, kind="stable"):  # first-seen order
        atoms = inverse == g
        rows.append({"group": str(names[g]), "atoms": int(atoms.sum()),
                     "spearman": spearman(lpr_a[atoms], lpr_b[atoms])})
    return RankAgreement(
        spearman=spearman(lpr_a, lpr_b),
        per_group=pd.DataFrame(rows, columns=["group", "atoms", "spearman"]),
        percentile_a=percentile_ranks(lpr_a), percentile_b=percentile_ranks(lpr_b))


def _tie_within(values: np.ndarray, rtol: float) -> np.ndarray:
    """``values`` with each run of sorted neighbours closer than ``rtol`` (relative) set to
    the run's first value, so ranking treats the run as a tie."""
    if rtol <= 0 or values.size < 2:
        return values
    order = np.argsort(values, kind="stable")
    v = values[order]
    new_run = np.empty(v.size, dtype=bool)
    new_run[0] = True
    new_run[1:] = np.diff(v) > rtol * np.abs(v[1:])
    out = np.empty_like(values)
    out[order] = v[np.flatnonzero(new_run)[np.cumsum(new_run) - 1]]
    return out
