"""Tests of ``lprviz lpr``: round-trip on a generated EMT dataset, bad input."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from skmatter.metrics import local_prediction_rigidity as skmatter_lpr

from lprviz import datasets, features
from lprviz.cli import main
from lprviz.errors import InputError
from lprviz.features import SoapHypers, compute_soap
from lprviz.pipeline import ModelSpec, evaluate, prepare

SOAP_ARGS = ["--cutoff", "4.0", "--max-radial", "3", "--max-angular", "2"]
HYPERS = SoapHypers(cutoff=4.0, max_radial=3, max_angular=2)


pytestmark = pytest.mark.usefixtures("isolated_cache")


def _emt_frames(n, seed, *, energies=True):
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=rng.uniform(3.6, 3.9), cubic=True) * (2, 1, 1)
        atoms.numbers[rng.random(len(atoms)) < rng.uniform(0, 1)] = 79
        atoms.rattle(0.1, seed=seed * 1000 + i)
        if energies:
            atoms.calc = EMT()
            atoms.get_potential_energy()
        frames.append(atoms)
    return frames


@pytest.fixture
def files(tmp_path):
    train = tmp_path / "train.extxyz"
    test = tmp_path / "test.extxyz"
    ase.io.write(train, _emt_frames(30, 1))
    ase.io.write(test, _emt_frames(6, 2, energies=False))
    return train, test


def test_round_trip_equals_scikit_matter(files, tmp_path, capsys):
    train, test = files
    out = tmp_path / "out.extxyz"
    argv = ["lpr", "--train", str(train), "--test", str(test), "--alpha", "1e-4,1e-2"]
    code = main([*argv, "--no-baseline", *SOAP_ARGS, "-o", str(out)])
    assert code == 0
    assert "SOAP... done in" in capsys.readouterr().err  # steps on stderr
    frames = ase.io.read(out, index=":")
    assert len(frames) == 6
    # independent reference: scikit-matter on the same SOAP vectors
    train_frames = ase.io.read(train, index=":")
    test_frames = ase.io.read(test, index=":")
    species = (29, 79)
    x_train = compute_soap(train_frames, HYPERS, species=species, cache=False).per_structure()
    x_test = compute_soap(test_frames, HYPERS, species=species, cache=False).per_structure()
    for i, alpha in enumerate(frames[0].info["alphas"]):
        ref, _ = skmatter_lpr(x_train, x_test, alpha=alpha)
        got = np.concatenate([a.arrays[f"lpr_{i}"] for a in frames])
        np.testing.assert_allclose(got, np.concatenate(ref), rtol=1e-6)
    np.testing.assert_allclose(frames[0].info["alphas"], [1e-4, 1e-2], rtol=1e-12)
    lpr = np.concatenate([a.arrays["lpr"] for a in frames])
    np.testing.assert_allclose(lpr, np.concatenate([a.arrays["lpr_0"] for a in frames]),
                               rtol=1e-12)
    assert np.all(np.isfinite(lpr)) and np.all(lpr > 0)
    info = frames[0].info
    assert info["alpha"] == pytest.approx(1e-4)
    assert info["lprviz_model"] == "linear" and info["lprviz_baseline"] is False
    assert info["lprviz_soap_cutoff"] == pytest.approx(4.0)
    assert info["lprviz_n_train_frames"] == 30 and info["in_training"] is False
    # the dataset of datasets.combine, named after both files
    assert info["lprviz_dataset"] == "train.extxyz+test.extxyz"
    assert info["lprviz_version"]
    np.testing.assert_allclose([a.positions for a in frames], [a.positions for a in test_frames])


def test_round_trip_local_energy_equals_library(files, tmp_path):
    train, test = files
    out = tmp_path / "out.extxyz"
    argv = ["lpr", "--train", str(train), "--test", str(test), "--alpha", "1e-5", "-q"]
    assert (
        main([*argv, "--model", "sparse-kernel", "--n-sparse", "40", *SOAP_ARGS, "-o", str(out)])
        == 0
    )
    frames = ase.io.read(out, index=":")
    train_set, test_set = datasets.load(train), datasets.load(test)
    data = datasets.Dataset(
        name="both",
        frames=train_set.frames + test_set.frames,
        energies=np.concatenate([train_set.energies, test_set.energies]),
        has_energy=np.concatenate([train_set.has_energy, test_set.has_energy]),
        groups=np.concatenate([train_set.groups, test_set.groups]),
        names=train_set.names + test_set.names,
        splits=np.array([""] * 36),
    )
    desc = compute_soap(data.frames, HYPERS, species=(29, 79), cache=False)
    mask = np.arange(36) < 30
    res = evaluate(prepare(data, desc, mask, ModelSpec("sparse-kernel", n_sparse=40)), 1e-5)
    test_atoms = ~mask[desc.structure_index]
    got = np.concatenate([a.arrays["local_energy"] for a in frames])
    # the library's Fit holds float32 projections (1e-6 eV, relative 1e-5 LPR); the CLI
    # streams float64 features
    np.testing.assert_allclose(got, res.local_energy[test_atoms], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        np.concatenate([a.arrays["lpr"] for a in frames]), res.lpr[test_atoms], rtol=1e-5
    )
    # EMT totals of the test frames are predicted sensibly by the local energies
    emt = np.array([a.get_potential_energy() for a in _emt_frames(6, 2)])
    pred = np.array([a.arrays["local_energy"].sum() for a in frames])
    assert np.sqrt(np.mean(((pred - emt) / 8) ** 2)) < 0.1
    assert frames[0].info["lprviz_model"] == "sparse-kernel"
    assert frames[0].info["lprviz_n_sparse"] == 40


def test_dataset_with_train_groups(tmp_path):
    out = tmp_path / "out.extxyz"
    groups = "bulk-pure,bulk-alloy,antisite,vacancy,interstitial"
    argv = ["lpr", "--dataset", "emt-alloys", "--train-groups", groups, "-q"]
    assert main([*argv, "--preset", "fast", "-o", str(out)]) == 0
    data = datasets.load("emt-alloys")
    frames = ase.io.read(out, index=":")
    expected = ~np.isin(data.groups, groups.split(","))
    assert len(frames) == expected.sum()
    assert {a.info["group"] for a in frames} == set(data.groups[expected].tolist())
    lpr = np.concatenate([a.arrays["lpr"] for a in frames])
    assert np.all(np.isfinite(lpr)) and np.all(lpr > 0)
    # the test structures keep their data: energies (calculator), true local energies, forces
    np.testing.assert_allclose(
        [a.get_potential_energy() for a in frames], data.energies[expected], rtol=1e-12
    )
    test_set = data.subset(expected)
    np.testing.assert_allclose(
        np.concatenate([a.arrays["true_local_energy"] for a in frames]),
        test_set.true_local_energies,
        rtol=1e-12,
    )
    np.testing.assert_allclose(frames[0].get_forces(), test_set.frames[0].get_forces())
    assert frames[0].arrays["undetermined"].dtype == bool


def test_undetermined_atoms_are_noted_at_alpha_zero(files, tmp_path, capsys):
    """At alpha 0 (few training structures, many features) the test atoms are undetermined:
    the closing lines say how many (with -q too), not only a median that looks like data."""
    train, test = files
    out = tmp_path / "out.extxyz"
    for alpha, quiet in (("0", []), ("0", ["-q"]), ("1e-4", [])):
        assert main(["lpr", "--train", str(train), "--test", str(test), *SOAP_ARGS,
                     "--alpha", alpha, *quiet, "-o", str(out)]) == 0
        err = capsys.readouterr().err
        flags = np.concatenate([a.arrays["undetermined"] for a in ase.io.read(out, ":")])
        notes = [line for line in err.splitlines() if "undetermined at alpha" in line]
        if flags.any():
            assert notes == [f"lprviz: note: {flags.sum()} of {flags.size} test atoms are "
                             f"undetermined at alpha={float(alpha):g}: the data cannot fix their "
                             "local energy and their LPR is set by numerical resolution (an "
                             "upper bound of the exact value); raise alpha"]
        else:
            assert notes == []
        assert flags.any() == (alpha == "0")


def _run_error(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("lprviz: error:")]
    assert len(lines) == 1
    return lines[0]


def test_bad_input(files, tmp_path, capsys):
    train, test = files
    out = str(tmp_path / "out.extxyz")
    no_energy = tmp_path / "no_energy.extxyz"
    ase.io.write(no_energy, _emt_frames(3, 3, energies=False))
    msg = _run_error(["lpr", "--train", str(no_energy), "--test", str(test), "-o", out], capsys)
    assert "no_energy.extxyz" in msg and "energ" in msg
    msg = _run_error(
        ["lpr", "--train", str(tmp_path / "missing.xyz"), "--test", str(test), "-o", out], capsys
    )
    assert "missing.xyz" in msg
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_text("this is not\nan xyz file\n")
    msg = _run_error(["lpr", "--train", str(garbage), "--test", str(test), "-o", out], capsys)
    assert "garbage.extxyz" in msg
    msg = _run_error(
        ["lpr", "--train", str(train), "--test", str(test), "--alpha", "abc", "-o", out], capsys
    )
    assert "--alpha" in msg
    for typo in ("1e-4,,1e-2", "1e-4,", ","):
        msg = _run_error(["lpr", "--train", str(train), "--test", str(test), "--alpha", typo,
                          "-o", out], capsys)
        assert "--alpha: expected comma-separated numbers" in msg and repr(typo) in msg
    msg = _run_error(
        ["lpr", "--dataset", "emt-alloys", "--train-groups", "nope", "-o", out], capsys
    )
    assert "nope" in msg
    for empty in (",", " ", " , "):  # names stripped away: no group at all, said so
        msg = _run_error(
            ["lpr", "--dataset", "emt-alloys", "--train-groups", empty, "-o", out], capsys
        )
        assert "--train-groups: no group given" in msg and "bulk-pure" in msg
    msg = _run_error(["suggest", "--dataset", "emt-alloys", "--train-groups", "bulk-pure",
                      "--pool-groups", ","], capsys)
    assert "--pool-groups: no group given" in msg
    for typo in ("bulk-pure,,vacancy", "bulk-pure,", " ,bulk-pure"):
        msg = _run_error(["lpr", "--dataset", "emt-alloys", "--train-groups", typo, "-o", out],
                         capsys)
        assert f"--train-groups: an empty group name in {typo!r}" in msg
    msg = _run_error(["lpr", "--train", str(train), "-o", out], capsys)
    assert "--test" in msg


def test_lcpr_arrays_equal_the_masked_definition(files, tmp_path):
    """``--lcpr``: LCPR_c = 1 / ((x * m_c)^T (X^T X + alpha I)^-1 (x * m_c)) per block, built
    here from the SOAP vectors with explicit matrices (no baseline: pure SOAP columns)."""
    train, test = files
    out = tmp_path / "out.extxyz"
    alpha = 1e-3
    assert main(["lpr", "--train", str(train), "--test", str(test), "--alpha", str(alpha),
                 "--no-baseline", "--lcpr", *SOAP_ARGS, "-q", "-o", str(out)]) == 0
    frames = ase.io.read(out, index=":")
    train_frames = ase.io.read(train, index=":")
    species = (29, 79)
    X_train = compute_soap(train_frames, HYPERS, species=species, cache=False)
    X_test = compute_soap(ase.io.read(test, index=":"), HYPERS, species=species, cache=False)
    s = float(frames[0].info["lprviz_feature_scale"])
    rows = np.stack([X.mean(axis=0) for X in X_train.per_structure()]) / s
    A = rows.T @ rows + alpha * np.eye(rows.shape[1])
    x = X_test.values / s
    names = {"lcpr_Cu_Cu": "Cu-Cu", "lcpr_Cu_Au": "Cu-Au", "lcpr_Au_Au": "Au-Au", "lcpr_l0": "l=0"}
    for key, block in names.items():
        xm = np.zeros_like(x)
        cols = X_test.blocks[block]
        xm[:, cols] = x[:, cols]
        with np.errstate(divide="ignore"):
            expected = 1.0 / np.einsum("ij,ji->i", xm, np.linalg.solve(A, xm.T))
        got = np.concatenate([a.arrays[key] for a in frames])
        absent = ~np.any(xm, axis=1)  # a block with no neighbours of that pair: inf exactly
        assert np.all(np.isfinite(got)) and np.all(got[absent] > 1e300)
        np.testing.assert_allclose(got[~absent], expected[~absent], rtol=1e-6)
        assert (~absent).sum() > 5
    assert "lcpr_baseline" not in frames[0].arrays


# ---------------------------------------------------------------- streaming, featurise once
def test_each_distinct_structure_is_featurised_once(tmp_path, monkeypatch):
    """A --test file that repeats training frames (and itself) featurises nothing twice."""
    from lprviz import cli

    train_frames = _emt_frames(12, 3)
    new = _emt_frames(4, 4, energies=False)
    train, test = tmp_path / "train.extxyz", tmp_path / "test.extxyz"
    ase.io.write(train, train_frames)
    ase.io.write(test, [*train_frames[:5], *new, new[0], train_frames[7]])
    featurised = []
    original = features._featurise

    def spy(frames, *args, **kwargs):
        featurised.extend(features.structure_key(a) for a in frames)
        return original(frames, *args, **kwargs)

    monkeypatch.setattr(features, "_featurise", spy)
    monkeypatch.setattr(cli, "_CLI_CHUNK_ATOMS", 20)  # several test chunks
    out = tmp_path / "out.extxyz"
    argv = ["lpr", "--train", str(train), "--test", str(test), "--alpha", "1e-4"]
    assert main([*argv, *SOAP_ARGS, "-q", "-o", str(out)]) == 0
    assert len(featurised) == len(set(featurised)) == 12 + 4
    assert len(ase.io.read(out, index=":")) == 11


def test_streamed_output_equals_one_chunk_and_the_library(files, tmp_path, monkeypatch):
    """Chunks of ~20 atoms (several frames each) write the same file as one chunk, and the
    numbers equal the in-memory pipeline (prepare + evaluate on all frames)."""
    from lprviz import cli

    train, test = files
    argv = ["lpr", "--train", str(train), "--test", str(test), "--alpha", "1e-5,1e-2",
            "--lcpr", *SOAP_ARGS, "-q"]
    outputs = []
    for chunk_atoms in (20, 10**9):
        monkeypatch.setattr(cli, "_CLI_CHUNK_ATOMS", chunk_atoms)
        out = tmp_path / f"out{chunk_atoms}.extxyz"
        assert main([*argv, "-o", str(out)]) == 0
        outputs.append(ase.io.read(out, index=":"))
    streamed, whole = outputs
    assert len(streamed) == len(whole) == 6
    for a, b in zip(streamed, whole, strict=True):
        assert sorted(a.info) == sorted(b.info)
        for key, value in a.info.items():
            if isinstance(value, str):
                assert value == b.info[key], key
            else:  # BLAS blocks differ with the chunk: round-off only
                np.testing.assert_allclose(value, b.info[key], rtol=1e-12, err_msg=key)
        assert sorted(a.arrays) == sorted(b.arrays)
        for name in a.arrays:
            np.testing.assert_allclose(a.arrays[name], b.arrays[name], rtol=1e-12)
    # the library on all frames at once (float32 projections: relative 1e-5)
    train_set, test_set = datasets.load(str(train)), datasets.load(str(test))
    data = datasets.Dataset(
        name="both", frames=train_set.frames + test_set.frames,
        energies=np.concatenate([train_set.energies, test_set.energies]),
        has_energy=np.concatenate([train_set.has_energy, test_set.has_energy]),
        groups=np.concatenate([train_set.groups, test_set.groups]),
        names=train_set.names + test_set.names, splits=np.array([""] * 36),
    )
    desc = compute_soap(data.frames, HYPERS, species=(29, 79), cache=False)
    mask = np.arange(36) < 30
    fit = prepare(data, desc, mask, ModelSpec())
    test_atoms = ~mask[desc.structure_index]
    for i, alpha in enumerate((1e-5, 1e-2)):
        res = evaluate(fit, alpha)
        got = np.concatenate([a.arrays[f"lpr_{i}"] for a in streamed])
        np.testing.assert_allclose(got, res.lpr[test_atoms], rtol=1e-5)
        pr = np.array([a.info[f"pr_{i}"] for a in streamed])
        np.testing.assert_allclose(pr, res.pr[~mask], rtol=1e-8)
    res = evaluate(fit, 1e-5)
    got = np.concatenate([a.arrays["local_energy"] for a in streamed])
    np.testing.assert_allclose(got, res.local_energy[test_atoms], rtol=1e-6, atol=1e-6)
    pred = np.array([a.info["energy_pred"] for a in streamed])
    np.testing.assert_allclose(pred, res.energy_pred[~mask], rtol=1e-6, atol=1e-6)


def test_streamed_phase_leaves_the_blas_threads_as_it_found_them(tmp_path, monkeypatch):
    """The streamed phase runs BLAS on one thread and hands the GIL over in short turns
    while chunks are finished behind the featurisation; the last chunk (and the sparse
    kernel's own one-thread blocks inside it) finishes before the limits are lifted, so an
    in-process caller gets its threads and switch interval back."""
    import sys

    from threadpoolctl import threadpool_info

    from lprviz import cli

    def blas_threads():
        return sorted(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")

    before, interval = blas_threads(), sys.getswitchinterval()
    assert interval != cli._STREAM_SWITCH_INTERVAL
    monkeypatch.setattr(cli, "_CLI_CHUNK_ATOMS", 200)  # several chunks
    seen = []
    real = cli._chunk_results

    def spy(*args, **kwargs):
        seen.append(blas_threads())
        assert sys.getswitchinterval() == pytest.approx(cli._STREAM_SWITCH_INTERVAL)
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "_chunk_results", spy)
    out = tmp_path / "out.extxyz"
    assert main(["lpr", "--dataset", "emt-alloys", "--train-groups", "bulk-pure,bulk-alloy",
                 "--model", "sparse-kernel", "--n-sparse", "60", *SOAP_ARGS, "-q",
                 "-o", str(out)]) == 0
    assert len(seen) > 3 and all(threads == [1] * len(before) for threads in seen)
    assert blas_threads() == before and sys.getswitchinterval() == interval


ROOT = Path(__file__).resolve().parents[1]
_HELD = """
import ctypes, sys
import numpy as np
from lprviz import process

class Info(ctypes.Structure):  # glibc's struct mallinfo2 (sizes in bytes)
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = Info
took = process.reuse_freed_memory() if sys.argv[1] == "tuned" else None
a = np.ones(8 << 20)  # a 64 MiB chunk, above glibc's default mmap threshold (<= 32 MiB)
mapped = mallinfo2().hblkhd
del a
print(took, mapped >> 20, mallinfo2().fordblks >> 20)
"""


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc"
                    or tuple(map(int, platform.libc_ver()[1].split(".")[:2])) < (2, 33),
                    reason="the allocator settings are glibc's (mallopt; mallinfo2 >= 2.33)")
def test_cli_allocator_keeps_freed_chunks():
    """``lprviz lpr`` has glibc keep freed large blocks for the next chunk: by default a
    64 MiB array is a mapping of its own, returned to the kernel when freed (and faulted
    in afresh next time); with the CLI's settings it comes from the heap and stays there,
    free for reuse."""
    import subprocess

    def run(mode):
        out = subprocess.run([sys.executable, "-c", _HELD, mode], capture_output=True,
                             text=True, check=True, cwd=ROOT)
        took, mapped, held = out.stdout.split()
        return took, int(mapped), int(held)

    took, mapped, held = run("default")
    assert mapped >= 64 and held < 64
    took, mapped, held = run("tuned")
    assert took == "True" and mapped < 64 and held >= 64


_PAGES = """
import sys
import numpy as np
from lprviz import process

took = process.small_pages() if sys.argv[1] == "tuned" else None
a = np.empty(8 << 20)  # 64 MiB: NumPy advises huge pages from 4 MiB
a[:] = 1.0
inside = a.ctypes.data + (1 << 20)  # past the first page, which NumPy leaves out
flags, in_range = [], False
with open("/proc/self/smaps") as fh:
    for line in fh:
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            in_range = lo <= inside < hi
        elif in_range and line.startswith("VmFlags:"):
            flags = line.split()[1:]
print(took, "hg" in flags)
"""


@pytest.mark.skipif(not Path("/sys/kernel/mm/transparent_hugepage").is_dir(),
                    reason="huge-page advice needs Linux with transparent huge pages")
def test_cli_numpy_arrays_get_small_pages():
    """``lprviz lpr`` stops NumPy advising huge pages (``madvise``; the ``hg`` flag of the
    array's mapping): by default a 64 MiB array carries the advice, with the CLI's setting
    it does not."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}

    def run(mode, **more):
        out = subprocess.run([sys.executable, "-c", _PAGES, mode], capture_output=True,
                             text=True, check=True, cwd=ROOT, env={**env, **more})
        return out.stdout.split()

    assert run("default") == ["None", "True"]
    assert run("tuned") == ["True", "False"]
    # a user's own choice, read by NumPy at import, stays in force
    assert run("tuned", NUMPY_MADVISE_HUGEPAGE="1") == ["False", "True"]


_PAUSED = """
import gc
import weakref
from lprviz import process

class Node:
    pass

with process.collector_paused():
    paused = not gc.isenabled()
    made = [[i] for i in range(5000)]  # tracked objects made while paused
    cycle = Node()
    cycle.me = cycle  # garbage once dropped: collected, not frozen
    gone = weakref.ref(cycle)
    del cycle
print(paused, gc.isenabled(), gc.get_freeze_count() >= len(made), gone() is None)
"""


def test_cli_collector_paused_while_loading_then_frozen(tmp_path):
    """``lprviz lpr`` (the command's own process) pauses the cyclic garbage collector
    while the structures load, collects the garbage cycles they left and freezes the rest;
    an in-process ``main([...])`` leaves the caller's collector alone."""
    import gc
    import subprocess

    out = subprocess.run([sys.executable, "-c", _PAUSED], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.split() == ["True", "True", "True", "True"]
    frozen, enabled = gc.get_freeze_count(), gc.isenabled()
    assert main(["lpr", "--dataset", "emt-alloys", "--train-groups", "bulk-pure",
                 *SOAP_ARGS, "-q", "-o", str(tmp_path / "out.extxyz")]) == 0
    assert (gc.get_freeze_count(), gc.isenabled()) == (frozen, enabled)


@pytest.mark.parametrize("main_error", [InputError, KeyboardInterrupt])
def test_background_error_of_an_earlier_chunk_is_the_one_reported(main_error):
    """Both threads of the streamed phase fail (the previous chunk's write, the next
    chunk's featurisation): the error reported is the earlier chunk's, so the first bad
    frame in file order is named. An interrupt stays an interrupt."""
    import threading

    from lprviz import cli

    started = threading.Event()

    def earlier_chunk():
        started.set()
        raise InputError("chunk 1: disk full")

    expected = InputError if main_error is InputError else KeyboardInterrupt
    with pytest.raises(expected) as info:
        with cli._Behind() as behind:
            behind.submit(earlier_chunk)
            started.wait(10)
            raise main_error("chunk 2: over the limit")
    if main_error is InputError:
        assert str(info.value) == "chunk 1: disk full"
        assert str(info.value.__cause__) == "chunk 2: over the limit"


def test_background_error_keeps_its_own_cause_and_only_errors_replace():
    """The earlier chunk's error keeps a cause of its own (the root of a failed write);
    a background exit that is not an error does not replace the main thread's error."""
    import threading

    from lprviz import cli

    def failed_write():
        try:
            raise OSError(28, "No space left on device")
        except OSError as exc:
            raise RuntimeError("chunk 1: writing failed") from exc

    def exits():
        raise SystemExit(3)

    for job, expected in ((failed_write, "chunk 1: writing failed"),
                          (exits, "chunk 2: over the limit")):
        started = threading.Event()

        def run(job=job, started=started):
            started.set()
            job()

        with pytest.raises(Exception) as info:
            with cli._Behind() as behind:
                behind.submit(run)
                started.wait(10)
                raise InputError("chunk 2: over the limit")
        assert str(info.value) == expected
        if job is failed_write:
            assert isinstance(info.value.__cause__, OSError)
        else:
            assert info.type is InputError


def test_elements_absent_from_training_get_a_note(files, tmp_path, capsys):
    """Test structures with an element no training structure has are computed as usual,
    with a one-line note naming the element; its atoms' LPRs are the lowest of the file
    (the regulariser, not the data, sets their prediction)."""
    train, test = files
    frames = ase.io.read(test, ":")
    frames[2].numbers[0] = 26  # one Fe atom; training has Cu and Au only
    ase.io.write(test, frames)
    out = tmp_path / "out.extxyz"
    assert main(["lpr", "--train", str(train), "--test", str(test), *SOAP_ARGS, "-q",
                 "-o", str(out)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "Fe" in line]
    assert len(notes) == 1 and notes[0].startswith("lprviz: note: no training structure "
                                                   "contains Fe:")
    lpr = np.concatenate([a.arrays["lpr"] for a in ase.io.read(out, ":")])
    fe = int(sum(len(a) for a in frames[:2]))
    assert np.isfinite(lpr).all() and lpr[fe] == lpr.min()
    ase.io.write(test, _emt_frames(3, 2, energies=False))  # Cu and Au: nothing to note
    assert main(["lpr", "--train", str(train), "--test", str(test), *SOAP_ARGS, "-q",
                 "-o", str(out)]) == 0
    assert capsys.readouterr().err == ""
