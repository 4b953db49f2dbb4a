"""Figures of the insight pages (Improve, Validate): arrays in, plotly figures out; no science."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from lprviz.plots import escape

__all__ = [
    "addition_figure",
    "error_vs_lpr_figure",
    "lcpr_figure",
    "spread_figure",
    "tradeoff_figure",
]

_GUIDED = "#1f77b4"
_RANDOM = "#999999"
_LOW = "#d62728"
_MARGIN = {"l": 60, "r": 10, "t": 40, "b": 50}


def addition_figure(guided: np.ndarray, random: np.ndarray) -> go.Figure:
    """Target geometric-mean LPR against the number of structures added: guided vs random.

    Parameters
    ----------
    guided : numpy.ndarray of shape (k + 1,)
        Mean ln LPR of the target after 0..k guided additions.
    random : numpy.ndarray of shape (n_seeds, k + 1)
        The same for random draws.
    """
    guided = np.exp(np.asarray(guided, dtype=float))
    random = np.exp(np.atleast_2d(np.asarray(random, dtype=float)))
    x = np.arange(guided.size)
    fig = go.Figure()
    for j, curve in enumerate(random):
        fig.add_trace(go.Scatter(x=x, y=curve, mode="lines", line={"color": _RANDOM, "width": 1},
                                 name="random draws", legendgroup="random",
                                 showlegend=j == 0, opacity=0.6))
    if random.size:
        fig.add_trace(go.Scatter(x=x, y=np.exp(np.log(random).mean(axis=0)), mode="lines",
                                 line={"color": "#555", "dash": "dash"}, name="random (mean)"))
    fig.add_trace(go.Scatter(x=x, y=guided, mode="lines+markers", line={"color": _GUIDED},
                             name="guided (greedy)"))
    fig.update_layout(xaxis={"title": "structures added", "dtick": 1},
                      yaxis={"type": "log", "title": "target geometric-mean LPR"},
                      margin=_MARGIN, height=360)
    return fig


def spread_figure(inverse_lpr: np.ndarray, spread: np.ndarray, spearman: float,
                  *, labels: Sequence[str] | None = None) -> go.Figure:
    """Committee spread of local predictions against 1/LPR (log-log).

    Parameters
    ----------
    inverse_lpr, spread : numpy.ndarray of shape (n,)
    spearman : float
        Rank correlation, shown in the title.
    labels : sequence of str, optional
        Hover text per atom (escaped).
    """
    fig = go.Figure(go.Scattergl(
        x=np.asarray(inverse_lpr, float), y=np.asarray(spread, float), mode="markers",
        marker={"size": 4, "color": _GUIDED, "opacity": 0.5},
        text=None if labels is None else [escape(t) for t in labels],
        hovertemplate="1/LPR %{x:.3g}<br>spread %{y:.3g} eV<br>%{text}<extra></extra>",
    ))
    fig.update_layout(title=f"Spearman rank correlation {spearman:.2f}",
                      xaxis={"type": "log", "title": "1 / LPR"},
                      yaxis={"type": "log", "title": "committee spread of local prediction (eV)"},
                      margin=_MARGIN, height=380)
    return fig


def error_vs_lpr_figure(lpr: np.ndarray, abs_error: np.ndarray, low: np.ndarray,
                        *, threshold: float | None = None) -> go.Figure:
    """|local error| against LPR (log-log); the lowest-LPR atoms highlighted.

    Parameters
    ----------
    lpr, abs_error : numpy.ndarray of shape (n,)
    low : numpy.ndarray of bool of shape (n,)
        The lowest-LPR atoms.
    threshold : float, optional
        "Large error" level, drawn as a horizontal line.
    """
    lpr, err, low = np.asarray(lpr, float), np.asarray(abs_error, float), np.asarray(low, bool)
    # a log axis cannot show exact zeros; floor them at the smallest positive error
    floor = err[err > 0].min() if np.any(err > 0) else 1e-12
    err = np.maximum(err, floor)
    fig = go.Figure()
    for mask, name, color in ((~low, "other atoms", _GUIDED), (low, "lowest-LPR atoms", _LOW)):
        fig.add_trace(go.Scattergl(x=lpr[mask], y=err[mask], mode="markers", name=name,
                                   marker={"size": 4, "color": color, "opacity": 0.6}))
    if threshold is not None and threshold > 0:
        fig.add_hline(y=threshold, line={"color": "#444", "dash": "dot"})
    fig.update_layout(xaxis={"type": "log", "title": "LPR"},
                      yaxis={"type": "log", "title": "|local error| (eV)"},
                      margin=_MARGIN, height=380)
    return fig


def tradeoff_figure(alphas: np.ndarray, median_lpr: np.ndarray, rmse: np.ndarray,
                    *, current_alpha: float | None = None) -> go.Figure:
    """Test RMSE (per atom) against median test LPR, one point per alpha.

    Parameters
    ----------
    alphas, median_lpr, rmse : numpy.ndarray of shape (n_alphas,)
    current_alpha : float, optional
        The point closest to it is marked.
    """
    alphas = np.asarray(alphas, float)
    med, rmse = np.asarray(median_lpr, float), np.asarray(rmse, float)
    fig = go.Figure(go.Scatter(
        x=med, y=rmse, mode="lines+markers", marker={"color": np.log10(alphas),
        "colorscale": "Viridis", "colorbar": {"title": "log10 alpha"}, "size": 8},
        line={"color": "#bbb"}, text=[f"{a:.3g}" for a in alphas],
        hovertemplate="alpha %{text}<br>median LPR %{x:.3g}<br>RMSE %{y:.3g}<extra></extra>",
        name="alpha sweep",
    ))
    if current_alpha is not None and alphas.size:
        i = int(np.argmin(np.abs(np.log(alphas) - np.log(current_alpha))))
        fig.add_trace(go.Scatter(x=[med[i]], y=[rmse[i]], mode="markers", name="current alpha",
                                 marker={"symbol": "circle-open", "size": 16, "color": _LOW}))
    fig.update_layout(xaxis={"type": "log", "title": "median test LPR"},
                      yaxis={"type": "log", "title": "test RMSE of totals (eV/atom)"},
                      margin=_MARGIN, height=380, showlegend=False)
    return fig


def lcpr_figure(names: Sequence[str], lcpr: np.ndarray, lpr: float) -> go.Figure:
    """LCPR per descriptor block (log bars) with the atom's LPR as a reference line.

    Parameters
    ----------
    names : sequence of str
    lcpr : numpy.ndarray of shape (n_blocks,)
    lpr : float
    """
    fig = go.Figure(go.Bar(x=[escape(n) for n in names], y=np.asarray(lcpr, float),
                           marker={"color": _GUIDED}, name="LCPR"))
    fig.add_hline(y=lpr, line={"color": _LOW, "dash": "dot"},
                  annotation_text=f"LPR {lpr:.3g}", annotation_position="top left")
    fig.update_layout(yaxis={"type": "log", "title": "LCPR"}, xaxis={"title": "block"},
                      margin=_MARGIN, height=360)
    return fig
