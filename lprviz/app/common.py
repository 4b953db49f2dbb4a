"""State and caches shared by the app's pages (no science: calls into lprviz only).

Expensive steps are cached by plain hashable keys:

* ``dataset(source)`` - the loaded :class:`lprviz.datasets.Dataset` (name or file path);
* ``descriptors(source, preset)`` - SOAP of every atom (progress bar on a miss);
* ``fit(source, preset, train_frames, spec, reference)`` - everything that does not depend on alpha
  (one d x d factorisation);
* ``results(..., alpha)`` - :func:`lprviz.pipeline.evaluate`, cheap.

So moving the alpha slider only re-evaluates, and editing the training set refactorises but
never refeaturises. Settings that make sense in a link (dataset, alpha) live in the URL.
"""

from __future__ import annotations

import atexit
import hashlib
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from lprviz import datasets, features, insight_plots, pipeline, selection, validation
from lprviz.errors import InputError

DEFAULT_ALPHA_LOG10 = -4.0
ALPHA_LOG10_RANGE = (-8.0, 2.0)
DEFAULT_PRESET = "bulk only"
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


# --------------------------------------------------------------------------- cached steps


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


@st.cache_resource(max_entries=6, show_spinner="Loading dataset...")
def dataset(source: str):
    """The dataset named (or at path) ``source``, loaded once per server."""
    _note_use(source, dataset, (source,))
    return datasets.load(source)


_DESCRIPTORS: OrderedDict[tuple[str, str], object] = OrderedDict()
_DESCRIPTORS_MAX = 4
_DESCRIPTORS_LOCK = threading.Lock()


def descriptors(source: str, preset: str):
    """SOAP descriptors of every atom of ``source``; shows a progress bar while computing.

    Kept in a small server-wide LRU of our own rather than ``st.cache_resource``: a cached
    function may not draw into a progress bar created outside it.
    """
    key = (source, preset)
    with _DESCRIPTORS_LOCK:
        if key in _DESCRIPTORS:
            _DESCRIPTORS.move_to_end(key)
            return _DESCRIPTORS[key]
    ds = dataset(source)
    bar = st.empty()

    def progress(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"Featurising: {done}/{total} atoms")

    try:
        # An upload's descriptors stay out of the shared memory and disk caches: they would
        # outlive the session (only this LRU holds them, released with the upload).
        desc = features.compute_soap(
            ds.frames, features.SOAP_PRESETS[preset], species=ds.species, progress=progress,
            cache=not is_upload(source),
        )
    finally:
        bar.empty()
    with _DESCRIPTORS_LOCK:
        _DESCRIPTORS[key] = desc
        while len(_DESCRIPTORS) > _DESCRIPTORS_MAX:
            _DESCRIPTORS.popitem(last=False)
    return desc


@st.cache_resource(max_entries=8, show_spinner="Factorising the training set...")
def fit(source: str, preset: str, train_frames: tuple[int, ...], spec,
        reference: tuple[int, ...] | None = None):
    """Alpha-independent part of the model for a training set (tuple of frame indices)."""
    _note_use(source, fit, (source, preset, train_frames, spec, reference))
    ds = dataset(source)
    desc = descriptors(source, preset)
    mask = np.zeros(len(ds.frames), dtype=bool)
    mask[list(train_frames)] = True
    if reference is None or tuple(reference) == tuple(train_frames):
        return pipeline.prepare(ds, desc, mask, spec)
    # Compare B with A honestly: B in A's feature space (scale and, for the sparse kernel,
    # A's active environments).
    ref = fit(source, preset, tuple(reference), spec, None)
    return pipeline.prepare(ds, desc, mask, spec, scale=ref.scale, nystrom=ref.nystrom)


@st.cache_resource(max_entries=32, show_spinner=False)
def results(
    source: str, preset: str, train_frames: tuple[int, ...], spec,
    reference: tuple[int, ...] | None,
    alpha: float,
):
    """:func:`lprviz.pipeline.evaluate` of the cached fit at ``alpha``."""
    _note_use(source, results, (source, preset, train_frames, spec, reference, alpha))
    return pipeline.evaluate(fit(source, preset, train_frames, spec, reference), alpha)


@st.cache_resource(max_entries=6, show_spinner=False)
def coordination(source: str) -> np.ndarray:
    """Coordination number of every atom (for hover labels); the dataset's own if it has one."""
    _note_use(source, coordination, (source,))
    ds = dataset(source)
    if all("coordination" in a.arrays for a in ds.frames):
        return np.concatenate([a.arrays["coordination"] for a in ds.frames]).astype(int)
    return pipeline.coordination(ds.frames, cutoff=coordination_cutoff(source))


def coordination_cutoff(source: str) -> float:
    """Neighbour cutoff (A) for coordination: 1.2 x the shortest distance in the first frame.

    Only pairs within 3.2 A, then 6.4 A, are listed (all n^2 distances of a 30k-atom frame
    would take 20 GB); 3 A when the frame has none.
    """
    from ase.neighborlist import neighbor_list

    ds = dataset(source)
    for atoms in ds.frames:
        if len(atoms) > 1:
            for reach in (3.2, 6.4):
                d = neighbor_list("d", atoms, reach)
                d = d[d > 1e-6]
                if d.size:
                    return float(1.2 * d.min())
            break
    return 3.0


@st.cache_resource(max_entries=4, show_spinner=False)
def environment_map(source: str, preset: str) -> np.ndarray:
    """2D PCA coordinates of every atom's descriptor (for the environment map)."""
    from lprviz.plots import pca_2d

    _note_use(source, environment_map, (source, preset))
    return pca_2d(descriptors(source, preset).values)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """What the sidebar decided: hashable, passed to the cached steps."""

    source: str
    label: str
    preset: str
    spec: object  # pipeline.ModelSpec


def _init(key: str, value) -> None:
    if key not in st.session_state:
        st.session_state[key] = value


def available_sources() -> dict[str, str]:
    """Display label -> load source of shipped and already fetched datasets."""
    out: dict[str, str] = {}
    try:
        infos = datasets.list_available()
    except Exception:  # a broken cache must not take the app down
        infos = []
    for info in infos:
        if info.kind == "shipped" or info.cached:
            out[info.name] = info.name
    out.setdefault(datasets.DEFAULT_DATASET, datasets.DEFAULT_DATASET)
    return out


def _upload_dir() -> Path:
    global UPLOAD_DIR
    if UPLOAD_DIR is None:
        UPLOAD_DIR = Path(tempfile.mkdtemp(prefix="lprviz-uploads-"))
        atexit.register(shutil.rmtree, UPLOAD_DIR, True)
        _start_pruner()
    UPLOAD_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    return UPLOAD_DIR


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


# Cache entries computed for uploaded files, so a closed session's can be released:
# upload path -> {(cached function, args)}. Shipped datasets are never released.
_UPLOAD_ENTRIES: dict[str, set[tuple[object, tuple]]] = {}
_UPLOAD_LOCK = threading.RLock()
_dead_since: dict[str, float] = {}  # session id -> when first seen disconnected (monotonic)


def is_upload(source: str) -> bool:
    """True if ``source`` is a file stored by :func:`save_upload`."""
    return UPLOAD_DIR is not None and source.startswith(str(UPLOAD_DIR))


def _note_use(source: str, func, args: tuple) -> None:
    """Remember that ``func(*args)`` was cached for the upload ``source``."""
    if is_upload(source):
        with _UPLOAD_LOCK:
            _UPLOAD_ENTRIES.setdefault(source, set()).add((func, args))


def release_upload(source: str) -> None:
    """Drop every cached object computed from the uploaded file ``source``."""
    with _UPLOAD_LOCK:
        entries = _UPLOAD_ENTRIES.pop(source, set())
    for func, args in entries:
        func.clear(*args)
    with _DESCRIPTORS_LOCK:
        for key in [k for k in _DESCRIPTORS if k[0] == source]:
            del _DESCRIPTORS[key]


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


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)
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
                _discard(path)
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
            return str(path)
        own = _files(folder)
        while own and (len(own) + 1 > UPLOADS_PER_SESSION
                       or sum(p.stat().st_size for p in own) + len(data) > UPLOAD_SESSION_BYTES):
            _discard(own.pop(0))
        used = sum(p.stat().st_size for d in root.iterdir() if d.is_dir() for p in _files(d))
        if used + len(data) > UPLOAD_TOTAL_BYTES:
            raise InputError(f"{name}: the server's upload space ({UPLOAD_TOTAL_BYTES >> 20} MB)"
                             " is full with other open sessions' files; try again later")
        tmp = path.with_name(f".{path.name}.part")
        try:
            tmp.write_bytes(data)
            tmp.replace(path)
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


def show_error(exc: Exception) -> None:
    """A user-caused error as one escaped line, naming uploads by the user's file name."""
    st.error(plain_text(user_message(str(exc))))


def sidebar() -> Settings:
    """Dataset and model controls (sidebar); returns the current :class:`Settings`."""
    qp = st.query_params
    sources = available_sources()
    uploads: dict[str, str] = st.session_state.setdefault("uploads", {})
    for gone in [k for k, path in uploads.items() if not Path(path).exists()]:
        del uploads[gone]
        st.warning(plain_text(f"{gone}: the uploaded file is no longer on the server "
                              "(the server restarted or cleaned up); upload it again."))
    labels = list(sources) + list(uploads)
    if "dataset_label" not in st.session_state:
        wanted = qp.get("dataset", datasets.DEFAULT_DATASET)
        fallback = (datasets.DEFAULT_DATASET if datasets.DEFAULT_DATASET in labels
                    else labels[0])
        st.session_state["dataset_label"] = wanted if wanted in labels else fallback
        if wanted not in labels:
            st.info(plain_text(f"The link's dataset={wanted[:60]} is not available here; "
                               f"showing {fallback}."))
    _alpha_from_link()
    if st.session_state["dataset_label"] not in labels:
        st.session_state["dataset_label"] = datasets.DEFAULT_DATASET
    _init("soap_preset", "default" if "default" in features.SOAP_PRESETS else
          next(iter(features.SOAP_PRESETS)))
    _init("model_kind", "linear")

    with st.sidebar:
        st.header("Data and model")
        st.session_state["_w_dataset"] = st.session_state["dataset_label"]
        st.selectbox("Dataset", labels, key="_w_dataset", on_change=_copy,
                     args=("dataset_label",))
        up = st.file_uploader("...or upload extxyz / mlearn JSON", type=UPLOAD_TYPES,
                              key="upload")
        if up is not None and up.file_id != st.session_state.get("_upload_done"):
            st.session_state["_upload_done"] = up.file_id
            previous, path = uploads.get(up.name), ""
            try:
                path = save_upload(up.name, up.getvalue())
                uploads[up.name] = path  # before loading: errors then name the user's file
                dataset(path)  # validate now so a bad file fails here, in one line
            except InputError as exc:
                show_error(exc)
                if path and path != previous:
                    _discard(Path(path))
                uploads.pop(up.name, None)
                if previous:
                    uploads[up.name] = previous
            else:
                st.session_state["dataset_label"] = up.name
                st.rerun()
            finally:
                # Files this session gave up to make room are no longer offered.
                for label in [k for k, p in uploads.items() if not Path(p).exists()]:
                    del uploads[label]
        st.session_state["_w_preset"] = st.session_state["soap_preset"]
        st.selectbox("SOAP preset", list(features.SOAP_PRESETS), key="_w_preset",
                     on_change=_copy, args=("soap_preset",),
                     help="Cutoff 5 A sees second neighbours, which is what separates a "
                          "surface atom from bulk; 'fast' is coarser.")
        st.session_state["_w_model"] = st.session_state["model_kind"]
        st.radio("Model", ["linear", "sparse-kernel"], key="_w_model", on_change=_copy,
                 args=("model_kind",), horizontal=True,
                 help="Linear ridge on SOAP, or sparse kernel ridge (Nystrom features).")
    label = st.session_state["dataset_label"]
    source = uploads.get(label, sources.get(label, label))
    if label in sources:
        qp["dataset"] = label
    spec = pipeline.ModelSpec(kind=st.session_state["model_kind"])
    return Settings(source=source, label=label, preset=st.session_state["soap_preset"],
                    spec=spec)


def _copy(key: str) -> None:
    """Widget callback: persist ``_w_<x>`` into its page-independent key."""
    widget = {"dataset_label": "_w_dataset", "soap_preset": "_w_preset",
              "model_kind": "_w_model", "alpha_log10": "_w_alpha"}[key]
    st.session_state[key] = st.session_state[widget]


def link_alpha_log10(raw: str | None) -> tuple[float, str | None]:
    """log10 alpha from the link's ``alpha`` value, and a notice when it was not usable.

    Not a number, NaN, infinite, zero or negative: the default alpha. Outside the slider's
    range: the nearest end of the range. The notice is plain text (pass it to
    :func:`plain_text`).
    """
    if raw is None:
        return DEFAULT_ALPHA_LOG10, None
    lo, hi = ALPHA_LOG10_RANGE
    default = f"{10**DEFAULT_ALPHA_LOG10:.3g}"
    try:
        alpha = float(raw)
    except (TypeError, ValueError):
        alpha = float("nan")
    if not (np.isfinite(alpha) and alpha > 0):
        return DEFAULT_ALPHA_LOG10, (f"The link's alpha={str(raw)[:40]} is not a finite "
                                     f"positive number; using the default alpha = {default}.")
    log10 = float(np.log10(alpha))
    if lo <= log10 <= hi:
        return log10, None
    log10 = float(np.clip(log10, lo, hi))
    return log10, (f"The link's alpha={str(raw)[:40]} is outside {10**lo:.0e} to "
                   f"{10**hi:.0e}; using alpha = {10**log10:.3g}.")


def _alpha_from_link() -> None:
    """First run of a session: alpha from the URL (or the default, with a notice), and the
    URL rewritten to the value in use so a shared link never carries a bad one."""
    if "alpha_log10" not in st.session_state:
        log10, notice = link_alpha_log10(st.query_params.get("alpha"))
        st.session_state["alpha_log10"] = log10
        if notice:
            st.info(plain_text(notice))
    if "alpha" in st.query_params:
        st.query_params["alpha"] = f"{10 ** st.session_state['alpha_log10']:.3g}"


def alpha_slider(*, label: str = "Regularisation alpha (log10)") -> float:
    """Log-scale alpha slider shared by pages and mirrored in the URL; returns alpha."""
    _alpha_from_link()
    st.session_state["_w_alpha"] = st.session_state["alpha_log10"]
    lo, hi = ALPHA_LOG10_RANGE
    st.slider(label, lo, hi, step=0.25, key="_w_alpha", on_change=_copy,
              args=("alpha_log10",), format="%.2f",
              help="Larger alpha raises every LPR (toward alpha/|x|^2) at the cost of accuracy.")
    alpha = float(10 ** st.session_state["alpha_log10"])
    st.query_params["alpha"] = f"{alpha:.3g}"
    return alpha


def training_frames(settings: Settings, *, key: str = "train") -> tuple[int, ...]:
    """The current training set (sorted frame indices) of the dataset; default 'bulk only'."""
    store: dict = st.session_state.setdefault(key, {})
    if settings.source not in store:
        ds = dataset(settings.source)
        labelled = np.asarray(ds.has_energy, dtype=bool)
        if not labelled.any():
            raise InputError(f"{settings.label}: no structure has an energy, so nothing can be "
                             "trained on; add energies (or pick another dataset)")
        mask = selection.preset_mask(DEFAULT_PRESET, ds.groups, _numbers(ds)) & labelled
        if not mask.any():
            mask = labelled
        store[settings.source] = tuple(int(i) for i in np.flatnonzero(mask))
    return store[settings.source]


def set_training_frames(settings: Settings, frames, *, key: str = "train") -> None:
    """Replace the current training set of the dataset (frames without an energy, which
    cannot be trained on, are left out)."""
    labelled = np.asarray(dataset(settings.source).has_energy, dtype=bool)
    st.session_state.setdefault(key, {})[settings.source] = tuple(
        sorted(int(i) for i in frames if labelled[int(i)]))


def _numbers(ds) -> list[np.ndarray]:
    return [a.numbers for a in ds.frames]


def frame_numbers(source: str) -> list[np.ndarray]:
    """Atomic numbers of each frame of ``source``."""
    return _numbers(dataset(source))


def current_results(settings: Settings, alpha: float, train: tuple[int, ...] | None = None,
                    reference: tuple[int, ...] | None = None):
    """Results of the current (or given) training set at ``alpha``."""
    train = training_frames(settings) if train is None else train
    if not train:
        raise InputError("training set: empty; include at least one structure")
    descriptors(settings.source, settings.preset)  # progress bar on first use
    return results(settings.source, settings.preset, train, settings.spec, reference, alpha)


def per_frame(values: np.ndarray, structure_index: np.ndarray, frame: int) -> np.ndarray:
    """The slice of a per-atom array that belongs to ``frame``."""
    return np.asarray(values)[np.asarray(structure_index) == frame]


def local_error_section(ds, res, *, key: str) -> None:
    """|Local error| against LPR on test atoms, where the dataset has true local energies."""
    if res.local_error is None:
        st.info("This dataset has no reference local energies (the EMT datasets do).")
        return
    test_atoms = ~res.train_mask[ds.structure_index]
    atoms = test_atoms if test_atoms.sum() >= 2 else np.ones_like(test_atoms)
    check = validation.local_error_check(res.lpr[atoms], res.local_error[atoms])
    st.plotly_chart(insight_plots.error_vs_lpr_figure(check.lpr, check.abs_error,
                                                      check.low_lpr, threshold=check.threshold),
                    key=key)
    c1, c2, c3 = st.columns(3)
    c1.metric("Large errors among lowest-LPR 5%", f"{check.frac_large_low:.0%}")
    c2.metric("Large errors among the rest", f"{check.frac_large_rest:.0%}")
    c3.metric("Rank correlation |error| vs 1/LPR", f"{check.spearman:.2f}")
    st.caption(f"Large = above the 90th percentile of |local error| ({check.threshold:.3g} eV); "
               "test atoms.")


@st.cache_resource(max_entries=8, show_spinner="Training the committee...")
def committee(source: str, preset: str, train: tuple[int, ...], spec, alpha: float,
              n_models: int) -> validation.CommitteeCheck:
    """Committee of ridge models on random 70 % subsets: spread of local predictions."""
    _note_use(source, committee, (source, preset, train, spec, alpha, n_models))
    ds = dataset(source)
    desc = descriptors(source, preset)
    model = fit(source, preset, train, spec, None)
    return validation.committee_check(
        model.model_features(desc.values, desc.atom_numbers), ds.structure_index, ds.energies,
        model.train_mask, alpha, solver=model.solver, n_models=n_models, seed=0,
    )


def run_page(title: str, body, *, intro: str | None = None) -> None:
    """Title, optional intro, the shared sidebar, then ``body(settings)``.

    A user-caused error (:class:`lprviz.InputError`) becomes a one-line ``st.error``; the
    session and everything already loaded stay as they were.
    """
    st.title(title)
    if intro:
        st.markdown(intro)
    settings = sidebar()
    try:
        body(settings)
    except InputError as exc:
        show_error(exc)
