r"""Guided training-set improvement: which candidate structures raise a target's LPR most.

Adding one training structure A adds one row :math:`\mathbf{r}_A` (its scaled per-atom mean
descriptor, or sum under the "sum" convention) to :math:`\mathbf{X}`, so
:math:`\mathbf{A} = \mathbf{X}^\top\mathbf{X} + \alpha\mathbf{I}` gets the rank-1 update
:math:`\mathbf{A} + \mathbf{r}_A\mathbf{r}_A^\top` and, by Sherman–Morrison,

.. math::
    \frac{1}{\mathrm{LPR}'_k} = \frac{1}{\mathrm{LPR}_k}
      - \frac{(\mathbf{t}_k^\top\mathbf{A}^{-1}\mathbf{r}_A)^2}
             {1 + \mathbf{r}_A^\top\mathbf{A}^{-1}\mathbf{r}_A} .

With the solver's cached eigendecomposition :math:`\mathbf{X}^\top\mathbf{X} = V\,
\mathrm{diag}(e)\,V^\top`, target projections :math:`P = T V` and candidate projections
:math:`Q = R V`, every target-candidate cross term is one matrix product
:math:`M = P\,\mathrm{diag}(1/(e+\alpha))\,Q^\top` (cost :math:`O(n_t n_p d)`): the whole pool
is ranked without refitting. Greedy selection keeps :math:`M`, the target variances and the
candidate-candidate matrix :math:`K = Q\,\mathrm{diag}(1/(e+\alpha))\,Q^\top` and updates
them with the same rank-1 formula after each pick (cost :math:`O((n_t + n_p) n_p)` per pick).

The objective is the target's mean natural-log LPR (a geometric mean: a gain ``g`` multiplies
the geometric-mean LPR by ``exp(g)``). The descriptor scale is the solver's and stays fixed
(docs/science.md §3), so predicted gains equal those of
:meth:`lprviz.rigidity.RigiditySolver.with_structures`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lprviz.errors import InputError
from lprviz.rigidity import RigiditySolver

__all__ = [
    "Suggestion",
    "addition_curve",
    "lowest_lpr_atoms",
    "pool_rows",
    "random_additions",
    "suggest",
    "suggest_from_projections",
]

_EPS = np.finfo(np.float64).eps
_TINY = np.finfo(np.float64).tiny


@dataclass(frozen=True)
class Suggestion:
    """Greedy choice of structures to add to a training set.

    Attributes
    ----------
    chosen : numpy.ndarray of int of shape (k,)
        Pool indices in the order picked.
    gains : numpy.ndarray of shape (k,)
        Predicted increase of the target's mean ln LPR at each pick (over the previous pick).
    curve : numpy.ndarray of shape (k + 1,)
        Predicted target mean ln LPR after 0, 1, ..., k additions.
    first_gains : numpy.ndarray of shape (n_pool,)
        Gain of adding each candidate alone to the current training set (the step-1 ranking).
    alpha : float
        Regulariser the ranking was made at.
    """

    chosen: np.ndarray
    gains: np.ndarray
    curve: np.ndarray
    first_gains: np.ndarray
    alpha: float

    @property
    def ranking(self) -> np.ndarray:
        """Pool indices sorted by decreasing step-1 gain, shape (n_pool,)."""
        return np.argsort(-self.first_gains, kind="stable")


def pool_rows(solver: RigiditySolver, pool_structures) -> np.ndarray:
    """Raw structure rows of candidate structures in the solver's convention.

    Parameters
    ----------
    pool_structures : numpy.ndarray of shape (n_pool, d) or sequence of numpy.ndarray
        Either structure rows already (per-atom means, or sums for a "sum" solver), or one
        ``(n_atoms, d)`` array of raw atomic descriptors per candidate structure.

    Returns
    -------
    numpy.ndarray of shape (n_pool, d)
    """
    if isinstance(pool_structures, np.ndarray) and pool_structures.ndim == 2:
        rows = np.asarray(pool_structures, dtype=np.float64)
    else:
        rows_list = []
        for i, Xs in enumerate(pool_structures):
            Xs = np.asarray(Xs, dtype=np.float64)
            if Xs.ndim != 2 or Xs.shape[0] == 0:
                raise InputError(
                    f"pool structure {i}: expected a non-empty (n_atoms, n_features) array, "
                    f"got shape {Xs.shape}"
                )
            rows_list.append(Xs.mean(axis=0) if solver.convention == "mean" else Xs.sum(axis=0))
        if not rows_list:
            raise InputError("pool: expected at least one candidate structure, got none")
        rows = np.vstack(rows_list)
    if rows.shape[1] != solver.n_features:
        raise InputError(
            f"pool: expected {solver.n_features} features (as in training), got {rows.shape[1]}"
        )
    if not np.all(np.isfinite(rows)):
        raise InputError("pool: descriptors contain NaN or inf")
    return rows


class _State:
    """Sherman–Morrison bookkeeping for one target and one pool at one alpha."""

    def __init__(self, solver: RigiditySolver, P_target, Q_pool, alpha: float):
        P = np.asarray(P_target, dtype=np.float64)
        Q = np.asarray(Q_pool, dtype=np.float64)
        d = solver.n_features
        if P.ndim != 2 or P.shape[1] != d or P.shape[0] == 0:
            raise InputError(f"target: expected a non-empty (n_atoms, {d}) array, got {P.shape}")
        if Q.ndim != 2 or Q.shape[1] != d or Q.shape[0] == 0:
            raise InputError(f"pool: expected a non-empty (n_pool, {d}) array, got {Q.shape}")
        inv = solver.inverse_eigvals(alpha)
        PD = P * inv
        QD = Q * inv
        self.u = np.einsum("ij,ij->i", PD, P)  # target 1/LPR
        self.M = PD @ Q.T  # t_k^T A^-1 r_c, (n_t, n_pool)
        self.K = QD @ Q.T  # r_c^T A^-1 r_c', (n_pool, n_pool)

    def mean_log_lpr(self) -> float:
        return float(-np.mean(np.log(np.maximum(self.u, _TINY))))

    def gains(self) -> np.ndarray:
        """Mean ln-LPR gain of adding each candidate alone, (n_pool,)."""
        den = 1.0 + np.diag(self.K)
        # 1/LPR' = u (1 - M^2 / (u den)); log1p keeps small gains accurate.
        ratio = self.M**2 / (np.maximum(self.u, _TINY)[:, None] * den[None, :])
        return -np.mean(np.log1p(-np.minimum(ratio, 1.0 - _EPS)), axis=0)

    def add(self, c: int) -> None:
        """Add candidate ``c`` to the training set (rank-1 update of everything)."""
        den = 1.0 + self.K[c, c]
        m = self.M[:, c].copy()
        kc = self.K[c].copy()
        self.u = self.u - m**2 / den
        self.M -= np.outer(m, kc / den)
        self.K -= np.outer(kc, kc / den)


def suggest_from_projections(
    solver: RigiditySolver,
    P_target: np.ndarray,
    Q_pool: np.ndarray,
    alpha: float,
    k: int,
) -> Suggestion:
    """:func:`suggest` from cached projections (e.g. ``lprviz.pipeline.Fit.projections``).

    Parameters
    ----------
    solver : lprviz.rigidity.RigiditySolver
        The current training set.
    P_target : numpy.ndarray of shape (n_target, d)
        ``solver.projections`` of the target atoms.
    Q_pool : numpy.ndarray of shape (n_pool, d)
        ``solver.projections`` of the candidates' structure rows.
    alpha : float
        Regulariser (``>= 0``).
    k : int
        Number of structures to pick (capped at ``n_pool``).

    Returns
    -------
    Suggestion
    """
    state = _State(solver, P_target, Q_pool, alpha)
    n_pool = state.K.shape[0]
    k = int(k)
    if k < 1:
        raise InputError(f"k: expected a positive number of structures to add, got {k}")
    k = min(k, n_pool)
    available = np.ones(n_pool, dtype=bool)
    curve = [state.mean_log_lpr()]
    chosen, gains = [], []
    first = state.gains()
    g = first
    for step in range(k):
        if step:
            g = state.gains()
        c = int(np.argmax(np.where(available, g, -np.inf)))
        chosen.append(c)
        available[c] = False
        state.add(c)
        curve.append(state.mean_log_lpr())
        gains.append(curve[-1] - curve[-2])
    return Suggestion(
        chosen=np.asarray(chosen, dtype=np.int64),
        gains=np.asarray(gains),
        curve=np.asarray(curve),
        first_gains=first,
        alpha=float(alpha),
    )


def suggest(
    solver: RigiditySolver,
    X_target,
    pool_structures,
    alpha: float,
    k: int = 10,
) -> Suggestion:
    r"""Rank candidate structures by how much each raises the target's mean ln LPR; pick
    ``k`` greedily.

    .. math::
        \Delta_A = \frac{1}{n_t}\sum_{k\in\mathrm{target}}
          -\ln\Bigl(1 - \frac{(\mathbf{t}_k^\top\mathbf{A}^{-1}\mathbf{r}_A)^2}
          {\mathbf{t}_k^\top\mathbf{A}^{-1}\mathbf{t}_k\,
           (1 + \mathbf{r}_A^\top\mathbf{A}^{-1}\mathbf{r}_A)}\Bigr)

    Parameters
    ----------
    solver : lprviz.rigidity.RigiditySolver
        The current training set (its scale is kept).
    X_target : numpy.ndarray of shape (n_target, d)
        Raw descriptors of the target atoms.
    pool_structures : numpy.ndarray of shape (n_pool, d) or sequence of numpy.ndarray
        Candidates: structure rows, or one raw ``(n_atoms, d)`` array per structure
        (see :func:`pool_rows`).
    alpha : float
        Regulariser (``>= 0``).
    k : int
        Number of structures to pick (capped at ``n_pool``).

    Returns
    -------
    Suggestion
        Picks in order, predicted gain per pick, predicted curve, and step-1 gains of every
        candidate.
    """
    rows = pool_rows(solver, pool_structures)
    return suggest_from_projections(
        solver, solver.projections(X_target), solver.projections(rows), alpha, k
    )


def addition_curve(
    solver: RigiditySolver,
    P_target: np.ndarray,
    Q_pool: np.ndarray,
    order: Sequence[int],
    alpha: float,
) -> np.ndarray:
    """Target mean ln LPR as the candidates in ``order`` are added one by one.

    Parameters
    ----------
    solver : lprviz.rigidity.RigiditySolver
    P_target, Q_pool : numpy.ndarray
        Projections of target atoms and candidate rows (``solver.projections``).
    order : sequence of int
        Pool indices to add, in order.
    alpha : float

    Returns
    -------
    numpy.ndarray of shape (len(order) + 1,)
        Value before any addition, then after each.
    """
    state = _State(solver, P_target, Q_pool, alpha)
    out = [state.mean_log_lpr()]
    for c in order:
        state.add(int(c))
        out.append(state.mean_log_lpr())
    return np.asarray(out)


def random_additions(
    solver: RigiditySolver,
    P_target: np.ndarray,
    Q_pool: np.ndarray,
    alpha: float,
    k: int,
    *,
    n_seeds: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Target mean ln LPR vs number of *random* additions (the baseline for guided picks).

    Parameters
    ----------
    solver : lprviz.rigidity.RigiditySolver
    P_target, Q_pool : numpy.ndarray
        Projections of target atoms and candidate rows (``solver.projections``).
    alpha : float
    k : int
        Additions per draw (capped at ``n_pool``).
    n_seeds : int
        Number of random draws.
    seed : int
        Seed of the first draw.

    Returns
    -------
    numpy.ndarray of shape (n_seeds, k + 1)
        One curve per draw (without replacement from the pool).
    """
    n_pool = np.asarray(Q_pool).shape[0]
    k = min(int(k), n_pool)
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            addition_curve(solver, P_target, Q_pool, rng.choice(n_pool, k, replace=False), alpha)
            for _ in range(int(n_seeds))
        ]
    )


def lowest_lpr_atoms(lpr: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """Indices of the lowest-LPR ``fraction`` of atoms (at least one), lowest first.

    Parameters
    ----------
    lpr : numpy.ndarray of shape (n,)
    fraction : float
        In (0, 1].

    Returns
    -------
    numpy.ndarray of int
    """
    lpr = np.asarray(lpr, dtype=np.float64)
    if not 0 < fraction <= 1:
        raise InputError(f"target fraction: expected 0 < fraction <= 1, got {fraction}")
    n = max(1, int(round(fraction * lpr.size)))
    return np.argsort(lpr, kind="stable")[:n]
