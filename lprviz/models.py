"""Models whose LPR we study: ridge, sparse-kernel ridge (Nyström features), committees.

All models are linear in some per-atom feature vector ``phi_i`` and predict a local
contribution ``y~_i = phi_i . w / s`` per atom; totals are sums over a structure's atoms.
Training follows the per-atom-mean convention of docs/science.md §3: one row per training
structure (the mean of its atoms' features), target = energy per atom, halved loss

.. math::

    \\tfrac12 \\sum_A (y_A/n_A - \\bar\\phi_A \\cdot w / s)^2 + \\tfrac{\\alpha}{2} |w|^2,

so the weights are :math:`w = (X^T X + \\alpha I)^{-1} X^T y` with ``X`` the scaled rows:
exactly the matrix whose inverse gives the LPR. The solve goes through
:meth:`lprviz.rigidity.RigiditySolver.solve`, so the model and its LPR share one
factorisation.

Sparse kernel ridge: with ``M`` active environments chosen by farthest point sampling and
the kernel :math:`k(x, y) = (\\hat x \\cdot \\hat y)^\\zeta` of normalised descriptors, the
Nyström features :math:`\\phi = K_{MM}^{-1/2} k_M(x)` turn the projected-process loss
:math:`\\sum_A (y_A - K_{AM} b)^2 + \\lambda b^T K_{MM} b` into the linear one, so every
LPR formula is shared (docs/science.md §4).

Composition baseline: one-hot species columns appended to the features
(:func:`append_baseline`); per-species offsets are then ordinary weights, regularised and
part of the LPR.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from lprviz.errors import InputError

__all__ = [
    "Committee",
    "NystromMap",
    "RidgeModel",
    "append_baseline",
    "composition_features",
    "fit_committee",
    "fit_nystrom",
    "fit_ridge",
    "predict_forces",
]


def composition_features(atom_numbers: np.ndarray, species: Sequence[int]) -> np.ndarray:
    """One-hot species indicator of each atom.

    Parameters
    ----------
    atom_numbers : numpy.ndarray of shape (n_atoms,)
        Atomic numbers.
    species : sequence of int
        The species list defining the columns (in this order).

    Returns
    -------
    numpy.ndarray of shape (n_atoms, n_species), float64
        ``out[i, j] = 1`` if atom ``i`` is of species ``species[j]``. The per-structure mean
        of these rows is the composition (fractions); the sum is the species counts.
    """
    atom_numbers = np.asarray(atom_numbers)
    species = np.asarray(list(species))
    out = (atom_numbers[:, None] == species[None, :]).astype(np.float64)
    missing = out.sum(axis=1) == 0
    if missing.any():
        bad = sorted(set(atom_numbers[missing].tolist()))
        raise InputError(f"atomic numbers {bad} are not in the species list {species.tolist()}")
    return out


def append_baseline(
    features: np.ndarray, atom_numbers: np.ndarray, species: Sequence[int], *, scale: float
) -> np.ndarray:
    """Append one-hot species columns (a per-species composition baseline) to features.

    The one-hot columns carry the value ``scale``, the scale the rigidity solver divides all
    features by, so after scaling each is exactly 1: a per-species energy offset is
    regularised like a descriptor direction of typical (unit RMS) length. ``scale`` should be
    computed from the descriptor columns alone, so adding the baseline does not change the
    regularisation of the descriptor weights.

    Parameters
    ----------
    features : numpy.ndarray of shape (n_atoms, d)
    atom_numbers : numpy.ndarray of shape (n_atoms,)
    species : sequence of int
    scale : float

    Returns
    -------
    numpy.ndarray of shape (n_atoms, d + n_species)
    """
    onehot = composition_features(atom_numbers, species)
    return np.hstack([np.asarray(features, dtype=np.float64), scale * onehot])


@dataclass(frozen=True)
class NystromMap:
    """Nyström feature map of a polynomial kernel on normalised descriptors.

    ``transform(X) = k_M(X) V_r diag(e_r)^(-1/2)`` where ``K_MM = V diag(e) V^T`` restricted
    to eigenvalues above ``rcond * max(e)``. This is ``K_MM^(-1/2) k_M(x)`` up to the
    orthogonal rotation ``V_r`` (which changes neither predictions nor LPR), with the
    pseudo-inverse taken when ``K_MM`` is singular (duplicated active environments).

    Attributes
    ----------
    active : numpy.ndarray of shape (M, d)
        Normalised active environments.
    active_index : numpy.ndarray of shape (M,)
        Their row indices in the array given to :func:`fit_nystrom`.
    zeta : int
        Kernel exponent.
    projector : numpy.ndarray of shape (M, r)
        ``V_r diag(e_r)^(-1/2)``.
    """

    active: np.ndarray
    active_index: np.ndarray
    zeta: int
    projector: np.ndarray

    @property
    def n_features(self) -> int:
        """Width ``r`` of the Nyström features (the numerical rank of ``K_MM``)."""
        return int(self.projector.shape[1])

    def kernel(self, X: np.ndarray) -> np.ndarray:
        """Kernel rows ``(x̂ . m̂)^zeta`` against the active set, shape (n, M)."""
        return (_normalise(X) @ self.active.T) ** self.zeta

    def transform(self, X: np.ndarray, *, chunk: int = 256) -> np.ndarray:
        """Nyström features of descriptors ``X`` (n, d) -> (n, r), computed in chunks.

        Every product has the same shape (``chunk`` rows, the last chunk padded with zeros)
        and runs on one BLAS thread: a BLAS product's rounding depends on its shape and
        thread count, and a row's features must not depend on which rows it is computed
        with (the serial run transforms all atoms at once, a distributed run chunk by
        chunk; at small alpha the LPR amplifies a last-bit difference to ~1e-9).
        """
        from lprviz.rigidity import _one_thread

        X = np.asarray(X, dtype=np.float64)
        out = np.empty((X.shape[0], self.n_features))
        block = np.zeros((chunk, X.shape[1]))
        with _one_thread():
            for start in range(0, X.shape[0], chunk):
                rows = X[start : start + chunk]
                block[: len(rows)] = rows
                block[len(rows):] = 0.0
                out[start : start + len(rows)] = (self.kernel(block) @ self.projector)[: len(rows)]
        return out


def _normalise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    # an atom with an all-zero descriptor keeps a zero kernel row instead of NaN
    return np.divide(X, norms, out=np.zeros_like(X), where=norms > 0)


def fit_nystrom(
    X_atoms: np.ndarray, n_sparse: int, *, zeta: int = 2, rcond: float = 1e-10
) -> NystromMap:
    """Choose active environments by farthest point sampling and build the Nyström map.

    Parameters
    ----------
    X_atoms : numpy.ndarray of shape (n_atoms, d)
        Training atoms' descriptors (raw; normalised here).
    n_sparse : int
        Number of active environments ``M`` (capped at ``n_atoms``).
    zeta : int
        Exponent of the polynomial kernel.
    rcond : float
        Eigenvalues of ``K_MM`` below ``rcond * max`` are dropped (pseudo-inverse).

    Returns
    -------
    NystromMap
    """
    from skmatter.sample_selection import FPS

    X_atoms = np.asarray(X_atoms, dtype=np.float64)
    if n_sparse < 1:
        raise InputError(f"n_sparse: expected a positive number of active points, got {n_sparse}")
    if X_atoms.shape[0] == 0:
        raise InputError("fit_nystrom: no training atoms")
    Xn = _normalise(X_atoms)
    m = min(int(n_sparse), Xn.shape[0])
    if m == Xn.shape[0]:
        index = np.arange(m)
    else:
        selector = FPS(n_to_select=m, initialize=0).fit(Xn)
        index = np.asarray(selector.selected_idx_, dtype=np.int64)
    active = Xn[index]
    K_MM = (active @ active.T) ** zeta
    eigvals, eigvecs = np.linalg.eigh(K_MM)
    keep = eigvals > rcond * eigvals.max()
    projector = eigvecs[:, keep] / np.sqrt(eigvals[keep])
    return NystromMap(active=active, active_index=index, zeta=int(zeta), projector=projector)


@dataclass(frozen=True)
class RidgeModel:
    """A fitted linear model of local contributions.

    Attributes
    ----------
    weights : numpy.ndarray of shape (d,)
        Weights on the *scaled* features ``phi / scale``.
    alpha : float
        Regularisation.
    scale : float
        Feature scale used in training.
    """

    weights: np.ndarray
    alpha: float
    scale: float

    def predict_local(self, Phi: np.ndarray) -> np.ndarray:
        """Local contributions ``phi_i . w / scale``: (n_atoms, d) -> (n_atoms,)."""
        return np.asarray(Phi, dtype=np.float64) @ self.weights / self.scale

    def predict_total(
        self, Phi: np.ndarray, structure_index: np.ndarray, n_structures: int | None = None
    ) -> np.ndarray:
        """Structure totals (sums of local contributions): -> (n_structures,)."""
        local = self.predict_local(Phi)
        n = int(np.max(structure_index)) + 1 if n_structures is None else n_structures
        return np.bincount(structure_index, weights=local, minlength=n)

    def predict_forces(self, gradients: np.ndarray) -> np.ndarray:
        """Forces ``F_j = -sum_k (d phi_k / d r_j) . w / scale`` (eV/A), shape (n_atoms, 3).

        Parameters
        ----------
        gradients : numpy.ndarray of shape (n_atoms, 3, d_g)
            Summed position gradients of the features (:func:`lprviz.forces.position_gradients`);
            ``d_g <= d``: columns after ``d_g`` (the composition baseline) do not move.
        """
        return predict_forces(gradients, self.weights, self.scale)


def predict_forces(gradients: np.ndarray, weights: np.ndarray, scale: float) -> np.ndarray:
    """Forces of a linear model from summed feature gradients (see
    :meth:`RidgeModel.predict_forces`); float32 gradients are multiplied in float32."""
    g = np.asarray(gradients)
    w = np.asarray(weights, dtype=np.float64)[: g.shape[-1]]
    if g.dtype == np.float32:
        return -(g @ w.astype(np.float32)).astype(np.float64) / scale
    return -(g @ w) / scale


def _training_rows(
    Phi_atoms: np.ndarray, structure_index: np.ndarray, energies: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Scaled per-structure mean rows and per-atom energy targets."""
    from lprviz.rigidity import structure_features

    energies = np.asarray(energies, dtype=np.float64)
    n = len(energies)
    counts = np.bincount(structure_index, minlength=n)
    if len(counts) != n or np.any(counts == 0):
        raise InputError("training: every structure with an energy needs at least one atom")
    if not np.all(np.isfinite(energies)):
        raise InputError("training: every training structure needs a finite energy")
    rows = structure_features(Phi_atoms, structure_index, n, convention="mean") / scale
    return rows, energies / counts


def _ridge_weights(rows: np.ndarray, targets: np.ndarray, alpha: float,
                   extra_gram: np.ndarray | None = None,
                   extra_b: np.ndarray | None = None) -> np.ndarray:
    """Ridge weights ``(X^T X + E + alpha I)^-1 (X^T y + e)`` by one Cholesky solve, with
    ``E``/``e`` the (scaled, weighted) force terms when given.

    With fewer structures than features and no force terms (the usual case for an
    energy-only committee member) the dual form ``X^T (X X^T + alpha I)^-1 y`` is the same
    vector at a fraction of the cost; no eigendecomposition is needed because no LPR is asked
    of a member. ``alpha = 0`` falls back to the minimum-norm least-squares solution, as
    :meth:`RigiditySolver.solve` does.
    """
    n, d = rows.shape
    if extra_gram is not None:
        gram = rows.T @ rows + extra_gram
        b = rows.T @ targets + extra_b
        if alpha <= 0:
            return np.linalg.lstsq(gram, b, rcond=None)[0]
        gram[np.diag_indices(d)] += alpha
        return scipy.linalg.solve(gram, b, assume_a="pos")
    if alpha <= 0:
        return np.linalg.lstsq(rows, targets, rcond=None)[0]
    if n < d:
        gram = rows @ rows.T
        gram[np.diag_indices(n)] += alpha
        return rows.T @ scipy.linalg.solve(gram, targets, assume_a="pos")
    gram = rows.T @ rows
    gram[np.diag_indices(d)] += alpha
    return scipy.linalg.solve(gram, rows.T @ targets, assume_a="pos")


def fit_ridge(
    Phi_atoms: np.ndarray,
    structure_index: np.ndarray,
    energies: np.ndarray,
    alpha: float,
    *,
    solver=None,
    scale: float | None = None,
    forces=None,
    force_weight: float | None = None,
) -> RidgeModel:
    """Ridge regression of energies per atom on per-structure mean features (and forces).

    With ``forces`` (a :class:`lprviz.forces.ForceGram` of the training frames) and
    ``force_weight`` :math:`\\lambda_F`, the loss gains :math:`\\frac{\\lambda_F}{2}\\sum_A
    \\sum_{i\\in A}|F_i^\\mathrm{ref} - F_i|^2` and the weights are
    :math:`(X^T X + \\lambda_F G^T G + \\alpha I)^{-1}(X^T y + \\lambda_F G^T F)`.

    Parameters
    ----------
    Phi_atoms : numpy.ndarray of shape (n_atoms, d)
        Training atoms' raw features (descriptors, Nyström features, + baseline columns).
    structure_index : numpy.ndarray of shape (n_atoms,)
        Training structure (0..n_structures-1) of each atom.
    energies : numpy.ndarray of shape (n_structures,)
        Total energies of the training structures.
    alpha : float
        Regularisation (on scaled features).
    solver : lprviz.rigidity.RigiditySolver, optional
        Built from the same ``Phi_atoms``/``structure_index``; reused (one factorisation
        shared with the LPR). Built here when not given.
    scale : float, optional
        Fixed feature scale when the solver is built here (default: scikit-matter's sfactor).
    forces : lprviz.forces.ForceGram, optional
        Force rows of the training frames (raw features, same columns as ``Phi_atoms``).
    force_weight : float, optional
        :math:`\\lambda_F` in A^2/atom^2 (energies enter per atom); required with ``forces``.
        A given ``solver`` must then have been built with the same weighted force Gram.

    Returns
    -------
    RidgeModel
        ``weights = solver.solve(X^T y + lambda_F G^T F / s, alpha)`` with ``X`` the scaled
        mean rows.
    """
    from lprviz.rigidity import RigiditySolver, sfactor, structure_features

    structure_index = np.asarray(structure_index)
    if (forces is None) != (force_weight is None):
        raise InputError("fit_ridge: give forces and force_weight together")
    if solver is None:
        if forces is None:
            solver = RigiditySolver.from_atoms(Phi_atoms, structure_index, scale=scale)
        else:
            Phi = np.asarray(Phi_atoms, dtype=np.float64)
            solver = RigiditySolver.from_rows(
                structure_features(Phi, structure_index, convention="mean"),
                scale=sfactor(Phi) if scale is None else scale,
                extra_gram=force_weight * forces.gram, n_extra_rows=forces.n_rows,
            )
    rows, targets = _training_rows(Phi_atoms, structure_index, energies, solver.scale)
    b = rows.T @ targets
    if forces is not None:
        b = b + force_weight * forces.gtf / solver.scale
    weights = np.asarray(solver.solve(b, alpha)).reshape(-1)
    return RidgeModel(weights=weights, alpha=float(alpha), scale=float(solver.scale))


@dataclass(frozen=True)
class Committee:
    """Ridge models trained on random subsets of the training structures.

    Attributes
    ----------
    models : tuple of RidgeModel
    subsets : tuple of numpy.ndarray
        Training-structure indices each model saw.
    """

    models: tuple[RidgeModel, ...]
    subsets: tuple[np.ndarray, ...]

    def predict_local(self, Phi: np.ndarray) -> np.ndarray:
        """Local predictions of every member, shape (n_models, n_atoms)."""
        return np.stack([m.predict_local(Phi) for m in self.models])

    def spread(self, Phi: np.ndarray) -> np.ndarray:
        """Per-atom standard deviation (ddof=1) of the members' local predictions, (n_atoms,).

        The empirical counterpart of ``1/LPR``: large where the local prediction is poorly
        determined by the training data.
        """
        return self.predict_local(Phi).std(axis=0, ddof=1)


def fit_committee(
    Phi_atoms: np.ndarray,
    structure_index: np.ndarray,
    energies: np.ndarray,
    alpha: float,
    *,
    n_models: int = 8,
    fraction: float = 0.8,
    seed: int = 0,
    scale: float | None = None,
    force_gradients: np.ndarray | None = None,
    forces: np.ndarray | None = None,
    force_weight: float | None = None,
) -> Committee:
    """Train ``n_models`` ridge models, each on a random ``fraction`` of the structures.

    All members share one fixed feature scale (``scale``, default the sfactor of all
    training atoms), so they differ only by the data they saw. With force terms, each member
    is fitted to the energies and forces of its structures (as :func:`fit_ridge`).

    Parameters
    ----------
    Phi_atoms, structure_index, energies, alpha
        As in :func:`fit_ridge`.
    n_models : int
        Committee size (>= 2).
    fraction : float
        Fraction of training structures per member, in (0, 1].
    seed : int
        Seed of the subset draws.
    scale : float, optional
        Fixed feature scale.
    force_gradients : numpy.ndarray of shape (n_atoms, 3, d_base), optional
        Summed position gradients of each atom's raw features (``Fit.force_gradients`` of
        the same atoms; the ``d - d_base`` baseline columns have none).
    forces : numpy.ndarray of shape (n_atoms, 3), optional
        Reference forces (eV/A); structures with a non-finite row count for energies only.
    force_weight : float, optional
        :math:`\\lambda_F` (A^2/atom^2); the three force arguments go together.

    Returns
    -------
    Committee
    """
    from lprviz.rigidity import sfactor

    if n_models < 2:
        raise InputError(f"committee: expected n_models >= 2, got {n_models}")
    if not 0 < fraction <= 1:
        raise InputError(f"committee: expected 0 < fraction <= 1, got {fraction}")
    given = [x is not None for x in (force_gradients, forces, force_weight)]
    if any(given) and not all(given):
        raise InputError("committee: give force_gradients, forces and force_weight together")
    Phi_atoms = np.asarray(Phi_atoms, dtype=np.float64)
    structure_index = np.asarray(structure_index)
    energies = np.asarray(energies, dtype=np.float64)
    n = len(energies)
    scale = float(sfactor(Phi_atoms)) if scale is None else float(scale)
    size = max(1, int(round(fraction * n)))
    rng = np.random.default_rng(seed)
    grams = None
    if force_weight is not None:
        grams = _SubsetForceGrams(force_gradients, forces, structure_index, n,
                                  Phi_atoms.shape[1])
    models, subsets = [], []
    for _ in range(n_models):
        chosen = np.sort(rng.choice(n, size=size, replace=False))
        remap = np.full(n, -1)
        remap[chosen] = np.arange(size)
        atoms = remap[structure_index] >= 0
        rows, targets = _training_rows(
            Phi_atoms[atoms], remap[structure_index[atoms]], energies[chosen], scale
        )
        if grams is None:
            weights = _ridge_weights(rows, targets, alpha)
        else:
            fg = grams.of(chosen)
            weights = _ridge_weights(rows, targets, alpha, force_weight * fg.gram / scale**2,
                                     force_weight * fg.gtf / scale)
        models.append(RidgeModel(weights=weights, alpha=float(alpha), scale=scale))
        subsets.append(chosen)
    return Committee(models=tuple(models), subsets=tuple(subsets))


class _SubsetForceGrams:
    """Force Grams (raw features) of subsets of the structures: the Gram of all structures
    once, then per subset the structures left out subtracted when they are fewer (a 70 %
    member costs 30 % of a Gram, not 70 %)."""

    def __init__(self, gradients: np.ndarray, forces: np.ndarray, structure_index: np.ndarray,
                 n: int, d: int) -> None:
        self.gradients = np.asarray(gradients)
        self.forces = np.asarray(forces, dtype=np.float64)
        if (self.gradients.ndim != 3 or self.gradients.shape[:2] != (len(structure_index), 3)
                or self.forces.shape != (len(structure_index), 3)):
            raise InputError(f"committee: expected force_gradients of shape "
                             f"({len(structure_index)}, 3, d) and forces "
                             f"({len(structure_index)}, 3), got {self.gradients.shape} and "
                             f"{self.forces.shape}")
        self.order = np.argsort(structure_index, kind="stable")
        self.bounds = np.concatenate([[0], np.cumsum(np.bincount(structure_index,
                                                                 minlength=n))])
        ok = np.isfinite(self.forces).all(axis=1)
        self.has = np.array([ok[self.order[a:b]].all() for a, b in
                             zip(self.bounds[:-1], self.bounds[1:], strict=True)])
        self.n_extra = d - self.gradients.shape[2]
        self.total = self._gram(np.arange(n))

    def _gram(self, frames: np.ndarray):
        from lprviz.forces import ForceGramBuilder

        builder = ForceGramBuilder()
        for f in frames:
            if self.has[f]:
                atoms = self.order[self.bounds[f] : self.bounds[f + 1]]
                builder.add(self.gradients[atoms], self.forces[atoms])
        out = builder.result(self.n_extra)
        if out.gram.size == 0:  # no structure with forces: zero force terms
            d = self.gradients.shape[2] + self.n_extra
            return type(out)(np.zeros((d, d)), np.zeros(d), 0, 0)
        return out

    def of(self, chosen: np.ndarray):
        left = np.setdiff1d(np.arange(len(self.has)), chosen)
        if left.size >= chosen.size:
            return self._gram(chosen)
        out = self._gram(left)
        return type(out)(self.total.gram - out.gram, self.total.gtf - out.gtf,
                         self.total.n_rows - out.n_rows, self.total.n_frames - out.n_frames)
