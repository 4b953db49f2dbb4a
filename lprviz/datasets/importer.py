"""Import a user file into the cache so it loads by name."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from lprviz.datasets.dataset import DatasetInfo
from lprviz.datasets.download import _sha256
from lprviz.datasets.readers import split_format_suffix
from lprviz.datasets.registry import (
    _FETCHABLE,
    _SHIPPED,
    _fetch_dir,
    _imported_dir,
    list_available,
    load,
)
from lprviz.errors import InputError


def import_file(path: str | os.PathLike, *, name: str | None = None) -> DatasetInfo:
    """Validate a dataset file and copy it into the cache so it loads by name.

    Without ``name``, a file identical (SHA-256) to one of a fetchable dataset's files goes
    to that dataset's cache folder (e.g. an mlearn ``training.json`` downloaded by hand: the
    dataset loads by its name once all its files are there); any other file, and any file
    given a ``name``, goes to ``cache_dir()/imported/<name><suffix>``.

    Parameters
    ----------
    path : path-like
        extxyz (or ASE-readable) or mlearn JSON file; it is loaded and validated first.
    name : str, optional
        Name to load it by (default: the file's name without its format and compression
        suffixes, ``frames`` of ``frames.extxyz.gz``). Letters, digits, ``._-`` only; must
        not clash with a shipped or fetchable name.

    Returns
    -------
    DatasetInfo
        The row :func:`list_available` shows for it.
    """
    src = Path(path).expanduser()
    if not src.is_file():
        raise InputError(f"{src}: no such file to import")
    digest = _sha256(src) if name is None else None  # a name: a dataset of its own
    for ds_name, spec in _FETCHABLE.items() if digest is not None else ():
        for remote in spec.files:
            if remote.sha256 == digest:
                target = _fetch_dir(ds_name) / Path(remote.path).name
                target.parent.mkdir(parents=True, exist_ok=True)
                _copy_atomic(src, target)
                return next(r for r in list_available() if r.name == ds_name)
    load(src)  # validates; raises InputError with the file/frame/field
    stem, suffix = split_format_suffix(src)
    name = stem if name is None else name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise InputError(f"dataset name {name!r} invalid: use letters, digits, '.', '_', '-'")
    if name in _SHIPPED or name in _FETCHABLE:
        raise InputError(f"dataset name '{name}' is taken by a built-in dataset; "
                         "choose another with --name")
    folder = _imported_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}{suffix}"  # the suffixes tell the reader the format
    if split_format_suffix(target)[0] != name:  # "v1.xyz" + ".gz" would list as "v1"
        raise InputError(f"dataset name {name!r}: ends in a format's suffix, which the "
                         f"stored file {target.name} would lose; choose another with --name")
    _copy_atomic(src, target)
    # Only once the new copy is in place: drop an older import of that name in another format.
    for old in folder.glob(f"{name}.*"):
        if split_format_suffix(old)[0] == name and old != target:
            old.unlink()
    return next(r for r in list_available() if r.name == name)


def _copy_atomic(src: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)

