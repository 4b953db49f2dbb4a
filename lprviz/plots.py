"""Plotly figures and the value -> colour mapping shared with the 3D viewer.

Pure functions: arrays in, figures (or HTML) out; no science. Every string that comes from a
user (structure names, group labels) is HTML-escaped before it reaches a hover label.

The colour of a value is decided in one place, :func:`map_colors`; the 3D viewer colours atoms
with it and :func:`colorbar_html` draws its gradient with it, so the two always agree.

Numbers are written in one place too: :func:`format_number` (tables via :func:`format_table`,
hover text, tick labels), and every log axis and colour bar takes its ticks from
:func:`log_ticks` (decade-labelled, no SI prefixes).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.colors as pcolors
import plotly.graph_objects as go

#: Colour of atoms whose value is undetermined (or not finite).
UNDETERMINED_COLOR = "#a0a0a0"
#: Default sequential colour map for LPR (low = dark, high = bright).
LPR_COLORMAP = "Viridis"
#: Default diverging colour map for ratios (red = lost, blue = gained).
RATIO_COLORMAP = "RdBu"

_GROUP_COLORS = pcolors.qualitative.Plotly + pcolors.qualitative.Dark24

# The computation lives in lprviz.maps; the name stays here until every page imports it there.
from lprviz.maps import pca_2d  # noqa: E402, F401


def escape(text: object) -> str:
    """HTML-escape any user-provided text (names, groups) for hover labels and HTML."""
    return html.escape(str(text), quote=True)


def _escaped_array(texts: Sequence[object]) -> np.ndarray:
    """Escaped texts as one numpy string array: plotly validates and copies an array at
    once, where a list costs a Python step per point (measured 0.6 s at 100k atoms)."""
    return np.asarray([escape(t) for t in texts], dtype=str)


def category_codes(categories) -> tuple[np.ndarray, list[str]]:
    """Integer code of every entry and the labels in order of first appearance.

    Parameters
    ----------
    categories : sequence of str or pandas.Categorical
        A Categorical (e.g. cached per dataset) is used as is: its codes and categories.

    Returns
    -------
    codes : numpy.ndarray of int, shape (n,)
    labels : list of str
    """
    if isinstance(categories, pd.Categorical):
        return np.asarray(categories.codes), [str(c) for c in categories.categories]
    codes, uniques = pd.factorize(np.asarray(categories).astype(str))
    return codes, [str(u) for u in uniques]


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


# --------------------------------------------------------------------------- numbers


#: Shown for a missing (NaN) number in tables and labels.
MISSING = "–"

# Known per-atom/per-group column names -> human header (with unit). Anything else is
# turned from snake_case into words by :func:`human_header`.
COLUMN_LABELS: dict[str, str] = {
    "lpr": "LPR",
    "median_lpr": "median LPR",
    "min_lpr": "min LPR",
    "max_lpr": "max LPR",
    "pr": "PR",
    "lcpr": "LCPR",
    "alpha": "alpha",
    "data_share": "data share of LPR",
    "local_energy": "local energy (eV)",
    "local_error": "local error (eV)",
    "abs_local_error": "|local error| (eV)",
    "energy": "energy (eV)",
    "energy_per_atom": "energy (eV/atom)",
    "energy_error": "energy error (eV)",
    "spread": "committee spread (eV)",
    "rmse": "RMSE (eV/atom)",
    "training_atoms": "training atoms",
    "in_training": "in training",
    "n_atoms": "atoms",
    "z": "Z",
}


def format_number(x: object, digits: int = 3) -> str:
    """The one number format of the app: ``digits`` significant digits.

    Fixed point for ``1e-3 <= |x| < 1e4`` (``0.0138``, ``19.4``, ``1230``), scientific with a
    short exponent otherwise (``1.5e-4``, ``4.77e-7``, ``2.1e5``); trailing zeros dropped.

    Parameters
    ----------
    x : float-like
    digits : int
        Significant digits (``>= 1``).

    Returns
    -------
    str
        :data:`MISSING` for NaN or None, ``"∞"``/``"-∞"`` for infinities, ``"0"`` for zero.
    """
    if digits < 1:
        raise ValueError(f"digits: expected an integer >= 1, got {digits!r}")
    if x is None:
        return MISSING
    v = float(x)  # type: ignore[arg-type]
    if np.isnan(v):
        return MISSING
    if np.isinf(v):
        return "∞" if v > 0 else "-∞"
    if v == 0:
        return "0"
    mant, exp = f"{v:.{digits - 1}e}".split("e")
    e = int(exp)  # the decade after rounding to `digits` (9.996e-4 -> 1.00e-03)
    if -3 <= e < 4:
        rounded = float(f"{mant}e{e}")  # 1234.5 -> 1230 at 3 digits, not 1234
        return _strip_zeros(f"{rounded:.{max(0, digits - 1 - e)}f}")
    return f"{_strip_zeros(mant)}e{e}"


def _strip_zeros(text: str) -> str:
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_numbers(values: Sequence[object] | np.ndarray, digits: int = 3) -> list[str]:
    """:func:`format_number` of every element (for hover text and tick labels)."""
    return [format_number(v, digits) for v in np.asarray(values, dtype=float).reshape(-1)]


def human_header(name: str) -> str:
    """Human column header of ``name``: :data:`COLUMN_LABELS` or snake_case -> words.

    ``"median_LPR"`` -> ``"median LPR"``, ``"training_atoms"`` -> ``"training atoms"``;
    headers that are already human (contain a space, no underscore) are kept.
    """
    key = str(name)
    if key.lower() in COLUMN_LABELS:
        return COLUMN_LABELS[key.lower()]
    return key.replace("_", " ")


def format_table(df, *, digits: int = 3, labels: Mapping[str, str] | None = None):
    """A table ready for ``st.dataframe``: human headers, one number format.

    Float columns keep their numbers (so the table still sorts numerically) and are
    *displayed* with :func:`format_number`; integer, boolean and text columns are unchanged.

    Parameters
    ----------
    df : pandas.DataFrame
    digits : int
        Significant digits of float columns.
    labels : mapping of str to str, optional
        Headers that override :func:`human_header` for this table.

    Returns
    -------
    pandas.io.formats.style.Styler
        Pass it to ``st.dataframe`` as is (``hide_index=True``).
    """
    import pandas as pd

    labels = dict(labels or {})
    renamed = df.rename(columns=lambda c: labels.get(str(c), human_header(str(c))))
    floats = [c for c in renamed.columns if pd.api.types.is_float_dtype(renamed[c])]
    return renamed.style.format(lambda v: format_number(v, digits), subset=floats)


# --------------------------------------------------------------------------- log axes

# Mantissas of the ticks inside each decade, by how many decades the axis spans.
_TICK_MANTISSAS = ((1.0, (1, 1.5, 2, 3, 4, 5, 6, 7, 8)), (2.6, (1, 2, 5)), (6.0, (1, 3)))


def log_ticks(vmin: float, vmax: float, *, max_ticks: int = 8) -> tuple[list[float], list[str]]:
    """Tick values and labels of a log axis from ``vmin`` to ``vmax``, one style everywhere.

    Every label is a whole number in :func:`format_number`'s style (``1e-4``, ``3e-4``,
    ``0.01``, ``10``), so each tick names its decade and no label is a bare mantissa or an
    SI prefix. Decades are always ticked when they fall in the range; within a decade the
    axis adds 1-2-5 (or finer) ticks when it spans few decades, and skips decades when it
    spans many.

    Parameters
    ----------
    vmin, vmax : float
        Axis range, ``0 < vmin < vmax`` (equal values are widened by 10 % each way).
    max_ticks : int
        Upper bound on the number of decade ticks of a wide axis.

    Returns
    -------
    (list of float, list of str)
        Tick values (data units, ascending) and their labels.
    """
    if not (np.isfinite(vmin) and np.isfinite(vmax)) or vmin <= 0 or vmax <= 0:
        raise ValueError(f"log axis: expected 0 < vmin <= vmax, got {vmin!r}, {vmax!r}")
    vmin, vmax = (vmin / 1.1, vmax * 1.1) if vmax <= vmin else (vmin, vmax)
    lo, hi = np.log10(vmin), np.log10(vmax)
    span = hi - lo
    d_lo, d_hi = int(np.floor(lo + 1e-9)), int(np.floor(hi + 1e-9))
    mantissas: tuple[float, ...] = (1.0,)
    for limit, mants in _TICK_MANTISSAS:
        if span <= limit:
            mantissas = mants
            break
    step = 1 if span <= 6.0 else int(np.ceil((d_hi - d_lo + 1) / max_ticks))
    eps = 1e-9 * max(span, 1.0)
    vals = [m * 10.0**d for d in range(d_lo, d_hi + 1) for m in mantissas
            if (m != 1.0 or (d - d_lo) % step == 0) and lo - eps <= d + np.log10(m) <= hi + eps]
    if span < 1.0 and len(vals) > max_ticks:  # keep the decade and 1-2-5 on a crowded axis
        vals = [v for v in vals if _mantissa(v) in (1, 2, 5)] or vals
    if len(vals) < 3 and span < 1.0:  # a narrow axis: evenly spaced round values
        vals = _linear_ticks(vmin, vmax)
    return vals, _distinct_labels(vals)


def _distinct_labels(vals: Sequence[float]) -> list[str]:
    """:func:`format_number` labels, with more digits only if 3 would repeat a label."""
    for digits in range(3, 11):
        text = [format_number(v, digits) for v in vals]
        if len(set(text)) == len(text):
            break
    return text


def _linear_ticks(vmin: float, vmax: float, target: int = 4) -> list[float]:
    """Round values ``k * step`` (step 1, 2 or 5 times a power of ten) inside the range."""
    raw = (vmax - vmin) / target
    base = 10.0 ** np.floor(np.log10(raw))
    step = min((m * base for m in (1, 2, 5, 10)), key=lambda s: abs(np.log(s / raw)))
    first = np.ceil(vmin / step - 1e-9) * step
    vals = [float(v) for v in np.arange(first, vmax + 1e-9 * step, step) if v > 0]
    return [float(f"{v:.12g}") for v in vals] or [vmin, vmax]


def _mantissa(v: float) -> float:
    return round(v / 10.0 ** np.floor(np.log10(v) + 1e-9), 6)


def positive_range(*arrays: np.ndarray | Sequence[float] | float) -> tuple[float, float] | None:
    """(min, max) of the finite positive values of ``arrays``, or None when there are none."""
    vals = [np.asarray(a, dtype=float).reshape(-1) for a in arrays]
    allv = np.concatenate(vals) if vals else np.zeros(0)
    allv = allv[np.isfinite(allv) & (allv > 0)]
    if allv.size == 0:
        return None
    return float(allv.min()), float(allv.max())


def log_axis(*values: np.ndarray | Sequence[float] | float, title: str = "",
             pad: float = 0.05) -> dict:
    """Plotly layout of a decade-labelled log axis covering ``values`` (see :func:`log_ticks`).

    Parameters
    ----------
    *values : array-like
        Everything the axis must show (non-finite and non-positive values are ignored).
    title : str
        Axis title (escaped).
    pad : float
        Margin added each side, in decades.

    Returns
    -------
    dict
        For ``fig.update_layout(xaxis=...)`` / ``yaxis=...``: ``type="log"``, ``range``
        (log10 units), ``tickvals`` and ``ticktext``; without positive data only the type
        and title.
    """
    axis: dict = {"type": "log", "title": {"text": escape(title)}}
    rng = positive_range(*values)
    if rng is None:
        return axis
    lo, hi = rng
    if hi <= lo:
        lo, hi = lo / 1.1, hi * 1.1
    lo, hi = lo * 10.0**-pad, hi * 10.0**pad
    tickvals, ticktext = log_ticks(lo, hi)
    axis.update(range=[np.log10(lo), np.log10(hi)], tickvals=tickvals, ticktext=ticktext)
    return axis


def log10_ticks_axis(vmin: float, vmax: float, *, title: str = "") -> dict:
    """Axis (or colour bar) that shows ``log10`` of the data on a linear scale.

    Tick positions are ``log10`` of :func:`log_ticks`' values and the labels are the values
    themselves, so such an axis reads like :func:`log_axis` (histograms of log LPR,
    colour bars of plotly markers).

    Returns
    -------
    dict
        ``title``, ``tickvals`` (log10 units) and ``ticktext``.
    """
    vals, text = log_ticks(vmin, vmax)
    return {"title": {"text": escape(title)}, "tickvals": [float(np.log10(v)) for v in vals],
            "ticktext": text}


def _ticks(vmin: float, vmax: float, log: bool, n: int = 5) -> tuple[list[float], list[str]]:
    """Ticks and labels of a colour axis (log: :func:`log_ticks`)."""
    if log:
        return log_ticks(vmin, vmax)
    vals = list(np.linspace(vmin, vmax, n))
    return vals, _distinct_labels(vals)


def colorbar_html(
    *,
    vmin: float,
    vmax: float,
    log: bool = True,
    colormap: str = LPR_COLORMAP,
    label: str = "LPR",
    n_stops: int = 65,
    width: int | str = "100%",
    show_undetermined: bool = False,
) -> str:
    """A horizontal colour bar (HTML/CSS gradient) drawn with :func:`map_colors`.

    Stop ``j`` of the gradient sits at fraction ``j / (n_stops - 1)`` and has the colour
    :func:`map_colors` gives the value at that fraction of the axis, so an atom and the bar
    agree exactly at the stops. Ticks and labels are those of :func:`log_ticks` (log) or
    :func:`format_number` (linear), as on every plotly axis of the app.

    Parameters
    ----------
    vmin, vmax, log, colormap : colour axis, see :func:`map_colors`.
    label : str
        Caption (escaped).
    n_stops : int
        Gradient stops.
    width : int or str
        Pixels or a CSS length.
    show_undetermined : bool
        Add the grey "undetermined" swatch: pass True only when some atom shown is (or can
        be) drawn grey, e.g. ``undetermined.any()`` or a non-finite value.
    """
    pos = np.linspace(0.0, 1.0, n_stops)
    if log:
        vals = 10.0 ** (np.log10(vmin) + pos * (np.log10(vmax) - np.log10(vmin)))
    else:
        vals = vmin + pos * (vmax - vmin)
    cols = map_colors(vals, vmin=vmin, vmax=vmax, log=log, colormap=colormap)
    stops = ", ".join(f"{c} {100 * p:.4f}%" for c, p in zip(cols, pos, strict=True))
    ticks = []
    for v, text in zip(*_ticks(vmin, vmax, log), strict=True):
        (t,) = normalize(np.array([v]), vmin=vmin, vmax=vmax, log=log)
        ticks.append(
            f'<span style="position:absolute;left:{100 * t:.3f}%;transform:translateX(-50%);">'
            f"{escape(text)}</span>"
        )
    w = f"{width}px" if isinstance(width, int) else width
    swatch = (
        '<span class="lprviz-undetermined" style="float:right;"><span style="display:'
        f'inline-block;width:10px;height:10px;background:{UNDETERMINED_COLOR};"></span>'
        " undetermined</span>" if show_undetermined else ""
    )
    return (
        f'<div class="lprviz-colorbar" style="width:{w};font:12px sans-serif;color:#333;'
        'margin-top:4px;padding:0 16px;box-sizing:border-box;">'
        f'<div style="margin-bottom:2px;">{escape(label)}'
        f'{" (log scale)" if log else ""}{swatch}</div>'
        f'<div class="lprviz-gradient" style="height:14px;'
        f'background:linear-gradient(to right, {stops});"></div>'
        f'<div style="position:relative;height:16px;">{"".join(ticks)}</div></div>'
    )


# --------------------------------------------------------------------------- figures


def group_color(i: int) -> str:
    """Colour of the ``i``-th group (the one palette of every per-group figure)."""
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
        Colour and hover text (escaped). Hover values are formatted by plotly.js (4
        significant digits), not per point here.
    unit : str
        Unit of both energy axes (the energies' own; ``"eV/atom"`` by default).

    Returns
    -------
    plotly.graph_objects.Figure
        Title gives RMSE and MAE on training and test frames (meV/atom). Each point's
        ``customdata`` is its frame index.
    """
    ref = np.asarray(energy_ref, dtype=float)
    pred = np.asarray(energy_pred, dtype=float)
    is_train = np.asarray(is_train, dtype=bool)
    codes, labels = category_codes(groups)
    names = _escaped_array(names)
    traces = []
    ok = np.isfinite(ref) & np.isfinite(pred)
    for gi, g in enumerate(labels):
        for split, mask_split, symbol in (("train", is_train, "circle"), ("test", ~is_train, "x")):
            sel = np.flatnonzero((codes == gi) & mask_split & ok)
            if sel.size == 0:
                continue
            traces.append(
                go.Scatter(
                    x=ref[sel],
                    y=pred[sel],
                    mode="markers",
                    name=f"{escape(g)} ({split})",
                    marker={"color": group_color(gi), "symbol": symbol, "size": 7},
                    customdata=sel,
                    hovertext=names[sel],
                    hovertemplate="%{hovertext}<br>ref %{x:.4~g}<br>pred %{y:.4~g}"
                                  "<extra></extra>",
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


def force_parity_figure(
    forces_ref: np.ndarray,
    forces_pred: np.ndarray,
    *,
    is_train: np.ndarray,
    max_points: int = 20000,
) -> go.Figure:
    """Parity plot of force components: predicted vs reference (eV/A), training and test.

    Parameters
    ----------
    forces_ref, forces_pred : numpy.ndarray of shape (n_atoms, 3)
        Atoms with a NaN reference are left out.
    is_train : numpy.ndarray of bool, shape (n_atoms,)
        Atoms of training frames.
    max_points : int
        At most this many components drawn per split (evenly strided; the RMSE in the title
        uses all of them).

    Returns
    -------
    plotly.graph_objects.Figure
        Title gives the component RMSE on training and test atoms (meV/A).
    """
    ref = np.asarray(forces_ref, dtype=float)
    pred = np.asarray(forces_pred, dtype=float)
    is_train = np.repeat(np.asarray(is_train, dtype=bool), 3)
    ref, pred = ref.reshape(-1), pred.reshape(-1)
    ok = np.isfinite(ref) & np.isfinite(pred)
    traces, parts = [], []
    for split, m, symbol, color in (("train", is_train, "circle", "#1f77b4"),
                                    ("test", ~is_train, "x", "#d62728")):
        sel = np.flatnonzero(m & ok)
        if sel.size == 0:
            continue
        rmse = float(np.sqrt(np.mean((pred[sel] - ref[sel]) ** 2)))
        parts.append(f"{split}: force RMSE {1e3 * rmse:.0f} meV/A ({sel.size // 3} atoms)")
        shown = sel[:: max(1, sel.size // max_points)]
        traces.append(go.Scattergl(x=ref[shown], y=pred[shown], mode="markers", name=split,
                                   marker={"color": color, "symbol": symbol, "size": 4},
                                   hoverinfo="skip"))
    if ok.any():
        both = np.concatenate([ref[ok], pred[ok]])
        lo, hi = float(both.min()), float(both.max())
        traces.append(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", showlegend=False,
                                 line={"color": "#888", "dash": "dash"}, hoverinfo="skip"))
    fig = go.Figure(data=traces)
    fig.update_layout(
        title={"text": "<br>".join(parts) or "no reference forces", "font": {"size": 13}},
        xaxis_title="reference force component (eV/A)",
        yaxis_title="predicted force component (eV/A)",
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
    categories : sequence of str of length n_atoms, or pandas.Categorical
        (:func:`category_codes`; pass a cached Categorical to skip relabelling every atom).
    title : str
        Figure title.
    label : str
        Name of the quantity on the value axis (e.g. ``"LPR"``, ``"LCPR"``).

    Returns
    -------
    plotly.graph_objects.Figure
    """
    lpr = np.asarray(lpr, dtype=float)
    codes, labels = category_codes(categories)
    good = np.isfinite(lpr) & (lpr > 0)
    log_lpr = np.log10(np.where(good, lpr, 1.0))
    traces = []
    shown = []
    for i, c in enumerate(labels):
        sel = (codes == i) & good
        v = lpr[sel]
        if v.size == 0:
            continue
        # Box statistics in log space, sent as numbers: the figure stays small at 20k atoms.
        q1, med, q3 = 10 ** np.percentile(log_lpr[sel], [25, 50, 75])
        shown.append(v)
        traces.append(
            go.Box(
                x=[escape(c)], q1=[q1], median=[med], q3=[q3], lowerfence=[v.min()],
                upperfence=[v.max()], name=escape(c), marker={"color": group_color(i)},
                hovertemplate=f"{escape(c)}: median {format_number(med)}<extra>{v.size} "
                              "atoms</extra>",
            )
        )
    fig = go.Figure(data=traces)
    fig.update_layout(
        title=escape(title), yaxis=log_axis(*shown, title=label), showlegend=False,
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
                line={"color": group_color(j)},
            )
        )
    fig = go.Figure(data=traces)
    if current_alpha is not None:
        fig.add_vline(x=current_alpha, line={"color": "#444", "dash": "dot"})
    fig.update_layout(
        xaxis=log_axis(alphas, title="alpha"), yaxis=log_axis(curves, title="LPR"),
        margin={"l": 60, "r": 10, "t": 30, "b": 50}, height=360, legend={"font": {"size": 10}},
    )
    return fig


def environment_map_figure(
    coords: np.ndarray,
    values: np.ndarray,
    *,
    vmin: float,
    vmax: float,
    log: bool = True,
    colormap: str = LPR_COLORMAP,
    hover: Sequence[str] | None = None,
    hover_escaped: bool = False,
    label: str = "LPR",
    customdata: np.ndarray | None = None,
) -> go.Figure:
    """2D map of atomic environments (e.g. PCA) coloured like the 3D viewer.

    Parameters
    ----------
    coords : numpy.ndarray of shape (n_atoms, 2)
    values : numpy.ndarray of shape (n_atoms,)
    vmin, vmax : float
        Colour range (as the 3D viewer's, so both views colour alike).
    log : bool
        Colour on a log scale of ``values``.
    colormap : str
        Name of the colour map (:data:`LPR_COLORMAP` by default).
    hover : sequence of str, optional
        Hover text per atom (escaped here, unless ``hover_escaped``: the caller did, e.g.
        once for texts it caches).
    hover_escaped : bool
        Whether ``hover`` is escaped already.
    label : str
        Name of the coloured quantity (colour bar title).
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
    ticks, ticktext = _ticks(vmin, vmax, log)
    tickvals = [float(np.log10(v)) for v in ticks] if log else ticks
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
            hovertext=(None if hover is None else np.asarray(hover, dtype=str) if hover_escaped
                       else _escaped_array(hover)),
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
                marker={"color": group_color(i)},
                xbins={"start": lo, "size": size},
            )
        )
    fig = go.Figure(data=traces)
    if log and allv.size:
        xaxis = log10_ticks_axis(float(allv.min()), float(allv.max()),
                                 title=f"{label} (log scale)")
    else:
        xaxis = {"title": {"text": escape(label)}}
    fig.update_layout(
        barmode="overlay", xaxis=xaxis,
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
