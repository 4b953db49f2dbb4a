"""Plots: colour mapping, colour bar agreement, escaping of user text."""

from __future__ import annotations

import re

import numpy as np
import plotly.colors as pcolors
import pytest

from lprviz import plots


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
    pc = plots.pca_2d(X)
    assert pc.shape == (200, 2)
    Xc = X - X.mean(axis=0)
    np.testing.assert_allclose(np.abs(pc[:, 0]), np.abs(Xc @ direction), rtol=1e-3, atol=1e-2)
    pc_small = plots.pca_2d(X[:10])
    assert pc_small.shape == (10, 2)


def test_pca_2d_truncated_route_equals_full_svd():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 80)) * np.linspace(5, 0.1, 80)  # distinct leading variances
    Xc = X - X.mean(axis=0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    np.testing.assert_allclose(np.abs(plots.pca_2d(X)), np.abs(Xc @ vt[:2].T), rtol=1e-6,
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
