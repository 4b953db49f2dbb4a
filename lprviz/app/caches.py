"""The app's caches: one per concept, each bounded by bytes, shared by every session.

=================  ==========================================  ===============================
cache              holds (key starts with the dataset source)  bound (``LPRVIZ_APP_CACHE_MB``)
=================  ==========================================  ===============================
``DATASETS``       :class:`lprviz.datasets.Dataset`             1/8 of the budget
``DESCRIPTORS``    :class:`lprviz.features.Descriptors`         3/8
``FITS``           :class:`lprviz.pipeline.Fit` (factorisation,  3/8
                   float32 projections of every atom)
``DERIVED``        results per alpha, alpha grids (every slider  1/8
                   position), coordination, maps, alpha
                   sweeps, committees, force row blocks
=================  ==========================================  ===============================

The budget is ``LPRVIZ_APP_CACHE_MB`` for the whole server (default: a quarter of the
machine's memory, at least 2048 MB; 6 GB on a 24 GB machine, enough for the float32
descriptors of 100k atoms (d = 1470: 0.56 GB) and three fits of them (<= 0.6 GB each; less
with fewer training structures than features, see ``Fit.thin``)). A cache evicts
its least recently used entries when a new one would exceed its share; an entry larger than
the whole share is returned but not kept. Sizes are measured (:func:`nbytes`: the numpy
arrays an object holds), not guessed. The library's disk cache of descriptors
(:mod:`lprviz.features`) is the only other cache: it survives restarts; this one does not.

Each key is computed once even when several sessions ask at the same time (a lock per key),
and the computation runs in the asking session's script, so it can draw its own progress
(``st.spinner`` naming the step, a progress bar while featurising). Entries made from an
uploaded file are dropped with :func:`release` when the upload goes.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

import numpy as np
import pandas as pd
import streamlit as st

from lprviz import datasets, features, pipeline, sources, validation

T = TypeVar("T")

def default_budget_mb() -> float:
    """A quarter of the machine's physical memory in MB, at least 2048."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):  # not POSIX
        total = 8192.0
    return max(2048.0, total / 4)


def nbytes(obj: object, _seen: set[int] | None = None) -> int:
    """Bytes of the numpy arrays reachable from ``obj`` (dataclasses, dicts, sequences,
    ``ase.Atoms``, objects with ``__dict__``), each array counted once; 64 bytes for any
    other leaf."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        base = obj.base if isinstance(obj.base, np.ndarray) else None
        if base is not None:  # a view: count the memory it keeps alive, once
            return nbytes(base, seen)
        return int(obj.nbytes)
    if isinstance(obj, (str, bytes, int, float, bool, type(None))):
        return 64
    if isinstance(obj, dict):
        return 64 + sum(nbytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return 64 + sum(nbytes(v, seen) for v in obj)
    if dataclasses.is_dataclass(obj):
        return 64 + sum(nbytes(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    if hasattr(obj, "__dict__"):
        return 64 + sum(nbytes(v, seen) for v in vars(obj).values())
    return 64


class ByteCache:
    """A thread-safe LRU of computed objects bounded by their total :func:`nbytes`.

    Parameters
    ----------
    name : str
        What it holds (shown by :func:`usage`).
    share : float
        Its fraction of the server's budget (``LPRVIZ_APP_CACHE_MB``).
    """

    def __init__(self, name: str, share: float) -> None:
        self.name = name
        self.share = share
        self._entries: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}

    @property
    def max_bytes(self) -> int:
        """This cache's bound in bytes (read from the environment each time)."""
        budget = float(os.environ.get("LPRVIZ_APP_CACHE_MB") or default_budget_mb())
        return int(budget * self.share * 2**20)

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        with self._lock:
            return sum(size for _, size in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The cached value of ``key``, computing (once) and storing it on a miss."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key][0]  # type: ignore[return-value]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # another session computing the same key: wait for it
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    return self._entries[key][0]  # type: ignore[return-value]
            try:
                value = compute()
            finally:
                with self._lock:
                    self._key_locks.pop(key, None)
            self._store(key, value)
            return value

    def _store(self, key: Hashable, value: object) -> None:
        size, limit = nbytes(value), self.max_bytes
        if size > limit:
            return  # larger than the whole share: used once, not kept
        with self._lock:
            self._entries[key] = (value, size)
            total = sum(s for _, s in self._entries.values())
            while total > limit and len(self._entries) > 1:
                _, (_, freed) = self._entries.popitem(last=False)
                total -= freed

    def discard(self, keep: Callable[[Hashable], bool]) -> int:
        """Drop every entry whose key ``keep`` rejects; return how many."""
        with self._lock:
            gone = [k for k in self._entries if not keep(k)]
            for k in gone:
                del self._entries[k]
        return len(gone)

    def clear(self) -> None:
        """Drop everything."""
        with self._lock:
            self._entries.clear()


DATASETS = ByteCache("datasets", 1 / 8)
DESCRIPTORS = ByteCache("descriptors", 3 / 8)
FITS = ByteCache("fits", 3 / 8)
DERIVED = ByteCache("results and derived arrays", 1 / 8)
ALL = (DATASETS, DESCRIPTORS, FITS, DERIVED)


def usage() -> dict[str, tuple[int, int, int]]:
    """Per cache: (entries, bytes held, bound in bytes)."""
    return {c.name: (len(c), c.nbytes, c.max_bytes) for c in ALL}


def release(source: str) -> None:
    """Drop every entry computed from ``source`` (an upload that went away), also from
    combined sources it is part of."""
    for cache in ALL:
        cache.discard(lambda key: source not in source_parts(key[0]))


def clear() -> None:
    """Drop every entry of every cache (tests)."""
    for cache in ALL:
        cache.clear()


def _is_upload(source: str) -> bool:
    from lprviz.app import uploads

    return uploads.is_upload(source)


# --------------------------------------------------------------------------- sources

# A source is a dataset name or a stored upload's path, or two of them joined by this
# separator: a training file and its test file (no stored path or dataset name holds a
# newline). Every cache key starts with the source, so release() finds both files' entries.
_PART_SEPARATOR = "\n"


def combined_source(train: str, test: str) -> str:
    """The source of ``train``'s structures followed by ``test``'s as its test set."""
    return f"{train}{_PART_SEPARATOR}{test}"


def source_parts(source: str) -> list[str]:
    """The dataset names / stored paths a source is made of (one, or training and test)."""
    return str(source).split(_PART_SEPARATOR)


def _display_name(source: str) -> str | None:
    from lprviz.app import uploads

    return uploads.display_name(source)


# --------------------------------------------------------------------------- cached steps


def dataset(source: str) -> datasets.Dataset:
    """The dataset named (or stored at) ``source``; an upload is named after the user's file
    (:func:`lprviz.app.uploads.display_name`); a combined source is
    :func:`lprviz.datasets.combine` of its training and test parts."""
    def load() -> datasets.Dataset:
        with st.spinner("Loading and checking the dataset..."):
            parts = [datasets.load(part, label=_display_name(part))
                     for part in source_parts(source)]
            return parts[0] if len(parts) == 1 else datasets.combine(*parts)

    return DATASETS.get((source,), load)


def descriptors(source: str, preset: str) -> features.Descriptors:
    """Per-atom features of every atom of ``source``: ``preset`` is the feature source's key
    (:func:`lprviz.sources.from_key`: a SOAP preset, ``"array:NAME"``, a backbone); a
    progress bar while featurising.

    Kept as float32 (half the server's largest array: 0.56 instead of 1.12 GiB at 100k
    atoms, d = 1473); the linear model projects them in float32 (a third of the time of the
    largest product of a training-set change), everything else computes in float64 from
    these rounded values. Measured on emt-alloys against float64 descriptors: LPR within a
    relative 4e-6 at alpha >= 1e-4 and 3e-5 at 1e-8, local energies within 3e-5 eV (the
    cached float32 projections alone give 1e-5 and 1e-6 eV); with the float32 projection
    product (primal route) 7.5e-6 and 7e-5, local energies unchanged.
    """
    def compute() -> features.Descriptors:
        ds = dataset(source)
        features_source, what = sources.from_key(preset), sources.key_label(preset)
        bar = st.progress(0.0, text=f"Featurising {ds.n_atoms} atoms ({what})...")

        def progress(done: int, total: int) -> None:
            bar.progress(min(1.0, done / max(total, 1)),
                         text=f"Featurising ({what}): {done}/{total} atoms")

        try:
            # An upload's descriptors stay out of the disk cache: it would outlive the session.
            desc = sources.descriptors_for(ds, features_source, progress=progress,
                                           cache=not _is_upload(source))
            return dataclasses.replace(desc, values=desc.values.astype(np.float32))
        finally:
            bar.empty()

    return DESCRIPTORS.get((source, preset), compute)


def fit(source: str, preset: str, train: tuple[int, ...], spec: pipeline.ModelSpec,
        reference: tuple[int, ...] | None = None) -> pipeline.Fit:
    """Everything of the model that does not depend on alpha, for a training set (frame
    indices); with ``reference``, in that training set's feature space (honest comparisons:
    its scale and, for the sparse kernel, its active environments)."""
    if reference is not None and tuple(reference) == tuple(train):
        reference = None

    def compute() -> pipeline.Fit:
        ds = dataset(source)
        desc = descriptors(source, preset)
        ref = fit(source, preset, reference, spec) if reference is not None else None
        mask = np.zeros(len(ds.frames), dtype=bool)
        mask[list(train)] = True
        what = f"{len(train)} training structures"
        step = "Training the network and factorising" if spec.kind == "nn" else "Factorising"
        with st.spinner(f"{step} the model of {what} ({spec.kind})..."):
            if ref is None:
                return pipeline.prepare(ds, desc, mask, spec)
            return pipeline.prepare(ds, desc, mask, spec, scale=ref.scale, nystrom=ref.nystrom,
                                    nn=ref.nn)

    return FITS.get((source, preset, tuple(train), spec, reference), compute)


def alpha_grid(source: str, preset: str, train: tuple[int, ...], spec: pipeline.ModelSpec,
               reference: tuple[int, ...] | None,
               alphas: tuple[float, ...]) -> pipeline.AlphaGrid:
    """:func:`lprviz.pipeline.alpha_grid` of the cached fit: every slider position's per-atom
    values from one pass over the projections (41 positions x 100k atoms: ~38 MB)."""
    f = fit(source, preset, train, spec, reference)

    def compute() -> pipeline.AlphaGrid:
        with st.spinner(f"LPR at the {len(alphas)} positions of the alpha slider..."):
            return pipeline.alpha_grid(f, alphas)

    key = (source, "grid", preset, tuple(train), spec, reference, tuple(alphas))
    grid = DERIVED.get(key, compute)
    if grid.owner() is not f:  # the fit was evicted and rebuilt since: a grid of its own
        DERIVED.discard(lambda k: k != key)
        grid = DERIVED.get(key, compute)
    return grid


def results(source: str, preset: str, train: tuple[int, ...], spec: pipeline.ModelSpec,
            reference: tuple[int, ...] | None, alpha: float,
            grid_alphas: tuple[float, ...] | None = None) -> pipeline.Results:
    """:func:`lprviz.pipeline.evaluate` of the cached fit at ``alpha``; when ``alpha`` is one
    of ``grid_alphas`` (the slider's positions), read from the cached :func:`alpha_grid`."""
    def compute() -> pipeline.Results:
        f = fit(source, preset, train, spec, reference)
        on_grid = grid_alphas is not None and pipeline.alpha_index(grid_alphas,
                                                                   alpha) is not None
        # A grid the cache could not keep would be recomputed per alpha (41 columns each
        # time): then one pass per alpha is cheaper.
        grid_bytes = len(grid_alphas or ()) * len(f.structure_index) * (
            2 * f.projections.itemsize + 1)
        on_grid = on_grid and grid_bytes <= DERIVED.max_bytes // 2
        grid = (alpha_grid(source, preset, train, spec, reference, grid_alphas) if on_grid
                else None)
        return pipeline.evaluate(f, alpha, grid=grid)

    return DERIVED.get((source, "results", preset, tuple(train), spec, reference, alpha),
                       compute)


def rank_agreement(source: str, models: tuple, train: tuple[int, ...], alpha: float,
                   lpr_a: np.ndarray, lpr_b: np.ndarray, groups: np.ndarray):
    """:func:`lprviz.comparison.rank_agreement` of two models' LPR (Compare), kept per
    ``models`` (each model's feature key and spec), training set and alpha: at 100k atoms
    its sorts cost ~8 float32 ``P @ w`` passes, paid again on every rerun of the page at the
    same alpha (another widget) or on coming back to an alpha."""
    from lprviz import comparison

    return DERIVED.get((source, "rank_agreement", models, tuple(train), alpha),
                       lambda: comparison.rank_agreement(lpr_a, lpr_b, groups))


def force_pool(source: str, preset: str, train: tuple[int, ...], spec: pipeline.ModelSpec,
               pool: tuple[int, ...]):
    """:func:`lprviz.suggest.force_pool` of a force-trained fit's candidates (Improve), as
    float32 (4 d bytes per row: 83 MB for the 14k rows of emt-alloys' 200 test frames at
    d = 1473); the same candidates at another alpha or target reuse it."""
    from lprviz import suggest

    def compute():
        f = fit(source, preset, train, spec)
        with st.spinner(f"Projecting the energy and force rows of {len(pool)} candidates..."):
            return suggest.force_pool(f, dataset(source), pool, dtype=np.float32)

    return DERIVED.get((source, "force_pool", preset, tuple(train), spec, tuple(pool)),
                       compute)


def atom_categories(source: str) -> dict[str, pd.Categorical]:
    """Group and chemical symbol of every atom as Categoricals (categories in order of first
    appearance), built once per dataset: an alpha change then never relabels every atom."""
    def compute() -> dict[str, pd.Categorical]:
        from ase.data import chemical_symbols

        ds = dataset(source)
        labels = {"group": ds.atom_groups,
                  "species": np.asarray(chemical_symbols)[np.asarray(ds.atom_numbers)]}
        return {k: pd.Categorical(v, categories=pd.unique(v)) for k, v in labels.items()}

    return DERIVED.get((source, "atom_categories"), compute)


def coordination(source: str) -> np.ndarray:
    """Coordination number of every atom (hover labels); the dataset's own if it has one."""
    def compute() -> np.ndarray:
        ds = dataset(source)
        if all("coordination" in a.arrays for a in ds.frames):
            return np.concatenate([a.arrays["coordination"] for a in ds.frames]).astype(int)
        with st.spinner("Counting neighbours..."):
            return pipeline.coordination(ds.frames, cutoff=coordination_cutoff(source))

    return DERIVED.get((source, "coordination"), compute)


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


def environment_map(source: str, preset: str) -> np.ndarray:
    """2D PCA coordinates of every atom's descriptor (the environment map)."""
    from lprviz.maps import pca_2d

    def compute() -> np.ndarray:
        with st.spinner("Projecting environments to 2D (PCA)..."):
            return pca_2d(descriptors(source, preset).values)

    return DERIVED.get((source, "map", preset), compute)


def group_lpr_sweep(source: str, preset: str, train: tuple[int, ...], spec: pipeline.ModelSpec,
                    alphas: tuple[float, ...], grid_alphas: tuple[float, ...] | None = None,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Median LPR of each group's atoms at each of ``alphas``: (group labels, (n_alphas,
    n_groups) medians), from the cached :func:`alpha_grid` of ``grid_alphas`` when it holds
    them all, else one product over the fit's projections (only the medians are kept, so an
    alpha change costs nothing here)."""
    def compute() -> tuple[np.ndarray, np.ndarray]:
        if grid_alphas is not None:
            grid = alpha_grid(source, preset, train, spec, None, grid_alphas)
            rows = [grid.index(a) for a in alphas]
            if None not in rows:  # every alpha is a slider position: no pass
                return datasets.per_group_median(grid.lpr[rows], dataset(source).atom_groups)
        f = fit(source, preset, train, spec)
        with st.spinner(f"LPR at {len(alphas)} values of alpha..."):
            sweep = pipeline.lpr_sweep(f, alphas)
            return datasets.per_group_median(sweep, dataset(source).atom_groups)

    return DERIVED.get((source, "sweep", preset, tuple(train), spec, tuple(alphas)), compute)


def tradeoff(source: str, preset: str, train: tuple[int, ...], spec: pipeline.ModelSpec,
             alphas: tuple[float, ...]) -> validation.Tradeoff:
    """Test error vs median LPR over ``alphas`` (the accuracy-rigidity trade-off)."""
    def compute() -> validation.Tradeoff:
        with st.spinner(f"Fitting at {len(alphas)} values of alpha..."):
            return validation.tradeoff(fit(source, preset, train, spec), alphas)

    return DERIVED.get((source, "tradeoff", preset, tuple(train), spec, tuple(alphas)), compute)


def committee(source: str, preset: str, train: tuple[int, ...], spec: pipeline.ModelSpec,
              alpha: float, n_models: int) -> validation.CommitteeCheck:
    """Committee of ridge models on random 70 % subsets: spread of local predictions."""
    def compute() -> validation.CommitteeCheck:
        ds = dataset(source)
        desc = descriptors(source, preset)
        model = fit(source, preset, train, spec)
        with st.spinner(f"Training a committee of {n_models} models..."):
            return validation.committee_check(
                model.model_features(desc.values, desc.atom_numbers), ds.structure_index,
                ds.energies, model.train_mask, alpha, solver=model.solver, n_models=n_models,
                seed=0, force_gradients=model.force_gradients, forces=model.forces,
                force_weight=model.force_weight,
            )

    return DERIVED.get((source, "committee", preset, tuple(train), spec, alpha, n_models),
                       compute)


def composition_lesson(source: str, preset: str, alpha: float):
    """:func:`lprviz.lessons.composition_lesson` of ``source`` (Learn, experiment 2)."""
    from lprviz import lessons

    def compute():
        ds, desc = dataset(source), descriptors(source, preset)
        with st.spinner("Training on one stoichiometry and on varied compositions..."):
            return lessons.composition_lesson(ds, desc, alpha=alpha)

    return DERIVED.get((source, "composition_lesson", preset, alpha), compute)


def calibration(source: str, preset: str, train: tuple[int, ...], spec: pipeline.ModelSpec,
                alpha: float, n_models: int = 0):
    """Calibrated uncertainties of the model at ``alpha``: fitted to the held-out structures'
    errors (:func:`lprviz.calibration.calibrate`), or with ``n_models`` > 0 to the spread of
    a :func:`committee` of that size (:func:`lprviz.calibration.calibrate_to_spread`)."""
    from lprviz.calibration import calibrate, calibrate_to_spread

    def compute():
        model = fit(source, preset, train, spec)
        if n_models > 0:
            check = committee(source, preset, train, spec, alpha, n_models)
            return calibrate_to_spread(model, check.spread, check.atoms)
        return calibrate(model, results(source, preset, train, spec, None, alpha))

    return DERIVED.get((source, "calibration", preset, tuple(train), spec, alpha, n_models),
                       compute)
