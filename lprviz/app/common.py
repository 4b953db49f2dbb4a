"""Helpers shared by the app's pages: messages, the page frame, shared sections.

No science here, and no state: the sidebar and the session's choices are in
:mod:`lprviz.app.state`, cached computations in :mod:`lprviz.app.caches`, uploads in
:mod:`lprviz.app.uploads`.

* Every user-provided string that reaches Markdown (``st.error``, ``st.caption``, widget
  labels...) goes through :func:`plain_text`; errors a user can cause go through
  :func:`show_error` (one escaped line, uploads named by the user's file name).
* A page is ``run_page(title, body)``: ``body(settings)`` runs with the sidebar's settings;
  alpha-dependent parts of a page run through :func:`guarded_fragment` (or the whole body,
  ``run_page(..., fragment=True)``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import streamlit as st

from lprviz import insight_plots, validation
from lprviz.errors import InputError

#: Most points a per-atom scatter sends to the browser: a fixed stride keeps the payload and
#: the figure's build time flat (100k atoms would cost more than the whole LPR update).
MAX_SCATTER_POINTS = 6000
#: Options of Explore's structure picker (the rest through its *Find structure* filter).
MAX_STRUCTURE_OPTIONS = 500


def every_kth(n: int, at_most: int = MAX_SCATTER_POINTS) -> np.ndarray:
    """Indices ``0, k, 2k...`` of at most ~``at_most`` of ``n`` items (all when fewer)."""
    return np.arange(0, n, max(1, n // at_most))


@st.cache_resource(show_spinner="Getting 3Dmol.js for the 3D viewer...")
def script_url() -> str | None:
    """URL of the local 3Dmol.js served from the ``static/`` folder beside the main script
    (None: the viewer inlines the local copy or, with none, tries the CDN).

    Browsers then fetch the 0.5 MB script once instead of with every rerun. With no local
    copy yet it is fetched once into the user cache (``lprviz app`` has done that already).
    """
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    from lprviz import threedmol

    path, _ = threedmol.ensure()
    ctx = get_script_run_ctx()
    if path is None or ctx is None:
        return None
    try:
        return threedmol.publish(path, Path(ctx.main_script_path).resolve().parent / "static")
    except OSError:  # a read-only folder: the viewer inlines the script instead
        return None


def plain_text(text: object) -> str:
    """User text made safe wherever Streamlit renders Markdown: one line, markdown escaped.

    The one escaping helper for Markdown: every user-provided string (file, dataset,
    structure and group names, error messages that quote them) passes through it before
    ``st.error``/``st.info``/``st.warning``, ``st.markdown``/``st.caption`` and widget
    labels or help. HTML contexts (plotly hovers, the viewer) use :func:`lprviz.plots.escape`.
    """
    text = " ".join(str(text).replace("\x00", " ").split())
    # Links, images, HTML, code, LaTeX and emphasis markers; intraword "_" is left alone.
    return re.sub(r"([\\`*\[\]()<>#!|~$])", r"\\\1", text)


def file_stem(text: str, *, max_len: int = 80) -> str:
    """A download file name stem from user text: letters, digits, ``.-_`` only."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:max_len]
    return stem or "lprviz"


def local_error_section(ds, res, *, key: str) -> validation.LocalErrorCheck | None:
    """|Local error| against LPR on test atoms, where the dataset has true local energies.

    Returns the check drawn (None without true local energies), so a page can word it.
    """
    if res.local_error is None:
        st.info("This dataset has no reference local energies (the EMT datasets do).")
        return None
    test_atoms = ~res.train_mask[ds.structure_index]
    atoms = test_atoms if test_atoms.sum() >= 2 else np.ones_like(test_atoms)
    check = validation.local_error_check(res.lpr[atoms], res.local_error[atoms])
    drawn = every_kth(check.lpr.size)  # the statistics below use every atom
    st.plotly_chart(insight_plots.error_vs_lpr_figure(check.lpr[drawn], check.abs_error[drawn],
                                                      check.low_lpr[drawn],
                                                      threshold=check.threshold),
                    key=key)
    c1, c2, c3 = st.columns(3)
    c1.metric("Large errors among lowest-LPR 5%", f"{check.frac_large_low:.0%}")
    c2.metric("Large errors among the rest", f"{check.frac_large_rest:.0%}")
    c3.metric("Rank correlation |error| vs 1/LPR", f"{check.spearman:.2f}")
    thinned = (f" (the plot shows every {check.lpr.size // drawn.size}th of "
               f"{check.lpr.size} atoms)" if drawn.size < check.lpr.size else "")
    st.caption(f"Large = above the 90th percentile of |local error| ({check.threshold:.3g} eV); "
               f"test atoms{thinned}.")
    return check


def show_error(exc: Exception) -> None:
    """A user-caused error as one escaped line, naming uploads by the user's file name."""
    from lprviz.app.uploads import user_message

    st.error(plain_text(user_message(str(exc))))


@contextlib.contextmanager
def guarded():
    """Show a user-caused error (:class:`lprviz.InputError`) as one line and carry on (for
    fragments, whose reruns do not pass through :func:`run_page`)."""
    try:
        yield
    except InputError as exc:
        show_error(exc)


def run_page(title: str, body: Callable, *, intro: str | None = None,
             fragment: bool = False) -> None:
    """Title, optional intro, then ``body(settings)`` with the sidebar's settings.

    A user-caused error becomes a one-line ``st.error``; the session and everything already
    loaded stay as they were. ``fragment=True`` for a page whose whole body depends on alpha:
    it then runs as one ``st.fragment``, so moving alpha reruns the body only.
    """
    from lprviz.app import state

    st.title(title)
    if intro:
        st.markdown(intro)
    if fragment:
        guarded_fragment(body, state.settings())
    else:
        with guarded():
            body(state.settings())


@st.fragment
def guarded_fragment(body: Callable, *args) -> None:
    """Run ``body(*args)`` as an ``st.fragment`` (its widgets rerun only it) that reports
    user-caused errors itself, since a fragment's rerun does not pass through
    :func:`run_page`. Each call on a page is a fragment of its own."""
    with guarded():
        body(*args)
