"""Tests of lprviz.calibration: recovering (alpha, factor) of the Bayesian model.

Under the Bayesian reading of ridge (docs/science.md §12), with
``w ~ N(0, c/alpha I)``, training noise ``N(0, c)`` and the ridge fit at ``alpha``, the error
of a prediction ``x . w_hat`` is ``N(0, c / LPR(x))``. Data drawn that way must give back
``alpha`` and ``c`` within sampling error.
"""

from __future__ import annotations

import numpy as np
import pytest

from lprviz import datasets, insight_plots
from lprviz.calibration import (
    ALPHA_GRID,
    Calibration,
    calibrate,
    calibrate_to_spread,
    calibration_curve,
    fit_calibration,
)
from lprviz.errors import InputError
from lprviz.features import SOAP_PRESETS, compute_soap
from lprviz.pipeline import ModelSpec, evaluate, prepare
from lprviz.rigidity import RigiditySolver

D, N_TRAIN, N_TEST, REPLICAS = 10, 30, 40, 300
FACTOR = 0.04


def _draw(seed: int, alpha: float):
    """Errors of ridge predictions on data drawn from the Bayesian model, and their PRs."""
    rng = np.random.default_rng(seed)
    # anisotropic training rows: eigenvalues of X^T X spread over decades, so alpha matters
    X = rng.normal(size=(N_TRAIN, D)) * np.logspace(0, -2.5, D)
    T = rng.normal(size=(N_TEST, D))
    solver = RigiditySolver.from_rows(X, scale=1.0)
    sweep = solver.lpr_sweep_from_projections(solver.projections(T), ALPHA_GRID)
    errors = []
    for _ in range(REPLICAS):
        w = rng.normal(size=D) * np.sqrt(FACTOR / alpha)
        y = X @ w + rng.normal(size=N_TRAIN) * np.sqrt(FACTOR)
        errors.append(T @ (w - solver.solve(X.T @ y, alpha)))
    return np.concatenate(errors), np.tile(sweep, (1, REPLICAS))


def test_recovers_alpha_and_factor_of_the_bayesian_model():
    alpha = 1e-3
    fits = np.array([fit_calibration(*_draw(seed, alpha), ALPHA_GRID)[:2]
                     for seed in range(6)])
    log_alpha, factor = np.log10(fits[:, 0]), fits[:, 1]
    # each fit within two grid steps; the mean within 3 standard errors of the truth
    assert np.all(np.abs(log_alpha - np.log10(alpha)) <= 0.5 + 1e-9)
    for values, truth in ((log_alpha, np.log10(alpha)), (factor, FACTOR)):
        sem = max(values.std(ddof=1) / np.sqrt(len(values)), 0.25 / np.sqrt(12 * len(values)))
        assert abs(values.mean() - truth) <= 3 * sem, (values, truth)
    # the fit sees alpha: data drawn at alpha = 1e-1 give a clearly different answer
    other = fit_calibration(*_draw(0, 1e-1), ALPHA_GRID)[0]
    assert np.log10(other) > np.log10(alpha) + 1


def test_a_fit_at_the_end_of_the_grid_is_flagged():
    """Data drawn at alpha = 1e-3 fit inside the full grid; on a grid that stops below
    or above the truth, the fit lands on its end and says so."""
    errors, sweep = _draw(0, 1e-3)
    for grid, edge in ((ALPHA_GRID, False), (ALPHA_GRID[ALPHA_GRID <= 1e-5], True),
                       (ALPHA_GRID[ALPHA_GRID >= 1e-1], True)):
        rows = np.flatnonzero(np.isin(ALPHA_GRID, grid))
        alpha, factor, nll = fit_calibration(errors, sweep[rows], grid)
        cal = Calibration(alpha=alpha, factor=factor, alphas=grid, nll=nll,
                          sigma_atoms=np.ones(1), frames=np.arange(1), errors=np.ones(1),
                          sigma_frames=np.ones(1))
        assert cal.at_grid_edge is edge, (grid[[0, -1]], alpha)


def test_likelihood_factor_is_the_closed_form_optimum():
    errors, sweep = _draw(3, 1e-2)
    alpha, factor, nll = fit_calibration(errors, sweep, ALPHA_GRID)
    pr = sweep[int(np.argmin(nll))]

    def nll_at(c):
        return 0.5 * np.sum(np.log(2 * np.pi * c / pr) + errors**2 * pr / c)

    assert nll.min() == pytest.approx(nll_at(factor), rel=1e-10)
    assert nll_at(factor) < min(nll_at(0.9 * factor), nll_at(1.1 * factor))


def test_calibration_curve_bins():
    sigma = np.array([1.0, 2.0, 3.0, 4.0])
    pred, obs, counts = calibration_curve(sigma, np.array([1.0, -1.0, 3.0, 5.0]), n_bins=2)
    np.testing.assert_allclose(pred, [np.sqrt(2.5), np.sqrt(12.5)])
    np.testing.assert_allclose(obs, [1.0, np.sqrt(17.0)])
    np.testing.assert_array_equal(counts, [2, 2])


def test_emt_alloys_calibration_is_finite_and_positive():
    data = datasets.load("emt-alloys")
    desc = compute_soap(data.frames, SOAP_PRESETS["fast"], species=data.species)
    train = np.isin(data.groups, ["bulk-pure", "bulk-alloy", "vacancy"])
    fit = prepare(data, desc, train, ModelSpec())
    cal = calibrate(fit, evaluate(fit, 1e-4))
    assert cal.alpha in ALPHA_GRID and np.isfinite(cal.factor) and cal.factor > 0
    assert cal.sigma_atoms.shape == (data.n_atoms,)
    assert np.all(np.isfinite(cal.sigma_atoms)) and np.all(cal.sigma_atoms > 0)
    assert cal.frames.size == (~train).sum() and np.all(cal.sigma_frames > 0)
    # calibrated: the mean of (error / sigma)^2 over the held-out frames is 1 at the optimum
    assert np.mean((cal.errors / cal.sigma_frames) ** 2) == pytest.approx(1.0, rel=1e-9)
    fig = insight_plots.calibration_figure(*calibration_curve(cal.sigma_frames, cal.errors),
                                           sigma=cal.sigma_frames, errors=cal.errors)
    assert len(fig.data) == 3
    with pytest.raises(InputError, match="at least 2 structures with energies"):
        calibrate(prepare(data, desc, np.ones(len(data.frames), bool), ModelSpec()),
                  evaluate(fit, 1e-4))


def _committee_spread(seed: int, alpha: float, members: int = 400):
    """Committee spread of local predictions when the members are draws from the Bayesian
    posterior N(w_hat, c (X^T X + alpha I)^-1), and the test rows' LPR sweep. All rows share
    the members (as in a real committee), so the spreads are correlated through the members'
    sample covariance: 400 members make it accurate to a few percent (16 gave 20-40%)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N_TRAIN, D)) * np.logspace(0, -2.5, D)
    T = rng.normal(size=(4000, D))
    solver = RigiditySolver.from_rows(X, scale=1.0)
    sweep = solver.lpr_sweep_from_projections(solver.projections(T), ALPHA_GRID)
    # explicit posterior covariance (not the solver): members w_m = L z, L L^T = c H^-1
    chol = np.linalg.cholesky(FACTOR * np.linalg.inv(X.T @ X + alpha * np.eye(D)))
    members_w = (chol @ rng.normal(size=(D, members))).T
    spread = (members_w @ T.T).std(axis=0, ddof=1)
    return spread, sweep


def test_committee_spread_target_recovers_the_bayesian_model():
    alpha = 1e-3
    fits = np.array([fit_calibration(*_committee_spread(seed, alpha), ALPHA_GRID)[:2]
                     for seed in range(4)])
    assert np.all(np.abs(np.log10(fits[:, 0]) - np.log10(alpha)) <= 0.5 + 1e-9)
    assert np.abs(fits[:, 1] / FACTOR - 1).max() < 0.1
    far = fit_calibration(*_committee_spread(0, 1e-1), ALPHA_GRID)[0]
    assert np.log10(far) > np.log10(alpha) + 1


def test_calibrate_to_spread_on_a_pipeline_fit():
    """Spread drawn as the sample std of 6 members around sigma_k = sqrt(c / LPR_k(alpha)) on
    emt-alloys' held-out atoms: alpha and c come back."""
    data = datasets.load("emt-alloys")
    desc = compute_soap(data.frames, SOAP_PRESETS["fast"], species=data.species)
    train = np.isin(data.groups, ["bulk-pure", "bulk-alloy", "vacancy"])
    fit = prepare(data, desc, train, ModelSpec())
    atoms = np.flatnonzero(~train[data.structure_index])
    alpha, c, m = 1e-2, 2e-3, 6
    sigma = np.sqrt(c / evaluate(fit, alpha).lpr[atoms])
    rng = np.random.default_rng(5)
    spread = sigma * np.sqrt(rng.chisquare(m - 1, size=atoms.size) / (m - 1))
    cal = calibrate_to_spread(fit, spread, atoms)
    assert cal.target == "spread" and abs(np.log10(cal.alpha) - np.log10(alpha)) <= 0.5
    assert cal.factor == pytest.approx(c, rel=0.1)
    np.testing.assert_allclose(cal.sigma_frames, cal.sigma_atoms[atoms])
    assert np.mean((cal.errors / cal.sigma_frames) ** 2) == pytest.approx(1.0, rel=1e-9)
    with pytest.raises(InputError, match="one committee spread per atom"):
        calibrate_to_spread(fit, spread[:-1], atoms)
    with pytest.raises(InputError, match="finite and >= 0"):
        calibrate_to_spread(fit, -spread, atoms)
