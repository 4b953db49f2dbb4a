"""Viewer: per-atom colours, grey undetermined atoms, escaping, hover labels."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from lprviz import plots, threedmol, viewer


@pytest.fixture(autouse=True)
def _no_local_3dmol(tmp_path, monkeypatch):
    """No local 3Dmol.js: the HTML under test does not depend on this machine's cache."""
    monkeypatch.delenv(threedmol.JS_ENV, raising=False)
    monkeypatch.setenv("LPRVIZ_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def cell():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)  # 4 atoms, periodic
    atoms[1].symbol = "Au"
    return atoms


def _styles(html: str) -> dict[int, str]:
    """Atom index -> colour from the setStyle calls in the viewer script."""
    out = {}
    for idx, spec in re.findall(r'setStyle\(\{"index": (\[[^\]]*\])\},(\{[^;]*\})\);', html):
        color = json.loads(spec)["sphere"]["color"]
        for i in json.loads(idx):
            out[i] = color
    return out


def test_atom_colours_follow_the_shared_mapping(cell):
    values = np.array([1e-3, 1e-2, 1e-1, 1.0])
    und = np.array([False, False, True, False])
    html = viewer.structure_html(cell, values, vmin=1e-3, vmax=1.0, undetermined=und)
    styles = _styles(html)
    assert sorted(styles) == [0, 1, 2, 3]
    expected = plots.map_colors(values, vmin=1e-3, vmax=1.0, undetermined=und)
    assert [styles[i] for i in range(4)] == expected
    assert styles[2] == plots.UNDETERMINED_COLOR
    assert len({styles[0], styles[1], styles[3]}) == 3


def test_colour_bar_in_html_matches_atoms(cell):
    html = viewer.structure_html(cell, np.array([1e-4, 1e-2, 1e-1, 1e2]), vmin=1e-4, vmax=1e2)
    stops = dict(re.findall(r"(#[0-9a-f]{6}) ([0-9.]+)%", html))
    styles = _styles(html)
    # atoms at the axis ends and middle sit exactly on gradient stops 0%, 50%, 100%
    assert stops[styles[0]] == "0.0000"
    assert stops[styles[2]] == "50.0000"
    assert stops[styles[3]] == "100.0000"


def test_unit_cell_only_for_periodic(cell):
    html = viewer.structure_html(cell, np.ones(4), vmin=0.1, vmax=10.0)
    assert html.count("addCylinder") == 12
    molecule = Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.1]])
    html = viewer.structure_html(molecule, np.ones(2), vmin=0.1, vmax=10.0)
    assert "addCylinder" not in html


def test_user_text_is_escaped(cell):
    evil = "</script><script>alert('x')</script>"
    html = viewer.structure_html(cell, np.ones(4), vmin=0.1, vmax=10.0, title=evil,
                                 colorbar_label=evil, atom_info={evil: [evil] * 4})
    assert "alert('x')</script>" not in html
    assert html.count("<script>") == html.count("</script>")
    # the hover labels still carry the text (inside a JSON string, with < escaped)
    assert "\\u003c/script\\u003e" in html


def test_hover_labels_name_species_and_fields(cell):
    info = {"LPR": np.array([0.5, 2.0, np.nan, 1.0]), "coordination": [12] * 4}
    labels = viewer.atom_labels(cell.get_chemical_symbols(), info)
    assert labels[1] == "#1 Au | LPR 2 | coordination 12"
    assert "LPR n/a" in labels[2]
    small = viewer.atom_labels(["Si"], {"LPR": np.array([4.773e-7])})
    assert small == ["#0 Si | LPR 4.77e-7"]  # plots.format_number, as in tables and axes
    html = viewer.structure_html(cell, np.ones(4), vmin=0.1, vmax=10.0,
                                 atom_info={"LPR": np.ones(4)})
    assert "setHoverable" in html


def test_highlight_draws_halo(cell):
    html = viewer.structure_html(cell, np.ones(4), vmin=0.1, vmax=10.0, highlight=[0, 2])
    assert html.count("addSphere") == 2


def test_bad_inputs_raise(cell):
    with pytest.raises(ValueError, match="values"):
        viewer.structure_html(cell, np.ones(3), vmin=0.1, vmax=1.0)
    with pytest.raises(ValueError, match="style"):
        viewer.structure_html(cell, np.ones(4), vmin=0.1, vmax=1.0, style="cartoon")


def test_undetermined_swatch_only_when_an_atom_is_grey(cell):
    values = np.array([1e-3, 1e-2, 1e-1, 1.0])
    swatch = 'class="lprviz-undetermined"'
    assert swatch not in viewer.structure_html(cell, values, vmin=1e-3, vmax=1.0)
    none = np.zeros(4, dtype=bool)
    assert swatch not in viewer.structure_html(cell, values, vmin=1e-3, vmax=1.0,
                                               undetermined=none)
    one = none.copy()
    one[1] = True
    assert swatch in viewer.structure_html(cell, values, vmin=1e-3, vmax=1.0, undetermined=one)
    with_nan = values.copy()
    with_nan[0] = np.nan
    assert swatch in viewer.structure_html(cell, with_nan, vmin=1e-3, vmax=1.0)
