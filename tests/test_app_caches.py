"""The app's caches: bounded by bytes, one computation per key, released by source."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from lprviz.app import caches


@pytest.fixture
def budget(monkeypatch):
    """A 1 MB budget: a cache with share 1.0 holds at most 1 MiB."""
    monkeypatch.setenv("LPRVIZ_APP_CACHE_MB", "1")
    return caches.ByteCache("test", 1.0)


def _mb(fraction: float) -> np.ndarray:
    return np.zeros(int(fraction * 2**20) // 8)


def test_nbytes_counts_arrays_once_and_views_by_their_base():
    a = np.zeros(1000)
    assert caches.nbytes(a) == 8000
    assert caches.nbytes({"x": a, "y": a[:10], "z": [a]}) - caches.nbytes({}) < 8000 + 64 * 4
    assert caches.nbytes((a, np.zeros(500))) >= 12000


def test_evicts_least_recently_used_beyond_the_byte_bound(budget):
    for key in "abc":
        budget.get(key, lambda: _mb(0.3))
    budget.get("a", lambda: pytest.fail("a is cached"))  # a is now the most recent
    budget.get("d", lambda: _mb(0.3))  # 1.2 MB > 1 MiB: b (least recent) goes
    assert "b" not in budget and {"a", "c", "d"} <= set(budget._entries)
    assert budget.nbytes <= budget.max_bytes


def test_a_value_larger_than_the_bound_is_returned_not_kept(budget):
    budget.get("small", lambda: _mb(0.1))
    big = budget.get("big", lambda: _mb(2.0))
    assert big.nbytes == 2 * 2**20 and "big" not in budget and "small" in budget


def test_one_computation_per_key_when_sessions_ask_at_once(budget):
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return np.ones(10)

    out = []
    threads = [threading.Thread(target=lambda: out.append(budget.get("k", slow)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(out) == 4 and all(o is out[0] for o in out)


def test_a_failed_computation_is_not_cached(budget):
    with pytest.raises(ValueError):
        budget.get("k", lambda: (_ for _ in ()).throw(ValueError("bad")))
    assert budget.get("k", lambda: 3) == 3


def test_release_drops_every_entry_of_a_source():
    caches.clear()
    caches.DERIVED.get(("/up/a.xyz", "x"), lambda: 1)
    caches.FITS.get(("/up/a.xyz", "fit"), lambda: 2)
    caches.FITS.get(("emt-alloys", "fit"), lambda: 3)
    caches.release("/up/a.xyz")
    keys = [k for c in caches.ALL for k in c._entries]
    assert keys == [("emt-alloys", "fit")]
    usage = caches.usage()
    assert usage["fits"][0] == 1 and usage["fits"][2] > 0
    caches.clear()
