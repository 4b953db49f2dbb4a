r"""Empirical checks of the LPR: does a low LPR really mean a loose local prediction?

* :func:`committee_check` - train a committee on random subsets of the training structures;
  the spread of each atom's local prediction should grow with :math:`1/\mathrm{LPR}` (the
  Bayesian reading: :math:`\mathrm{Var}[\tilde y_k] = s^2/\mathrm{LPR}_k`, docs/science.md §2).
* :func:`local_error_check` - where reference local energies exist (EMT datasets), the
  absolute local error against the LPR, and how often large errors fall on the lowest-LPR
  atoms compared with the rest.
* :func:`tradeoff` - regularisation buys rigidity with accuracy: test RMSE (per atom) of
  total energies against the median test LPR as alpha varies.
* :func:`component_rigidity` - LCPR per descriptor block (species pair, angular channel,
  composition baseline) of one atom: which part of its description is poorly determined.
* :func:`pr_table` - the prediction rigidity of every structure as a table.

All functions return arrays, small dataclasses or DataFrames; plotting lives in
:mod:`lprviz.insight_plots`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from lprviz.errors import InputError
from lprviz.models import fit_committee
from lprviz.rigidity import RigiditySolver

__all__ = [
    "CommitteeCheck",
    "ComponentRigidity",
    "LocalErrorCheck",
    "Tradeoff",
    "committee_check",
    "component_rigidity",
    "fit_blocks",
    "local_error_check",
    "pr_table",
    "tradeoff",
]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


# ------------------------------------------------------------------ (a) committee


@dataclass(frozen=True)
class CommitteeCheck:
    """Committee spread of local predictions against the LPR.

    Attributes
    ----------
    atoms : numpy.ndarray of int of shape (n,)
        Evaluated atoms (dataset atom order indices).
    spread : numpy.ndarray of shape (n,)
        Standard deviation of the members' local predictions (eV).
    lpr : numpy.ndarray of shape (n,)
        LPR of the atoms for the full training set.
    spearman : float
        Spearman rank correlation between ``spread`` and ``1/lpr`` (positive when the LPR
        predicts the committee's disagreement).
    n_models : int
    """

    atoms: np.ndarray
    spread: np.ndarray
    lpr: np.ndarray
    spearman: float
    n_models: int


def committee_check(
    Phi_atoms: np.ndarray,
    structure_index: np.ndarray,
    energies: np.ndarray,
    train_mask: np.ndarray,
    alpha: float,
    *,
    atoms: np.ndarray | None = None,
    solver: RigiditySolver | None = None,
    scale: float | None = None,
    n_models: int = 8,
    fraction: float = 0.7,
    seed: int = 0,
    force_gradients: np.ndarray | None = None,
    forces: np.ndarray | None = None,
    force_weight: float | None = None,
) -> CommitteeCheck:
    """Train a committee on random subsets of the training frames; compare spread and LPR.

    Parameters
    ----------
    Phi_atoms : numpy.ndarray of shape (n_atoms, d)
        Raw model features of every atom of the dataset (e.g.
        ``lprviz.pipeline.Fit.model_features``).
    structure_index : numpy.ndarray of int of shape (n_atoms,)
        Frame of each atom.
    energies : numpy.ndarray of shape (n_frames,)
        Total energies (finite for training frames).
    train_mask : numpy.ndarray of bool of shape (n_frames,)
        Training frames.
    alpha : float
        Regulariser of every member and of the LPR.
    atoms : numpy.ndarray of int, optional
        Atoms to evaluate; default all.
    solver : RigiditySolver, optional
        Solver of the full training set on the same features (reused for the LPR); built
        here otherwise.
    scale : float, optional
        Feature scale (default ``solver.scale``, or the sfactor of the training atoms).
    n_models, fraction, seed
        Committee size, fraction of training frames per member, seed
        (see :func:`lprviz.models.fit_committee`).
    force_gradients : numpy.ndarray of shape (n_atoms, 3, d_base), optional
        Summed position gradients of every atom (``Fit.force_gradients``): members are then
        trained on energies and forces.
    forces : numpy.ndarray of shape (n_atoms, 3), optional
        Reference forces of every atom (``Fit.forces``; NaN rows: energies only).
    force_weight : float, optional
        :math:`\\lambda_F`; with the force terms, ``solver`` is required (the force-trained
        solver of the full training set, ``Fit.solver``).

    Returns
    -------
    CommitteeCheck
    """
    Phi = np.asarray(Phi_atoms, dtype=np.float64)
    structure_index = np.asarray(structure_index)
    train_mask = np.asarray(train_mask, dtype=bool)
    energies = np.asarray(energies, dtype=np.float64)
    if Phi.shape[0] != structure_index.shape[0]:
        raise InputError(
            f"committee: {Phi.shape[0]} feature rows for {structure_index.shape[0]} atoms"
        )
    train_frames = np.flatnonzero(train_mask)
    if train_frames.size < 2:
        raise InputError("committee: expected at least 2 training structures")
    atom_train = train_mask[structure_index]
    remap = np.full(train_mask.shape[0], -1)
    remap[train_frames] = np.arange(train_frames.size)
    trained_on_forces = force_weight is not None
    if solver is None:
        if trained_on_forces:
            raise InputError("committee: with forces, pass the force-trained solver "
                             "(Fit.solver)")
        solver = RigiditySolver.from_atoms(
            Phi[atom_train], remap[structure_index[atom_train]], scale=scale
        )
    scale = solver.scale if scale is None else float(scale)
    committee = fit_committee(
        Phi[atom_train], remap[structure_index[atom_train]], energies[train_frames], alpha,
        n_models=n_models, fraction=fraction, seed=seed, scale=scale,
        force_gradients=None if force_gradients is None else force_gradients[atom_train],
        forces=None if forces is None else np.asarray(forces)[atom_train],
        force_weight=force_weight,
    )
    atoms = np.arange(Phi.shape[0]) if atoms is None else np.asarray(atoms, dtype=np.int64)
    spread = committee.spread(Phi[atoms])
    lpr = solver.lpr(Phi[atoms], alpha)
    return CommitteeCheck(
        atoms=atoms, spread=spread, lpr=lpr, spearman=_spearman(spread, 1.0 / lpr),
        n_models=int(n_models),
    )


# ------------------------------------------------------------------ (b) local errors


@dataclass(frozen=True)
class LocalErrorCheck:
    """Absolute local errors against the LPR.

    Attributes
    ----------
    abs_error : numpy.ndarray of shape (n,)
        ``|local prediction - reference local energy|`` (eV).
    lpr : numpy.ndarray of shape (n,)
    spearman : float
        Rank correlation of ``abs_error`` with ``1/lpr`` (positive: low LPR, large error).
    threshold : float
        A local error is "large" above this value (a quantile of ``abs_error``).
    low_lpr : numpy.ndarray of bool of shape (n,)
        The lowest-LPR atoms (a fraction of all).
    frac_large_low : float
        Fraction of large errors among the lowest-LPR atoms.
    frac_large_rest : float
        Fraction of large errors among the other atoms.
    """

    abs_error: np.ndarray
    lpr: np.ndarray
    spearman: float
    threshold: float
    low_lpr: np.ndarray
    frac_large_low: float
    frac_large_rest: float


def local_error_check(
    lpr: np.ndarray,
    local_error: np.ndarray,
    *,
    low_fraction: float = 0.05,
    large_quantile: float = 0.9,
) -> LocalErrorCheck:
    """How often the lowest-LPR atoms carry the large local errors.

    Parameters
    ----------
    lpr : numpy.ndarray of shape (n,)
    local_error : numpy.ndarray of shape (n,)
        Local prediction minus reference local energy (e.g. ``Results.local_error``).
    low_fraction : float
        The lowest-LPR ``low_fraction`` of atoms (at least one) form the low group.
    large_quantile : float
        Errors above this quantile of ``|local_error|`` count as large.

    Returns
    -------
    LocalErrorCheck
    """
    lpr = np.asarray(lpr, dtype=np.float64)
    err = np.abs(np.asarray(local_error, dtype=np.float64))
    if lpr.shape != err.shape or lpr.ndim != 1 or lpr.size < 2:
        raise InputError(
            f"local errors: expected two equal 1D arrays of >= 2 atoms, got {lpr.shape} "
            f"and {err.shape}"
        )
    if not 0 < low_fraction < 1 or not 0 < large_quantile < 1:
        raise InputError("local errors: expected 0 < low_fraction < 1 and 0 < large_quantile < 1")
    n_low = min(max(1, int(round(low_fraction * lpr.size))), lpr.size - 1)
    low = np.zeros(lpr.size, dtype=bool)
    low[np.argsort(lpr, kind="stable")[:n_low]] = True
    threshold = float(np.quantile(err, large_quantile))
    large = err > threshold
    return LocalErrorCheck(
        abs_error=err, lpr=lpr, spearman=_spearman(err, 1.0 / lpr), threshold=threshold,
        low_lpr=low, frac_large_low=float(large[low].mean()),
        frac_large_rest=float(large[~low].mean()),
    )


# ------------------------------------------------------------------ (c) trade-off


@dataclass(frozen=True)
class Tradeoff:
    """Accuracy against rigidity as alpha varies.

    Attributes
    ----------
    alphas : numpy.ndarray of shape (n_alphas,)
    rmse_per_atom : numpy.ndarray of shape (n_alphas,)
        RMSE of (predicted - reference) total energy per atom over the test frames (eV/atom).
    median_lpr : numpy.ndarray of shape (n_alphas,)
        Median LPR of the test atoms.
    n_test_frames : int
    """

    alphas: np.ndarray
    rmse_per_atom: np.ndarray
    median_lpr: np.ndarray
    n_test_frames: int


def tradeoff(fit, alphas: Sequence[float], *, test_mask: np.ndarray | None = None) -> Tradeoff:
    """Test RMSE of totals (per atom) and median test LPR for each alpha.

    Parameters
    ----------
    fit : lprviz.pipeline.Fit
        From :func:`lprviz.pipeline.prepare` (one factorisation serves every alpha).
    alphas : sequence of float
    test_mask : numpy.ndarray of bool of shape (n_frames,), optional
        Test frames; default: frames not in training. Only those with an energy enter the
        RMSE; all their atoms enter the median LPR.

    Returns
    -------
    Tradeoff
    """
    from lprviz.pipeline import evaluate

    test = ~fit.train_mask if test_mask is None else np.asarray(test_mask, dtype=bool)
    with_energy = test & np.isfinite(fit.energies)
    if not with_energy.any():
        raise InputError("trade-off: no test structure with a reference energy")
    sizes = np.bincount(fit.structure_index, minlength=fit.n_frames)
    atoms = test[fit.structure_index]
    alphas = np.asarray(list(alphas), dtype=np.float64)
    rmse, med = [], []
    for a in alphas:
        res = evaluate(fit, float(a))
        per_atom = (res.energy_pred - fit.energies)[with_energy] / sizes[with_energy]
        rmse.append(float(np.sqrt(np.mean(per_atom**2))))
        med.append(float(np.median(res.lpr[atoms])))
    return Tradeoff(alphas=alphas, rmse_per_atom=np.asarray(rmse), median_lpr=np.asarray(med),
                    n_test_frames=int(with_energy.sum()))


# ------------------------------------------------------------------ (d) LCPR


@dataclass(frozen=True)
class ComponentRigidity:
    """LCPR of one atom per descriptor block.

    Attributes
    ----------
    names : list of str
        Block names.
    lcpr : numpy.ndarray of shape (n_blocks,)
        LCPR of the atom's descriptor masked to each block.
    lpr : float
        LPR of the full descriptor.
    present : numpy.ndarray of bool of shape (n_blocks,)
        False for blocks where the atom's descriptor is all zero (e.g. a species pair absent
        from its environment): their LCPR is the huge finite value of a zero descriptor and
        says nothing about the training data.
    """

    names: list[str]
    lcpr: np.ndarray
    lpr: float
    present: np.ndarray


def component_rigidity(
    solver: RigiditySolver,
    x_atom_raw: np.ndarray,
    alpha: float,
    blocks: Mapping[str, np.ndarray],
) -> ComponentRigidity:
    r"""LCPR per block for one atom.

    .. math::
        \mathrm{LCPR}_{c} = \frac{1}{(\mathbf{x}\odot\mathbf{m}_c)^\top
            (\mathbf{X}^\top\mathbf{X} + \alpha\mathbf{I})^{-1}(\mathbf{x}\odot\mathbf{m}_c)}

    A block whose LCPR is far below the others is the part of the environment's description
    the training data pin down least. By the triangle inequality in the
    :math:`(\mathbf{X}^\top\mathbf{X} + \alpha\mathbf{I})^{-1}` norm, for blocks that
    partition the columns :math:`\mathrm{LPR}^{-1/2} \le \sum_c \mathrm{LCPR}_c^{-1/2}`.

    Parameters
    ----------
    solver : RigiditySolver
    x_atom_raw : numpy.ndarray of shape (d,) or (1, d)
        Raw model features of the atom.
    alpha : float
    blocks : mapping of str to index array
        Column indices per block (e.g. :func:`fit_blocks`).

    Returns
    -------
    ComponentRigidity
    """
    x = np.asarray(x_atom_raw, dtype=np.float64).reshape(1, -1)
    if not blocks:
        raise InputError("LCPR: no descriptor blocks given")
    out = solver.lcpr(x, alpha, blocks)
    names = list(out)
    present = np.array([bool(np.any(x[0, np.asarray(blocks[n])] != 0)) for n in names])
    return ComponentRigidity(
        names=names, lcpr=np.array([out[n][0] for n in names]),
        lpr=float(solver.lpr(x, alpha)[0]), present=present,
    )


def fit_blocks(fit, descriptors) -> dict[str, np.ndarray]:
    """Column blocks of a fit's model features: SOAP blocks plus the composition baseline.

    Parameters
    ----------
    fit : lprviz.pipeline.Fit
    descriptors : lprviz.features.Descriptors

    Returns
    -------
    dict of str to numpy.ndarray of int
        Species-pair and angular blocks of the SOAP columns, and ``"baseline"`` for the
        per-species columns when the model has them.

    Raises
    ------
    InputError
        For the sparse-kernel and nn models: their features do not split into SOAP blocks;
        for features that are not SOAP (:mod:`lprviz.sources`): they have no blocks.
    """
    if fit.spec.kind != "linear":
        raise InputError(f"LCPR per SOAP block needs the linear model ({fit.spec.kind} "
                         "features mix all blocks)")
    if not descriptors.blocks:
        raise InputError("LCPR per descriptor block needs SOAP features (per-atom arrays and "
                         "backbone features have no blocks)")
    d_soap = descriptors.values.shape[1]
    blocks = {name: np.asarray(cols) for name, cols in descriptors.blocks.items()}
    if fit.solver.n_features > d_soap:
        blocks["baseline"] = np.arange(d_soap, fit.solver.n_features)
    return blocks


# ------------------------------------------------------------------ (e) PR table


def pr_table(
    dataset,
    pr: np.ndarray,
    *,
    frames: Sequence[int] | None = None,
    lpr: np.ndarray | None = None,
    train_mask: np.ndarray | None = None,
) -> pd.DataFrame:
    """Prediction rigidity of structures as a table, lowest PR first.

    Parameters
    ----------
    dataset : lprviz.datasets.Dataset
    pr : numpy.ndarray of shape (n_frames,)
        PR of every frame (e.g. ``Results.pr``).
    frames : sequence of int, optional
        Rows to include (default all frames).
    lpr : numpy.ndarray of shape (n_atoms,), optional
        Per-atom LPR: adds each structure's minimum and median LPR.
    train_mask : numpy.ndarray of bool of shape (n_frames,), optional
        Adds a ``train`` column.

    Returns
    -------
    pandas.DataFrame
        Columns ``frame, name, group, atoms, composition, PR`` (then ``min_LPR,
        median_LPR``, ``train`` when given).
    """
    pr = np.asarray(pr, dtype=np.float64)
    n = len(dataset.frames)
    if pr.shape != (n,):
        raise InputError(f"PR table: expected {n} PR values (one per frame), got {pr.shape}")
    frames = np.arange(n) if frames is None else np.asarray(frames, dtype=np.int64)
    table = pd.DataFrame({
        "frame": frames,
        "name": [str(dataset.names[i]) for i in frames],
        "group": [str(dataset.groups[i]) for i in frames],
        "atoms": np.asarray(dataset.frame_sizes)[frames].astype(int),
        "composition": [dataset.frames[i].get_chemical_formula() for i in frames],
        "PR": pr[frames],
    })
    if lpr is not None:
        s = pd.Series(np.asarray(lpr, dtype=np.float64)).groupby(
            np.asarray(dataset.structure_index))
        table["min_LPR"] = s.min().reindex(frames).to_numpy()
        table["median_LPR"] = s.median().reindex(frames).to_numpy()
    if train_mask is not None:
        table["train"] = np.asarray(train_mask, dtype=bool)[frames]
    return table.sort_values("PR", kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------ LCPR block kinds

#: Kinds of descriptor block, in display order (see :func:`block_kind`).
BLOCK_KINDS = ("species pair", "angular channel", "composition baseline")

#: How the LCPR blocks relate; one paragraph a page can show under the LCPR bars.
LCPR_BLOCKS_EXPLANATION = (
    "Each bar is the LPR of this atom's descriptor with every column outside one block set "
    "to zero. The SOAP columns are cut two ways: a species-pair block (e.g. Cu-Au) holds "
    "every angular channel of that pair, an angular-channel block (e.g. l=2) holds that "
    "channel of every species pair, so each (pair, l) piece lies in one block of each kind "
    "and the two kinds overlap; the composition baseline is a third, separate block. "
    "Blocks of one kind, with the baseline, partition the features (x = sum over c of x_c), "
    "so 1/LPR = sum over c of 1/LCPR_c plus the cross terms x_c^T (X^T X + alpha I)^-1 x_c' "
    "for c != c'. The inverse LCPRs add up to the inverse LPR only when those cross terms "
    "vanish (blocks orthogonal in that metric); in general only "
    "LPR^(-1/2) <= sum over c of LCPR_c^(-1/2) holds, and LCPRs of different kinds are never "
    "combined. Read each group on its own: its lowest bar is the species pair, or the "
    "angular channel, that the training data pin down least for this atom."
)


def block_kind(name: str) -> str:
    """Kind of a descriptor block from its name (:attr:`Descriptors.blocks`, :func:`fit_blocks`).

    ``"l=2"`` -> ``"angular channel"``; ``"baseline"`` -> ``"composition baseline"``;
    anything else (``"Cu-Au"``) -> ``"species pair"``.
    """
    name = str(name)
    if name.startswith("l="):
        return BLOCK_KINDS[1]
    if name == "baseline":
        return BLOCK_KINDS[2]
    return BLOCK_KINDS[0]
