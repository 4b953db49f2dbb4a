"""3D structures with per-atom colours (py3Dmol) and the matching colour bar.

:func:`structure_html` turns an ``ase.Atoms`` and one value per atom into a self-contained HTML
snippet: a 3Dmol.js viewer whose atoms are coloured by :func:`lprviz.plots.map_colors`, a hover
label per atom, the unit cell of periodic structures, and a colour bar drawn with the same
mapping. No science here: values come in, HTML goes out.

Where 3Dmol.js itself comes from (a served copy, an inlined local copy, or the CDN with a
visible message when it fails) is :mod:`lprviz.threedmol`'s business.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import py3Dmol

from lprviz import threedmol
from lprviz.plots import LPR_COLORMAP, colorbar_html, escape, format_number, map_colors

_HIGHLIGHT_COLOR = "#ff00ff"


def _js(value: object) -> str:
    """JSON for embedding inside ``<script>``: no ``</script>`` or HTML comment can appear."""
    text = json.dumps(value)
    return (
        text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    )


def _call(view: py3Dmol.view, name: str, *args: object) -> None:
    """Append ``viewer.name(args...)`` with our safe JSON encoding of the arguments."""
    parts = [_js(a) for a in args]
    # py3Dmol's own command builder json.dumps strings without escaping "</script>";
    # append the call ourselves so every user string goes through _js.
    view.startjs += f"\tviewer_UNIQUEID.{name}({','.join(parts)});\n"


def _xyz(symbols: Sequence[str], positions: np.ndarray) -> str:
    lines = [str(len(symbols)), "lprviz"]
    lines += [f"{s} {x:.6f} {y:.6f} {z:.6f}" for s, (x, y, z) in zip(symbols, positions,
                                                                        strict=True)]
    return "\n".join(lines) + "\n"


def _cell_edges(cell: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    a, b, c = np.asarray(cell, dtype=float)
    corners = {(i, j, k): i * a + j * b + k * c for i in (0, 1) for j in (0, 1) for k in (0, 1)}
    edges = []
    for (i, j, k), p in corners.items():
        for d in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
            q = (i + d[0], j + d[1], k + d[2])
            if q in corners:
                edges.append((p, corners[q]))
    return edges


def _fmt_value(v: object) -> str:
    if isinstance(v, (float, np.floating)):
        return "n/a" if np.isnan(v) else format_number(v)  # the app's one number format
    return str(v)


def atom_labels(
    symbols: Sequence[str], atom_info: Mapping[str, Sequence[object]] | None = None
) -> list[str]:
    """One hover label per atom: ``"#i Si | LPR 0.12 | ..."`` (plain text, unescaped)."""
    labels = []
    for i, s in enumerate(symbols):
        parts = [f"#{i} {s}"]
        for key, vals in (atom_info or {}).items():
            parts.append(f"{key} {_fmt_value(vals[i])}")
        labels.append(" | ".join(parts))
    return labels


def structure_html(
    atoms,
    values: np.ndarray,
    *,
    vmin: float,
    vmax: float,
    log: bool = True,
    colormap: str = LPR_COLORMAP,
    atom_info: Mapping[str, Sequence[object]] | None = None,
    highlight: Sequence[int] | np.ndarray | None = None,
    style: str = "sphere",
    show_cell: bool = True,
    undetermined: np.ndarray | None = None,
    title: str | None = None,
    colorbar_label: str = "LPR",
    width: int | str = 640,
    height: int | str = 420,
    script_url: str | None = None,
) -> str:
    """Self-contained HTML of a 3D structure with atoms coloured by ``values``.

    Parameters
    ----------
    atoms : ase.Atoms
        The structure (n atoms).
    values : numpy.ndarray of shape (n,)
        Per-atom value to colour by (LPR, local prediction, ratio, ...).
    vmin, vmax : float
        Colour range; keep it fixed across structures so colours compare.
    log : bool
        Logarithmic colour axis (default).
    colormap : str
        Plotly colour-scale name (sequential for LPR, diverging such as ``"RdBu"`` for ratios).
    atom_info : mapping of str to sequence of length n, optional
        Extra hover fields per atom, e.g. ``{"LPR": lpr, "local energy (eV)": e,
        "coordination": c}``. The species and atom index are always shown.
    highlight : sequence of int, optional
        Atom indices drawn larger with a magenta halo (e.g. atoms picked in a plot).
    style : {"sphere", "stick"}
    show_cell : bool
        Draw the unit cell when the structure is periodic.
    undetermined : numpy.ndarray of bool, shape (n,), optional
        Atoms drawn grey: their value is not determined by the data.
    title : str, optional
        Caption above the viewer (escaped).
    colorbar_label : str
        Colour bar caption (escaped).
    width, height : int or str
        Viewer size in pixels (or a CSS length such as ``"100%"``).
    script_url : str, optional
        URL of a 3Dmol.js the browser can fetch and cache (the app serves its local copy,
        see :func:`lprviz.threedmol.publish`); default: inline the local copy
        (:func:`lprviz.threedmol.find_local`), else the CDN with a visible message if it fails.

    Returns
    -------
    str
        HTML with the viewer (a ``<div>`` + ``<script>``) followed by the colour bar.
    """
    if style not in ("sphere", "stick"):
        raise ValueError(f"style: expected 'sphere' or 'stick', got {style!r}")
    n = len(atoms)
    values = np.asarray(values, dtype=float).reshape(-1)
    if values.shape != (n,):
        raise ValueError(f"values: expected shape ({n},), got {values.shape}")
    if undetermined is not None and np.shape(undetermined) != (n,):
        raise ValueError(f"undetermined: expected shape ({n},), got {np.shape(undetermined)}")
    colors = map_colors(values, vmin=vmin, vmax=vmax, log=log, colormap=colormap,
                        undetermined=undetermined)
    symbols = atoms.get_chemical_symbols()
    positions = atoms.get_positions()

    view = py3Dmol.view(width=width, height=height)
    _call(view, "addModel", _xyz(symbols, positions), "xyz")
    by_color: dict[str, list[int]] = {}
    for i, c in enumerate(colors):
        by_color.setdefault(c, []).append(i)
    for c, idx in by_color.items():
        if style == "sphere":
            spec = {"sphere": {"color": c, "scale": 0.35}}
        else:
            spec = {"stick": {"color": c, "radius": 0.15}, "sphere": {"color": c, "scale": 0.22}}
        _call(view, "setStyle", {"index": idx}, spec)

    if highlight is not None and len(highlight):
        hl = [int(i) for i in np.asarray(highlight).reshape(-1) if 0 <= int(i) < n]
        for i in hl:
            x, y, z = (float(v) for v in positions[i])
            _call(view, "addSphere", {"center": {"x": x, "y": y, "z": z}, "radius": 1.0,
                                      "color": _HIGHLIGHT_COLOR, "opacity": 0.45})

    if show_cell and bool(np.any(atoms.pbc)) and atoms.cell.rank == 3:
        for p, q in _cell_edges(atoms.cell[:]):
            _call(view, "addCylinder", {
                "start": dict(zip("xyz", map(float, p), strict=True)),
                "end": dict(zip("xyz", map(float, q), strict=True)),
                "radius": 0.05, "color": "#555555", "fromCap": 1, "toCap": 1})

    labels = atom_labels(symbols, atom_info)
    # The labels array lives in a closure (created once when 3Dmol evals the string).
    hover = (
        "(function(){var L=" + json.dumps(labels) + ";"
        "return function(atom,viewer){if(!atom.label){atom.label=viewer.addLabel(L[atom.index],"
        "{position:atom,backgroundColor:'black',fontColor:'white',fontSize:12,"
        "backgroundOpacity:0.8});}};})()"
    )
    unhover = "function(atom,viewer){if(atom.label){viewer.removeLabel(atom.label);" \
              "delete atom.label;}}"
    _call(view, "setHoverable", {}, True, hover, unhover)
    # A slightly oblique view reads as 3D; straight down an axis atoms hide each other.
    _call(view, "rotate", -20, {"x": 1, "y": 0, "z": 0})
    _call(view, "rotate", 25, {"x": 0, "y": 1, "z": 0})
    _call(view, "zoomTo")

    if script_url is not None:
        head = threedmol.script_prelude(url=script_url)
    else:
        local = threedmol.find_local()
        head = threedmol.script_prelude(inline=local) if local else threedmol.script_prelude()
    caption = (
        f'<div style="font:13px sans-serif;margin:2px 0;">{escape(title)}</div>' if title else ""
    )
    # the grey swatch only when some atom here is grey (flagged, or a non-finite value)
    grey = not np.all(np.isfinite(values)) or (log and bool(np.any(values <= 0))) or (
        undetermined is not None and bool(np.any(undetermined)))
    bar = colorbar_html(vmin=vmin, vmax=vmax, log=log, colormap=colormap,
                        label=colorbar_label, width=width, show_undetermined=grey)
    return head + caption + view.write_html() + bar
