"""``lprviz lpr --workers/--scheduler`` (lprviz.distributed) against the serial command, on a
LocalCluster of 2 worker processes; and the streamed summaries (lprviz.summary) against
numpy on the full arrays."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest

from lprviz import gramsum
from lprviz.cli import main
from lprviz.summary import QUANTILES, SummaryCollector, chunk_summary

distributed = pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[1]
TRAIN_GROUPS = "bulk-pure,bulk-alloy,vacancy,surface"
# small SOAP: d = 6 pairs x 3^2 x 3 + 3 = 165 features for 190 training rows (primal route)
SMALL = ["--preset", "fast", "--max-radial", "2", "--max-angular", "2"]
WIDE = ["--preset", "fast"]  # d = 603 > 2 x 190 rows: the dual (thin SVD) route
ALPHAS = "1e-6,1e-4,1e-2"


pytestmark = pytest.mark.usefixtures("isolated_cache")


#: Seconds to wait for (re)started worker processes: generous, for a busy CI machine.
WORKER_START_TIMEOUT = 300


@contextlib.contextmanager
def _two_workers():
    """A LocalCluster of 2 worker processes, one thread each, and a client of it."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=50) as lc, \
            distributed.Client(lc) as client:
        yield lc, client


@pytest.fixture(scope="module")
def cluster():
    with _two_workers() as both:
        yield both


@pytest.fixture
def own_cluster():
    """A cluster for one test that kills a worker: the shared one never depends on a
    nanny's replacement worker arriving (Dask's nanny restart has known races, e.g.
    dask/distributed#7312; once, under load, a replacement did not arrive in 300 s)."""
    with _two_workers() as both:
        yield both


def _run(tmp_path, name, extra, soap=SMALL, alpha="1e-4,1e-2"):
    out = tmp_path / f"{name}.extxyz"
    argv = ["lpr", "--dataset", "emt-alloys", "--train-groups", TRAIN_GROUPS, *soap,
            "--alpha", alpha, "-q", "-o", str(out), *extra]
    assert main(argv) == 0
    return ase.io.read(out, index=":")


def _columns(frames):
    """Every per-atom array and per-frame info number of ``frames``, concatenated by name."""
    out = {}
    for a in frames:
        for key, value in [*a.arrays.items(), *a.info.items()]:
            if isinstance(value, (np.ndarray, float, int, bool, np.generic)):
                out.setdefault(key, []).append(np.atleast_1d(value).reshape(-1))
    return {k: np.concatenate(v) for k, v in out.items()}


# Local energies and predicted totals come from the ridge weights, which are ill-conditioned
# at small alpha: the serial command itself moves them by ~3e-10 of their largest magnitude
# when its training frames are merely reversed, so they are compared norm-wise; the LPR,
# PR and data share elementwise.
NORMWISE = ("local_energy", "energy_pred")


def _assert_same(serial, other, rtol=1e-10):
    """Same frames in the same order, the same info and arrays: numbers within ``rtol``."""
    assert [a.info["name"] for a in other] == [a.info["name"] for a in serial]
    for a, b in zip(serial, other, strict=True):
        assert a.arrays.keys() == b.arrays.keys() and a.info.keys() == b.info.keys()
        for key, value in a.info.items():
            if isinstance(value, str):
                assert b.info[key] == value, key
    ref, got = _columns(serial), _columns(other)
    assert ref.keys() == got.keys()
    for key, value in ref.items():
        if value.dtype.kind != "f":
            np.testing.assert_array_equal(got[key], value, err_msg=key)
        elif key in NORMWISE:
            assert np.abs(got[key] - value).max() <= rtol * np.abs(value).max(), key
        elif key == "log10_lpr":
            np.testing.assert_allclose(got[key], value, rtol=0, atol=rtol, err_msg=key)
        else:
            np.testing.assert_allclose(got[key], value, rtol=rtol, atol=0, err_msg=key)


def test_local_workers_equal_serial_dual_route(tmp_path):
    """--workers 2 (the command's own LocalCluster) == serial, few rows for many features."""
    serial = _run(tmp_path, "serial", [], soap=WIDE, alpha=ALPHAS)
    dist = _run(tmp_path, "dist", ["--workers", "2"], soap=WIDE, alpha=ALPHAS)
    assert len(serial) == 110
    _assert_same(serial, dist)
    assert not any(a.info["in_training"] for a in dist)


def test_scheduler_equals_serial_and_tasks_ran_on_workers(tmp_path, cluster, monkeypatch):
    """Primal route, many small chunks (frame order through the bounded in-flight queue);
    the task stream shows featurisation and LPR tasks on both worker processes."""
    import lprviz.distributed as dmod

    lc, client = cluster
    monkeypatch.setattr(dmod, "CHUNK_ATOMS", 300)  # ~26 chunks, several in flight
    monkeypatch.setattr(dmod, "ROUND_CHUNKS", 4)  # training sums fetched in rounds
    # blocks of the training sums smaller than chunks and cut across them (lprviz.gramsum)
    monkeypatch.setattr(gramsum, "BLOCK_ATOMS", 230)
    serial = _run(tmp_path, "serial", [], alpha=ALPHAS)
    with distributed.get_task_stream(client) as stream:
        dist = _run(tmp_path, "dist", ["--scheduler", lc.scheduler_address], alpha=ALPHAS)
    # Primal route: X^T X is summed in gramsum's one order in both runs (summed chunk by
    # chunk instead, a few LPRs moved by up to 1.2e-10 at alpha = 1e-4).
    _assert_same(serial, dist)
    pids = client.run(os.getpid)
    assert len(pids) == 2 and os.getpid() not in pids.values()
    ran = {}
    for record in stream.data:
        key = str(record["key"])
        name = key.split("-")[0].strip("('\"")
        ran.setdefault(name, set()).add(record["worker"])
    assert {"_train_partial", "_add_partials", "_test_chunk"} <= set(ran)
    assert ran["_test_chunk"] | ran["_train_partial"] == set(pids)  # both workers worked


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_is_one_line_error(tmp_path, capsys, monkeypatch):
    import lprviz.distributed as dmod

    monkeypatch.setattr(dmod, "CONNECT_TIMEOUT", 1.0)
    address = f"tcp://127.0.0.1:{_free_port()}"
    start = time.perf_counter()
    code = main(["lpr", "--dataset", "emt-alloys", "--train-groups", TRAIN_GROUPS, *SMALL,
                 "-q", "-o", str(tmp_path / "out.extxyz"), "--scheduler", address])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and address in err and "cannot reach" in err
    assert "within 1 s" in err  # it waited
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "out.extxyz").exists()
    # an address Dask cannot parse fails at once: no wait is claimed
    code = main(["lpr", "--dataset", "emt-alloys", "--train-groups", TRAIN_GROUPS, *SMALL,
                 "-q", "-o", str(tmp_path / "out.extxyz"), "--scheduler", "garbage"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--scheduler garbage: cannot reach a Dask scheduler (" in err


def test_without_dask_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails
    code = main(["lpr", "--dataset", "emt-alloys", "--train-groups", TRAIN_GROUPS,
                 "-o", str(tmp_path / "out.extxyz"), "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install 'lprviz[dask]'" in err


@pytest.mark.parametrize("extra, named", [
    (["--lcpr"], "--lcpr"),
    (["--forces"], "--forces"),
    (["--reference-train", "emt-alloys"], "--reference-train"),
    (["--reference-train-groups", "bulk-pure"], "--reference-train-groups"),
    (["--model", "nn"], "--model nn"),
    (["--features-array", "lpr"], "--features-array lpr"),
    (["--model", "chgnet"], "--model chgnet"),
])
def test_unsupported_options_are_refused(tmp_path, capsys, extra, named):
    """What still runs only serially: a one-line error naming the option, before any work
    (no cluster is started: --scheduler points nowhere)."""
    from lprviz import sources

    if named == "--model chgnet" and sources.backbone_unavailable("chgnet"):
        pytest.skip(sources.backbone_unavailable("chgnet"))
    code = main(["lpr", "--dataset", "emt-alloys", "--train-groups", TRAIN_GROUPS, *extra,
                 "-o", str(tmp_path / "out.extxyz"), "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"lprviz: error: {named}"), err
    assert "not available with --workers/--scheduler" in err


@pytest.mark.parametrize("phase, model", [
    ("_train_partial", []), ("_test_chunk", []),
    ("_train_descriptors", ["--model", "sparse-kernel", "--n-sparse", "120"]),
])
def test_killed_worker_gives_the_same_result(tmp_path, own_cluster, phase, model):
    """SIGKILL a worker process while it runs a training, a test task or (sparse kernel) a
    task returning training SOAP for the FPS: Dask re-runs its tasks (and recomputes from
    their inputs the partial sums it held) on the nanny's replacement and the other
    worker."""
    lc, client = own_cluster
    serial = _run(tmp_path, "serial", model)
    out = tmp_path / "dist.extxyz"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = ("import sys, lprviz.distributed as d; d.CHUNK_ATOMS = 200; "
            "from lprviz.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "lpr", "--dataset", "emt-alloys", "--train-groups",
         TRAIN_GROUPS, *SMALL, "--alpha", "1e-4,1e-2", "-q", "-o", str(out), *model,
         "--scheduler", lc.scheduler_address],
        env=env, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        held = client.has_what()
        busy = [w for w, keys in client.processing().items()
                if any(phase in str(k) for k in keys)
                and (phase != "_train_partial" or any("_add_partials" in str(k)
                                                   for k in held.get(w, ())))]
        if busy:
            killed = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    assert killed is not None, "the run ended before a worker could be killed"
    assert proc.returncode == 0, err
    _assert_same(serial, ase.io.read(out, index=":"), )


def test_chunk_errors_name_the_file_frame(tmp_path, capsys):
    import lprviz.distributed as dmod

    frames = ase.io.read(REPO / "lprviz" / "data" / "emt-alloys.extxyz", index=":30")
    frames[23].positions[0, 0] = np.nan
    path = tmp_path / "bad.extxyz"
    ase.io.write(path, frames)
    with pytest.raises(Exception, match=r"bad.extxyz: frame 23: positions contain NaN"):
        list(dmod.iter_chunks(str(path), chunk_atoms=100))


# ------------------------------------------------------------------------- summaries
def _summary_from(frames):
    lpr = np.concatenate([a.arrays["lpr"] for a in frames])
    und = np.concatenate([a.arrays["undetermined"] for a in frames]).astype(bool)
    species = np.concatenate([a.get_chemical_symbols() for a in frames])
    groups = np.concatenate([[a.info["group"]] * len(a) for a in frames])
    return lpr, und, species, groups


def test_summary_quantiles_equal_numpy_serial_and_distributed(tmp_path, cluster):
    import json

    lc, _ = cluster
    for name, extra in (("serial", []), ("dist", ["--scheduler", lc.scheduler_address])):
        path = tmp_path / f"{name}.json"
        frames = _run(tmp_path, name, ["--summary", str(path), "--sample", "4", *extra])
        summary = json.loads(path.read_text())
        lpr, und, species, groups = _summary_from(frames)
        assert summary["alpha"] == 1e-4
        rows = {(r["by"], r["key"]): r for r in summary["quantiles"]}
        expected = {("all", "all"): np.ones(lpr.size, dtype=bool)}
        expected |= {("group", g): groups == g for g in np.unique(groups)}
        expected |= {("species", s): species == s for s in np.unique(species)}
        assert rows.keys() == expected.keys()
        for key, mask in expected.items():
            row = rows[key]
            assert row["count"] == mask.sum()
            assert row["undetermined_fraction"] == pytest.approx(und[mask].mean())
            np.testing.assert_allclose([row[f"q{round(100 * q):02d}"] for q in QUANTILES],
                                       np.quantile(lpr[mask], QUANTILES), rtol=1e-6)
        lowest = np.argsort(lpr, kind="stable")[:20]
        np.testing.assert_allclose([a["lpr"] for a in summary["lowest_atoms"]], lpr[lowest],
                                   rtol=1e-12)
        frame_min = np.array([a.arrays["lpr"].min() for a in frames])
        order = np.argsort(frame_min, kind="stable")
        assert [s["frame"] for s in summary["lowest_structures"]] == order[:20].tolist()
        assert [s["name"] for s in summary["lowest_structures"]] == \
            [frames[i].info["name"] for i in order[:20]]
        first = summary["lowest_atoms"][0]
        frame = frames[first["frame"]]
        assert frame.info["name"] == first["name"]
        assert frame.get_chemical_symbols()[first["atom"]] == first["species"]
        assert frame.arrays["lpr"][first["atom"]] == pytest.approx(first["lpr"], rel=1e-12)
        sample = ase.io.read(tmp_path / f"{name}.sample.extxyz", index=":")
        assert [a.info["name"] for a in sample] == [frames[i].info["name"] for i in order[:4]]
        # the sample's texts (from annotated_frames) are the output's (write_annotated)
        output = (tmp_path / f"{name}.extxyz").read_text()
        lines = (tmp_path / f"{name}.sample.extxyz").read_text().splitlines(keepends=True)
        while lines:
            n = int(lines[0]) + 2
            assert "".join(lines[:n]) in output
            lines = lines[n:]


def test_collector_is_independent_of_chunking():
    """Any cut of the same atoms into chunks gives the same summary, equal to numpy."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 9, size=60)
    n = int(sizes.sum())
    lpr = np.exp(rng.normal(size=n) * 3)
    und = rng.random(n) < 0.1
    numbers = rng.choice([1, 8, 29], size=n)
    groups = rng.choice(["a", "b", "c"], size=60).tolist()
    names = [f"s{i}" for i in range(60)]
    starts = np.concatenate([[0], np.cumsum(sizes)])

    def summarise(cuts):
        collector = SummaryCollector(1e-3, n_lowest=7)
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            atoms = slice(starts[lo], starts[hi])
            collector.add(chunk_summary(np.arange(lo, hi), names[lo:hi], groups[lo:hi],
                                        sizes[lo:hi], numbers[atoms], lpr[atoms], und[atoms]))
        return collector.as_dict()

    one = summarise([0, 60])
    many = summarise([0, 1, 7, 8, 30, 59, 60])
    assert one == many
    by_key = {(r["by"], r["key"]): r for r in one["quantiles"]}
    mask = np.repeat(np.array(groups) == "b", sizes)
    np.testing.assert_allclose([by_key["group", "b"][f"q{round(100 * q):02d}"]
                                for q in QUANTILES],
                               np.quantile(lpr[mask], QUANTILES), rtol=1e-6)
    assert by_key["species", "Cu"]["count"] == (numbers == 29).sum()
    assert [a["lpr"] for a in one["lowest_atoms"]] == sorted(lpr)[:7]
    csv = io.StringIO()
    SummaryCollector(1.0).write_csv(csv)  # empty run: header only
    assert csv.getvalue().startswith("by,key,count")


def test_train_and_test_files_equal_serial(tmp_path, cluster, capsys, monkeypatch):
    """--train/--test files (blocks parsed on the workers) == serial; a bad frame deep in the
    test file is a one-line error naming the file's frame number, exit 2."""
    import lprviz.distributed as dmod

    lc, _ = cluster
    monkeypatch.setattr(dmod, "CHUNK_ATOMS", 500)
    frames = ase.io.read(REPO / "lprviz" / "data" / "emt-alloys.extxyz", index=":")
    train, test = tmp_path / "train.extxyz", tmp_path / "test.extxyz"
    ase.io.write(train, frames[::3])
    ase.io.write(test, [a for i, a in enumerate(frames) if i % 3])
    argv = ["lpr", "--train", str(train), "--test", str(test), *SMALL, "-q"]
    assert main([*argv, "-o", str(tmp_path / "serial.extxyz")]) == 0
    assert main([*argv, "-o", str(tmp_path / "dist.extxyz"),
                 "--scheduler", lc.scheduler_address]) == 0
    serial = ase.io.read(tmp_path / "serial.extxyz", index=":")
    _assert_same(serial, ase.io.read(tmp_path / "dist.extxyz", index=":"), )
    assert serial[0].info["lprviz_dataset"] == "train.extxyz+test.extxyz"
    bad = [a for i, a in enumerate(frames) if i % 3]
    bad[150].positions[2, 1] = np.inf
    ase.io.write(test, bad)
    capsys.readouterr()
    code = main([*argv, "-o", str(tmp_path / "bad.extxyz"), "--scheduler", lc.scheduler_address])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "test.extxyz: frame 150: positions contain NaN or inf" in err


def test_train_groups_and_split_of_a_train_file_serial_and_distributed(tmp_path, cluster,
                                                                      capsys):
    """--train-groups with a --train file trains on those of its groups only, and frames
    the file marks ``split=test`` never train (a note says so): serial == distributed ==
    a run on a file holding just those training frames."""
    lc, _ = cluster
    frames = ase.io.read(REPO / "lprviz" / "data" / "emt-alloys.extxyz", index=":")
    train_frames = frames[::3]
    for a in train_frames[:4]:
        a.info["split"] = "test"
    keep = [a for a in train_frames[4:] if a.info["group"] in ("bulk-alloy", "surface")]
    for a in keep:
        a.info.pop("split", None)
    train, test = tmp_path / "train.extxyz", tmp_path / "test.extxyz"
    ase.io.write(train, train_frames)
    ase.io.write(test, frames[1::3][:40])
    ase.io.write(tmp_path / "kept_train.extxyz", keep)
    argv = ["lpr", "--test", str(test), *SMALL, "-q"]
    groups = ["--train", str(train), "--train-groups", "bulk-alloy,surface"]
    capsys.readouterr()
    outs = []
    for name, extra in (("serial", groups),
                        ("dist", [*groups, "--scheduler", lc.scheduler_address]),
                        ("kept", ["--train", str(tmp_path / "kept_train.extxyz")])):
        assert main([*argv, *extra, "-o", str(tmp_path / f"{name}.extxyz")]) == 0
        outs.append(ase.io.read(tmp_path / f"{name}.extxyz", index=":"))
        notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
        if name != "kept":
            assert notes == [f"lprviz: note: {train}: its 4 test-split structures are left out "
                             "of training"]
    serial, dist, kept = outs
    assert serial[0].info["lprviz_n_train_frames"] == len(keep)
    assert "surface" in serial[0].info["lprviz_train_groups"]
    assert "bulk-pure" not in serial[0].info["lprviz_train_groups"]
    _assert_same(serial, dist)
    np.testing.assert_allclose(_columns(serial)["lpr"], _columns(kept)["lpr"], rtol=1e-10)
    # an unknown group of the file: one line, both ways
    for extra in ([], ["--scheduler", lc.scheduler_address]):
        code = main([*argv, "--train", str(train), "--train-groups", "bulk-alloy,nope",
                     "-o", str(tmp_path / "x.extxyz"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1].startswith("lprviz: error: --train-groups: dataset "
                                                "'train.extxyz' has no group nope")


def test_train_file_edge_cases_serial_and_distributed(tmp_path, cluster, capsys):
    """The serial and distributed runs agree: a missing energy is named by its frame number
    in the --train file (after a test split and groups are left out), a group found only
    in the file's test split does not exist for training, an empty group list is refused;
    a note never splits a step's line."""
    lc, _ = cluster
    frames = ase.io.read(REPO / "lprviz" / "data" / "emt-alloys.extxyz", index=":")[:12]
    for a in frames[:2]:
        a.info["split"] = "test"
        a.info["group"] = "only-held-out"
    frames[6].calc = None  # no energy
    train, test = tmp_path / "train.extxyz", tmp_path / "test.extxyz"
    ase.io.write(train, frames)
    ase.io.write(test, frames[2:5])
    groups = sorted({a.info["group"] for a in frames[2:]})
    base = ["lpr", "--train", str(train), "--test", str(test), *SMALL,
            "-o", str(tmp_path / "o.extxyz")]
    cases = [
        ([], "train.extxyz: frame 6 has no energy"),
        (["--train-groups", "only-held-out"], "--train-groups: dataset 'train.extxyz' has no "
                                              "group only-held-out"),
        (["--train-groups", ","], "--train-groups: no group given"),
    ]
    for extra, message in cases:
        for where in ([], ["--scheduler", lc.scheduler_address]):
            code = main([*base, "-q", *extra, *where])
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and message in err[-1], (extra, where, err)
    del frames[6]
    ase.io.write(train, frames)
    assert main([*base, "--train-groups", ",".join(groups)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("loading structures... done in ")
    assert "lprviz: note: " + str(train) + ": its 2 test-split structures are left out of " \
        "training" in err


def test_elements_absent_from_training_get_the_serial_note(tmp_path, cluster, capsys):
    """The distributed run notes test elements no training frame contains, in the serial
    run's words (from its scan: the species of each chunk's training and test frames)."""
    lc, _ = cluster
    frames = ase.io.read(REPO / "lprviz" / "data" / "emt-alloys.extxyz", index=":")
    train, test = tmp_path / "train.extxyz", tmp_path / "test.extxyz"
    ase.io.write(train, frames[::3])
    mixed = frames[1::3][:30]
    mixed[7].numbers[0] = 26  # one Fe atom
    ase.io.write(test, mixed)
    argv = ["lpr", "--train", str(train), "--test", str(test), *SMALL, "-q",
            "-o", str(tmp_path / "out.extxyz")]
    notes = []
    for extra in ([], ["--scheduler", lc.scheduler_address]):
        assert main([*argv, *extra]) == 0
        notes.append([line for line in capsys.readouterr().err.splitlines()
                      if "no training structure contains" in line])
    assert len(notes[0]) == 1 and "contains Fe:" in notes[0][0]
    assert notes[1] == notes[0]


def test_ctrl_c_closes_the_cluster(tmp_path):
    """SIGINT while the output is being written by a --workers run: exit 130, one line, no
    worker process left and no output file (not even a partial one)."""
    import psutil

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    mark = tmp_path / "writing"
    # The client's ordered results are slowed once test chunks arrive (a mark file says so),
    # so the interrupt lands in the write on any machine, however fast.
    code = textwrap.dedent(f"""
        import pathlib, sys, time
        import lprviz.distributed as d
        from lprviz.cli import main
        d.CHUNK_ATOMS = 200
        ordered = d._ordered
        def slow(client, tasks, in_flight):
            for out in ordered(client, tasks, in_flight):
                if isinstance(out, tuple) and len(out) == 3 and isinstance(out[0], str):
                    pathlib.Path({str(mark)!r}).touch()
                    time.sleep(0.5)
                yield out
        d._ordered = slow
        sys.exit(main(sys.argv[1:]))
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "lpr", "--dataset", "emt-alloys", "--train-groups",
         TRAIN_GROUPS, *SMALL, "-o", str(tmp_path / "out.extxyz"), "--workers", "2"],
        env=env, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None and not mark.exists():
        time.sleep(0.1)
    assert mark.exists(), proc.stderr.read() if proc.poll() is not None else "no test chunk"
    workers = [p for p in parent.children(recursive=True) if p.status() != "zombie"]
    assert len(workers) >= 2  # the two worker processes (their nannies run in the client)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "lprviz: interrupted"
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, [p.pid for p in alive]
    assert not (tmp_path / "out.extxyz").exists()
    assert not list(tmp_path.glob(".out.extxyz.*"))  # nor the temporary file


@pytest.mark.parametrize(("extra", "message"), [
    (["--summary", "run.txt"], "expected a .csv or .json"),
    (["--sample", "3"], "--sample: also give --summary"),
    (["--workers", "0"], "--workers: expected at least 1"),
])
def test_bad_summary_and_worker_options(tmp_path, capsys, extra, message):
    code = main(["lpr", "--dataset", "emt-alloys", "--train-groups", TRAIN_GROUPS,
                 "-o", str(tmp_path / "out.extxyz"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err


def test_csv_summary_files(tmp_path):
    """--summary x.csv writes the quantile table and the two lowest-LPR tables beside it."""
    import csv

    frames = _run(tmp_path, "serial", ["--summary", str(tmp_path / "s.csv")])
    with open(tmp_path / "s.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    lpr = np.concatenate([a.arrays["lpr"] for a in frames])
    assert rows[0]["by"] == "all" and int(rows[0]["count"]) == lpr.size
    np.testing.assert_allclose(float(rows[0]["q50"]), np.median(lpr), rtol=1e-6)
    with open(tmp_path / "s.lowest_atoms.csv", newline="") as fh:
        atoms = list(csv.DictReader(fh))
    np.testing.assert_allclose(float(atoms[0]["lpr"]), lpr.min(), rtol=1e-12)
    assert (tmp_path / "s.lowest_structures.csv").is_file()


def test_scheduler_without_workers_or_with_another_version(tmp_path, cluster, capsys,
                                                           monkeypatch):
    import lprviz
    import lprviz.distributed as dmod

    monkeypatch.setattr(dmod, "CONNECT_TIMEOUT", 1.0)
    argv = ["lpr", "--dataset", "emt-alloys", "--train-groups", TRAIN_GROUPS,
            "-o", str(tmp_path / "out.extxyz")]
    with distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=":0",
                                  silence_logs=50) as empty:
        assert main([*argv, "--scheduler", empty.scheduler_address]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no worker connected within 1 s" in err
    lc, client = cluster
    client.wait_for_workers(2, timeout=WORKER_START_TIMEOUT)  # "2 of 2" below
    version = lprviz.__version__
    client.run(lambda: setattr(__import__("lprviz"), "__version__", "0.0.0-other"))
    try:
        assert main([*argv, "--scheduler", lc.scheduler_address]) == 2
    finally:
        client.run(lambda: setattr(__import__("lprviz"), "__version__", version))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has lprviz 0.0.0-other" in err and "2 of 2" in err


@pytest.mark.parametrize("soap", [SMALL, WIDE], ids=["primal", "dual"])
def test_sparse_kernel_equals_serial(tmp_path, cluster, monkeypatch, soap):
    """Sparse kernel: FPS on the client over the training SOAP gathered from the workers, the
    Nystrom map broadcast, features and sums on the workers == serial, at three alphas.
    120 active environments: 123 features for 190 training rows (primal route); 400: 403
    features (dual route)."""
    import lprviz.distributed as dmod

    lc, _ = cluster
    monkeypatch.setattr(dmod, "CHUNK_ATOMS", 400)
    monkeypatch.setattr(gramsum, "BLOCK_ATOMS", 300)
    n_sparse = "120" if soap is SMALL else "400"
    extra = ["--model", "sparse-kernel", "--n-sparse", n_sparse]
    serial = _run(tmp_path, "serial", extra, soap=soap, alpha=ALPHAS)
    dist = _run(tmp_path, "dist", [*extra, "--scheduler", lc.scheduler_address], soap=soap,
                alpha=ALPHAS)
    _assert_same(serial, dist)
    linear = _run(tmp_path, "linear", [], soap=soap, alpha=ALPHAS)
    assert not np.allclose(_columns(linear)["lpr"], _columns(dist)["lpr"], rtol=1e-3)


def test_sparse_kernel_descriptors_over_the_limit_is_one_line(tmp_path, capsys, cluster,
                                                              monkeypatch):
    lc, _ = cluster
    monkeypatch.setenv("LPRVIZ_MAX_ARRAY_BYTES", str(1 << 20))
    code = main(["lpr", "--dataset", "emt-alloys", "--train-groups", TRAIN_GROUPS, *SMALL,
                 "--model", "sparse-kernel", "-q", "-o", str(tmp_path / "out.extxyz"),
                 "--scheduler", lc.scheduler_address])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "LPRVIZ_MAX_ARRAY_BYTES" in err and "training atoms" in err
    assert not (tmp_path / "out.extxyz").exists()


def test_files_without_a_suffix_stream_only_when_they_are_xyz(tmp_path):
    """As the serial readers: a file without a suffix streams as extxyz when its first line
    is an atom count; a POSCAR is loaded whole through ASE's format detection."""
    from ase.build import bulk

    import lprviz.distributed as dmod

    si = bulk("Si", "diamond", 5.43, cubic=True)
    ase.io.write(tmp_path / "POSCAR", si, format="vasp")
    ase.io.write(tmp_path / "frames", [si, si], format="extxyz")
    poscar, frames = dmod._resolve(str(tmp_path / "POSCAR")), dmod._resolve(
        str(tmp_path / "frames"))
    assert poscar.path is None and poscar.data.n_atoms == 8
    assert frames.path == tmp_path / "frames" and frames.data is None
