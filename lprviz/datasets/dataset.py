"""The :class:`Dataset` container and the :class:`DatasetInfo` row of the registry."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from ase import Atoms

from lprviz.errors import InputError


@dataclass
class Dataset:
    """Structures with their energies, groups and (when known) true local energies.

    Per-atom arrays are in *dataset atom order*: frames concatenated in order, atoms in
    frame order.

    Attributes
    ----------
    name : str
        Dataset name (registry name, or the file name for a user file).
    frames : list of ase.Atoms
        The structures; energy and forces, when known, as a ``SinglePointCalculator``.
    energies : numpy.ndarray of shape (n_frames,)
        Total energies in eV; NaN exactly where ``has_energy`` is False.
    has_energy : numpy.ndarray of shape (n_frames,), bool
    groups : numpy.ndarray of shape (n_frames,), str
        Group label per frame (``"ungrouped"`` when the source gives none).
    names : list of str
        One name per frame (``"<file>#<i>"`` when the source gives none).
    splits : numpy.ndarray of shape (n_frames,), str
        ``"train"``, ``"test"`` or ``""`` when the source gives no split.
    true_local_energies : numpy.ndarray of shape (n_atoms,) or None
        Exact per-atom energies (eV) when every frame has them (EMT sets), else None.
    provenance : str
        Where the data came from (generator, publication, file path).
    licence : str
    """

    name: str
    frames: list[Atoms]
    energies: np.ndarray
    has_energy: np.ndarray
    groups: np.ndarray
    names: list[str]
    splits: np.ndarray
    true_local_energies: np.ndarray | None = None
    provenance: str = ""
    licence: str = ""
    _derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __setattr__(self, name, value):
        # Derived arrays depend on frames (and groups): reassigning either invalidates them.
        if name in ("frames", "groups") and "_derived" in self.__dict__:
            self.__dict__["_derived"].clear()
        super().__setattr__(name, value)

    def _cached(self, key: str, compute) -> np.ndarray:
        out = self._derived.get(key)
        if out is None:
            out = np.asarray(compute())
            out.flags.writeable = False
            self._derived[key] = out
        return out

    @property
    def species(self) -> tuple[int, ...]:
        """Sorted atomic numbers present in the dataset."""
        return tuple(int(z) for z in np.unique(self.atom_numbers))

    @property
    def frame_sizes(self) -> np.ndarray:
        """Number of atoms per frame, shape (n_frames,); computed once (read-only)."""
        return self._cached(
            "frame_sizes", lambda: np.array([len(a) for a in self.frames], dtype=np.int64)
        )

    @property
    def n_atoms(self) -> int:
        """Total number of atoms."""
        return int(self.frame_sizes.sum())

    @property
    def structure_index(self) -> np.ndarray:
        """Frame index of every atom, shape (n_atoms,); computed once (read-only)."""
        return self._cached(
            "structure_index",
            lambda: np.repeat(np.arange(len(self.frames), dtype=np.int64), self.frame_sizes),
        )

    @property
    def frame_starts(self) -> np.ndarray:
        """Index of every frame's first atom, shape (n_frames + 1,) (last: ``n_atoms``).

        Frame ``i`` holds atoms ``frame_starts[i]:frame_starts[i + 1]``.
        """
        return self._cached(
            "frame_starts", lambda: np.concatenate([[0], np.cumsum(self.frame_sizes)])
        )

    def atoms_of(self, frame: int) -> slice:
        """The atoms of ``frame`` in dataset atom order (a slice: no scan of every atom)."""
        starts = self.frame_starts
        return slice(int(starts[frame]), int(starts[frame + 1]))

    @property
    def atom_groups(self) -> np.ndarray:
        """Group label of every atom (its frame's group), str, shape (n_atoms,); cached."""
        return self._cached(
            "atom_groups", lambda: np.asarray(self.groups).astype(str)[self.structure_index]
        )

    @property
    def atom_numbers(self) -> np.ndarray:
        """Atomic number of every atom, shape (n_atoms,); computed once (read-only)."""
        if not self.frames:
            return np.zeros(0, dtype=np.int64)
        return self._cached(
            "atom_numbers",
            lambda: np.concatenate([a.numbers for a in self.frames]).astype(np.int64),
        )

    def subset(self, frame_indices: Sequence[int] | np.ndarray) -> Dataset:
        """The dataset restricted to some frames, in the given order.

        Parameters
        ----------
        frame_indices : sequence of int, or boolean mask of shape (n_frames,)

        Returns
        -------
        Dataset
            Shares the ``Atoms`` objects with this dataset (no copies).
        """
        idx = np.asarray(frame_indices)
        if idx.dtype == bool:
            if idx.shape != (len(self.frames),):
                raise InputError(
                    f"dataset '{self.name}': frame mask has shape {idx.shape}, "
                    f"expected ({len(self.frames)},)"
                )
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self.frames) or idx.max() >= len(self.frames)):
            raise InputError(
                f"dataset '{self.name}': frame index out of range 0..{len(self.frames) - 1}"
            )
        idx = idx % max(len(self.frames), 1)
        local = None
        if self.true_local_energies is not None:
            starts = self.frame_starts
            local = np.concatenate(
                [self.true_local_energies[starts[i] : starts[i + 1]] for i in idx]
                or [np.zeros(0)]
            )
        return replace(
            self,
            frames=[self.frames[i] for i in idx],
            energies=self.energies[idx],
            has_energy=self.has_energy[idx],
            groups=self.groups[idx],
            names=[self.names[i] for i in idx],
            splits=self.splits[idx],
            true_local_energies=local,
        )


@dataclass(frozen=True)
class DatasetInfo:
    """One row of :func:`list_available`.

    ``kind`` is ``"shipped"``, ``"fetchable"`` or ``"imported"``; ``cached`` says whether
    the data are on this machine (always True for shipped and imported sets); ``path`` is
    the file or cache directory; ``size_bytes`` the size on disk (or to download).
    """

    name: str
    kind: str
    cached: bool
    path: Path
    size_bytes: int
    licence: str
    description: str
    files: tuple[Path, ...] = field(default=(), repr=False)



def per_group_median(values, groups) -> tuple[np.ndarray, np.ndarray]:
    """Median of ``values`` within each group label, in one sort (``O(n log n)``).

    Parameters
    ----------
    values : numpy.ndarray of shape (n,) or (n_rows, n)
        Per-atom (or per-frame) values; a 2D array gives one median per row and group (e.g. an
        LPR-vs-alpha sweep, one row per alpha).
    groups : numpy.ndarray of shape (n,)
        Group label of every entry (e.g. :attr:`Dataset.atom_groups`, or
        ``Dataset.structure_index`` for per-frame medians).

    Returns
    -------
    labels : numpy.ndarray of shape (n_groups,)
        Sorted distinct labels.
    medians : numpy.ndarray of shape (n_groups,) or (n_rows, n_groups)
        Median per label (NaN values propagate, as in :func:`numpy.median`).
    """
    values = np.asarray(values, dtype=np.float64)
    groups = np.asarray(groups)
    if values.shape[-1] != groups.shape[0]:
        raise InputError(
            f"per_group_median: {values.shape[-1]} values but {groups.shape[0]} group labels"
        )
    labels, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=labels.size)
    starts = np.concatenate([[0], np.cumsum(counts)])
    # Sort each group's values once (within-group order after a stable group sort), then the
    # median is one or two gathers per group.
    v = values.reshape(-1, groups.shape[0])[:, order]
    key = np.repeat(np.arange(labels.size), counts)
    v = np.take_along_axis(v, np.lexsort((v, np.broadcast_to(key, v.shape)), axis=-1), axis=-1)
    lo = starts[:-1] + (counts - 1) // 2
    hi = starts[:-1] + counts // 2
    med = 0.5 * (v[:, lo] + v[:, hi])
    return labels, med.reshape(values.shape[:-1] + (labels.size,))


def combine(train: Dataset, test: Dataset, *, name: str | None = None) -> Dataset:
    """One dataset of a training file followed by a test file, with ``splits`` set.

    The CLI's ``lpr --train A --test B`` and the app's "second file as the test set" both
    build their dataset here, so the two agree on order and names.

    Parameters
    ----------
    train, test : Dataset
        Their frames become the ``"train"`` and ``"test"`` frames, training frames first.
    name : str, optional
        Name of the result (default ``"<train.name>+<test.name>"``).

    Returns
    -------
    Dataset
        Shares the ``Atoms`` objects; ``true_local_energies`` only when both parts have them.

    Raises
    ------
    InputError
        A part without structures (the message names it).
    """
    parts = (train, test)
    for part in parts:
        if not part.frames:
            raise InputError(f"{part.name}: contains no structures")
    local = None
    if all(p.true_local_energies is not None for p in parts):
        local = np.concatenate([p.true_local_energies for p in parts])
    return Dataset(
        name=name or f"{train.name}+{test.name}",
        frames=train.frames + test.frames,
        energies=np.concatenate([p.energies for p in parts]),
        has_energy=np.concatenate([p.has_energy for p in parts]),
        groups=np.concatenate([p.groups for p in parts]),
        names=train.names + test.names,
        splits=np.array(["train"] * len(train.frames) + ["test"] * len(test.frames)),
        true_local_energies=local,
        provenance="; ".join(f"{split}: {p.provenance or p.name}"
                             for split, p in zip(("train", "test"), parts, strict=True)),
        licence=train.licence if train.licence == test.licence else
        f"train: {train.licence}; test: {test.licence}",
    )
