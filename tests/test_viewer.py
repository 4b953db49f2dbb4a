"""Viewer: per-atom colours, grey undetermined atoms, escaping, local 3Dmol.js."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from lprviz import plots, viewer
from lprviz.errors import InputError


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


def test_atom_colours_follow_the_shared_mapping(cell, monkeypatch):
    monkeypatch.delenv(viewer.JS_ENV, raising=False)
    values = np.array([1e-3, 1e-2, 1e-1, 1.0])
    und = np.array([False, False, True, False])
    html = viewer.structure_html(cell, values, vmin=1e-3, vmax=1.0, undetermined=und)
    styles = _styles(html)
    assert sorted(styles) == [0, 1, 2, 3]
    expected = plots.map_colors(values, vmin=1e-3, vmax=1.0, undetermined=und)
    assert [styles[i] for i in range(4)] == expected
    assert styles[2] == plots.UNDETERMINED_COLOR
    assert len({styles[0], styles[1], styles[3]}) == 3


def test_colour_bar_in_html_matches_atoms(cell, monkeypatch):
    monkeypatch.delenv(viewer.JS_ENV, raising=False)
    html = viewer.structure_html(cell, np.array([1e-4, 1e-2, 1e-1, 1e2]), vmin=1e-4, vmax=1e2)
    stops = dict(re.findall(r"(#[0-9a-f]{6}) ([0-9.]+)%", html))
    styles = _styles(html)
    # atoms at the axis ends and middle sit exactly on gradient stops 0%, 50%, 100%
    assert stops[styles[0]] == "0.0000"
    assert stops[styles[2]] == "50.0000"
    assert stops[styles[3]] == "100.0000"


def test_unit_cell_only_for_periodic(cell, monkeypatch):
    monkeypatch.delenv(viewer.JS_ENV, raising=False)
    html = viewer.structure_html(cell, np.ones(4), vmin=0.1, vmax=10.0)
    assert html.count("addCylinder") == 12
    molecule = Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.1]])
    html = viewer.structure_html(molecule, np.ones(2), vmin=0.1, vmax=10.0)
    assert "addCylinder" not in html


def test_user_text_is_escaped(cell, monkeypatch):
    monkeypatch.delenv(viewer.JS_ENV, raising=False)
    evil = "</script><script>alert('x')</script>"
    html = viewer.structure_html(cell, np.ones(4), vmin=0.1, vmax=10.0, title=evil,
                                 colorbar_label=evil, atom_info={evil: [evil] * 4})
    assert "alert('x')</script>" not in html
    assert html.count("<script>") == html.count("</script>")
    # the hover labels still carry the text (inside a JSON string, with < escaped)
    assert "\\u003c/script\\u003e" in html


def test_hover_labels_name_species_and_fields(cell, monkeypatch):
    monkeypatch.delenv(viewer.JS_ENV, raising=False)
    info = {"LPR": np.array([0.5, 2.0, np.nan, 1.0]), "coordination": [12] * 4}
    labels = viewer.atom_labels(cell.get_chemical_symbols(), info)
    assert labels[1] == "#1 Au | LPR 2 | coordination 12"
    assert "LPR n/a" in labels[2]
    small = viewer.atom_labels(["Si"], {"LPR": np.array([4.773e-7])})
    assert small == ["#0 Si | LPR 4.77e-7"]  # plots.format_number, as in tables and axes
    html = viewer.structure_html(cell, np.ones(4), vmin=0.1, vmax=10.0,
                                 atom_info={"LPR": np.ones(4)})
    assert "setHoverable" in html


def test_highlight_draws_halo(cell, monkeypatch):
    monkeypatch.delenv(viewer.JS_ENV, raising=False)
    html = viewer.structure_html(cell, np.ones(4), vmin=0.1, vmax=10.0, highlight=[0, 2])
    assert html.count("addSphere") == 2


def test_bad_inputs_raise(cell):
    with pytest.raises(ValueError, match="values"):
        viewer.structure_html(cell, np.ones(3), vmin=0.1, vmax=1.0)
    with pytest.raises(ValueError, match="style"):
        viewer.structure_html(cell, np.ones(4), vmin=0.1, vmax=1.0, style="cartoon")


def test_cdn_by_default_local_js_inlined_when_env_set(cell, tmp_path, monkeypatch):
    monkeypatch.delenv(viewer.JS_ENV, raising=False)
    html = viewer.structure_html(cell, np.ones(4), vmin=0.1, vmax=10.0)
    assert "cdn.jsdelivr.net" in html and "$3Dmolpromise = Promise.resolve()" not in html

    js = tmp_path / "3Dmol-min.js"
    js.write_text("window.$3Dmol={marker:'LOCAL-3DMOL'};/*</script>*/")
    monkeypatch.setenv(viewer.JS_ENV, str(js))
    html = viewer.structure_html(cell, np.ones(4), vmin=0.1, vmax=10.0)
    i_local = html.index("LOCAL-3DMOL")
    i_promise = html.index("var $3Dmolpromise = Promise.resolve();")
    i_check = html.index("if(typeof $3Dmolpromise === 'undefined')")
    assert i_local < i_promise < i_check  # defined before py3Dmol's loader looks for it
    assert "/*<\\/script>*/" in html  # the inlined code cannot close its script tag

    monkeypatch.setenv(viewer.JS_ENV, str(tmp_path / "missing.js"))
    with pytest.raises(InputError, match="LPRVIZ_3DMOL_JS"):
        viewer.structure_html(cell, np.ones(4), vmin=0.1, vmax=10.0)


def test_published_script_is_referenced_not_inlined(cell, tmp_path, monkeypatch):
    js = tmp_path / "3Dmol-min.js"
    js.write_text("window.$3Dmol={marker:'LOCAL-3DMOL'};")
    monkeypatch.delenv(viewer.JS_ENV, raising=False)
    assert viewer.publish_3dmol(tmp_path / "static") is None  # nothing to publish
    monkeypatch.setenv(viewer.JS_ENV, str(js))
    url = viewer.publish_3dmol(tmp_path / "static")
    assert url == "/app/static/3Dmol-min.js"
    assert (tmp_path / "static" / "3Dmol-min.js").read_bytes() == js.read_bytes()
    html = viewer.structure_html(cell, np.ones(4), vmin=0.1, vmax=10.0, script_url=url)
    assert "LOCAL-3DMOL" not in html and "cdn.jsdelivr.net/npm/3dmol" not in html.split(
        "if(typeof $3Dmolpromise === 'undefined')")[0]
    i_src = html.index('<script src="/app/static/3Dmol-min.js"></script>')
    assert i_src < html.index("var $3Dmolpromise = Promise.resolve();")
    js.write_text("changed")  # a new local file replaces the published copy
    viewer.publish_3dmol(tmp_path / "static")
    assert (tmp_path / "static" / "3Dmol-min.js").read_text() == "changed"
    odd = viewer.structure_html(cell, np.ones(4), vmin=0.1, vmax=10.0,
                                script_url='/x"><script>alert(1)</script>')
    assert "<script>alert(1)" not in odd


def test_fetch_3dmol_is_a_noop_when_present(tmp_path):
    target = tmp_path / "3Dmol-min.js"
    target.write_bytes(b"x" * 200_000)
    assert viewer.fetch_3dmol(tmp_path) == target
    assert viewer.main(["fetch-3dmol", "--dest", str(tmp_path)]) == 0


def test_undetermined_swatch_only_when_an_atom_is_grey(cell, monkeypatch):
    monkeypatch.delenv(viewer.JS_ENV, raising=False)
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
