"""Housekeeping shared by the on-disk caches (descriptors, downloads, uploads)."""

from __future__ import annotations

import time
from pathlib import Path

# A temporary file older than this was left by a process that died mid-write (kill -9, power
# loss); a live writer touches its file far more often.
STALE_SECONDS = 3600.0


def remove_stale(folder: Path, pattern: str, *, max_age: float = STALE_SECONDS) -> int:
    """Delete files in ``folder`` matching ``pattern`` not modified for ``max_age`` seconds.

    Parameters
    ----------
    folder : pathlib.Path
        Directory to clean; a missing directory is nothing to clean.
    pattern : str
        Glob of the temporary files (``"*.part"``).
    max_age : float
        Age in seconds beyond which a file counts as abandoned.

    Returns
    -------
    int
        Number of files removed.
    """
    now = time.time()
    removed = 0
    for path in folder.glob(pattern):
        try:
            if now - path.stat().st_mtime > max_age:
                path.unlink()
                removed += 1
        except OSError:
            pass  # another process removed or replaced it first
    return removed
