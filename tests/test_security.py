"""Security rules of issue 6, one test per rule.

* no pickle / eval / exec / ``allow_pickle=True`` / ``shell=True`` in ``lprviz/`` (AST scan);
* uploaded file names never become paths (content-hash names in the upload dir);
* ``.streamlit/config.toml``: upload size limit, XSRF protection on, no error details;
* user text is escaped where it reaches HTML (3D viewer, plotly hover text, colour bar);
* downloads only over https (http only to loopback).
"""

from __future__ import annotations

import ast
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tomllib
from ase.build import bulk

from lprviz.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "lprviz").rglob("*.py")) + [ROOT / "app.py"]
XSS = "<img src=x onerror=alert(1)>"
SCRIPT = "</script><script>alert(1)</script>"

FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            out += [f"{where} import {a.name}" for a in node.names
                    if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in \
                FORBIDDEN_MODULES:
            out.append(f"{where} from {node.module} import")
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) \
                else ""
            if isinstance(f, ast.Name) and name in FORBIDDEN_CALLS:
                out.append(f"{where} {name}(...)")
            if name in ("load", "safe_load") and isinstance(f, ast.Attribute) and \
                    isinstance(f.value, ast.Name) and f.value.id == "yaml" and name == "load":
                out.append(f"{where} yaml.load")
            for kw in node.keywords:
                if kw.arg in ("allow_pickle", "shell") and not (
                        isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    out.append(f"{where} {kw.arg}={ast.unparse(kw.value)}")
            # np.load / numpy.load must say allow_pickle=False explicitly
            if name == "load" and isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                    and f.value.id in ("np", "numpy") and not any(
                        kw.arg == "allow_pickle" for kw in node.keywords):
                out.append(f"{where} np.load without allow_pickle=False")
            if name in ("read_pickle", "from_pickle", "load_pickle"):
                out.append(f"{where} {name}(...)")
    return out


def test_static_scan_finds_the_forbidden_constructs(tmp_path):
    """The scanner itself catches each construct (so an empty result means something)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nfrom dill import loads\nimport numpy as np\n"
                   "eval('1')\nexec('x=1')\nnp.load('f', allow_pickle=True)\nnp.load('g')\n"
                   "import subprocess\nsubprocess.run('ls', shell=True)\n")
    global ROOT
    old, ROOT = ROOT, tmp_path
    try:
        found = _violations(bad)
    finally:
        ROOT = old
    assert len(found) == 7, found


def test_no_pickle_eval_exec_or_shell_in_lprviz():
    assert len(SOURCES) > 10
    found = [v for path in SOURCES for v in _violations(path)]
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------- uploads


@pytest.mark.parametrize("name", [
    "../../../../etc/passwd.xyz", "/etc/cron.d/evil.extxyz", "..\\..\\win.ini.xyz",
    "a/b/c.json", "nul\x00byte.xyz", "CON.xyz", ".hidden.XYZ", f"{XSS}.xyz", "x" * 300 + ".xyz",
])
def test_upload_names_never_become_paths(name, tmp_path, monkeypatch):
    from lprviz.app import uploads

    monkeypatch.setattr(uploads, "UPLOAD_DIR", tmp_path / "uploads")
    data = b"1\n\nCu 0 0 0\n"
    path = Path(uploads.save_upload(name, data, session="s1"))
    assert path.parent == tmp_path / "uploads" / "s1"
    stem = path.name.split(".")[0]
    assert re.fullmatch(r"[0-9a-f]{16}", stem), path.name  # content hash, not the user's name
    assert path.suffix in (".xyz", ".extxyz", ".json")
    assert path.read_bytes() == data
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [path.name]


@pytest.mark.parametrize("name", ["evil.py", "x.pkl", "a.npy", "b.xyz.gz", "noext", "t.html"])
def test_upload_of_other_types_is_refused(name, tmp_path, monkeypatch):
    from lprviz.app import uploads

    monkeypatch.setattr(uploads, "UPLOAD_DIR", tmp_path / "uploads")
    with pytest.raises(InputError) as info:
        uploads.save_upload(name, b"data")
    assert "\n" not in str(info.value)
    assert not any((tmp_path / "uploads").glob("*")) if (tmp_path / "uploads").exists() else True


# --------------------------------------------------------------------------- server config


def test_streamlit_config_limits_uploads_and_keeps_xsrf():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    server = config["server"]
    assert 0 < server["maxUploadSize"] <= 200  # MB
    assert server.get("enableXsrfProtection", True) is True
    assert server.get("enableCORS", True) is True
    assert config["client"]["showErrorDetails"] in (False, "none")


# --------------------------------------------------------------------------- HTML escaping


def _atoms():
    return bulk("Cu", "fcc", a=3.6, cubic=True)


def test_viewer_html_escapes_user_text():
    from lprviz.viewer import structure_html

    atoms = _atoms()
    n = len(atoms)
    html = structure_html(
        atoms, np.linspace(0.1, 1, n), vmin=0.1, vmax=1.0,
        atom_info={"name": [XSS] * n, "group": [SCRIPT] * n, "LPR": np.ones(n)},
        title=XSS, colorbar_label=SCRIPT,
    )
    assert XSS not in html and "<img" not in html
    assert html.count("</script>") == html.count("<script")  # nothing closes a script early
    assert "alert(1)</script>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html  # the title shows as text


def test_plot_hover_text_is_escaped():
    from lprviz import plots

    n = 4
    figs = [
        plots.environment_map_figure(np.random.default_rng(0).normal(size=(n, 2)),
                                     np.linspace(0.1, 1, n), vmin=0.1, vmax=1.0,
                                     hover=[XSS] * n, label=XSS),
        plots.parity_figure(np.arange(n, dtype=float), np.arange(n, dtype=float),
                            is_train=np.array([True, True, False, False]),
                            groups=[XSS] * n, names=[XSS] * n),
        plots.lpr_distribution_figure(np.linspace(0.1, 1, n), [XSS] * n, title=XSS, label=XSS),
    ]
    for fig in figs:
        text = fig.to_json()
        assert XSS not in text, "raw user HTML reached a plotly figure"
        assert "&lt;img" in text


# --------------------------------------------------------------------------- downloads


@pytest.mark.parametrize("url", [
    "http://example.com/", "ftp://example.com/", "file:///etc/", "data:text/plain,x",
    "http://127.0.0.1.evil.com/", "http://localhost@evil.com/", "javascript:alert(1)//",
    "gopher://127.0.0.1/",
])
def test_fetch_refuses_insecure_urls(url, tmp_path, monkeypatch):
    from lprviz import datasets

    monkeypatch.setenv("LPRVIZ_CACHE_DIR", str(tmp_path))
    with pytest.raises(InputError) as info:
        datasets.fetch("mlearn-Si", base_url=url, dest=tmp_path / "d", timeout=2)
    assert "allowed" in str(info.value) or "https" in str(info.value)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_pinned_download_is_https_with_checksums():
    from lprviz import datasets

    for spec in datasets.registry._FETCHABLE.values():
        assert spec.base_url.startswith("https://")
        for f in spec.files:
            assert re.fullmatch(r"[0-9a-f]{64}", f.sha256) and f.size > 0


def test_uploads_are_private_and_bounded(monkeypatch):
    from lprviz.app import uploads

    monkeypatch.setattr(uploads, "UPLOAD_DIR", None)  # first use makes a fresh private dir
    monkeypatch.setattr(uploads, "UPLOADS_PER_SESSION", 3)
    paths = [Path(uploads.save_upload(f"f{i}.xyz", f"1\n\nCu 0 0 {i}\n".encode(), session="s"))
             for i in range(5)]
    folder = paths[0].parent
    try:
        for d in (folder, folder.parent):
            assert d.stat().st_mode & 0o077 == 0  # not readable by other users
        assert folder.parent != Path(tempfile.gettempdir()) / "lprviz-uploads"  # not predictable
        assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths[-3:])
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


def test_user_text_in_error_messages_is_inert_markdown():
    from lprviz.app.common import plain_text

    out = plain_text("x.xyz: frame 1 [click](javascript:alert(1)) <img src=x> $x$\nsecond")
    assert "\n" not in out
    for token in ("[", "]", "(", ")", "<", ">", "$"):
        assert out.count(token) == out.count("\\" + token)  # every one escaped
