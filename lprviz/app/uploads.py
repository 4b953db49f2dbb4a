"""Uploaded files: where they are kept, who owns them, when they go.

Each Streamlit session gets its own private folder; the user's file name never becomes a path
(content-hash names; only the suffix is kept) and never reaches a message (:func:`user_message`
maps stored paths back to the user's names). Bounds are documented with the constants below.
When a file goes, every cached object computed from it goes too (:func:`lprviz.app.caches.
release`).
"""

from __future__ import annotations

import atexit
import hashlib
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import streamlit as st

from lprviz.errors import InputError

# Uploads live in a private (0700) directory of this server process, made on first use and
# removed at exit, one subdirectory per Streamlit session. A session keeps at most
# UPLOADS_PER_SESSION files and UPLOAD_SESSION_BYTES (its own oldest go first); all sessions
# together at most UPLOAD_TOTAL_BYTES. Files of sessions disconnected for longer than
# Streamlit's reconnection window (server.disconnectedSessionTTL, 120 s by default) are
# deleted, and their cached datasets released, by a background check every PRUNE_SECONDS
# (and on each upload); a live session's files are never deleted by another session.
# None until first use.
UPLOAD_DIR: Path | None = None
UPLOADS_PER_SESSION = 8
UPLOAD_SESSION_BYTES = 100 << 20
UPLOAD_TOTAL_BYTES = 1 << 30
PRUNE_SECONDS = 60.0
UPLOAD_TYPES = ["extxyz", "xyz", "json"]


def _upload_dir() -> Path:
    global UPLOAD_DIR
    if UPLOAD_DIR is None:
        UPLOAD_DIR = Path(tempfile.mkdtemp(prefix="lprviz-uploads-"))
        atexit.register(shutil.rmtree, UPLOAD_DIR, True)
        _start_pruner()
    UPLOAD_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    return UPLOAD_DIR


_UPLOAD_LOCK = threading.RLock()
_dead_since: dict[str, float] = {}  # session id -> when first seen disconnected (monotonic)
# Stored path -> the user's file name. A stored path belongs to one session (its own folder),
# so one name per path; the datasets read from it are named after it (display_name).
_names: dict[str, str] = {}


def is_upload(source: str) -> bool:
    """True if ``source`` is a file stored by :func:`save_upload`."""
    return UPLOAD_DIR is not None and source.startswith(str(UPLOAD_DIR))


def display_name(source: str) -> str | None:
    """The user's file name of the stored upload ``source`` (None: not an upload)."""
    return _names.get(str(source))


def release_upload(source: str) -> None:
    """Drop every cached object computed from the uploaded file ``source``."""
    from lprviz.app import caches

    caches.release(source)


def session_id() -> str:
    """Id of the Streamlit session running this script ("bare" outside a session)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    return ctx.session_id if ctx is not None else "bare"


def session_alive(sid: str) -> bool:
    """True while the session ``sid`` is connected (always True without a server runtime;
    AppTest's mock runtime calls every session active)."""
    from streamlit.runtime import Runtime

    if not Runtime.exists():
        return True
    return bool(Runtime.instance().is_active_session(sid))


def reconnect_grace() -> float:
    """Seconds a disconnected session may come back (Streamlit keeps its state that long)."""
    try:
        return float(st.get_option("server.disconnectedSessionTTL"))
    except Exception:  # an older Streamlit without the option: its fixed 2 minutes
        return 120.0


def _files(folder: Path) -> list[Path]:
    """Files of ``folder``, oldest first."""
    try:
        return sorted((p for p in folder.iterdir() if p.is_file()),
                      key=lambda p: p.stat().st_mtime)
    except FileNotFoundError:
        return []


def _start_pruner() -> None:
    """Prune every PRUNE_SECONDS in a daemon thread, in a real server only (closed sessions
    must be noticed even when nobody uploads or opens a page)."""
    from streamlit.runtime import Runtime

    def loop() -> None:
        while True:
            time.sleep(PRUNE_SECONDS)
            try:
                prune_uploads()
            except Exception:  # noqa: BLE001 - housekeeping must never stop the server
                pass

    # AppTest installs a mock runtime: no background thread racing the tests there.
    if Runtime.exists() and type(Runtime.instance()) is Runtime:
        threading.Thread(target=loop, name="lprviz-upload-pruner", daemon=True).start()


def discard(path: Path) -> None:
    """Delete a stored upload and release what was cached from it."""
    path.unlink(missing_ok=True)
    _names.pop(str(path), None)
    release_upload(str(path))


def prune_uploads() -> int:
    """Delete the upload folders of closed sessions and release their cached datasets.

    A session is closed once disconnected for longer than :func:`reconnect_grace`: a browser
    that lost its connection for a moment comes back to the same session and its files.

    Returns
    -------
    int
        Bytes freed on disk.
    """
    if UPLOAD_DIR is None or not UPLOAD_DIR.is_dir():
        return 0
    freed = 0
    with _UPLOAD_LOCK:
        now, grace = time.monotonic(), reconnect_grace()
        for folder in UPLOAD_DIR.iterdir():
            if not folder.is_dir():
                continue
            if session_alive(folder.name):
                _dead_since.pop(folder.name, None)
                continue
            if now - _dead_since.setdefault(folder.name, now) < grace:
                continue
            del _dead_since[folder.name]
            for path in _files(folder):
                freed += path.stat().st_size
                discard(path)
            shutil.rmtree(folder, ignore_errors=True)
    if freed:
        _return_memory()
    return freed


def _return_memory() -> None:
    """Hand memory freed by released datasets back to the OS: glibc keeps freed small
    blocks (ASE atoms, small arrays) in its heap unless asked to trim it."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps its own policy
        pass


def save_upload(name: str, data: bytes, *, session: str | None = None) -> str:
    """Store an uploaded file under a content-hash name in the session's own folder.

    The user's file name never becomes a path: only its suffix is used. Closed sessions'
    files are pruned first; then the session's own oldest files make room (at most
    :data:`UPLOADS_PER_SESSION` files and :data:`UPLOAD_SESSION_BYTES`). Other live
    sessions' files are never touched: when they fill :data:`UPLOAD_TOTAL_BYTES`, the upload
    is refused.

    Parameters
    ----------
    name : str
        The user's file name (only its suffix is used).
    data : bytes
        File content.
    session : str, optional
        Owner session id (default: the running session's).

    Returns
    -------
    str
        Path of the stored file (the dataset source).

    Raises
    ------
    InputError
        Wrong file type, file larger than a session's share, or no room left.
    """
    suffix = Path(name).suffix.lower()
    if suffix.lstrip(".") not in UPLOAD_TYPES:
        raise InputError(f"{name}: expected an .extxyz, .xyz or mlearn .json file")
    if len(data) > UPLOAD_SESSION_BYTES:
        raise InputError(f"{name}: {len(data) >> 20} MB is more than the "
                         f"{UPLOAD_SESSION_BYTES >> 20} MB an upload may use")
    sid = re.sub(r"[^A-Za-z0-9_-]", "_", session or session_id())
    digest = hashlib.sha256(data).hexdigest()[:16]
    root = _upload_dir()
    prune_uploads()
    with _UPLOAD_LOCK:
        folder = root / sid
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / f"{digest}{suffix}"
        if path.exists():
            path.touch()  # now the session's newest
            if _names.get(str(path)) != name:  # same content, new name: reload under it
                _names[str(path)] = name
                release_upload(str(path))
            return str(path)
        own = _files(folder)
        while own and (len(own) + 1 > UPLOADS_PER_SESSION
                       or sum(p.stat().st_size for p in own) + len(data) > UPLOAD_SESSION_BYTES):
            discard(own.pop(0))
        used = sum(p.stat().st_size for d in root.iterdir() if d.is_dir() for p in _files(d))
        if used + len(data) > UPLOAD_TOTAL_BYTES:
            raise InputError(f"{name}: the server's upload space ({UPLOAD_TOTAL_BYTES >> 20} MB)"
                             " is full with other open sessions' files; try again later")
        tmp = path.with_name(f".{path.name}.part")
        try:
            tmp.write_bytes(data)
            tmp.replace(path)
            _names[str(path)] = name
        finally:
            tmp.unlink(missing_ok=True)  # a full disk or Ctrl-C leaves no partial upload
    return str(path)


def user_message(text: str) -> str:
    """``text`` with the session's stored upload paths replaced by the user's file names.

    Readers name the file they read; for an upload that is a private server path, which
    must not reach the page. Any other path inside the upload folder becomes "upload".
    """
    uploads: dict[str, str] = st.session_state.get("uploads", {})
    for label, path in uploads.items():
        text = text.replace(path, label).replace(Path(path).name, label)
    if UPLOAD_DIR is not None:
        text = re.sub(re.escape(str(UPLOAD_DIR)) + r"[^\s:'\"]*", "upload", text)
    return text
