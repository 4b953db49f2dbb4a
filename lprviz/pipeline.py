"""From a dataset and its descriptors to per-atom LPR and local energies (CLI and app).

Two steps, split by what depends on the regulariser ``alpha``:

* :func:`prepare` does everything that does not: the feature map (raw SOAP, or Nyström
  features of a sparse kernel), the scale, the per-species baseline columns, the
  :class:`~lprviz.rigidity.RigiditySolver` of the training frames (one ``d x d``
  eigendecomposition), the projections of *all* atoms and frames on its eigenbasis, and
  ``X^T y``.
* :func:`evaluate` is cheap: for a new ``alpha`` one pass over the cached projections and
  one ``d``-sized solve give the LPR, the undetermined flags, the ridge model's local
  energies, predicted totals and the PR of every frame.

Conventions are those of :mod:`lprviz.models` (per-atom mean rows, energies per atom,
halved loss, features divided by the scale). All per-atom arrays are in dataset atom order.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from lprviz.errors import InputError
from lprviz.features import Descriptors, SoapHypers
from lprviz.forces import (
    ForceGramBuilder,
    check_gradient_bytes,
    has_forces,
    position_gradients,
    reference_forces,
)
from lprviz.gramsum import atom_sumsq, block_stops, model_sums
from lprviz.limits import check_number, get_limits
from lprviz.models import (
    NystromMap,
    composition_features,
    fit_nystrom,
    predict_forces,
)
from lprviz.nn import NNFeatureMap, fit_nn, torch_missing
from lprviz.rigidity import (
    RigiditySolver,
    data_share,
    sfactor,
    structure_features,
)

_CHUNK = 4096  # atoms per projection block (bounds the float64 temporary at _CHUNK x d)

__all__ = [
    "ALPHA_RANGE", "DEFAULT_FORCE_WEIGHT", "FORCE_WEIGHT_RANGE", "MODEL_KINDS", "SCALE_RANGE",
    "Fit", "ModelSpec", "Results", "coordination",
    "alpha_index", "evaluate", "evaluate_features", "prepare", "reference_space",
]

MODEL_KINDS = ("linear", "sparse-kernel", "nn")

#: Accepted regulariser values (features are scaled to |x|^2 ~ 1, so alpha >> 1 already
#: means the data no longer matter; far larger values overflow the LPR).
ALPHA_RANGE = (0.0, 1e12)

#: Accepted fixed feature scales (their squares must stay finite floats).
SCALE_RANGE = (1e-100, 1e100)

#: Accepted force weights lambda_F (A^2/atom^2).
FORCE_WEIGHT_RANGE = (0.0, 1e6)

#: Default force weight lambda_F (A^2/atom^2): forces and energies then add about equal
#: curvature, tr(lambda_F G^T G) ~ tr(X^T X), measured at the default SOAP on every frame of
#: emt-alloys (equal at 0.045) and of real Si, mlearn training file (0.021); docs/science.md §12.
DEFAULT_FORCE_WEIGHT = 0.03


@dataclass(frozen=True)
class ModelSpec:
    """Which model the LPR is computed for.

    Parameters
    ----------
    kind : {"linear", "sparse-kernel", "nn"}
        Ridge regression on the SOAP vectors, sparse kernel ridge (Nyström features of
        ``(x̂ . ŷ)^zeta`` with ``n_sparse`` FPS-selected active environments), or the linear
        readout of a small neural network trained on the training frames' SOAP
        (:mod:`lprviz.nn`; its LPR is the last-layer prediction rigidity). "nn" needs torch
        (``pip install 'lprviz[nn]'``).
    baseline : bool
        Append per-species one-hot columns (a composition baseline that is part of the
        model and of the LPR; see :func:`lprviz.models.append_baseline`).
    n_sparse : int
        Number of active environments (sparse-kernel only).
    zeta : int
        Kernel exponent (sparse-kernel only).
    force_weight : float or None
        Train on forces too with this weight :math:`\\lambda_F` (A^2/atom^2), as
        ``prepare(..., force_weight=)`` (which overrides it); None: energies only. Part of the
        spec so every cache keyed by the model tells force-trained fits apart.
    hidden : int
        Width of the network's hidden layers (nn only): its last-layer feature count.
    seed : int
        Seed of the network's initial weights and held-out frames (nn only).
    """

    kind: str = "linear"
    baseline: bool = True
    n_sparse: int = 500
    zeta: int = 2
    force_weight: float | None = None
    hidden: int = 32
    seed: int = 0

    #: Accepted ranges (inclusive). The model width ``d`` has its own limit, checked by
    #: :func:`prepare` (``Limits.max_features``).
    RANGES: ClassVar[dict[str, tuple[int, int]]] = {
        "n_sparse": (1, 1_000_000), "zeta": (1, 10), "hidden": (1, 1024), "seed": (0, 2**31 - 1)}

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise InputError(f"model: expected one of {', '.join(MODEL_KINDS)}, got {self.kind!r}")
        if self.kind == "nn" and torch_missing() is not None:
            raise InputError(f"model nn: {torch_missing()}")
        for name, (low, high) in self.RANGES.items():
            object.__setattr__(self, name, check_number(name, getattr(self, name), low, high,
                                                        integer=True))
        if self.force_weight is not None:
            object.__setattr__(self, "force_weight",
                               check_number("force_weight", self.force_weight,
                                            *FORCE_WEIGHT_RANGE))


@dataclass(eq=False)
class Fit:
    """Everything about a training set that does not depend on ``alpha``.

    Attributes
    ----------
    spec : ModelSpec
    train_mask : numpy.ndarray of shape (n_frames,), bool
        Training frames.
    solver : lprviz.rigidity.RigiditySolver
        Built from the training frames' model features.
    scale : float
        Feature scale (of the descriptor/Nyström columns; the baseline columns are set to it).
    species : tuple of int
        Species list of the baseline columns.
    nystrom : NystromMap or None
        Feature map of the sparse-kernel model.
    structure_index : numpy.ndarray of shape (n_atoms,)
    projections : numpy.ndarray of shape (n_atoms, d) or (n_atoms, r), float32
        ``solver.projections`` of every atom's model features, stored as float32 (4 d bytes
        per atom: 5.9 kB at d = 1473; LPR within a relative 1e-5 of float64, see
        :meth:`lprviz.rigidity.RigiditySolver.projections`; local energies within ~1e-6 eV,
        see :func:`lprviz.rigidity.project_dot`; float32 descriptors of the linear model are
        projected in float32, see ``_projections``: 7e-5 at alpha 1e-8). On the solver's
        dual route (fewer than d / 2 training structures ``r``) the fit is *thin*: these are
        only the ``r`` coordinates in the training span (``solver.thin_projections``; 4 r
        bytes per atom, d / r times less) and :attr:`residual2` holds the rest. Use
        :meth:`atom_projections` for the full ``d`` of some atoms, and :func:`evaluate`,
        :func:`lpr_sweep`, :func:`scaled_norm2` rather than reading them directly.
    structure_projections : numpy.ndarray of shape (n_frames, d)
        ``solver.projections`` of every frame's mean feature row (for the PR).
    xty : numpy.ndarray of shape (d,)
        ``X^T y`` of the scaled training rows and energies per atom.
    energies : numpy.ndarray of shape (n_frames,)
        Reference total energies (NaN where unknown).
    true_local_energies : numpy.ndarray of shape (n_atoms,) or None
        Reference local energies when the dataset has them (EMT sets).
    hypers : lprviz.features.SoapHypers or None
        SOAP hyper-parameters of the descriptors (for provenance in exported files).
    force_weight : float or None
        :math:`\\lambda_F` (A^2/atom^2) of a force-trained model, else None.
    force_gradients : numpy.ndarray of shape (n_atoms, 3, d_base), float32, or None
        Summed position gradients of every atom's descriptor (or Nyström) columns
        (:func:`lprviz.forces.position_gradients`), for the predicted forces; None when the
        model is not force-trained or ``prepare(..., project=False)``.
    forces : numpy.ndarray of shape (n_atoms, 3) or None
        Reference forces (eV/A; NaN rows for frames without forces) of a force-trained fit.
    notice : str or None
        One line for the user (training frames used for energies only), else None.
    residual2 : numpy.ndarray of shape (n_atoms,) or None
        Thin fit only: every atom's squared scaled-feature norm outside the training span.
    atom_rows : callable or None
        Thin fit only: ``atom_rows(index) -> (descriptor values, atomic numbers)`` of those
        atoms, read from the descriptors the fit was prepared from (referenced, not copied,
        and not counted as the fit's memory); what :meth:`atom_projections` projects.
    features : dict of str to str
        Where the descriptors come from (``Descriptors.provenance``, :mod:`lprviz.sources`).
    nn : lprviz.nn.NNFeatureMap or None
        The trained network of the nn model (its last hidden layer are the model features).
    """

    spec: ModelSpec
    train_mask: np.ndarray
    solver: RigiditySolver
    scale: float
    species: tuple[int, ...]
    nystrom: NystromMap | None
    structure_index: np.ndarray
    projections: np.ndarray
    structure_projections: np.ndarray
    xty: np.ndarray
    energies: np.ndarray
    true_local_energies: np.ndarray | None = None
    hypers: SoapHypers | None = None
    force_weight: float | None = None
    force_gradients: np.ndarray | None = None
    forces: np.ndarray | None = None
    notice: str | None = None
    residual2: np.ndarray | None = None
    atom_rows: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    features: dict[str, str] = field(default_factory=dict)
    nn: NNFeatureMap | None = None

    @property
    def n_frames(self) -> int:
        """Number of frames of the dataset."""
        return len(self.train_mask)

    @property
    def thin(self) -> bool:
        """True when :attr:`projections` hold only the training-span coordinates."""
        return self.residual2 is not None

    def atom_projections(self, index) -> np.ndarray:
        """Full ``solver.projections`` (n, d) of the atoms ``index`` (e.g. a target set for
        :func:`lprviz.suggest.suggest_from_projections`): the cached rows, or for a thin fit
        the atoms' model features projected now (``O(len(index) d^2)``)."""
        if not self.thin:
            return self.projections[index]
        values, numbers = self.atom_rows(np.asarray(index))
        return self.solver.projections(self.model_features(values, numbers))

    def model_features(self, values: np.ndarray, atom_numbers: np.ndarray) -> np.ndarray:
        """Raw model features of descriptors ``values`` (n, d_soap) -> (n, d).

        Use this to add structures to :attr:`solver` (``solver.with_structures``) or to
        compute the LPR of new atoms with the same model.
        """
        phi, baseline = self.model_feature_blocks(values, atom_numbers)
        return phi if baseline is None else np.hstack([phi, baseline])

    def model_feature_blocks(
        self, values: np.ndarray, atom_numbers: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`model_features` as two column blocks, not stacked into one copy: the
        readout's features (``values`` themselves for the linear model) and the baseline's
        one-hot species columns times :attr:`scale` (None without the baseline; see
        :func:`lprviz.models.append_baseline`). :func:`evaluate_features` takes them as
        they are."""
        phi = np.asarray(self._readout(values, atom_numbers), dtype=np.float64)
        if not self.spec.baseline:
            return phi, None
        return phi, self.scale * composition_features(atom_numbers, self.species)

    def _readout(self, values: np.ndarray, atom_numbers: np.ndarray) -> np.ndarray:
        if self.nystrom is not None:
            return self.nystrom.transform(values)
        if self.nn is not None:
            return self.nn.transform(values, atom_numbers)
        return values


@dataclass(eq=False)
class Results:
    """LPR and model predictions at one ``alpha``.

    Attributes
    ----------
    alpha : float
    train_mask : numpy.ndarray of shape (n_frames,), bool
    lpr : numpy.ndarray of shape (n_atoms,)
        Local prediction rigidity of every atom (finite, positive).
    undetermined : numpy.ndarray of shape (n_atoms,), bool
        Atoms whose local prediction the data do not determine at this alpha.
    local_energy : numpy.ndarray of shape (n_atoms,)
        The ridge model's local energy of every atom (eV).
    energy_pred : numpy.ndarray of shape (n_frames,)
        Predicted total energies (sums of ``local_energy``).
    pr : numpy.ndarray of shape (n_frames,)
        Prediction rigidity of every frame's total (mean-row) prediction.
    rank_diff : int
        Rank deficiency of the regularised normal matrix (0 when well determined).
    energies : numpy.ndarray of shape (n_frames,)
        Reference total energies (NaN where unknown).
    true_local_energies : numpy.ndarray of shape (n_atoms,) or None
        Reference local energies when the dataset has them.
    data_share : numpy.ndarray of shape (n_atoms,) or None
        Share of each atom's LPR the training data provide, in [0, 1]
        (:func:`lprviz.rigidity.data_share`); near 0 the regulariser sets the LPR.
    spec, scale, hypers, n_active
        The model of the :class:`Fit` these results come from (provenance for exported files;
        small copies, so cached results do not keep the fit's projections alive): its
        :class:`ModelSpec`, feature scale, SOAP hyper-parameters and, for the sparse kernel,
        the number of active environments actually used.
    forces_pred : numpy.ndarray of shape (n_atoms, 3) or None
        Predicted forces (eV/A) of a force-trained model.
    forces : numpy.ndarray of shape (n_atoms, 3) or None
        Reference forces where known (NaN rows elsewhere) of a force-trained model.
    force_weight : float or None
        :math:`\\lambda_F` of the model (provenance).
    notice : str or None
        The fit's one-line notice (training frames used for energies only), for display.
    features : dict of str to str or None
        Where the descriptors come from (:attr:`Fit.features`).
    """

    alpha: float
    train_mask: np.ndarray
    lpr: np.ndarray
    undetermined: np.ndarray
    local_energy: np.ndarray
    energy_pred: np.ndarray
    pr: np.ndarray
    rank_diff: int
    energies: np.ndarray
    true_local_energies: np.ndarray | None = None
    data_share: np.ndarray | None = None
    spec: ModelSpec | None = None
    scale: float | None = None
    hypers: SoapHypers | None = None
    n_active: int | None = None
    forces_pred: np.ndarray | None = None
    forces: np.ndarray | None = None
    force_weight: float | None = None
    notice: str | None = None
    features: dict[str, str] | None = None

    @property
    def local_error(self) -> np.ndarray | None:
        """``local_energy - true_local_energies`` (n_atoms,), or None when unknown.

        The split of a total into local terms is a model choice (docs/science.md §1): this error
        is meaningful against an additive reference such as EMT, up to per-species offsets
        the model is free to shift.
        """
        if self.true_local_energies is None:
            return None
        return self.local_energy - self.true_local_energies

    @property
    def energy_error(self) -> np.ndarray:
        """``energy_pred - energies`` per frame (NaN where the energy is unknown)."""
        return self.energy_pred - self.energies


def prepare(
    dataset,
    descriptors: Descriptors,
    train_mask: np.ndarray,
    spec: ModelSpec | None = None,
    *,
    scale: float | None = None,
    nystrom: NystromMap | None = None,
    nn: NNFeatureMap | None = None,
    project: bool = True,
    force_weight: float | None = None,
) -> Fit:
    """Build the alpha-independent part of a model and its LPR.

    Parameters
    ----------
    dataset : lprviz.datasets.Dataset
        Frames, energies (training frames need them) and optional true local energies.
    descriptors : Descriptors
        Descriptors of ``dataset.frames`` (same atoms, same order).
    train_mask : numpy.ndarray of shape (n_frames,), bool
        Training frames.
    spec : ModelSpec, optional
        Model (default ``ModelSpec()``).
    scale : float, optional
        Fixed feature scale; default: sfactor of the training atoms' descriptor (or Nyström)
        columns. Hold it fixed to compare two training sets.
    nystrom : NystromMap, optional
        Sparse-kernel model only: reuse this feature map (active environments) instead of
        choosing one from the training atoms. To compare two training sets, pass set A's
        ``fit.nystrom`` and ``fit.scale`` when preparing set B: otherwise B lives in a
        different feature space and its LPR is not comparable (it may even drop).
    nn : lprviz.nn.NNFeatureMap, optional
        nn model only: reuse this trained network instead of training one on the training
        frames (to compare training sets in one feature space, as ``nystrom``).
    project : bool
        Compute the projections of every atom and frame (what :func:`evaluate` needs). With
        False they are left empty (shape ``(0, d)``) and no full eigenbasis is built: for
        callers that stream their atoms through ``fit.solver`` (``lprviz lpr``).
    force_weight : float, optional
        Train on forces too, with weight :math:`\\lambda_F` in A^2/atom^2 (energies enter per
        atom, forces in eV/A; :data:`DEFAULT_FORCE_WEIGHT` is the reasoned default): the
        solver then holds :math:`\\bar X^T \\bar X + \\lambda_F \\sum_A G_A^T G_A`
        (docs/science.md §12). Training frames without forces count for energies only
        (``fit.notice`` says so); none with forces is an InputError.

    Returns
    -------
    Fit

    Raises
    ------
    InputError
        Mismatched shapes, no training frame, a training frame without energy, ``scale``
        outside :data:`SCALE_RANGE`, or a model wider than ``Limits.max_features`` (or whose
        ``n_atoms x d`` features exceed ``Limits.max_array_bytes``), refused before the
        ``d x d`` matrix is built.
    """
    spec = ModelSpec() if spec is None else spec
    if scale is not None:
        scale = check_number("scale", scale, *SCALE_RANGE)
    n_frames = len(dataset.frames)
    train_mask = np.asarray(train_mask)
    if train_mask.dtype != bool or train_mask.shape != (n_frames,):
        raise InputError(
            f"train_mask: expected {n_frames} booleans (one per frame of '{dataset.name}'), "
            f"got shape {train_mask.shape} of dtype {train_mask.dtype}"
        )
    if not train_mask.any():
        raise InputError(f"dataset '{dataset.name}': no training frame selected")
    structure_index = np.asarray(dataset.structure_index)
    # float32 descriptors (the app's) stay float32 for the linear model: a float64 copy of
    # them all (1.2 GB at 100k atoms) is made only for the models that transform them
    raw = np.asarray(descriptors.values)
    if raw.shape[0] != len(structure_index) or not np.array_equal(
        descriptors.atom_numbers, dataset.atom_numbers
    ):
        raise InputError(
            f"descriptors: {raw.shape[0]} rows do not match the {len(structure_index)} atoms "
            f"of dataset '{dataset.name}'"
        )
    energies = np.asarray(dataset.energies, dtype=np.float64)
    missing = np.flatnonzero(train_mask & ~np.isfinite(energies))
    if missing.size:
        first = dataset.names[missing[0]]
        raise InputError(
            f"dataset '{dataset.name}': {missing.size} training frame(s) have no energy "
            f"(first: frame {missing[0]} '{first}'); training frames need energies"
        )

    atom_train = train_mask[structure_index]
    sizes = np.bincount(structure_index, minlength=n_frames)
    _check_model_size(dataset, descriptors, spec, int(atom_train.sum()), nystrom)
    if nystrom is not None and spec.kind != "sparse-kernel":
        raise InputError("nystrom: a feature map only applies to the sparse-kernel model")
    if nn is not None and spec.kind != "nn":
        raise InputError("nn: a trained network only applies to the nn model")
    if spec.kind != "linear":
        values = np.asarray(raw, dtype=np.float64)
    if spec.kind == "sparse-kernel":
        if nystrom is None:
            nystrom = fit_nystrom(values[atom_train], spec.n_sparse, zeta=spec.zeta)
        base = nystrom.transform(values)
    elif spec.kind == "nn":
        if nn is None:
            if np.any(sizes[train_mask] == 0):
                raise InputError(f"dataset '{dataset.name}': a training frame has no atom")
            nn = fit_nn(values[atom_train], descriptors.atom_numbers[atom_train],
                        np.cumsum(train_mask)[structure_index[atom_train]] - 1,
                        energies[train_mask], species=descriptors.species,
                        hidden=spec.hidden, seed=spec.seed)
        base = nn.transform(values, descriptors.atom_numbers)
    else:
        base = raw
    # Row norms of all atoms once: the sfactor of the training atoms without copying them,
    # and a finiteness check of every feature (a NaN or inf makes its row's norm non-finite).
    rows, norm2 = _structure_rows(base, structure_index, sizes)
    if not np.all(np.isfinite(norm2)):
        raise InputError(f"descriptors of dataset '{dataset.name}' contain NaN or inf")
    if scale is None:
        scale = float(np.sqrt(atom_sumsq(norm2[atom_train], sizes[train_mask])
                              / max(int(atom_train.sum()), 1)))
    scale = float(scale)
    species = tuple(descriptors.species)
    # The model features are [base, scale * one-hot species] (models.append_baseline); they
    # are never stacked into one n_atoms x d array here: rows and projections are built per
    # block (the stacking copied 1.2 GB and cost more than half a projection at 100k atoms).
    extra = composition = None
    if spec.baseline:
        composition = composition_features(dataset.atom_numbers, species)
        extra = scale * composition
        rows = np.hstack([rows, structure_features(extra, structure_index, n_frames)])
    trained = None
    if force_weight is None:
        force_weight = spec.force_weight
    if force_weight is not None:
        force_weight = check_number("force_weight", force_weight, *FORCE_WEIGHT_RANGE)
        if spec.kind == "nn" or getattr(descriptors, "hypers", None) is None:
            raise InputError("forces: training on forces needs SOAP features and the linear or "
                             "sparse-kernel model (no position gradients of this source)")
        trained = _force_training(dataset, descriptors, train_mask, base.shape[1],
                                  0 if extra is None else extra.shape[1], nystrom, project)
    # X^T X and X^T y in lprviz.gramsum's fixed order (a distributed run sums the same way)
    keep = train_mask & (sizes > 0)
    y = energies[keep] / sizes[keep]
    gram, xty = model_sums(rows[keep], y, sizes[keep], scale, None if composition is None else
                           structure_features(composition, structure_index, n_frames)[keep])
    xty = xty / scale
    if trained is not None:
        solver = RigiditySolver.from_gram(
            gram + force_weight * trained[0].gram, scale=scale, n_structures=int(keep.sum()),
            n_extra_rows=trained[0].n_rows,
        )
    else:
        solver = RigiditySolver.from_gram(gram, scale=scale, n_structures=int(keep.sum()),
                                          rows_raw=rows[keep])
    if trained is not None:
        xty = xty + force_weight * trained[0].gtf / scale
    # Thin on the dual route only: near d training structures it saves little memory, and
    # most atoms then lie close to the span, so their residuals are formed explicitly at the
    # cost of a second projection (measured 2.3x the prepare time at 100k atoms, r = 0.9 d).
    thin = project and solver.route == "dual"
    if thin:
        projections, residual2 = solver.thin_projections(base, extra)
    else:
        residual2 = None
        # float32 descriptors of a linear model: project them as they are (see _projections)
        as_given = spec.kind == "linear" and descriptors.values.dtype == np.float32
        projections = (_projections(solver, descriptors.values if as_given else base, extra)
                       if project else np.empty((0, solver.n_features), dtype=np.float32))
    numbers = np.asarray(descriptors.atom_numbers)
    return Fit(
        spec=spec,
        train_mask=train_mask.copy(),
        solver=solver,
        scale=scale,
        species=species,
        nystrom=nystrom,
        structure_index=structure_index,
        projections=projections,
        structure_projections=solver.projections(rows if project else rows[:0]),
        xty=xty,
        energies=energies,
        true_local_energies=getattr(dataset, "true_local_energies", None),
        hypers=getattr(descriptors, "hypers", None),
        force_weight=force_weight,
        force_gradients=None if trained is None else trained[1],
        forces=None if trained is None else trained[3],
        notice=None if trained is None else trained[2],
        residual2=residual2,
        # only a thin fit needs them (and it keeps the caller's descriptors alive)
        atom_rows=((lambda index: (np.asarray(raw[index], dtype=np.float64), numbers[index]))
                   if thin else None),
        features=dict(getattr(descriptors, "provenance", None) or {}),
        nn=nn,
    )


def _structure_rows(base: np.ndarray, structure_index: np.ndarray,
                    sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean rows of every frame and squared norms of every atom of ``base``.

    Atoms in frame order are taken in blocks of whole frames of about ``_CHUNK`` atoms and
    converted to float64 one block at a time (a float32 ``base`` is never copied whole). A
    row or norm depends only on its own atoms, so the bits do not depend on the blocks: the
    distributed run (its chunks of float64 rows) gets the same ones.
    """
    n_frames = len(sizes)
    if structure_index.size and np.any(np.diff(structure_index) < 0):  # not in frame order
        stops = np.array([n_frames])
    else:
        stops = block_stops(sizes, _CHUNK)
    ends = np.concatenate([[0], np.cumsum(sizes)])
    rows = np.empty((n_frames, base.shape[1]))
    norm2 = np.empty(base.shape[0])
    first = 0
    for stop in stops.tolist():
        atoms = slice(ends[first], ends[stop])
        block = np.asarray(base[atoms], dtype=np.float64)
        norm2[atoms] = np.einsum("ij,ij->i", block, block)
        rows[first:stop] = structure_features(block, structure_index[atoms] - first,
                                              stop - first, convention="mean")
        first = stop
    return rows, norm2


def _force_training(dataset, descriptors: Descriptors, train_mask: np.ndarray, d_base: int,
                    n_baseline: int, nystrom: NystromMap | None, keep: bool):
    """Force Gram of the training frames with forces, the float32 summed gradients of every
    atom (``keep``; else None), the notice about training frames without forces and the
    reference forces (n_atoms, 3), from one featomic pass over the frames needed."""
    frames = dataset.frames
    has = np.array([has_forces(a) for a in frames], dtype=bool)
    use = train_mask & has
    if not use.any():
        raise InputError(
            f"dataset '{dataset.name}': no training frame has forces (finite, one per atom); "
            "train on energies only or add forces"
        )
    n_without = int((train_mask & ~has).sum())
    notice = None
    if n_without:
        first = dataset.names[int(np.flatnonzero(train_mask & ~has)[0])]
        notice = (f"dataset '{dataset.name}': {n_without} of {int(train_mask.sum())} training "
                  f"frames have no forces (first: '{first}'); they are used for energies only")
    wanted = np.arange(len(frames)) if keep else np.flatnonzero(use)
    grads = None
    if keep:
        check_gradient_bytes(len(dataset.structure_index), d_base, f"dataset '{dataset.name}'")
        grads = np.empty((len(dataset.structure_index), 3, d_base), dtype=np.float32)
    starts = np.asarray(dataset.frame_starts)
    builder = ForceGramBuilder()
    reference = reference_forces(frames)
    for j, g in position_gradients([frames[i] for i in wanted], descriptors.hypers,
                                   species=descriptors.species, nystrom=nystrom,
                                   cache=keep, names=[dataset.names[i] for i in wanted]):
        i = int(wanted[j])
        if grads is not None:
            grads[starts[i] : starts[i] + len(g)] = g
        if use[i]:
            builder.add(g, reference[starts[i] : starts[i] + len(g)])
    return builder.result(n_baseline), grads, notice, reference


def _projections(solver: RigiditySolver, base: np.ndarray, extra: np.ndarray | None):
    """float32 ``solver.projections`` of the model features ``[base, extra]`` without stacking
    them: ``base @ V[:d_base] + extra @ V[d_base:]``, chunk by chunk.

    A float32 ``base`` (the app's cached descriptors) is multiplied in float32: the product
    is the largest step of a training-set change at 100k atoms and float32 runs it in a
    third of the float64 time (measured, 2 cores). Its float32 sums add to the float32
    rounding of the descriptors: on emt-alloys (d = 1473, primal route) the LPR is within a
    relative 7.5e-6 of float64 descriptors at alpha >= 1e-4 and 7e-5 at 1e-8 (the float64
    product of the same float32 descriptors: 3.4e-6 and 3e-5), local energies within 2e-5 eV
    (unchanged).
    """
    if extra is None and base.dtype != np.float32:
        return solver.projections(base, dtype=np.float32)
    out = np.empty((base.shape[0], solver.n_features), dtype=np.float32)
    if base.shape[0] == 0:
        return out
    dtype = np.float32 if base.dtype == np.float32 else np.float64
    V = (solver.eigvecs / solver.scale).astype(dtype)
    d_base = base.shape[1]
    for start in range(0, base.shape[0], _CHUNK):
        block = base[start : start + _CHUNK] @ V[:d_base]
        if extra is not None:
            block += extra[start : start + _CHUNK].astype(dtype) @ V[d_base:]
        out[start : start + _CHUNK] = block
    return out


def reference_space(
    descriptors: Descriptors, atom_mask: np.ndarray, spec: ModelSpec | None = None
) -> tuple[float, NystromMap | None]:
    """Feature scale and (sparse kernel) active environments chosen from reference atoms.

    :func:`prepare` picks both from its own training atoms, so two training sets give two
    feature spaces and their LPRs are not comparable. Pass the pair returned here as
    ``prepare(..., scale=scale, nystrom=nystrom)`` for every training set to compare; then
    adding structures to training never lowers an LPR. The reference atoms need no energies.

    Parameters
    ----------
    descriptors : Descriptors
    atom_mask : numpy.ndarray of shape (n_atoms,), bool
        Reference atoms (e.g. those of a reference training set).
    spec : ModelSpec, optional
        Model (default ``ModelSpec()``); the active set is chosen for the sparse kernel only.

    Returns
    -------
    scale : float
        sfactor of the reference atoms' descriptor (or Nyström) columns.
    nystrom : NystromMap or None
        Feature map on environments chosen among the reference atoms (sparse kernel), else None.
    """
    spec = ModelSpec() if spec is None else spec
    if spec.kind == "nn":
        raise InputError("reference training set: not for the nn model (its features are "
                         "trained on the training energies; pass a trained network to "
                         "prepare(nn=...) instead)")
    chosen = np.asarray(descriptors.values, dtype=np.float64)[np.asarray(atom_mask, dtype=bool)]
    if chosen.shape[0] == 0:
        raise InputError("reference training set: no atoms selected")
    if spec.kind != "sparse-kernel":
        return float(sfactor(chosen)), None
    nystrom = fit_nystrom(chosen, spec.n_sparse, zeta=spec.zeta)
    return float(sfactor(nystrom.transform(chosen))), nystrom


def _check_model_size(dataset, descriptors: Descriptors, spec: ModelSpec, n_train_atoms: int,
                      nystrom: NystromMap | None) -> None:
    """Refuse a model whose width ``d`` or ``n_atoms x d`` features exceed the limits."""
    n_species = len(descriptors.species)
    if spec.kind == "sparse-kernel":
        base = nystrom.n_features if nystrom is not None else min(spec.n_sparse, n_train_atoms)
        what = f"{base} active environments"
    elif spec.kind == "nn":
        base, what = spec.hidden, f"{spec.hidden} last-layer features"
    else:
        base = int(np.shape(descriptors.values)[1])
        what = f"{base} SOAP features ({n_species} species)"
    d = base + (n_species if spec.baseline else 0)
    limits = get_limits()
    if d > limits.max_features:
        raise InputError(
            f"dataset '{dataset.name}': the {spec.kind} model would have {d} features ({what}"
            f"{' + baseline' if spec.baseline else ''}), its {d} x {d} matrix "
            f"{d * d * 8 / 2**20:.0f} MiB and a slow eigendecomposition (limit "
            f"{limits.max_features}, LPRVIZ_MAX_FEATURES); use fewer species, a smaller "
            "SOAP preset or the sparse-kernel model"
        )
    n_atoms = len(dataset.structure_index)
    if n_atoms * d * 8 > limits.max_array_bytes:
        raise InputError(
            f"dataset '{dataset.name}': {n_atoms} atoms x {d} model features would take "
            f"{n_atoms * d * 8 / 2**30:.2g} GiB (limit {limits.max_array_bytes / 2**30:.2g} "
            "GiB, LPRVIZ_MAX_ARRAY_BYTES); use fewer atoms or a smaller model"
        )


@dataclass(eq=False)
class AlphaGrid:
    """What :func:`evaluate` needs per atom at a fixed set of alphas (slider positions),
    computed for one :class:`Fit` by :func:`alpha_grid` in one pass over its projections.

    Attributes
    ----------
    alphas : numpy.ndarray of shape (k,)
    lpr : numpy.ndarray of shape (k, n_atoms)
        float32 when the fit's projections are (4 bytes per atom and alpha).
    undetermined : numpy.ndarray of bool of shape (k, n_atoms)
    local_energy : numpy.ndarray of shape (k, n_atoms)
        Same dtype as ``lpr``.
    pr : numpy.ndarray of shape (k, n_frames)
    owner : weakref.ref
        The fit it was computed for (a weak reference: the grid does not keep it alive).
    """

    alphas: np.ndarray
    lpr: np.ndarray
    undetermined: np.ndarray
    local_energy: np.ndarray
    pr: np.ndarray
    owner: weakref.ref

    def index(self, alpha: float) -> int | None:
        """Row of ``alpha`` (:func:`alpha_index` of the grid's alphas), else None."""
        return alpha_index(self.alphas, alpha)


def alpha_index(alphas: Sequence[float], alpha: float) -> int | None:
    """Position of ``alpha`` in ``alphas`` (equal within a relative 1e-12: the slider's
    values after a float round trip), else None."""
    hits = np.flatnonzero(np.abs(np.asarray(alphas, dtype=float) - alpha) <= 1e-12 * abs(alpha))
    return int(hits[0]) if hits.size else None


def alpha_grid(fit: Fit, alphas: Sequence[float]) -> AlphaGrid:
    """LPR, undetermined flags, local energies and PR of every atom/frame at each of
    ``alphas``, from one pass over ``fit.projections`` (one ``(P * P) @ W`` and one
    ``P @ D`` product with a column per alpha, float32 where the projections are).

    Parameters
    ----------
    fit : Fit
        From :func:`prepare`.
    alphas : sequence of float
        Regularisers (each in :data:`ALPHA_RANGE`).

    Returns
    -------
    AlphaGrid
        Pass it to :func:`evaluate` (``grid=``): an alpha on the grid then costs O(n_atoms)
        copies instead of a pass over the projections.
    """
    alphas = np.asarray([check_number("alpha", a, *ALPHA_RANGE) for a in alphas])
    solver = fit.solver
    weights = np.stack([solver.solve(fit.xty, a) for a in alphas], axis=1)
    # Local energies: P . (B^T w) with B the basis the projections are in (as _block_lpr).
    basis = solver.thin_basis if fit.thin else solver.eigvecs
    lpr, undetermined, local = solver.lpr_grid(fit.projections, alphas, rho2=fit.residual2,
                                               dots=basis.T @ weights)
    pr = solver.lpr_grid(fit.structure_projections, alphas)[0]
    return AlphaGrid(alphas=alphas, lpr=lpr, undetermined=undetermined, local_energy=local,
                     pr=pr.astype(np.float64), owner=weakref.ref(fit))


def evaluate(fit: Fit, alpha: float, *, grid: AlphaGrid | None = None) -> Results:
    """LPR, undetermined flags, local energies, totals and PR at one ``alpha``.

    Cost: one pass over the cached (float32) projections for the LPR, undetermined flags and
    local energies together (``O(n_atoms d)``, ``O(n_atoms r)`` for a thin fit) and one
    ``d``-sized solve; no refactorisation. With a ``grid`` holding ``alpha``, no pass:
    ``O(n_atoms)``.

    Parameters
    ----------
    fit : Fit
        From :func:`prepare`.
    alpha : float
        Regulariser (on scaled features), ``>= 0``.
    grid : AlphaGrid, optional
        :func:`alpha_grid` of ``fit``; used when ``alpha`` is one of its alphas.

    Returns
    -------
    Results

    Raises
    ------
    InputError
        ``alpha`` outside :data:`ALPHA_RANGE` or not a number.
    """
    alpha = check_number("alpha", alpha, *ALPHA_RANGE)
    solver = fit.solver
    weights = solver.solve(fit.xty, alpha)
    forces_pred = None
    if fit.force_gradients is not None:
        forces_pred = predict_forces(fit.force_gradients, weights, solver.scale)
    if grid is not None and grid.owner() is not fit:
        raise InputError("grid: computed for another fit; use alpha_grid(fit, alphas)")
    row = None if grid is None else grid.index(alpha)
    if row is None:
        lpr, undetermined, local = _block_lpr(solver, fit.projections, fit.residual2, alpha,
                                              weights)
        pr = _block_lpr(solver, fit.structure_projections, None, alpha)[0]
    else:
        lpr, local = (grid.lpr[row].astype(np.float64), grid.local_energy[row].astype(np.float64))
        undetermined, pr = grid.undetermined[row].copy(), grid.pr[row].copy()
    return Results(
        alpha=alpha,
        train_mask=fit.train_mask,
        lpr=lpr,
        undetermined=undetermined,
        local_energy=local,
        energy_pred=np.bincount(fit.structure_index, weights=local, minlength=fit.n_frames),
        pr=pr,
        rank_diff=solver.rank_diff(alpha),
        energies=fit.energies,
        true_local_energies=fit.true_local_energies,
        data_share=data_share(lpr, scaled_norm2(fit), alpha),
        **_provenance(fit),
        forces_pred=forces_pred,
        forces=fit.forces,
        notice=fit.notice,
    )


def evaluate_features(fit: Fit, phi_raw: np.ndarray, structure_index: np.ndarray,
                      alphas: Sequence[float], *,
                      baseline: np.ndarray | None = None) -> Iterator[Results]:
    """:func:`evaluate` for atoms outside the fit's dataset, given their raw model features.

    The block is projected once (thin on the solver's dual route) for every alpha; nothing
    is kept. Used by ``lprviz lpr`` on each streamed
    chunk of test structures.

    Parameters
    ----------
    fit : Fit
        From :func:`prepare` (``project=False`` is enough).
    phi_raw : numpy.ndarray of shape (n, d)
        Raw model features (:meth:`Fit.model_features`) of the block's atoms.
    structure_index : numpy.ndarray of int, shape (n,)
        Structure ``0 .. m-1`` of each atom, sorted.
    alphas : sequence of float
        Regularisers (each in :data:`ALPHA_RANGE`).
    baseline : numpy.ndarray of shape (n, d - k), optional
        The last columns of the model features, when ``phi_raw`` holds only the first
        ``k`` (:meth:`Fit.model_feature_blocks`): the block is never stacked into one copy
        on the solver's dual route.

    Yields
    ------
    Results
        One per alpha (the first also pays the projection), for the block's ``m``
        structures: none is a training structure and their reference energies are unknown
        (NaN); the PR is that of each structure's mean feature row.
    """
    alphas = [check_number("alpha", a, *ALPHA_RANGE) for a in alphas]
    solver = fit.solver
    structure_index = np.asarray(structure_index)
    blocks = [np.asarray(x, dtype=np.float64) for x in (phi_raw, baseline) if x is not None]
    for x in blocks:
        if x.ndim != 2 or x.shape[0] != structure_index.shape[0]:
            raise InputError(f"features: expected one row per atom "
                             f"({structure_index.shape[0]}), got shape {x.shape}")
    n_frames = int(structure_index.max()) + 1 if structure_index.size else 0
    rows = [structure_features(x, structure_index, n_frames, convention="mean")
            for x in blocks]
    if solver.route == "dual":
        (P, rho2), (Q, rho2_rows) = (solver.thin_projections(*x, dtype=np.float64)
                                     for x in (blocks, rows))
        norm2 = np.einsum("ij,ij->i", P, P) + rho2
    else:
        (P, rho2), (Q, rho2_rows) = ((solver.projections(_stacked(blocks)), None),
                                     (solver.projections(_stacked(rows)), None))
        norm2 = np.einsum("ij,ij->i", P, P)
    for alpha in alphas:
        lpr, undetermined, local = _block_lpr(solver, P, rho2, alpha,
                                              solver.solve(fit.xty, alpha))
        yield Results(
            alpha=alpha,
            train_mask=np.zeros(n_frames, dtype=bool),
            lpr=lpr,
            undetermined=undetermined,
            local_energy=local,
            energy_pred=np.bincount(structure_index, weights=local, minlength=n_frames),
            pr=_block_lpr(solver, Q, rho2_rows, alpha)[0],
            rank_diff=solver.rank_diff(alpha),
            energies=np.full(n_frames, np.nan),
            data_share=data_share(lpr, norm2, alpha),
            **_provenance(fit),
        )


def _stacked(blocks: list[np.ndarray]) -> np.ndarray:
    return blocks[0] if len(blocks) == 1 else np.hstack(blocks)


def _block_lpr(solver: RigiditySolver, P: np.ndarray, rho2: np.ndarray | None, alpha: float,
               weights: np.ndarray | None = None):
    """LPR, undetermined flags and (with the model's ``weights``) local predictions of atoms
    with projections ``P``: thin (training-span coordinates, ``rho2`` given) or full; one
    pass over ``P``. The third value is None without ``weights``."""
    if rho2 is not None:
        if weights is None:
            return (*solver.lpr_and_undetermined_from_thin(P, rho2, alpha), None)
        # X^T y lies in the training span, so does w: (phi / s) . w = P . (W^T w)
        return solver.lpr_and_undetermined_from_thin(P, rho2, alpha,
                                                     dot=solver.thin_basis.T @ weights)
    if weights is None:
        return (*solver.lpr_and_undetermined_from_projections(P, alpha), None)
    # P = (phi / s) V, so the local prediction (phi / s) . w = P . (V^T w)
    return solver.lpr_and_undetermined_from_projections(P, alpha,
                                                        dot=solver.eigvecs.T @ weights)


def _provenance(fit: Fit) -> dict:
    """The model fields of :class:`Results` (small copies of the fit's)."""
    return {"spec": fit.spec, "scale": fit.scale, "hypers": fit.hypers,
            "n_active": None if fit.nystrom is None else len(fit.nystrom.active_index),
            "force_weight": fit.force_weight, "features": fit.features}


def coordination(frames, cutoff: float) -> np.ndarray:
    """Number of neighbours within ``cutoff`` of every atom (periodic images included).

    Parameters
    ----------
    frames : sequence of ase.Atoms
    cutoff : float
        Neighbour distance in Angstrom (e.g. 2.7 for Si).

    Returns
    -------
    numpy.ndarray of shape (n_atoms,), int
        Dataset atom order.
    """
    from ase.neighborlist import neighbor_list

    if not cutoff > 0:
        raise InputError(f"coordination cutoff: expected a positive distance, got {cutoff}")
    out = []
    for atoms in frames:
        first = neighbor_list("i", atoms, float(cutoff), self_interaction=False)
        out.append(np.bincount(first, minlength=len(atoms)))
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)


# Per-fit |x̂|^2 of every atom: alpha-independent, so computed once per Fit (held weakly).
_NORM2: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def scaled_norm2(fit: Fit) -> np.ndarray:
    """``|x̂_k|^2`` of every atom's scaled model features (n_atoms,), cached per ``fit``.

    ``fit.projections`` are the scaled features in the solver's orthonormal eigenbasis, so
    their row norms are those of the scaled features (a thin fit adds the out-of-span part).
    """
    out = _NORM2.get(fit)
    if out is None:
        P = fit.projections
        out = np.einsum("ij,ij->i", P, P)
        if fit.thin:
            out = out + fit.residual2
        _NORM2[fit] = out
    return out


def lpr_sweep(fit: Fit, alphas: Sequence[float]) -> np.ndarray:
    """LPR of every atom at each of ``alphas`` in one pass over the cached projections.

    Parameters
    ----------
    fit : Fit
    alphas : sequence of float
        Regularisers (``>= 0``).

    Returns
    -------
    numpy.ndarray of shape (n_alphas, n_atoms)
    """
    if fit.thin:
        return fit.solver.lpr_sweep_from_thin(fit.projections, fit.residual2, alphas)
    return fit.solver.lpr_sweep_from_projections(fit.projections, alphas)


__all__ += ["AlphaGrid", "alpha_grid", "lpr_sweep", "scaled_norm2"]
