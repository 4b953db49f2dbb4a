"""Where 3Dmol.js comes from: local file, user cache, verified npm fetch, CDN with a message."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import stat
import tarfile

import numpy as np
import pytest
from ase.build import bulk

from lprviz import threedmol, viewer
from lprviz.errors import InputError

PY3DMOL_CHECK = "if(typeof $3Dmolpromise === 'undefined')"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.delenv(threedmol.JS_ENV, raising=False)
    monkeypatch.setenv("LPRVIZ_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def cell():
    return bulk("Cu", "fcc", a=3.6, cubic=True)


def _html(cell, **kw) -> str:
    return viewer.structure_html(cell, np.ones(len(cell)), vmin=0.1, vmax=10.0, **kw)


def _fake_js(path, marker="LOCAL-3DMOL"):
    # big enough to count as a real copy in the user cache
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"window.$3Dmol={{marker:'{marker}'}};/*</script>*/" + " " * 120_000)
    return path


def test_cdn_fallback_shows_a_message_naming_the_fix(cell):
    assert threedmol.find_local() is None
    html = _html(cell)
    head = html.split(PY3DMOL_CHECK)[0]
    # our promise is defined before py3Dmol looks for it, so py3Dmol never loads on its own
    assert "var $3Dmolpromise = new Promise" in head
    assert threedmol.CDN_URL in head
    assert 'id="lprviz-3dmol-missing" style="display:none' in head
    assert threedmol.FIX_COMMAND in head and "s.onerror=missing" in head


def test_env_file_is_inlined_and_cannot_close_its_tag(cell, tmp_path, monkeypatch):
    js = _fake_js(tmp_path / "mine.js")
    monkeypatch.setenv(threedmol.JS_ENV, str(js))
    html = _html(cell)
    i_local = html.index("LOCAL-3DMOL")
    i_promise = html.index("var $3Dmolpromise = Promise.resolve();")
    assert i_local < i_promise < html.index(PY3DMOL_CHECK)
    assert "/*<\\/script>*/" in html
    assert threedmol.CDN_URL not in html.split(PY3DMOL_CHECK)[0]

    monkeypatch.setenv(threedmol.JS_ENV, str(tmp_path / "missing.js"))
    with pytest.raises(InputError, match="LPRVIZ_3DMOL_JS"):
        _html(cell)


def test_user_cache_copy_is_found(cell):
    path = _fake_js(threedmol.cached_path(), marker="CACHED-3DMOL")
    assert threedmol.find_local() == path
    assert "CACHED-3DMOL" in _html(cell)
    assert threedmol.ensure(allow_fetch=False) == (path, None)
    path.write_text("truncated")  # a broken copy is not used
    assert threedmol.find_local() is None


def test_published_copy_is_referenced_not_inlined(cell, tmp_path):
    js = _fake_js(tmp_path / "src.js")
    url = threedmol.publish(js, tmp_path / "static")
    assert url == "/app/static/3Dmol-min.js"
    assert (tmp_path / "static" / "3Dmol-min.js").read_bytes() == js.read_bytes()
    html = _html(cell, script_url=url)
    head = html.split(PY3DMOL_CHECK)[0]
    assert "LOCAL-3DMOL" not in html and threedmol.CDN_URL not in head
    assert 's.src="/app/static/3Dmol-min.js"' in head
    assert "lprviz-3dmol-missing" in head  # a broken static route also says so
    js.write_text("changed")
    threedmol.publish(js, tmp_path / "static")
    assert (tmp_path / "static" / "3Dmol-min.js").read_text() == "changed"
    assert not list((tmp_path / "static").glob("*.part"))
    odd = _html(cell, script_url='/x"></script><script>alert(1)</script>')
    assert "<script>alert(1)" not in odd


def _tarball(code: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("package/build/3Dmol-min.js")
        info.size = len(code)
        tar.addfile(info, io.BytesIO(code))
    return buf.getvalue()


def _fake_npm(tmp_path, monkeypatch, tgz: bytes):
    """An ``npm`` on PATH whose ``pack`` writes ``tgz`` (no network)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (tmp_path / "payload.tgz").write_bytes(tgz)
    npm = bindir / "npm"
    npm.write_text(f'#!/bin/sh\ncp "{tmp_path / "payload.tgz"}" "$PWD/3dmol-9.9.9.tgz"\n'
                   'echo "[{}]"\n')
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")


def test_fetch_checks_the_pinned_integrity(tmp_path, monkeypatch):
    code = b"window.$3Dmol={};" + b" " * 150_000
    tgz = _tarball(code)
    _fake_npm(tmp_path, monkeypatch, tgz)
    with pytest.raises(InputError, match="integrity"):
        threedmol.fetch()  # the pinned version's hash: the fake tarball is not it
    assert not threedmol.cached_path().exists()
    good = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
    path = threedmol.fetch(version="9.9.9", integrity=good)
    assert path.read_bytes() == code
    assert not list(path.parent.glob("*.part"))
    assert threedmol.fetch(version="9.9.9", integrity="sha512-x") == path  # present: no fetch


def test_ensure_without_npm_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm anywhere
    path, problem = threedmol.ensure()
    assert path is None
    assert "npm" in problem and threedmol.FIX_COMMAND in problem and "\n" not in problem


@pytest.mark.slow
def test_real_npm_package_matches_the_pinned_integrity(tmp_path):
    if shutil.which("npm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("npm is missing under CI=true (needed for the offline 3D viewer)")
        pytest.skip("npm not installed (the user-facing fallback message covers this)")
    path = threedmol.fetch(tmp_path / "js")
    text = path.read_text(encoding="utf-8", errors="replace")
    assert path.stat().st_size > 300_000 and "$3Dmol" in text
