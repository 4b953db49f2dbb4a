"""Where the browser gets 3Dmol.js (the JavaScript behind the 3D viewer) from.

py3Dmol's HTML loads 3Dmol.js from a CDN. A machine that reaches only package registries
(a classroom behind a proxy, a locked-down cluster) then shows an empty box. So lprviz keeps
its own copy, in this order:

1. ``$LPRVIZ_3DMOL_JS``: a ``3Dmol-min.js`` the user points to (it must exist);
2. the user cache: ``<lprviz cache>/3dmol/<version>/3Dmol-min.js``, filled once by
   :func:`fetch` from the npm package ``3dmol`` (``npm pack``; the tarball's SHA-512 must
   equal :data:`INTEGRITY`, the npm registry's integrity string of that version, pinned
   here);
3. none: the viewer falls back to the CDN, and if that fails the page says so in place of the
   viewer, naming the one command that fixes it (:data:`FIX_COMMAND`).

The app serves the local copy as a static file (:func:`publish`: browsers fetch it once and
cache it); :func:`script_prelude` writes the ``<script>`` tags for each case. py3Dmol only
loads from its CDN when the global ``$3Dmolpromise`` is undefined, so every prelude defines
it first.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from lprviz.errors import InputError

__all__ = [
    "FIX_COMMAND",
    "INTEGRITY",
    "JS_ENV",
    "VERSION",
    "cached_path",
    "ensure",
    "fetch",
    "find_local",
    "publish",
    "script_prelude",
]

#: Version of the npm package ``3dmol`` (the one py3Dmol's CDN URL names).
VERSION = "2.5.5"
#: npm registry integrity (SRI) string of ``3dmol-<VERSION>.tgz``; the download must match.
INTEGRITY = (
    "sha512-kqNHouGqq3YfW58174tdERvm0XYTmP0tavQKOqIw1ouc2OJ7epkXEFrtEkVXV0clBZT2Ze2xHRC/qxX0u0qCdw=="
)
#: Environment variable naming a local ``3Dmol-min.js``.
JS_ENV = "LPRVIZ_3DMOL_JS"
#: What a user runs to get a local copy (shown when the viewer cannot load 3Dmol.js).
FIX_COMMAND = "lprviz fetch-3dmol"
#: The CDN py3Dmol itself uses (the last resort).
CDN_URL = f"https://cdn.jsdelivr.net/npm/3dmol@{VERSION}/build/3Dmol-min.js"
_MEMBER = "package/build/3Dmol-min.js"
_MIN_BYTES = 100_000  # a real 3Dmol-min.js is ~0.5 MB; anything much smaller is broken


def cached_path(version: str = VERSION) -> Path:
    """Path of the user-cache copy of ``3Dmol-min.js`` (it may not exist yet)."""
    from lprviz.datasets import cache_dir

    return cache_dir() / "3dmol" / version / "3Dmol-min.js"


def find_local() -> Path | None:
    """The local ``3Dmol-min.js`` to use: ``$LPRVIZ_3DMOL_JS``, else the user cache, else None.

    Raises
    ------
    InputError
        ``$LPRVIZ_3DMOL_JS`` is set but names no file.
    """
    env = os.environ.get(JS_ENV, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise InputError(f"{JS_ENV}={env}: expected an existing 3Dmol-min.js file")
        return path
    path = cached_path()
    if path.is_file() and path.stat().st_size >= _MIN_BYTES:
        return path
    return None


def _sri_sha512(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def fetch(
    dest: str | Path | None = None,
    *,
    version: str = VERSION,
    integrity: str | None = None,
    timeout: float = 120.0,
) -> Path:
    """Get ``3Dmol-min.js`` from the npm package ``3dmol`` (``npm pack``), verified.

    Parameters
    ----------
    dest : str or pathlib.Path, optional
        Directory for the file (default: the user cache, where :func:`find_local` looks).
    version : str
        npm version of ``3dmol``.
    integrity : str, optional
        Expected SRI string of the tarball; default :data:`INTEGRITY` for :data:`VERSION`.
        For another version npm's own integrity check is the only one.
    timeout : float
        Seconds ``npm pack`` may take.

    Returns
    -------
    pathlib.Path
        The JavaScript file (already there: returned without fetching).

    Raises
    ------
    InputError
        npm is missing, the download failed, or the tarball does not match ``integrity``.
    """
    target = (Path(dest) if dest is not None else cached_path(version).parent) / "3Dmol-min.js"
    if target.is_file() and target.stat().st_size >= _MIN_BYTES:
        return target
    if integrity is None and version == VERSION:
        integrity = INTEGRITY
    npm = shutil.which("npm")
    if npm is None:
        raise InputError(f"npm: not found; install Node.js (npm) to fetch 3dmol@{version}, or "
                         f"set {JS_ENV} to a 3Dmol-min.js you have")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run(
                [npm, "pack", f"3dmol@{version}", "--json", "--silent"], cwd=tmp,
                capture_output=True, text=True, check=False, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise InputError(f"npm pack 3dmol@{version}: no answer in {timeout:g} s") from None
        tgz = sorted(Path(tmp).glob("3dmol-*.tgz"))
        if proc.returncode != 0 or not tgz:
            detail = (proc.stderr.strip().splitlines() or ["no tarball"])[-1][:200]
            raise InputError(f"npm pack 3dmol@{version}: failed ({detail})")
        data = tgz[0].read_bytes()
        got = _sri_sha512(data)
        if integrity is not None and got != integrity:
            raise InputError(f"3dmol@{version}: tarball integrity {got[:20]}... does not match "
                             f"the pinned {integrity[:20]}...; not used")
        if integrity is None:  # npm verified it against the registry; keep what it reported
            reported = json.loads(proc.stdout or "[{}]")[0].get("integrity")
            if reported is not None and reported != got:
                raise InputError(f"3dmol@{version}: tarball integrity does not match npm's")
        with tarfile.open(tgz[0]) as tar:
            try:
                src = tar.extractfile(tar.getmember(_MEMBER))
            except KeyError:
                src = None
            if src is None:
                raise InputError(f"3dmol@{version}: {_MEMBER} missing from the package")
            code = src.read()
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        part.write_bytes(code)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return target


def ensure(*, allow_fetch: bool = True) -> tuple[Path | None, str | None]:
    """The local 3Dmol.js, fetched into the user cache if there is none yet.

    Returns
    -------
    path : pathlib.Path or None
        The file to serve, or None (the viewer will try the CDN).
    problem : str or None
        One line saying why there is no local copy (None when there is one).
    """
    try:
        path = find_local()
        if path is None and allow_fetch:
            path = fetch()
    except (InputError, OSError) as exc:
        return None, f"{exc}; the viewer will try the CDN (fix: {FIX_COMMAND})"
    if path is None:
        return None, f"no local 3Dmol.js; the viewer will try the CDN (fix: {FIX_COMMAND})"
    return path, None


def publish(source: str | Path, static_dir: str | Path, *, route: str = "/app/static") -> str:
    """Copy ``source`` into a Streamlit static folder; return its URL.

    Inlining 0.5 MB of JavaScript into every viewer costs each rerun of each session that
    much traffic and parsing; served as a static file, browsers fetch it once and cache it.

    Parameters
    ----------
    source : str or pathlib.Path
        A ``3Dmol-min.js``.
    static_dir : str or pathlib.Path
        The app's ``static/`` folder (beside the main script; Streamlit serves it at
        ``/app/static`` when ``server.enableStaticServing`` is on).
    route : str
        URL path of that folder.
    """
    source = Path(source)
    target = Path(static_dir) / "3Dmol-min.js"
    if not target.is_file() or target.read_bytes() != source.read_bytes():
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            shutil.copyfile(source, part)
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
    return f"{route}/3Dmol-min.js"


def _missing_message(src: str) -> str:
    from html import escape

    return (
        f"The 3D viewer could not load 3Dmol.js from {escape(src)}. "
        f"Run <code>{FIX_COMMAND}</code> (needs npm) or set <code>{JS_ENV}</code> to a "
        "3Dmol-min.js file, then restart the app."
    )


def script_prelude(*, url: str | None = None, inline: str | Path | None = None,
                   timeout_ms: int = 15000) -> str:
    """``<script>`` tags that provide 3Dmol.js before py3Dmol's viewer code runs.

    Parameters
    ----------
    url : str, optional
        Load 3Dmol.js from this URL (the app's static copy); default: the CDN.
    inline : str or pathlib.Path, optional
        Inline this file instead (no server needed; 0.5 MB per viewer).
    timeout_ms : int
        When loading from a URL: if it fails, or has not answered in this many milliseconds,
        a message naming :data:`FIX_COMMAND` appears where the viewer would be.
    """
    if inline is not None:
        code = Path(inline).read_text(encoding="utf-8", errors="replace")
        code = code.replace("</script", "<\\/script")
        return f"<script>{code}</script>\n<script>var $3Dmolpromise = Promise.resolve();</script>\n"
    src = json.dumps(url or CDN_URL).replace("<", "\\u003c")
    message = _missing_message(url or CDN_URL)
    return (
        '<div id="lprviz-3dmol-missing" style="display:none;background:#fff3cd;color:#000;'
        f'padding:8px;font:13px sans-serif;border:1px solid #e0c36a;">{message}</div>'
        "<script>var $3Dmolpromise = new Promise(function(ok, fail){"
        "function missing(){var m=document.getElementById('lprviz-3dmol-missing');"
        "if(m){m.style.display='block';}fail(new Error('3Dmol.js unavailable'));}"
        "var s=document.createElement('script');s.src=" + src + ";"
        "s.onload=function(){if(typeof $3Dmol==='undefined'){missing();}else{ok();}};"
        "s.onerror=missing;document.head.appendChild(s);"
        "setTimeout(function(){if(typeof $3Dmol==='undefined'){missing();}}, "
        f"{int(timeout_ms)});"
        "});</script>\n"
    )
