"""Last-layer features of CHGNet and SevenNet (lprviz.backbones).

The decisive check: each model's own energy, recomputed from our hooked features and the
readout weights read off the loaded checkpoint (plus its bias, species-wise scale/shift or
composition model), equals the prediction of the model's public API run separately. If the
hook sat on any other layer the widths or the energies would not match.

Without the ``nn`` extra (torch, chgnet, sevenn) the model tests skip with the reason; under
``CI=true`` they fail instead, as CI installs the extra.
"""

from __future__ import annotations

import os
import subprocess
import sys

import ase
import numpy as np
import pytest
from reference_data import mlearn_dir

from lprviz import InputError, backbones, datasets
from lprviz import features as lpr_features

# float32 models: features and energies agree to float32 rounding, not bits
REL = 2e-5


def _require(name: str) -> None:
    reason = backbones.unavailable(name)
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"under CI the nn extra must be installed: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def emt_frames() -> list[ase.Atoms]:
    """One small frame per kind: bulk alloy, slab (mixed pbc), cluster (no pbc), vacancy."""
    ds = datasets.load("emt-alloys")
    picked = []
    for group in ("bulk-alloy", "surface", "cluster", "vacancy"):
        frame = int(np.flatnonzero(ds.groups == group)[0])
        picked.append(ds.frames[frame])
    return picked


pytestmark = pytest.mark.usefixtures("isolated_cache")


def _features(frames, name, **kw):
    _require(name)
    return backbones.last_layer_features(frames, name, cache=False, **kw)


# --- the model's energy from our features ------------------------------------------------


def _chgnet_energy_per_atom(frames, feats):
    """CHGNet energy per atom: mean over atoms of (w . f + b) plus the AtomRef mean."""
    import torch
    from chgnet.model import CHGNet

    model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
    last = [m for m in model.mlp.modules() if isinstance(m, torch.nn.Linear)][-1]
    w = last.weight.detach().double().numpy().ravel()
    b = float(last.bias.detach()) if last.bias is not None else 0.0
    atom_ref = model.composition_model.fc.weight.detach().double().numpy().ravel()  # Z-1
    out, start = [], 0
    for atoms in frames:
        f = feats[start:start + len(atoms)]
        start += len(atoms)
        out.append(np.mean(f @ w + b) + np.mean(atom_ref[atoms.numbers - 1]))
    return np.array(out)


def _chgnet_prediction(frames):
    from chgnet.model import CHGNet
    from pymatgen.io.ase import AseAtomsAdaptor

    model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
    structures = [AseAtomsAdaptor.get_structure(backbones._periodic(a, 6.0)) for a in frames]
    preds = model.predict_structure(structures, task="e", batch_size=len(frames))
    preds = preds if isinstance(preds, list) else [preds]
    return np.array([float(p["e"]) for p in preds])


def _sevenn_energy(frames, feats):
    """SevenNet total energy: sum over atoms of w . f (f already scaled) + shift[Z]."""
    from sevenn import util

    model = util.load_checkpoint("7net-0").build_model()
    weight = model._modules["reduce_hidden_to_energy"].linear.weight.detach().double().numpy()
    # e3nn's Linear normalises a path by 1/sqrt(fan_in): 64 scalars in, one out
    w = weight.ravel() / np.sqrt(weight.size)
    shift = model._modules["rescale_atomic_energy"].shift.detach().double().numpy()
    types = {int(z): int(i) for z, i in model.type_map.items()}
    out, start = [], 0
    for atoms in frames:
        f = feats[start:start + len(atoms)]
        start += len(atoms)
        sh = shift[[types[int(z)] for z in atoms.numbers]] if shift.size > 1 else shift[0]
        out.append(np.sum(f @ w + sh))
    return np.array(out)


def _sevenn_prediction(frames):
    from sevenn.calculator import SevenNetCalculator

    calc = SevenNetCalculator("7net-0", device="cpu")
    energies = []
    for atoms in frames:
        boxed = backbones._periodic(atoms, 5.0)
        boxed.calc = calc
        energies.append(boxed.get_potential_energy())
    return np.array(energies)


RECOMPUTE = {"chgnet": (_chgnet_energy_per_atom, _chgnet_prediction),
             "sevenn": (_sevenn_energy, _sevenn_prediction)}


def _assert_energy_from_features(frames, name):
    feats = _features(frames, name)
    recompute, predict = RECOMPUTE[name]
    ours, theirs = recompute(frames, feats), predict(frames)
    np.testing.assert_allclose(ours, theirs, rtol=REL, atol=0)
    return feats


@pytest.mark.parametrize("name", backbones.BACKBONES)
def test_energy_recomputed_from_last_layer_features(emt_frames, name):
    feats = _assert_energy_from_features(emt_frames, name)
    assert feats.shape == (sum(len(a) for a in emt_frames), 64) and feats.dtype == np.float64
    assert np.all(np.isfinite(feats)) and np.ptp(feats, axis=0).max() > 0


@pytest.mark.parametrize("name", backbones.BACKBONES)
def test_energy_recomputed_on_real_si(name):
    _require(name)
    ds = datasets.load(str(mlearn_dir() / "Si_test.json"))
    frames = [ds.frames[i] for i in np.argsort(ds.frame_sizes, kind="stable")[:3]]
    _assert_energy_from_features(frames, name)


# --- invariances, determinism ------------------------------------------------------------


def _rotated(atoms: ase.Atoms, seed: int) -> ase.Atoms:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    rot = q * np.sign(np.diag(r))
    if np.linalg.det(rot) < 0:
        rot[:, 0] *= -1  # a proper rotation
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ rot.T)
    out.positions = atoms.positions @ rot.T + rng.normal(size=3) * 3.0
    return out


@pytest.mark.parametrize("name", backbones.BACKBONES)
def test_invariant_to_rotation_translation_and_equivariant_to_permutation(emt_frames, name):
    base = _features(emt_frames, name)
    tol = REL * np.abs(base).max() * 10
    moved = _features([_rotated(a, i) for i, a in enumerate(emt_frames)], name)
    np.testing.assert_allclose(moved, base, rtol=0, atol=tol)

    rng = np.random.default_rng(7)
    perms = [rng.permutation(len(a)) for a in emt_frames]
    shuffled = _features([a[p] for a, p in zip(emt_frames, perms, strict=True)], name)
    starts = np.cumsum([0] + [len(a) for a in emt_frames])
    expected = np.concatenate([base[s + p] for s, p in zip(starts, perms, strict=False)])
    np.testing.assert_allclose(shuffled, expected, rtol=0, atol=tol)
    # the features see the environment: a cluster atom differs from a bulk atom
    assert np.abs(base[0] - base[starts[2]]).max() > 100 * tol


@pytest.mark.parametrize("name", backbones.BACKBONES)
def test_deterministic_and_independent_of_batching(emt_frames, name):
    first = _features(emt_frames, name, batch_size=16)
    again = _features(emt_frames, name, batch_size=16)
    np.testing.assert_array_equal(first, again)  # same process, same inputs
    import torch

    threads = torch.get_num_threads()
    one_by_one = _features(emt_frames, name, batch_size=1, threads=1)
    np.testing.assert_allclose(one_by_one, first, rtol=0, atol=REL * np.abs(first).max())
    assert torch.get_num_threads() == threads  # restored after the call


@pytest.mark.parametrize("name", backbones.BACKBONES)
def test_progress_reports_atoms(emt_frames, name):
    calls = []
    _features(emt_frames, name, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    total = sum(len(a) for a in emt_frames)
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) == 3


# --- cache ---------------------------------------------------------------------------------


def _forbid_compute(monkeypatch, name):
    readout = backbones._load(name)

    def fail(*_a, **_k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(readout, "run", fail)


def test_cache_hits_and_recomputes_a_damaged_entry(emt_frames, monkeypatch):
    name = "sevenn"
    _require(name)
    fresh = backbones.last_layer_features(emt_frames, name, cache=True)
    entries = list(backbones.cache_dir().glob("*.npz"))
    assert len(entries) == 1

    with monkeypatch.context() as m:  # a disk hit computes nothing
        lpr_features.clear_memory_cache()
        _forbid_compute(m, name)
        np.testing.assert_array_equal(backbones.last_layer_features(emt_frames, name), fresh)
        entries[0].unlink()  # a memory hit (per structure) neither
        np.testing.assert_array_equal(backbones.last_layer_features(emt_frames, name), fresh)

    raw = bytearray(entries[0].read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # damage: flipped byte
    entries[0].write_bytes(bytes(raw))
    lpr_features.clear_memory_cache()
    calls = []
    readout = backbones._load(name)
    original = readout.run
    monkeypatch.setattr(readout, "run", lambda *a: calls.append(1) or original(*a))
    again = backbones.last_layer_features(emt_frames, name)
    assert calls, "a damaged entry must be recomputed"
    np.testing.assert_allclose(again, fresh, rtol=0, atol=REL * np.abs(fresh).max())
    # ... and replaced by an intact one that is then hit
    lpr_features.clear_memory_cache()
    calls.clear()
    backbones.last_layer_features(emt_frames, name)
    assert not calls


def test_cache_is_keyed_by_model_and_bounded(emt_frames, monkeypatch):
    _require("chgnet")
    _require("sevenn")
    a = backbones.last_layer_features(emt_frames[:2], "chgnet")
    b = backbones.last_layer_features(emt_frames[:2], "sevenn")
    assert not np.allclose(a, b)  # same structures, other model: another entry
    assert len(list(backbones.cache_dir().glob("*.npz"))) == 2
    size = max(p.stat().st_size for p in backbones.cache_dir().glob("*.npz"))
    monkeypatch.setattr(backbones, "DISK_CACHE_MAX_BYTES", size + 1)
    backbones.last_layer_features(emt_frames[2:], "sevenn")
    left = sorted(p.name for p in backbones.cache_dir().glob("*.npz"))
    assert len(left) == 1 and left[0].startswith("sevenn-")


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", backbones.BACKBONES)
def test_unknown_species_is_one_line_input_error(name):
    _require(name)
    atoms = ase.Atoms("CuOg", positions=[[0, 0, 0], [2.5, 0, 0]], cell=[8, 8, 8], pbc=True)
    with pytest.raises(InputError, match=r"^frame-x: .* species Og$"):
        backbones.last_layer_features([atoms], name, cache=False, names=["frame-x"])


def test_chgnet_isolated_atom_is_input_error():
    _require("chgnet")
    atoms = ase.Atoms("Cu2", positions=[[0, 0, 0], [12.0, 0, 0]])
    with pytest.raises(InputError, match=r"^dimer: CHGNet cannot take") as info:
        backbones.last_layer_features([atoms], "chgnet", cache=False, names=["dimer"])
    assert "\n" not in str(info.value)


def test_empty_and_unknown_inputs():
    with pytest.raises(InputError, match="unknown model 'mace'"):
        backbones.unavailable("mace")
    if backbones.unavailable("sevenn") is None:
        with pytest.raises(InputError, match="at least one structure"):
            backbones.last_layer_features([], "sevenn")
        with pytest.raises(InputError, match="s0: a structure without atoms"):
            backbones.last_layer_features([ase.Atoms()], "sevenn", names=["s0"])


def test_missing_extra_gives_the_install_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "chgnet" else real(n, *a))
    reason = backbones.unavailable("chgnet")
    assert reason is not None and "pip install 'lprviz[nn]'" in reason and "\n" not in reason
    with pytest.raises(InputError, match=r"lprviz\[nn\]"):
        backbones.last_layer_features([ase.Atoms("Cu")], "chgnet")


def test_import_does_not_load_torch():
    code = ("import sys, lprviz, lprviz.backbones; "
            "print('torch' in sys.modules, 'chgnet' in sys.modules, 'sevenn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.split() == ["False", "False", "False"]


def test_broken_install_is_one_line_input_error(monkeypatch):
    _require("sevenn")

    def broken(_name):
        raise ImportError("libtorch_cpu.so: cannot open shared object file\nmore detail")

    monkeypatch.setattr(backbones, "_load", broken)
    with pytest.raises(InputError, match=r"SevenNet could not be loaded \(ImportError") as info:
        backbones.last_layer_features([ase.Atoms("Cu")], "sevenn")
    assert "\n" not in str(info.value) and "lprviz[nn]" in str(info.value)


def test_search_limit_is_checked_over_all_frames_before_the_model_runs():
    """A frame whose neighbour list would exceed the search limit (a needle-thin cell) is
    refused by name, before any model runs; the frames before it pass the same check."""
    from types import SimpleNamespace

    from ase.build import bulk

    thin = ase.Atoms("Cu", cell=[[1, 0, 0], [1e6, 1, 0], [0, 0, 1]], pbc=True)
    fine = [bulk("Cu", "fcc", a=3.6, cubic=True), ase.Atoms("CO", [[0, 0, 0], [0, 0, 1.1]])]
    readout, spec = SimpleNamespace(cutoff=5.0), SimpleNamespace(label="CHGNet")
    backbones._check_search(fine, ["f#0", "f#1"], readout, spec)
    with pytest.raises(InputError) as info:
        backbones._check_search([*fine, thin], ["f#0", "f#1", "f#2"], readout, spec)
    msg = str(info.value)
    assert msg.startswith("f#2: CHGNet's neighbour list at its 5 A cutoff")
    assert "LPRVIZ_MAX_SEARCH_PAIRS" in msg and "\n" not in msg
