r"""Local prediction rigidity (LPR), prediction rigidity (PR) and component-wise LPR.

For a ridge model trained with the halved loss
:math:`\frac12\sum_A (y_A - \mathbf{x}_A\cdot\mathbf{w})^2 + \frac{\alpha}{2}|\mathbf{w}|^2`
on structure rows :math:`\mathbf{x}_A` (per-atom means by default), the LPR of an atom with
descriptor :math:`\mathbf{x}_k` is

.. math::
    \mathrm{LPR}_k = \frac{1}{\mathbf{x}_k^\top (\mathbf{X}^\top\mathbf{X}
                     + \alpha\mathbf{I})^{-1}\mathbf{x}_k}

(Chong et al., JCTC 19, 8020 (2023)). All descriptors are divided by a scale ``s``
(scikit-matter's ``sfactor``: the root mean square norm of the training atoms' descriptors)
unless a fixed scale is given.

Two layers:

* :class:`RigiditySolver` accumulates :math:`\mathbf{X}^\top\mathbf{X}` structure by
  structure (memory :math:`O(d^2)`), factorises it once, and then answers every alpha
  from cached projections :math:`P = \mathbf{X}_\mathrm{test} V`:
  :math:`1/\mathrm{LPR}_k = \sum_j P_{kj}^2 / (e_j + \alpha)`.
* :func:`local_prediction_rigidity` and :func:`componentwise_prediction_rigidity` are
  drop-ins for the scikit-matter functions of the same names (same arguments, convention
  and return values), built on the solver.

Two routes, chosen by shape (:attr:`RigiditySolver.route`):

* **primal** (``n_structures >= d / 2``): ``eigh`` of the ``d x d`` matrix
  :math:`\mathbf{X}^\top\mathbf{X}` (cost :math:`O(d^3)`).
* **dual** (``n_structures < d / 2``, :data:`_DUAL_SHARE`): the solver keeps the ``n x d``
  scaled training rows and
  takes their thin SVD :math:`\mathbf{X} = U S W^\top` (cost :math:`O(n^2 d)`; it never
  squares the condition number). With :math:`\mathbf{P} = \hat{\mathbf{x}} W` and the
  residual :math:`\rho^2 = |\hat{\mathbf{x}} - \mathbf{P} W^\top|^2` outside the training
  span (eigenvalue 0), :math:`1/\mathrm{LPR} = \sum_j P_j^2/(s_j^2+\alpha) +
  \rho^2/\alpha`: ``O(n d)`` per atom instead of ``O(d^2)``. :math:`\rho^2` is taken as
  :math:`|\hat{\mathbf{x}}|^2 - |\mathbf{P}|^2` only where that difference keeps more than
  :data:`_CANCEL` of :math:`|\hat{\mathbf{x}}|^2`; for atoms in or near the training span
  (the training rows themselves) the subtraction would cancel, and the residual is formed
  explicitly. The full eigenbasis (:attr:`RigiditySolver.eigvecs`, :meth:`projections`)
  is the SVD basis completed by a QR factorisation (``O(d^2 n)``), built only when asked for.

Both routes apply the same rank-deficiency rule below (the null space has eigenvalue 0),
so they agree to round-off; the factorisations run on one BLAS thread (:data:`_FACTOR_THREADS`,
measured: OpenBLAS's 2-thread ``eigh`` is many times slower on a shared machine).
Numerical rule for rank deficiency (``alpha`` at or near 0, fewer structures than
features). With :math:`e_j` the eigenvalues of :math:`\mathbf{X}^\top\mathbf{X}`,
:math:`e_\max` the largest and :math:`d` the number of features:

* eigenvalues are clipped to be ``>= 0``, and the ``d - n_rows`` smallest are set to
  exactly 0 (the rank of :math:`\mathbf{X}^\top\mathbf{X}` is at most the number of data
  rows ``n_rows``: ``n_structures``, plus the force rows of a force-trained model);
* the numerical resolution at ``alpha`` is
  :math:`\tau(\alpha) = d\,\varepsilon\,(e_\max + \alpha)` (NumPy's ``matrix_rank`` rule
  for :math:`\mathbf{X}^\top\mathbf{X} + \alpha\mathbf{I}`); every eigenvalue of that
  matrix is floored at :math:`\tau(\alpha)`, so an atom with a component in the null
  space gets a tiny but finite LPR (the :math:`\alpha \to 0` limit is 0), never NaN/inf;
* ``rank_diff(alpha)`` is scikit-matter's ``d - rank(X^T X + alpha I)``: the number of
  eigenvalues with :math:`e_j + \alpha \le \tau(\alpha)`;
* ``undetermined(X, alpha)`` flags atoms for which more than half of
  :math:`1/\mathrm{LPR}` (the posterior variance of the local prediction) comes from
  floored directions (:math:`e_j + \alpha \le \tau(\alpha)`): their LPR is an artefact of
  the floor, not a number the model defines. Above the resolution (any practical
  ``alpha > 0``) nothing is flagged: a low LPR there is the answer, not a failure;
* an all-zero descriptor (its prediction is 0 whatever the weights) gets the huge finite
  LPR ``1 / numpy.finfo(float).tiny``.

scikit-matter's pseudo-inverse instead *drops* null-space components at ``alpha = 0``,
which reports a large LPR for exactly the atoms the data do not determine (or inf when the
descriptor lies wholly in the null space); the two agree whenever
:math:`\mathbf{X}^\top\mathbf{X} + \alpha\mathbf{I}` is numerically non-singular.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.sparse
from threadpoolctl import ThreadpoolController

from lprviz.errors import InputError
from lprviz.limits import MAX_DESCRIPTOR_VALUE

__all__ = [
    "RigiditySolver",
    "componentwise_prediction_rigidity",
    "local_prediction_rigidity",
    "lpr_sweep",
    "sfactor",
    "structure_features",
]

_EPS = np.finfo(np.float64).eps
_TINY = np.finfo(np.float64).tiny
# Rows per GEMM when accumulating X^T X or projecting test atoms: bounds the working memory
# at _CHUNK * d floats while keeping the BLAS calls large.
_CHUNK = 4096
# Rows per block of the dual route's thin projection: the scaled block and the explicit
# residuals (~6 MB at d = 1470) stay in cache and are reused by the allocator, where
# 4096-row blocks were fresh 48 MB arrays (page faults): 1.4x faster, measured one-thread
# on 4k test atoms.
_THIN_ROWS = 512
# Rows per block of the per-alpha pass (P**2) @ W: a 256 x d block of squares stays in cache
# (measured 2-4x faster than 4096-row blocks at d = 1470, benchmarks/bench_lpr.py).
_PASS_CHUNK = 256
# Passes over at least this many rows run in two halves on two threads (_sq_dot).
_SPLIT_ROWS = 32 * _PASS_CHUNK
# Dual route: |x|^2 - |P|^2 is trusted for the out-of-span residual while it keeps at least
# this share of |x|^2; below it the residual is explicit. The difference's absolute error
# measured <= 6e-15 |x|^2 (SOAP, d = 246 and 1473: ~30 eps), so <= 6e-10 relative here;
# LPR errors measured <= 4e-10 (vs 3e-12 at 1e-3, where 2.3x as many rows paid the
# explicit residual: a second n x r x d product).
_CANCEL = 1e-5
# Dual route while n_structures < _DUAL_SHARE * d. Measured at d = 1473 (one thread): SVD of
# the rows + QR completion 0.3 s at n = 300, 0.5 s at 700, 1.3 s at 1315, eigh 0.4 s; and the
# thin pass costs ~2 n d per atom against d^2.
_DUAL_SHARE = 0.5
# BLAS threads for eigh/SVD/QR: one thread never collapses when the cores are shared.
_FACTOR_THREADS = 1
# An atom is undetermined when more than this share of 1/LPR comes from the data null space.
_UNDETERMINED_SHARE = 0.5
_CONVENTIONS = ("mean", "sum")


def _as_2d(X, what: str, *, check: str | None = "descriptors") -> np.ndarray:
    """``X`` as a 2D float64 array, checked: ``"descriptors"`` (no NaN or inf, magnitudes
    within :data:`~lprviz.limits.MAX_DESCRIPTOR_VALUE`), ``"finite"`` (arrays built from
    descriptors, such as a Gram matrix or summed rows, which may legitimately exceed it) or
    None (the caller checks through sums it forms anyway)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise InputError(f"{what}: expected a 2D array (n_atoms, n_features), got shape {X.shape}")
    if check == "descriptors":
        _checked_norms2(X, what)
    elif check == "finite" and not np.isfinite(X).all():
        raise InputError(f"{what}: contains NaN or inf")
    return X


def _checked_norms2(X: np.ndarray, what: str) -> np.ndarray:
    """The rows' sums of squares of the descriptors ``X``, through which NaN, inf and
    magnitudes beyond :data:`~lprviz.limits.MAX_DESCRIPTOR_VALUE` are refused
    (:func:`_refuse_bad_values`): one pass, as cheap as a finiteness scan."""
    with np.errstate(over="ignore", invalid="ignore"):  # judged just below
        norm2 = np.einsum("ij,ij->i", X, X)
    _refuse_bad_values(X, norm2, what, MAX_DESCRIPTOR_VALUE**2)
    return norm2


def _within(values: np.ndarray, bound: float) -> bool:
    """Whether every entry of ``values`` lies in [-bound, bound] (False for NaN): a maximum
    and a minimum, no temporary array."""
    return values.size == 0 or (float(values.max()) <= bound
                                and float(values.min()) >= -bound)


def _refuse_bad_values(X: np.ndarray, derived: np.ndarray, what: str,
                       bound: float = MAX_DESCRIPTOR_VALUE) -> None:
    """Refuse NaN, inf, or magnitudes beyond :data:`~lprviz.limits.MAX_DESCRIPTOR_VALUE` in
    the descriptors ``X``, checked through ``derived``, an array formed from ``X`` anyway:
    its rows' sums of squares (``bound`` the limit squared), which any such value puts
    outside ``bound``, or its row sums (``bound`` the limit), which any NaN or inf does, and
    a huge value unless another cancels it within the same sum (then the sums, all that is
    used of those atoms, are fine). ``X`` is scanned only when ``derived`` leaves ``bound``
    (sums of many allowed values may, and are then let through), so a large block costs
    one small check instead of a pass over it (~0.3 s per 100k atoms at d = 1470)."""
    if _within(derived, bound):
        return
    if not np.isfinite(X).all():
        raise InputError(f"{what}: descriptors contain NaN or inf")
    largest = max(float(X.max()), -float(X.min()))
    if largest > MAX_DESCRIPTOR_VALUE:
        raise InputError(f"{what}: descriptor values up to {largest:.3g}, beyond "
                         f"{MAX_DESCRIPTOR_VALUE:g} (their squares would overflow); rescale "
                         "the descriptors")


def _check_alpha(alpha) -> float:
    alpha = float(alpha)
    if not np.isfinite(alpha) or alpha < 0:
        raise InputError(f"alpha: expected a finite number >= 0, got {alpha}")
    return alpha


def _check_alphas(alphas) -> list[float]:
    """``alphas`` as a non-empty list of checked regularisers (:func:`_check_alpha`)."""
    if np.ndim(alphas) != 1 or len(alphas) == 0:
        raise InputError(f"alphas: expected a non-empty sequence of numbers >= 0, got "
                         f"{type(alphas).__name__} of shape {np.shape(alphas)}")
    return [_check_alpha(a) for a in alphas]


def _check_convention(convention: str) -> str:
    if convention not in _CONVENTIONS:
        raise InputError(f"convention: expected one of {_CONVENTIONS}, got {convention!r}")
    return convention


def sfactor(X_atoms) -> float:
    r"""scikit-matter's global scale of atomic descriptors.

    .. math:: s = \sqrt{\sum_f \langle x_{if}^2 \rangle_i}

    i.e. the root mean square norm of the descriptors (no centring).

    Parameters
    ----------
    X_atoms : numpy.ndarray of shape (n_atoms, n_features)
        Descriptors of the training atoms.

    Returns
    -------
    float
        The scale ``s``.
    """
    X = _as_2d(X_atoms, "X_atoms")
    if X.shape[0] == 0:
        raise InputError("X_atoms: expected at least one training atom, got none")
    return float(np.sqrt(np.einsum("ij,ij->", X, X) / X.shape[0]))


def structure_features(
    X_atoms,
    structure_index,
    n_structures: int | None = None,
    *,
    convention: str = "mean",
) -> np.ndarray:
    """Per-structure rows of atomic descriptors: the mean (or the sum) over each structure.

    Parameters
    ----------
    X_atoms : numpy.ndarray of shape (n_atoms, n_features)
        Atomic descriptors in dataset atom order.
    structure_index : numpy.ndarray of int of shape (n_atoms,)
        Structure of each atom (0-based; need not be sorted or contiguous).
    n_structures : int, optional
        Number of output rows; default ``structure_index.max() + 1``. Structures without
        atoms give zero rows.
    convention : {"mean", "sum"}
        Per-atom mean rows (the reference convention) or totals.

    Returns
    -------
    numpy.ndarray of shape (n_structures, n_features)
        One row per structure.
    """
    X = _as_2d(X_atoms, "X_atoms", check=None)  # checked through the rows below
    _check_convention(convention)
    idx = np.asarray(structure_index)
    if idx.shape != (X.shape[0],) or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise InputError(
            f"structure_index: expected {X.shape[0]} integers, got shape {idx.shape} "
            f"of dtype {idx.dtype}"
        )
    if idx.size and idx.min() < 0:
        raise InputError("structure_index: expected indices >= 0")
    n = int(idx.max()) + 1 if idx.size else 0
    if n_structures is None:
        n_structures = n
    elif n_structures < n:
        raise InputError(
            f"n_structures: got {n_structures} but structure_index refers to structure {n - 1}"
        )
    # A sparse (n_structures, n_atoms) indicator turns the grouped sum into one product.
    S = scipy.sparse.csr_matrix(
        (np.ones(X.shape[0]), (idx, np.arange(X.shape[0]))), shape=(n_structures, X.shape[0])
    )
    rows = np.asarray(S @ X)
    _refuse_bad_values(X, rows, "X_atoms")  # every atom is in one row
    if convention == "mean":
        counts = np.bincount(idx, minlength=n_structures).astype(np.float64)
        rows /= np.maximum(counts, 1.0)[:, None]
    return rows


@dataclass(eq=False)
class RigiditySolver:
    r"""LPR machinery for one training set: :math:`\mathbf{X}^\top\mathbf{X}` and its
    eigendecomposition, built once, then cheap for every alpha.

    Build it with :meth:`from_atoms` or :meth:`from_structures`. The eigendecomposition is
    computed lazily on first use and cached. All ``X_*_raw`` arguments are *unscaled*
    descriptors; the solver divides them by :attr:`scale`. See the module docstring for
    the rank-deficiency rule (eigenvalue floor, ``rank_diff``, ``undetermined``).

    Attributes
    ----------
    gram : numpy.ndarray of shape (n_features, n_features)
        :math:`\mathbf{X}^\top\mathbf{X}` of the scaled structure rows.
    scale : float
        Descriptor scale ``s`` (scikit-matter's sfactor of the training atoms unless fixed).
    n_structures : int
        Number of training structures (rows of :math:`\mathbf{X}`).
    convention : {"mean", "sum"}
        Structure rows are per-atom means (reference) or sums (totals).
    rows : numpy.ndarray of shape (n_structures, n_features) or None
        The scaled training rows, kept while ``n_structures < n_features / 2`` (then they
        give the dual route); None otherwise (always None with force rows).
    n_extra_rows : int
        Data rows in :attr:`gram` besides the structure rows (force rows of a force-trained
        model: 3 per atom with forces, already weighted). The rank rule counts
        ``n_structures + n_extra_rows`` rows.
    """

    gram: np.ndarray
    scale: float
    n_structures: int
    convention: str = "mean"
    rows: np.ndarray | None = field(default=None, repr=False)
    n_extra_rows: int = 0
    _eigvals: np.ndarray | None = field(default=None, init=False, repr=False)
    _eigvecs: np.ndarray | None = field(default=None, init=False, repr=False)
    _thin: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_atoms(
        cls,
        X_atoms,
        structure_index,
        *,
        scale: float | None = None,
        convention: str = "mean",
    ) -> RigiditySolver:
        """Build from atomic descriptors and the structure of each atom.

        Parameters
        ----------
        X_atoms : numpy.ndarray of shape (n_atoms, n_features)
            Raw descriptors of the training atoms.
        structure_index : numpy.ndarray of int of shape (n_atoms,)
            Training structure of each atom; structures without atoms are ignored.
        scale : float, optional
            Fixed descriptor scale; default: :func:`sfactor` of ``X_atoms``.
        convention : {"mean", "sum"}
            Structure rows are per-atom means or sums.

        Returns
        -------
        RigiditySolver
        """
        X = _as_2d(X_atoms, "X_atoms")
        if X.shape[0] == 0:
            raise InputError("X_atoms: expected at least one training atom, got none")
        rows = structure_features(X, structure_index, convention=_check_convention(convention))
        rows = rows[np.bincount(np.asarray(structure_index)) > 0]
        return cls.from_rows(rows, scale=sfactor(X) if scale is None else scale,
                             convention=convention)

    @classmethod
    def from_rows(
        cls,
        rows_raw,
        *,
        scale: float,
        convention: str = "mean",
        extra_gram=None,
        n_extra_rows: int = 0,
    ) -> RigiditySolver:
        """Build from the raw structure rows themselves (see :func:`structure_features`), at a
        given scale (the rows alone do not give scikit-matter's sfactor of the atoms).

        Parameters
        ----------
        rows_raw : numpy.ndarray of shape (n_structures, n_features)
            One raw row per training structure, in ``convention``.
        scale : float
            Descriptor scale.
        convention : {"mean", "sum"}
            What the rows are (recorded for :meth:`with_structures`).
        extra_gram : numpy.ndarray of shape (n_features, n_features), optional
            Raw (unscaled) Gram of further data rows added to ``rows^T rows``: the weighted
            force rows ``lambda_F sum_A G_A^T G_A`` of a force-trained model
            (:func:`lprviz.forces.force_gram`); divided by ``scale**2`` like the rows.
        n_extra_rows : int
            How many data rows ``extra_gram`` holds (for the rank rule; 3 per force atom).

        Returns
        -------
        RigiditySolver
            With ``extra_gram`` the route is always primal.
        """
        rows = _as_2d(rows_raw, "rows", check="finite")
        if rows.shape[0] == 0:
            raise InputError("rows: expected at least one training structure, got none")
        gram = _gram(rows)
        if extra_gram is not None:
            extra = _as_2d(extra_gram, "extra_gram", check="finite")
            if extra.shape != gram.shape:
                raise InputError(f"extra_gram: expected shape {gram.shape}, got {extra.shape}")
            solver = cls._from_raw_gram(gram + extra, scale, rows.shape[0],
                                        _check_convention(convention), None)
            solver.n_extra_rows = int(n_extra_rows)
            return solver
        return cls._from_raw_gram(gram, scale, rows.shape[0], _check_convention(convention), rows)

    @classmethod
    def from_structures(
        cls,
        structures: Iterable[np.ndarray],
        *,
        scale: float | None = None,
        convention: str = "mean",
    ) -> RigiditySolver:
        """Build from one ``(n_atoms, n_features)`` array per training structure.

        The structures are read once (a generator works): :math:`\\mathbf{X}^\\top\\mathbf{X}`
        and the sfactor are accumulated on the fly, so memory stays :math:`O(d^2)`.

        Parameters
        ----------
        structures : iterable of numpy.ndarray of shape (n_atoms, n_features)
            Raw descriptors, one array per training structure.
        scale : float, optional
            Fixed descriptor scale; default: :func:`sfactor` of all training atoms.
        convention : {"mean", "sum"}
            Structure rows are per-atom means or sums.

        Returns
        -------
        RigiditySolver
        """
        _check_convention(convention)
        gram, sumsq, n_atoms, n_structures, rows = _accumulate(structures, convention)
        if n_atoms == 0:
            raise InputError("X_train: expected at least one training atom, got none")
        if scale is None:
            scale = float(np.sqrt(sumsq / n_atoms))
        return cls._from_raw_gram(gram, scale, n_structures, convention, rows)

    @classmethod
    def from_gram(
        cls,
        gram_raw: np.ndarray,
        *,
        scale: float,
        n_structures: int,
        convention: str = "mean",
        rows_raw: np.ndarray | None = None,
        n_extra_rows: int = 0,
    ) -> RigiditySolver:
        """Build from an accumulated raw :math:`\\mathbf{X}^\\top\\mathbf{X}` (e.g. partial
        sums reduced on Dask workers, :mod:`lprviz.distributed`).

        Parameters
        ----------
        gram_raw : numpy.ndarray of shape (n_features, n_features)
            Sum of ``rows.T @ rows`` of the raw (unscaled) structure rows.
        scale : float
            Descriptor scale.
        n_structures : int
            Number of training structures summed into ``gram_raw``.
        convention : {"mean", "sum"}
            What the rows were.
        rows_raw : numpy.ndarray of shape (n_structures, n_features), optional
            The raw rows themselves, when few (they give the same dual route as
            :meth:`from_rows`); ignored with ``n_extra_rows``.
        n_extra_rows : int
            Data rows in ``gram_raw`` besides the structure rows (weighted force rows, see
            :meth:`from_rows`); the route is then primal.

        Returns
        -------
        RigiditySolver
        """
        gram = _as_2d(gram_raw, "gram", check="finite")
        if gram.shape[0] != gram.shape[1] or n_structures < 1:
            raise InputError(f"gram: expected a square matrix of at least one structure, got "
                             f"shape {gram.shape} of {n_structures} structures")
        solver = cls._from_raw_gram(gram, scale, n_structures, _check_convention(convention),
                                    None if n_extra_rows else rows_raw)
        solver.n_extra_rows = int(n_extra_rows)
        return solver

    @classmethod
    def _from_raw_gram(
        cls,
        gram_raw: np.ndarray,
        scale: float,
        n_structures: int,
        convention: str,
        rows_raw: np.ndarray | None = None,
    ) -> RigiditySolver:
        scale = float(scale)
        if not np.isfinite(scale) or scale <= 0:
            raise InputError(
                f"scale: expected a positive finite number, got {scale} "
                "(all training descriptors zero?)"
            )
        rows = _thin_rows(rows_raw, gram_raw.shape[0])
        return cls(
            gram_raw / scale**2,
            scale,
            int(n_structures),
            convention,
            None if rows is None else rows / scale,
        )

    def with_structures(
        self,
        X_more_atoms,
        structure_index_more=None,
        *,
        extra_gram=None,
        n_extra_rows: int = 0,
    ) -> RigiditySolver:
        """A new solver with more training structures, at the same scale and convention.

        Parameters
        ----------
        X_more_atoms : numpy.ndarray of shape (n_atoms, n_features) or list of such arrays
            Raw descriptors of the added atoms; a list means one array per structure
            (then ``structure_index_more`` is not given).
        structure_index_more : numpy.ndarray of int of shape (n_atoms,), optional
            Added structure of each atom (any labels; only grouping matters).
        extra_gram : numpy.ndarray of shape (n_features, n_features), optional
            Raw Gram of the added structures' weighted force rows (see :meth:`from_rows`):
            a structure then adds its ``1 + 3 n_atoms`` rows.
        n_extra_rows : int
            Number of force rows in ``extra_gram``.

        Returns
        -------
        RigiditySolver
            ``self`` is unchanged.
        """
        if structure_index_more is None:
            gram, _, _, n_more, rows = _accumulate(X_more_atoms, self.convention)
        else:
            X = _as_2d(X_more_atoms, "X_more_atoms")
            _, idx = np.unique(np.asarray(structure_index_more), return_inverse=True)
            rows = structure_features(X, idx.reshape(-1), convention=self.convention)
            gram, n_more = _gram(rows), rows.shape[0]
        if gram.shape != self.gram.shape:
            raise InputError(
                f"X_more_atoms: expected {self.n_features} features, got {gram.shape[0]}"
            )
        n_total = self.n_structures + n_more
        n_extra = self.n_extra_rows + int(n_extra_rows)
        if extra_gram is not None:
            extra = _as_2d(extra_gram, "extra_gram", check="finite")
            if extra.shape != gram.shape:
                raise InputError(f"extra_gram: expected shape {gram.shape}, got {extra.shape}")
            gram = gram + extra
        both = None
        if (self.rows is not None and rows is not None and n_extra == 0
                and n_total < _DUAL_SHARE * self.n_features):
            both = np.vstack([self.rows, rows / self.scale])
        return RigiditySolver(
            self.gram + gram / self.scale**2, self.scale, n_total, self.convention, both, n_extra
        )

    # ------------------------------------------------------------------ eigensystem
    @property
    def n_features(self) -> int:
        """Number of descriptor features ``d``."""
        return self.gram.shape[0]

    @property
    def route(self) -> str:
        """``"dual"`` (thin SVD of the ``n x d`` training rows) when fewer training
        structures than half the features and the rows are known, else ``"primal"``
        (``eigh`` of :attr:`gram`); see the module docstring."""
        if self.rows is not None and self.n_structures < _DUAL_SHARE * self.n_features:
            return "dual"
        return "primal"

    def _svd(self) -> tuple[np.ndarray, np.ndarray]:
        """Dual route: squared singular values (ascending) and right singular vectors
        W (d, r) of the scaled training rows."""
        if self._thin is None:
            with _one_thread():
                _, S, Wt = scipy.linalg.svd(
                    self.rows, full_matrices=False, lapack_driver="gesdd", check_finite=False
                )
            self._thin = (S[::-1] ** 2, np.ascontiguousarray(Wt[::-1].T))
        return self._thin

    def _eig(self) -> tuple[np.ndarray, np.ndarray]:
        if self._eigvals is None:
            if self.route == "dual":
                e_thin, W = self._svd()
                # Complete W to an orthonormal basis: the complement is the null space.
                with _one_thread():
                    Q = scipy.linalg.qr(W, mode="full", check_finite=False)[0]
                r = W.shape[1]
                e = np.concatenate([np.zeros(self.n_features - r), e_thin])
                V = np.hstack([Q[:, r:], W])
            else:
                with _one_thread():
                    e, V = scipy.linalg.eigh(self.gram, check_finite=False)
                e = np.clip(e, 0.0, None)
                # rank(X^T X) <= number of data rows (structures, plus force rows): the
                # smallest d - n_rows eigenvalues are exactly 0; setting them so removes
                # eigh's round-off from the null space.
                n_zero = max(self.n_features - self.n_structures - self.n_extra_rows, 0)
                e[:n_zero] = 0.0
            self._eigvals, self._eigvecs = e, V
        return self._eigvals, self._eigvecs

    def _span(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (ascending) and orthonormal basis (d, r) of the training rows' span:
        the thin SVD on the dual route; on the primal route the eigenpairs past the
        ``d - n_structures`` that are exactly 0 (all of them when ``n_structures >= d``)."""
        if self.route == "dual":
            return self._svd()
        e, V = self._eig()
        n_zero = max(self.n_features - self.n_structures, 0)
        return e[n_zero:], V[:, n_zero:]

    def _e_max(self) -> float:
        if self.route == "dual":
            e = self._svd()[0]
        else:
            e = self._eig()[0]
        return float(e[-1]) if e.size else 0.0

    @property
    def eigvals(self) -> np.ndarray:
        """Eigenvalues of :attr:`gram`, ascending, clipped ``>= 0``; shape (n_features,)."""
        return self._eig()[0]

    @property
    def eigvecs(self) -> np.ndarray:
        """Orthonormal eigenvectors of :attr:`gram` as columns; shape (d, d)."""
        return self._eig()[1]

    def _resolution(self, alpha: float) -> float:
        # NumPy's matrix_rank tolerance for X^T X + alpha I (largest eigenvalue e_max + alpha).
        return max(self.n_features * _EPS * (self._e_max() + alpha), _TINY)

    def _thin_weights(self, alphas: Sequence[float], floored_only: bool = False):
        """1/(s_j^2 + alpha) per direction of the span (r, k) and the null-space weight (k,)
        for each alpha, floored as in the module docstring (with ``floored_only``: zero where
        not floored, for the undetermined share)."""
        e, _ = self._span()
        cols, null = [], []
        for a in alphas:
            a = _check_alpha(a)
            tau = self._resolution(a)
            inv = 1.0 / np.maximum(e + a, tau)
            inv0 = 1.0 / max(a, tau)
            if floored_only:
                inv = np.where(e + a <= tau, inv, 0.0)
                inv0 = inv0 if a <= tau else 0.0
            cols.append(inv)
            null.append(inv0)
        return np.stack(cols, axis=1), np.asarray(null)

    def _thin_lpr_and_floored_weights(self, alpha: float):
        """Dual route: :meth:`_thin_weights` of ``alpha`` for 1/LPR and for its floored part
        (the undetermined share), as two columns."""
        W_all, w_all = self._thin_weights([alpha])
        W_fl, w_fl = self._thin_weights([alpha], floored_only=True)
        return np.hstack([W_all, W_fl]), np.concatenate([w_all, w_fl])

    def _thin_u(
        self, X_raw: np.ndarray, W_thin: np.ndarray, w_null: np.ndarray, cols=None
    ) -> np.ndarray:
        """Dual route: ``sum_j P_j^2 W_thin[j] + rho^2 w_null`` per row of ``X_raw / scale``
        (the scale folded into the basis and the norms, as in :meth:`thin_projections`),
        with the cancellation guard of the module docstring. With ``cols``, ``X_raw`` holds
        only those columns of vectors zero elsewhere (LCPR)."""
        _, W = self._svd()
        B = (W if cols is None else W[cols]) / self.scale
        u = np.empty((X_raw.shape[0], W_thin.shape[1]))
        for start in range(0, X_raw.shape[0], _THIN_ROWS):
            raw = X_raw[start : start + _THIN_ROWS]
            P = raw @ B
            rho2 = self._residual2(P, np.einsum("ij,ij->i", raw, raw) / self.scale**2,
                                   lambda mask, raw=raw: raw[mask] / self.scale, cols)
            u[start : start + _THIN_ROWS] = (_sq_dot(P, W_thin)
                                             + rho2[:, None] * w_null[None, :])
        return u

    def _residual2(self, P: np.ndarray, norm2: np.ndarray, rows, cols=None) -> np.ndarray:
        """Out-of-span squared norms ``|x̂|^2 - |P|^2`` of scaled vectors with span
        coordinates ``P``, formed explicitly where that difference would cancel
        (``rows(mask)`` gives those scaled vectors, restricted to ``cols`` when given)."""
        _, W = self._span()
        rho2 = norm2 - np.einsum("ij,ij->i", P, P)
        near = rho2 < _CANCEL * norm2
        if near.any():
            # In or near the training span: form the residual explicitly.
            R = -(P[near] @ W.T)
            if cols is None:
                R += rows(near)
            else:
                R[:, cols] += rows(near)
            rho2[near] = np.einsum("ij,ij->i", R, R)
        return np.maximum(rho2, 0.0)

    @property
    def thin_basis(self) -> np.ndarray:
        """Orthonormal basis ``W`` (n_features, r) of the training rows' span, ascending
        eigenvalues (``r = min(n_structures, d)``: right singular vectors on the dual route,
        the eigenvectors of the nonzero eigenvalues on the primal one); what
        :meth:`thin_projections` project on."""
        return self._span()[1]

    def thin_projections(
        self, X_raw, X_extra=None, *, dtype=np.float32
    ) -> tuple[np.ndarray, np.ndarray]:
        """What every later LPR of these vectors needs, ``r + 1`` numbers each.

        The coordinates ``P = x̂ W`` in the training span (:attr:`thin_basis`) and the
        out-of-span squared norm ``rho^2`` (eigenvalue 0), with the cancellation guard of the
        module docstring; then :meth:`lpr_and_undetermined_from_thin` and
        :meth:`lpr_sweep_from_thin` answer any alpha as :meth:`lpr` does. Smaller than
        :meth:`projections` by ``d / r`` when there are fewer training structures than
        features (either route).

        Parameters
        ----------
        X_raw : numpy.ndarray of shape (n, k)
            Raw descriptors; with ``X_extra``, their first ``k`` columns only.
        X_extra : numpy.ndarray of shape (n, n_features - k), optional
            The remaining columns (so callers need not stack two blocks into one copy).
        dtype : numpy.float32 or numpy.float64
            Storage type of ``P`` (``rho^2`` is float64: it comes from a difference).

        Returns
        -------
        P : numpy.ndarray of shape (n, r)
        rho2 : numpy.ndarray of shape (n,)
        """
        # float32 X is converted chunk by chunk (no float64 copy of it all; the same bits)
        X = np.asarray(X_raw)
        if X.ndim != 2:
            raise InputError(f"X: expected a 2D array (n_atoms, n_features), got shape {X.shape}")
        E = None if X_extra is None else _as_2d(X_extra, "X_extra", check="finite")
        width = X.shape[1] + (0 if E is None else E.shape[1])
        if width != self.n_features or (E is not None and E.shape[0] != X.shape[0]):
            raise InputError(f"X: expected {self.n_features} features (as in training), "
                             f"got {width}")
        # The scale is folded into the basis and the norms: no scaled copy of each block
        # (a pass over it: ~20 % of the projection's time, one thread, d = 1470).
        scaled_basis = self.thin_basis / self.scale
        k = X.shape[1]
        P = np.empty((X.shape[0], scaled_basis.shape[1]), dtype=dtype)
        rho2 = np.empty(X.shape[0])
        for start in range(0, X.shape[0], _THIN_ROWS):
            raw = _as_2d(X[start : start + _THIN_ROWS], "X", check=None)
            norm2 = _checked_norms2(raw, "X")  # before the product, which would warn
            Pc = raw @ scaled_basis[:k]
            Ec = None
            if E is not None:
                Ec = E[start : start + _THIN_ROWS]
                Pc += Ec @ scaled_basis[k:]
                norm2 += np.einsum("ij,ij->i", Ec, Ec)
            norm2 /= self.scale**2

            def rows(mask, raw=raw, Ec=Ec):
                part = raw[mask] if Ec is None else np.hstack([raw[mask], Ec[mask]])
                return part / self.scale

            rho2[start : start + _THIN_ROWS] = self._residual2(Pc, norm2, rows)
            P[start : start + _THIN_ROWS] = Pc
        return P, rho2

    def lpr_sweep_from_thin(self, P: np.ndarray, rho2: np.ndarray,
                            alphas: Sequence[float]) -> np.ndarray:
        """:meth:`lpr_sweep` from :meth:`thin_projections` (one pass over ``P``).

        Returns
        -------
        numpy.ndarray of shape (n_alphas, n)
        """
        W_thin, w_null = self._thin_weights(_check_alphas(alphas))
        return _invert(_sq_dot(P, W_thin) + np.asarray(rho2)[:, None] * w_null[None, :]).T

    def lpr_and_undetermined_from_thin(
        self, P: np.ndarray, rho2: np.ndarray, alpha: float, *, dot: np.ndarray | None = None
    ):
        """:meth:`lpr_and_undetermined` from :meth:`thin_projections` (one pass over ``P``):
        returns ``(lpr, undetermined)``, arrays of shape (n,); with ``dot`` (shape (r,)),
        ``P @ dot`` from the same pass as a third value (e.g. local predictions, where
        ``dot = W^T w``)."""
        W_thin, w_null = self._thin_lpr_and_floored_weights(alpha)
        return _lpr_pass(P, W_thin, dot, rho2, w_null)

    def _effective(self, alpha: float) -> np.ndarray:
        """Eigenvalues of X^T X + alpha I floored at the numerical resolution."""
        e, _ = self._eig()
        return np.maximum(e + alpha, self._resolution(alpha))

    def inverse_eigvals(self, alpha: float) -> np.ndarray:
        """``1 / (e_j + alpha)`` with the numerical floor of the module docstring.

        Parameters
        ----------
        alpha : float
            Regulariser (``>= 0``).

        Returns
        -------
        numpy.ndarray of shape (n_features,)
            In the order of :attr:`eigvecs`; what every LPR of this solver is built from.
        """
        return 1.0 / self._effective(_check_alpha(alpha))

    def rank_diff(self, alpha: float) -> int:
        """scikit-matter's rank deficiency ``d - rank(X^T X + alpha I)``.

        Parameters
        ----------
        alpha : float
            Regulariser (``>= 0``).

        Returns
        -------
        int
            0 when the regularised normal matrix is numerically non-singular.
        """
        alpha = _check_alpha(alpha)
        tau = self._resolution(alpha)
        if self.route == "dual":
            e, _ = self._svd()
            n_null = self.n_features - e.size
            return int(np.count_nonzero(e + alpha <= tau)) + (n_null if alpha <= tau else 0)
        e, _ = self._eig()
        return int(np.count_nonzero(e + alpha <= tau))

    # ------------------------------------------------------------------ projections
    def projections(self, X_atoms_raw, *, dtype=np.float64) -> np.ndarray:
        """Scaled descriptors in the eigenbasis, ``P = (X / scale) V``; compute once, reuse.

        Parameters
        ----------
        X_atoms_raw : numpy.ndarray of shape (n, n_features)
            Raw descriptors (atoms or structure rows).
        dtype : numpy.float64 or numpy.float32
            Storage type. float32 halves the memory (4 d bytes per atom) and the cost of every
            per-alpha pass; the LPR from float32 projections is within a relative 1e-5 of
            float64 (all terms of ``1/LPR`` are positive, so nothing cancels; measured
            <= 1e-6 at d = 1470). Computed in float64, rounded chunk by chunk.

        Returns
        -------
        numpy.ndarray of shape (n, n_features)
        """
        X = self._check_features(X_atoms_raw)
        out = np.empty((X.shape[0], self.n_features), dtype=dtype)
        if X.shape[0] == 0:
            return out  # no basis needed (the dual route builds it only when asked)
        V = self.eigvecs / self.scale
        for start in range(0, X.shape[0], _CHUNK):
            out[start : start + _CHUNK] = X[start : start + _CHUNK] @ V
        return out

    def lpr_from_projections(self, P: np.ndarray, alpha: float) -> np.ndarray:
        """LPR from cached :meth:`projections`: ``1/LPR_k = sum_j P_kj^2 / (e_j + alpha)``.

        Parameters
        ----------
        P : numpy.ndarray of shape (n, n_features)
            Output of :meth:`projections`.
        alpha : float
            Regulariser (``>= 0``).

        Returns
        -------
        numpy.ndarray of shape (n,)
            Finite, positive LPR values.
        """
        inv = self.inverse_eigvals(alpha)
        return _invert(_sq_dot(P, inv[:, None])[:, 0])

    def lpr_sweep_from_projections(self, P: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
        """LPR for many alphas in one pass over cached :meth:`projections`:
        ``1/LPR = (P * P) @ W`` with ``W[j, a] = 1 / (e_j + alpha_a)`` (floored).

        Parameters
        ----------
        P : numpy.ndarray of shape (n, n_features)
            Output of :meth:`projections` (float64 or float32).
        alphas : sequence of float
            Regularisers (``>= 0``).

        Returns
        -------
        numpy.ndarray of shape (n_alphas, n)
            Row ``a`` equals ``lpr_from_projections(P, alphas[a])``.
        """
        inv = np.stack([self.inverse_eigvals(a) for a in _check_alphas(alphas)], axis=1)
        return _invert(_sq_dot(P, inv)).T

    def undetermined_from_projections(self, P: np.ndarray, alpha: float) -> np.ndarray:
        """:meth:`undetermined` from cached :meth:`projections`.

        Parameters
        ----------
        P : numpy.ndarray of shape (n, n_features)
            Output of :meth:`projections`.
        alpha : float
            Regulariser (``>= 0``).

        Returns
        -------
        numpy.ndarray of bool of shape (n,)
        """
        return self.lpr_and_undetermined_from_projections(P, alpha)[1]

    def lpr_and_undetermined_from_projections(
        self, P: np.ndarray, alpha: float, *, dot: np.ndarray | None = None
    ):
        """:meth:`lpr_from_projections` and :meth:`undetermined_from_projections` in one
        pass over ``P`` (squaring ``P`` dominates the cost of a new alpha).

        Parameters
        ----------
        P : numpy.ndarray of shape (n, n_features)
            Output of :meth:`projections`.
        alpha : float
            Regulariser (``>= 0``).
        dot : numpy.ndarray of shape (n_features,), optional
            Also return ``P @ dot`` from the same pass (e.g. local predictions, where
            ``dot = V^T w``), as :func:`project_dot` would.

        Returns
        -------
        lpr : numpy.ndarray of shape (n,)
        undetermined : numpy.ndarray of bool of shape (n,)
        linear : numpy.ndarray of shape (n,)
            Only with ``dot``.
        """
        alpha = _check_alpha(alpha)
        inv = 1.0 / self._effective(alpha)
        floored = self._eigvals + alpha <= self._resolution(alpha)
        return _lpr_pass(P, np.stack([inv, np.where(floored, inv, 0.0)], axis=1), dot)

    def lpr_grid(
        self, P: np.ndarray, alphas: Sequence[float], *, rho2: np.ndarray | None = None,
        dots: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """LPR, undetermined flags and linear predictions at every one of ``alphas`` from one
        pass over cached projections: ``(P * P) @ W`` with one weight column per alpha (and
        one per alpha below the resolution, for the undetermined share), ``P @ dots`` from the
        same blocks. What a fixed set of slider positions needs, computed once.

        Parameters
        ----------
        P : numpy.ndarray of shape (n, n_features) or (n, r)
            :meth:`projections`, or with ``rho2`` :meth:`thin_projections`; float32 stays
            float32 (as in :meth:`lpr_and_undetermined_from_projections`).
        alphas : sequence of float
            Regularisers (``>= 0``).
        rho2 : numpy.ndarray of shape (n,), optional
            Out-of-span squared norms of thin projections.
        dots : numpy.ndarray of shape (n_features, n_alphas) or (r, n_alphas), optional
            One vector per alpha (e.g. ``V^T w(alpha)``): column ``a`` of the third value is
            ``P @ dots[:, a]``.

        Returns
        -------
        lpr : numpy.ndarray of shape (n_alphas, n)
            In ``P``'s dtype (float32 halves the stored grid).
        undetermined : numpy.ndarray of bool of shape (n_alphas, n)
        linear : numpy.ndarray of shape (n_alphas, n) or None
            In ``P``'s dtype; None without ``dots``.
        """
        alphas = _check_alphas(alphas)
        if rho2 is None:
            inv = np.stack([1.0 / self._effective(a) for a in alphas], axis=1)
            floored = np.stack([self.eigvals + a <= self._resolution(a) for a in alphas],
                               axis=1)
            W_fl = np.where(floored, inv, 0.0)
            any_floored = W_fl.any(axis=0)
        else:
            inv, w_null = self._thin_weights(alphas)
            W_fl, w_null_fl = self._thin_weights(alphas, floored_only=True)
            any_floored = W_fl.any(axis=0) | (w_null_fl != 0)
        # Only alphas below the resolution can have undetermined atoms: their columns alone.
        below = np.flatnonzero(any_floored)
        u = _sq_dot(P, np.hstack([inv, W_fl[:, below]]), dots)
        u, linear = u if dots is not None else (u, None)
        if rho2 is not None:
            u += np.asarray(rho2)[:, None] * np.concatenate([w_null, w_null_fl[below]])[None, :]
        k = len(alphas)
        dtype = np.float32 if np.asarray(P).dtype == np.float32 else np.float64
        undetermined = np.zeros((k, u.shape[0]), dtype=bool)
        undetermined[below] = (u[:, k:] > _UNDETERMINED_SHARE * u[:, below]).T
        return (_invert(u[:, :k]).T.astype(dtype, order="C"), undetermined,
                None if linear is None else linear.T.astype(dtype, order="C"))

    # ------------------------------------------------------------------ rigidities
    def lpr(self, X_atoms_raw, alpha: float) -> np.ndarray:
        """Local prediction rigidity of atoms.

        Parameters
        ----------
        X_atoms_raw : numpy.ndarray of shape (n, n_features)
            Raw descriptors of the atoms (training atoms or not).
        alpha : float
            Regulariser (``>= 0``).

        Returns
        -------
        numpy.ndarray of shape (n,)
        """
        return self.lpr_sweep(X_atoms_raw, [alpha])[0]

    def lpr_sweep(self, X_atoms_raw, alphas: Sequence[float]) -> np.ndarray:
        """LPR for several alphas from one projection.

        Parameters
        ----------
        X_atoms_raw : numpy.ndarray of shape (n, n_features)
            Raw descriptors.
        alphas : sequence of float
            Regularisers (``>= 0``).

        Returns
        -------
        numpy.ndarray of shape (n_alphas, n)
        """
        X = self._check_features(X_atoms_raw)
        alphas = _check_alphas(alphas)
        if self.route == "dual":
            W_thin, w_null = self._thin_weights(alphas)
            return _invert(self._thin_u(X, W_thin, w_null)).T
        inv = np.stack([self.inverse_eigvals(a) for a in alphas], axis=1)
        V = self.eigvecs / self.scale
        # Project in chunks so the working memory stays at _CHUNK x d.
        u = np.empty((X.shape[0], inv.shape[1]))
        for start in range(0, X.shape[0], _CHUNK):
            P = X[start : start + _CHUNK] @ V
            u[start : start + _CHUNK] = _sq_dot(P, inv)
        return _invert(u).T

    def lpr_and_undetermined(self, X_atoms_raw, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`lpr` and :meth:`undetermined` (same arguments) in one pass over the atoms:
        returns ``(lpr, undetermined)``, arrays of shape (n,)."""
        if self.route == "dual":
            X = self._check_features(X_atoms_raw)
            u = self._thin_u(X, *self._thin_lpr_and_floored_weights(alpha))
            return _invert(u[:, 0]), u[:, 1] > _UNDETERMINED_SHARE * u[:, 0]
        return self.lpr_and_undetermined_from_projections(self.projections(X_atoms_raw), alpha)

    def undetermined(self, X_atoms_raw, alpha: float) -> np.ndarray:
        """Mask of atoms whose local prediction the training data do not determine.

        True when more than half of ``1/LPR`` (the posterior variance of the local
        prediction) comes from directions where :math:`\\mathbf{X}^\\top\\mathbf{X} +
        \\alpha\\mathbf{I}` is numerically singular (``e_j + alpha <= d * eps *
        (e_max + alpha)``): there the LPR is set by the eigenvalue floor, not by the data or
        the regulariser. With ``alpha`` above the resolution every LPR is determined (a
        low value then says the regulariser, not the data, sets the prediction).

        Parameters
        ----------
        X_atoms_raw : numpy.ndarray of shape (n, n_features)
            Raw descriptors.
        alpha : float
            Regulariser (``>= 0``).

        Returns
        -------
        numpy.ndarray of bool of shape (n,)
        """
        return self.lpr_and_undetermined(X_atoms_raw, alpha)[1]

    def pr(self, X_struct_rows_raw, alpha: float) -> np.ndarray:
        """Prediction rigidity of whole structures.

        Parameters
        ----------
        X_struct_rows_raw : numpy.ndarray of shape (n_structures, n_features)
            Raw structure rows in the solver's convention (see :func:`structure_features`).
        alpha : float
            Regulariser (``>= 0``).

        Returns
        -------
        numpy.ndarray of shape (n_structures,)
        """
        return self.lpr(X_struct_rows_raw, alpha)

    def lcpr(
        self, X_atoms_raw, alpha: float, blocks: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Local component-wise prediction rigidity: the LPR of the descriptor masked to
        one block of columns.

        Parameters
        ----------
        X_atoms_raw : numpy.ndarray of shape (n, n_features)
            Raw descriptors.
        alpha : float
            Regulariser (``>= 0``).
        blocks : mapping of str to index array
            Column indices (int) or boolean masks (length ``n_features``) per component.

        Returns
        -------
        dict of str to numpy.ndarray of shape (n,)
        """
        X = self._check_features(X_atoms_raw)
        dual = self.route == "dual"
        if dual:
            W_thin, w_null = self._thin_weights([alpha])
        else:
            inv = self.inverse_eigvals(alpha)[:, None]
            V = self.eigvecs / self.scale
        out = {}
        for name, cols in blocks.items():
            cols = np.asarray(cols)
            if cols.dtype == bool:
                if cols.shape != (self.n_features,):
                    raise InputError(f"blocks[{name!r}]: expected {self.n_features} booleans")
                cols = np.flatnonzero(cols)
            elif cols.size and (cols.min() < -self.n_features or cols.max() >= self.n_features):
                raise InputError(f"blocks[{name!r}]: column index out of range")
            if dual:
                cols = np.unique(cols % self.n_features)
                u = self._thin_u(X[:, cols], W_thin, w_null, cols=cols)
                out[name] = _invert(u[:, 0])
                continue
            # (x * m_c) V only needs the block's rows of V.
            P = X[:, cols] @ V[cols]
            out[name] = _invert(_sq_dot(P, inv)[:, 0])
        return out

    def solve(self, b: np.ndarray, alpha: float) -> np.ndarray:
        """Solve ``(X^T X + alpha I) w = b`` in the scaled feature space.

        Null-space directions (eigenvalue + alpha at or below the numerical resolution) are
        dropped (pseudo-inverse, minimum-norm solution): a ridge right-hand side
        ``X^T y`` has no component there.

        Parameters
        ----------
        b : numpy.ndarray of shape (n_features,) or (n_features, k)
            Right-hand side(s).
        alpha : float
            Regulariser (``>= 0``).

        Returns
        -------
        numpy.ndarray, same shape as ``b``
        """
        alpha = _check_alpha(alpha)
        b = np.asarray(b, dtype=np.float64)
        if b.shape[0] != self.n_features:
            raise InputError(f"b: expected {self.n_features} rows, got shape {b.shape}")
        if self.route == "dual":
            # Span part through the SVD; the null-space part (eigenvalue 0) is kept at 1/alpha
            # above the resolution and dropped below it, exactly as in the primal route.
            e, W = self._svd()
            tau = self._resolution(alpha)
            ea = e + alpha
            inv = np.where(ea > tau, 1.0 / np.maximum(ea, _TINY), 0.0)
            coef = W.T @ b
            rest = b - W @ coef
            coef *= inv if b.ndim == 1 else inv[:, None]
            return W @ coef + (rest / alpha if alpha > tau else 0.0 * rest)
        e, V = self._eig()
        ea = e + alpha
        inv = np.where(ea > self._resolution(alpha), 1.0 / np.maximum(ea, _TINY), 0.0)
        coef = V.T @ b
        coef *= inv if b.ndim == 1 else inv[:, None]
        return V @ coef

    def _check_features(self, X) -> np.ndarray:
        X = _as_2d(X, "X")
        if X.shape[1] != self.n_features:
            raise InputError(
                f"X: expected {self.n_features} features (as in training), got {X.shape[1]}"
            )
        return X


# ---------------------------------------------------------------------- helpers
def _gram(rows: np.ndarray) -> np.ndarray:
    return rows.T @ rows


def _thin_rows(rows: np.ndarray | None, d: int) -> np.ndarray | None:
    """The raw training rows when they give the dual route (few rows for the features)."""
    if rows is None or rows.shape[0] >= _DUAL_SHARE * d:
        return None
    return np.ascontiguousarray(rows, dtype=np.float64)


def _accumulate(
    structures: Iterable[np.ndarray], convention: str
) -> tuple[np.ndarray, float, int, int, np.ndarray | None]:
    """One pass over per-structure arrays: raw X^T X, sum of squares, atom and row counts,
    and the raw rows while there are fewer rows than features (else None)."""
    gram = None
    buf: list[np.ndarray] = []
    kept: list[np.ndarray] | None = []
    sumsq, n_atoms, n_structures = 0.0, 0, 0
    d = None

    def flush():
        nonlocal gram, kept
        if buf:
            R = np.vstack(buf)
            gram = _gram(R) if gram is None else gram + _gram(R)
            if kept is not None:
                kept.append(R)
                if n_structures >= _DUAL_SHARE * d:
                    kept = None  # too many rows for the dual route
            buf.clear()

    for i, Xs in enumerate(structures):
        Xs = _as_2d(Xs, f"structure {i}")
        if Xs.shape[0] == 0:
            continue
        if d is None:
            d = Xs.shape[1]
        elif Xs.shape[1] != d:
            raise InputError(f"structure {i}: expected {d} features, got {Xs.shape[1]}")
        sumsq += float(np.einsum("ij,ij->", Xs, Xs))
        n_atoms += Xs.shape[0]
        n_structures += 1
        buf.append(Xs.mean(axis=0) if convention == "mean" else Xs.sum(axis=0))
        if len(buf) >= _CHUNK:
            flush()
    flush()
    if gram is None:
        raise InputError("X_train: expected at least one non-empty structure, got none")
    rows = _thin_rows(np.vstack(kept), d) if kept else None
    return gram, sumsq, n_atoms, n_structures, rows


def _sq_dot(P: np.ndarray, W: np.ndarray, dot: np.ndarray | None = None):
    """``(P**2) @ W`` in cache-sized blocks (never more than one block of ``P**2``); with
    ``dot`` (a vector, or a matrix of several), also ``P @ dot`` from the same blocks (one
    read of ``P`` for both), returned as a second value.

    float32 ``P`` stays float32 (``W`` is rounded to float32 too): the squares are positive,
    so the sums lose no more than float32 round-off, and the pass reads half the bytes.
    ``P @ dot`` then carries float32 round-off as in :func:`project_dot`.
    """
    P = np.asarray(P)
    W = np.asarray(W, dtype=np.float64)
    # float32 only while the weights fit it (1/tau at alpha = 0 may not).
    if P.dtype != np.float32 or not np.all(W < 1e30):
        P = P.astype(np.float64, copy=False)
    W = W.astype(P.dtype, copy=False)
    n = P.shape[0]
    out = np.empty((n, W.shape[1]))
    v = None if dot is None else np.asarray(dot, dtype=np.float64).astype(P.dtype)
    linear = None if dot is None else np.empty((n, *v.shape[1:]))

    def blocks(lo: int, hi: int) -> None:
        buf = np.empty((min(_PASS_CHUNK, hi - lo), P.shape[1]), dtype=P.dtype)
        for start in range(lo, hi, _PASS_CHUNK):
            stop = min(start + _PASS_CHUNK, hi)
            Pc = P[start:stop]
            if v is not None:
                linear[start:stop] = Pc @ v
            sq = np.multiply(Pc, Pc, out=buf[: stop - start])
            out[start:stop] = sq @ W

    # Memory-bound: a 2-thread BLAS call with a few columns collapses (measured 6x slower)
    # when another process holds a core, so BLAS runs on one thread; large passes are split
    # in two halves run by two Python threads instead, which share a busy core gracefully
    # and read at twice the bandwidth of one on an idle machine.
    halves = n >= _SPLIT_ROWS and (os.cpu_count() or 1) > 1
    with _one_thread(halves or ((W.shape[1] > 1 or v is not None) and n > _PASS_CHUNK)):
        if halves:
            mid = n // 2 // _PASS_CHUNK * _PASS_CHUNK
            other = _executor().submit(blocks, mid, n)
            try:
                blocks(0, mid)
            finally:  # the other half ends inside the limit, and its error is not lost
                other.result()
        else:
            blocks(0, n)
    return out if dot is None else (out, linear)


_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    """One worker thread for the second half of large passes (:func:`_sq_dot`)."""
    global _POOL
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lprviz-pass")
    return _POOL


def _lpr_pass(P: np.ndarray, W: np.ndarray, dot: np.ndarray | None,
              rho2: np.ndarray | None = None, w_null: np.ndarray | None = None):
    """``(lpr, undetermined[, P @ dot])`` from one pass over projections ``P``.

    ``W`` (r, 2): weights of 1/LPR and of its floored share (:meth:`RigiditySolver.
    undetermined`); ``rho2 * w_null`` adds the out-of-span term of thin projections. The
    floored column is dropped when it is all zero (above the resolution: nothing can be
    undetermined), which makes the pass a one-column product.
    """
    floored = bool(W[:, 1].any() or (w_null is not None and w_null[1]))
    if not floored:
        W = W[:, :1]
        w_null = None if w_null is None else w_null[:1]
    u = _sq_dot(P, W, dot)
    u, linear = u if dot is not None else (u, None)
    if rho2 is not None:
        u = u + np.asarray(rho2)[:, None] * w_null[None, :]
    undetermined = (u[:, 1] > _UNDETERMINED_SHARE * u[:, 0] if floored
                    else np.zeros(u.shape[0], dtype=bool))
    out = _invert(u[:, 0]), undetermined
    return out if dot is None else (*out, linear)


_CONTROLLER: ThreadpoolController | None = None
# _one_thread's shared state: blocks open in any thread, and the limit they hold.
_LIMIT_LOCK = threading.Lock()
_LIMIT_DEPTH = 0
_LIMIT = None


def project_dot(P: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``P @ v`` for float32 or float64 projections ``P`` (n, k), returned as float64.

    A float32 ``P`` is multiplied in float32 (NumPy would otherwise copy the whole of ``P``
    to float64 first; converting block by block costs 7x the product). The sums then carry
    float32 round-off: measured <= 1e-6 eV on local energies of a few eV (emt-alloys,
    d = 1473, alpha 1e-8 .. 1e-3), against 1.5e-7 eV from storing ``P`` in float32 at all.

    Parameters
    ----------
    P : numpy.ndarray of shape (n, k)
    v : numpy.ndarray of shape (k,)

    Returns
    -------
    numpy.ndarray of shape (n,)
    """
    P = np.asarray(P)
    v = np.asarray(v, dtype=np.float64)
    if P.dtype == np.float32:
        return (P @ v.astype(np.float32)).astype(np.float64)
    return P @ v


def _one_thread(active: bool = True):
    """BLAS on :data:`_FACTOR_THREADS` threads inside the block (no-op when not ``active``).

    A pthreads OpenBLAS has one pool for the process, so blocks open in several threads at
    once (the app's sessions, a Dask worker's threads, the CLI's two threads) share one
    limit: the first block to open sets it, the last to close restores what the first
    found, whichever threads those are. Separate limits would restore out of order and leave
    the process on one thread (measured with two overlapping threads). Where every BLAS
    library limits per thread (OpenMP builds), each block sets and restores its own.
    One controller for the process: ``threadpool_limits`` rescans the loaded libraries on
    every call (0.4 ms), ``ThreadpoolController.limit`` does not (16 us).
    """
    global _CONTROLLER
    if not active:
        return contextlib.nullcontext()
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    if all(getattr(lib, "threading_layer", None) == "openmp"
           for lib in _CONTROLLER.lib_controllers if lib.user_api == "blas"):
        return _CONTROLLER.limit(limits=_FACTOR_THREADS, user_api="blas")
    return _shared_limit()


@contextlib.contextmanager
def _shared_limit():
    global _LIMIT, _LIMIT_DEPTH
    entered = False
    try:
        with _LIMIT_LOCK:
            if _LIMIT_DEPTH == 0:
                _release_blas_control()
                _LIMIT = _CONTROLLER.limit(limits=_FACTOR_THREADS, user_api="blas")
            _LIMIT_DEPTH += 1
            entered = True
        yield
    finally:
        if entered:
            with _LIMIT_LOCK:
                _LIMIT_DEPTH -= 1
                if _LIMIT_DEPTH == 0:
                    limit, _LIMIT = _LIMIT, None
                    try:
                        _release_blas_control()
                        limit.restore_original_limits()
                    finally:
                        _release_blas_control()


def _release_blas_control() -> None:
    """Let the current thread set OpenBLAS's limit: recent threadpoolctl (3.8 here) lets
    only the thread that last set it change a pthreads OpenBLAS pool, and the block that
    closes a shared limit may run in another thread than the one that opened it."""
    try:
        from threadpoolctl import OpenBLASController
    except ImportError:  # older threadpoolctl: any thread may set the limit
        return
    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


def _invert(u: np.ndarray) -> np.ndarray:
    # 1/u with u >= 0; u == 0 only for an all-zero descriptor, whose prediction is fixed.
    return 1.0 / np.maximum(u, _TINY)


def _split(values: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    return np.split(values, np.cumsum(lengths)[:-1]) if lengths else []


def _test_atoms(X_test, d: int) -> tuple[np.ndarray, list[int]]:
    arrays = [_as_2d(X, f"X_test[{i}]") for i, X in enumerate(X_test)]
    for i, X in enumerate(arrays):
        if X.shape[1] != d:
            raise InputError(f"X_test[{i}]: expected {d} features, got {X.shape[1]}")
    lengths = [X.shape[0] for X in arrays]
    stacked = np.vstack(arrays) if arrays else np.empty((0, d))
    return stacked, lengths


# ---------------------------------------------------------------------- skmatter drop-ins
def local_prediction_rigidity(
    X_train: Sequence[np.ndarray], X_test: Sequence[np.ndarray], alpha: float = 1e-8
) -> tuple[list[np.ndarray], int]:
    r"""Local prediction rigidity, drop-in for ``skmatter.metrics.local_prediction_rigidity``.

    .. math::
        \mathrm{LPR}_i = \frac{1}{\mathbf{x}_i (\mathbf{X}^\top\mathbf{X}
                         + \alpha\mathbf{I})^{-1} \mathbf{x}_i^\top}

    Training rows are per-structure mean descriptors, all descriptors are divided by the
    sfactor of the training atoms (scikit-matter's convention). One eigendecomposition and a
    vectorised projection replace scikit-matter's pseudo-inverse and per-atom loop; see the
    module docstring for the (finite) treatment of rank deficiency.

    Parameters
    ----------
    X_train : list of numpy.ndarray of shape (n_atoms, n_features)
        Training descriptors, one array per training structure.
    X_test : list of numpy.ndarray of shape (n_atoms, n_features)
        Test descriptors, one array per test structure.
    alpha : float
        Regulariser of the (per-atom mean) ridge model.

    Returns
    -------
    LPR : list of numpy.ndarray of shape (n_atoms,)
        LPR of the atoms of each test structure.
    rank_diff : int
        ``n_features - rank(X^T X + alpha I)``.
    """
    solver = RigiditySolver.from_structures(X_train)
    X, lengths = _test_atoms(X_test, solver.n_features)
    return _split(solver.lpr(X, alpha), lengths), solver.rank_diff(alpha)


def componentwise_prediction_rigidity(
    X_train: Sequence[np.ndarray],
    X_test: Sequence[np.ndarray],
    alpha: float = 1e-8,
    comp_dims=None,
) -> tuple[np.ndarray, list[np.ndarray], int]:
    r"""Component-wise PR and local CPR, drop-in for scikit-matter's
    ``componentwise_prediction_rigidity``.

    .. math::
        \mathrm{CPR}_{A,c} = \frac{1}{\mathbf{x}_{A,c} (\mathbf{X}^\top\mathbf{X}
                              + \alpha\mathbf{I})^{-1} \mathbf{x}_{A,c}^\top}, \qquad
        \mathrm{LCPR}_{i,c} = \frac{1}{\mathbf{x}_{i,c} (\mathbf{X}^\top\mathbf{X}
                               + \alpha\mathbf{I})^{-1} \mathbf{x}_{i,c}^\top}

    where :math:`\mathbf{x}_{\cdot,c}` is the descriptor with every column outside
    component ``c`` set to zero, and :math:`\mathbf{x}_A` the mean row of test structure A.

    Parameters
    ----------
    X_train : list of numpy.ndarray of shape (n_atoms, n_features)
        Training descriptors, one array per training structure.
    X_test : list of numpy.ndarray of shape (n_atoms, n_features)
        Test descriptors, one array per test structure.
    alpha : float
        Regulariser of the (per-atom mean) ridge model.
    comp_dims : array-like of int, optional
        Number of consecutive columns of each component (summing to ``n_features``);
        default: one component with all columns.

    Returns
    -------
    CPR : numpy.ndarray of shape (n_test_structures, n_comps)
        Component-wise PR of each test structure.
    LCPR : list of numpy.ndarray of shape (n_atoms, n_comps)
        Local CPR of the atoms of each test structure.
    rank_diff : int
        ``n_features - rank(X^T X + alpha I)``.
    """
    solver = RigiditySolver.from_structures(X_train)
    d = solver.n_features
    comp_dims = np.array([d] if comp_dims is None else comp_dims, dtype=int).reshape(-1)
    if comp_dims.sum() != d or np.any(comp_dims < 0):
        raise InputError(
            f"comp_dims: expected non-negative sizes summing to {d} features, "
            f"got {comp_dims.tolist()}"
        )
    X, lengths = _test_atoms(X_test, d)
    rows = (
        np.vstack([Xs.mean(axis=0) for Xs in np.split(X, np.cumsum(lengths)[:-1])])
        if (lengths)
        else np.empty((0, d))
    )
    edges = np.concatenate([[0], np.cumsum(comp_dims)])
    blocks = {str(c): np.arange(edges[c], edges[c + 1]) for c in range(len(comp_dims))}
    lcpr = solver.lcpr(X, alpha, blocks)
    cpr = solver.lcpr(rows, alpha, blocks)
    LCPR = np.stack([lcpr[k] for k in blocks], axis=1)
    CPR = np.stack([cpr[k] for k in blocks], axis=1)
    return CPR, _split(LCPR, lengths), solver.rank_diff(alpha)


def lpr_sweep(X_train: Sequence[np.ndarray], X_test, alphas: Sequence[float]) -> np.ndarray:
    """LPR of test atoms for several alphas (scikit-matter's convention), one factorisation.

    Parameters
    ----------
    X_train : list of numpy.ndarray of shape (n_atoms, n_features)
        Training descriptors, one array per training structure.
    X_test : list of numpy.ndarray of shape (n_atoms, n_features) or numpy.ndarray
        Test descriptors: one array per test structure, or one (n_test_atoms, n_features)
        array.
    alphas : sequence of float
        Regularisers (``>= 0``).

    Returns
    -------
    numpy.ndarray of shape (n_alphas, n_test_atoms)
        Row ``a`` equals ``local_prediction_rigidity(X_train, X_test, alphas[a])`` with the
        test structures concatenated.
    """
    solver = RigiditySolver.from_structures(X_train)
    if isinstance(X_test, np.ndarray) and X_test.ndim == 2:
        X = X_test
    else:
        X, _ = _test_atoms(X_test, solver.n_features)
    return solver.lpr_sweep(X, alphas)


# ---------------------------------------------------------------------- data or prior?
def data_share(lpr, x_scaled_norm2, alpha: float) -> np.ndarray:
    r"""Share of each atom's rigidity that the training data provide (docs/science.md §11).

    .. math::
        s_k = 1 - \frac{\alpha / |\hat{\mathbf{x}}_k|^2}{\mathrm{LPR}_k} \in [0, 1]

    With no data ``LPR_k = alpha / |x̂_k|^2`` (x̂ the scaled model features), and data only
    add curvature, so ``LPR_k >= alpha / |x̂_k|^2``. Near 0 the regulariser, not the
    training set, sets the number; near 1 the data do.

    Parameters
    ----------
    lpr : numpy.ndarray of shape (n,)
        LPR at ``alpha`` (positive).
    x_scaled_norm2 : numpy.ndarray of shape (n,)
        ``|x̂_k|^2`` of the same atoms, scaled like the solver's features.
    alpha : float
        The regulariser the LPR was computed at (``>= 0``).

    Returns
    -------
    numpy.ndarray of shape (n,)
        In [0, 1] (clipped against round-off). 1 at ``alpha = 0``; 0 for an all-zero
        descriptor (its prediction is 0 whatever the data).
    """
    alpha = _check_alpha(alpha)
    lpr = np.asarray(lpr, dtype=np.float64).reshape(-1)
    norm2 = np.asarray(x_scaled_norm2, dtype=np.float64).reshape(-1)
    if lpr.shape != norm2.shape:
        raise InputError(f"data share: lpr has {lpr.size} atoms, x_scaled_norm2 {norm2.size}")
    share = np.zeros_like(lpr)
    ok = norm2 > 0
    with np.errstate(divide="ignore", over="ignore"):
        prior = alpha / (norm2[ok] * np.maximum(lpr[ok], _TINY))
    share[ok] = 1.0 - prior
    return np.clip(np.nan_to_num(share, nan=0.0, neginf=0.0), 0.0, 1.0)


def solver_data_share(solver: RigiditySolver, X_atoms_raw, alpha: float) -> np.ndarray:
    """:func:`data_share` of raw model features ``X_atoms_raw`` (n, d) for ``solver``.

    Parameters
    ----------
    solver : RigiditySolver
    X_atoms_raw : numpy.ndarray of shape (n, n_features)
        Raw (unscaled) model features, as for :meth:`RigiditySolver.lpr`.
    alpha : float

    Returns
    -------
    numpy.ndarray of shape (n,)
    """
    X = solver._check_features(X_atoms_raw) / solver.scale
    norm2 = np.einsum("ij,ij->i", X, X)
    return data_share(solver.lpr(X_atoms_raw, alpha), norm2, alpha)


def regulariser_limited(
    share, *, threshold: float = 0.5, majority: float = 0.5, what: str = "test atoms"
) -> str | None:
    """A warning when most atoms' rigidity comes from the regulariser, else None.

    Parameters
    ----------
    share : numpy.ndarray of shape (n,)
        :func:`data_share` of the atoms (e.g. the test atoms).
    threshold : float
        An atom is regulariser-limited when its data share is below this.
    majority : float
        Warn when more than this fraction of the atoms is regulariser-limited.
    what : str
        How the message names the atoms.

    Returns
    -------
    str or None
        One line for the UI/CLI, or None when the data set most of the rigidity.
    """
    share = np.asarray(share, dtype=np.float64).reshape(-1)
    if share.size == 0:
        return None
    frac = float(np.mean(share < threshold))
    if frac <= majority:
        return None
    return (f"{100 * frac:.0f}% of {what} have a data share below {threshold:g}: their LPR is "
            "set mostly by the regulariser alpha, not by the training data (lower alpha, "
            "or add structures like them)")


__all__ += ["data_share", "project_dot", "regulariser_limited", "solver_data_share"]
