"""CLI progress on stderr (silenced by ``-q``) and safe output files (``-o``, ``--csv``)."""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from lprviz import export
from lprviz.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import write_valid  # noqa: E402

SOAP = ["--cutoff", "3.5", "--max-radial", "2", "--max-angular", "1"]
OLD = "old output, must survive\n"


pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture
def files(tmp_path):
    return (write_valid(tmp_path / "train.extxyz", 8, 1),
            write_valid(tmp_path / "test.extxyz", 3, 2, energies=False))


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("lprviz: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    return lines[0]


def test_every_step_is_reported_and_quiet_silences_them(files, tmp_path, capsys,
                                                        monkeypatch):
    import lprviz.cli as cli

    monkeypatch.setattr(cli, "_bars_shown", lambda: True)  # as on a terminal
    train, test = files
    out = tmp_path / "out.extxyz"
    argv = ["lpr", "--train", str(train), "--test", str(test), "--alpha", "1e-4,1e-2",
            "--lcpr", "--reference-train", str(train), *SOAP, "-o", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    for step in ("loading structures", "SOAP", "SOAP of the reference", "reference feature space",
                 "factorising the model of 8 training structures", "LPR at alpha=0.0001",
                 "LPR at alpha=0.01", "LCPR per descriptor block", f"writing {out}",
                 "SOAP of the test structures"):
        assert f"{step}... " in err, step
    assert err.count(" done in ") == 10
    assert "SOAP [" in err and "wrote 3 structures" in err
    assert main([*argv, "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_suggest_reports_steps_unless_quiet(files, tmp_path, capsys):
    train, pool = files
    argv = ["suggest", "--train", str(train), "--pool", str(pool), "-k", "2",
            "--random-seeds", "2", "--csv", str(tmp_path / "s.csv")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    for step in ("loading structures", "SOAP", "factorising", "ranking 3 candidate structures",
                 "2 random draws", "writing"):
        assert f"{step}" in err and " done in " in err, step
    assert main([*argv, "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_suggest_says_what_it_ranks(files, capsys):
    """A ``-k`` beyond the pool is a note (all candidates ranked), and a small
    ``--target-fraction`` is printed as given, not rounded to 0%."""
    train, pool = files
    assert main(["suggest", "--train", str(train), "--pool", str(pool), "-k", "5", "-q",
                 "--random-seeds", "0", "--target-fraction", "1e-6"]) == 0
    out, err = capsys.readouterr()
    assert err == ("lprviz: note: -k 5: the pool has 3 candidate structures; ranking all of "
                   "them\n")
    assert "lowest-LPR 0.0001% of non-training atoms" in out
    assert len([line for line in out.splitlines() if line.split()[:1] in (["1"], ["2"],
                                                                          ["3"])]) == 3


def test_suggest_group_options_apply_to_files(tmp_path, capsys):
    """--train-groups, --pool-groups and --target-groups with files select those groups of
    them (they were silently ignored): the same ranking as files holding just those frames,
    and "frame" still numbers the structures of the --pool file."""
    import ase.io
    import pandas as pd

    from lprviz import datasets

    frames = datasets.load("emt-alloys").frames
    by = {g: [a for a in frames if a.info["group"] == g]
          for g in ("bulk-pure", "bulk-alloy", "surface", "cluster")}
    ase.io.write(tmp_path / "train.extxyz", by["bulk-pure"] + by["bulk-alloy"][:20])
    ase.io.write(tmp_path / "pool.extxyz", by["surface"][:15] + by["cluster"][:15])
    ase.io.write(tmp_path / "only_pure.extxyz", by["bulk-pure"])
    ase.io.write(tmp_path / "clusters.extxyz", by["cluster"][:15])
    ase.io.write(tmp_path / "surfaces.extxyz", by["surface"][:15])
    common = [*SOAP, "-k", "4", "--random-seeds", "0", "-q"]
    at = str
    assert main(["suggest", "--train", at(tmp_path / "train.extxyz"), "--train-groups",
                 "bulk-pure", "--pool", at(tmp_path / "pool.extxyz"), "--pool-groups", "cluster",
                 "--target-groups", "surface", *common,
                 "--csv", at(tmp_path / "groups.csv")]) == 0
    assert main(["suggest", "--train", at(tmp_path / "only_pure.extxyz"),
                 "--pool", at(tmp_path / "clusters.extxyz"),
                 "--target", at(tmp_path / "surfaces.extxyz"), *common,
                 "--csv", at(tmp_path / "files.csv")]) == 0
    out = capsys.readouterr().out
    assert f"target: {sum(len(a) for a in by['surface'][:15])} atoms" in out
    groups, files = (pd.read_csv(tmp_path / f"{n}.csv") for n in ("groups", "files"))
    assert (groups["group"] == "cluster").all()
    assert groups["name"].tolist() == files["name"].tolist()
    numeric = [c for c in files.columns if files[c].dtype.kind == "f"]
    assert numeric
    for column in numeric:
        np.testing.assert_allclose(groups[column], files[column], rtol=1e-8, err_msg=column)
    np.testing.assert_array_equal(groups["frame"], files["frame"] + 15)  # after the surfaces


@pytest.mark.parametrize("name", ["out.csv", "out.json", "out.traj", "out.npz",
                                  "out.csv.gz"])
def test_output_named_for_another_format_is_refused(files, tmp_path, capsys, name):
    """-o out.csv wrote extended XYZ under a CSV name (unreadable as either); names of
    extxyz, without a suffix or with an unknown one are written as given."""
    train, test = files
    assert main(["lpr", "--train", str(train), "--test", str(test), *SOAP, "-q",
                 "-o", str(tmp_path / name)]) == 2
    msg = _one_error_line(capsys.readouterr().err)
    assert name in msg and "writes extended XYZ" in msg
    assert not (tmp_path / name).exists()
    for ok in ("out.extxyz.gz", "results", "out.v2", "run.out"):
        assert main(["lpr", "--train", str(train), "--test", str(test), *SOAP, "-q",
                     "-o", str(tmp_path / ok)]) == 0


def test_output_that_is_an_input_is_refused(files, tmp_path, capsys, monkeypatch):
    train, test = files
    before = train.read_bytes(), test.read_bytes()
    link = tmp_path / "link.extxyz"
    link.symlink_to(test)
    monkeypatch.chdir(tmp_path)
    for output, option in (("train.extxyz", "--train"), (str(link), "--test"),
                           (f"../{tmp_path.name}/test.extxyz", "--test")):
        assert main(["lpr", "--train", str(train), "--test", "test.extxyz", *SOAP, "-q",
                     "-o", output]) == 2
        msg = _one_error_line(capsys.readouterr().err)
        assert output in msg and option in msg
    assert main(["suggest", "--train", str(train), "--pool", str(test), "-q",
                 "--csv", str(link)]) == 2
    msg = _one_error_line(capsys.readouterr().err)
    assert "--csv" in msg and "--pool" in msg
    assert (train.read_bytes(), test.read_bytes()) == before


def test_unwritable_or_shared_outputs_are_refused_before_any_work(files, tmp_path, capsys,
                                                                  monkeypatch):
    """An output in a missing directory, a directory, or one file for two outputs (``-o``
    and ``--summary``, its CSV tables or its ``--sample``, also through a hard link) is one
    line before anything is read: the later write would replace the earlier."""
    from lprviz import cli

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the output checks")

    monkeypatch.setattr(cli, "_lpr_inputs", no_work)
    monkeypatch.setattr(cli, "_suggest_inputs", no_work)
    train, test = files
    (tmp_path / "dir").mkdir()
    # -o writes extended XYZ only, so a summary file shares it only through a hard link
    (tmp_path / "h.extxyz").write_text(OLD)
    os.link(tmp_path / "h.extxyz", tmp_path / "h2.json")
    (tmp_path / "t.extxyz").write_text(OLD)
    os.link(tmp_path / "t.extxyz", tmp_path / "t.lowest_atoms.csv")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")
    (tmp_path / "dangling.extxyz").symlink_to(tmp_path / "nowhere" / "x.extxyz")
    before = sorted(os.listdir(tmp_path))

    def at(name):
        return str(tmp_path / name)

    for extra, option, needle in [
        (["-o", at("dir")], "-o", "is a directory"),
        (["-o", ""], "-o", "is a directory"),
        (["-o", at("missing/out.extxyz")], "-o", "does not exist"),
        (["-o", at("o.extxyz"), "--summary", at("missing/s.json")], "--summary",
         "does not exist"),
        (["-o", at("s.json"), "--summary", at("s.json")], "-o", "writes extended XYZ"),
        (["-o", at("s.sample.extxyz"), "--summary", at("s.json"), "--sample", "2"], "--sample",
         "is also the file of -o"),
        (["-o", at("t.extxyz"), "--summary", at("t.csv")], "--summary",
         "is also the file of -o"),
        (["-o", at("h.extxyz"), "--summary", at("h2.json")], "--summary",
         "is also the file of -o"),
        (["-o", at("loop")], "-o", "cannot use it as an output"),
        (["-o", at("o.extxyz"), "--summary", at("loop.json")], "--summary",
         "cannot use it as an output"),
        (["-o", at("dangling.extxyz")], "-o", "does not exist"),
    ]:
        assert main(["lpr", "--train", str(train), "--test", str(test), *SOAP, "-q",
                     *extra]) == 2, extra
        msg = _one_error_line(capsys.readouterr().err)
        assert option in msg and needle in msg, (extra, msg)
    assert main(["suggest", "--train", str(train), "--pool", str(test), "-q",
                 "--csv", at("dir")]) == 2
    msg = _one_error_line(capsys.readouterr().err)
    assert "--csv" in msg and "is a directory" in msg
    assert sorted(os.listdir(tmp_path)) == before
    assert (tmp_path / "h.extxyz").read_text() == OLD == (tmp_path / "t.extxyz").read_text()


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_compressed_output_names_are_written_compressed(files, tmp_path, suffix):
    """``-o out.extxyz.gz`` (or ``.bz2``, ``.xz``) holds the plain output compressed, as
    the readers (lprviz's and ASE's) expect of the name, so it reads back."""
    import importlib

    import ase.io

    from lprviz import datasets

    train, test = files
    plain, packed = tmp_path / "out.extxyz", tmp_path / f"out.extxyz{suffix}"
    for out in (plain, packed):
        assert main(["lpr", "--train", str(train), "--test", str(test), *SOAP, "-q",
                     "-o", str(out)]) == 0
    module = importlib.import_module({".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}[suffix])
    assert module.decompress(packed.read_bytes()) == plain.read_bytes()
    ours, theirs = datasets.load(packed), ase.io.read(packed, ":")
    expected = ase.io.read(plain, ":")
    assert len(ours.frames) == len(theirs) == len(expected) == 3
    for a, b, c in zip(ours.frames, theirs, expected, strict=True):
        assert np.array_equal(a.arrays["lpr"], c.arrays["lpr"])
        assert np.array_equal(b.arrays["lpr"], c.arrays["lpr"])
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["out.extxyz", f"out.extxyz{suffix}", "train.extxyz", "test.extxyz"])


def test_dash_output_is_standard_output(files, tmp_path, capfd, monkeypatch):
    """``-o -`` writes the bytes ``-o FILE`` writes to standard output (nothing else goes
    there; the closing line stays on stderr) and makes no file; ``-`` for any other output
    is refused before any work."""
    train, test = files
    argv = ["lpr", "--train", str(train), "--test", str(test), *SOAP]
    out = tmp_path / "out.extxyz"
    assert main([*argv, "-q", "-o", str(out)]) == 0
    capfd.readouterr()
    before = sorted(os.listdir(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "-o", "-"]) == 0
    captured = capfd.readouterr()
    assert captured.out.encode() == out.read_bytes()
    assert "wrote 3 structures (" in captured.err and "to standard output" in captured.err
    assert sorted(os.listdir(tmp_path)) == before  # no file named "-"
    assert main([*argv, "-q", "-o", "-", "--summary", "-"]) == 2
    assert "--summary -: expected a .csv or .json file name" in _one_error_line(
        capfd.readouterr().err)
    assert main(["suggest", "--train", str(train), "--pool", str(test), "-q",
                 "--csv", "-"]) == 2
    assert "--csv -: expected a file name" in _one_error_line(capfd.readouterr().err)


def test_dash_output_closed_by_its_reader_is_one_line(files):
    """A reader that stops early (``| head``) gets what was written so far; the command
    says so in one line and exits 2, with no traceback or 'Exception ignored'."""
    import subprocess

    train, test = files
    env = {**os.environ, "PYTHONPATH": str(Path(export.__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "lprviz", "lpr", "--train", str(train),
                             "--test", str(test), *SOAP, "-q", "-o", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # before the first byte: the first write fails
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 2
    assert _one_error_line(err) == ("lprviz: error: -o -: standard output was closed by its "
                                    "reader before the end")
    assert "Exception ignored" not in err


def test_dash_output_without_standard_output_is_refused_before_any_work(files):
    """``-o -`` with standard output closed (``>&-``) is one line before any work."""
    import subprocess

    train, test = files
    env = {**os.environ, "PYTHONPATH": str(Path(export.__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-m", "lprviz", "lpr", "--train", str(train),
                          "--test", str(test), *SOAP, "-o", "-"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env=env, timeout=300,
                         preexec_fn=lambda: os.close(1))
    assert run.returncode == 2
    assert _one_error_line(run.stderr) == ("lprviz: error: -o -: there is no standard output "
                                           "(it is closed)")
    assert "loading structures" not in run.stderr


_FAILING_WRITE = """
import errno, gc, sys
from lprviz import export
try:
    with export.atomic_output(sys.argv[1]) as fh:
        fh.write("x" * 100_000)
        raise OSError(errno.ENOSPC, "No space left on device")
except OSError:
    pass
gc.collect()
"""


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_failed_compressed_write_keeps_the_old_file_and_closes_cleanly(tmp_path, suffix):
    """A write that fails half way leaves the old compressed file and no temporary, and
    nothing is left to write into the closed file later: the garbage collector would, an
    error Python reports only in its development mode (``-X dev``), run here."""
    import subprocess

    target = tmp_path / f"keep.extxyz{suffix}"
    target.write_bytes(b"old")
    env = {**os.environ, "PYTHONPATH": str(Path(export.__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-X", "dev", "-c", _FAILING_WRITE, str(target)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and "Exception ignored" not in run.stderr, run.stderr
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == [target.name]


def test_failed_write_keeps_the_old_output_and_leaves_no_temporary(files, tmp_path, capsys,
                                                                    monkeypatch):
    train, test = files
    (tmp_path / "results").mkdir()
    out = tmp_path / "results" / "out.extxyz"
    out.write_text(OLD)

    def disk_full(fh, *args, **kwargs):
        fh.write("3\nhalf a frame")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export, "write_annotated", disk_full)
    assert main(["lpr", "--train", str(train), "--test", str(test), *SOAP, "-q",
                 "-o", str(out)]) == 2
    msg = _one_error_line(capsys.readouterr().err)
    assert str(out) in msg and os.strerror(errno.ENOSPC) in msg
    assert out.read_text() == OLD
    assert os.listdir(out.parent) == ["out.extxyz"]


def test_failed_csv_sync_keeps_the_old_table(files, tmp_path, capsys, monkeypatch):
    train, pool = files
    (tmp_path / "results").mkdir()
    table = tmp_path / "results" / "table.csv"
    table.write_text(OLD)

    def failing_fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(export.os, "fsync", failing_fsync)
    assert main(["suggest", "--train", str(train), "--pool", str(pool), "-k", "1", "-q",
                 "--random-seeds", "0", "--csv", str(table)]) == 2
    assert "--csv" in _one_error_line(capsys.readouterr().err)
    assert table.read_text() == OLD
    assert os.listdir(table.parent) == ["table.csv"]


def test_atomic_output_replaces_whole_files_and_follows_links(tmp_path):
    target = tmp_path / "data.txt"
    target.write_text(OLD)
    target.chmod(0o640)
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    with export.atomic_output(link) as fh:
        fh.write("new\n")
        assert target.read_text() == OLD  # nothing visible before the rename
    assert link.is_symlink() and target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    with pytest.raises(RuntimeError), export.atomic_output(target) as fh:
        fh.write("partial")
        raise RuntimeError("interrupted")
    assert target.read_text() == "new\n"
    assert sorted(os.listdir(tmp_path)) == ["data.txt", "link.txt"]
    fresh = tmp_path / "fresh.txt"
    with export.atomic_output(fresh) as fh:
        fh.write("x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask
    assert np.array_equal(np.frombuffer(fresh.read_bytes(), np.uint8), [ord("x")])


def test_progress_bars_only_on_a_terminal(files, tmp_path, capsys, monkeypatch):
    """In a log file or a pipe every bar redraw (a carriage return) would be text of its
    own: there stderr gets the step lines only; on a terminal the bars are drawn."""
    import lprviz.cli as cli

    train, test = files
    argv = ["lpr", "--train", str(train), "--test", str(test), *SOAP,
            "-o", str(tmp_path / "out.extxyz")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "[" not in err and "SOAP... done in" in err
    monkeypatch.setattr(cli, "_bars_shown", lambda: True)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "\rtest structures [" in err and "atoms" in err
