"""Training-set composition: rules, presets and small ordering helpers.

A training set is a boolean mask over a dataset's frames. Rules say which frames to include
(by group, species, size, random fraction with a seed); presets mirror the strategies of
Chong et al. (2023): bulk only; bulk plus a few surface/defect structures; add small
structures; one stoichiometry versus varied compositions. Everything here is bookkeeping on
frame labels and sizes: no descriptors, no science.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Words in a group name that mark non-bulk environments (surfaces, defects, clusters).
DEFECT_WORDS = ("surface", "slab", "vacancy", "defect", "interstitial", "antisite", "cluster",
                "molecule", "adsorb")

PRESETS = (
    "bulk only",
    "bulk + a few surface/defect structures",
    "bulk + small structures",
    "one stoichiometry",
    "varied compositions",
    "random fraction",
    "all structures",
)


def is_bulk_group(group: str) -> bool:
    """True unless the group's name says surface/defect/cluster (see :data:`DEFECT_WORDS`)."""
    g = str(group).lower()
    return not any(w in g for w in DEFECT_WORDS)


def frame_compositions(atom_numbers: Sequence[np.ndarray]) -> list[tuple[tuple[int, float], ...]]:
    """Reduced composition of each frame: sorted ``(Z, fraction)`` pairs, fractions to 1e-3."""
    out = []
    for z in atom_numbers:
        z = np.asarray(z)
        uniq, counts = np.unique(z, return_counts=True)
        out.append(tuple((int(u), round(float(c) / len(z), 3)) for u, c in zip(uniq, counts,
                                                                              strict=True)))
    return out


@dataclass(frozen=True)
class TrainingRule:
    """Which frames go into training.

    Attributes
    ----------
    groups : tuple of str or None
        Frames of these groups only (None: any group).
    species : tuple of int or None
        Frames whose atomic numbers are all in this set (None: any).
    min_atoms, max_atoms : int or None
        Frame size bounds (inclusive).
    fraction : float
        Keep this random fraction of the frames that pass the filters.
    seed : int
        Seed of that random choice.
    """

    groups: tuple[str, ...] | None = None
    species: tuple[int, ...] | None = None
    min_atoms: int | None = None
    max_atoms: int | None = None
    fraction: float = 1.0
    seed: int = 0


def apply_rule(
    rule: TrainingRule,
    groups: Sequence[str],
    atom_numbers: Sequence[np.ndarray],
) -> np.ndarray:
    """Training mask (n_frames,) of the frames that pass ``rule``.

    Parameters
    ----------
    rule : TrainingRule
    groups : sequence of str of length n_frames
    atom_numbers : sequence of numpy.ndarray
        Atomic numbers of each frame.
    """
    groups = np.asarray([str(g) for g in groups])
    sizes = np.array([len(z) for z in atom_numbers])
    mask = np.ones(len(groups), dtype=bool)
    if rule.groups is not None:
        mask &= np.isin(groups, list(rule.groups))
    if rule.species is not None:
        allowed = set(rule.species)
        mask &= np.array([set(np.unique(z).tolist()) <= allowed for z in atom_numbers])
    if rule.min_atoms is not None:
        mask &= sizes >= rule.min_atoms
    if rule.max_atoms is not None:
        mask &= sizes <= rule.max_atoms
    if not 0.0 < rule.fraction <= 1.0:
        raise ValueError(f"fraction: expected 0 < fraction <= 1, got {rule.fraction!r}")
    if rule.fraction < 1.0:
        idx = np.flatnonzero(mask)
        keep = max(1, int(round(rule.fraction * idx.size))) if idx.size else 0
        rng = np.random.default_rng(rule.seed)
        chosen = rng.choice(idx, size=keep, replace=False) if keep else idx
        mask = np.zeros_like(mask)
        mask[chosen] = True
    return mask


def preset_mask(
    preset: str,
    groups: Sequence[str],
    atom_numbers: Sequence[np.ndarray],
    *,
    n_extra: int = 3,
    small_max_atoms: int = 8,
    fraction: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """Training mask (n_frames,) of a named preset (one of :data:`PRESETS`).

    * ``bulk only``: every frame of a bulk group (:func:`is_bulk_group`).
    * ``bulk + a few surface/defect structures``: plus ``n_extra`` random frames per
      non-bulk group (seeded).
    * ``bulk + small structures``: plus every frame with at most ``small_max_atoms`` atoms.
    * ``one stoichiometry``: the bulk frames sharing the most common reduced composition.
    * ``varied compositions``: as many bulk frames as ``one stoichiometry`` takes, drawn
      round-robin over the distinct compositions (so the offsets per species separate).
    * ``random fraction``: ``fraction`` of all frames (seeded).
    * ``all structures``.

    Raises
    ------
    ValueError
        Unknown preset.
    """
    groups = np.asarray([str(g) for g in groups])
    n = len(groups)
    bulk = np.array([is_bulk_group(g) for g in groups], dtype=bool)
    rng = np.random.default_rng(seed)
    sizes = np.array([len(z) for z in atom_numbers])
    if preset == "bulk only":
        return bulk.copy()
    if preset == "bulk + a few surface/defect structures":
        mask = bulk.copy()
        for g in dict.fromkeys(groups[~bulk]):
            idx = np.flatnonzero(groups == g)
            mask[rng.choice(idx, size=min(n_extra, idx.size), replace=False)] = True
        return mask
    if preset == "bulk + small structures":
        return bulk | (sizes <= small_max_atoms)
    if preset in ("one stoichiometry", "varied compositions"):
        comps = frame_compositions(atom_numbers)
        bulk_idx = np.flatnonzero(bulk)
        if bulk_idx.size == 0:
            return bulk.copy()
        counts = Counter(comps[i] for i in bulk_idx)
        common = counts.most_common(1)[0][0]
        fixed = np.array([comps[i] == common for i in range(n)]) & bulk
        if preset == "one stoichiometry":
            return fixed
        # Round-robin over compositions (seeded order within each) up to the same count.
        by_comp: dict[tuple, list[int]] = {}
        for i in rng.permutation(bulk_idx):
            by_comp.setdefault(comps[i], []).append(int(i))
        mask = np.zeros(n, dtype=bool)
        target = int(fixed.sum())
        queues = list(by_comp.values())
        while mask.sum() < target and any(queues):
            for q in queues:
                if q and mask.sum() < target:
                    mask[q.pop(0)] = True
        return mask
    if preset == "random fraction":
        return apply_rule(TrainingRule(fraction=fraction, seed=seed), groups, atom_numbers)
    if preset == "all structures":
        return np.ones(n, dtype=bool)
    raise ValueError(f"preset: expected one of {', '.join(PRESETS)}, got {preset!r}")


def frames_by_lowest_value(
    values: np.ndarray, structure_index: np.ndarray, n_frames: int
) -> np.ndarray:
    """Frame indices ordered by their atoms' minimum value (lowest-LPR structures first).

    Parameters
    ----------
    values : numpy.ndarray of shape (n_atoms,)
    structure_index : numpy.ndarray of int, shape (n_atoms,)
    n_frames : int
    """
    mins = np.full(n_frames, np.inf)
    np.minimum.at(mins, np.asarray(structure_index), np.asarray(values, dtype=float))
    return np.argsort(mins, kind="stable")


def summary(
    mask: np.ndarray, groups: Sequence[str], atom_numbers: Sequence[np.ndarray]
) -> dict[str, object]:
    """Counts of a training set: structures, atoms, atoms per species, frames per group."""
    mask = np.asarray(mask, dtype=bool)
    groups = np.asarray([str(g) for g in groups])
    zs = [np.asarray(atom_numbers[i]) for i in np.flatnonzero(mask)]
    allz = np.concatenate(zs) if zs else np.zeros(0, dtype=int)
    uniq, counts = np.unique(allz, return_counts=True)
    return {
        "structures": int(mask.sum()),
        "atoms": int(allz.size),
        "species": {int(u): int(c) for u, c in zip(uniq, counts, strict=True)},
        "groups": dict(Counter(groups[mask].tolist())),
    }
