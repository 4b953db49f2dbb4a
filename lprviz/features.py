"""SOAP power-spectrum descriptors (featomic) with a content-hash cache.

Every atom gets a vector of the same width ``d`` whatever its species or neighbours: the
power spectrum is densified over *all* pairs of a fixed species list (absent pairs are zero),
so training and test descriptors of one dataset can always be stacked. Rows are in dataset
atom order (frames concatenated, atoms in frame order).

Cache: a structure featurised once with given hyper-parameters and species is never
featurised again in this process (memory cache, per structure), and a whole call is stored on
disk under the user cache directory (``platformdirs.user_cache_dir("lprviz")/soap``, or
``$LPRVIZ_CACHE_DIR/soap``) as ``.npz`` files read with ``allow_pickle=False``.

A disk entry stores its own key and a SHA-256 of its array (dtype, shape, bytes). An entry
that cannot be read, or whose key or checksum does not match, is deleted and recomputed, so a
truncated or bit-flipped file costs one recomputation, never an error on every later run.
Entries are written to a temporary file that is moved into place only when complete and
removed on any failure (a full disk, Ctrl-C); temporary files older than an hour (left by a
killed process) are removed on the next write.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import ase
import numpy as np
from ase.data import chemical_symbols

from lprviz.cachefiles import remove_stale
from lprviz.errors import InputError
from lprviz.limits import (
    cell_heights,
    check_number,
    first_over_search_limit,
    get_limits,
)

__all__ = [
    "SOAP_PRESETS",
    "Descriptors",
    "SoapHypers",
    "cache_dir",
    "clear_memory_cache",
    "compute_soap",
    "import_featomic",
    "structure_key",
]


@dataclass(frozen=True)
class SoapHypers:
    """Hyper-parameters of the SOAP power spectrum.

    Parameters
    ----------
    cutoff : float
        Radius of the atomic environment, in Angstrom. 5 A sees second and third
        neighbours in bulk solids, which is what separates a surface atom from an
        under-coordinated atom of a liquid (with 2.85 A the two look alike and the
        surface-vs-bulk LPR contrast on real Si nearly vanishes).
    max_radial : int
        Largest radial index of the GTO basis, *inclusive* (featomic 0.6 convention:
        ``max_radial + 1`` radial functions).
    max_angular : int
        Largest angular channel ``l`` (inclusive).
    gaussian_width : float
        Width of the Gaussian smearing each neighbour, in Angstrom.
    cutoff_smoothing : float
        Width of the shifted-cosine switching function before the cutoff, in Angstrom.

    Raises
    ------
    InputError
        A value outside :attr:`RANGES` (or not a number), or ``cutoff_smoothing >= cutoff``.

    Notes
    -----
    The width per species pair is ``(max_radial + 1)**2 * (max_angular + 1)`` (245 for the
    defaults); the total width multiplies that by ``S (S + 1) / 2`` for ``S`` species.
    """

    cutoff: float = 5.0
    max_radial: int = 6
    max_angular: int = 4
    gaussian_width: float = 0.5
    cutoff_smoothing: float = 0.5

    #: Accepted range of each field (inclusive; A for lengths). Wide enough for any
    #: published SOAP model; outside it featomic fails inside its own code or the work
    #: explodes (``max_radial=10000``).
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "cutoff": (1.0, 20.0),
        "max_radial": (0, 20),
        "max_angular": (0, 16),
        "gaussian_width": (0.05, 5.0),
        "cutoff_smoothing": (0.0, 20.0),
    }

    def __post_init__(self) -> None:
        for name, (low, high) in self.RANGES.items():
            integer = name.startswith("max_")
            value = check_number(f"SOAP {name}", getattr(self, name), low, high,
                                 integer=integer, unit="" if integer else "A")
            object.__setattr__(self, name, value)  # plain int/float (hashing, JSON)
        if not self.cutoff_smoothing < self.cutoff:
            raise InputError(
                f"SOAP cutoff_smoothing: expected 0 <= width < cutoff, got {self.cutoff_smoothing}"
            )

    def featomic_hypers(self) -> dict:
        """Keyword arguments of ``featomic.SoapPowerSpectrum`` (featomic 0.6 layout)."""
        return {
            "cutoff": {
                "radius": float(self.cutoff),
                "smoothing": {"type": "ShiftedCosine", "width": float(self.cutoff_smoothing)},
            },
            "density": {"type": "Gaussian", "width": float(self.gaussian_width)},
            "basis": {
                "type": "TensorProduct",
                "max_angular": int(self.max_angular),
                "radial": {"type": "Gto", "max_radial": int(self.max_radial)},
            },
        }


#: Named hyper-parameter sets: ``"fast"`` for quick looks, ``"default"`` (the paper-like
#: surface/bulk contrast on real Si), ``"accurate"`` for more resolution at ~2.3x the width.
SOAP_PRESETS: dict[str, SoapHypers] = {
    "fast": SoapHypers(cutoff=4.5, max_radial=4, max_angular=3),
    "default": SoapHypers(),
    "accurate": SoapHypers(cutoff=5.0, max_radial=8, max_angular=6),
}


@dataclass
class Descriptors:
    """Per-atom descriptors of a list of structures.

    Attributes
    ----------
    values : numpy.ndarray of shape (n_atoms, d), float64
        One row per atom, dataset atom order.
    structure_index : numpy.ndarray of shape (n_atoms,), int
        Frame of each atom.
    atom_numbers : numpy.ndarray of shape (n_atoms,), int
        Atomic number of each atom.
    species : tuple of int
        The fixed, sorted species list the columns are built from.
    blocks : dict of str to numpy.ndarray of int
        Column indices per species pair (``"Cu-Cu"``, ``"Cu-Pt"``...) and per angular channel
        (``"l=0"``...), e.g. for component-wise LPR.
    hypers : SoapHypers or None
        Hyper-parameters used (None for features that are not SOAP, :mod:`lprviz.sources`).
    provenance : dict of str to str
        Where the features come from, for exported files (``{"features": "array",
        "features_array": "mace"}``; empty for :func:`compute_soap`, which means SOAP).
    """

    values: np.ndarray
    structure_index: np.ndarray
    atom_numbers: np.ndarray
    species: tuple[int, ...]
    blocks: dict[str, np.ndarray] = field(default_factory=dict)
    hypers: SoapHypers | None = field(default_factory=SoapHypers)
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        """Number of structures."""
        return int(self.structure_index.max()) + 1 if len(self.structure_index) else 0

    def per_structure(self) -> list[np.ndarray]:
        """Split ``values`` into a list of per-structure ``(n_atoms_A, d)`` arrays."""
        counts = np.bincount(self.structure_index, minlength=self.n_frames)
        return np.split(self.values, np.cumsum(counts)[:-1])


def cache_dir() -> Path:
    """Directory of the on-disk descriptor cache (``$LPRVIZ_CACHE_DIR/soap`` if set)."""
    root = os.environ.get("LPRVIZ_CACHE_DIR")
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("lprviz")
    return Path(root) / "soap"


# Per-structure memory cache: key -> (n_atoms, d) array. Bounded by total bytes (FIFO).
_MEMORY: OrderedDict[str, np.ndarray] = OrderedDict()
_MEMORY_MAX_BYTES = 1 << 30
_memory_bytes = 0


def clear_memory_cache() -> None:
    """Forget all descriptors held in memory (the disk cache is kept)."""
    global _memory_bytes
    _MEMORY.clear()
    _memory_bytes = 0


def _remember(key: str, values: np.ndarray) -> None:
    global _memory_bytes
    if key in _MEMORY or values.nbytes > _MEMORY_MAX_BYTES:
        return
    _MEMORY[key] = values
    _memory_bytes += values.nbytes
    while _memory_bytes > _MEMORY_MAX_BYTES:
        _, old = _MEMORY.popitem(last=False)
        _memory_bytes -= old.nbytes


def structure_key(atoms: ase.Atoms) -> bytes:
    """Identity of a structure for descriptor reuse: a hash of its numbers, positions, cell
    and periodicity (two frames with equal keys have equal descriptors at equal settings).
    """
    return _structure_hash(atoms)


def _structure_hash(atoms: ase.Atoms) -> bytes:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(atoms.positions, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(atoms.cell.array, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(atoms.pbc, dtype=np.bool_).tobytes())
    return h.digest()


_TEMP_SUFFIX = ".tmp.npz"


def _checksum(key: str, values: np.ndarray) -> str:
    """SHA-256 of an entry's key, dtype, shape and array bytes."""
    h = hashlib.sha256(f"{key}|{values.dtype.str}|{values.shape}".encode())
    h.update(np.ascontiguousarray(values).data)  # a view: no copy of the array
    return h.hexdigest()


def _read_entry(path: Path, key: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached array at ``path`` if it is intact and belongs to ``key``, else None.

    A damaged or foreign entry is deleted, so the caller's recomputation replaces it.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            values = np.asarray(data["values"])
            stored_key = str(data["key"])
            stored_sum = str(data["sha256"])
        if (values.dtype == np.float64 and values.shape == shape and stored_key == key
                and stored_sum == _checksum(key, values)):
            return values
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # unreadable: discarded below
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only cache: recompute every time rather than fail
    return None


def _write_entry(path: Path, key: str, values: np.ndarray) -> None:
    """Store ``values`` under ``path`` atomically; a failure leaves no file behind.

    OSError (a read-only or full disk) is swallowed: the cache must not break
    featurisation. The temporary file goes on any exit, including KeyboardInterrupt.
    """
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path.parent, f"*{_TEMP_SUFFIX}")
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=_TEMP_SUFFIX,
                                    dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, values=values, key=np.str_(key), sha256=np.str_(_checksum(key, values)))
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def import_featomic():
    """The ``featomic`` module, imported without torch unless torch is already loaded.

    metatensor (under featomic) imports torch when it can, only to recognise torch arrays,
    which lprviz never hands it: 1.1 s of a CLI run's start-up. Hiding torch during that
    one import makes metatensor fall back to numpy; torch stays importable afterwards (the
    nn model and the backbones import it themselves).
    """
    if "featomic" in sys.modules:
        return sys.modules["featomic"]
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]  # import torch -> ImportError
    try:
        import featomic
    finally:
        if hide and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return featomic


def _settings_hash(hypers: SoapHypers, species: tuple[int, ...]) -> bytes:
    featomic = import_featomic()

    # The featomic version is part of the key: a disk cache must not outlive an upgrade
    # that changes values or column order (the entry checksum only proves it is intact).
    payload = json.dumps({"hypers": asdict(hypers), "species": list(species), "v": 1,
                          "featomic": featomic.__version__})
    return hashlib.sha256(payload.encode()).digest()


def _layout(
    hypers: SoapHypers, species: tuple[int, ...]
) -> tuple[dict[tuple[int, int], int], np.ndarray, dict[str, np.ndarray]]:
    """Column layout: offset of each species pair, property ``l`` per column, blocks."""
    n_radial = hypers.max_radial + 1
    # featomic's property order within a pair block: l slowest, then n_1, n_2.
    l_of_prop = np.repeat(np.arange(hypers.max_angular + 1), n_radial * n_radial)
    width = len(l_of_prop)
    pairs = [(a, b) for i, a in enumerate(species) for b in species[i:]]
    offsets = {pair: k * width for k, pair in enumerate(pairs)}
    l_of_col = np.tile(l_of_prop, len(pairs))
    blocks: dict[str, np.ndarray] = {}
    for (a, b), off in offsets.items():
        blocks[f"{chemical_symbols[a]}-{chemical_symbols[b]}"] = np.arange(off, off + width)
    for ang in range(hypers.max_angular + 1):
        blocks[f"l={ang}"] = np.flatnonzero(l_of_col == ang)
    return offsets, l_of_prop, blocks


def _featomic_ready(atoms: ase.Atoms, cutoff: float) -> ase.Atoms:
    """A fully periodic copy featomic searches efficiently (descriptor unchanged).

    Mixed periodicity (slabs, wires) becomes fully periodic with each non-periodic cell
    vector replaced by an orthogonal one longer than the structure's extent plus twice the
    cutoff, so no periodic image enters any environment; a structure without periodicity
    gets such a box along x, y and z.
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    # what featomic reads, nothing else (Atoms.copy also deep-copies info and arrays)
    out = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell.array,
                    pbc=pbc)
    if pbc.all():
        return out
    if not pbc.any():
        # featomic searches a cell-less structure by comparing every pair of atoms (memory
        # ~32 bytes x n^2 / 2: a 20k-atom molecule aborts the process); boxed, it uses its
        # sub-cell search like any crystal.
        extent = np.ptp(atoms.positions, axis=0) + 2 * cutoff + 1.0
        out.set_cell(np.diag(extent))
        out.set_pbc(True)
        return out
    cell = atoms.cell.array.copy()
    periodic = [cell[i] for i in range(3) if pbc[i]]
    if len(periodic) == 2:
        normals = [np.cross(periodic[0], periodic[1])]
    else:  # one periodic axis: any orthonormal pair orthogonal to it
        axis = periodic[0] / np.linalg.norm(periodic[0])
        trial = np.eye(3)[int(np.argmin(np.abs(axis)))]
        first = np.cross(axis, trial)
        normals = [first, np.cross(axis, first)]
    free = [i for i in range(3) if not pbc[i]]
    for i, normal in zip(free, normals, strict=True):
        normal = normal / np.linalg.norm(normal)
        proj = atoms.positions @ normal
        cell[i] = normal * (np.ptp(proj) + 2 * cutoff + 1.0)
    out.set_cell(cell)
    out.set_pbc(True)
    return out


def _featomic_system(atoms: ase.Atoms, cutoff: float) -> ase.Atoms:
    """What featomic receives for ``atoms``: the frame itself when fully periodic (featomic
    reads only its numbers, positions and cell; a copy per frame cost ~60 us, 0.2 s per
    100k atoms), else its :func:`_featomic_ready` copy."""
    return atoms if np.all(atoms.pbc) else _featomic_ready(atoms, cutoff)


def _check_search(frames: Sequence[ase.Atoms], cutoff: float,
                  labels: Sequence[str]) -> list[ase.Atoms]:
    """Refuse a frame whose neighbour search would exceed ``Limits.max_search_pairs``.

    Estimated on the fully periodic frames featomic receives (:func:`_featomic_system`,
    returned for the featomic call), for every frame before the first featomic call: its
    search cannot be interrupted, and when an allocation fails it aborts the whole process.
    """
    ready = [_featomic_system(frame, cutoff) for frame in frames]
    over = first_over_search_limit([a.positions for a in ready],
                                   [a.cell.array for a in ready], cutoff)
    if over is not None:
        k, pairs, limit = over
        heights = ", ".join(f"{h:.3g}" for h in cell_heights(ready[k].cell.array, ready[k].pbc))
        raise InputError(
            f"{labels[k]}: a neighbour search at the SOAP cutoff {cutoff:g} A would examine "
            f"~{pairs:.2g} atom pairs (limit {limit:.2g}, LPRVIZ_MAX_SEARCH_PAIRS); cell "
            f"heights {heights} A, {len(ready[k])} atoms"
        )
    return ready


_CALCULATORS = threading.local()


def _soap_calculator(hypers: SoapHypers):
    """featomic's ``SoapPowerSpectrum`` of ``hypers``, made once per thread (building one
    takes ~8 ms: a run of 100k atoms in 4k-atom chunks paid 0.3 s for it). Per thread,
    because the app's sessions featurise concurrently; keyed by the class as well, so a
    replaced ``featomic.SoapPowerSpectrum`` (the tests' tripwire) is always called."""
    cls = import_featomic().SoapPowerSpectrum
    made = getattr(_CALCULATORS, "made", None)
    if made is None:
        made = _CALCULATORS.made = {}
    key = (cls, hypers)
    if key not in made:
        if len(made) >= 8:  # a few hyper-parameter sets are in use at any time
            made.clear()
        made[key] = cls(**hypers.featomic_hypers())
    return made[key]


def _featurise(
    ready: Sequence[ase.Atoms],
    hypers: SoapHypers,
    offsets: dict[tuple[int, int], int],
    l_of_prop: np.ndarray,
    out: np.ndarray,
    starts: np.ndarray,
) -> None:
    """Dense ``(n_atoms, d)`` SOAP of each frame (one featomic call for all frames), given
    fully periodic (:func:`_featomic_system`), written into
    ``out[starts[k] : starts[k] + len(ready[k])]``: featomic's blocks, and zeros where no
    block covers a row (a species pair the call's environments lack).

    Writing in place keeps one full-size array per call: a fresh array of 100k x 1470
    floats costs ~1 s of page faults on a shared virtual machine, more than featomic's
    own time for some chunks. Zeroing only the uncovered parts, not the whole rows
    beforehand, saves a pass over them (~6 ms per 4,000 atoms at d = 1470).
    """
    tensor = _soap_calculator(hypers).compute(list(ready))
    width = len(l_of_prop)
    starts = np.asarray(starts, dtype=np.int64)
    sizes = np.array([len(a) for a in ready], dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(sizes)])  # of each frame within this call
    rows = np.arange(first[-1]) + np.repeat(starts - first[:-1], sizes)  # in ``out``
    # pair blocks are consecutive, ``width`` columns each (_layout): block ``off // width``
    covered = np.zeros((int(first[-1]), len(offsets)), dtype=bool)
    for key, block in tensor.items():
        pair = (int(key["neighbor_1_type"]), int(key["neighbor_2_type"]))
        off = offsets[pair]
        props = block.properties.values
        if props.shape[0] != width or not np.array_equal(props[:, 0], l_of_prop):
            raise RuntimeError("unexpected featomic property layout")  # guards the column map
        samples = block.samples.values
        local = first[samples[:, 0]] + samples[:, 1]
        out[rows[local], off : off + width] = block.values
        covered[local, off // width] = True
    if not covered.all():
        for off in offsets.values():
            missing = rows[~covered[:, off // width]]
            if missing.size:
                out[missing, off : off + width] = 0.0


def compute_soap(
    frames: Sequence[ase.Atoms],
    hypers: SoapHypers | None = None,
    *,
    species: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cache: bool = True,
    chunk_atoms: int = 4000,
    names: Sequence[str] | None = None,
) -> Descriptors:
    """SOAP power spectrum of every atom, densified over all species pairs.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        Structures; periodic or not.
    hypers : SoapHypers, optional
        Hyper-parameters (``SoapHypers()`` by default).
    species : sequence of int, optional
        The fixed species list (atomic numbers). Defaults to the species present in
        ``frames``; pass the dataset's species so train and test descriptors match.
    progress : callable, optional
        Called as ``progress(done_atoms, total_atoms)`` after each chunk.
    cache : bool
        Use (and fill) the memory and disk caches.
    chunk_atoms : int
        Approximate number of atoms per featomic call.
    names : sequence of str, optional
        One name per frame for error messages (e.g. ``Dataset.names``: ``"<file>#<i>"``).

    Returns
    -------
    Descriptors
        ``values`` of shape ``(n_atoms, d)`` with ``d = S(S+1)/2 (max_radial+1)^2
        (max_angular+1)`` in dataset atom order.

    Raises
    ------
    InputError
        If a frame contains a species outside ``species`` or ``frames`` is empty; if the
        descriptor array would exceed ``Limits.max_array_bytes`` or a frame's neighbour
        search ``Limits.max_search_pairs`` (:mod:`lprviz.limits`; checked before featomic).
    """
    hypers = SoapHypers() if hypers is None else hypers
    frames = list(frames)
    if not frames:
        raise InputError("compute_soap: expected at least one structure, got none")
    present = sorted({int(z) for a in frames for z in a.numbers})
    species_t = tuple(sorted({int(z) for z in species})) if species is not None else tuple(present)
    unknown = set(present) - set(species_t)
    if unknown:
        bad = ", ".join(chemical_symbols[z] for z in sorted(unknown))
        raise InputError(f"structures contain species {bad} outside the species list {species_t}")

    offsets, l_of_prop, blocks = _layout(hypers, species_t)
    sizes = np.array([len(a) for a in frames], dtype=np.int64)
    total = int(sizes.sum())
    width = len(l_of_prop) * len(offsets)
    limit = get_limits().max_array_bytes
    if total * width * 8 > limit:
        raise InputError(
            f"SOAP of {total} atoms x {width} features ({len(species_t)} species) would take "
            f"{total * width * 8 / 2**30:.2g} GiB (limit {limit / 2**30:.2g} GiB, "
            "LPRVIZ_MAX_ARRAY_BYTES); use fewer atoms or species, or a smaller preset"
        )
    labels = list(names) if names is not None else [f"structure {i}" for i in range(len(frames))]
    if len(labels) != len(frames):
        raise InputError(f"compute_soap: {len(labels)} names for {len(frames)} structures")
    settings = _settings_hash(hypers, species_t)
    keys = [hashlib.sha256(settings + _structure_hash(a)).hexdigest() for a in frames]
    call_key = hashlib.sha256("".join(keys).encode()).hexdigest()

    disk_path = cache_dir() / f"{call_key}.npz" if cache else None
    values = _read_entry(disk_path, call_key, (total, width)) if disk_path else None
    if values is not None:
        if progress is not None:
            progress(total, total)
    else:
        starts = np.concatenate([[0], np.cumsum(sizes)])
        # filled in place, every row written below (no per-frame pieces joined; no
        # zeroing pass: _featurise zeroes what featomic leaves out)
        values = np.empty((total, width))
        rows = [slice(starts[i], starts[i + 1]) for i in range(len(frames))]
        # Each distinct structure once: memory hits copied in, repeats (equal keys) copied
        # from the first one's rows after featurisation.
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            held = _MEMORY.get(key) if cache else None
            if held is None:
                first.setdefault(key, i)
            else:
                values[rows[i]] = held
        todo = list(first.values())
        ready = dict(zip(todo, _check_search([frames[i] for i in todo], hypers.cutoff,
                                             [labels[i] for i in todo]), strict=True))
        done = total - int(sizes[todo].sum())
        if progress is not None:
            progress(done, total)
        chunk: list[int] = []
        chunk_atoms_now = 0
        for pos, i in enumerate(todo):
            chunk.append(i)
            chunk_atoms_now += int(sizes[i])
            if chunk_atoms_now >= chunk_atoms or pos == len(todo) - 1:
                _featurise([ready.pop(j) for j in chunk], hypers, offsets, l_of_prop, values,
                           starts[chunk])
                if cache:  # copies: a view would keep the whole array alive
                    for j in chunk:
                        _remember(keys[j], values[rows[j]].copy())
                done += chunk_atoms_now
                chunk, chunk_atoms_now = [], 0
                if progress is not None:
                    progress(done, total)
        for i, key in enumerate(keys):
            if key in first and first[key] != i:
                values[rows[i]] = values[rows[first[key]]]
        if disk_path is not None:
            _write_entry(disk_path, call_key, values)

    numbers = np.concatenate([a.numbers for a in frames]).astype(np.int64)
    return Descriptors(
        values=values,
        structure_index=np.repeat(np.arange(len(frames)), sizes),
        atom_numbers=numbers,
        species=species_t,
        blocks=blocks,
        hypers=hypers,
    )
