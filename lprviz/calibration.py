"""Calibrated uncertainties from the LPR: fit alpha and an overall factor on held-out data.

Read as a Bayesian linear model (docs/science.md §13), the ridge readout
with the halved loss of docs/science.md §2 has the posterior predictive variance

.. math:: \\sigma_k^2 = c / \\mathrm{LPR}_k(\\alpha), \\qquad
          \\sigma_A^2 = c / \\mathrm{PR}_A(\\alpha)

for a local energy ``k`` and for the energy per atom of a structure ``A`` (its mean row);
``c`` is the noise variance and ``alpha`` the ratio of noise to prior variance (ς² of the
LLPR paper). Neither is known, so both are fitted to the errors of held-out structures
with energies: maximise the Gaussian log-likelihood of the observed errors per atom
:math:`r_A` under :math:`\\mathcal N(0, \\sigma_A^2)`,

.. math:: -\\log L = \\tfrac12 \\sum_A \\big[\\log(2\\pi c / \\mathrm{PR}_A) +
          r_A^2\\, \\mathrm{PR}_A / c\\big],

whose optimum over ``c`` for fixed ``alpha`` is closed-form, :math:`c = \\langle r_A^2\\,
\\mathrm{PR}_A \\rangle_A`; ``alpha`` is then chosen on a log grid (:data:`ALPHA_GRID`, the
app's slider). Working per atom or with totals :math:`n_A r_A` gives the same optimum (the
``n_A`` factors only add a constant).

The committee spread can be the target instead of errors (:func:`calibrate_to_spread`): a
committee of M models drawn from the posterior gives local predictions whose sample variance
:math:`s_k^2` (ddof 1) satisfies :math:`(M-1) s_k^2 / \\sigma_k^2 \\sim \\chi^2_{M-1}`, whose
log-likelihood is (M - 1) times the one above with :math:`r_k = s_k`: the same optimum, with
:math:`\\sigma_k^2 = c / \\mathrm{LPR}_k(\\alpha)` per atom.

As in the LLPR paper, the predictions themselves stay those of the model being calibrated
(fitted at its own alpha); only the alpha of the uncertainty is fitted. The calibrated
uncertainty of a local energy is :math:`\\sigma_k = \\sqrt{c / \\mathrm{LPR}_k}` in eV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lprviz.errors import InputError

__all__ = ["ALPHA_GRID", "Calibration", "calibrate", "calibrate_to_spread", "calibration_curve",
           "fit_calibration"]

#: alpha values tried: the app's slider (log10 from -8 to 2 in steps of 0.25).
ALPHA_GRID = 10.0 ** np.arange(-8.0, 2.0 + 1e-9, 0.25)


@dataclass(eq=False)
class Calibration:
    """Calibrated uncertainties of one model.

    Attributes
    ----------
    alpha : float
        The fitted alpha of the uncertainty (ς²).
    factor : float
        The fitted factor ``c`` (eV² per atom²: the variance of an energy per atom is
        ``c / PR``).
    alphas, nll : numpy.ndarray of shape (n_alphas,)
        The grid and the negative log-likelihood at each point (``c`` optimal there).
    sigma_atoms : numpy.ndarray of shape (n_atoms,)
        Calibrated uncertainty of every atom's local energy (eV).
    frames : numpy.ndarray of int
        The held-out frames used (target ``"errors"``), or the atoms (``"spread"``).
    errors : numpy.ndarray of shape (n_held_out,)
        Their observed errors of the total energy (eV), or the atoms' committee spread of the
        local energy (eV).
    sigma_frames : numpy.ndarray of shape (n_held_out,)
        Their calibrated uncertainty of the same quantity (eV).
    target : str
        What was calibrated against: ``"errors"`` (:func:`calibrate`) or ``"spread"``
        (:func:`calibrate_to_spread`).
    """

    alpha: float
    factor: float
    alphas: np.ndarray
    nll: np.ndarray
    sigma_atoms: np.ndarray
    frames: np.ndarray
    errors: np.ndarray
    sigma_frames: np.ndarray
    target: str = "errors"

    @property
    def at_grid_edge(self) -> bool:
        """Whether the fitted alpha is the first or last of the grid tried: the likelihood
        may be higher beyond it, so the fit is the best the grid allows, not an optimum."""
        return bool(self.alphas.size > 1
                    and self.alpha in (float(self.alphas[0]), float(self.alphas[-1])))


def fit_calibration(errors: np.ndarray, pr_sweep: np.ndarray,
                    alphas: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Maximum-likelihood ``(alpha, factor)`` of errors ``r ~ N(0, factor / PR(alpha))``.

    Parameters
    ----------
    errors : numpy.ndarray of shape (n,)
        Observed errors (e.g. per atom, eV).
    pr_sweep : numpy.ndarray of shape (n_alphas, n)
        The (local or structure) prediction rigidity of each error's prediction at each alpha.
    alphas : numpy.ndarray of shape (n_alphas,)

    Returns
    -------
    alpha : float
    factor : float
        ``mean(r^2 PR)`` at that alpha (floored at the smallest normal float).
    nll : numpy.ndarray of shape (n_alphas,)
        Negative log-likelihood per alpha with its optimal factor.
    """
    r2 = np.asarray(errors, dtype=np.float64) ** 2
    pr = np.asarray(pr_sweep, dtype=np.float64)
    if r2.size < 2 or pr.shape != (len(alphas), r2.size):
        raise InputError(f"calibration: expected at least 2 errors and PRs of shape "
                         f"({len(alphas)}, {r2.size}), got {pr.shape}")
    factor = np.maximum((r2 * pr).mean(axis=1), np.finfo(float).tiny)
    n = r2.size
    nll = 0.5 * (n * np.log(2 * np.pi * factor) - np.log(pr).sum(axis=1) + n)
    best = int(np.argmin(nll))
    return float(alphas[best]), float(factor[best]), nll


def calibrate(fit, results, *, alphas: np.ndarray = ALPHA_GRID) -> Calibration:
    """Fit the uncertainty's alpha and factor on the held-out frames of ``results``.

    Parameters
    ----------
    fit : lprviz.pipeline.Fit
    results : lprviz.pipeline.Results
        The model's predictions (at its own alpha) whose errors are calibrated against.
    alphas : numpy.ndarray, optional
        The grid of alphas tried.

    Returns
    -------
    Calibration

    Raises
    ------
    InputError
        Fewer than 2 frames outside the training set have energies.
    """
    energies = np.asarray(results.energies, dtype=np.float64)
    held = np.flatnonzero(~np.asarray(fit.train_mask) & np.isfinite(energies))
    if held.size < 2:
        raise InputError(f"calibration: needs at least 2 structures with energies outside the "
                         f"training set, got {held.size}")
    sizes = np.bincount(fit.structure_index, minlength=fit.n_frames)[held]
    errors = (np.asarray(results.energy_pred)[held] - energies[held])
    alphas = np.asarray(alphas, dtype=np.float64)
    pr_sweep = fit.solver.lpr_sweep_from_projections(fit.structure_projections[held], alphas)
    alpha, factor, nll = fit_calibration(errors / sizes, pr_sweep, alphas)
    from lprviz.pipeline import lpr_sweep  # thin or full projections alike

    lpr = lpr_sweep(fit, [alpha])[0]
    pr = pr_sweep[int(np.argmin(nll))]
    return Calibration(alpha=alpha, factor=factor, alphas=alphas, nll=nll,
                       sigma_atoms=np.sqrt(factor / lpr), frames=held, errors=errors,
                       sigma_frames=sizes * np.sqrt(factor / pr))


def calibrate_to_spread(fit, spread: np.ndarray, atoms: np.ndarray, *,
                        alphas: np.ndarray = ALPHA_GRID) -> Calibration:
    """Fit the uncertainty's alpha and factor to a committee's spread of local energies.

    Parameters
    ----------
    fit : lprviz.pipeline.Fit
    spread : numpy.ndarray of shape (n,)
        Committee standard deviation (ddof 1) of the local energy of each of ``atoms`` (eV),
        e.g. ``validation.committee_check(...)``'s spread or that of networks of different
        seeds.
    atoms : numpy.ndarray of int of shape (n,)
        The atoms (dataset order) the spread belongs to; usually held-out atoms.
    alphas : numpy.ndarray, optional
        The grid of alphas tried.

    Returns
    -------
    Calibration
        ``target == "spread"``; ``frames`` holds ``atoms``, ``errors`` the spread and
        ``sigma_frames`` the calibrated sigma of those atoms.

    Raises
    ------
    InputError
        Fewer than 2 atoms, a length mismatch, or a spread that is negative or not finite.
    """
    from lprviz.pipeline import lpr_sweep  # thin or full projections alike

    spread = np.asarray(spread, dtype=np.float64)
    atoms = np.asarray(atoms, dtype=np.int64)
    if spread.shape != atoms.shape or spread.ndim != 1 or spread.size < 2:
        raise InputError(f"calibration: expected one committee spread per atom (at least 2), "
                         f"got {spread.shape} spreads for {atoms.shape} atoms")
    if not np.all(np.isfinite(spread)) or np.any(spread < 0):
        raise InputError("calibration: committee spread must be finite and >= 0")
    alphas = np.asarray(alphas, dtype=np.float64)
    sweep = lpr_sweep(fit, alphas)
    alpha, factor, nll = fit_calibration(spread, sweep[:, atoms], alphas)
    lpr = sweep[int(np.argmin(nll))]
    return Calibration(alpha=alpha, factor=factor, alphas=alphas, nll=nll,
                       sigma_atoms=np.sqrt(factor / lpr), frames=atoms, errors=spread,
                       sigma_frames=np.sqrt(factor / lpr[atoms]), target="spread")


def calibration_curve(sigma: np.ndarray, errors: np.ndarray, *,
                      n_bins: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binned RMSE against the predicted uncertainty (for a calibration plot).

    Parameters
    ----------
    sigma, errors : numpy.ndarray of shape (n,)
        Predicted uncertainties and observed errors (same units).
    n_bins : int
        Bins of (about) equal counts by ``sigma``.

    Returns
    -------
    predicted : numpy.ndarray of shape (n_bins,)
        Root mean square of ``sigma`` in each bin.
    observed : numpy.ndarray of shape (n_bins,)
        Root mean square of ``errors`` in each bin (equal to ``predicted`` when calibrated).
    counts : numpy.ndarray of shape (n_bins,), int
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    order = np.argsort(sigma, kind="stable")
    parts = [p for p in np.array_split(order, min(n_bins, sigma.size)) if p.size]
    predicted = np.array([np.sqrt(np.mean(sigma[p] ** 2)) for p in parts])
    observed = np.array([np.sqrt(np.mean(errors[p] ** 2)) for p in parts])
    return predicted, observed, np.array([p.size for p in parts])
