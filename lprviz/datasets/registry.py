"""The registry: shipped and fetchable sets, cache locations, :func:`load` and
:func:`list_available`."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from ase import Atoms

from lprviz.datasets.dataset import Dataset, DatasetInfo
from lprviz.datasets.readers import (
    _frame_energy,
    _read_file,
    max_atoms_in_force,
    read_mlearn_json,
    split_format_suffix,
    validate_frames,
)
from lprviz.errors import InputError

DEFAULT_DATASET = "emt-alloys"


_LICENCE_OWN = "BSD-3-Clause (lprviz)"


_LICENCE_MLEARN = "BSD-3-Clause (materialsvirtuallab/mlearn)"


# Package data (lprviz/data/), so a wheel installed anywhere finds them.
_SHIPPED_DIR = Path(str(resources.files("lprviz") / "data"))


@dataclass(frozen=True)
class _Shipped:
    filename: str
    description: str


_SHIPPED: dict[str, _Shipped] = {
    "emt-alloys": _Shipped(
        "emt-alloys.extxyz",
        "Cu/Ag/Au (EMT): bulk, alloys, vacancies, antisites, interstitials, surfaces, "
        "clusters; exact per-atom energies",
    ),
    "teaching-stoichiometry": _Shipped(
        "teaching-stoichiometry.extxyz",
        "Cu/Au (EMT): one fixed stoichiometry vs varied compositions; per-atom energies",
    ),
}


MLEARN_COMMIT = "10c427a5480c6281c15c64efaf869b03be04818f"


MLEARN_BASE_URL = f"https://raw.githubusercontent.com/materialsvirtuallab/mlearn/{MLEARN_COMMIT}/"


@dataclass(frozen=True)
class _RemoteFile:
    path: str  # relative to the base URL
    split: str
    sha256: str
    size: int


@dataclass(frozen=True)
class _Fetchable:
    files: tuple[_RemoteFile, ...]
    description: str
    base_url: str = MLEARN_BASE_URL
    licence: str = _LICENCE_MLEARN


def _mlearn(element: str, checksums: dict[str, tuple[str, int]]) -> _Fetchable:
    files = tuple(
        _RemoteFile(f"data/{element}/{split}.json", tag, *checksums[split])
        for split, tag in (("training", "train"), ("test", "test"))
    )
    return _Fetchable(
        files,
        f"{element} (DFT PBE, Zuo et al. 2020): Elastic, AIMD-NVT, Surface, Vacancy",
    )


# SHA-256 and size of the upstream files at the pinned commit.
_FETCHABLE: dict[str, _Fetchable] = {
    "mlearn-Ge": _mlearn("Ge", {
        "training": ("43dee02009a5167f94c7aafce19051222bcfc328c46181750cc2a2018187ca00", 2796663),
        "test": ("737ea6159c9dd27ebee7fb8ffae22f15e20466884927771248ca4f5b2cd3f093", 311848),
    }),
    "mlearn-Li": _mlearn("Li", {
        "training": ("1cac01475c5a4fb85771ee1fd23366a6b8abfb9891e0c9e088b6e37228e147b3", 2446522),
        "test": ("554d0ce60b35a07b357be3a80bf04f68eb8fc97b5a88328caf08c860b5e9b260", 279684),
    }),
    "mlearn-Mo": _mlearn("Mo", {
        "training": ("b13305fca0d0d2631ab080c8fcf13c743ee79a911712fb65a34ca88fadf09f9a", 2127325),
        "test": ("68169e2927c2115daa2f504805fcb9548ee65daf2dd015428807ba92f8e13bb8", 250629),
    }),
    "mlearn-Si": _mlearn("Si", {
        "training": ("ae6d4b0a65b00e0fcf7ba0a6fad366716710d2f0d21d70199203089c6866b500", 2669946),
        "test": ("d452b30a89f23bff76f7cc529b7b6c2d159ea81ccd5a4599fb1a18207654fa91", 309803),
    }),
}


def cache_dir() -> Path:
    """Directory of downloaded and imported datasets.

    ``$LPRVIZ_CACHE_DIR`` if set, else the platform's user cache dir for ``lprviz``.
    """
    env = os.environ.get("LPRVIZ_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("lprviz"))


def shipped_dir() -> Path:
    """Directory of the shipped datasets (``$LPRVIZ_DATASETS_DIR`` overrides it)."""
    env = os.environ.get("LPRVIZ_DATASETS_DIR")
    return Path(env).expanduser() if env else _SHIPPED_DIR


def _fetch_dir(name: str, dest: str | os.PathLike | None = None) -> Path:
    return Path(dest).expanduser() if dest is not None else cache_dir() / name


def _imported_dir() -> Path:
    return cache_dir() / "imported"


def _imported_files() -> dict[str, Path]:
    folder = _imported_dir()
    if not folder.is_dir():
        return {}
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    out: dict[str, Path] = {}
    for path in files:
        name = split_format_suffix(path)[0]
        # Imports made before names dropped the compression suffix may leave two files of
        # one name (x.extxyz, x.extxyz.gz): the later keeps its old name (x.extxyz).
        out[path.stem if name in out else name] = path
    return out


def list_available() -> list[DatasetInfo]:
    """Shipped, fetchable (cached or not) and imported datasets.

    Returns
    -------
    list of DatasetInfo
        Shipped sets first, then fetchable, then imported, each sorted by name.
    """
    rows: list[DatasetInfo] = []
    for name, spec in _SHIPPED.items():
        path = shipped_dir() / spec.filename
        size = path.stat().st_size if path.is_file() else 0
        rows.append(DatasetInfo(name, "shipped", path.is_file(), path, size, _LICENCE_OWN,
                                spec.description, (path,)))
    for name, spec in sorted(_FETCHABLE.items()):
        folder = _fetch_dir(name)
        paths = tuple(folder / Path(f.path).name for f in spec.files)
        # Existence and the pinned size; fetch() verifies the checksum itself.
        cached = all(p.is_file() and p.stat().st_size == f.size
                     for p, f in zip(paths, spec.files, strict=True))
        size = sum(f.size for f in spec.files)
        rows.append(DatasetInfo(name, "fetchable", cached, folder, size, spec.licence,
                                spec.description, paths))
    for name, path in _imported_files().items():
        rows.append(DatasetInfo(name, "imported", True, path, path.stat().st_size,
                                "as the original file", f"imported file {path.name}", (path,)))
    return rows


def load(
    name_or_path: str | os.PathLike,
    *,
    group_key: str | None = None,
    max_atoms: int | None = None,
    label: str | None = None,
) -> Dataset:
    """Load a shipped, fetched, imported dataset by name, or a file by path.

    Parameters
    ----------
    name_or_path : str or path-like
        A registry name (``"emt-alloys"``, ``"teaching-stoichiometry"``, ``"mlearn-Si"``, an
        imported name) or a path to an extxyz / ASE-readable file or an mlearn JSON file.
    group_key : str, optional
        ``atoms.info`` key holding the group label; default tries ``"group"`` then
        ``"config_type"``. For mlearn JSON the entry's ``"group"`` field is used.
    max_atoms : int, optional
        Largest total number of atoms accepted (default: ``Limits.max_atoms``, 200,000,
        changed by the ``LPRVIZ_MAX_ATOMS`` environment variable).
    label : str, optional
        For a file path: the name people know the file by (default: the file's name), used
        as the dataset's ``name``, in default structure names ``"<label>#<i>"``, provenance
        and messages. The app passes the user's name of an upload stored under a
        content-hash path; it is only ever text, never a path. Ignored for registry names.

    Returns
    -------
    Dataset

    Raises
    ------
    InputError
        Unknown name, missing or unreadable file, invalid frames, fetchable set not cached.
    """
    max_atoms = max_atoms_in_force(max_atoms)
    key = str(name_or_path)
    if key in _SHIPPED and not isinstance(name_or_path, Path):
        spec = _SHIPPED[key]
        path = shipped_dir() / spec.filename
        if not path.is_file():
            raise InputError(f"shipped dataset '{key}': file {path} is missing; "
                             "regenerate it with python datasets/generate.py")
        frames, meta = _read_file(path, group_key=group_key, max_atoms=max_atoms)
        return _build(key, frames, meta, source=path.name, max_atoms=max_atoms,
                      provenance=f"shipped {path.name}: generated by datasets/generate.py "
                                 "(ASE EMT calculator); see datasets/README.md",
                      licence=_LICENCE_OWN)
    if key in _FETCHABLE and not isinstance(name_or_path, Path):
        return _load_fetchable(key, max_atoms=max_atoms)
    imported = _imported_files()
    if key in imported and not isinstance(name_or_path, Path):
        path = imported[key]
        frames, meta = _read_file(path, group_key=group_key, max_atoms=max_atoms)
        return _build(key, frames, meta, source=path.name, max_atoms=max_atoms,
                      provenance=f"imported file {path}", licence="as the original file")
    path = Path(name_or_path).expanduser()
    if not path.exists():
        known = ", ".join([*_SHIPPED, *_FETCHABLE, *imported])
        raise InputError(f"'{label or key}' is neither a dataset name ({known}) nor an "
                         "existing file")
    if path.is_dir():
        raise InputError(f"{label or path}: is a directory, expected a structure file "
                         "(extxyz or JSON)")
    frames, meta = _read_file(path, group_key=group_key, max_atoms=max_atoms, label=label)
    return _build(label or path.name, frames, meta, source=label or path.name,
                  max_atoms=max_atoms, provenance=f"user file {label or path}",
                  licence="unknown (user file)")


def _load_fetchable(name: str, *, max_atoms: int) -> Dataset:
    spec = _FETCHABLE[name]
    folder = _fetch_dir(name)
    frames: list[Atoms] = []
    meta: dict[str, list] = {"groups": [], "names": [], "splits": []}
    for remote in spec.files:
        path = folder / Path(remote.path).name
        if not path.is_file():
            raise InputError(f"dataset '{name}' is not downloaded ({path} missing); "
                             f"run: lprviz datasets fetch {name}")
        part, part_meta = read_mlearn_json(path)
        stem = Path(remote.path).stem
        frames += part
        meta["groups"] += part_meta["groups"]
        meta["names"] += [f"{name}/{stem}#{i}" for i in range(len(part))]
        meta["splits"] += [remote.split] * len(part)
    return _build(name, frames, meta, source=name, max_atoms=max_atoms,
                  provenance=f"Zuo et al., J. Phys. Chem. A 124, 731 (2020); "
                             f"materialsvirtuallab/mlearn@{MLEARN_COMMIT[:10]} ({folder})",
                  licence=spec.licence)


def _build(name: str, frames: list[Atoms], meta: Mapping[str, list], *, source: str,
           max_atoms: int, provenance: str, licence: str) -> Dataset:
    validate_frames(frames, source=source, require_energy=False, max_atoms=max_atoms)
    energies = np.array([_frame_energy(a) if _frame_energy(a) is not None else np.nan
                         for a in frames], dtype=float)
    has_energy = np.isfinite(energies)
    local = None
    if frames and all("true_local_energy" in a.arrays for a in frames):
        local = np.concatenate([np.asarray(a.arrays["true_local_energy"], dtype=float).reshape(-1)
                                for a in frames])
    return Dataset(
        name=name,
        frames=frames,
        energies=energies,
        has_energy=has_energy,
        groups=np.array(meta["groups"], dtype=str).reshape(-1),
        names=list(meta["names"]),
        splits=np.array(meta["splits"], dtype=str).reshape(-1),
        true_local_energies=local,
        provenance=provenance,
        licence=licence,
    )

