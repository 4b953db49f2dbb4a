"""Committees of force-trained ridge models: members equal fit_ridge on their structures'
energies and forces (an independent force Gram), and their spread tracks 1/LPR."""

from __future__ import annotations

import numpy as np
import pytest

from lprviz import datasets
from lprviz.errors import InputError
from lprviz.features import SOAP_PRESETS, SoapHypers, compute_soap
from lprviz.forces import force_gram
from lprviz.models import fit_committee, fit_ridge
from lprviz.pipeline import ModelSpec, prepare
from lprviz.validation import committee_check

HYPERS = SoapHypers(cutoff=3.5, max_radial=2, max_angular=2)
ALPHA = 1e-3


@pytest.fixture(scope="module")
def small():
    ds = datasets.load("emt-alloys")
    groups = np.asarray(ds.groups)
    picks = []
    for g in ("bulk-alloy", "surface", "vacancy", "cluster"):
        picks += [int(i) for i in np.flatnonzero(groups == g)[:3]]
    ds = ds.subset(sorted(picks))
    desc = compute_soap(ds.frames, HYPERS, species=ds.species, cache=False)
    fit = prepare(ds, desc, np.ones(len(ds.frames), dtype=bool), ModelSpec(), force_weight=0.3)
    return ds, desc, fit


@pytest.mark.parametrize("fraction", [0.8, 0.3])  # the left-out and the direct Gram
def test_force_trained_members_equal_fit_ridge_on_their_structures(small, fraction):
    ds, desc, fit = small
    phi = fit.model_features(np.asarray(desc.values, dtype=np.float64), desc.atom_numbers)
    forces = fit.forces.copy()
    forces[ds.structure_index == 2] = np.nan  # one frame counts for energies only
    committee = fit_committee(phi, ds.structure_index, ds.energies, ALPHA, n_models=3,
                              fraction=fraction, seed=4, scale=fit.scale,
                              force_gradients=fit.force_gradients, forces=forces,
                              force_weight=0.3)
    n_baseline = phi.shape[1] - fit.force_gradients.shape[2]
    for model, chosen in zip(committee.models, committee.subsets, strict=True):
        frames = [ds.frames[i] for i in chosen]
        if 2 in chosen:
            frames[list(chosen).index(2)] = frames[list(chosen).index(2)].copy()
            frames[list(chosen).index(2)].calc = None  # no forces
        reference = force_gram(frames, HYPERS, species=ds.species, n_extra_columns=n_baseline)
        atoms = np.isin(ds.structure_index, chosen)
        remap = np.full(len(ds.frames), -1)
        remap[chosen] = np.arange(chosen.size)
        expected = fit_ridge(phi[atoms], remap[ds.structure_index[atoms]], ds.energies[chosen],
                             ALPHA, scale=fit.scale, forces=reference, force_weight=0.3)
        np.testing.assert_allclose(model.weights, expected.weights, rtol=1e-5,
                                   atol=1e-7 * np.abs(expected.weights).max())


def test_force_arguments_go_together(small):
    ds, desc, fit = small
    phi = fit.model_features(np.asarray(desc.values, dtype=np.float64), desc.atom_numbers)
    with pytest.raises(InputError, match="together"):
        fit_committee(phi, ds.structure_index, ds.energies, ALPHA, force_weight=0.3)
    with pytest.raises(InputError, match="force-trained solver"):
        committee_check(phi, ds.structure_index, ds.energies, fit.train_mask, ALPHA,
                        force_gradients=fit.force_gradients, forces=fit.forces,
                        force_weight=0.3)


def test_force_trained_committee_spread_tracks_inverse_lpr():
    """Bulk + surface training frames of emt-alloys (fast SOAP): the spread of a force-trained
    committee ranks the atoms as the force-trained 1/LPR does."""
    full = datasets.load("emt-alloys")
    keep = np.flatnonzero(np.isin(full.groups, ["bulk-alloy", "surface", "vacancy"]))
    ds = full.subset(keep[::2])
    desc = compute_soap(ds.frames, SOAP_PRESETS["fast"], species=ds.species)
    groups = np.asarray(ds.groups)
    train = groups == "bulk-alloy"
    train[np.flatnonzero(groups == "surface")[:4]] = True
    fit = prepare(ds, desc, train, ModelSpec(), force_weight=0.03)
    phi = fit.model_features(np.asarray(desc.values, dtype=np.float64), desc.atom_numbers)
    check = committee_check(phi, ds.structure_index, ds.energies, train, 1e-4,
                            solver=fit.solver, n_models=6, seed=0,
                            force_gradients=fit.force_gradients, forces=fit.forces,
                            force_weight=0.03)
    assert check.spearman > 0.7
    np.testing.assert_allclose(check.lpr, fit.solver.lpr(phi, 1e-4), rtol=1e-10)
