"""Process-wide settings of lprviz's own processes: memory and garbage collection.

Each lasts for the whole process, so only a process lprviz owns makes them: ``lprviz lpr``
run as a command (``main()`` without ``argv``; never a caller's in-process ``main([...])``)
and the app's server (:func:`small_pages` only). Measured on a 2-core virtual machine,
100k atoms; see DEVELOPING.md.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys

__all__ = ["collector_paused", "reuse_freed_memory", "small_pages", "tune_process_memory"]

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def reuse_freed_memory() -> bool:
    """Have glibc's allocator keep freed large blocks for reuse (``lprviz lpr``).

    The streamed phase allocates and frees blocks of about one chunk's size many times
    (featomic's output, the dense chunk, each ~48 MB at 4k atoms and d = 1470). By default
    glibc maps every block above 32 MB afresh and unmaps it when freed, so each reuse
    page-faults the memory in again: on 100k test atoms the process spent 1.3-1.9 s in the
    kernel, 0.4-0.7 s with the thresholds raised (peak RSS 0.43 -> 0.47 GiB; glibc 2.36).
    The settings last for the process, so only the command itself makes them (``main``
    called without ``argv``), not a caller's process running ``main([...])``. Returns
    whether the allocator took every setting (each is tried; False off glibc).
    """
    import ctypes
    import platform

    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    settings = ((_M_MMAP_THRESHOLD, 512 << 20), (_M_TRIM_THRESHOLD, 1 << 30),
                (_M_TOP_PAD, 64 << 20))
    assert all(0 < value < 2**31 for _, value in settings)  # mallopt takes a C int
    # each on its own: a glibc that refuses one (an older one caps the mmap threshold at
    # 32 MiB) still takes the others
    return all([mallopt(key, value) == 1 for key, value in settings])


def small_pages() -> bool:
    """Stop NumPy advising transparent huge pages for its large arrays (``lprviz lpr``
    and the app's server).

    NumPy asks the kernel (``madvise``) for 2 MiB pages on every array of 4 MiB or more. On
    a virtual machine the first touch of such a page can make the host back a whole 2 MiB
    at once: on 100k test atoms the CLI took ~80 huge-page faults costing 1.1-1.3 s of
    system time (~15 ms each), 0.35-0.46 s with small pages (page faults 80k -> 120k; wall
    7.8-8.4 -> 6.6-6.9 s, user time unchanged). The app at 102k atoms (``bench_app.py
    --scale 13``, two runs each): first page load 21.6-28.1 s -> 9.1-9.4 s, training-set
    change 8.7-9.1 s -> 6.9-8.5 s, the alpha change unchanged. Lasts for the process. A user's own
    ``NUMPY_MADVISE_HUGEPAGE`` (read by NumPy at import) is left in force. Returns whether
    the advice was turned off here (False with that variable set, or a NumPy without the
    switch, which keeps its own policy).
    """
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return False
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # NumPy < 2
        try:
            from numpy.core.multiarray import _set_madvise_hugepage
        except ImportError:
            return False
    _set_madvise_hugepage(False)
    return True


def tune_process_memory() -> dict[str, bool]:
    """The process-wide memory settings of ``lprviz lpr`` (the command itself, not an
    in-process ``main([...])``): which of :func:`reuse_freed_memory` and
    :func:`small_pages` took effect."""
    return {"glibc keeps freed blocks": reuse_freed_memory(),
            "NumPy small pages": small_pages()}


@contextlib.contextmanager
def collector_paused(active: bool = True):
    """Pause Python's cyclic garbage collector inside the block, then freeze what it made.

    Loading 100k atoms makes ~10^5 long-lived objects (frames, their arrays and dicts); the
    collector's full passes over them while they were being made cost ~0.2 s, and every
    later full pass would walk them again. After the block one collection frees the
    garbage cycles it left, and the rest moves to the permanent generation
    (:func:`gc.freeze`: never collected, as the process keeps the frames to the end), so
    later passes walk only what the streamed phase makes. ``lprviz lpr`` on 100k atoms:
    0.3 s of collections -> ~0.15 s, wall ~0.3 s less. For the command's own process only
    (``active``), like :func:`tune_process_memory`: a caller's objects are never frozen.
    """
    if not active:
        yield
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()  # one pass (~25 ms), so no garbage cycle of the block is frozen
        gc.freeze()
        if was_enabled:
            gc.enable()
