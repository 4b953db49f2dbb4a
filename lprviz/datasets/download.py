"""Verified download of fetchable datasets: pinned URL, size cap, SHA-256, atomic replace."""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from lprviz.cachefiles import remove_stale
from lprviz.datasets.registry import _FETCHABLE, _fetch_dir
from lprviz.errors import InputError


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme == "https" or (parts.scheme == "http" and local):
        return
    raise InputError(f"download URL {url!r} not allowed: use https:// "
                     "(http:// only for 127.0.0.1/localhost)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Largest download accepted when the expected size is not pinned (checksum overrides).
_MAX_DOWNLOAD_BYTES = 512 << 20


def _download(
    url: str, target: Path, sha256: str, *, timeout: float,
    max_bytes: int = _MAX_DOWNLOAD_BYTES,
) -> None:
    """Download ``url`` to ``target`` via a temp file in the same dir; verify; replace.

    A response longer than ``max_bytes`` is cut off and refused: a mirror cannot fill the
    disk before the checksum is checked.
    """
    _check_url(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        n_read = 0
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                expected = resp.headers.get("Content-Length")
                while chunk := resp.read(1 << 16):
                    n_read += len(chunk)
                    if n_read > max_bytes:
                        raise InputError(f"download of {url} is larger than the expected "
                                         f"{max_bytes} bytes; aborted and discarded")
                    out.write(chunk)
                    h.update(chunk)
            if expected is not None and n_read != int(expected):
                raise InputError(f"download of {url} truncated: got {n_read} of "
                                 f"{expected} bytes")
        except urllib.error.HTTPError as exc:
            raise InputError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise InputError(f"download of {url} failed: {exc.reason}") from None
        except InputError:
            raise
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # IncompleteRead, timeouts, connection resets.
            msg = " ".join(str(exc).split())[:120] or type(exc).__name__
            raise InputError(f"download of {url} failed or was truncated ({msg})") from None
        digest = h.hexdigest()
        if digest != sha256:
            raise InputError(f"checksum mismatch for {url}: got sha256 {digest[:16]}..., "
                             f"expected {sha256[:16]}...; file discarded")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(
    name: str,
    *,
    base_url: str | None = None,
    dest: str | os.PathLike | None = None,
    checksums: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> list[Path]:
    """Download a fetchable dataset's files, verify their SHA-256, and cache them.

    A file already present with the right checksum is never downloaded again. Each file
    is written to a temp file in the target directory and moved into place only once its
    checksum matches, so a failed or interrupted download leaves nothing behind; ``.part``
    files older than an hour (from a killed process) are removed.

    Parameters
    ----------
    name : str
        A fetchable name (``"mlearn-Si"``, ``"mlearn-Ge"``, ``"mlearn-Li"``, ``"mlearn-Mo"``).
    base_url : str, optional
        Replaces the pinned ``https://raw.githubusercontent.com/materialsvirtuallab/mlearn/
        <commit>/`` prefix (mirrors, tests). Only https, or http to 127.0.0.1/localhost.
    dest : path-like, optional
        Directory for the files (default ``cache_dir()/<name>``, where :func:`load` looks).
    checksums : mapping of str to str, optional
        SHA-256 per relative file path (``"data/Si/training.json"``), overriding the pinned
        ones (tests serving small files).
    timeout : float
        Seconds per connection attempt.

    Returns
    -------
    list of pathlib.Path
        The verified files, in registry order (training, test).
    """
    if name not in _FETCHABLE:
        raise InputError(f"unknown fetchable dataset '{name}'; "
                         f"available: {', '.join(sorted(_FETCHABLE))}")
    spec = _FETCHABLE[name]
    base = spec.base_url if base_url is None else base_url
    if not base.endswith("/"):
        base += "/"
    _check_url(base)
    folder = _fetch_dir(name, dest)
    # A fetch killed mid-download (kill -9, power loss) never ran its cleanup: its .part
    # files are removed here once old enough not to belong to a fetch still running.
    remove_stale(folder, ".*.part")
    paths = []
    for remote in spec.files:
        sha = (checksums or {}).get(remote.path, remote.sha256)
        target = folder / Path(remote.path).name
        if target.is_file() and _sha256(target) == sha:
            paths.append(target)
            continue
        # The pinned upstream file has a known size: read no byte beyond it.
        limit = remote.size if sha == remote.sha256 else _MAX_DOWNLOAD_BYTES
        _download(urllib.parse.urljoin(base, remote.path), target, sha, timeout=timeout,
                  max_bytes=limit)
        paths.append(target)
    return paths

