"""Where per-atom features come from: SOAP, an array in the user's file, or a backbone.

A *feature source* turns a dataset into :class:`lprviz.features.Descriptors` (one row per
atom, dataset atom order); everything after it (the linear readout, the
:class:`~lprviz.rigidity.RigiditySolver`, PR, Compare, Improve) works on those rows
unchanged, so the LPR of any source is that of a ridge readout on its features,

.. math:: \\mathrm{LPR}_k = 1 / \\big(x_k^\\top (X^\\top X + \\alpha I)^{-1} x_k\\big)

in the per-atom mean convention of docs/science.md §3 (features divided by the scale ``s``).

Sources:

* ``"soap"`` — :func:`lprviz.features.compute_soap` with ``hypers`` (the default);
* ``"array"`` — a numeric per-atom array stored in the file (``atoms.arrays[NAME]``, e.g.
  MACE ``get_descriptors`` output written into an extxyz), shape ``(n_atoms_A, d)`` in every
  frame with the same ``d``;
* a backbone name (``"chgnet"``, ``"sevenn"``) — the last-layer features of a pretrained
  universal potential (:mod:`lprviz.backbones`, the optional ``lprviz[nn]`` extra). For a
  frozen backbone the LPR is that of its linear readout *refit on the chosen training set*
  (the last-layer prediction rigidity, docs/science.md §13).

Only SOAP has descriptor blocks (for the LCPR) and hyper-parameters; the other sources give
``blocks == {}`` and ``hypers is None``, and record themselves in ``Descriptors.provenance``
(exported as ``lprviz_features`` ...).

In the app a source travels as a plain string, its :attr:`FeatureSource.key` (a SOAP preset
name, ``"array:NAME"`` or a backbone name), so every cache keyed by the SOAP preset is keyed
by the source with no other change (:func:`from_key`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lprviz.errors import InputError
from lprviz.features import SOAP_PRESETS, Descriptors, SoapHypers, compute_soap
from lprviz.limits import MAX_DESCRIPTOR_VALUE

__all__ = [
    "BACKBONE_LABELS", "FeatureSource", "array_names", "backbone_names",
    "backbone_unavailable", "descriptors_for", "from_key", "key_label", "read_array",
]

#: Display names of the pretrained backbones lprviz knows about (the names themselves come
#: from :data:`lprviz.backbones.BACKBONES` when that module is installed).
BACKBONE_LABELS = {"chgnet": "CHGNet", "sevenn": "SevenNet"}
_EXTRA = "pip install 'lprviz[nn]'"
#: Per-atom arrays that are never features (geometry, identity, labels, our own outputs).
_NOT_FEATURES = frozenset({
    "numbers", "positions", "momenta", "masses", "initial_magmoms", "initial_charges",
    "tags", "forces", "coordination", "lpr", "log10_lpr", "local_energy", "undetermined",
    "data_share", "in_training",
    # reference answers: a model must not be fed the per-atom truth it is judged against
    "true_local_energy",
})
# lprviz's own output columns of an earlier run (several alphas, LCPR, forces)
_OUTPUT_COLUMN = re.compile(r"(lpr|log10_lpr|local_energy|undetermined|data_share)_\d+"
                            r"|lcpr_\w+|forces_pred")


def _backbones():
    """The :mod:`lprviz.backbones` module, or None when it is not part of this install."""
    try:
        from lprviz import backbones
    except ImportError:
        return None
    return backbones


def backbone_names() -> tuple[str, ...]:
    """Names of the pretrained backbones (``"chgnet"``, ``"sevenn"``), installed or not."""
    module = _backbones()
    return tuple(module.BACKBONES) if module is not None else tuple(BACKBONE_LABELS)


def backbone_unavailable(name: str) -> str | None:
    """None when backbone ``name`` can be used here, else a one-line reason (how to add it)."""
    module = _backbones()
    if module is None:
        return (f"{BACKBONE_LABELS.get(name, name)} features need the neural-network extra: "
                f"{_EXTRA}")
    return module.unavailable(name)


@dataclass(frozen=True)
class FeatureSource:
    """Which per-atom features the model is built on.

    Parameters
    ----------
    kind : str
        ``"soap"``, ``"array"`` or a backbone name (:func:`backbone_names`).
    array : str, optional
        ``kind == "array"``: the name of the per-atom array in the file.
    hypers : SoapHypers, optional
        ``kind == "soap"``: SOAP hyper-parameters (default ``SoapHypers()``).

    Raises
    ------
    InputError
        Unknown kind, an array source without a name, or options of another kind.
    """

    kind: str = "soap"
    array: str | None = None
    hypers: SoapHypers | None = None

    def __post_init__(self) -> None:
        kinds = ("soap", "array", *backbone_names())
        if self.kind not in kinds:
            raise InputError(f"features: expected one of {', '.join(kinds)}, got {self.kind!r}")
        if self.kind == "array":
            if not isinstance(self.array, str) or not self.array.strip():
                raise InputError("features-array: expected the name of a per-atom array")
        elif self.array is not None:
            raise InputError(f"features: an array name only applies to kind 'array', not "
                             f"{self.kind!r}")
        if self.kind == "soap" and self.hypers is None:
            object.__setattr__(self, "hypers", SoapHypers())
        elif self.kind != "soap" and self.hypers is not None:
            raise InputError(f"features: SOAP hyper-parameters do not apply to {self.kind!r}")

    @property
    def key(self) -> str:
        """The app's string for this source (inverse of :func:`from_key`)."""
        if self.kind == "soap":
            names = [n for n, h in SOAP_PRESETS.items() if h == self.hypers]
            if not names:
                raise InputError("features: only SOAP presets have a key")
            return names[0]
        return f"array:{self.array}" if self.kind == "array" else self.kind

    @property
    def label(self) -> str:
        """What a user reads: ``"SOAP"``, ``"per-atom array 'mace'"``, ``"CHGNet"``."""
        if self.kind == "soap":
            return "SOAP"
        if self.kind == "array":
            return f"per-atom array '{self.array}'"
        return BACKBONE_LABELS.get(self.kind, self.kind)


def key_label(key: str) -> str:
    """What a user reads for an app key: ``"SOAP 'default'"``, ``"per-atom array 'x'"``..."""
    return f"SOAP '{key}'" if key in SOAP_PRESETS else from_key(key).label


def from_key(key: str) -> FeatureSource:
    """The source of an app key: a SOAP preset name, ``"array:NAME"`` or a backbone name."""
    if key in SOAP_PRESETS:
        return FeatureSource("soap", hypers=SOAP_PRESETS[key])
    if key.startswith("array:"):
        return FeatureSource("array", array=key[len("array:"):])
    return FeatureSource(key)


def array_names(frames) -> list[str]:
    """Numeric per-atom arrays of every frame that could be features (sorted).

    Geometry, identity, forces, reference answers (``true_local_energy``) and lprviz's own
    output columns are left out; an array must be present in every frame as numbers of
    shape ``(n_atoms, d)`` (what :func:`read_array` takes; ASE keeps a one-column array as
    1-D, so those are left out too).
    """
    frames = list(frames)
    if not frames:
        return []
    common = {n for n in set(frames[0].arrays) - _NOT_FEATURES
              if not _OUTPUT_COLUMN.fullmatch(n)}
    for atoms in frames[1:]:
        common &= set(atoms.arrays)
    return sorted(n for n in common
                  if all(np.asarray(a.arrays[n]).dtype.kind in "biuf"
                         and np.asarray(a.arrays[n]).ndim == 2 for a in frames))


def read_array(dataset, name: str) -> np.ndarray:
    """The per-atom array ``name`` of every frame, stacked in dataset atom order.

    Parameters
    ----------
    dataset : lprviz.datasets.Dataset
    name : str
        Key of ``atoms.arrays`` (an extxyz column such as ``mace_desc:R:128``).

    Returns
    -------
    numpy.ndarray of shape (n_atoms, d), float64

    Raises
    ------
    InputError
        One line naming the dataset (the file), the frame and the array: missing, not
        numeric, not 2D per atom, NaN/inf or beyond
        :data:`~lprviz.limits.MAX_DESCRIPTOR_VALUE`, or a width other than the first frame's.
    """
    where = f"{dataset.name}: per-atom array '{name}'"
    if not dataset.frames:
        raise InputError(f"{dataset.name}: contains no structures")
    parts, width = [], None
    for i, atoms in enumerate(dataset.frames):
        frame = f"{where}, frame {i} ('{dataset.names[i]}')"
        if name not in atoms.arrays:
            present = ", ".join(sorted(array_names([atoms]))) or "none"
            raise InputError(f"{frame}: missing (numeric per-atom arrays here: {present})")
        value = np.asarray(atoms.arrays[name])
        if value.dtype.kind not in "biuf":
            raise InputError(f"{frame}: expected numbers, got {value.dtype.name} values")
        if value.ndim != 2 or value.shape[0] != len(atoms) or value.shape[1] < 1:
            raise InputError(f"{frame}: expected a 2D per-atom array of shape "
                             f"({len(atoms)}, d), got shape {value.shape}")
        if width is None:
            width = value.shape[1]
        elif value.shape[1] != width:
            raise InputError(f"{frame}: {value.shape[1]} columns, but frame 0 has {width}; "
                             "every frame needs the same width")
        value = value.astype(np.float64)
        if not np.all(np.isfinite(value)):
            atom = int(np.flatnonzero(~np.isfinite(value).all(axis=1))[0])
            raise InputError(f"{frame}: NaN or inf at atom {atom}")
        big = np.abs(value) > MAX_DESCRIPTOR_VALUE
        if big.any():
            atom = int(np.flatnonzero(big.any(axis=1))[0])
            raise InputError(f"{frame}: a value of {value[atom][big[atom]][0]:.3g} at atom "
                             f"{atom}, beyond {MAX_DESCRIPTOR_VALUE:g}; rescale the array")
        parts.append(value)
    return np.concatenate(parts, axis=0)


def descriptors_for(
    dataset,
    source: FeatureSource,
    *,
    species: tuple[int, ...] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cache: bool = True,
) -> Descriptors:
    """Per-atom features of every atom of ``dataset`` from ``source``.

    Parameters
    ----------
    dataset : lprviz.datasets.Dataset
    source : FeatureSource
    species : tuple of int, optional
        Species list (SOAP's column layout and the baseline columns); default the
        dataset's.
    progress : callable, optional
        ``progress(done_atoms, total_atoms)`` (SOAP and backbones).
    cache : bool
        Use the SOAP / backbone caches.

    Returns
    -------
    Descriptors
        ``values (n_atoms, d)``; for non-SOAP sources ``blocks == {}``, ``hypers is None``.
        ``provenance`` names the source (``features``, ``features_array`` or
        ``features_model`` and ``features_model_version``).

    Raises
    ------
    InputError
        Bad array (:func:`read_array`), a backbone that is not installed (one line saying
        ``pip install 'lprviz[nn]'``), or what :func:`~lprviz.features.compute_soap` refuses.
    """
    species = tuple(dataset.species) if species is None else tuple(species)
    if source.kind == "soap":
        desc = compute_soap(dataset.frames, source.hypers, species=species, progress=progress,
                            cache=cache, names=dataset.names)
        desc.provenance = {"features": "soap"}
        return desc
    if source.kind == "array":
        values = read_array(dataset, source.array)
        provenance = {"features": "array", "features_array": source.array}
    else:
        reason = backbone_unavailable(source.kind)
        if reason is not None:
            raise InputError(reason)
        module = _backbones()
        values = np.asarray(module.last_layer_features(
            dataset.frames, source.kind, cache=cache, progress=progress, names=dataset.names),
            dtype=np.float64)
        if values.ndim != 2 or values.shape[0] != dataset.n_atoms:
            raise RuntimeError(f"{source.kind}: last-layer features of shape {values.shape} "
                               f"for {dataset.n_atoms} atoms")
        provenance = {"features": source.kind, "features_model": source.kind,
                      "features_model_version": module.model_version(source.kind)}
    numbers = np.asarray(dataset.atom_numbers, dtype=np.int64)
    unknown = sorted(set(numbers.tolist()) - set(species))
    if unknown:
        raise InputError(f"{dataset.name}: species {unknown} outside the species list {species}")
    return Descriptors(values=values, structure_index=np.asarray(dataset.structure_index),
                       atom_numbers=numbers, species=species, blocks={}, hypers=None,
                       provenance=provenance)
