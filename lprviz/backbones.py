"""Last-layer features of pretrained universal potentials (CHGNet, SevenNet).

The last-layer prediction rigidity (LLPR; Bigi et al., Mach. Learn.: Sci. Technol. 5,
045018 (2024)) treats a network as a frozen feature map followed by a linear readout: with
``f_k`` the input of the final linear layer at atom ``k``, the energy is ``sum_k w . f_k``
(plus per-species constants), so the LPR machinery of :mod:`lprviz.rigidity` applies to
``f_k`` exactly as to SOAP. Which layer each model contributes (docs/backbones.md):

* ``"chgnet"`` -- CHGNet 0.3.0 (weights inside the ``chgnet`` wheel): the 64 inputs of the
  last ``Linear`` of ``model.mlp``, the atom-wise energy MLP; its output plus bias plus the
  AtomRef composition energy, averaged over atoms, is CHGNet's energy per atom.
* ``"sevenn"`` -- SevenNet-0 (11Jul2024; weights inside the ``sevenn`` wheel): the 64 inputs
  of ``reduce_hidden_to_energy`` times the species-wise energy scale that follows it (so that
  ``w . f_k`` plus the species-wise shift is the atomic energy the model sums).

Torch and the packages are imported on first use only (``import lprviz.backbones`` stays
light); without them :func:`unavailable` says how to install the ``nn`` extra. Nothing is
downloaded: both models load weights shipped in their wheels.

Cache: per structure in memory (the descriptor cache of :mod:`lprviz.features`) and per call
on disk under ``<cache root>/backbones`` (entries checked as SOAP's are: own key, SHA-256,
atomic writes), keyed by each structure's content hash, the model name and the package and
weights versions. The disk folder is kept under :data:`DISK_CACHE_MAX_BYTES`, least
recently used entries removed first.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ase
import numpy as np
from ase.data import chemical_symbols

from lprviz import features as _features
from lprviz.errors import InputError
from lprviz.limits import first_over_search_limit, get_limits

__all__ = [
    "BACKBONES",
    "DISK_CACHE_MAX_BYTES",
    "cache_dir",
    "last_layer_features",
    "model_version",
    "unavailable",
]

BACKBONES: tuple[str, ...] = ("chgnet", "sevenn")

# Bound of the on-disk feature cache (64 floats per atom: ~1.3 M atoms).
DISK_CACHE_MAX_BYTES = 512 * 2**20

_INSTALL = "pip install 'lprviz[nn]'"


@dataclass(frozen=True)
class _Spec:
    package: str  # import and distribution name
    label: str  # what users call it
    weights: str  # the shipped checkpoint we load


_SPECS = {
    "chgnet": _Spec("chgnet", "CHGNet", "0.3.0"),
    "sevenn": _Spec("sevenn", "SevenNet", "7net-0"),
}


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise InputError(f"unknown model {name!r}: expected one of {', '.join(BACKBONES)}")
    return _SPECS[name]


def unavailable(name: str) -> str | None:
    """Why backbone ``name`` cannot be used here, or None if it can.

    Parameters
    ----------
    name : str
        One of :data:`BACKBONES`.

    Returns
    -------
    str or None
        A one-line reason naming the install command, or None when torch and the model's
        package are importable (checked without importing them).

    Raises
    ------
    InputError
        If ``name`` is not a known backbone.
    """
    spec = _spec(name)
    missing = [p for p in ("torch", spec.package) if importlib.util.find_spec(p) is None]
    if missing:
        return (f"{spec.label} needs the optional extra ({' and '.join(missing)} missing): "
                f"{_INSTALL}")
    return None


def model_version(name: str) -> str:
    """Package and weights version of backbone ``name``, e.g. ``"chgnet 0.4.2 / weights 0.3.0"``.

    Raises
    ------
    InputError
        If ``name`` is unknown or its package is not installed.
    """
    spec = _spec(name)
    reason = unavailable(name)
    if reason is not None:
        raise InputError(reason)
    return f"{spec.package} {importlib.metadata.version(spec.package)} / weights {spec.weights}"


def cache_dir() -> Path:
    """Directory of the on-disk backbone feature cache (``$LPRVIZ_CACHE_DIR/backbones``)."""
    return _features.cache_dir().parent / "backbones"


# ---------------------------------------------------------------------------------------
# Models: loaded once per process, eval mode, CPU, a forward hook on the readout layer.


class _Readout:
    """A loaded model with a hook that records the input of its final linear readout."""

    name: str
    cutoff: float  # neighbour cutoff (Angstrom) of the model's graph
    width: int  # number of last-layer features
    known: frozenset[int]  # atomic numbers the model was trained on

    def __init__(self) -> None:
        self._captured: list[Any] = []
        # one model per process, shared by the app's sessions: one forward pass at a time
        self._lock = threading.Lock()

    def _hook(self, _module: Any, inputs: tuple, _output: Any) -> None:
        self._captured.append(inputs[0].detach())

    def run(self, frames: Sequence[ase.Atoms], labels: Sequence[str]) -> np.ndarray:
        """Features ``(sum of atoms, width)`` float64 of a batch, in frame order."""
        import torch

        with self._lock, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the packages' deprecation chatter
            self._captured.clear()
            self._forward(frames, labels)
            if len(self._captured) != 1:
                raise RuntimeError(f"{self.name}: readout hook fired {len(self._captured)} "
                                   "times")
            values = self._captured.pop().to(torch.float64).cpu().numpy()
        return self._post(values, frames)

    def _forward(self, frames: Sequence[ase.Atoms], labels: Sequence[str]) -> None:
        raise NotImplementedError

    def _post(self, values: np.ndarray, frames: Sequence[ase.Atoms]) -> np.ndarray:
        return values


class _Chgnet(_Readout):
    name = "chgnet"

    def __init__(self) -> None:
        super().__init__()
        import torch
        from chgnet.model import CHGNet

        with contextlib.redirect_stdout(io.StringIO()):  # it prints its size on load
            model = CHGNet.load(model_name=_SPECS["chgnet"].weights, use_device="cpu",
                                verbose=False)
        model.eval()
        self.model = model
        linears = [m for m in model.mlp.modules() if isinstance(m, torch.nn.Linear)]
        readout = linears[-1]
        self.width = readout.in_features
        readout.register_forward_hook(self._hook)
        self.cutoff = float(model.graph_converter.atom_graph_cutoff)
        n_known = model.composition_model.max_num_elements if model.composition_model else 94
        self.known = frozenset(range(1, n_known + 1))

    def _forward(self, frames: Sequence[ase.Atoms], labels: Sequence[str]) -> None:
        from pymatgen.io.ase import AseAtomsAdaptor

        graphs = []
        for atoms, label in zip(frames, labels, strict=True):
            structure = AseAtomsAdaptor.get_structure(_periodic(atoms, self.cutoff))
            try:
                graphs.append(self.model.graph_converter(structure, graph_id=label))
            except (ValueError, RuntimeError) as exc:
                # CHGNet refuses an atom with no neighbour within its 6 A graph cutoff
                raise InputError(f"{label}: CHGNet cannot take this structure: "
                                 f"{str(exc).splitlines()[0]}") from None
        self.model(graphs, task="e")


class _Sevenn(_Readout):
    name = "sevenn"

    def __init__(self) -> None:
        super().__init__()
        from sevenn import util

        checkpoint = util.load_checkpoint(_SPECS["sevenn"].weights)
        model = checkpoint.build_model()
        # Energies only: the force head differentiates through positions, which no_grad stops.
        model.delete_module_by_key("force_output")
        model.set_is_batch_data(True)
        model.eval()
        self.model = model
        self.cutoff = float(checkpoint.config["cutoff"])
        readout = model._modules["reduce_hidden_to_energy"].linear
        self.width = int(readout.irreps_in.dim)
        readout.register_forward_hook(self._hook)
        self.type_map = {int(z): int(i) for z, i in model.type_map.items()}
        self.known = frozenset(self.type_map)
        # atomic energy = scale[type] * (w . h) + shift[type]: fold the scale into h
        rescale = model._modules["rescale_atomic_energy"]
        scale = rescale.scale.detach().double().cpu().numpy()
        self.scale_by_z = np.zeros(max(self.known) + 1)
        for z, i in self.type_map.items():
            self.scale_by_z[z] = scale[i] if scale.size > 1 else scale[0]

    def _forward(self, frames: Sequence[ase.Atoms], labels: Sequence[str]) -> None:
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph
        from torch_geometric.data import Batch

        graphs = [AtomGraphData.from_numpy_dict(
            unlabeled_atoms_to_graph(_periodic(a, self.cutoff), self.cutoff)) for a in frames]
        self.model(Batch.from_data_list(graphs))

    def _post(self, values: np.ndarray, frames: Sequence[ase.Atoms]) -> np.ndarray:
        numbers = np.concatenate([a.numbers for a in frames])
        return values * self.scale_by_z[numbers][:, None]


_CLASSES = {"chgnet": _Chgnet, "sevenn": _Sevenn}


@functools.cache
def _load(name: str) -> _Readout:
    return _CLASSES[name]()


def _periodic(atoms: ase.Atoms, cutoff: float) -> ase.Atoms:
    """A fully periodic copy whose images are beyond ``cutoff`` along free directions.

    CHGNet builds its graph from a pymatgen Structure (always a 3D lattice); the same
    boxing (:mod:`lprviz.features`) gives SevenNet identical neighbour lists.
    """
    return _features._featomic_ready(atoms, cutoff)


# ---------------------------------------------------------------------------------------
# Public entry point.


def last_layer_features(
    frames: Sequence[ase.Atoms],
    name: str,
    *,
    batch_size: int = 16,
    cache: bool = True,
    progress: Callable[[int, int], None] | None = None,
    names: Sequence[str] | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Per-atom inputs of a pretrained model's final linear readout.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        Structures (periodic, slabs or clusters); positions in Angstrom.
    name : str
        ``"chgnet"`` or ``"sevenn"`` (:data:`BACKBONES`).
    batch_size : int
        Structures per forward pass.
    cache : bool
        Use (and fill) the memory and disk caches.
    progress : callable, optional
        Called as ``progress(done_atoms, total_atoms)`` after each batch.
    names : sequence of str, optional
        One name per frame for error messages (default ``"structure <i>"``).
    threads : int, optional
        Torch intra-op threads for this call (restored afterwards); default: torch's own
        setting (``OMP_NUM_THREADS`` or the core count).

    Returns
    -------
    numpy.ndarray
        ``(n_atoms, d_ll)`` float64 in dataset atom order (frames concatenated). The model
        runs in float32 on the CPU, in eval mode, without gradients: values are
        deterministic on one machine, and agree across batchings to float32 rounding.

    Raises
    ------
    InputError
        If the extra is missing, ``name`` is unknown, ``frames`` is empty or has an empty
        frame, a species is unknown to the model, a structure exceeds the neighbour-search
        or array limits (:mod:`lprviz.limits`), or (CHGNet) an atom has no neighbour.
    """
    spec = _spec(name)
    reason = unavailable(name)
    if reason is not None:
        raise InputError(reason)
    frames = list(frames)
    labels = list(names) if names is not None else [f"structure {i}" for i in range(len(frames))]
    if not frames:
        raise InputError(f"{spec.label} features: expected at least one structure, got none")
    if len(labels) != len(frames):
        raise InputError(f"{spec.label} features: {len(labels)} names for {len(frames)} "
                         "structures")
    if int(batch_size) < 1:
        raise InputError(f"{spec.label} features: batch_size must be >= 1, got {batch_size}")
    empty = [label for a, label in zip(frames, labels, strict=True) if len(a) == 0]
    if empty:
        raise InputError(f"{empty[0]}: a structure without atoms has no {spec.label} features")

    try:
        readout = _load(name)
    except (ImportError, OSError) as exc:  # installed but broken (e.g. a torch ABI mismatch)
        raise InputError(f"{spec.label} could not be loaded ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); reinstall: "
                         f"{_INSTALL}") from None
    _check_species(frames, labels, readout, spec)
    sizes = np.array([len(a) for a in frames], dtype=np.int64)
    total = int(sizes.sum())
    limit = get_limits().max_array_bytes
    if total * readout.width * 8 > limit:
        raise InputError(f"{spec.label} features of {total} atoms would take "
                         f"{total * readout.width * 8 / 2**30:.2g} GiB (limit "
                         f"{limit / 2**30:.2g} GiB, LPRVIZ_MAX_ARRAY_BYTES); use fewer atoms")

    settings = f"{name}|{model_version(name)}|{readout.width}".encode()
    keys = [hashlib.sha256(settings + _features.structure_key(a)).hexdigest() for a in frames]
    call_key = hashlib.sha256("".join(keys).encode()).hexdigest()
    disk_path = cache_dir() / f"{name}-{call_key}.npz" if cache else None
    if disk_path is not None:
        values = _features._read_entry(disk_path, call_key, (total, readout.width))
        if values is not None:
            _touch(disk_path)
            for key, arr in zip(keys, np.split(values, np.cumsum(sizes)[:-1]), strict=True):
                _features._remember(key, arr)
            if progress is not None:
                progress(total, total)
            return values

    per_frame = [_features._MEMORY.get(k) if cache else None for k in keys]
    todo = [i for i, v in enumerate(per_frame) if v is None]
    _check_search([frames[i] for i in todo], [labels[i] for i in todo], readout, spec)
    done = total - int(sizes[todo].sum())
    if progress is not None:
        progress(done, total)
    with _torch_threads(threads):
        for start in range(0, len(todo), int(batch_size)):
            batch = todo[start:start + int(batch_size)]
            values = readout.run([frames[i] for i in batch], [labels[i] for i in batch])
            for i, arr in zip(batch, np.split(values, np.cumsum(sizes[batch])[:-1]),
                              strict=True):
                per_frame[i] = arr
                if cache:
                    _features._remember(keys[i], arr)
            done += int(sizes[batch].sum())
            if progress is not None:
                progress(done, total)
    values = np.concatenate(per_frame, axis=0)
    if disk_path is not None:
        _features._write_entry(disk_path, call_key, values)
        _prune(disk_path.parent, DISK_CACHE_MAX_BYTES)
    return values


def _check_species(frames: Sequence[ase.Atoms], labels: Sequence[str], readout: _Readout,
                   spec: _Spec) -> None:
    for atoms, label in zip(frames, labels, strict=True):
        unknown = sorted({int(z) for z in atoms.numbers} - readout.known)
        if unknown:
            bad = ", ".join(chemical_symbols[z] if 0 <= z < len(chemical_symbols) else str(z)
                            for z in unknown)
            raise InputError(f"{label}: {spec.label} was not trained on species {bad}")


def _check_search(frames: Sequence[ase.Atoms], labels: Sequence[str], readout: _Readout,
                  spec: _Spec) -> None:
    """Refuse a frame whose neighbour list would exceed ``Limits.max_search_pairs``."""
    boxed = [_periodic(atoms, readout.cutoff) for atoms in frames]
    over = first_over_search_limit([a.positions for a in boxed],
                                   [a.cell.array for a in boxed], readout.cutoff)
    if over is not None:
        k, pairs, limit = over
        raise InputError(f"{labels[k]}: {spec.label}'s neighbour list at its "
                         f"{readout.cutoff:g} A cutoff would examine ~{pairs:.2g} atom pairs "
                         f"(limit {limit:.2g}, LPRVIZ_MAX_SEARCH_PAIRS)")


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _prune(folder: Path, max_bytes: int) -> None:
    """Delete the least recently used ``.npz`` entries until the folder fits ``max_bytes``."""
    entries = []
    for path in folder.glob("*.npz"):
        if path.name.startswith("."):
            continue  # another process's temporary file (lprviz.features._write_entry)
        with contextlib.suppress(OSError):
            st = path.stat()
            entries.append((st.st_mtime, st.st_size, path))
    used = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries, key=lambda e: e[0]):
        if used <= max_bytes:
            break
        with contextlib.suppress(OSError):
            path.unlink()
            used -= size
