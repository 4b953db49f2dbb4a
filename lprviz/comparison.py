"""Two training sets A and B compared structure by structure (the Compare page's tables).

Bookkeeping only: the per-atom LPR of each set comes from :func:`lprviz.pipeline.evaluate`
(B at A's feature scale); this module reduces the ratio B/A per structure and says which
structures gained and which lost, or that none did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lprviz.errors import InputError

__all__ = ["GainLoss", "gain_loss"]

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
