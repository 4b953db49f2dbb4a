"""Bounds on the work and the values a user's input may ask for, checked before the work.

A few bytes of input can ask for hours of CPU or terabytes of memory: an extxyz count line
claiming 1e11 atoms, a periodic cell a millionth of an Angstrom thick (a cell-list neighbour
search then visits ten million periodic images; featomic aborts the whole process when its
allocation fails), six elements that make the SOAP vector 5145 wide and its Gram matrix a
minute-long eigendecomposition. Each layer estimates the cost of what it is about to do from
cheap quantities (line counts, cell heights, sub-cell occupancy, species count) and refuses
with a one-line :class:`~lprviz.errors.InputError` naming the file or option and the limit:

* the readers (:mod:`lprviz.datasets.readers`): file size, atom counts, coordinate
  magnitudes, cell heights and the closest pair of atoms;
* :func:`lprviz.features.compute_soap`: the neighbour-search work and the descriptor array;
* :func:`lprviz.pipeline.prepare`: the model width ``d`` (the ``d x d`` matrix it factorises).

:class:`Limits` holds the defaults; each can be changed through an environment variable
(``LPRVIZ_`` + the field name in capitals, e.g. ``LPRVIZ_MAX_FEATURES=6000``), read at every
check. ``docs/limits.md`` explains each limit and what it protects.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace

import numpy as np

from lprviz.errors import InputError

__all__ = [
    "Limits",
    "cell_heights",
    "check_number",
    "closest_pair",
    "get_limits",
    "search_pairs",
]

#: A cell-list search keeps at most this many sub-cells (featomic's own cap, 1e5).
MAX_SUBCELLS = 100_000


@dataclass(frozen=True)
class Limits:
    """Limits on input values and on the work they cause (defaults; see :func:`get_limits`).

    Attributes
    ----------
    max_file_bytes : int
        Largest structure file read (after decompression), 256 MiB: about a million atoms of
        extxyz; JSON is parsed in memory at ~7x its size.
    max_columns : int
        Most columns an extxyz ``Properties`` may declare per atom line (1000; real files have
        fewer than 50): ASE builds a record type of every declared column before reading.
    max_length : float
        Largest absolute Cartesian coordinate or cell-matrix entry, in Angstrom (1e5, i.e.
        10 micrometres): larger values are wrong units or corruption, and at 1e300 cell
        volumes overflow.
    max_energy_per_atom : float
        Largest absolute total energy per atom, in eV (1e7): all-electron energies of the
        heaviest atoms are ~1e6 eV; beyond, a ridge fit squares numbers toward overflow.
    min_distance : float
        Smallest distance between two atoms (periodic images included) and smallest height
        of a periodic cell, in Angstrom (0.4). The shortest bond in nature, H2, is 0.74 A;
        coincident atoms (duplicated lines, a lost position column) and coordinates in nm
        read as Angstrom fall below it.
    max_search_pairs : float
        Largest number of atom pairs a cell-list neighbour search may examine for one
        structure at the SOAP cutoff (5e7, about 1.6 GB of candidate pairs in featomic).
        A realistic 100k-atom metal cell needs ~2e7 at a 5 A cutoff.
    max_array_bytes : int
        Largest per-atom feature array (``n_atoms x d`` float64: descriptors, model features,
        projections), 2 GiB: 100k atoms of three species at the default SOAP preset use 1.2 GB.
    max_features : int
        Largest model width ``d`` (4096): the ``d x d`` matrix takes 128 MiB and its
        eigendecomposition about a minute on two cores (d = 1473 for three species takes 1-2 s).
    """

    max_file_bytes: int = 256 << 20
    max_columns: int = 1000
    max_length: float = 1e5
    max_energy_per_atom: float = 1e7
    min_distance: float = 0.4
    max_search_pairs: float = 5e7
    max_array_bytes: int = 2 << 30
    max_features: int = 4096

    @staticmethod
    def env_name(field: str) -> str:
        """Environment variable that overrides ``field`` (``LPRVIZ_MAX_FEATURES``...)."""
        return "LPRVIZ_" + field.upper()


def get_limits() -> Limits:
    """The limits in force: :class:`Limits` defaults, overridden by ``LPRVIZ_*`` variables.

    Returns
    -------
    Limits

    Raises
    ------
    InputError
        If a variable is set to something that is not a positive finite number.
    """
    limits = Limits()
    changes = {}
    for f in fields(Limits):
        name = Limits.env_name(f.name)
        text = os.environ.get(name)
        if text is None or not text.strip():
            continue
        default = getattr(limits, f.name)
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{name}: expected a positive number, got {text!r}")
        changes[f.name] = int(value) if isinstance(default, int) else value
    return replace(limits, **changes) if changes else limits


def check_number(
    name: str,
    value,
    low: float,
    high: float,
    *,
    integer: bool = False,
    unit: str = "",
) -> float | int:
    """``value`` as a number in ``[low, high]``, or a one-line :class:`InputError`.

    Parameters
    ----------
    name : str
        What the value is, as the user knows it (``"--cutoff"``, ``"SoapHypers.cutoff"``).
    value : object
        The value to check (NaN, inf, strings and booleans are refused).
    low, high : float
        Inclusive bounds.
    integer : bool
        Require an integer (``5.0`` and ``numpy.int64(5)`` are accepted, ``5.5`` is not).
    unit : str
        Unit shown in the message (``"A"``).

    Returns
    -------
    int or float
    """
    kind = "an integer" if integer else "a number"
    span = f"in [{low:g}, {high:g}]{' ' + unit if unit else ''}"
    try:
        if isinstance(value, (bool, np.bool_, str, bytes)):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name}: expected {kind} {span}, got {value!r}") from None
    if not low <= number <= high or (integer and number != int(number)):
        raise InputError(f"{name}: expected {kind} {span}, got {value!r}")
    return int(number) if integer else number


def cell_heights(cell, pbc) -> np.ndarray:
    """Spacing of the lattice planes of each periodic cell vector (Angstrom).

    For a fully periodic cell the height along vector ``i`` is ``volume / area`` of the face
    spanned by the other two; for fewer periodic vectors only those vectors count (the
    height of one periodic vector is its length). Non-periodic entries are ``inf``.

    Parameters
    ----------
    cell : array-like of shape (3, 3)
        Cell vectors as rows.
    pbc : array-like of 3 bool

    Returns
    -------
    numpy.ndarray of shape (3,)
        0 for a degenerate cell, NaN if the cell is not finite.
    """
    cell = np.asarray(cell, dtype=float).reshape(3, 3)
    periodic = np.flatnonzero(np.asarray(pbc, dtype=bool))
    out = np.full(3, np.inf)
    if periodic.size == 0:
        return out
    vectors = cell[periodic]
    k = periodic.size
    # row i: the indices of the other periodic vectors (an empty row when k = 1)
    others = np.array([[j for j in range(k) if j != i] for i in range(k)],
                      dtype=int).reshape(k, k - 1)
    with np.errstate(all="ignore"):
        gram = vectors @ vectors.T
        det = np.linalg.det(gram) if np.all(np.isfinite(gram)) else math.nan
        # height^2 = det(G) / det(G without vector i): volume over face area, in any number
        # of periodic dimensions (the determinant of a 0 x 0 matrix is 1); one batched det.
        sub = np.linalg.det(gram[others[:, :, None], others[:, None, :]])
        heights = np.sqrt(max(det, 0.0) / np.where(sub > 0, sub, 1.0))
        out[periodic] = np.where(sub > 0, heights, 0.0) if math.isfinite(det) else math.nan
    return out


def search_pairs(positions: np.ndarray, cell: np.ndarray, cutoff: float) -> float:
    """Atom pairs a cell-list neighbour search examines in a fully periodic cell.

    Model of the search featomic (and ASE) run: the cell is cut into sub-cells at least
    ``cutoff`` thick (at most :data:`MAX_SUBCELLS`), each atom is compared with every atom of
    the sub-cells within ``cutoff``, and a cell thinner than ``cutoff`` is searched through
    ``ceil(cutoff / height)`` periodic images each way. The count uses the real occupancy of
    the sub-cells, so atoms crowded into one corner of a large cell are counted as such.
    Cost: O(n_atoms + n_subcells).

    Parameters
    ----------
    positions : numpy.ndarray of shape (n_atoms, 3)
    cell : numpy.ndarray of shape (3, 3)
        Cell vectors as rows (periodic along all three).
    cutoff : float
        Search radius in Angstrom.

    Returns
    -------
    float
        Estimated pairs examined (candidate pairs plus sub-cell visits); ``inf`` for a
        degenerate or non-finite cell.
    """
    heights = cell_heights(cell, (True, True, True))
    if not np.all(np.isfinite(heights)) or np.any(heights <= 0):
        return math.inf
    n_sub = np.maximum(1.0, np.floor(heights / cutoff))
    if n_sub.prod() > MAX_SUBCELLS:
        n_sub = np.maximum(1.0, np.floor(n_sub * (MAX_SUBCELLS / n_sub.prod()) ** (1 / 3)))
    reach = np.ceil(cutoff * n_sub / heights)  # sub-cells searched each way
    if not np.all(np.isfinite(reach)) or np.any(reach > 1e12):
        return math.inf
    visits = float(n_sub.prod() * np.prod(2 * reach + 1))
    shape = tuple(int(n) for n in n_sub)
    frac = np.linalg.solve(cell.T, np.asarray(positions, dtype=float).T).T
    index = np.floor((frac - np.floor(frac)) * n_sub).astype(np.int64)
    index = np.minimum(index, np.array(shape) - 1)  # frac just below 1 may round up
    counts = np.bincount(np.ravel_multi_index(index.T, shape), minlength=int(n_sub.prod()))
    counts = counts.reshape(shape).astype(float)
    window = counts
    for axis in range(3):
        window = _circular_window_sum(window, axis, int(reach[axis]))
    return float((counts * window).sum() / 2 + visits)


def _circular_window_sum(grid: np.ndarray, axis: int, reach: int) -> np.ndarray:
    """Sum of ``grid`` over offsets ``-reach..reach`` along a periodic ``axis``."""
    n = grid.shape[axis]
    laps, rest = divmod(2 * reach + 1, n)
    out = laps * grid.sum(axis=axis, keepdims=True) * np.ones_like(grid)
    for t in range(rest):  # rest < n; at most 3 unless the axis has a single sub-cell
        out = out + np.roll(grid, reach - t, axis=axis)
    return out


def closest_pair(positions: np.ndarray, cell: np.ndarray, pbc,
                 below: float) -> tuple[int, int, float] | None:
    """The first pair of atoms closer than ``below`` (periodic images included), or None.

    A KD-tree nearest-neighbour query (O(n log n) time, O(n) memory whatever the number of
    close pairs); periodic images are added only for atoms within ``below`` of a cell face.
    Massively coincident atoms (which make a KD-tree quadratic) are found first by binning.
    Needs every periodic cell height ``>= below`` (:func:`cell_heights`), so that an atom's
    own images are never closer than ``below``.

    Parameters
    ----------
    positions : numpy.ndarray of shape (n_atoms, 3)
    cell : numpy.ndarray of shape (3, 3)
    pbc : array-like of 3 bool
    below : float
        Distance in Angstrom.

    Returns
    -------
    (i, j, distance) or None
        ``i < j`` atom indices (in the given order) of the closest offending pair.
    """
    from scipy.spatial import cKDTree

    positions = np.asarray(positions, dtype=float)
    n = len(positions)
    if n < 2:
        return None
    points, owner = positions, np.arange(n)
    periodic = np.flatnonzero(np.asarray(pbc, dtype=bool))
    if periodic.size:
        vectors = np.asarray(cell, dtype=float)[periodic]
        dual = np.linalg.pinv(vectors)  # (3, k): fractional coordinates along the vectors
        frac = positions @ dual
        wrapped = positions - np.floor(frac) @ vectors
        frac = frac - np.floor(frac)
        reach = below / cell_heights(cell, pbc)[periodic]
        shifts = _image_shifts(periodic.size)
        # an image shifted by +1 can only be near atoms if the atom sits near face 0: one
        # (shifts, atoms) mask for all 3^k - 1 images (a loop over them cost more than the
        # tree for frames of tens of atoms)
        lo, hi = frac < reach, frac > 1 - reach
        near = np.where(shifts[:, None, :] > 0, lo[None],
                        np.where(shifts[:, None, :] < 0, hi[None], True)).all(axis=2)
        which, atom = np.nonzero(near)  # shift by shift, atoms ascending
        points = np.concatenate([wrapped, wrapped[atom] + shifts[which] @ vectors])
        owner = np.concatenate([owner, atom])
        positions = wrapped
    crowded = _crowded_bin(points, owner, below)
    if crowded is not None:
        return crowded
    tree = cKDTree(points)
    dist, idx = tree.query(positions, k=2, distance_upper_bound=below)
    # the first hit is the atom itself (or a coincident twin): look at both hits
    best = None
    for col in range(2):
        partner = np.where(np.isfinite(dist[:, col]), owner[np.minimum(idx[:, col],
                                                                       len(owner) - 1)], -1)
        bad = np.flatnonzero((partner >= 0) & (partner != np.arange(n)) & (dist[:, col] < below))
        if bad.size:
            i = bad[np.argmin(dist[bad, col])]
            cand = (int(min(i, partner[i])), int(max(i, partner[i])), float(dist[i, col]))
            if best is None or cand[2] < best[2]:
                best = cand
    return best


def _image_shifts(k: int) -> np.ndarray:
    """The 3^k - 1 nonzero shifts by -1, 0, +1 along ``k`` periodic vectors, (3^k - 1, k)."""
    shifts = np.array(list(np.ndindex(*(3,) * k)), dtype=float).reshape(3**k, k) - 1
    return shifts[shifts.any(axis=1)]


def _crowded_bin(points: np.ndarray, owner: np.ndarray,
                 below: float) -> tuple[int, int, float] | None:
    """A close pair from a cubic bin of side ``below`` holding more than 8 points, or None.

    Points at least ``below`` apart fit at most 8 to such a bin (one per corner). Nine
    points of a crowded bin always hold a pair closer than ``below``: two share one of its
    eight half-size sub-cubes. The pair cannot be an atom and its own image, which are at
    least one cell height (>= ``below``) apart.
    """
    if len(points) <= 8:
        return None
    cells = np.floor(points / below)
    cells -= cells.min(axis=0)
    span = cells.max(axis=0) + 1
    if np.prod(span) < 2.0**62:  # one exact integer per bin: a 1-D unique (10x faster)
        key = (cells[:, 0] * span[1] + cells[:, 1]) * span[2] + cells[:, 2]
        _, inverse, counts = np.unique(key.astype(np.int64), return_inverse=True,
                                       return_counts=True)
    else:
        _, inverse, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    if counts.max() <= 8:
        return None
    members = np.flatnonzero(inverse.reshape(-1) == np.argmax(counts))[:9]
    sub = points[members]
    dist = np.linalg.norm(sub[:, None] - sub[None], axis=-1)
    dist[np.diag_indices(len(sub))] = np.inf
    a, b = np.unravel_index(np.argmin(dist), dist.shape)
    i, j = sorted((int(owner[members[a]]), int(owner[members[b]])))
    return i, j, float(dist[a, b])
