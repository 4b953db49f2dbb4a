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


def test_slider_positions_read_from_one_cached_grid(tmp_path, monkeypatch):
    """The slider's 41 positions; results at a position come from the training set's cached
    alpha grid (one grid for every position, equal to a pass of their own), the group sweep
    too; an alpha off the grid takes its own pass."""
    from ase.build import bulk
    from ase.io import write

    from lprviz import pipeline
    from lprviz.app import state

    positions = np.asarray(state.ALPHA_POSITIONS)
    assert len(positions) == 41 and positions[0] == 1e-8 and positions[-1] == 1e2
    np.testing.assert_allclose(np.diff(np.log10(positions)), state.ALPHA_LOG10_STEP)
    assert state.ALPHA_POSITIONS[16] == 10 ** state.DEFAULT_ALPHA_LOG10  # as alpha() gives it
    from lprviz.calibration import ALPHA_GRID  # the calibration's grid is the slider's

    np.testing.assert_allclose(positions, ALPHA_GRID, rtol=1e-12)

    rng = np.random.default_rng(0)
    frames = []
    for i in range(12):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1, 1, 2))
        atoms.rattle(0.05, seed=i)
        atoms.info["energy"] = float(rng.normal(-3.0, 0.1)) * len(atoms)
        frames.append(atoms)
    path = str(tmp_path / "cu.xyz")
    write(path, frames, format="extxyz")
    monkeypatch.setenv("LPRVIZ_CACHE_DIR", str(tmp_path / "cache"))
    caches.clear()
    calls = []
    real = pipeline.alpha_grid
    monkeypatch.setattr(pipeline, "alpha_grid", lambda *a: calls.append(1) or real(*a))
    args = (path, "fast", (0, 2, 4, 6, 8), pipeline.ModelSpec(kind="linear"), None)
    fit = caches.fit(*args[:4])
    for alpha in (positions[16], positions[3], positions[40]):
        got = caches.results(*args, alpha, grid_alphas=state.ALPHA_POSITIONS)
        ref = pipeline.evaluate(fit, alpha)
        np.testing.assert_allclose(got.lpr, ref.lpr, rtol=3e-6)
        np.testing.assert_allclose(got.local_energy, ref.local_energy, rtol=0, atol=1e-5)
    sweep = state.ALPHA_POSITIONS[::2]
    labels, medians = caches.group_lpr_sweep(*args[:4], sweep,
                                             grid_alphas=state.ALPHA_POSITIONS)
    assert calls == [1]  # one grid served three alphas and the sweep
    groups = caches.dataset(path).atom_groups
    np.testing.assert_allclose(
        medians, caches.datasets.per_group_median(pipeline.lpr_sweep(fit, sweep), groups)[1],
        rtol=3e-6)
    off = caches.results(*args, 3e-4, grid_alphas=state.ALPHA_POSITIONS)
    np.testing.assert_allclose(off.lpr, pipeline.evaluate(fit, 3e-4).lpr, rtol=1e-12)
    grid_keys = [k for k in caches.DERIVED._entries if k[1] == "grid"]
    assert len(grid_keys) == 1 and calls == [1]
    # the fit evicted (memory pressure) and rebuilt: its grid is rebuilt with it
    caches.FITS.clear()
    again = caches.results(*args, positions[30], grid_alphas=state.ALPHA_POSITIONS)
    assert calls == [1, 1]
    np.testing.assert_allclose(again.lpr, pipeline.evaluate(fit, positions[30]).lpr, rtol=3e-6)
    # a budget too small to keep the grid: each alpha takes its own pass, no grid is built
    caches.clear()
    monkeypatch.setenv("LPRVIZ_APP_CACHE_MB", "0.05")
    small = caches.results(*args, positions[20], grid_alphas=state.ALPHA_POSITIONS)
    assert calls == [1, 1]
    np.testing.assert_allclose(small.lpr, pipeline.evaluate(fit, positions[20]).lpr,
                               rtol=1e-12)
    caches.clear()


def test_rank_agreement_computed_once_per_models_training_set_and_alpha(monkeypatch):
    """Compare's rank agreement is kept per (models, training set, alpha): a rerun at the
    same alpha reads it, another alpha or training set computes it; the value is
    comparison.rank_agreement's."""
    from lprviz import comparison

    caches.clear()
    calls = []
    real = comparison.rank_agreement

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(comparison, "rank_agreement", counted)
    rng = np.random.default_rng(0)
    a, b = rng.random(50), rng.random(50)
    groups = np.repeat(["x", "y"], 25)
    models = (("soap:default", "linear"), ("soap:default", "sparse-kernel"))
    first = caches.rank_agreement("emt-alloys", models, (1, 2), 1e-4, a, b, groups)
    again = caches.rank_agreement("emt-alloys", models, (1, 2), 1e-4, a, b, groups)
    assert again is first and len(calls) == 1
    assert first.spearman == pytest.approx(real(a, b, groups).spearman)
    caches.rank_agreement("emt-alloys", models, (1, 2), 1e-3, b, a, groups)
    caches.rank_agreement("emt-alloys", models, (1, 3), 1e-4, b, a, groups)
    assert len(calls) == 3
    caches.release("emt-alloys")
    caches.rank_agreement("emt-alloys", models, (1, 2), 1e-4, a, b, groups)
    assert len(calls) == 4
    caches.clear()
