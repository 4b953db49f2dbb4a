"""Plotly figures and the value -> colour mapping shared with the 3D viewer.

Pure functions: arrays in, figures (or HTML) out; no science. Every string that comes from a
user (structure names, group labels) is HTML-escaped before it reaches a hover label.

The colour of a value is decided in one place, :func:`map_colors`; the 3D viewer colours atoms
with it and :func:`colorbar_html` draws its gradient with it, so the two always agree.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import plotly.colors as pcolors
import plotly.graph_objects as go

#: Colour of atoms whose value is undetermined (or not finite).
UNDETERMINED_COLOR = "#a0a0a0"
#: Default sequential colour map for LPR (low = dark, high = bright).
LPR_COLORMAP = "Viridis"
#: Default diverging colour map for ratios (red = lost, blue = gained).
RATIO_COLORMAP = "RdBu"

_GROUP_COLORS = pcolors.qualitative.Plotly + pcolors.qualitative.Dark24


def escape(text: object) -> str:
    """HTML-escape any user-provided text (names, groups) for hover labels and HTML."""
    return html.escape(str(text), quote=True)


# --------------------------------------------------------------------------- colour mapping


def _scale_rgb(colormap: str) -> tuple[np.ndarray, np.ndarray]:
    """Stops (k,) and RGB colours (k, 3) of a named plotly colour scale."""
    try:
        scale = pcolors.get_colorscale(colormap)
    except Exception as exc:  # plotly raises PlotlyError for unknown names
        raise ValueError(f"colormap: unknown colour scale {colormap!r}") from exc
    stops = np.array([float(s) for s, _ in scale])
    rgb = []
    for _, col in scale:
        if col.startswith("#"):
            rgb.append(pcolors.hex_to_rgb(col))
        else:
            rgb.append(pcolors.unlabel_rgb(col))
    return stops, np.asarray(rgb, dtype=float)


def normalize(
    values: np.ndarray, *, vmin: float, vmax: float, log: bool = True
) -> np.ndarray:
    """Position of each value on the colour axis, clipped to [0, 1].

    Parameters
    ----------
    values : numpy.ndarray of shape (n,)
    vmin, vmax : float
        Range of the colour axis (both > 0 when ``log``).
    log : bool
        Logarithmic axis (the default for LPR, which spans orders of magnitude).

    Returns
    -------
    numpy.ndarray of shape (n,)
        ``t`` in [0, 1]; NaN where the value is not finite (or <= 0 on a log axis).
    """
    values = np.asarray(values, dtype=float)
    if not (np.isfinite(vmin) and np.isfinite(vmax)) or vmax <= vmin:
        raise ValueError(f"colour range: expected vmin < vmax, got {vmin!r}, {vmax!r}")
    if log:
        if vmin <= 0:
            raise ValueError(f"colour range: a log axis needs vmin > 0, got {vmin!r}")
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(values > 0, np.log10(np.where(values > 0, values, 1.0)), np.nan)
        lo, hi = np.log10(vmin), np.log10(vmax)
    else:
        v, lo, hi = values, vmin, vmax
    t = (v - lo) / (hi - lo)
    t = np.where(np.isfinite(t), np.clip(t, 0.0, 1.0), np.nan)
    return t


def colors_at(t: np.ndarray, colormap: str = LPR_COLORMAP) -> list[str]:
    """Hex colours at positions ``t`` (n,) in [0, 1] of ``colormap``; NaN -> grey."""
    t = np.atleast_1d(np.asarray(t, dtype=float))
    stops, rgb = _scale_rgb(colormap)
    tt = np.where(np.isfinite(t), t, 0.0)
    chans = np.stack([np.interp(tt, stops, rgb[:, c]) for c in range(3)], axis=1)
    chans = np.clip(np.rint(chans), 0, 255).astype(int)
    out = [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in chans]
    for i in np.flatnonzero(~np.isfinite(t)):
        out[i] = UNDETERMINED_COLOR
    return out


def map_colors(
    values: np.ndarray,
    *,
    vmin: float,
    vmax: float,
    log: bool = True,
    colormap: str = LPR_COLORMAP,
    undetermined: np.ndarray | None = None,
) -> list[str]:
    """Hex colour of every value: the one mapping used by the viewer and the colour bar.

    Parameters
    ----------
    values : numpy.ndarray of shape (n,)
    vmin, vmax, log : colour axis, see :func:`normalize`.
    colormap : str
        Plotly colour-scale name.
    undetermined : numpy.ndarray of bool, shape (n,), optional
        Atoms drawn grey (:data:`UNDETERMINED_COLOR`) whatever their value.

    Returns
    -------
    list of str of length n
    """
    t = normalize(values, vmin=vmin, vmax=vmax, log=log)
    if undetermined is not None:
        t = np.where(np.asarray(undetermined, dtype=bool), np.nan, t)
    return colors_at(t, colormap)


def colorscale(colormap: str = LPR_COLORMAP, n: int = 33) -> list[list]:
    """Plotly colour scale sampled from :func:`colors_at` (so figures match the viewer)."""
    pos = np.linspace(0.0, 1.0, n)
    return [[float(p), c] for p, c in zip(pos, colors_at(pos, colormap), strict=True)]


def _ticks(vmin: float, vmax: float, log: bool, n: int = 5) -> list[float]:
    if log:
        lo, hi = int(np.ceil(np.log10(vmin) - 1e-9)), int(np.floor(np.log10(vmax) + 1e-9))
        decades = list(range(lo, hi + 1))
        step = max(1, int(np.ceil(len(decades) / n)))
        ticks = [10.0**k for k in decades[::step]]
        return ticks or [vmin, vmax]
    return list(np.linspace(vmin, vmax, n))


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def colorbar_html(
    *,
    vmin: float,
    vmax: float,
    log: bool = True,
    colormap: str = LPR_COLORMAP,
    label: str = "LPR",
    n_stops: int = 65,
    width: int | str = "100%",
) -> str:
    """A horizontal colour bar (HTML/CSS gradient) drawn with :func:`map_colors`.

    Stop ``j`` of the gradient sits at fraction ``j / (n_stops - 1)`` and has the colour
    :func:`map_colors` gives the value at that fraction of the axis, so an atom and the bar
    agree exactly at the stops.
    """
    pos = np.linspace(0.0, 1.0, n_stops)
    if log:
        vals = 10.0 ** (np.log10(vmin) + pos * (np.log10(vmax) - np.log10(vmin)))
    else:
        vals = vmin + pos * (vmax - vmin)
    cols = map_colors(vals, vmin=vmin, vmax=vmax, log=log, colormap=colormap)
    stops = ", ".join(f"{c} {100 * p:.4f}%" for c, p in zip(cols, pos, strict=True))
    ticks = []
    for v in _ticks(vmin, vmax, log):
        (t,) = normalize(np.array([v]), vmin=vmin, vmax=vmax, log=log)
        ticks.append(
            f'<span style="position:absolute;left:{100 * t:.3f}%;transform:translateX(-50%);">'
            f"{escape(_fmt(v))}</span>"
        )
    w = f"{width}px" if isinstance(width, int) else width
    return (
        f'<div class="lprviz-colorbar" style="width:{w};font:12px sans-serif;color:#333;'
        'margin-top:4px;padding:0 16px;box-sizing:border-box;">'
        f'<div style="margin-bottom:2px;">{escape(label)}'
        f'{" (log scale)" if log else ""}'
        f'<span style="float:right;"><span style="display:inline-block;width:10px;height:10px;'
        f'background:{UNDETERMINED_COLOR};"></span> undetermined</span></div>'
        f'<div class="lprviz-gradient" style="height:14px;'
        f'background:linear-gradient(to right, {stops});"></div>'
        f'<div style="position:relative;height:16px;">{"".join(ticks)}</div></div>'
    )


# --------------------------------------------------------------------------- figures


def _group_color(i: int) -> str:
    return _GROUP_COLORS[i % len(_GROUP_COLORS)]


def _rmse_mae(ref: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    ok = np.isfinite(ref) & np.isfinite(pred)
    if not ok.any():
        return float("nan"), float("nan")
    d = pred[ok] - ref[ok]
    return float(np.sqrt(np.mean(d**2))), float(np.mean(np.abs(d)))


def parity_figure(
    energy_ref: np.ndarray,
    energy_pred: np.ndarray,
    *,
    is_train: np.ndarray,
    groups: Sequence[str],
    names: Sequence[str],
    unit: str = "eV/atom",
) -> go.Figure:
    """Parity plot: predicted vs reference energy per atom, training and test, by group.

    Parameters
    ----------
    energy_ref, energy_pred : numpy.ndarray of shape (n_frames,)
        Energies per atom; frames with a NaN reference are left out.
    is_train : numpy.ndarray of bool, shape (n_frames,)
    groups, names : sequences of str of length n_frames
        Colour and hover text (escaped).

    Returns
    -------
    plotly.graph_objects.Figure
        Title gives RMSE and MAE on training and test frames (meV/atom). Each point's
        ``customdata`` is its frame index.
    """
    ref = np.asarray(energy_ref, dtype=float)
    pred = np.asarray(energy_pred, dtype=float)
    is_train = np.asarray(is_train, dtype=bool)
    groups = np.asarray([str(g) for g in groups])
    traces = []
    ok = np.isfinite(ref) & np.isfinite(pred)
    for gi, g in enumerate(dict.fromkeys(groups)):
        for split, mask_split, symbol in (("train", is_train, "circle"), ("test", ~is_train, "x")):
            sel = np.flatnonzero((groups == g) & mask_split & ok)
            if sel.size == 0:
                continue
            traces.append(
                go.Scatter(
                    x=ref[sel],
                    y=pred[sel],
                    mode="markers",
                    name=f"{escape(g)} ({split})",
                    marker={"color": _group_color(gi), "symbol": symbol, "size": 7},
                    customdata=sel,
                    hovertext=[escape(names[i]) for i in sel],
                    hovertemplate="%{hovertext}<br>ref %{x:.4f}<br>pred %{y:.4f}<extra></extra>",
                )
            )
    if ok.any():
        both = np.concatenate([ref[ok], pred[ok]])
        lo, hi = float(both.min()), float(both.max())
        pad = 0.05 * (hi - lo or 1.0)
        traces.append(
            go.Scatter(
                x=[lo - pad, hi + pad], y=[lo - pad, hi + pad], mode="lines",
                line={"color": "#888", "dash": "dash"}, showlegend=False, hoverinfo="skip",
            )
        )
    fig = go.Figure(data=traces)
    parts = []
    for split, m in (("train", is_train), ("test", ~is_train)):
        if (m & ok).any():
            rmse, mae = _rmse_mae(ref[m], pred[m])
            parts.append(f"{split}: RMSE {1e3 * rmse:.1f}, MAE {1e3 * mae:.1f} meV/atom")
    fig.update_layout(
        title={"text": "<br>".join(parts) or "no reference energies", "font": {"size": 13}},
        xaxis_title=f"reference energy ({unit})",
        yaxis_title=f"predicted energy ({unit})",
        legend={"font": {"size": 10}},
        margin={"l": 60, "r": 10, "t": 60, "b": 50},
        height=420,
    )
    return fig


def lpr_distribution_figure(
    lpr: np.ndarray, categories: Sequence[str], *, title: str = "", label: str = "LPR"
) -> go.Figure:
    """Box plots of LPR per category (group or species) on a log axis.

    Quartiles are taken in log space; whiskers span the minimum and maximum.

    Parameters
    ----------
    lpr : numpy.ndarray of shape (n_atoms,)
    categories : sequence of str of length n_atoms
    """
    lpr = np.asarray(lpr, dtype=float)
    cats = np.asarray([str(c) for c in categories])
    traces = []
    for i, c in enumerate(dict.fromkeys(cats)):
        v = lpr[(cats == c) & np.isfinite(lpr) & (lpr > 0)]
        if v.size == 0:
            continue
        # Box statistics in log space, sent as numbers: the figure stays small at 20k atoms.
        q1, med, q3 = 10 ** np.percentile(np.log10(v), [25, 50, 75])
        traces.append(
            go.Box(
                x=[escape(c)], q1=[q1], median=[med], q3=[q3], lowerfence=[v.min()],
                upperfence=[v.max()], name=escape(c), marker={"color": _group_color(i)},
                hovertemplate=f"{escape(c)}: median %{{median:.3g}}<extra>{v.size} atoms"
                              "</extra>",
            )
        )
    fig = go.Figure(data=traces)
    fig.update_layout(
        title=escape(title), yaxis={"type": "log", "title": escape(label)}, showlegend=False,
        margin={"l": 60, "r": 10, "t": 40, "b": 40}, height=360,
    )
    return fig


def lpr_alpha_figure(
    alphas: np.ndarray,
    curves: np.ndarray,
    labels: Sequence[str],
    *,
    current_alpha: float | None = None,
) -> go.Figure:
    """LPR as a function of the regularisation alpha (log-log), one line per curve.

    Parameters
    ----------
    alphas : numpy.ndarray of shape (n_alphas,)
    curves : numpy.ndarray of shape (n_alphas, n_curves)
    labels : sequence of str of length n_curves
    current_alpha : float, optional
        Drawn as a vertical line.
    """
    alphas = np.asarray(alphas, dtype=float)
    curves = np.asarray(curves, dtype=float).reshape(len(alphas), -1)
    traces = []
    for j in range(curves.shape[1]):
        traces.append(
            go.Scatter(
                x=alphas, y=curves[:, j], mode="lines", name=escape(labels[j]),
                line={"color": _group_color(j)},
            )
        )
    fig = go.Figure(data=traces)
    if current_alpha is not None:
        fig.add_vline(x=current_alpha, line={"color": "#444", "dash": "dot"})
    fig.update_layout(
        xaxis={"type": "log", "title": "alpha"}, yaxis={"type": "log", "title": "LPR"},
        margin={"l": 60, "r": 10, "t": 30, "b": 50}, height=360, legend={"font": {"size": 10}},
    )
    return fig


def pca_2d(X: np.ndarray) -> np.ndarray:
    """First two principal components of the rows of ``X`` (n, d) -> (n, 2), for display."""
    X = np.asarray(X, dtype=float)
    Xc = X - X.mean(axis=0)
    if Xc.shape[0] < 2:
        return np.zeros((Xc.shape[0], 2))
    if min(Xc.shape) > 50:
        # Two components only: a truncated (Lanczos) SVD costs a few passes over X instead
        # of the O(n d^2) of a full one (seconds -> ~0.1 s at 8k atoms x 1.5k features).
        from scipy.sparse.linalg import svds

        _, sv, vt = svds(Xc, k=2, random_state=0)
        vt = vt[np.argsort(sv)[::-1]]
    else:
        _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    out = Xc @ vt[:2].T
    if out.shape[1] < 2:
        out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    return out


def environment_map_figure(
    coords: np.ndarray,
    values: np.ndarray,
    *,
    vmin: float,
    vmax: float,
    log: bool = True,
    colormap: str = LPR_COLORMAP,
    hover: Sequence[str] | None = None,
    label: str = "LPR",
    customdata: np.ndarray | None = None,
) -> go.Figure:
    """2D map of atomic environments (e.g. PCA) coloured like the 3D viewer.

    Parameters
    ----------
    coords : numpy.ndarray of shape (n_atoms, 2)
    values : numpy.ndarray of shape (n_atoms,)
    hover : sequence of str, optional
        Hover text per atom (escaped here).
    customdata : numpy.ndarray of int, shape (n_atoms,), optional
        Atom index of each point (default ``arange(n_atoms)``), for linked selection.

    Returns
    -------
    plotly.graph_objects.Figure
        Points carry their atom index as ``customdata``.
    """
    coords = np.asarray(coords, dtype=float)
    values = np.asarray(values, dtype=float)
    t = normalize(values, vmin=vmin, vmax=vmax, log=log)
    lo, hi = (np.log10(vmin), np.log10(vmax)) if log else (vmin, vmax)
    cval = lo + np.nan_to_num(t, nan=0.0) * (hi - lo)
    if log:
        tickvals = [np.log10(v) for v in _ticks(vmin, vmax, log)]
        ticktext = [_fmt(10**v) for v in tickvals]
    else:
        tickvals = ticktext = None
    fig = go.Figure(
        go.Scattergl(
            x=coords[:, 0], y=coords[:, 1], mode="markers",
            marker={
                "color": cval, "colorscale": colorscale(colormap), "cmin": lo, "cmax": hi,
                "size": 5,
                "colorbar": {"title": {"text": escape(label)}, "tickvals": tickvals,
                             "ticktext": ticktext},
            },
            customdata=np.arange(len(values)) if customdata is None else customdata,
            hovertext=[escape(h) for h in hover] if hover is not None else None,
            hovertemplate="%{hovertext}<extra></extra>" if hover is not None else None,
        )
    )
    fig.update_layout(
        xaxis_title="PC 1", yaxis_title="PC 2", margin={"l": 50, "r": 10, "t": 30, "b": 40},
        height=400, dragmode="lasso",
    )
    return fig


def histogram_figure(
    series: dict[str, np.ndarray], *, log: bool = True, label: str = "LPR", nbins: int = 50
) -> go.Figure:
    """Overlaid histograms (e.g. LPR of training sets A and B) on a shared (log) axis."""
    traces = []
    allv = np.concatenate([np.asarray(v, float) for v in series.values()]) if series else []
    allv = np.asarray(allv)
    allv = allv[np.isfinite(allv) & ((allv > 0) if log else True)]
    if allv.size:
        lo, hi = (np.log10(allv.min()), np.log10(allv.max())) if log else (allv.min(), allv.max())
        size = (hi - lo) / nbins or 1.0
    else:
        lo, size = 0.0, 1.0
    for i, (name, v) in enumerate(series.items()):
        v = np.asarray(v, dtype=float)
        v = v[np.isfinite(v) & ((v > 0) if log else True)]
        traces.append(
            go.Histogram(
                x=np.log10(v) if log else v, name=escape(name), opacity=0.6,
                marker={"color": _group_color(i)},
                xbins={"start": lo, "size": size},
            )
        )
    fig = go.Figure(data=traces)
    fig.update_layout(
        barmode="overlay", xaxis_title=f"log10 {escape(label)}" if log else escape(label),
        yaxis_title="atoms", margin={"l": 50, "r": 10, "t": 30, "b": 40}, height=340,
    )
    return fig


def ratio_range(ratio: np.ndarray, *, floor: float = 1.5) -> tuple[float, float]:
    """Symmetric log range (1/r, r) covering ``ratio`` (at least (1/floor, floor))."""
    r = np.asarray(ratio, dtype=float)
    r = r[np.isfinite(r) & (r > 0)]
    m = float(np.max(np.abs(np.log10(r)))) if r.size else 0.0
    m = max(m, np.log10(floor))
    return 10.0**-m, 10.0**m
