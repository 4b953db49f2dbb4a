"""Numbers behind the Learn page's experiments, so its claims are computed, not written.

Experiment 2 ("one stoichiometry or varied compositions", shipped ``teaching-stoichiometry``
set, EMT reference local energies): :func:`composition_lesson` trains both ways and returns
per-group LPR and local errors, the local errors split by environment (atoms whose
neighbours are all of their own species vs atoms with unlike neighbours), the test error of
total energies, and a ``notice`` sentence built from those numbers.

Why the split matters: totals fix per-species offsets once compositions vary, but never how
the energy of a Cu-Au contact is shared between its Cu and its Au atom (moving energy from
one side of every unlike contact to the other leaves every total unchanged). So varied
compositions pin the local energies of single-species environments and leave mixed ones
loose, whatever the training set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lprviz import pipeline, selection

__all__ = ["CompositionLesson", "composition_lesson", "unlike_neighbour_fraction"]

SETS = ("one stoichiometry", "varied compositions")
SINGLE, MIXED = "neighbours all of its species", "has unlike neighbours"


def unlike_neighbour_fraction(frames, cutoff: float) -> np.ndarray:
    """Fraction of each atom's neighbours (within ``cutoff``, Angstrom) of another species.

    Returns
    -------
    numpy.ndarray of shape (n_atoms,)
        Dataset atom order; 0 for an atom without neighbours.
    """
    from ase.neighborlist import neighbor_list

    out = []
    for atoms in frames:
        i, j = neighbor_list("ij", atoms, float(cutoff), self_interaction=False)
        z = atoms.numbers
        unlike = np.bincount(i, weights=z[i] != z[j], minlength=len(atoms))
        out.append(unlike / np.maximum(np.bincount(i, minlength=len(atoms)), 1))
    return np.concatenate(out) if out else np.zeros(0)


@dataclass(frozen=True)
class CompositionLesson:
    """Experiment 2 measured.

    Attributes
    ----------
    groups : pandas.DataFrame
        ``training set``, ``group``, ``median LPR``, ``median |local error| (eV)`` (all
        atoms of the group, so both training sets are compared on the same atoms).
    environments : pandas.DataFrame
        ``training set``, ``environment``, ``atoms``, ``median LPR``,
        ``median |local error| (eV)``.
    test_rmse : dict of str to float
        RMSE of total energies per atom on each training set's test frames (eV/atom).
    notice : str
        The claim, built from the numbers above (Markdown-safe plain text).
    """

    groups: pd.DataFrame
    environments: pd.DataFrame
    test_rmse: dict[str, float]
    notice: str


def composition_lesson(dataset, descriptors, *, alpha: float = 1e-4, cutoff: float = 3.2,
                       seed: int = 0) -> CompositionLesson:
    """Train on one stoichiometry and on varied compositions; measure what changes.

    Parameters
    ----------
    dataset : lprviz.datasets.Dataset
        Needs ``true_local_energies`` (e.g. ``teaching-stoichiometry``).
    descriptors : lprviz.features.Descriptors
    alpha : float
    cutoff : float
        Neighbour distance (Angstrom) for the environment split (first shell of Cu/Au fcc).
    seed : int
        Of the ``varied compositions`` preset.

    Returns
    -------
    CompositionLesson
    """
    from lprviz.errors import InputError

    if dataset.true_local_energies is None:
        raise InputError(f"{dataset.name}: experiment 2 needs true local energies")
    sidx = dataset.structure_index
    groups_atom = np.asarray(dataset.groups).astype(str)[sidx]
    numbers = [a.numbers for a in dataset.frames]
    env = np.where(unlike_neighbour_fraction(dataset.frames, cutoff) > 0, MIXED, SINGLE)
    sizes = np.bincount(sidx, minlength=len(dataset.frames))
    rows, env_rows, rmse = [], [], {}
    for name in SETS:
        train = selection.preset_mask(name, dataset.groups, numbers, seed=seed)
        res = pipeline.evaluate(pipeline.prepare(dataset, descriptors, train), alpha)
        err = np.abs(res.local_error)
        for g in dict.fromkeys(groups_atom):
            m = groups_atom == g
            rows.append((name, g, float(np.median(res.lpr[m])), float(np.median(err[m]))))
        for e in (SINGLE, MIXED):
            m = env == e
            env_rows.append((name, e, int(m.sum()),
                             float(np.median(res.lpr[m])) if m.any() else float("nan"),
                             float(np.median(err[m])) if m.any() else float("nan")))
        test = ~train & np.asarray(dataset.has_energy, bool)
        per_atom = res.energy_error[test] / sizes[test]
        rmse[name] = float(np.sqrt(np.mean(per_atom**2))) if per_atom.size else float("nan")
    groups = pd.DataFrame(rows, columns=["training set", "group", "median LPR",
                                         "median |local error| (eV)"])
    envs = pd.DataFrame(env_rows, columns=["training set", "environment", "atoms",
                                           "median LPR", "median |local error| (eV)"])
    return CompositionLesson(groups=groups, environments=envs, test_rmse=rmse,
                             notice=_notice(groups, envs, rmse))


def _change(before: float, after: float) -> str:
    from lprviz.plots import format_number as f

    ratio = after / before if before > 0 else float("inf")
    word = ("barely move" if 0.8 <= ratio <= 1.25 else "fall" if ratio < 1 else "rise")
    return f"{word} ({f(before)} to {f(after)} eV)"


def _notice(groups: pd.DataFrame, envs: pd.DataFrame, rmse: dict[str, float]) -> str:
    from lprviz.plots import format_number as f

    one, var = SETS
    lpr = groups.pivot(index="group", columns="training set", values="median LPR")
    gains = ", ".join(f"x{f(lpr.loc[g, var] / lpr.loc[g, one], 2)} for {g}" for g in lpr.index)
    by_env = envs.set_index(["environment", "training set"])
    err = by_env["median |local error| (eV)"]
    elpr = by_env["median LPR"]
    return (
        f"Notice: varied compositions raise the median LPR ({gains}) and the test error of "
        f"total energies goes from {f(rmse[one])} to {f(rmse[var])} eV/atom. The change sits "
        f"in atoms whose neighbours are all of their own species: their LPR rises "
        f"x{f(elpr[SINGLE, var] / elpr[SINGLE, one], 2)} and their local errors "
        f"{_change(err[SINGLE, one], err[SINGLE, var])}. Atoms with unlike neighbours gain "
        f"x{f(elpr[MIXED, var] / elpr[MIXED, one], 2)} in LPR and their local errors "
        f"{_change(err[MIXED, one], err[MIXED, var])}: totals fix the per-species offsets "
        "once compositions vary, but no set of total energies can tell how the energy of a "
        "Cu-Au contact is shared between its two atoms (moving it from one side to the other "
        "leaves every total unchanged), so the reference's split is one of many the data "
        "allow and mixed environments stay loose."
    )
