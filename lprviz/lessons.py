"""Numbers behind the Learn page's experiments, so its claims are computed, not written.

Every experiment compares two states of one model (two alphas, two training sets) on the
same atoms. :func:`compare_states` measures that as one table (median LPR and median
``|local error|`` per group in each state, and their ratio) and :func:`change` words a
change from its two numbers: "rise" only when the value rose by more than 25 %, "fall" only
when it fell by more than 20 %, "barely move" otherwise, always followed by the ratio and
both numbers, so a reader can check the words against the table. Each ``*_lesson`` returns
its table(s) and a ``notice`` built only from them.

Experiment 2 ("one stoichiometry or varied compositions", shipped ``teaching-stoichiometry``
set, EMT reference local energies): :func:`composition_lesson` also splits atoms by
environment (neighbours all of their own species vs unlike neighbours). Why the split
matters: totals fix per-species offsets once compositions vary, but never how the energy of
a Cu-Au contact is shared between its Cu and its Au atom (moving energy from one side of
every unlike contact to the other leaves every total unchanged). So varied compositions pin
the local energies of single-species environments and leave mixed ones loose, whatever the
training set. The two training sets share the first one's feature scale (docs/science.md §3).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lprviz import pipeline, selection
from lprviz.plots import format_number

__all__ = [
    "CHANGE_PATTERN", "CompositionLesson", "Lesson", "alpha_lesson", "change", "column",
    "common_test_frames", "compare_states", "composition_lesson", "error_notice",
    "forces_lesson", "showcase_frames",
    "small_structures_lesson", "unlike_neighbour_fraction",
]

SETS = ("one stoichiometry", "varied compositions")
SINGLE, MIXED = "neighbours all of its species", "has unlike neighbours"
LPR, ERROR = "median LPR", "median |local error| (eV)"
SHARE = "median data share of LPR"
#: How :func:`change` phrases read, for tests that check words against numbers:
#: ``rise (x4.7: 0.00015 to 0.000698)``.
CHANGE_PATTERN = re.compile(
    r"(rise|fall|barely move) \(x(\S+): (\S+) to (\S+?)(?: [A-Za-z/]+)?\)")
_RISE, _FALL = 1.25, 0.8


def change(before: float, after: float, *, unit: str = "") -> str:
    """A change worded from its numbers: ``"fall (x0.099: 0.291 to 0.0287 eV)"``.

    "rise" when ``after / before > 1.25``, "fall" when ``< 0.8``, else "barely move"; the
    ratio and both values follow (:func:`lprviz.plots.format_number`).
    """
    ratio = after / before if before > 0 else float("inf")
    word = "rise" if ratio > _RISE else "fall" if ratio < _FALL else "barely move"
    tail = f" {unit}" if unit else ""
    return (f"{word} (x{format_number(ratio, 2)}: {format_number(before)} to "
            f"{format_number(after)}{tail})")


def column(quantity: str, state: str) -> str:
    """Header of ``quantity`` (:data:`LPR`, :data:`ERROR`) in ``state`` of a comparison."""
    return f"{quantity}, {state}"


def compare_states(
    labels: np.ndarray,
    lpr: Mapping[str, np.ndarray],
    abs_error: Mapping[str, np.ndarray] | None = None,
    *,
    by: str = "group",
    data_share: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Median LPR (and ``|local error|``) of each label's atoms in two states.

    Parameters
    ----------
    labels : numpy.ndarray of str, shape (n_atoms,)
        What to group atoms by (their structure's group, their environment...).
    lpr : mapping of str to numpy.ndarray of shape (n_atoms,)
        Two states, in order (before, after): name -> per-atom LPR.
    abs_error : mapping of str to numpy.ndarray of shape (n_atoms,), optional
        Same states -> per-atom ``|local error|`` (eV).
    by : str
        Header of the label column.
    data_share : mapping of str to numpy.ndarray of shape (n_atoms,), optional
        Same states -> per-atom share of the LPR owed to the data
        (:func:`lprviz.rigidity.data_share`).

    Returns
    -------
    pandas.DataFrame
        ``by``, ``atoms``, ``median LPR, <state>`` for each state, ``LPR ratio`` (after /
        before), then ``median |local error| (eV), <state>`` and ``median data share of LPR,
        <state>`` when given.
    """
    labels = np.asarray(labels).astype(str)
    (a, b) = list(lpr)
    rows = []
    for g in dict.fromkeys(labels):
        m = labels == g
        row = {by: g, "atoms": int(m.sum())}
        for s in (a, b):
            row[column(LPR, s)] = float(np.median(lpr[s][m]))
        row["LPR ratio"] = row[column(LPR, b)] / row[column(LPR, a)]
        for quantity, values in ((ERROR, abs_error), (SHARE, data_share)):
            for s in (a, b) if values is not None else ():
                row[column(quantity, s)] = float(np.median(values[s][m]))
        rows.append(row)
    return pd.DataFrame(rows)


def _phrases(table: pd.DataFrame, quantity: str, states: Sequence[str], *, by: str,
             unit: str = "") -> str:
    a, b = states
    return "; ".join(
        f"{r[by]}: {change(r[column(quantity, a)], r[column(quantity, b)], unit=unit)}"
        for _, r in table.iterrows())


def showcase_frames(lpr_a: np.ndarray, lpr_b: np.ndarray, structure_index: np.ndarray,
                    candidates: np.ndarray, *, k: int = 4) -> tuple[int, ...]:
    """Candidate frames where the LPR changes most between two states, best first.

    A frame's score is its largest per-atom ``|log10(lpr_b / lpr_a)|``: the atom that shows
    the effect most strongly in the viewer.

    Returns
    -------
    tuple of int
        At most ``k`` frame indices among ``candidates`` (a boolean mask over frames).
    """
    shift = np.abs(np.log10(np.asarray(lpr_b) / np.asarray(lpr_a)))
    n = len(candidates)
    score = np.full(n, -np.inf)
    np.maximum.at(score, structure_index, shift)
    order = [int(i) for i in np.argsort(-score, kind="stable") if candidates[i]]
    return tuple(order[:k])


@dataclass(frozen=True)
class Lesson:
    """One experiment measured.

    Attributes
    ----------
    table : pandas.DataFrame
        :func:`compare_states` of the experiment's two states.
    notice : str
        The claim, built from ``table`` (plain text, one line).
    """

    table: pd.DataFrame
    notice: str


def _test_atoms(dataset, *results: pipeline.Results) -> np.ndarray:
    """Atoms of frames in none of the training sets."""
    train = np.zeros(len(dataset.frames), dtype=bool)
    for r in results:
        train |= np.asarray(r.train_mask, dtype=bool)
    return ~train[dataset.structure_index]


def alpha_lesson(dataset, reference: pipeline.Results, results: pipeline.Results) -> Lesson:
    """Experiment 1: one training set at a reference alpha and at another alpha.

    Rows: the groups, then ``all test atoms``. The notice words each group's LPR change,
    the test atoms' local-error change, and how much of the test atoms' LPR the data (rather
    than the regulariser, whose floor is alpha/|x|^2) account for (``Results.data_share``,
    docs/science.md §11).
    """
    a, b = f"alpha {format_number(reference.alpha)}", f"chosen alpha {format_number(results.alpha)}"
    groups = np.asarray(dataset.groups).astype(str)[dataset.structure_index]
    test = _test_atoms(dataset, reference, results)
    lpr = {a: reference.lpr, b: results.lpr}
    err = ({a: np.abs(reference.local_error), b: np.abs(results.local_error)}
           if results.local_error is not None else None)
    share = {a: reference.data_share, b: results.data_share}
    table = compare_states(groups, lpr, err, data_share=share)
    if test.any():
        def only_test(states):
            return {s: v[test] for s, v in states.items()} if states else None

        rows = compare_states(np.full(int(test.sum()), "all test atoms"), only_test(lpr),
                              only_test(err), data_share=only_test(share))
        table = pd.concat([table, rows], ignore_index=True)
    if reference.alpha == results.alpha:
        return Lesson(table, f"Notice: this is the reference alpha ({a}); move the slider "
                             "and every group's median LPR moves with it.")
    text = (f"Notice, from {a} to {b}. Median LPR per group: "
            + _phrases(table, LPR, (a, b), by="group") + ".")
    if test.any():
        last = table.iloc[-1]
        if err:
            text += (" Median |local error| of the test atoms: "
                     + change(last[column(ERROR, a)], last[column(ERROR, b)], unit="eV") + ".")
        text += (f" The data account for {last[column(SHARE, b)]:.0%} of the median test "
                 f"atom's LPR at {b} ({last[column(SHARE, a)]:.0%} at {a}); the rest is the "
                 "regulariser's floor alpha/|x|^2: rigidity from the prior, not the data.")
    return Lesson(table, text)


def small_structures_lesson(dataset, before: pipeline.Results, after: pipeline.Results, *,
                            max_atoms: int) -> Lesson:
    """Experiment 3: a training set before and after adding its small structures."""
    a, b = "without small", "with small"
    groups = np.asarray(dataset.groups).astype(str)[dataset.structure_index]
    err = ({a: np.abs(before.local_error), b: np.abs(after.local_error)}
           if after.local_error is not None else None)
    table = compare_states(groups, {a: before.lpr, b: after.lpr}, err)
    added = np.asarray(after.train_mask, bool) & ~np.asarray(before.train_mask, bool)
    added_groups = set(np.asarray(dataset.groups).astype(str)[added])
    text = (f"Notice, adding the {int(added.sum())} structures of at most {max_atoms} atoms. "
            "Median LPR per group: " + _phrases(table, LPR, (a, b), by="group") + ".")
    others = table[~table["group"].isin(added_groups) & (table["LPR ratio"] > _RISE)]
    if len(others):
        text += (" Groups with no structure added gain too (" + ", ".join(others["group"])
                 + "): their environments resemble those the small structures pin.")
    if err:
        text += (" Median |local error|: "
                 + _phrases(table, ERROR, (a, b), by="group", unit="eV") + ".")
    return Lesson(table, text)


def forces_lesson(dataset, energies: pipeline.Results, forces: pipeline.Results) -> Lesson:
    """Experiment 5: one training set fitted to its energies, then to energies and forces.

    Both results must share the feature scale (the same training set gives it). Every
    training structure of ``N`` atoms gives one energy but ``3 N`` force components, and a
    force constrains how each atom's energy changes as its neighbours move: rows that reach
    the local terms directly instead of only through their sum. So the force rows can only
    add curvature (docs/science.md §12): no LPR falls.
    """
    a, b = "energies only", "energies + forces"
    groups = np.asarray(dataset.groups).astype(str)[dataset.structure_index]
    err = ({a: np.abs(energies.local_error), b: np.abs(forces.local_error)}
           if forces.local_error is not None else None)
    table = compare_states(groups, {a: energies.lpr, b: forces.lpr}, err)
    train = np.asarray(forces.train_mask, dtype=bool)
    n_atoms = int(np.asarray(dataset.frame_sizes)[train].sum())
    text = (f"Notice, the same {int(train.sum())} training structures ({n_atoms} atoms) give "
            f"{int(train.sum())} energies but {3 * n_atoms} force components (weight "
            f"lambda_F = {format_number(forces.force_weight)} A^2/atom^2). Median LPR per "
            "group: " + _phrases(table, LPR, (a, b), by="group") + ".")
    if err:
        text += (" Median |local error|: "
                 + _phrases(table, ERROR, (a, b), by="group", unit="eV") + ".")
    text += (" Each force is a derivative of a total energy: the many force rows fix more of "
             "the model, so no LPR falls, but they cannot tell how a total is shared among "
             "the atoms either (energy moved between atoms so that every total stays the "
             "same leaves every force the same too), so the local energies' errors against "
             "the reference's own split can move either way.")
    return Lesson(table, text)


def error_notice(check) -> str:
    """Experiment 4's claim from a :class:`lprviz.validation.LocalErrorCheck`."""
    low, rest = check.frac_large_low, check.frac_large_rest
    text = (f"Notice: {low:.0%} of the lowest-LPR 5% of test atoms have a large local error, "
            f"against {rest:.0%} of the other test atoms (rank correlation {check.spearman:.2f}")
    if low > 2 * rest:
        return text + "): the large errors crowd among the lowest-LPR atoms. In a real " \
            "dataset there is no true local energy to compare with, but the LPR is still " \
            "there: it is the warning you can compute."
    return text + "): here the LPR does not single out the large errors."


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
        :func:`compare_states` by ``group`` over all atoms (both training sets compared on
        the same atoms), states :data:`SETS`.
    environments : pandas.DataFrame
        :func:`compare_states` by ``environment`` (:data:`SINGLE`, :data:`MIXED`).
    test_rmse : dict of str to float
        RMSE of total energies per atom on the common test frames
        (:func:`common_test_frames`, held out of both training sets), eV/atom.
    notice : str
        The claim, built from the numbers above (Markdown-safe plain text).
    lpr, abs_local_error : dict of str to numpy.ndarray of shape (n_atoms,)
        Per training set, for the viewer.
    frames : tuple of int
        Frames holding both elements, in neither training set, where the LPR changes most
        (:func:`showcase_frames`); empty when no frame qualifies.
    train : dict of str to numpy.ndarray of bool, shape (n_frames,)
        Each training set.
    test : numpy.ndarray of bool, shape (n_frames,)
        The common test frames of ``test_rmse``.
    """

    groups: pd.DataFrame
    environments: pd.DataFrame
    test_rmse: dict[str, float]
    notice: str
    lpr: dict[str, np.ndarray]
    abs_local_error: dict[str, np.ndarray]
    frames: tuple[int, ...]
    train: dict[str, np.ndarray]
    test: np.ndarray


#: Share of each group's labelled frames held out of both training sets of experiment 2.
TEST_SHARE = 0.25


def common_test_frames(groups, has_energy, *, seed: int = 0) -> np.ndarray:
    """Experiment 2's test set: :data:`TEST_SHARE` of the labelled frames of every group
    (at least one of each group of two or more; seeded), held out of both training sets, so
    their test errors are measured on the same structures.

    Parameters
    ----------
    groups : sequence of str
        Group of each frame.
    has_energy : array-like of bool, shape (n_frames,)
        Which frames are labelled.
    seed : int
        Of the random choice.

    Returns
    -------
    numpy.ndarray of bool, shape (n_frames,)
    """
    groups = np.asarray(groups).astype(str)
    labelled = np.asarray(has_energy, dtype=bool)
    rng = np.random.default_rng(seed)
    test = np.zeros(groups.size, dtype=bool)
    for g in dict.fromkeys(groups.tolist()):
        idx = np.flatnonzero((groups == g) & labelled)
        if idx.size > 1:
            size = max(1, round(TEST_SHARE * idx.size))
            test[rng.choice(idx, size=size, replace=False)] = True
    return test


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
        Of the common test set (:func:`common_test_frames`) and of the ``varied
        compositions`` preset.

    Returns
    -------
    CompositionLesson
    """
    from lprviz.errors import InputError

    if dataset.true_local_energies is None:
        raise InputError(f"{dataset.name}: experiment 2 needs true local energies")
    sidx = dataset.structure_index
    numbers = [a.numbers for a in dataset.frames]
    env = np.where(unlike_neighbour_fraction(dataset.frames, cutoff) > 0, MIXED, SINGLE)
    sizes = np.bincount(sidx, minlength=len(dataset.frames))
    test = common_test_frames(dataset.groups, dataset.has_energy, seed=seed)
    rest = np.flatnonzero(~test)  # both training sets are drawn from the other frames
    results, rmse, scale = {}, {}, None
    for name in SETS:
        train = np.zeros(len(dataset.frames), dtype=bool)
        train[rest] = selection.preset_mask(name, np.asarray(dataset.groups)[rest],
                                            [numbers[i] for i in rest], seed=seed)
        fit = pipeline.prepare(dataset, descriptors, train, scale=scale)
        scale = fit.scale  # the second set in the first one's feature space (§3)
        res = results[name] = pipeline.evaluate(fit, alpha)
        per_atom = res.energy_error[test] / sizes[test]
        rmse[name] = float(np.sqrt(np.mean(per_atom**2))) if per_atom.size else float("nan")
    lpr = {s: r.lpr for s, r in results.items()}
    err = {s: np.abs(r.local_error) for s, r in results.items()}
    groups = compare_states(np.asarray(dataset.groups).astype(str)[sidx], lpr, err)
    envs = compare_states(env, lpr, err, by="environment")
    in_neither = ~(results[SETS[0]].train_mask | results[SETS[1]].train_mask)
    # shown beside each other, single-species and unlike environments need both elements
    mixed = np.array([np.unique(z).size > 1 for z in numbers])
    frames = showcase_frames(lpr[SETS[0]], lpr[SETS[1]], sidx, in_neither & mixed)
    return CompositionLesson(groups=groups, environments=envs, test_rmse=rmse,
                             notice=_notice(groups, envs, rmse, int(test.sum())), lpr=lpr,
                             abs_local_error=err, frames=frames,
                             train={s: r.train_mask for s, r in results.items()}, test=test)


def _notice(groups: pd.DataFrame, envs: pd.DataFrame, rmse: dict[str, float],
            n_test: int) -> str:
    one, var = SETS
    e = envs.set_index("environment")
    single, mixed = e.loc[SINGLE], e.loc[MIXED]
    return (
        f"Notice, from {one} to {var}. Median LPR per group: "
        + _phrases(groups, LPR, SETS, by="group")
        + f". RMSE of total energies on the same {n_test} held-out test structures: "
        + change(rmse[one], rmse[var], unit="eV/atom")
        + ". Atoms whose neighbours are all of their own species: LPR "
        + change(single[column(LPR, one)], single[column(LPR, var)])
        + ", local errors " + change(single[column(ERROR, one)], single[column(ERROR, var)],
                                     unit="eV")
        + ". Atoms with unlike neighbours: LPR "
        + change(mixed[column(LPR, one)], mixed[column(LPR, var)])
        + ", local errors " + change(mixed[column(ERROR, one)], mixed[column(ERROR, var)],
                                     unit="eV")
        + ". Why: totals fix the per-species offsets once compositions vary, but no set of "
        "total energies can tell how the energy of a Cu-Au contact is shared between its two "
        "atoms (moving it from one side to the other leaves every total unchanged), so the "
        "reference's split is one of many the data allow."
    )
