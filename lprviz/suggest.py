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

A force-trained fit (docs/science.md §12) gives each candidate structure :math:`1 + 3N_A`
rows: its energy row and its :math:`\sqrt{\lambda_F}`-weighted force rows, a block
:math:`\mathbf{B}_A`. The rank-1 update becomes the Woodbury block update

.. math::
    \frac{1}{\mathrm{LPR}'_k} = \frac{1}{\mathrm{LPR}_k}
      - \mathbf{m}_k^\top(\mathbf{I} + \mathbf{B}_A\mathbf{A}^{-1}\mathbf{B}_A^\top)^{-1}
        \mathbf{m}_k, \qquad \mathbf{m}_k = \mathbf{B}_A\mathbf{A}^{-1}\mathbf{t}_k ,

with a :math:`(1 + 3N_A)`-square solve per candidate (:func:`force_pool` builds the blocks;
every ranking function accepts them in place of ``Q_pool``). Greedy picks update the
cross terms and the inverse block by block.

The objective is the target's mean natural-log LPR (a geometric mean: a gain ``g`` multiplies
the geometric-mean LPR by ``exp(g)``). The descriptor scale is the solver's and stays fixed
(docs/science.md §3), so predicted gains equal those of
:meth:`lprviz.rigidity.RigiditySolver.with_structures`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from lprviz.errors import InputError
from lprviz.rigidity import RigiditySolver, _one_thread

__all__ = [
    "PoolBlocks",
    "Suggestion",
    "addition_curve",
    "force_pool",
    "lowest_lpr_atoms",
    "pool_rows",
    "random_additions",
    "suggest",
    "suggest_from_projections",
]

_EPS = np.finfo(np.float64).eps
_TINY = np.finfo(np.float64).tiny
# Atoms of candidate force rows projected per product in force_pool (3 rows each).
_POOL_CHUNK_ATOMS = 2048


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
    solver : RigiditySolver
        The training set's solver: its ``convention`` (per-atom mean or sum) makes the rows.
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

    @property
    def n_pool(self) -> int:
        return self.K.shape[0]

    def copy(self) -> _State:
        new = copy.copy(self)
        new.u, new.M, new.K = self.u.copy(), self.M.copy(), self.K.copy()
        return new


@dataclass(frozen=True)
class PoolBlocks:
    """Every candidate's data rows (energy row, force rows) in the solver's eigenbasis.

    Attributes
    ----------
    rows : numpy.ndarray of shape (n_rows, d)
        ``solver.projections`` of the rows, candidate after candidate: the energy row, then
        its ``3 n_atoms`` force rows times :math:`\\sqrt{\\lambda_F}` (none for a candidate
        without forces).
    starts : numpy.ndarray of int of shape (n_pool + 1,)
        Candidate ``c`` owns ``rows[starts[c]:starts[c + 1]]``.
    notice : str or None
        One line naming the candidates ranked by their energy row only, else None.
    """

    rows: np.ndarray
    starts: np.ndarray
    notice: str | None = None

    @property
    def n_pool(self) -> int:
        """Number of candidates."""
        return len(self.starts) - 1


def force_pool(fit, dataset, pool: Sequence[int], *, dtype=np.float64) -> PoolBlocks:
    r"""The :math:`1 + 3N` data rows each candidate frame adds to a force-trained fit.

    Parameters
    ----------
    fit : lprviz.pipeline.Fit
        A force-trained fit (``force_weight`` set, prepared with ``project=True``) of
        ``dataset``.
    dataset : lprviz.datasets.Dataset
        The dataset ``fit`` was prepared on (frame offsets and names).
    pool : sequence of int
        Candidate frame indices.
    dtype : numpy.float64 or numpy.float32
        Storage of the projected rows (float32 halves the memory; gains then agree with
        float64 to about 1e-6 relative, as the float32 atom projections of a fit).

    Returns
    -------
    PoolBlocks
        Energy row (``fit.structure_projections``) and :math:`\sqrt{\lambda_F}` times the
        projected force rows :math:`-\sum_k\partial\phi_k/\partial r / s` (zero in the
        baseline columns) of each candidate; candidates without reference forces keep the
        energy row only (``notice`` says so).

    Raises
    ------
    InputError
        The fit is not force-trained, has no kept gradients, or a pool index is out of range.
    """
    if fit.force_weight is None or fit.force_gradients is None:
        raise InputError("force pool: expected a force-trained fit prepared with its "
                         "projections (prepare(..., force_weight=..., project=True))")
    pool = np.asarray(pool, dtype=np.int64).reshape(-1)
    n_frames = len(fit.train_mask)
    if pool.size == 0 or pool.min() < 0 or pool.max() >= n_frames:
        raise InputError(f"pool: expected frame indices in [0, {n_frames}), got "
                         f"{pool.size} indices" + (f" from {pool.min()} to {pool.max()}"
                                                   if pool.size else ""))
    starts_atoms = np.asarray(dataset.frame_starts)
    sizes = np.asarray(dataset.frame_sizes)
    known = np.isfinite(fit.forces).all(axis=1)
    with_forces = np.array([bool(known[starts_atoms[i]:starts_atoms[i] + sizes[i]].all())
                            for i in pool])
    counts = 1 + 3 * sizes[pool] * with_forces
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    d, d_base = fit.solver.n_features, fit.force_gradients.shape[2]
    rows = np.empty((int(starts[-1]), d), dtype=dtype)
    rows[starts[:-1]] = fit.structure_projections[pool]
    # Baseline columns have zero gradient: only the first d_base rows of V enter.
    V = fit.solver.eigvecs[:d_base] * (np.sqrt(fit.force_weight) / fit.solver.scale)
    # All force rows in a few big products (one per chunk of atoms), not one per candidate.
    forced = np.flatnonzero(with_forces)
    atoms = np.concatenate([np.arange(starts_atoms[pool[c]], starts_atoms[pool[c]] + sizes[pool[c]])
                            for c in forced] or [np.zeros(0, dtype=np.int64)])
    dest = np.concatenate([np.arange(starts[c] + 1, starts[c + 1]) for c in forced]
                          or [np.zeros(0, dtype=np.int64)])
    for lo in range(0, atoms.size, _POOL_CHUNK_ATOMS):
        g = np.asarray(fit.force_gradients[atoms[lo : lo + _POOL_CHUNK_ATOMS]], dtype=np.float64)
        rows[dest[3 * lo : 3 * lo + 3 * len(g)]] = g.reshape(-1, d_base) @ V
    notice = None
    if not with_forces.all():
        first = dataset.names[int(pool[np.flatnonzero(~with_forces)[0]])]
        notice = (f"{int((~with_forces).sum())} of {pool.size} candidates have no forces "
                  f"(first: '{first}'); they are ranked by their energy row only")
    return PoolBlocks(rows=rows, starts=starts, notice=notice)


class _BlockState:
    """Woodbury bookkeeping when each candidate adds a block of rows (:class:`PoolBlocks`).

    Keeps the target variances ``u``, the cross terms ``MT = Q A^-1 P^T`` (n_rows, n_t; a
    candidate's rows are contiguous), each candidate's ``S_c = I + B_c A^-1 B_c^T`` and, once
    a candidate is added, ``A^-1`` itself (d x d, in the eigenbasis), all updated block by
    block. ``S`` is stacked per block size, so an addition updates each size in one batched
    product instead of a Python loop over candidates.
    """

    def __init__(self, solver: RigiditySolver, P_target, blocks: PoolBlocks, alpha: float):
        P = np.asarray(P_target, dtype=np.float64)
        d = solver.n_features
        if P.ndim != 2 or P.shape[1] != d or P.shape[0] == 0:
            raise InputError(f"target: expected a non-empty (n_atoms, {d}) array, got {P.shape}")
        if blocks.rows.ndim != 2 or blocks.rows.shape[1] != d or blocks.n_pool < 1:
            raise InputError(f"pool: expected blocks of {d}-wide rows, got "
                             f"{blocks.rows.shape} in {blocks.n_pool} candidates")
        self.Q = blocks.rows
        self.starts = np.asarray(blocks.starts, dtype=np.int64)
        self.inv = solver.inverse_eigvals(alpha)
        self.Ainv: np.ndarray | None = None  # dense only after the first addition
        PD = P * self.inv
        self.u = np.einsum("ij,ij->i", PD, P)
        self.MT = self.Q @ PD.T
        sizes = np.diff(self.starts)
        # per block size: candidate ids, their row indices (g, n), and S stacked (g, n, n)
        self.groups: list[tuple[np.ndarray, np.ndarray]] = []
        self.S: list[np.ndarray] = []
        self.where = np.empty((len(sizes), 2), dtype=np.int64)  # candidate -> (group, slot)
        for n in np.unique(sizes):
            ids = np.flatnonzero(sizes == n)
            rows = self.starts[ids][:, None] + np.arange(n)
            Qg = np.asarray(self.Q[rows], dtype=np.float64)
            self.where[ids] = np.column_stack([np.full(ids.size, len(self.groups)),
                                               np.arange(ids.size)])
            self.groups.append((ids, rows))
            self.S.append(np.eye(n) + (Qg * self.inv) @ Qg.transpose(0, 2, 1))

    def mean_log_lpr(self) -> float:
        return float(-np.mean(np.log(np.maximum(self.u, _TINY))))

    def gains(self) -> np.ndarray:
        """Mean ln-LPR gain of adding each candidate alone, (n_pool,)."""
        u = np.maximum(self.u, _TINY)
        out = np.empty(len(self.where))
        # Small solves: one BLAS thread (measured 15x faster than two on a loaded machine,
        # where threads wait for each other), and faster than numpy's batched solve.
        with _one_thread():
            for c, (group, slot) in enumerate(self.where):
                L = scipy.linalg.cholesky(self.S[group][slot], lower=True, check_finite=False)
                Z = scipy.linalg.solve_triangular(
                    L, self.MT[self.starts[c] : self.starts[c + 1]], lower=True,
                    check_finite=False)
                ratio = np.einsum("ij,ij->j", Z, Z) / u
                out[c] = -np.mean(np.log1p(-np.minimum(ratio, 1.0 - _EPS)))
        return out

    def add(self, c: int) -> None:
        """Add candidate ``c``'s rows to the training set (Woodbury update of everything)."""
        group, slot = self.where[c]
        sl = slice(int(self.starts[c]), int(self.starts[c + 1]))
        Qc = np.asarray(self.Q[sl], dtype=np.float64)
        W = (self.inv[:, None] * Qc.T) if self.Ainv is None else self.Ainv @ Qc.T  # A^-1 B^T
        L = scipy.linalg.cholesky(self.S[group][slot], lower=True, check_finite=False)

        def whiten(X: np.ndarray) -> np.ndarray:  # X L^-T: X S^-1 X^T = (X L^-T)(X L^-T)^T
            return scipy.linalg.solve_triangular(L, X.T, lower=True, check_finite=False).T

        Kc = whiten(self.Q @ W)  # (n_rows, n_c): B_j A^-1 B_c^T L^-T for every row j
        Mc = whiten(self.MT[sl].T)  # (n_t, n_c)
        self.u = self.u - np.einsum("ij,ij->i", Mc, Mc)
        self.MT -= Kc @ Mc.T
        with _one_thread():  # many small products
            for (_, rows), S in zip(self.groups, self.S, strict=True):
                Kg = Kc[rows]
                S -= Kg @ Kg.transpose(0, 2, 1)
        if self.Ainv is None:
            self.Ainv = np.diag(self.inv)
        Wc = whiten(W)
        self.Ainv -= Wc @ Wc.T

    @property
    def n_pool(self) -> int:
        return len(self.where)

    def copy(self) -> _BlockState:
        new = copy.copy(self)  # Q, starts, groups and inv are never modified: shared
        new.u, new.MT, new.S = self.u.copy(), self.MT.copy(), [S.copy() for S in self.S]
        new.Ainv = None if self.Ainv is None else self.Ainv.copy()
        return new


def _state(solver: RigiditySolver, P_target, Q_pool, alpha: float):
    """Rank-1 state for projected structure rows, block state for :class:`PoolBlocks`."""
    if isinstance(Q_pool, PoolBlocks):
        return _BlockState(solver, P_target, Q_pool, alpha)
    return _State(solver, P_target, Q_pool, alpha)


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
    Q_pool : numpy.ndarray of shape (n_pool, d) or PoolBlocks
        ``solver.projections`` of the candidates' structure rows, or the row blocks of a
        force-trained fit (:func:`force_pool`: Woodbury block updates).
    alpha : float
        Regulariser (``>= 0``).
    k : int
        Number of structures to pick (capped at ``n_pool``).

    Returns
    -------
    Suggestion
    """
    state = _state(solver, P_target, Q_pool, alpha)
    n_pool = state.n_pool
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
        Projections of target atoms and candidate rows (``solver.projections``); ``Q_pool``
        may be :class:`PoolBlocks` (force-trained fit).
    order : sequence of int
        Pool indices to add, in order.
    alpha : float

    Returns
    -------
    numpy.ndarray of shape (len(order) + 1,)
        Value before any addition, then after each.
    """
    return _curve(_state(solver, P_target, Q_pool, alpha), order)


def _curve(state, order: Sequence[int]) -> np.ndarray:
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
        Projections of target atoms and candidate rows (``solver.projections``); ``Q_pool``
        may be :class:`PoolBlocks` (force-trained fit).
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
    start = _state(solver, P_target, Q_pool, alpha)  # built once, copied per draw
    k = min(int(k), start.n_pool)
    rng = np.random.default_rng(seed)
    return np.stack([_curve(start.copy(), rng.choice(start.n_pool, k, replace=False))
                     for _ in range(int(n_seeds))])


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
