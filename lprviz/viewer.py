"""3D structures with per-atom colours (py3Dmol) and the matching colour bar.

:func:`structure_html` turns an ``ase.Atoms`` and one value per atom into a self-contained HTML
snippet: a 3Dmol.js viewer whose atoms are coloured by :func:`lprviz.plots.map_colors`, a hover
label per atom, the unit cell of periodic structures, and a colour bar drawn with the same
mapping. No science here: values come in, HTML goes out.

3Dmol.js is loaded from a CDN by py3Dmol unless the environment variable ``LPRVIZ_3DMOL_JS``
names a local ``3Dmol-min.js``; then the file is inlined and the global ``$3Dmolpromise`` that
py3Dmol's HTML checks is defined first, so nothing is fetched (the app works offline).
``python -m lprviz.viewer fetch-3dmol --dest DIR`` obtains that file from the npm package.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import py3Dmol

from lprviz.errors import InputError
from lprviz.plots import LPR_COLORMAP, colorbar_html, escape, format_number, map_colors

#: The npm package version of 3Dmol.js fetched for offline use (py3Dmol's CDN default).
THREEDMOL_VERSION = "2.5.5"
#: Environment variable naming a local 3Dmol-min.js.
JS_ENV = "LPRVIZ_3DMOL_JS"

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


def local_js_prelude() -> str:
    """``<script>`` tags that inline the local 3Dmol.js named by ``LPRVIZ_3DMOL_JS`` ('' if unset).

    Raises
    ------
    InputError
        The variable is set but the file does not exist.
    """
    path = os.environ.get(JS_ENV, "").strip()
    if not path:
        return ""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{JS_ENV}={path}: expected an existing 3Dmol-min.js file")
    code = p.read_text(encoding="utf-8", errors="replace").replace("</script", "<\\/script")
    # py3Dmol only loads from its CDN when $3Dmolpromise is undefined.
    return (
        f"<script>{code}</script>\n"
        "<script>var $3Dmolpromise = Promise.resolve();</script>\n"
    )


def script_url_prelude(url: str) -> str:
    """``<script>`` tags that load 3Dmol.js from ``url`` and stop py3Dmol's CDN load."""
    return (
        f'<script src="{escape(url)}"></script>\n'
        "<script>var $3Dmolpromise = Promise.resolve();</script>\n"
    )


def publish_3dmol(static_dir: str | Path, *, route: str = "/app/static") -> str | None:
    """Copy the local 3Dmol.js (``LPRVIZ_3DMOL_JS``) into a Streamlit static folder.

    Inlining 0.5 MB of JavaScript into every viewer costs each rerun of each session that
    much traffic and parsing; served as a static file, browsers fetch it once and cache it.

    Parameters
    ----------
    static_dir : str or pathlib.Path
        The app's ``static/`` folder (Streamlit serves it at ``/app/static`` when
        ``server.enableStaticServing`` is on).
    route : str
        URL path of that folder.

    Returns
    -------
    str or None
        The script's URL, or None when no local 3Dmol.js is configured.
    """
    path = os.environ.get(JS_ENV, "").strip()
    if not path or not Path(path).is_file():
        return None
    source = Path(path)
    target = Path(static_dir) / "3Dmol-min.js"
    if not target.is_file() or target.read_bytes() != source.read_bytes():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    return f"{route}/3Dmol-min.js"


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
        see :func:`publish_3dmol`); default: inline ``LPRVIZ_3DMOL_JS`` if set, else
        py3Dmol's CDN.

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

    head = script_url_prelude(script_url) if script_url else local_js_prelude()
    caption = (
        f'<div style="font:13px sans-serif;margin:2px 0;">{escape(title)}</div>' if title else ""
    )
    # the grey swatch only when some atom here is grey (flagged, or a non-finite value)
    grey = not np.all(np.isfinite(values)) or (log and bool(np.any(values <= 0))) or (
        undetermined is not None and bool(np.any(undetermined)))
    bar = colorbar_html(vmin=vmin, vmax=vmax, log=log, colormap=colormap,
                        label=colorbar_label, width=width, show_undetermined=grey)
    return head + caption + view.write_html() + bar


# --------------------------------------------------------------------------- fetch 3Dmol.js


def fetch_3dmol(dest: str | Path, *, version: str = THREEDMOL_VERSION) -> Path:
    """Get ``3Dmol-min.js`` from the npm registry package ``3dmol`` into ``dest``.

    Runs ``npm pack 3dmol@<version>`` in a temporary directory and extracts
    ``package/build/3Dmol-min.js``. Does nothing if the file is already there.

    Returns
    -------
    pathlib.Path
        Path of the JavaScript file.
    """
    dest = Path(dest)
    target = dest / "3Dmol-min.js"
    if target.is_file() and target.stat().st_size > 100_000:
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise InputError("npm: not found; install Node.js/npm to fetch 3Dmol.js")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [npm, "pack", f"3dmol@{version}", "--silent"], cwd=tmp, capture_output=True,
            text=True, check=False,
        )
        tgz = sorted(Path(tmp).glob("3dmol-*.tgz"))
        if proc.returncode != 0 or not tgz:
            raise InputError(f"npm pack 3dmol@{version}: failed ({proc.stderr.strip()[:200]})")
        with tarfile.open(tgz[0]) as tar:
            member = tar.getmember("package/build/3Dmol-min.js")
            src = tar.extractfile(member)
            if src is None:
                raise InputError(f"3dmol@{version}: package/build/3Dmol-min.js missing")
            tmp_target = target.with_suffix(".js.part")
            tmp_target.write_bytes(src.read())
            tmp_target.replace(target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lprviz.viewer fetch-3dmol --dest DIR``."""
    parser = argparse.ArgumentParser(prog="python -m lprviz.viewer")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch-3dmol", help="get 3Dmol-min.js from the npm package 3dmol")
    p.add_argument("--dest", required=True, help="directory for 3Dmol-min.js")
    p.add_argument("--version", default=THREEDMOL_VERSION)
    args = parser.parse_args(argv)
    try:
        path = fetch_3dmol(args.dest, version=args.version)
    except InputError as exc:
        print(f"lprviz.viewer: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
