"""Figures of the insight pages (Improve, Validate): arrays in, plotly figures out; no science.

Every log axis is :func:`lprviz.plots.log_axis` (decade-labelled, one tick style).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from lprviz.plots import (
    escape,
    format_number,
    format_numbers,
    group_color,
    log10_ticks_axis,
    log_axis,
)

__all__ = [
    "addition_figure",
    "calibration_figure",
    "error_vs_lpr_figure",
    "lcpr_figure",
    "model_scatter_figure",
    "spread_figure",
    "tradeoff_figure",
]

_GUIDED = "#1f77b4"
_RANDOM = "#999999"
_LOW = "#d62728"
_MARGIN = {"l": 60, "r": 10, "t": 40, "b": 50}
_KIND_COLORS = (_GUIDED, "#ff7f0e", "#7f7f7f")


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
                      yaxis=log_axis(guided, random, title="target geometric-mean LPR"),
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
        text=[f"1/LPR {format_number(a)}<br>spread {format_number(b)} eV"
              + ("" if labels is None else f"<br>{escape(labels[i])}")
              for i, (a, b) in enumerate(zip(inverse_lpr, spread, strict=True))],
        hovertemplate="%{text}<extra></extra>",
    ))
    fig.update_layout(title=f"Spearman rank correlation {spearman:.2f}",
                      xaxis=log_axis(inverse_lpr, title="1 / LPR"),
                      yaxis=log_axis(spread, title="committee spread of local prediction (eV)"),
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
    fig.update_layout(xaxis=log_axis(lpr, title="LPR"),
                      yaxis=log_axis(err, threshold, title="|local error| (eV)"),
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
    bar = log10_ticks_axis(float(alphas.min()), float(alphas.max()), title="alpha") \
        if alphas.size and np.all(alphas > 0) else {"title": {"text": "log10 alpha"}}
    fig = go.Figure(go.Scatter(
        x=med, y=rmse, mode="lines+markers", marker={"color": np.log10(alphas),
        "colorscale": "Viridis", "colorbar": bar, "size": 8},
        line={"color": "#bbb"},
        text=[f"alpha {a}<br>median LPR {m}<br>RMSE {r}" for a, m, r in
              zip(format_numbers(alphas), format_numbers(med), format_numbers(rmse), strict=True)],
        hovertemplate="%{text}<extra></extra>",
        name="alpha sweep",
    ))
    if current_alpha is not None and alphas.size:
        i = int(np.argmin(np.abs(np.log(alphas) - np.log(current_alpha))))
        fig.add_trace(go.Scatter(x=[med[i]], y=[rmse[i]], mode="markers", name="current alpha",
                                 marker={"symbol": "circle-open", "size": 16, "color": _LOW}))
    fig.update_layout(xaxis=log_axis(med, title="median test LPR"),
                      yaxis=log_axis(rmse, title="test RMSE of totals (eV/atom)"),
                      margin=_MARGIN, height=380, showlegend=False)
    return fig


def lcpr_figure(names: Sequence[str], lcpr: np.ndarray, lpr: float,
                *, kinds: Sequence[str] | None = None) -> go.Figure:
    """LCPR per descriptor block (log bars), grouped by kind, with the atom's LPR as a line.

    Bars of one kind (species pairs, angular channels, the composition baseline) sit
    together under a heading and share a colour: blocks of *different* kinds overlap and
    their LCPRs must not be combined (see :data:`lprviz.validation.LCPR_BLOCKS_EXPLANATION`).

    Parameters
    ----------
    names : sequence of str
    lcpr : numpy.ndarray of shape (n_blocks,)
    lpr : float
    kinds : sequence of str, optional
        Kind of each block; default :func:`lprviz.validation.block_kind` of its name.
    """
    from lprviz.validation import block_kind

    names = [str(n) for n in names]
    lcpr = np.asarray(lcpr, float).reshape(-1)
    kinds = [block_kind(n) for n in names] if kinds is None else [str(k) for k in kinds]
    fig = go.Figure()
    for j, kind in enumerate(dict.fromkeys(kinds)):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        fig.add_trace(go.Bar(
            x=[[escape(kind)] * len(idx), [escape(names[i]) for i in idx]], y=lcpr[idx],
            name=escape(kind), marker={"color": _KIND_COLORS[j % len(_KIND_COLORS)]},
            text=format_numbers(lcpr[idx]), hovertemplate="%{x}: LCPR %{text}<extra></extra>",
            textposition="none",
        ))
    fig.add_hline(y=lpr, line={"color": _LOW, "dash": "dot"},
                  annotation_text=f"LPR {format_number(lpr)}", annotation_position="top left")
    fig.update_layout(yaxis=log_axis(lcpr, lpr, title="LCPR"), xaxis={"title": "block"},
                      margin=_MARGIN, height=380, legend={"font": {"size": 10}})
    return fig


def calibration_figure(predicted: np.ndarray, observed: np.ndarray, counts: np.ndarray,
                       *, sigma: np.ndarray | None = None,
                       errors: np.ndarray | None = None, spread: bool = False) -> go.Figure:
    """Calibration plot: observed RMSE against predicted uncertainty per bin (log-log).

    Parameters
    ----------
    predicted, observed : numpy.ndarray of shape (n_bins,)
        RMS predicted uncertainty and RMS observed error of each bin (eV), e.g.
        :func:`lprviz.calibration.calibration_curve`.
    counts : numpy.ndarray of shape (n_bins,)
        Structures per bin (hover).
    sigma, errors : numpy.ndarray of shape (n,), optional
        Every structure's predicted uncertainty and |error|, drawn faintly behind the bins.
    spread : bool
        The observed values are test atoms' committee spreads, not structures' errors
        (labels only).
    """
    predicted, observed = np.asarray(predicted, float), np.asarray(observed, float)
    points, value = (("test atoms (committee spread)", "committee spread") if spread
                     else ("held-out structures (|error|)", "error"))
    fig = go.Figure()
    if sigma is not None and errors is not None:
        err = np.abs(np.asarray(errors, float))
        err = np.maximum(err, err[err > 0].min() if np.any(err > 0) else 1e-12)
        fig.add_trace(go.Scattergl(x=np.asarray(sigma, float), y=err, mode="markers",
                                   name=points,
                                   marker={"size": 4, "color": _RANDOM, "opacity": 0.4}))
    both = np.concatenate([predicted, observed])
    both = both[np.isfinite(both) & (both > 0)]
    if both.size:
        ends = [both.min(), both.max()]
        fig.add_trace(go.Scatter(x=ends, y=ends, mode="lines", name="perfect calibration",
                                 line={"color": "#444", "dash": "dot"}))
    fig.add_trace(go.Scatter(
        x=predicted, y=observed, mode="lines+markers", name="binned RMSE",
        marker={"size": 8, "color": _GUIDED},
        text=[f"predicted {format_number(a)} eV<br>observed {format_number(b)} eV<br>{int(n)} "
              f"{'atoms' if spread else 'structures'}"
              for a, b, n in zip(predicted, observed, counts, strict=True)],
        hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(xaxis=log_axis(predicted, sigma if sigma is not None else predicted,
                                     title="predicted uncertainty (eV)"),
                      yaxis=log_axis(observed, title=f"observed {value} (eV)"),
                      margin=_MARGIN, height=380)
    return fig


def model_scatter_figure(lpr_a: np.ndarray, lpr_b: np.ndarray, groups: Sequence[str],
                         *, label_a: str, label_b: str, spearman: float) -> go.Figure:
    """LPR of model a against model b per atom (log-log), one colour per group.

    Parameters
    ----------
    lpr_a, lpr_b : numpy.ndarray of shape (n,)
    groups : sequence of str of length n
        Each atom's group (legend order: first seen).
    label_a, label_b : str
        Axis titles (escaped here).
    spearman : float
        Rank correlation over all atoms, shown in the title.
    """
    lpr_a, lpr_b = np.asarray(lpr_a, float), np.asarray(lpr_b, float)
    groups = np.asarray(groups).astype(str)
    fig = go.Figure()
    for i, group in enumerate(dict.fromkeys(groups.tolist())):
        mask = groups == group
        fig.add_trace(go.Scattergl(
            x=lpr_a[mask], y=lpr_b[mask], mode="markers", name=escape(group),
            marker={"size": 4, "color": group_color(i), "opacity": 0.6},
            hovertemplate=f"{escape(group)}<br>a %{{x:.3g}}<br>b %{{y:.3g}}<extra></extra>"))
    fig.update_layout(title=f"Spearman rank correlation {spearman:.2f}",
                      xaxis=log_axis(lpr_a, title=f"LPR a: {escape(label_a)}"),
                      yaxis=log_axis(lpr_b, title=f"LPR b: {escape(label_b)}"),
                      margin=_MARGIN, height=420, legend={"title": "group"})
    return fig
