"""Plots: colour mapping, colour bar agreement, escaping of user text."""

from __future__ import annotations

import re

import numpy as np
import plotly.colors as pcolors
import pytest

from lprviz import insight_plots, maps, plots


def test_normalize_log_and_linear_against_hand_values():
    t = plots.normalize(np.array([1e-3, 1e-2, 1e-1, 1.0, 10.0]), vmin=1e-2, vmax=1.0, log=True)
    np.testing.assert_allclose(t, [0.0, 0.0, 0.5, 1.0, 1.0])
    t = plots.normalize(np.array([0.0, 2.5, 5.0]), vmin=0.0, vmax=10.0, log=False)
    np.testing.assert_allclose(t, [0.0, 0.25, 0.5])
    t = plots.normalize(np.array([np.nan, -1.0, np.inf]), vmin=1e-2, vmax=1.0, log=True)
    assert np.isnan(t[0]) and np.isnan(t[1])


def test_endpoints_match_plotly_colour_scale():
    stops = pcolors.get_colorscale("Viridis")
    cols = plots.map_colors(np.array([1e-3, 1e3]), vmin=1e-3, vmax=1e3, log=True,
                            colormap="Viridis")
    assert cols == [stops[0][1].lower(), stops[-1][1].lower()]


def test_undetermined_and_nonfinite_are_grey():
    cols = plots.map_colors(np.array([0.1, 0.2, np.nan]), vmin=1e-2, vmax=1.0,
                            undetermined=np.array([False, True, False]))
    assert cols[0] != plots.UNDETERMINED_COLOR
    assert cols[1] == plots.UNDETERMINED_COLOR
    assert cols[2] == plots.UNDETERMINED_COLOR


def test_monotone_brightness_of_viridis():
    # Viridis is perceptually ordered: luminance grows with the value.
    cols = plots.map_colors(np.logspace(-3, 1, 9), vmin=1e-3, vmax=10.0)
    lum = [0.2126 * int(c[1:3], 16) + 0.7152 * int(c[3:5], 16) + 0.0722 * int(c[5:7], 16)
           for c in cols]
    assert all(b > a for a, b in zip(lum, lum[1:], strict=False))


@pytest.mark.parametrize("log", [True, False])
def test_colorbar_gradient_agrees_with_atom_colours(log):
    vmin, vmax = (1e-4, 10.0) if log else (-2.0, 3.0)
    html = plots.colorbar_html(vmin=vmin, vmax=vmax, log=log, n_stops=17)
    stops = re.findall(r"(#[0-9a-f]{6}) ([0-9.]+)%", html)
    assert len(stops) == 17
    for color, pct in stops:
        f = float(pct) / 100
        value = 10 ** (np.log10(vmin) + f * np.log10(vmax / vmin)) if log else vmin + f * (
            vmax - vmin)
        (atom,) = plots.map_colors(np.array([value]), vmin=vmin, vmax=vmax, log=log)
        assert atom == color


def test_colorbar_escapes_label():
    html = plots.colorbar_html(vmin=1e-2, vmax=1.0, label="<script>alert(1)</script>")
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_parity_figure_metrics_and_escaped_hover():
    ref = np.array([0.0, 1.0, 2.0, 3.0])
    pred = np.array([0.0, 1.0, 2.5, 2.0])
    fig = plots.parity_figure(ref, pred, is_train=np.array([True, True, False, False]),
                              groups=["bulk", "bulk", "<b>x</b>", "<b>x</b>"],
                              names=["a", "b", "<img src=x onerror=alert(1)>", "d"])
    # test RMSE = sqrt((0.5^2 + 1^2) / 2), MAE = 0.75, in meV
    assert f"{1e3 * np.sqrt(0.625):.1f}" in fig.layout.title.text
    assert "750.0" in fig.layout.title.text
    hover = [h for tr in fig.data if tr.hovertext is not None for h in tr.hovertext]
    assert "&lt;img src=x onerror=alert(1)&gt;" in hover
    assert not any("<img" in h for h in hover)
    assert not any("<b>" in (tr.name or "") for tr in fig.data)
    custom = sorted(int(c) for tr in fig.data if tr.customdata is not None
                    for c in tr.customdata)
    assert custom == [0, 1, 2, 3]


def test_pca_2d_recovers_dominant_direction():
    rng = np.random.default_rng(0)
    direction = np.array([3.0, 4.0, 0.0]) / 5.0
    X = np.outer(rng.normal(size=200) * 10, direction) + rng.normal(size=(200, 3)) * 0.01
    pc = maps.pca_2d(X)
    assert pc.shape == (200, 2)
    Xc = X - X.mean(axis=0)
    np.testing.assert_allclose(np.abs(pc[:, 0]), np.abs(Xc @ direction), rtol=1e-3, atol=1e-2)
    pc_small = maps.pca_2d(X[:10])
    assert pc_small.shape == (10, 2)


def test_pca_2d_truncated_route_equals_full_svd():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 80)) * np.linspace(5, 0.1, 80)  # distinct leading variances
    Xc = X - X.mean(axis=0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    np.testing.assert_allclose(np.abs(maps.pca_2d(X)), np.abs(Xc @ vt[:2].T), rtol=1e-6,
                               atol=1e-8)


def test_environment_map_uses_viewer_colours_and_indices():
    lpr = np.array([1e-3, 1e-1, 10.0])
    fig = plots.environment_map_figure(np.zeros((3, 2)), lpr, vmin=1e-3, vmax=10.0,
                                       hover=["<x>", "b", "c"])
    tr = fig.data[0]
    assert list(tr.customdata) == [0, 1, 2]
    assert tr.hovertext[0] == "&lt;x&gt;"
    scale = tr.marker.colorscale
    assert scale[0][1] == plots.map_colors(np.array([1e-3]), vmin=1e-3, vmax=10.0)[0]
    assert scale[-1][1] == plots.map_colors(np.array([10.0]), vmin=1e-3, vmax=10.0)[0]


def test_ratio_range_is_symmetric():
    lo, hi = plots.ratio_range(np.array([0.5, 1.0, 8.0]))
    assert hi == pytest.approx(8.0) and lo == pytest.approx(1 / 8.0)
    lo, hi = plots.ratio_range(np.array([1.0, 1.0]))
    assert hi == pytest.approx(1.5)


def test_unknown_colormap_is_a_clear_error():
    with pytest.raises(ValueError, match="colormap"):
        plots.map_colors(np.array([1.0]), vmin=0.1, vmax=10.0, colormap="nope")


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(("value", "text"), [
    (1.5e-4, "1.5e-4"), (1.1e-4, "1.1e-4"), (0.0138, "0.0138"), (19.4, "19.4"),
    (4.773e-7, "4.77e-7"), (0.00000201, "2.01e-6"), (0.000002839, "2.84e-6"),
    (1234.5, "1230"), (12345.0, "1.23e4"), (-0.5, "-0.5"), (0.0, "0"), (2.0, "2"),
    (9.996e-4, "0.001"), (0.99951, "1"), (np.nan, plots.MISSING), (np.inf, "∞"),
    (-np.inf, "-∞"), (None, plots.MISSING),
])
def test_format_number(value, text):
    assert plots.format_number(value) == text


def test_format_number_keeps_three_significant_digits_and_distinguishes_close_values():
    rng = np.random.default_rng(0)
    x = 10.0 ** rng.uniform(-9, 6, 500) * rng.choice([-1, 1], 500)
    for v in x:
        s = plots.format_number(v)
        assert float(s) == pytest.approx(v, rel=5e-3)
        assert len(s.lstrip("-").split("e")[0].replace(".", "").lstrip("0")) <= 4
    # the values experiment 2 showed as "0.0001" twice
    assert plots.format_number(1.5e-4) != plots.format_number(1.1e-4)
    with pytest.raises(ValueError, match="digits"):
        plots.format_number(1.0, digits=0)


def test_format_table_human_headers_and_display_values():
    import pandas as pd

    df = pd.DataFrame({"group": ["a", "b"], "median_LPR": [1.5e-4, 1.1e-4],
                       "training_atoms": [3, 4], "local_error": [0.0138, np.nan]})
    styler = plots.format_table(df)
    assert list(styler.data.columns) == ["group", "median LPR", "training atoms",
                                         "local error (eV)"]
    html = styler.to_html()
    for text in ("1.5e-4", "1.1e-4", "0.0138", plots.MISSING):
        assert text in html
    assert "0.0001<" not in html and "0.000150" not in html
    # numbers stay numbers (sorting works); integers are not reformatted
    assert styler.data["median LPR"].dtype == float
    assert styler.data["training atoms"].tolist() == [3, 4]
    assert list(plots.format_table(df, labels={"group": "G"}).data.columns)[0] == "G"


# --------------------------------------------------------------------------- log axes

_SI = re.compile(r"[0-9](?:[yzafpnuμmkMGTPEZY])$")


def _parse(label: str) -> float:
    return float(label.replace("∞", "inf"))


@pytest.mark.parametrize("span", [0.3, 1.0, 3.0, 8.0])
@pytest.mark.parametrize("start", [1.5e-4, 7e-8, 0.9, 2.3e3])
def test_log_ticks_name_their_decade_at_every_span(span, start):
    vmin, vmax = start, start * 10**span
    vals, text = plots.log_ticks(vmin, vmax)
    assert 2 <= len(vals) <= 12 and vals == sorted(vals)
    for v, t in zip(vals, text, strict=True):
        assert not _SI.search(t)  # no SI prefix such as 100n or 1μ
        assert _parse(t) == pytest.approx(v, rel=1e-2)  # a whole number, not a bare mantissa
        assert vmin * (1 - 1e-6) <= v <= vmax * (1 + 1e-6)
    decades = [v for v in vals if abs(np.log10(v) - round(np.log10(v))) < 1e-9]
    if span >= 1.0:
        assert decades  # a decade inside the range is always labelled
    if span <= 3.0:
        assert len(vals) >= 3  # a narrow axis still gets ticks between decades


def test_log_ticks_label_the_decade_of_a_narrow_axis_that_contains_one():
    vals, text = plots.log_ticks(8e-5, 1.6e-4)
    assert "1e-4" in text and all("e-5" in t or "e-4" in t for t in text)


def test_log_axis_is_explicit_and_ignores_nonpositive():
    axis = plots.log_axis(np.array([2e-5, 3e-5, np.nan, 0.0, -1.0]), title="<b>LPR</b>")
    assert axis["type"] == "log" and "&lt;b&gt;" in axis["title"]["text"]
    assert 10 ** axis["range"][0] < 2e-5 < 3e-5 < 10 ** axis["range"][1]
    assert len(axis["tickvals"]) == len(axis["ticktext"]) >= 3
    assert plots.log_axis(np.array([np.nan]))["type"] == "log"


def _axes(fig):
    lay = fig.layout
    return [ax for ax in (lay.xaxis, lay.yaxis) if ax.type == "log"]


def test_every_log_axis_of_every_figure_has_decade_labels():
    rng = np.random.default_rng(0)
    lpr = 10 ** rng.uniform(-4.2, -3.4, 50)  # under one decade: the case that was unreadable
    figs = [
        plots.lpr_distribution_figure(lpr, ["a", "b"] * 25),
        plots.lpr_alpha_figure(np.logspace(-8, 0, 9), np.outer(np.logspace(-8, 0, 9), [1, 2]),
                               ["x", "y"]),
        insight_plots.addition_figure(np.log(lpr[:5]), np.log(lpr[5:15]).reshape(2, 5)),
        insight_plots.spread_figure(1 / lpr, lpr * 3, 0.5),
        insight_plots.error_vs_lpr_figure(lpr, lpr * 10, lpr < 1e-4, threshold=1e-3),
        insight_plots.tradeoff_figure(np.logspace(-6, -2, 5), lpr[:5], lpr[5:10]),
        insight_plots.lcpr_figure(["Cu-Cu", "l=0", "baseline"], lpr[:3], float(lpr[3])),
    ]
    n_axes = 0
    for fig in figs:
        for ax in _axes(fig):
            n_axes += 1
            assert ax.tickvals is not None and len(ax.tickvals) >= 2
            for v, t in zip(ax.tickvals, ax.ticktext, strict=True):
                assert not _SI.search(t) and _parse(t) == pytest.approx(v, rel=1e-2)
    assert n_axes == 11  # every log axis of those figures


def test_colour_bars_use_the_same_ticks():
    vals, text = plots.log_ticks(1e-8, 1e-6)
    html = plots.colorbar_html(vmin=1e-8, vmax=1e-6)
    for t in text:
        assert f">{t}</span>" in html
    assert "1e-08" not in html
    fig = plots.environment_map_figure(np.zeros((2, 2)), np.array([1e-8, 1e-6]), vmin=1e-8,
                                       vmax=1e-6)
    bar = fig.data[0].marker.colorbar
    assert list(bar.ticktext) == text
    np.testing.assert_allclose(bar.tickvals, np.log10(vals))
    hist = plots.histogram_figure({"A": np.array([1e-8, 1e-7, 1e-6])})
    assert list(hist.layout.xaxis.ticktext) == text


def test_undetermined_swatch_only_when_asked():
    assert "undetermined" not in plots.colorbar_html(vmin=1e-3, vmax=1.0)
    assert "undetermined" in plots.colorbar_html(vmin=1e-3, vmax=1.0, show_undetermined=True)


def test_lcpr_bars_grouped_by_kind():
    names = ["Cu-Cu", "l=0", "Cu-Au", "l=1", "baseline"]
    fig = insight_plots.lcpr_figure(names, np.array([1.0, 2.0, 3.0, 4.0, 5.0]), 0.5)
    kinds = [tr.name for tr in fig.data]
    assert kinds == ["species pair", "angular channel", "composition baseline"]
    pairs = fig.data[0]
    assert list(pairs.x[0]) == ["species pair"] * 2 and list(pairs.x[1]) == ["Cu-Cu", "Cu-Au"]
    np.testing.assert_allclose(pairs.y, [1.0, 3.0])
    assert len({tr.marker.color for tr in fig.data}) == 3


def test_format_table_display_values_reach_streamlit():
    from streamlit.testing.v1 import AppTest

    def page():
        import pandas as pd
        import streamlit as st

        from lprviz import plots

        st.dataframe(plots.format_table(pd.DataFrame({"median_LPR": [1.5e-4, 1.1e-4]})))

    at = AppTest.from_function(page).run()
    assert not at.exception
    shown = at.dataframe[0].proto.arrow_data.styler.display_values
    assert b"1.5e-4" in shown and b"1.1e-4" in shown and b"0.0001" not in shown


def test_tick_labels_stay_distinct_on_a_very_narrow_axis():
    for lo, hi in ((1.0001, 1.0003), (2.2e-4, 2.2001e-4), (5.0, 5.0)):
        vals, text = plots.log_ticks(lo, hi)
        assert len(vals) >= 2 and len(set(text)) == len(text)
        for v, t in zip(vals, text, strict=True):
            assert float(t) == pytest.approx(v, rel=1e-6)
    with pytest.raises(ValueError, match="log axis"):
        plots.log_ticks(0.0, 1.0)
