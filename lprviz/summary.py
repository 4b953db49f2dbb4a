"""Summaries of big LPR runs, built chunk by chunk (``lprviz lpr --summary/--sample``).

A 10^6-atom result is a multi-GB extxyz; its summary is a few kB: per group, per species and
overall LPR quantiles (5/25/50/75/95 %), count and fraction undetermined, plus the lowest-LPR
structures and atoms. Each chunk of test frames gives a :class:`ChunkSummary`
(:func:`chunk_summary`; on a Dask worker or in the serial loop alike) and a
:class:`SummaryCollector` merges them in frame order.

Quantiles are exact (numpy's default linear interpolation) over float32 copies of the LPR:
the collector keeps one float32 value, a group code (int32), a species code (uint8) and the
undetermined flag per atom, 10 bytes per atom (100 MB at 10^7 atoms); float32 keeps 7
significant digits, far
below any difference that matters on a log scale. The lowest structures and atoms, and the
extxyz text of the ``n_sample`` lowest structures, are bounded top-k lists.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO

import numpy as np
from ase.data import chemical_symbols

__all__ = ["QUANTILES", "ChunkSummary", "SummaryCollector", "chunk_summary", "read_summary"]

#: Quantiles reported per group, per species and overall.
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)

#: Columns of the quantile table (CSV header and JSON keys).
QUANTILE_COLUMNS = ("by", "key", "count", "undetermined_fraction",
                    *(f"q{round(100 * q):02d}" for q in QUANTILES))


@dataclass
class ChunkSummary:
    """What a chunk of test frames contributes to a summary.

    Attributes
    ----------
    frames : numpy.ndarray of shape (n_frames,)
        Frame index of each frame in the output file (0 = first test frame).
    names, groups : list of str
        Per frame.
    sizes : numpy.ndarray of shape (n_frames,)
        Atoms per frame.
    atom_numbers : numpy.ndarray of shape (n_atoms,)
    lpr : numpy.ndarray of shape (n_atoms,)
    undetermined : numpy.ndarray of shape (n_atoms,), bool
    sample : dict
        Frame index -> extxyz text, for the chunk's ``n_sample`` lowest-LPR frames.
    """

    frames: np.ndarray
    names: list[str]
    groups: list[str]
    sizes: np.ndarray
    atom_numbers: np.ndarray
    lpr: np.ndarray
    undetermined: np.ndarray
    sample: dict[int, str] = field(default_factory=dict)


def _frame_min(lpr: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return np.minimum.reduceat(lpr, np.concatenate([[0], np.cumsum(sizes)[:-1]]))


def chunk_summary(
    frames: np.ndarray,
    names: Sequence[str],
    groups: Sequence[str],
    sizes: np.ndarray,
    atom_numbers: np.ndarray,
    lpr: np.ndarray,
    undetermined: np.ndarray,
    *,
    n_sample: int = 0,
    annotated=None,
) -> ChunkSummary:
    """The :class:`ChunkSummary` of one chunk (arrays over its frames and atoms, in order).

    Parameters
    ----------
    frames, names, groups, sizes
        Per frame: output frame index, name, group and atom count.
    atom_numbers, lpr, undetermined
        Per atom of the chunk (the first alpha's LPR and flags).
    n_sample : int
        Keep the extxyz text of this many lowest-LPR frames (by their lowest atom).
    annotated : list of ase.Atoms, optional
        The chunk's frames as written to the output (:func:`lprviz.export.annotated_frames`);
        needed when ``n_sample > 0``.

    Returns
    -------
    ChunkSummary
    """
    import io

    from lprviz.export import write_extxyz

    sizes = np.asarray(sizes, dtype=np.int64)
    lpr = np.asarray(lpr, dtype=np.float64)
    sample = {}
    if n_sample > 0 and len(sizes):
        keep = np.argsort(_frame_min(lpr, sizes), kind="stable")[:n_sample]
        for j in keep:
            buf = io.StringIO()
            write_extxyz(buf, [annotated[j]])
            sample[int(frames[j])] = buf.getvalue()
    return ChunkSummary(
        frames=np.asarray(frames, dtype=np.int64), names=[str(n) for n in names],
        groups=[str(g) for g in groups], sizes=sizes,
        atom_numbers=np.asarray(atom_numbers, dtype=np.int64), lpr=lpr,
        undetermined=np.asarray(undetermined, dtype=bool), sample=sample,
    )


class _Lowest:
    """The ``k`` rows with the smallest ``lpr`` seen so far (ties: first seen first)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.rows: dict[str, np.ndarray] = {}

    def add(self, rows: dict[str, np.ndarray]) -> None:
        if self.k <= 0:
            return
        merged = rows if not self.rows else {
            key: np.concatenate([self.rows[key], np.asarray(rows[key], dtype=self.rows[key].dtype)])
            for key in self.rows}
        order = np.argsort(merged["lpr"], kind="stable")[: self.k]
        self.rows = {key: np.asarray(v)[order] for key, v in merged.items()}

    def records(self) -> list[dict]:
        n = len(self.rows.get("lpr", ()))
        return [{key: v[i].item() if isinstance(v[i], np.generic) else v[i]
                 for key, v in self.rows.items()} for i in range(n)]


class SummaryCollector:
    """Merge :class:`ChunkSummary` parts (in frame order) into a run's summary.

    Parameters
    ----------
    alpha : float
        The regulariser of the summarised LPR (recorded).
    n_lowest : int
        Lowest-LPR structures and atoms to list.
    n_sample : int
        Lowest-LPR structures whose extxyz text is kept for :meth:`write_sample`.
    """

    def __init__(self, alpha: float, *, n_lowest: int = 20, n_sample: int = 0) -> None:
        self.alpha = float(alpha)
        self.n_sample = int(n_sample)
        self._lpr: list[np.ndarray] = []
        self._group: list[np.ndarray] = []
        self._species: list[np.ndarray] = []
        self._undetermined: list[np.ndarray] = []
        self._group_codes: dict[str, int] = {}
        self._species_codes: dict[int, int] = {}
        self._atoms = _Lowest(n_lowest)
        self._structures = _Lowest(n_lowest)
        self._sample = _Lowest(self.n_sample)
        self._texts: dict[int, str] = {}

    def add(self, part: ChunkSummary) -> None:
        """Merge one chunk's summary."""
        if not len(part.sizes):
            return
        group_code = np.array([self._group_codes.setdefault(g, len(self._group_codes))
                               for g in part.groups], dtype=np.int32)
        species_code = np.array([self._species_codes.setdefault(int(z), len(self._species_codes))
                                 for z in part.atom_numbers], dtype=np.uint8)
        self._lpr.append(part.lpr.astype(np.float32))
        self._group.append(np.repeat(group_code, part.sizes))
        self._species.append(species_code)
        self._undetermined.append(part.undetermined.copy())
        atom_frame = np.repeat(np.arange(len(part.sizes)), part.sizes)
        starts = np.concatenate([[0], np.cumsum(part.sizes)[:-1]])
        names, groups = np.array(part.names, dtype=object), np.array(part.groups, dtype=object)
        self._atoms.add({
            "lpr": part.lpr, "frame": part.frames[atom_frame], "name": names[atom_frame],
            "group": groups[atom_frame], "atom": np.arange(len(part.lpr)) - starts[atom_frame],
            "species": np.array([chemical_symbols[z] for z in part.atom_numbers], dtype=object),
            "undetermined": part.undetermined,
        })
        frame_min = _frame_min(part.lpr, part.sizes)
        medians = np.array([np.median(v) for v in np.split(part.lpr, starts[1:])])
        self._structures.add({
            "lpr": frame_min, "frame": part.frames, "name": names, "group": groups,
            "n_atoms": part.sizes, "median_lpr": medians,
        })
        if self.n_sample:
            self._sample.add({"lpr": frame_min, "frame": part.frames})
            kept = set(self._sample.rows["frame"].tolist())
            self._texts = {f: t for f, t in {**self._texts, **part.sample}.items() if f in kept}

    def quantile_rows(self) -> list[dict]:
        """One row per key (``by`` = all, group, species): count, undetermined fraction and
        the :data:`QUANTILES` of the LPR (numpy's linear interpolation, exact)."""
        if not self._lpr:
            return []
        lpr = np.concatenate(self._lpr)
        undetermined = np.concatenate(self._undetermined)
        group, species = np.concatenate(self._group), np.concatenate(self._species)
        keys = [("all", "all", slice(None))]
        keys += [("group", g, group == c) for g, c in sorted(self._group_codes.items())]
        keys += [("species", chemical_symbols[z], species == c)
                 for z, c in sorted(self._species_codes.items())]
        rows = []
        for by, key, mask in keys:
            values = lpr[mask]
            quantiles = np.quantile(values, QUANTILES)
            rows.append({"by": by, "key": key, "count": int(values.size),
                         "undetermined_fraction": float(undetermined[mask].mean()),
                         **{c: float(q) for c, q in zip(QUANTILE_COLUMNS[4:], quantiles,
                                                        strict=True)}})
        return rows

    def as_dict(self) -> dict:
        """The whole summary as plain JSON-able data."""
        return {
            "alpha": self.alpha,
            "quantile_levels": list(QUANTILES),
            "quantiles": self.quantile_rows(),
            "lowest_structures": self._structures.records(),
            "lowest_atoms": self._atoms.records(),
        }

    def write_json(self, fh: IO[str]) -> None:
        """Write :meth:`as_dict` as JSON."""
        json.dump(self.as_dict(), fh, indent=1)

    def write_csv(self, fh: IO[str], table: str = "quantiles") -> None:
        """Write one table (``quantiles``, ``lowest_structures`` or ``lowest_atoms``) as CSV;
        user text that a spreadsheet would run as a formula is quoted."""
        from lprviz.export import _csv_text

        rows = self.as_dict()[table]
        columns = list(QUANTILE_COLUMNS) if table == "quantiles" else list(rows[0]) if rows else []
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_text(row[c]) if isinstance(row[c], str) else row[c]
                             for c in columns])

    def sample_text(self) -> str:
        """extxyz text of the ``n_sample`` lowest-LPR structures, lowest first."""
        frames = self._sample.rows.get("frame", np.zeros(0, dtype=np.int64))
        return "".join(self._texts[int(f)] for f in frames)


def read_summary(fh: IO[str], *, source: str) -> dict:
    """Read a ``--summary`` JSON file back (the app's Summary page).

    Raises
    ------
    lprviz.InputError
        Not JSON; without a finite ``alpha`` >= 0 or the ``quantiles``/``lowest_structures``/
        ``lowest_atoms`` lists of records; a quantile record with a column that is not a
        finite number (the LPR quantiles positive: they go on a log axis).
    """
    from lprviz.errors import InputError

    def number(value) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        try:
            return math.isfinite(float(value))
        except OverflowError:  # a JSON integer beyond float's range
            return False

    try:
        data = json.load(fh)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{source}: not a JSON summary ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a JSON object with quantiles, got "
                         f"{type(data).__name__}")
    for key in ("quantiles", "lowest_structures", "lowest_atoms"):
        rows = data.get(key)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise InputError(f"{source}: field '{key}': expected a list of records "
                             "(a file written by lprviz lpr --summary)")
    alpha = data.get("alpha")
    if not number(alpha) or alpha < 0:
        raise InputError(f"{source}: field 'alpha': expected a number >= 0, got {alpha!r:.40}")
    for i, row in enumerate(data["quantiles"]):
        for column in QUANTILE_COLUMNS[2:]:
            value = row.get(column)
            positive = column.startswith("q")
            if column in row and not (number(value) and (value > 0 if positive else value >= 0)):
                raise InputError(f"{source}: quantiles[{i}].{column}: expected a "
                                 f"{'positive' if positive else 'non-negative'} number, got "
                                 f"{value!r:.40}")
    return data
