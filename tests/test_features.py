"""Tests of lprviz.features: SOAP layout, invariances, cache, errors."""

from __future__ import annotations

import itertools

import featomic
import metatensor
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from lprviz import features
from lprviz.errors import InputError
from lprviz.features import SOAP_PRESETS, SoapHypers, compute_soap

SMALL = SoapHypers(cutoff=4.0, max_radial=3, max_angular=2)


pytestmark = pytest.mark.usefixtures("isolated_cache")


def _mixed_frames() -> list[Atoms]:
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.rattle(0.05, seed=1)
    cuo = bulk("Cu", "fcc", a=3.6, cubic=True)
    cuo.numbers[[1, 2]] = 8
    cuo.rattle(0.05, seed=2)
    water = molecule("H2O")  # no cell, no periodicity
    return [cu, water, cuo]


def _reference_dense(frames, hypers, species):
    """Densify featomic's output with metatensor's own operations (independent of ours)."""
    calc = featomic.SoapPowerSpectrum(**hypers.featomic_hypers())
    tensor = calc.compute(frames)
    pairs = [(a, b) for a, b in itertools.product(species, species) if a <= b]
    neighbours = metatensor.Labels(["neighbor_1_type", "neighbor_2_type"], np.array(pairs))
    tensor = tensor.keys_to_properties(neighbours).keys_to_samples("center_type")
    block = tensor.block()
    samples = block.samples.values
    sizes = np.array([len(a) for a in frames])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    dense = np.zeros((sizes.sum(), block.values.shape[1]))
    dense[starts[samples[:, 0]] + samples[:, 1]] = block.values
    return dense


def test_dense_layout_matches_metatensor_densification():
    frames = _mixed_frames()
    species = (1, 8, 29)
    desc = compute_soap(frames, SMALL, species=species, cache=False)
    ref = _reference_dense(frames, SMALL, species)
    width = (SMALL.max_radial + 1) ** 2 * (SMALL.max_angular + 1)
    assert desc.values.shape == (sum(len(a) for a in frames), 6 * width)
    np.testing.assert_allclose(desc.values, ref, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(desc.structure_index, np.repeat([0, 1, 2], [4, 3, 4]))
    np.testing.assert_array_equal(desc.atom_numbers, np.concatenate([a.numbers for a in frames]))
    assert desc.species == species


def test_blocks_partition_columns_and_absent_pairs_are_zero():
    frames = _mixed_frames()
    desc = compute_soap(frames, SMALL, species=(1, 8, 29), cache=False)
    d = desc.values.shape[1]
    pair_cols = np.sort(np.concatenate([desc.blocks[k] for k in desc.blocks if "-" in k]))
    l_cols = np.sort(np.concatenate([desc.blocks[f"l={ang}"] for ang in range(3)]))
    np.testing.assert_array_equal(pair_cols, np.arange(d))
    np.testing.assert_array_equal(l_cols, np.arange(d))
    # pure-Cu frame: only the Cu-Cu block can be non-zero
    cu_rows = desc.values[desc.structure_index == 0]
    outside = np.setdiff1d(np.arange(d), desc.blocks["Cu-Cu"])
    assert np.all(cu_rows[:, outside] == 0)
    assert np.all(np.abs(cu_rows[:, desc.blocks["Cu-Cu"]]).sum(axis=1) > 0)
    # water: H-O pair block is populated for the O atom
    o_row = desc.values[(desc.structure_index == 1) & (desc.atom_numbers == 8)][0]
    assert np.abs(o_row[desc.blocks["H-H"]]).sum() > 0


def test_every_entry_written_over_dirty_memory(monkeypatch):
    """The output array is not zeroed beforehand: every entry is featomic's value or a zero
    where a featomic call's environments lack a species pair (one frame per call here, so
    the pure-Cu call lacks every H and O pair), even in memory handed out dirty (NaN)."""
    real = np.empty

    def dirty(shape, dtype=float, *args, **kwargs):
        out = real(shape, dtype, *args, **kwargs)
        if out.dtype.kind == "f":
            out.fill(np.nan)
        return out

    frames = _mixed_frames()
    monkeypatch.setattr(np, "empty", dirty)
    desc = compute_soap(frames, SMALL, species=(1, 8, 29), cache=False, chunk_atoms=1)
    monkeypatch.undo()
    np.testing.assert_allclose(desc.values, _reference_dense(frames, SMALL, (1, 8, 29)),
                               rtol=0, atol=1e-12)


def test_same_width_whatever_the_frames_species():
    species = (1, 8, 29)
    a = compute_soap([molecule("H2O")], SMALL, species=species, cache=False)
    b = compute_soap([bulk("Cu", "fcc", a=3.6)], SMALL, species=species, cache=False)
    assert a.values.shape[1] == b.values.shape[1]


def test_rotation_translation_and_permutation():
    atoms = molecule("CH3CH2OH")
    atoms.center(vacuum=4.0)
    rotated = atoms.copy()
    rotated.rotate(37, (1, 2, 3), center="COM")
    rotated.translate((0.3, -0.2, 0.5))
    perm = np.random.default_rng(0).permutation(len(atoms))
    permuted = atoms[perm]
    desc = compute_soap([atoms, rotated, permuted], SMALL, cache=False)
    x0, x1, x2 = desc.per_structure()
    np.testing.assert_allclose(x1, x0, atol=1e-10)
    np.testing.assert_allclose(x2, x0[perm], atol=1e-10)


def test_memory_and_disk_cache(monkeypatch, tmp_path):
    frames = _mixed_frames()
    first = compute_soap(frames, SMALL)
    assert list(features.cache_dir().glob("*.npz"))
    assert features.cache_dir().is_relative_to(tmp_path)

    def boom(*args, **kwargs):
        raise AssertionError("featurised twice")

    monkeypatch.setattr(features, "_featurise", boom)
    again = compute_soap(frames, SMALL)  # disk hit
    np.testing.assert_array_equal(again.values, first.values)
    subset = compute_soap(frames[1:], SMALL, species=first.species)  # memory hit per structure
    np.testing.assert_array_equal(subset.values, first.values[first.structure_index > 0])
    for path in features.cache_dir().glob("*.npz"):
        path.unlink()
    features.clear_memory_cache()
    with pytest.raises(AssertionError, match="featurised twice"):
        compute_soap(frames, SMALL)
    with pytest.raises(AssertionError, match="featurised twice"):
        compute_soap(frames, SoapHypers(cutoff=4.5, max_radial=3, max_angular=2))


@pytest.mark.parametrize("cache", [True, False])
def test_repeated_structures_are_featurised_once_per_call(monkeypatch, cache):
    frames = _mixed_frames()
    repeated = [frames[0], frames[1], frames[0].copy(), frames[2], frames[1].copy()]
    calls = []
    real = features._featurise

    def counting(chunk, *args, **kwargs):
        calls.extend(len(a) for a in chunk)
        return real(chunk, *args, **kwargs)

    monkeypatch.setattr(features, "_featurise", counting)
    got = compute_soap(repeated, SMALL, cache=cache)
    assert sorted(calls) == sorted(len(a) for a in frames[:3])  # each distinct one once
    ref = _reference_dense(repeated, SMALL, got.species)
    np.testing.assert_allclose(got.values, ref, rtol=1e-10, atol=1e-12)


def test_featomic_upgrade_is_a_new_cache_key(monkeypatch):
    import featomic

    frames = _mixed_frames()
    compute_soap(frames, SMALL)
    features.clear_memory_cache()
    monkeypatch.setattr(featomic, "__version__", "999.0.0")

    def boom(*args, **kwargs):
        raise AssertionError("featurised again")

    monkeypatch.setattr(features, "_featurise", boom)
    with pytest.raises(AssertionError, match="featurised again"):
        compute_soap(frames, SMALL)  # the old disk entry is not reused


def test_moved_atom_is_a_new_cache_key():
    frames = _mixed_frames()
    before = compute_soap(frames, SMALL)
    frames[0].positions[0] += 0.1
    after = compute_soap(frames, SMALL)
    assert not np.allclose(before.values[:4], after.values[:4])
    np.testing.assert_array_equal(before.values[4:], after.values[4:])


def test_progress_reports_monotone_to_total():
    frames = [bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2) for _ in range(5)]
    for i, a in enumerate(frames):
        a.rattle(0.05, seed=i)
    calls = []
    compute_soap(frames, SMALL, progress=lambda d, t: calls.append((d, t)), chunk_atoms=64)
    total = 5 * 32
    assert calls[-1] == (total, total)
    assert all(t == total for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(calls) >= 3  # chunked


def test_errors():
    with pytest.raises(InputError, match="species"):
        compute_soap([molecule("H2O")], SMALL, species=(1,))
    with pytest.raises(InputError):
        compute_soap([], SMALL)
    with pytest.raises(InputError, match="cutoff"):
        SoapHypers(cutoff=-1.0)


def test_presets_are_hypers():
    assert SOAP_PRESETS["default"] == SoapHypers()
    assert set(SOAP_PRESETS) >= {"fast", "default", "accurate"}


def test_mixed_periodicity_equals_large_vacuum_periodic_cell():
    from ase.build import fcc111, nanotube

    slab = fcc111("Cu", (2, 2, 3), vacuum=5.0)  # pbc (T, T, F)
    slab_big = slab.copy()
    slab_big.cell[2] *= 3
    slab_big.pbc = True
    tube = nanotube(3, 3, length=2)  # pbc (F, F, T), zero cell vectors on x, y
    tube_big = tube.copy()
    tube_big.cell[0] = [40.0, 0, 0]
    tube_big.cell[1] = [0, 40.0, 0]
    tube_big.pbc = True
    desc = compute_soap([slab, slab_big, tube, tube_big], species=(6, 29), cache=False)
    x = desc.per_structure()
    np.testing.assert_allclose(x[0], x[1], atol=1e-10)
    np.testing.assert_allclose(x[2], x[3], atol=1e-10)


def test_featomic_is_imported_without_torch_and_torch_stays_importable():
    """A fresh process: featurising does not load torch (metatensor would import it, 1.1 s),
    the values equal those of a process where torch was loaded first, and torch can still be
    imported afterwards."""
    import subprocess
    import sys

    pytest.importorskip("torch")
    script = (
        "import sys, numpy as np\n"
        "{first}"
        "from ase.build import bulk\n"
        "from lprviz.features import SoapHypers, compute_soap\n"
        "h = SoapHypers(cutoff=3.5, max_radial=3, max_angular=2)\n"
        "d = compute_soap([bulk('Cu', cubic=True)], h, cache=False)\n"
        "print('torch' in sys.modules, float(np.abs(d.values).sum()))\n"
        "import torch\n"
        "print(torch.ones(2).sum().item())\n"
    )
    runs = [subprocess.run([sys.executable, "-c", script.format(first=first)],
                           capture_output=True, text=True, check=True).stdout.split()
            for first in ("", "import torch\n")]
    assert runs[0][0] == "False" and runs[1][0] == "True"
    assert float(runs[0][1]) == pytest.approx(float(runs[1][1]), rel=1e-12)
    assert runs[0][2] == runs[1][2] == "2.0"
