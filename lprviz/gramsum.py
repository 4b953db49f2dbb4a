"""One summation order for the training sums :math:`X^\\top X` and :math:`X^\\top y`.

Floating-point addition is not associative: the same rows summed in another grouping round
differently, and at small alpha the LPR of a few atoms amplifies that round-off to ~1e-10.
So the serial run (:func:`lprviz.pipeline.prepare`) and the distributed one
(:mod:`lprviz.distributed`) use the order defined here, whatever the chunking or the number
of BLAS threads:

1. the training rows (one per training structure, in frame order) are cut into blocks of
   whole frames of about :data:`BLOCK_ATOMS` atoms (:func:`block_stops`);
2. each block's :math:`R_b^\\top R_b` and :math:`R_b^\\top y_b` is one product on one BLAS
   thread (a multi-threaded GEMM splits its sums by thread count);
3. the block sums are added as a fixed pairwise tree (:func:`ordered_sum`): node ``(L, k)``
   is the sum of blocks ``k 2^L ... min((k+1) 2^L, n) - 1``; the root is the total.

A distributed run builds the same tree from pieces (:class:`Partial`, :func:`partial`,
:func:`merge`): a chunk of rows gives the products of the blocks it holds whole, plus the
rows of the blocks it holds only in part; merging neighbours completes those blocks and adds
sibling nodes. Addition is commutative in IEEE arithmetic, so only the tree matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BLOCK_ATOMS", "Partial", "atom_sumsq", "block_stops", "block_sums", "merge",
           "model_sums", "ordered_sum", "partial", "scaled", "total", "training_sums"]

#: Atoms per block of training frames. Larger blocks cost fewer, bigger products (measured
#: in benchmarks/bench_gramsum.py against one multi-threaded GEMM of all rows).
BLOCK_ATOMS = 16384

Sums = tuple[np.ndarray, np.ndarray]  # (R^T R, R^T y)


def block_stops(sizes: Sequence[int] | np.ndarray, block_atoms: int | None = None) -> np.ndarray:
    """Row indices ending the blocks: each block holds whole frames, at least ``block_atoms``
    atoms, except the last.

    Parameters
    ----------
    sizes : sequence of int
        Atoms of each training frame, in training order.
    block_atoms : int, optional
        Atoms per block (default :data:`BLOCK_ATOMS`, read at call time).

    Returns
    -------
    numpy.ndarray of int64
        Increasing stops; the last is ``len(sizes)`` (empty when ``sizes`` is).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    block_atoms = BLOCK_ATOMS if block_atoms is None else block_atoms
    if sizes.size == 0:
        return np.zeros(0, dtype=np.int64)
    # frame i ends a block when the atoms since the previous end reach block_atoms: a
    # sequential rule (an ends-at-multiples shortcut would differ after a big frame)
    stops, atoms = [], 0
    for i, n in enumerate(sizes.tolist()):
        atoms += n
        if atoms >= block_atoms:
            stops.append(i + 1)
            atoms = 0
    if not stops or stops[-1] != sizes.size:
        stops.append(sizes.size)
    return np.asarray(stops, dtype=np.int64)


def block_sums(rows: np.ndarray, y: np.ndarray) -> Sums:
    """:math:`R^\\top R` and :math:`R^\\top y` of one block, on one BLAS thread."""
    from lprviz.rigidity import _one_thread

    rows = np.ascontiguousarray(rows, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    with _one_thread():
        return rows.T @ rows, rows.T @ y


def _add(a: tuple, b: tuple) -> tuple:
    return tuple(x + z for x, z in zip(a, b, strict=True))


def _add_into(a: tuple, b: tuple) -> tuple:
    """``a + b`` written into ``a``'s arrays (the same bits as :func:`_add`, no new d x d
    array per addition)."""
    return tuple(np.add(x, z, out=x) if isinstance(x, np.ndarray) and x.ndim else x + z
                 for x, z in zip(a, b, strict=True))


def _atom_stops(sizes: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Atom index ending each block of frames."""
    return np.cumsum(np.asarray(sizes, dtype=np.int64))[stops - 1] if len(stops) else stops


def ordered_sum(parts: Sequence[tuple], *, inplace: bool = False) -> tuple:
    """Sum of ``parts`` (tuples of arrays or numbers, added entry by entry) in the fixed
    pairwise tree: neighbours ``(0, 1), (2, 3), ...`` are added, an odd last part is carried
    up unchanged, until one is left. With ``inplace`` the parts' arrays are overwritten."""
    level = list(parts)
    if not level:
        raise ValueError("ordered_sum: no parts")
    add = _add_into if inplace else _add
    while len(level) > 1:
        nxt = [add(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def training_sums(rows: np.ndarray, y: np.ndarray, stops: np.ndarray) -> Sums:
    """:math:`R^\\top R` and :math:`R^\\top y` of all training rows in the fixed order.

    Parameters
    ----------
    rows : numpy.ndarray of shape (n_rows, d)
        Training rows in frame order.
    y : numpy.ndarray of shape (n_rows,)
        Targets of the rows.
    stops : numpy.ndarray of int
        Block ends from :func:`block_stops` (last one ``n_rows``).

    Returns
    -------
    (numpy.ndarray of shape (d, d), numpy.ndarray of shape (d,))
    """
    starts = np.concatenate([[0], stops[:-1]])
    return ordered_sum([block_sums(rows[s:e], y[s:e]) for s, e in zip(starts, stops,
                                                                       strict=True)],
                       inplace=True)


def scaled(sums: Sums, scale: float, n_baseline: int) -> Sums:
    """Sums of rows whose last ``n_baseline`` columns (the composition) are unscaled, as if
    those columns had been multiplied by ``scale`` first. Both runs scale after summing: the
    scale is known only once every training atom has been seen."""
    gram, xty = sums
    column = np.ones(gram.shape[0])
    if n_baseline:
        column[gram.shape[0] - n_baseline:] = scale
    return gram * column[:, None] * column[None, :], xty * column


def model_sums(rows: np.ndarray, y: np.ndarray, sizes: np.ndarray, scale: float,
               composition: np.ndarray | None = None) -> Sums:
    """The model's scaled :math:`X^\top X` and :math:`X^\top y` of a whole training set
    (what :func:`lprviz.pipeline.prepare` needs).

    Parameters
    ----------
    rows : numpy.ndarray of shape (n_rows, d)
        Training rows in frame order; with ``composition``, its last columns are replaced.
    y : numpy.ndarray of shape (n_rows,)
    sizes : numpy.ndarray of int of shape (n_rows,)
        Atoms of each training frame (they fix the blocks).
    scale : float
        Multiplies the composition columns.
    composition : numpy.ndarray of shape (n_rows, n_species), optional
        The unscaled composition rows (the model's baseline columns).

    Returns
    -------
    (numpy.ndarray of shape (d, d), numpy.ndarray of shape (d,))
    """
    n_baseline = 0 if composition is None else composition.shape[1]
    if n_baseline:
        rows = np.hstack([rows[:, :rows.shape[1] - n_baseline], composition])
    return scaled(training_sums(rows, y, block_stops(sizes)), scale, n_baseline)


def atom_sumsq(norm2: np.ndarray, sizes: np.ndarray) -> float:
    """Sum of the training atoms' squared norms (the feature scale's numerator) in the same
    blocks and tree: a distributed run sums it from pieces, and the scale multiplies the
    composition columns, so a last-bit difference here would show as one in ``X^T X``.

    Parameters
    ----------
    norm2 : numpy.ndarray of shape (n_atoms,)
        Squared norms of the training atoms' features, in frame order.
    sizes : numpy.ndarray of int of shape (n_frames,)
        Atoms of each training frame.
    """
    ends = _atom_stops(sizes, block_stops(sizes))
    starts = np.concatenate([[0], ends[:-1]])
    return float(ordered_sum([(np.sum(norm2[a:b]),) for a, b in zip(starts, ends,
                                                                     strict=True)])[0])


# ------------------------------------------------------------------ the tree from pieces
@dataclass
class Partial:
    """Part of the tree: complete nodes ``{(level, k): (R^T R, R^T y, sum of norm2)}`` and
    the rows of blocks held only in part ``{block: (first_row, rows, y, norm2 of their
    atoms)}``."""

    n_blocks: int
    nodes: dict[tuple[int, int], tuple] = field(default_factory=dict)
    pieces: dict[int, tuple] = field(default_factory=dict)


def _collapse(p: Partial) -> Partial:
    """Add sibling nodes (and carry up a last node without a sibling) while possible."""
    changed = True
    while changed:
        changed = False
        for (level, k) in sorted(p.nodes):
            if (level, k) not in p.nodes or k % 2:
                continue
            if (1 << level) >= p.n_blocks:  # the root
                continue
            if (k + 1) << level >= p.n_blocks:  # no right sibling: carried up as it is
                p.nodes[(level + 1, k // 2)] = p.nodes.pop((level, k))
                changed = True
            elif (level, k + 1) in p.nodes:
                p.nodes[(level + 1, k // 2)] = _add(p.nodes.pop((level, k)),
                                                    p.nodes.pop((level, k + 1)))
                changed = True
    return p


def _leaf(rows: np.ndarray, y: np.ndarray, norm2: np.ndarray) -> tuple:
    return (*block_sums(rows, y), np.sum(norm2))


def partial(rows: np.ndarray, y: np.ndarray, norm2: np.ndarray, sizes: np.ndarray,
            first_row: int, stops: np.ndarray) -> Partial:
    """The tree's pieces from training rows ``first_row ... first_row + len(rows) - 1``.

    Parameters
    ----------
    rows, y : numpy.ndarray
        Consecutive training rows and their targets.
    norm2 : numpy.ndarray
        Squared norms of the features of their atoms (see :func:`atom_sumsq`).
    sizes : numpy.ndarray of int
        Atoms of each of their frames.
    first_row : int
        Index of ``rows[0]`` among all training rows.
    stops : numpy.ndarray of int
        Block ends of all training rows (:func:`block_stops`).
    """
    out = Partial(len(stops))
    lo, hi = first_row, first_row + len(rows)
    starts = np.concatenate([[0], stops[:-1]])
    atom = np.concatenate([[0], np.cumsum(np.asarray(sizes, dtype=np.int64))])
    for b in np.flatnonzero((starts < hi) & (stops > lo)).tolist():
        s, e = max(int(starts[b]), lo), min(int(stops[b]), hi)
        piece = (rows[s - lo:e - lo], y[s - lo:e - lo], norm2[atom[s - lo]:atom[e - lo]])
        if s == starts[b] and e == stops[b]:
            out.nodes[(0, b)] = _leaf(*piece)
        else:
            out.pieces[b] = (s, *piece)
    return _collapse(out)


def merge(a: Partial | None, b: Partial | None, stops: np.ndarray) -> Partial | None:
    """Two partials of disjoint rows as one: pieces of a block joined (and its product taken
    once it is whole), sibling nodes added."""
    if a is None or b is None:
        return b if a is None else a
    starts = np.concatenate([[0], stops[:-1]])
    out = Partial(a.n_blocks, {**a.nodes, **b.nodes}, dict(a.pieces))
    for block, piece in b.pieces.items():
        if block in out.pieces:
            first, second = sorted([out.pieces[block], piece], key=lambda p: p[0])
            piece = (first[0], np.vstack([first[1], second[1]]),
                     *(np.concatenate([u, v]) for u, v in zip(first[2:], second[2:],
                                                               strict=True)))
        out.pieces[block] = piece
        s, rows = piece[:2]
        if s == starts[block] and s + len(rows) == stops[block]:
            del out.pieces[block]
            out.nodes[(0, block)] = _leaf(*piece[1:])
    return _collapse(out)


def total(p: Partial) -> tuple:
    """The root of a partial that holds every block: ``(R^T R, R^T y, sum of norm2)``."""
    if p.pieces or len(p.nodes) != 1:
        raise ValueError(f"gramsum: incomplete sums ({len(p.nodes)} nodes, "
                         f"{len(p.pieces)} blocks in pieces)")
    return next(iter(p.nodes.values()))
