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
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from lprviz.errors import InputError

__all__ = [
    "MAX_DESCRIPTOR_VALUE",
    "Limits",
    "cell_heights",
    "check_number",
    "closest_pair",
    "first_over_search_limit",
    "frames_with_close_pairs",
    "get_limits",
    "search_pairs",
    "search_pairs_many",
]

#: A cell-list search keeps at most this many sub-cells (featomic's own cap, 1e5).
MAX_SUBCELLS = 100_000

#: Largest descriptor magnitude accepted (fixed): squares and products of values up to 1e100,
#: summed over many columns and divided by a small alpha, stay far from float64's overflow
#: (1.8e308), which would otherwise turn an LPR into 0 and its log into -inf without a word.
MAX_DESCRIPTOR_VALUE = 1e100


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
    max_atoms : int
        Most atoms in one loaded dataset or file (200,000; 100k atoms of three species at the
        default SOAP preset take 1.2 GB of descriptors). A ``max_atoms=`` argument of
        :func:`lprviz.datasets.load` takes precedence.
    """

    max_file_bytes: int = 256 << 20
    max_columns: int = 1000
    max_length: float = 1e5
    max_energy_per_atom: float = 1e7
    min_distance: float = 0.4
    max_search_pairs: float = 5e7
    max_array_bytes: int = 2 << 30
    max_features: int = 4096
    max_atoms: int = 200_000

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
    height of one periodic vector is its length). Non-periodic entries are ``inf``. Takes
    one cell or a stack of them (one batched determinant per periodicity pattern, so a file
    of thousands of frames is checked in a few array operations).

    Parameters
    ----------
    cell : array-like of shape (3, 3) or (n_cells, 3, 3)
        Cell vectors as rows.
    pbc : array-like of 3 bool, or of shape (n_cells, 3)

    Returns
    -------
    numpy.ndarray of shape (3,) or (n_cells, 3)
        0 for a degenerate cell, NaN if the cell is not finite.
    """
    cells = np.asarray(cell, dtype=float)
    single = cells.ndim == 2
    cells = cells.reshape(-1, 3, 3)
    pbcs = np.broadcast_to(np.asarray(pbc, dtype=bool).reshape(-1, 3), (len(cells), 3))
    out = np.full((len(cells), 3), np.inf)
    patterns, which = _patterns(pbcs)
    for p, pattern in enumerate(patterns):
        periodic = np.flatnonzero(pattern)
        if periodic.size == 0:
            continue
        rows = np.flatnonzero(which == p)
        vectors = cells[rows][:, periodic]
        k = periodic.size
        # row i: the indices of the other periodic vectors (an empty row when k = 1)
        others = np.array([[j for j in range(k) if j != i] for i in range(k)],
                          dtype=int).reshape(k, k - 1)
        with np.errstate(all="ignore"):
            gram = vectors @ vectors.transpose(0, 2, 1)
            finite = np.isfinite(gram).all(axis=(1, 2))
            gram[~finite] = np.eye(k)  # no LAPACK call on NaN; those cells get NaN below
            # height^2 = det(G) / det(G without vector i): volume over face area, in any
            # number of periodic dimensions (the determinant of a 0 x 0 matrix is 1)
            det = np.linalg.det(gram)
            sub = np.linalg.det(gram[:, others[:, :, None], others[:, None, :]])
            heights = np.sqrt(np.maximum(det, 0.0)[:, None] / np.where(sub > 0, sub, 1.0))
            heights = np.where(sub > 0, heights, 0.0)
        heights[~finite] = math.nan
        out[rows[:, None], periodic] = heights
    return out[0] if single else out


def _patterns(pbcs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of ``pbcs`` (n, 3) and the index of each row's pattern."""
    if len(pbcs) and (pbcs == pbcs[0]).all():  # the usual case: np.unique costs ~50 us
        return pbcs[:1], np.zeros(len(pbcs), dtype=np.int64)
    patterns, which = np.unique(pbcs, axis=0, return_inverse=True)
    return patterns, which.reshape(-1)


def _search_grid(heights: np.ndarray, cutoff: float):
    """The cell-list grid of :func:`search_pairs` for cells of these heights (n_cells, 3).

    Returns ``(valid, n_sub, reach)``: sub-cells per axis (at least ``cutoff`` thick, at most
    :data:`MAX_SUBCELLS` in all) and sub-cells searched each way; ``valid`` is False where
    the search is unbounded (a degenerate or non-finite cell, a reach beyond 1e12), with
    ``reach`` 0 there.
    """
    with np.errstate(all="ignore"):
        valid = ((heights > 0) & np.isfinite(heights)).all(axis=1)
        h = np.where(valid[:, None], heights, 1.0)
        n_sub = np.maximum(1.0, np.floor(h / cutoff))
        prod = n_sub.prod(axis=1)
        over = prod > MAX_SUBCELLS
        n_sub[over] = np.maximum(1.0, np.floor(
            n_sub[over] * ((MAX_SUBCELLS / prod[over]) ** (1 / 3))[:, None]))
        reach = np.ceil(cutoff * n_sub / h)
        valid &= (np.isfinite(reach) & (reach <= 1e12)).all(axis=1)
    return valid, n_sub, np.where(valid[:, None], reach, 0.0)


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
    valid, n_sub, reach = _search_grid(cell_heights(cell, (True, True, True))[None], cutoff)
    if not valid[0]:
        return math.inf
    n_sub, reach = n_sub[0], reach[0]
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


def search_pairs_many(positions: Sequence[np.ndarray], cells, cutoff: float,
                      limit: float | None = None) -> np.ndarray:
    """:func:`search_pairs` of many fully periodic frames.

    A frame whose cell holds a single sub-cell (every height below twice the cutoff: the
    small cells of most training sets) examines ``n^2 m / 2 + m`` pairs, ``m`` the number of
    periodic images searched; those are counted in one array expression. Otherwise each
    sub-cell is counted at most ``ceil((2 r + 1) / n_sub)`` times per axis in an atom's
    window, so ``n^2 prod(ceil((2 r + 1) / n_sub)) / 2 + visits`` bounds the count: with
    ``limit``, a frame whose bound is at most ``limit`` gets the bound, and only the others
    are counted one by one (a file of 4,000 frames: ~20 ms instead of 0.7 s).

    Parameters
    ----------
    positions : sequence of numpy.ndarray of shape (n_atoms_i, 3)
    cells : array-like of shape (n_frames, 3, 3)
    cutoff : float
    limit : float, optional
        The value callers compare with (``Limits.max_search_pairs``); without it every
        frame's count is exact.

    Returns
    -------
    numpy.ndarray of shape (n_frames,)
        The counts of :func:`search_pairs` (or, with ``limit``, upper bounds at most
        ``limit``).
    """
    cells = np.asarray(cells, dtype=float).reshape(-1, 3, 3)
    valid, n_sub, reach = _search_grid(
        cell_heights(cells, np.ones((len(cells), 3), dtype=bool)), cutoff)
    n = np.array([len(p) for p in positions], dtype=float)
    visits = n_sub.prod(axis=1) * np.prod(2 * reach + 1, axis=1)
    laps = np.ceil((2 * reach + 1) / n_sub).prod(axis=1)
    bound = n * n * laps / 2 + visits
    single = valid & (n_sub == 1).all(1)  # the bound is the count
    settled = single if limit is None else single | (valid & (bound <= limit))
    out = np.where(settled, bound, 0.0)
    for i in np.flatnonzero(~settled):
        out[i] = search_pairs(positions[i], cells[i], cutoff)
    return out


def first_over_search_limit(positions: Sequence[np.ndarray], cells,
                            cutoff: float) -> tuple[int, float, float] | None:
    """The first fully periodic frame whose neighbour search exceeds
    ``Limits.max_search_pairs`` (:func:`search_pairs_many`), as ``(index, pairs, limit)``,
    or None. What the featurisers check before a search that cannot be interrupted."""
    limit = get_limits().max_search_pairs
    pairs = search_pairs_many(positions, cells, cutoff, limit)
    over = np.flatnonzero(~(pairs <= limit))  # NaN counts as over
    if not over.size:
        return None
    return int(over[0]), float(pairs[over[0]]), limit


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
    own images are never closer than ``below``. :func:`frames_with_close_pairs` screens
    many frames at once.

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
    positions = np.asarray(positions, dtype=float)
    n = len(positions)
    if n < 2:
        return None
    frame = np.zeros(n, dtype=np.int64)
    points, owner, wrapped = _with_images(positions, frame, np.asarray(cell, dtype=float)[None],
                                          np.asarray(pbc, dtype=bool)[None], below)
    crowded = _crowded_bin(points, owner, frame[owner], below)
    if crowded is not None:
        return crowded
    dist, partner = _near_hits(points, owner, frame[owner], wrapped, frame, below)
    best = None
    for col in range(2):  # the first hit is the atom itself (or a coincident twin)
        bad = np.flatnonzero(partner[:, col] >= 0)
        if bad.size:
            i = bad[np.argmin(dist[bad, col])]
            cand = (int(min(i, partner[i, col])), int(max(i, partner[i, col])),
                    float(dist[i, col]))
            if best is None or cand[2] < best[2]:
                best = cand
    return best


def frames_with_close_pairs(positions: np.ndarray, sizes, cells, pbcs,
                            below: float) -> np.ndarray:
    """Which frames hold two atoms closer than ``below`` (periodic images included).

    :func:`closest_pair` for many frames at once: one KD-tree over every frame's atoms and
    boundary images, each frame lifted into its own slab of a 4th coordinate (frames
    ``2 * below`` apart there, so no pair across frames is ever within ``below``, and a
    pair within one frame keeps its exact 3-D distance). Checking 4,000 frames of 26 atoms
    costs a few array operations instead of 4,000 trees.

    Parameters
    ----------
    positions : numpy.ndarray of shape (n_atoms, 3)
        The frames' positions, concatenated.
    sizes : array-like of int, shape (n_frames,)
        Atoms per frame.
    cells : array-like of shape (n_frames, 3, 3)
    pbcs : array-like of bool, shape (n_frames, 3)
    below : float
        Distance in Angstrom; every periodic cell height must be ``>= below``.

    Returns
    -------
    numpy.ndarray of bool, shape (n_frames,)
    """
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
    cells = np.asarray(cells, dtype=float).reshape(-1, 3, 3)
    pbcs = np.asarray(pbcs, dtype=bool).reshape(-1, 3)
    frame = np.repeat(np.arange(len(sizes)), sizes)
    points, owner, wrapped = _with_images(positions, frame, cells, pbcs, below)
    crowded = _crowded_frames(points, frame[owner], len(sizes), below)
    if crowded.any():  # the tree only sees frames without a crowded bin (else quadratic)
        rest = np.flatnonzero(~crowded)
        crowded[rest] = frames_with_close_pairs(positions[~crowded[frame]], sizes[rest],
                                                cells[rest], pbcs[rest], below)
        return crowded
    _, partner = _near_hits(points, owner, frame[owner], wrapped, frame, below, screen=True)
    hit = (partner >= 0).any(axis=1)
    return np.bincount(frame[hit], minlength=len(sizes)) > 0


def _with_images(positions: np.ndarray, frame: np.ndarray, cells: np.ndarray,
                 pbcs: np.ndarray, below: float):
    """Wrapped atoms plus the periodic images that can come within ``below`` of them.

    Returns ``(points, owner, wrapped)``: the atoms wrapped into their cells first, then
    the images (for each periodicity pattern, shift by shift, atoms ascending); ``owner``
    is the atom each point is a copy of. An image shifted by +1 along a vector can only
    be near an atom if its atom sits near face 0: one (shifts, atoms) mask per pattern.
    """
    wrapped = positions.copy()
    points, owners = [wrapped], [np.arange(len(positions))]
    patterns, pattern_of_frame = _patterns(pbcs)
    heights = cell_heights(cells, pbcs)
    for p, pattern in enumerate(patterns):
        periodic = np.flatnonzero(pattern)
        if periodic.size == 0:
            continue
        atoms = np.flatnonzero(pattern_of_frame[frame] == p)
        vectors = cells[:, periodic]  # (n_frames, k, 3); only this pattern's frames used
        dual = np.zeros((len(cells), 3, periodic.size))
        mine = np.flatnonzero(pattern_of_frame == p)
        dual[mine] = np.linalg.pinv(vectors[mine])  # fractional coordinates along them
        of = frame[atoms]
        frac = np.einsum("ni,nik->nk", positions[atoms], dual[of])
        wrapped[atoms] = positions[atoms] - np.einsum("nk,nki->ni", np.floor(frac), vectors[of])
        frac = frac - np.floor(frac)
        reach = below / heights[of][:, periodic]
        shifts = _image_shifts(periodic.size)
        lo, hi = frac < reach, frac > 1 - reach
        # only atoms near a face have images: the shift masks are built for those alone
        # (a third of the atoms in 26-atom crystals; the masks were half the screen's time)
        edge = np.flatnonzero((lo | hi).any(axis=1))
        near = np.where(shifts[:, None, :] > 0, lo[edge][None],
                        np.where(shifts[:, None, :] < 0, hi[edge][None], True)).all(axis=2)
        which, k = np.nonzero(near)
        k = edge[k]
        points.append(wrapped[atoms[k]]
                      + np.einsum("mk,mki->mi", shifts[which], vectors[of[k]]))
        owners.append(atoms[k])
    return np.concatenate(points), np.concatenate(owners), wrapped


def _near_hits(points: np.ndarray, owner: np.ndarray, point_frame: np.ndarray,
               queries: np.ndarray, query_frame: np.ndarray, below: float, *,
               screen: bool = False):
    """The two nearest points of each query atom within ``below``, frames kept apart.

    Returns ``(dist, partner)``, both ``(n_queries, 2)``: ``partner`` is the other atom a
    hit is a copy of, or -1 where the hit is the atom itself, missing or not closer than
    ``below``. With ``screen`` (only whether a frame has a hit is wanted): an unbalanced
    tree, built in half the time, and the queries on two threads; which of two equally
    close partners is named can then differ, so :func:`closest_pair`, whose pair goes into
    error messages, keeps the balanced tree.
    """
    from scipy.spatial import cKDTree

    lift = 2.0 * below  # frames apart by this in the 4th coordinate never meet
    tree = cKDTree(np.column_stack([points, point_frame * lift]), balanced_tree=not screen,
                   compact_nodes=not screen)
    dist, idx = tree.query(np.column_stack([queries, query_frame * lift]), k=2,
                           distance_upper_bound=below, workers=2 if screen else 1)
    found = np.isfinite(dist)
    partner = np.where(found, owner[np.minimum(idx, len(owner) - 1)], -1)
    own = np.arange(len(queries))[:, None]
    partner[(partner == own) | ~(dist < below)] = -1
    return dist, partner


def _image_shifts(k: int) -> np.ndarray:
    """The 3^k - 1 nonzero shifts by -1, 0, +1 along ``k`` periodic vectors, (3^k - 1, k)."""
    shifts = np.array(list(np.ndindex(*(3,) * k)), dtype=float).reshape(3**k, k) - 1
    return shifts[shifts.any(axis=1)]


def _crowded_bins(points: np.ndarray, point_frame: np.ndarray, below: float):
    """Each point's cubic bin of side ``below`` (bins never shared across frames).

    Returns ``(inverse, counts)`` of the bins. Points at least ``below`` apart fit at most 8
    to a bin (one per corner): nine points of a crowded bin always hold a pair closer than
    ``below``, as two share one of its eight half-size sub-cubes. The pair cannot be an atom
    and its own image, which are at least one cell height (>= ``below``) apart.
    """
    cells = np.column_stack([np.floor(points / below), point_frame])
    cells -= cells.min(axis=0)
    span = [int(x) + 1 for x in cells.max(axis=0)]  # exact Python integers
    if max(span) < 2**53 and math.prod(span) < 2**62:
        # one exact integer per bin, in int64 arithmetic (a float key merges neighbouring
        # bins beyond 2**53): a 1-D unique, 10x faster than unique rows
        c = cells.astype(np.int64)
        key = ((c[:, 3] * span[0] + c[:, 0]) * span[1] + c[:, 1]) * span[2] + c[:, 2]
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    else:
        _, inverse, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


def _crowded_frames(points: np.ndarray, point_frame: np.ndarray, n_frames: int,
                    below: float) -> np.ndarray:
    """Frames with a bin of :func:`_crowded_bins` holding more than 8 points."""
    if len(points) <= 8:
        return np.zeros(n_frames, dtype=bool)
    inverse, counts = _crowded_bins(points, point_frame, below)
    return np.bincount(point_frame[counts[inverse] > 8], minlength=n_frames) > 0


def _crowded_bin(points: np.ndarray, owner: np.ndarray, point_frame: np.ndarray,
                 below: float) -> tuple[int, int, float] | None:
    """A close pair from the fullest bin of :func:`_crowded_bins` if it holds more than 8
    points (one frame's points), or None."""
    if len(points) <= 8:
        return None
    inverse, counts = _crowded_bins(points, point_frame, below)
    if counts.max() <= 8:
        return None
    members = np.flatnonzero(inverse == np.argmax(counts))[:9]
    sub = points[members]
    dist = np.linalg.norm(sub[:, None] - sub[None], axis=-1)
    dist[np.diag_indices(len(sub))] = np.inf
    a, b = np.unravel_index(np.argmin(dist), dist.shape)
    if not dist[a, b] < below:  # cannot happen with exact bins; never report a false pair
        return None
    i, j = sorted((int(owner[members[a]]), int(owner[members[b]])))
    return i, j, float(dist[a, b])
