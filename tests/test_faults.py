"""Faults: damaged cache entries, a full disk, interrupted writes and fetches, Ctrl-C."""

from __future__ import annotations

import errno
import hashlib
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk, molecule

from lprviz import datasets, features
from lprviz.features import compute_soap
from tests.test_features import SMALL

pytestmark = pytest.mark.usefixtures("isolated_cache")


def _frames():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.rattle(0.05, seed=1)
    return [cu, molecule("H2O")]


def _entry() -> tuple[Path, np.ndarray]:
    """Fill the disk cache once; return its only entry and the true values."""
    values = compute_soap(_frames(), SMALL).values
    (entry,) = features.cache_dir().glob("*.npz")
    features.clear_memory_cache()  # later calls must go through the disk entry
    return entry, values


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".npz")
                  or ".tmp" in p.name)


def _count_featurisations(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = features._featurise

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "_featurise", counting)
    return calls


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside the array payload
    path.write_bytes(bytes(data))


def _same_shape_wrong_values(path: Path) -> None:
    """Rewrite the entry with other numbers but the stored key and checksum kept."""
    with np.load(path, allow_pickle=False) as data:
        parts = {k: data[k] for k in data.files}
    parts["values"] = parts["values"] * 1.5 + 0.25
    np.savez(path, **parts)


def _other_entry(path: Path) -> None:
    """Replace the entry by a valid entry of another structure set (same shape)."""
    other = [a.copy() for a in _frames()]
    other[0].rattle(0.05, seed=7)
    compute_soap(other, SMALL)
    donor = next(p for p in features.cache_dir().glob("*.npz") if p != path)
    os.replace(donor, path)
    features.clear_memory_cache()


@pytest.mark.parametrize("damage", [_truncate, _flip_byte, _same_shape_wrong_values,
                                    _other_entry])
def test_damaged_cache_entry_is_discarded_and_recomputed(monkeypatch, damage):
    entry, values = _entry()
    damage(entry)
    calls = _count_featurisations(monkeypatch)
    again = compute_soap(_frames(), SMALL)
    assert calls, "a damaged entry must not be used"
    np.testing.assert_allclose(again.values, values, rtol=1e-12, atol=1e-14)
    # The entry was rewritten intact: the next process reads it without featurising.
    features.clear_memory_cache()
    calls.clear()
    np.testing.assert_allclose(compute_soap(_frames(), SMALL).values, values,
                               rtol=1e-12, atol=1e-14)
    assert not calls
    assert _leftovers(features.cache_dir()) == []


def test_full_disk_leaves_no_temporary_file(monkeypatch):
    def disk_full(fh, **arrays):
        fh.write(b"PK\x03\x04 half an entry")
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(features.np, "savez", disk_full)
        desc = compute_soap(_frames(), SMALL)
    reference = compute_soap(_frames(), SMALL, cache=False)
    np.testing.assert_allclose(desc.values, reference.values, rtol=1e-12, atol=1e-14)
    folder = features.cache_dir()
    assert list(folder.iterdir()) == [], "nothing written, not even a temporary file"


def test_interrupted_cache_write_leaves_no_temporary_file(monkeypatch):
    def interrupted(fh, **arrays):
        fh.write(b"PK\x03\x04")
        raise KeyboardInterrupt

    monkeypatch.setattr(features.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compute_soap(_frames(), SMALL)
    assert list(features.cache_dir().iterdir()) == []


def test_stale_temporary_cache_files_are_removed_on_next_write():
    folder = features.cache_dir()
    folder.mkdir(parents=True)
    stale, fresh = folder / ".abc.123.tmp.npz", folder / ".def.456.tmp.npz"
    for path in (stale, fresh):
        path.write_bytes(b"half")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    compute_soap(_frames(), SMALL)
    assert not stale.exists()
    assert fresh.exists(), "a temporary file that may belong to a running writer is kept"


def test_stale_part_files_of_an_interrupted_fetch_are_cleaned(tmp_path):
    dest = tmp_path / "mirror"
    dest.mkdir()
    checksums = {}
    for split in ("training", "test"):
        body = f"[] {split}".encode()
        (dest / f"{split}.json").write_bytes(body)
        checksums[f"data/Si/{split}.json"] = hashlib.sha256(body).hexdigest()
    stale, fresh = dest / ".test.json.x1.part", dest / ".test.json.x2.part"
    for path in (stale, fresh):
        path.write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    # Both files are present and verified, so nothing is downloaded.
    paths = datasets.fetch("mlearn-Si", dest=dest, checksums=checksums)
    assert [p.name for p in paths] == ["training.json", "test.json"]
    assert not stale.exists()
    assert fresh.exists()


def _interrupt(tmp_path: Path, argv: list[str], ready: re.Pattern) -> None:
    """Run ``lprviz lpr ARGV -o OUT``, send Ctrl-C once stderr matches ``ready``; check the
    one-line message, exit status 130 and that no partial or temporary file is left."""
    cache, out_dir = tmp_path / "cache", tmp_path / "out"
    out_dir.mkdir()
    env = dict(os.environ, LPRVIZ_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    # stderr is a terminal (a pseudo-terminal), as for a user at one: the progress bars are
    # drawn there only, and they tell when to interrupt
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lprviz.cli", "lpr", *argv, "-o", str(out_dir / "out.extxyz")],
        stdout=subprocess.PIPE, stderr=slave, env=env,
    )
    os.close(slave)

    def read(timeout: float = 120.0) -> bytes:
        """The next output, b"" once the child has closed the terminal (EIO) or after
        ``timeout`` seconds of silence."""
        if not select.select([master], [], [], timeout)[0]:
            return b""
        try:
            return os.read(master, 4096)
        except OSError:  # EIO: the child has closed the terminal
            return b""

    try:
        seen = b""
        while not ready.search(seen):
            chunk = read()
            assert chunk, f"lprviz exited too early: {seen.decode(errors='replace')}"
            seen += chunk
        proc.send_signal(signal.SIGINT)
        rest = b""
        while chunk := read():  # drained as it goes: a full terminal would block the child
            rest += chunk
        proc.communicate(timeout=120)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = (seen + rest).decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    # Besides the steps already reported (and the progress bars, and notes on the data
    # printed before the interruption), the one line.
    messages = [line.strip() for line in stderr.splitlines()
                if line.strip() and " [" not in line and not line.endswith(" s")
                and not line.strip().endswith("...")
                and not line.startswith("lprviz: note: ")]
    assert messages == ["lprviz: interrupted"], repr(stderr)
    left = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert not [n for n in left if n.endswith((".part", ".tmp", ".tmp.npz")) or "tmp" in n]
    assert not (out_dir / "out.extxyz").exists()


def test_ctrl_c_mid_run_prints_one_line_exits_130_and_leaves_no_partial_file(tmp_path):
    # The first progress line means the run is featurising: interrupt it there.
    _interrupt(tmp_path, ["--dataset", "emt-alloys", "--train-groups", "bulk-pure,bulk-alloy"],
               re.compile(rb"SOAP \["))


def test_ctrl_c_while_chunks_are_written_behind_the_featurisation(tmp_path):
    """The streamed phase: chunk k is evaluated and written on a background thread while
    chunk k+1 is featurised. Ctrl-C after the first chunk is written (its atoms counted in
    the bar) waits for the thread, then removes the half-written output."""
    import ase.io

    frames = datasets.load("emt-alloys").frames
    rng = np.random.default_rng(5)
    copies = []
    for _ in range(4):  # distinct structures, so every chunk is featurised
        for atoms in frames:
            atoms = atoms.copy()
            atoms.positions += rng.normal(scale=0.01, size=atoms.positions.shape)
            copies.append(atoms)
    test = tmp_path / "test.extxyz"
    ase.io.write(test, copies)
    train = tmp_path / "train.extxyz"
    ase.io.write(train, frames[:40])
    _interrupt(tmp_path, ["--train", str(train), "--test", str(test)],
               re.compile(rb"test structures \[[#.]*\] [1-9]"))
