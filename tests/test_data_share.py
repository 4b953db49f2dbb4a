"""Data share of the rigidity, 1 - (alpha / |x̂|^2) / LPR (docs/science.md §11)."""

from __future__ import annotations

import numpy as np
import pytest

from lprviz import datasets
from lprviz.errors import InputError
from lprviz.features import SoapHypers, compute_soap
from lprviz.pipeline import evaluate, prepare
from lprviz.rigidity import (
    RigiditySolver,
    data_share,
    regulariser_limited,
    solver_data_share,
)


def _random_set(rng, n_struct=6, d=5):
    sizes = rng.integers(1, 4, n_struct)
    X = rng.normal(size=(int(sizes.sum()), d))
    sidx = np.repeat(np.arange(n_struct), sizes)
    return X, sidx


def test_against_an_explicit_small_matrix_computation():
    rng = np.random.default_rng(0)
    X, sidx = _random_set(rng)
    test = rng.normal(size=(7, X.shape[1]))
    solver = RigiditySolver.from_atoms(X, sidx)
    s, alpha = solver.scale, 0.3
    rows = np.array([X[sidx == a].mean(axis=0) for a in range(sidx.max() + 1)]) / s
    H = rows.T @ rows + alpha * np.eye(X.shape[1])
    xh = test / s
    lpr = 1.0 / np.einsum("ij,jk,ik->i", xh, np.linalg.inv(H), xh)
    expected = 1.0 - (alpha / np.sum(xh**2, axis=1)) / lpr
    np.testing.assert_allclose(solver_data_share(solver, test, alpha), expected, rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(data_share(lpr, np.sum(xh**2, axis=1), alpha), expected,
                               rtol=1e-12)


def test_values_in_unit_interval_and_monotone_in_alpha():
    rng = np.random.default_rng(1)
    X, sidx = _random_set(rng, n_struct=4, d=8)  # fewer structures than features
    solver = RigiditySolver.from_atoms(X, sidx)
    test = rng.normal(size=(50, 8))
    shares = np.array([solver_data_share(solver, test, a) for a in np.logspace(-6, 6, 13)])
    assert np.all((shares >= 0) & (shares <= 1))
    # more regularisation, less of the rigidity from the data
    assert np.all(np.diff(shares, axis=0) <= 1e-12)
    assert np.all(shares[-1] < 1e-3)  # alpha -> inf: share -> 0
    # alpha -> 0 with fewer structures than features: the share tends to the fraction of
    # |x̂|^2 inside the row space of the training rows (the part data can pin at all)
    rows = np.array([X[sidx == a].mean(axis=0) for a in range(4)])
    q, _ = np.linalg.qr(rows.T)
    in_rows = np.sum((test @ q) ** 2, axis=1) / np.sum(test**2, axis=1)
    np.testing.assert_allclose(solver_data_share(solver, test, 1e-12), in_rows, atol=1e-6)


def test_no_data_in_an_atom_direction_gives_zero():
    # training rows live in the first two columns; a test atom in the third has no data
    X = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    solver = RigiditySolver.from_atoms(X, np.arange(3), scale=1.0)
    share = solver_data_share(solver, np.array([[0.0, 0.0, 3.0], [0.0, 0.0, 0.0]]), 1e-2)
    np.testing.assert_allclose(share, [0.0, 0.0], atol=1e-12)  # all-zero descriptor: 0 too


def test_training_atom_alone_in_its_structure_is_data_set_at_tiny_alpha():
    rng = np.random.default_rng(2)
    d = 6
    lone = rng.normal(size=(1, d))
    others = rng.normal(size=(12, d))
    X = np.vstack([lone, others])
    sidx = np.concatenate([[0], np.repeat(np.arange(1, 5), 3)])
    solver = RigiditySolver.from_atoms(X, sidx)
    assert solver_data_share(solver, lone, 1e-10)[0] == pytest.approx(1.0, abs=1e-6)
    assert solver_data_share(solver, lone, 1e6)[0] < 1e-3


def test_data_share_rejects_mismatched_shapes_and_bad_alpha():
    with pytest.raises(InputError, match="data share"):
        data_share(np.ones(3), np.ones(2), 1e-3)
    with pytest.raises(InputError):
        data_share(np.ones(3), np.ones(3), -1.0)
    np.testing.assert_allclose(data_share(np.ones(2), np.ones(2), 0.0), 1.0)


def test_regulariser_limited_warning():
    assert regulariser_limited(np.array([0.9, 0.8, 0.1])) is None
    msg = regulariser_limited(np.array([0.01, 0.2, 0.9]), what="test atoms")
    assert msg is not None and "67%" in msg and "test atoms" in msg and "\n" not in msg
    assert regulariser_limited(np.array([0.3, 0.3]), threshold=0.2) is None
    assert regulariser_limited(np.zeros(0)) is None


def test_results_carry_the_data_share_of_every_atom():
    full = datasets.load("emt-alloys")
    data = full.subset(np.arange(0, len(full.frames), 6))
    desc = compute_soap(data.frames, SoapHypers(cutoff=4.0, max_radial=3, max_angular=2),
                        species=full.species, cache=False)
    train = np.arange(len(data.frames)) % 2 == 0
    fit = prepare(data, desc, train)
    phi = fit.model_features(desc.values, desc.atom_numbers)
    for alpha in (1e-4, 1e2):
        res = evaluate(fit, alpha)
        assert res.data_share.shape == res.lpr.shape
        # the Fit's float32 projections: LPR to a relative 1e-5
        np.testing.assert_allclose(res.data_share, solver_data_share(fit.solver, phi, alpha),
                                   rtol=1e-5, atol=1e-7)
    assert np.median(evaluate(fit, 1e-4).data_share) > np.median(evaluate(fit, 1e2).data_share)


@pytest.fixture(scope="module")
def si():
    """mlearn Si as tests/test_pipeline.py finds it (skips without the reference files)."""
    from test_pipeline import _mlearn_si

    return _mlearn_si()


def test_real_si_surface_atoms_owe_more_to_the_regulariser(si):
    """mlearn Si, trained on Elastic + AIMD-NVT: the data set almost all of every atom's
    rigidity, but under-coordinated surface atoms owe the regulariser far more than bulk."""
    from lprviz.pipeline import coordination

    data = si
    desc = compute_soap(data.frames, SoapHypers(cutoff=5.0, max_radial=6, max_angular=4))
    train = (data.splits == "train") & np.isin(data.groups, ["Elastic", "AIMD-NVT"])
    fit = prepare(data, desc, train)
    coord = coordination(data.frames, 2.7)
    group = data.groups[desc.structure_index]
    surface = (group == "Surface") & (coord < 4)
    bulk = np.isin(group, ["Elastic", "AIMD-NVT"]) & (coord == 4)
    for alpha in (1e-4, 1e-2):
        share = evaluate(fit, alpha).data_share
        prior_s, prior_b = np.median(1 - share[surface]), np.median(1 - share[bulk])
        print(f"alpha {alpha:g}: median data share surface {1 - prior_s:.4f}, "
              f"bulk {1 - prior_b:.5f}")
        assert np.median(share[surface]) > 0.5  # still data-dominated ...
        assert prior_s > 10 * prior_b  # ... but far less than bulk
        assert regulariser_limited(share[surface]) is None
