"""What a session has chosen: the shared sidebar, alpha, the training set, the link.

The sidebar is drawn once per run by the entry script (:mod:`lprviz.app.entry`), before the
page, so its widgets keep their values on every page with no copying; pages read the
result with :func:`settings`. To add a sidebar option: a widget in :func:`sidebar`, a field
in :class:`Settings`, and read it where it is used (the cached steps take plain values).

Alpha is chosen on the pages (inside their fragments, so moving it reruns only what depends
on it) through :func:`alpha_slider`; its widget key survives pages where no slider is drawn
because :func:`keep_across_pages` re-assigns it at the start of every run. Dataset and alpha
live in the URL, so a view can be shared; a bad link falls back to the defaults with a
notice.

An uploaded file has no test set of its own: the sidebar offers its train/test split
(:class:`Split`, kept per file in the session), which sets the default training set; a second
file as the test set makes the source :func:`lprviz.app.caches.combined_source`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import streamlit as st

from lprviz import datasets, features, nn, pipeline, selection
from lprviz import sources as feature_sources
from lprviz.app import caches, uploads
from lprviz.app.common import plain_text
from lprviz.errors import InputError

__all__ = [
    "ALPHA_LOG10_RANGE", "ALPHA_LOG10_STEP", "ALPHA_POSITIONS", "DEFAULT_ALPHA_LOG10",
    "SPLITS", "Settings", "Split", "alpha", "alpha_slider", "available_sources",
    "computed_note", "current_results", "default_training_frames", "feature_options",
    "forget_training_frames", "frame_numbers", "keep_across_pages", "link_alpha_log10",
    "model_kinds", "new_training_table", "remembered", "set_training_frames", "settings",
    "sidebar", "training_frames",
]

DEFAULT_ALPHA_LOG10 = -4.0
ALPHA_LOG10_RANGE = (-8.0, 2.0)
ALPHA_LOG10_STEP = 0.25
#: The slider's 41 alphas, as :func:`alpha` computes them; per training set the app
#: precomputes every position in one pass (:func:`lprviz.app.caches.alpha_grid`).
ALPHA_POSITIONS = tuple(
    float(10 ** (ALPHA_LOG10_RANGE[0] + ALPHA_LOG10_STEP * i))
    for i in range(round((ALPHA_LOG10_RANGE[1] - ALPHA_LOG10_RANGE[0]) / ALPHA_LOG10_STEP) + 1)
)
DEFAULT_PRESET = "bulk only"
#: The default training set of a dataset whose frames are all bulk (half of them, seeded).
FALLBACK_PRESET = "random fraction"
#: Widget keys drawn on some pages only, kept for the others: alpha, and the view choices a
#: user makes on Explore, Training set and Compare (the structure, colouring, order, group,
#: presets). A kept widget takes its first value from :func:`remembered`, never a ``value=``
#: or ``index=`` of its own (Streamlit warns when both set one). A kept value that the
#: current dataset does not offer (a group, a structure) falls back to the widget's first
#: option.
PAGE_WIDGET_KEYS = (
    "alpha_log10",
    "order", "group_filter", "color_by", "structure_query", "structure", "style",
    "log_colours", "show_cell", "grey_undetermined",
    "ts_preset", "ts_n_extra", "ts_small", "ts_fraction", "ts_seed",
    "cmp_mode", "cmp_A", "cmp_B", "cmp_order",
)
_SETTINGS = "_settings"
_SPLIT_SHOWN = "_split_shown"  # the upload whose split widgets the last run drew
#: Train/test splits offered for an uploaded file (user data has no designed default).
SPLITS = ("none", "random fraction", "by group", "second file")
_SPLIT_HELP = (
    "Test structures are left out of training; Explore, Compare and Improve work on them. "
    "'none': every labelled structure trains (or the file's own split=train/test info, when "
    "it has one); 'second file': your test set in its own file, like the CLI's --train/--test. "
    "The Training set page edits start from this split.")


@dataclass(frozen=True)
class Split:
    """How an uploaded file is split into training and test structures.

    Attributes
    ----------
    kind : str
        One of :data:`SPLITS`.
    fraction : float
        ``"random fraction"``: the fraction of structures held out as test.
    seed : int
        Seed of that random choice.
    groups : tuple of str
        ``"by group"``: the test groups.
    test_label : str
        ``"second file"``: the uploaded test file (a label of the session's uploads).
    """

    kind: str = SPLITS[0]
    fraction: float = 0.2
    seed: int = 0
    groups: tuple[str, ...] = ()
    test_label: str = ""


@dataclass(frozen=True)
class Settings:
    """What the sidebar decided: hashable, passed to the cached steps."""

    source: str  # what caches.dataset loads: a dataset name, a stored upload's path, or
    # caches.combined_source(training file, test file)
    label: str  # what the user sees (dataset name or uploaded file name)
    preset: str  # the feature source's key (lprviz.sources.from_key): a SOAP preset name,
    # "array:NAME" or a backbone name; every cached step is keyed by it
    spec: pipeline.ModelSpec
    split: Split | None = None  # uploads only: the chosen train/test split


def keep_across_pages() -> None:
    """Keep page widgets' values while the user is on a page that does not draw them
    (Streamlit forgets a widget's state on a run that does not draw it)."""
    for key in PAGE_WIDGET_KEYS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def remembered(key: str, default) -> str:
    """``key`` for a widget of :data:`PAGE_WIDGET_KEYS`, its first value ``default`` set in
    the session (the widget then passes no default of its own)."""
    st.session_state.setdefault(key, default)
    return key


def settings() -> Settings:
    """The settings the sidebar decided (in this run, by the entry script)."""
    value = st.session_state.get(_SETTINGS)
    # A page run on its own (streamlit run pages/x.py, a page test) draws the sidebar itself.
    return value if value is not None else sidebar()


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


def _on_upload() -> None:
    """File uploader callback (runs before the script, so it may pick the dataset)."""
    up = st.session_state.get("upload")
    if up is None:
        return
    registry: dict[str, str] = st.session_state.setdefault("uploads", {})
    previous, path = registry.get(up.name), ""
    try:
        path = uploads.save_upload(up.name, up.getvalue())
        for label in [k for k, p in registry.items() if p == path and k != up.name]:
            del registry[label]  # the same content uploaded again under a new name
        registry[up.name] = path  # before loading: errors then name the user's file
        caches.dataset(path)  # validate now so a bad file fails here, in one line
    except InputError as exc:
        st.session_state["_upload_error"] = uploads.user_message(str(exc))
        if path and path != previous:
            uploads.discard(Path(path))
        registry.pop(up.name, None)
        if previous:
            registry[up.name] = previous
    else:
        st.session_state["dataset_label"] = up.name
    finally:
        # Files this session gave up to make room are no longer offered.
        for label in [k for k, p in registry.items() if not Path(p).exists()]:
            del registry[label]


def sidebar() -> Settings:
    """Draw the dataset and model controls; store and return the :class:`Settings`."""
    qp = st.query_params
    sources = available_sources()
    registry: dict[str, str] = st.session_state.setdefault("uploads", {})
    for gone in [k for k, path in registry.items() if not Path(path).exists()]:
        del registry[gone]
        st.warning(plain_text(f"{gone}: the uploaded file is no longer on the server "
                              "(the server restarted or cleaned up); upload it again."))
    labels = list(sources) + list(registry)
    if "dataset_label" not in st.session_state:
        wanted = qp.get("dataset", datasets.DEFAULT_DATASET)
        fallback = (datasets.DEFAULT_DATASET if datasets.DEFAULT_DATASET in labels
                    else labels[0])
        st.session_state["dataset_label"] = wanted if wanted in labels else fallback
        if wanted not in labels:
            st.info(plain_text(f"The link's dataset={wanted[:60]} is not available here; "
                               f"showing {fallback}."))
    if st.session_state["dataset_label"] not in labels:
        st.session_state["dataset_label"] = datasets.DEFAULT_DATASET
    _alpha_from_link()
    st.session_state.setdefault("soap_preset", "default")
    st.session_state.setdefault("model_kind", pipeline.MODEL_KINDS[0])

    with st.sidebar:
        st.header("Data and model")
        st.selectbox("Dataset", labels, key="dataset_label")
        st.file_uploader("...or upload extxyz / mlearn JSON", type=uploads.UPLOAD_TYPES,
                         key="upload", on_change=_on_upload)
        if "_upload_error" in st.session_state:
            st.error(plain_text(st.session_state.pop("_upload_error")))
    label = st.session_state["dataset_label"]
    source = registry.get(label, sources.get(label, label))
    with st.sidebar:
        key = _features_choice(source)
        kinds = model_kinds()
        if st.session_state["model_kind"] not in kinds:
            st.session_state["model_kind"] = kinds[0]
        st.radio("Model", kinds, key="model_kind", horizontal=True,
                 help="Linear ridge on the features, sparse kernel ridge (Nystrom features), "
                      "or the linear readout of a small neural network trained on them (its "
                      "LPR is the last-layer LPR, LLPR).")
        _features_caption(key, st.session_state["model_kind"])
        forces = st.toggle("Train on forces too", key="train_forces",
                           help="Fit energies and forces (frames without forces count for "
                                "energies only): the LPR of a potential trained like real "
                                "ones. Computes SOAP gradients of every atom.")
        force_weight = None
        if forces:
            force_weight = st.number_input(
                "Force weight (A^2/atom^2)", min_value=0.0,
                max_value=pipeline.FORCE_WEIGHT_RANGE[1],
                value=pipeline.DEFAULT_FORCE_WEIGHT, format="%g", key="force_weight",
                help="lambda_F of the squared force errors (eV/A) against energies per atom; "
                     "the default makes forces and energies add about equal curvature.")
    if label in sources:
        qp["dataset"] = label
    else:  # an upload lives in this session only: a link to it cannot name it
        qp.pop("dataset", None)
    current = Settings(source=source, label=label, preset=key,
                       spec=pipeline.ModelSpec(kind=st.session_state["model_kind"],
                                               force_weight=force_weight))
    st.session_state[_SETTINGS] = current  # the split controls may fail: keep a value
    if label in registry:
        current = _with_split(current, registry)
    else:
        st.session_state[_SPLIT_SHOWN] = None
    st.session_state[_SETTINGS] = current
    return current


# --------------------------------------------------------------------------- features


def feature_options(source: str) -> dict[str, str | None]:
    """Feature sources usable on dataset ``source``: label -> key
    (:func:`lprviz.sources.from_key`), with None for SOAP (its preset is chosen apart).

    SOAP, every numeric per-atom array of the file, and the installed pretrained backbones:
    the one list the sidebar and Compare offer.
    """
    try:
        arrays = feature_sources.array_names(caches.dataset(source).frames)
    except InputError:  # the dataset's own error shows on the page
        arrays = []
    options: dict[str, str | None] = {"SOAP": None}
    options.update({f"per-atom array '{name}'": f"array:{name}" for name in arrays})
    names = feature_sources.backbone_names()
    usable = [b for b in names if feature_sources.backbone_unavailable(b) is None]
    options.update({feature_sources.BACKBONE_LABELS.get(b, b): b for b in usable})
    return options


def model_kinds() -> list[str]:
    """Readout models usable here (:data:`lprviz.pipeline.MODEL_KINDS`; "nn" needs torch)."""
    return [k for k in pipeline.MODEL_KINDS if k != "nn" or nn.torch_missing() is None]


def _features_choice(source: str) -> str:
    """Draw the "Features" choice (and the SOAP preset for SOAP); return the source's key
    (:func:`lprviz.sources.from_key`)."""
    options = feature_options(source)
    if st.session_state.get("features_label") not in options:
        st.session_state["features_label"] = "SOAP"
    choice = st.selectbox("Features", list(options), key="features_label",
                          help="SOAP computed here, a numeric per-atom array of your file "
                               "(e.g. descriptors or latent features of another model), or "
                               "the last-layer features of a pretrained potential.")
    if options[choice] is not None:
        return options[choice]
    st.selectbox("SOAP preset", list(features.SOAP_PRESETS), key="soap_preset",
                 help="Cutoff 5 A sees second neighbours, which is what separates a "
                      "surface atom from bulk; 'fast' is coarser.")
    return st.session_state["soap_preset"]


def computed_note(key: str, kind: str) -> str | None:
    """What the LPR of (feature source ``key``, model ``kind``) is, for a frozen backbone or
    the nn model (None for a readout on SOAP or a file's array: nothing to add)."""
    source = feature_sources.from_key(key)
    if source.kind not in ("soap", "array"):
        return (f"{source.label}: for a frozen backbone, the LPR is that of the readout "
                "refit on the chosen training set.")
    if kind == "nn":
        return ("nn: the LLPR of a network trained here on the training set; the LPR is "
                "that of its readout refit on the chosen training set.")
    return None


def _features_caption(key: str, kind: str) -> None:
    """One line saying what is computed, and how to add the neural-network sources."""
    note = computed_note(key, kind)
    if note is not None:
        st.caption(note)
    missing = [source.label for source in map(feature_sources.FeatureSource,
                                              feature_sources.backbone_names())
               if feature_sources.backbone_unavailable(source.kind) is not None]
    if nn.torch_missing() is not None:
        missing.append("the nn model")
    if missing:
        st.caption(f"{', '.join(missing)}: pip install 'lprviz[nn]'")


# --------------------------------------------------------------------------- user data split


def _tag(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()[:8]


def _on_test_upload(source: str) -> None:
    """Test-file uploader callback: store and check the file; the split then uses it."""
    up = st.session_state.get(f"split_test_file_{_tag(source)}")
    if up is None:
        return
    registry: dict[str, str] = st.session_state.setdefault("uploads", {})
    path = ""
    try:
        path = uploads.save_upload(up.name, up.getvalue())
        if path == source:
            raise InputError(f"{up.name}: the same content as the training file; choose "
                             "another file as the test set")
        caches.dataset(path)  # a bad test file fails here, in one line naming it
    except InputError as exc:
        st.session_state["_upload_error"] = uploads.user_message(str(exc))
        if path and path not in registry.values():
            uploads.discard(Path(path))
        return
    for label in [k for k, p in registry.items() if p == path]:
        del registry[label]
    registry[up.name] = path  # offered as a dataset too; messages map it to its name
    st.session_state[f"split_test_{_tag(source)}"] = up.name


def _with_split(current: Settings, registry: dict[str, str]) -> Settings:
    """Draw the train/test split of an upload (kept per file in the session, across pages
    and dataset switches) and return the settings of the split dataset."""
    source, tag = current.source, _tag(current.source)
    stored: dict[str, Split] = st.session_state.setdefault("_splits", {})
    before = stored.get(source, Split())
    keys = {"kind": f"split_kind_{tag}", "fraction": f"split_fraction_{tag}",
            "seed": f"split_seed_{tag}", "groups": f"split_groups_{tag}",
            "test_label": f"split_test_{tag}"}
    # Widgets not drawn on a run (another dataset was shown) lose or keep stale values, so
    # they restart from the file's stored split whenever this file comes back into view.
    if st.session_state.get(_SPLIT_SHOWN) != source:
        for field, key in keys.items():
            value = getattr(before, field)
            st.session_state[key] = list(value) if field == "groups" else value
    st.session_state[_SPLIT_SHOWN] = source
    ds = caches.dataset(source)
    with st.sidebar:
        kind = st.selectbox("Train/test split of your file", SPLITS, key=keys["kind"],
                            help=_SPLIT_HELP)
        if kind == "random fraction":
            c1, c2 = st.columns(2)
            c1.number_input("test fraction", 0.05, 0.95, step=0.05, key=keys["fraction"])
            c2.number_input("seed", 0, 10**6, key=keys["seed"])
        elif kind == "by group":
            st.multiselect("Test groups", list(dict.fromkeys(str(g) for g in ds.groups)),
                           key=keys["groups"],
                           help="Structures of these groups are the test set.")
        elif kind == "second file":
            st.file_uploader("Test set file (extxyz / mlearn JSON)", type=uploads.UPLOAD_TYPES,
                             key=f"split_test_file_{tag}", on_change=_on_test_upload,
                             args=(source,))
    test_label = st.session_state[keys["test_label"]]
    if test_label not in registry or registry[test_label] == source:
        test_label = ""
    split = Split(kind=kind, fraction=float(st.session_state[keys["fraction"]]),
                  seed=int(st.session_state[keys["seed"]]),
                  groups=tuple(st.session_state[keys["groups"]]), test_label=test_label)
    if split != before:
        stored[source] = split
        forget_training_frames(source)  # the default training set follows the new split
    if kind == "second file":
        if not test_label:
            st.sidebar.caption("Upload the test set file: until then every labelled "
                               "structure trains.")
            return replace(current, split=replace(split, kind=SPLITS[0]))
        st.sidebar.caption(plain_text(f"Test set: {test_label}"))
        return replace(current, source=caches.combined_source(source, registry[test_label]),
                       label=f"{current.label} + {test_label}", split=split)
    return replace(current, split=split)


# --------------------------------------------------------------------------- alpha


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
        st.query_params["alpha"] = f"{alpha():.3g}"


def alpha() -> float:
    """The session's alpha (also on pages that draw no slider)."""
    return float(10 ** st.session_state.get("alpha_log10", DEFAULT_ALPHA_LOG10))


def alpha_slider(*, label: str = "Regularisation alpha (log10)") -> float:
    """The log-scale alpha slider (one value for every page, mirrored in the URL)."""
    lo, hi = ALPHA_LOG10_RANGE
    st.session_state.setdefault("alpha_log10", DEFAULT_ALPHA_LOG10)
    st.slider(label, lo, hi, step=ALPHA_LOG10_STEP, key="alpha_log10", format="%.2f",
              help="Larger alpha raises every LPR (toward alpha/|x|^2) at the cost of accuracy.")
    value = alpha()
    st.query_params["alpha"] = f"{value:.3g}"
    return value


# --------------------------------------------------------------------------- training set


def default_training_frames(current: Settings) -> tuple[int, ...]:
    """The default training set among labelled frames: the upload's random or by-group split
    (its non-test frames); else the source's own splits (its ``"train"`` frames: mlearn, a
    second test file, a file's ``split`` info); else every frame of an upload; else
    :data:`DEFAULT_PRESET`, or half the frames (:data:`FALLBACK_PRESET`, seeded) when it
    picks all labelled frames or none (a dataset of bulk structures only, or of defects
    only, would otherwise have no test set); all labelled frames when a choice picks
    none."""
    ds = caches.dataset(current.source)
    labelled = np.asarray(ds.has_energy, dtype=bool)
    if not labelled.any():
        raise InputError(f"{current.label}: no structure has an energy, so nothing can be "
                         "trained on; add energies (or pick another dataset)")
    split = current.split
    if split is not None and split.kind == "random fraction":
        rule = selection.TrainingRule(fraction=split.fraction, seed=split.seed)
        mask = ~selection.apply_rule(rule, ds.groups, frame_numbers(current.source))
    elif split is not None and split.kind == "by group":
        mask = ~np.isin(ds.groups, split.groups)
    elif (np.asarray(ds.splits) == "train").any():
        mask = np.asarray(ds.splits) == "train"
    elif split is not None:
        mask = np.ones(len(ds.frames), dtype=bool)
    else:
        numbers = frame_numbers(current.source)
        mask = selection.preset_mask(DEFAULT_PRESET, ds.groups, numbers)
        if labelled.sum() > 1 and not ((labelled & ~mask).any() and (labelled & mask).any()):
            mask = selection.preset_mask(FALLBACK_PRESET, ds.groups, numbers, fraction=0.5)
    mask &= labelled
    if split is not None and split.kind in ("random fraction", "by group") and not mask.any():
        raise InputError(f"{current.label}: the train/test split leaves no labelled structure "
                         "to train on; hold out fewer structures")
    return tuple(int(i) for i in np.flatnonzero(mask if mask.any() else labelled))


def training_frames(current: Settings, *, key: str = "train") -> tuple[int, ...]:
    """The current training set (sorted frame indices) of the dataset; default
    :func:`default_training_frames`."""
    store: dict = st.session_state.setdefault(key, {})
    if current.source not in store:
        store[current.source] = default_training_frames(current)
    return store[current.source]


def forget_training_frames(source: str, *, key: str = "train") -> None:
    """Drop the session's training set of ``source`` (the next read gives the default) and
    start the Training set page's table afresh."""
    st.session_state.setdefault(key, {}).pop(source, None)
    new_training_table(source)


def new_training_table(source: str) -> None:
    """New version of the Training set page's table: it restarts from the current set."""
    versions = st.session_state.setdefault("editor_version", {})
    versions[source] = versions.get(source, 0) + 1


def set_training_frames(current: Settings, frames, *, key: str = "train") -> None:
    """Replace the current training set of the dataset (frames without an energy, which
    cannot be trained on, are left out)."""
    labelled = np.asarray(caches.dataset(current.source).has_energy, dtype=bool)
    st.session_state.setdefault(key, {})[current.source] = tuple(
        sorted(int(i) for i in frames if labelled[int(i)]))


def frame_numbers(source: str) -> list[np.ndarray]:
    """Atomic numbers of each frame of ``source``."""
    return [a.numbers for a in caches.dataset(source).frames]


def current_results(current: Settings, alpha: float, train: tuple[int, ...] | None = None,
                    reference: tuple[int, ...] | None = None) -> pipeline.Results:
    """Results of the current (or given) training set at ``alpha``."""
    train = training_frames(current) if train is None else train
    if not train:
        raise InputError("training set: empty; include at least one structure")
    return caches.results(current.source, current.preset, train, current.spec, reference,
                          alpha, grid_alphas=ALPHA_POSITIONS)

