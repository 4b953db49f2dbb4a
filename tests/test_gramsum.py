"""lprviz.gramsum: the one summation order of X^T X and X^T y, built whole (serial) or from
pieces of any chunking (distributed), against numpy's products of all rows."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from lprviz import gramsum


def _data(n=400, d=23, seed=0):
    """Rows of mixed magnitudes (so that the order of additions shows in the last bits)."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, d)) * np.exp(rng.normal(scale=3.0, size=(n, 1)))
    return rows, rng.normal(size=n), rng.integers(1, 40, size=n)


def test_block_stops_whole_frames_of_at_least_block_atoms():
    assert gramsum.block_stops([5, 5, 5, 5, 5], 10).tolist() == [2, 4, 5]
    assert gramsum.block_stops([30, 1, 9], 10).tolist() == [1, 3]  # a big frame ends a block
    assert gramsum.block_stops([], 10).size == 0
    sizes = _data()[2]
    stops = gramsum.block_stops(sizes, 300)
    starts = np.concatenate([[0], stops[:-1]])
    assert stops[-1] == len(sizes) and np.all(np.diff(stops) > 0)
    for s, e in zip(starts[:-1], stops[:-1], strict=True):
        assert sizes[s:e].sum() >= 300 > sizes[s:e - 1].sum()


def test_ordered_sum_is_the_pairwise_tree():
    """Five 1x1 "matrices": ((a + b) + (c + d)) + e, the tree the docstring describes."""
    parts = [(np.array([[float(v)]]), np.array([float(v)])) for v in (1e16, 1.0, -1e16, 1.0, 3.0)]
    gram, xty = gramsum.ordered_sum(parts)
    # the spacing of doubles at 1e16 is 2: 1e16 + 1 and -1e16 + 1 round back (ties to even),
    # so the tree gives 3 and left to right gives 4
    expected = ((1e16 + 1.0) + (-1e16 + 1.0)) + 3.0
    assert gram[0, 0] == expected == xty[0]
    assert expected != (((1e16 + 1.0) + -1e16) + 1.0) + 3.0  # left to right: another result


def test_training_sums_equal_one_product_of_all_rows():
    rows, y, sizes = _data()
    gram, xty = gramsum.training_sums(rows, y, gramsum.block_stops(sizes, 500))
    np.testing.assert_allclose(gram, rows.T @ rows, rtol=1e-12, atol=1e-12 * np.abs(gram).max())
    np.testing.assert_allclose(xty, rows.T @ y, rtol=1e-12, atol=1e-12 * np.abs(xty).max())


def test_model_sums_scale_the_composition_columns():
    """As if the composition columns had been multiplied by the scale before summing."""
    rows, y, sizes = _data()
    comp = np.random.default_rng(1).random((len(y), 3))
    scale = 0.37
    gram, xty = gramsum.model_sums(rows, y, sizes, scale, comp)
    full = np.hstack([rows[:, :-3], scale * comp])
    np.testing.assert_allclose(gram, full.T @ full, rtol=1e-12, atol=1e-12 * np.abs(gram).max())
    np.testing.assert_allclose(xty, full.T @ y, rtol=1e-12, atol=1e-12 * np.abs(xty).max())


@pytest.mark.parametrize("seed", range(6))
def test_pieces_of_any_chunking_give_the_serial_bits(seed):
    """Chunks cut anywhere (inside blocks, several blocks per chunk, one block over several
    chunks), merged in a random order of neighbours, on 1 or 2 BLAS threads: exactly the
    serial sums; summing the same block products left to right changes the last bits (so the
    equality would catch a change of order)."""
    rows, y, sizes = _data(seed=seed)
    rng = np.random.default_rng(seed)
    norm2 = rng.random(sizes.sum()) * 10.0 ** rng.integers(-8, 8, sizes.sum())  # per atom
    monkey = pytest.MonkeyPatch()
    monkey.setattr(gramsum, "BLOCK_ATOMS", 300)
    with monkey.context():
        stops = gramsum.block_stops(sizes)
        serial = gramsum.training_sums(rows, y, stops)
        sumsq = gramsum.atom_sumsq(norm2, sizes)
    atom = np.concatenate([[0], np.cumsum(sizes)])
    cuts = np.unique(np.concatenate([[0], rng.integers(0, len(y), 12), [len(y)]]))
    with threadpool_limits(2, user_api="blas"):
        parts = [gramsum.partial(rows[a:b], y[a:b], norm2[atom[a]:atom[b]], sizes[a:b], int(a),
                                 stops) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    while len(parts) > 1:
        i = int(rng.integers(0, len(parts) - 1))
        parts[i:i + 2] = [gramsum.merge(parts[i], parts[i + 1], stops)]
    got = gramsum.total(parts[0])
    assert np.array_equal(got[0], serial[0]) and np.array_equal(got[1], serial[1])
    assert float(got[2]) == sumsq
    np.testing.assert_allclose(sumsq, norm2.sum(), rtol=1e-13)

    starts = np.concatenate([[0], stops[:-1]])
    blocks = [gramsum.block_sums(rows[s:e], y[s:e]) for s, e in zip(starts, stops, strict=True)]
    left_to_right = sum(b[0] for b in blocks[1:]) + blocks[0][0]
    assert len(blocks) > 8 and not np.array_equal(left_to_right, serial[0])


def test_incomplete_pieces_are_refused():
    rows, y, sizes = _data()
    stops = gramsum.block_stops(sizes, 300)
    with pytest.raises(ValueError, match="incomplete"):
        gramsum.total(gramsum.partial(rows[:50], y[:50], np.ones(sizes[:50].sum()), sizes[:50],
                                      0, stops))
