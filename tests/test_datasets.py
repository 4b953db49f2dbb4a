"""Tests of lprviz.datasets: shipped sets, readers, validation, verified download, CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import importlib.util
import json
import pickle
import re
import threading
from collections import Counter
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from reference_data import mlearn_dir

from lprviz import datasets
from lprviz.cli import main
from lprviz.errors import InputError

REPO = Path(__file__).resolve().parent.parent
EMT_GROUPS = {"bulk-pure", "bulk-alloy", "vacancy", "antisite", "interstitial", "surface",
              "cluster"}


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache dir."""
    monkeypatch.setenv("LPRVIZ_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def emt() -> datasets.Dataset:
    return datasets.load(datasets.DEFAULT_DATASET)


def _load_generator():
    spec = importlib.util.spec_from_file_location("lprviz_generate", REPO / "datasets" /
                                                  "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- shipped datasets ---------------------------------------------------------------------


def test_default_dataset_contents(emt):
    assert emt.name == "emt-alloys"
    assert set(emt.groups) == EMT_GROUPS
    assert 200 <= len(emt.frames) <= 500
    assert 5_000 <= emt.n_atoms <= 20_000
    assert emt.species == (29, 47, 79)
    assert emt.has_energy.all() and np.isfinite(emt.energies).all()
    assert emt.true_local_energies is not None
    assert emt.true_local_energies.shape == (emt.n_atoms,)
    assert len(set(emt.names)) == len(emt.names)
    assert (REPO / "lprviz" / "data" / "emt-alloys.extxyz").stat().st_size < 3e6
    # Local energies add up to the totals (file precision: 1e-8 eV per atom).
    sums = np.bincount(emt.structure_index, weights=emt.true_local_energies)
    np.testing.assert_allclose(sums, emt.energies, atol=1e-6)


def test_default_dataset_matches_independent_emt(emt):
    """Stored energies, forces and local energies equal a fresh EMT evaluation."""
    starts = np.concatenate([[0], np.cumsum(emt.frame_sizes)])
    for group in sorted(EMT_GROUPS):
        i = int(np.flatnonzero(emt.groups == group)[0])
        atoms = emt.frames[i].copy()
        atoms.calc = EMT()
        assert atoms.get_potential_energy() == pytest.approx(emt.energies[i], abs=1e-5)
        np.testing.assert_allclose(atoms.get_potential_energies(),
                                   emt.true_local_energies[starts[i]:starts[i + 1]], atol=1e-5)
        np.testing.assert_allclose(atoms.get_forces(), emt.frames[i].get_forces(), atol=1e-5)


def test_extxyz_round_trip_with_plain_ase():
    """ASE reads energy/forces back into the calculator; our arrays survive as arrays."""
    frames = ase.io.read(REPO / "lprviz" / "data" / "emt-alloys.extxyz", index=":4")
    for atoms in frames:
        assert "energy" not in atoms.info  # the calculator-results trap
        assert atoms.calc is not None
        assert atoms.get_potential_energy() == pytest.approx(
            atoms.arrays["true_local_energy"].sum(), abs=1e-6)
        assert atoms.get_forces().shape == (len(atoms), 3)
        assert {"group", "name", "composition"} <= set(atoms.info)


def test_bulk_lacks_surface_and_cluster_environments(emt):
    starts = np.concatenate([[0], np.cumsum(emt.frame_sizes)])
    coord = np.concatenate([f.arrays["coordination"] for f in emt.frames])

    def coordination(group):
        return np.concatenate([coord[starts[i]:starts[i + 1]]
                               for i in np.flatnonzero(emt.groups == group)])

    bulk_min = min(coordination("bulk-pure").min(), coordination("bulk-alloy").min())
    assert bulk_min >= 10
    assert (coordination("surface") <= 9).mean() > 0.4
    assert coordination("cluster").mean() < 7  # mostly under-coordinated atoms
    # Cluster atoms are free (no cell, no periodicity).
    for i in np.flatnonzero(emt.groups == "cluster"):
        assert not emt.frames[i].pbc.any()


def test_teaching_set_stoichiometry_lesson():
    ds = datasets.load("teaching-stoichiometry")
    assert set(ds.groups) == {"fixed-stoichiometry", "varied-composition"}
    # Per-structure mean species one-hot: the per-species offsets' design matrix.
    rows = np.array([[np.mean(a.numbers == z) for z in ds.species] for a in ds.frames])
    fixed = rows[ds.groups == "fixed-stoichiometry"]
    varied = rows[ds.groups == "varied-composition"]
    assert np.linalg.matrix_rank(fixed, tol=1e-9) == 1  # e_Cu - e_Au undetermined
    assert np.linalg.matrix_rank(varied, tol=1e-9) == 2
    np.testing.assert_allclose(fixed, 0.5)
    assert ds.true_local_energies is not None


_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _split_numbers(text: str) -> tuple[list[str], np.ndarray]:
    """The text with every number replaced by ``#`` (split at them), and the numbers."""
    return _NUMBER.split(text), np.array([float(v) for v in _NUMBER.findall(text)])


def test_generator_reproduces_shipped_files(tmp_path):
    # Numbers may differ in the last digit on another CPU (libm, BLAS): compare them with a
    # tight tolerance; everything else (structure, species, groups, names, keys) exactly.
    gen = _load_generator()
    gen.main(["--out", str(tmp_path)])
    for name in ("emt-alloys", "teaching-stoichiometry"):
        new_text, new_numbers = _split_numbers((tmp_path / f"{name}.extxyz").read_text())
        old_text, old_numbers = _split_numbers(
            (REPO / "lprviz" / "data" / f"{name}.extxyz").read_text())
        assert new_text == old_text, name
        assert new_numbers.shape == old_numbers.shape and new_numbers.size > 1000, name
        np.testing.assert_allclose(new_numbers, old_numbers, rtol=1e-9, atol=1e-12, err_msg=name)


def test_number_comparison_sees_a_changed_value():
    text = "2\nLattice=\"1.5 0 0\" energy=-3.25e-2 name=bulk-Cu-0\nCu 0.1 0.2 0.3\n"
    skeleton, numbers = _split_numbers(text)
    np.testing.assert_allclose(numbers, [2, 1.5, 0, 0, -3.25e-2, 0, 0.1, 0.2, 0.3])
    changed_skeleton, changed = _split_numbers(text.replace("0.2", "0.2000001"))
    assert changed_skeleton == skeleton
    assert not np.allclose(changed, numbers, rtol=1e-9, atol=1e-12)
    assert _split_numbers(text.replace("Cu", "Ag"))[0] != skeleton


# --- Dataset object -------------------------------------------------------------------------


def test_dataset_properties_and_subset(emt):
    sizes = emt.frame_sizes
    assert emt.structure_index.shape == (emt.n_atoms,)
    assert np.array_equal(np.bincount(emt.structure_index), sizes)
    assert np.array_equal(emt.atom_numbers[: sizes[0]], emt.frames[0].numbers)

    idx = [5, 2, len(emt.frames) - 1]
    sub = emt.subset(idx)
    assert [a is emt.frames[i] for i, a in zip(idx, sub.frames, strict=True)] == [True] * 3
    assert list(sub.groups) == [emt.groups[i] for i in idx]
    assert sub.names == [emt.names[i] for i in idx]
    expected = np.concatenate([emt.frames[i].arrays["true_local_energy"] for i in idx])
    np.testing.assert_array_equal(sub.true_local_energies, expected)

    mask = emt.groups == "surface"
    by_mask = emt.subset(mask)
    assert len(by_mask.frames) == mask.sum() and set(by_mask.groups) == {"surface"}
    assert by_mask.n_atoms == sizes[mask].sum()
    with pytest.raises(InputError):
        emt.subset([len(emt.frames)])


# --- user files and validation --------------------------------------------------------------


def _frame(n=4, energy=1.0, **info) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)[:n]
    atoms.info.update(info)
    if energy is not None:
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.zeros((n, 3)))
    return atoms


def _one_line_error(func, *args, match, **kwargs) -> str:
    with pytest.raises(InputError, match=match) as info:
        func(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_user_extxyz_groups_names_and_missing_energies(tmp_path):
    path = tmp_path / "mine.extxyz"
    frames = [_frame(energy=-3.0, config_type="bulk"), _frame(energy=None, name="x"),
              _frame(energy=-1.5, group="surf", config_type="ignored")]
    ase.io.write(path, frames, format="extxyz")
    ds = datasets.load(path)
    assert list(ds.groups) == ["bulk", "ungrouped", "surf"]
    assert ds.names == ["mine.extxyz#0", "x", "mine.extxyz#2"]
    np.testing.assert_array_equal(ds.has_energy, [True, False, True])
    assert ds.energies[0] == -3.0 and np.isnan(ds.energies[1])
    assert ds.true_local_energies is None
    assert list(ds.splits) == ["", "", ""]
    # An explicit key; a missing one is named with the keys that exist.
    assert list(datasets.load(path, group_key="config_type").groups)[2] == "ignored"
    msg = _one_line_error(datasets.load, path, group_key="kind", match="kind")
    assert "config_type" in msg


def test_energy_in_info_under_other_key(tmp_path):
    path = tmp_path / "ref.xyz"
    path.write_text("2\nLattice=\"5 0 0 0 5 0 0 0 5\" Properties=species:S:1:pos:R:3 "
                    "REF_energy=-7.25 pbc=\"T T T\"\nCu 0 0 0\nCu 1.8 1.8 0\n")
    ds = datasets.load(path)
    assert ds.energies.tolist() == [-7.25]
    assert ds.frames[0].get_potential_energy() == -7.25


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("2\nProperties=species:S:1:pos:R:3\nCu 0 0 0\nCu nan 1 1\n", r"frame 0: positions"),
        ("1\nProperties=species:S:1:pos:R:3 energy=1\nCu 0 0 0\n"
         "1\nProperties=species:S:1:pos:R:3 energy=inf\nCu 0 0 0\n", r"frame 1: energy"),
        ("1\nProperties=species:S:1:pos:R:3\nX 0 0 0\n", r"frame 0: unknown element"),
        ("1\nLattice=\"0 0 0 0 0 0 0 0 0\" Properties=species:S:1:pos:R:3 pbc=\"T T T\"\n"
         "Cu 0 0 0\n", r"frame 0: periodic cell is degenerate"),
        ("this is not\nan xyz file\n", r"cannot read structures"),
        ("", r"empty"),
    ],
)
def test_invalid_user_files(tmp_path, text, match):
    path = tmp_path / "bad.xyz"
    path.write_text(text)
    msg = _one_line_error(datasets.load, path, match=match)
    assert "bad.xyz" in msg


def test_validate_frames_direct():
    ok = [_frame(), _frame(energy=None)]
    datasets.validate_frames(ok, source="s", require_energy=False, max_atoms=100)
    _one_line_error(datasets.validate_frames, ok, source="s", require_energy=True,
                    max_atoms=100, match=r"s: frame 1: missing total energy")
    _one_line_error(datasets.validate_frames, [_frame(), Atoms()], source="s",
                    require_energy=False, max_atoms=100, match=r"frame 1: has zero atoms")
    _one_line_error(datasets.validate_frames, ok, source="s", require_energy=False,
                    max_atoms=7, match=r"more than 7 atoms")
    _one_line_error(datasets.validate_frames, [], source="s", require_energy=False,
                    max_atoms=7, match=r"no structures")
    bad_forces = _frame()
    bad_forces.calc.results["forces"][1, 2] = np.nan
    _one_line_error(datasets.validate_frames, [bad_forces], source="s", require_energy=False,
                    max_atoms=100, match=r"frame 0: forces")
    bad_local = _frame()
    bad_local.arrays["true_local_energy"] = np.array([0.0, np.inf, 0.0, 0.0])
    _one_line_error(datasets.validate_frames, [bad_local], source="s", require_energy=False,
                    max_atoms=100, match=r"true_local_energy")


def test_max_atoms_on_load():
    _one_line_error(datasets.load, "emt-alloys", max_atoms=1000, match="more than 1000 atoms")


class _Boom:
    """Unpickling this would create a sentinel file."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (self.sentinel,))


@pytest.mark.parametrize("suffix", [".xyz", ".extxyz", ".json", ".traj"])
def test_pickle_renamed_is_never_loaded(tmp_path, suffix):
    sentinel = tmp_path / "unpickled"
    path = tmp_path / f"evil{suffix}"
    path.write_bytes(pickle.dumps(_Boom(sentinel), protocol=4))
    _one_line_error(datasets.load, path, match=r"evil.*pickle")
    assert not sentinel.exists()


def test_binary_file_renamed_xyz(tmp_path):
    path = tmp_path / "blob.xyz"
    path.write_bytes(bytes(range(256)) * 4)
    _one_line_error(datasets.load, path, match=r"blob.xyz: binary")


def test_unknown_name_or_missing_path(tmp_path):
    msg = _one_line_error(datasets.load, "no-such-set", match="neither a dataset name")
    assert "emt-alloys" in msg
    _one_line_error(datasets.load, "mlearn-Si", match=r"not downloaded.*lprviz datasets fetch")
    _one_line_error(datasets.load, tmp_path, match="directory")


# --- mlearn JSON ----------------------------------------------------------------------------


def _mlearn_entries(rng: np.random.Generator, n: int, tag: str) -> list[dict]:
    """Entries in the upstream format (pymatgen Structure dicts) with made-up values."""
    entries = []
    for i in range(n):
        k = int(rng.integers(2, 5))
        cell = np.diag(rng.uniform(4.0, 6.0, size=3))
        xyz = rng.uniform(0.0, 4.0, size=(k, 3))
        entries.append({
            "structure": {
                "@module": "pymatgen.core.structure", "@class": "Structure", "charge": None,
                "lattice": {"matrix": cell.tolist()},
                "sites": [{"species": [{"element": "Si", "occu": 1}], "xyz": p.tolist(),
                           "label": "Si"} for p in xyz],
            },
            "group": ["Elastic", "Surface"][i % 2],
            "outputs": {"energy": float(-5.0 * k + rng.normal()),
                        "forces": rng.normal(size=(k, 3)).tolist(), "virial_stress": [0.0] * 6},
            "num_atoms": k, "element": "Si", "tag": tag, "description": f"entry {i}",
        })
    return entries


def test_read_mlearn_json_small(tmp_path):
    entries = _mlearn_entries(np.random.default_rng(0), 5, "train")
    path = tmp_path / "small.json"
    path.write_text(json.dumps(entries))
    ds = datasets.load(path)
    assert len(ds.frames) == 5
    for atoms, entry in zip(ds.frames, entries, strict=True):
        np.testing.assert_array_equal(atoms.positions,
                                      [s["xyz"] for s in entry["structure"]["sites"]])
        np.testing.assert_array_equal(atoms.cell[:], entry["structure"]["lattice"]["matrix"])
        assert atoms.pbc.all() and set(atoms.get_chemical_symbols()) == {"Si"}
        np.testing.assert_array_equal(atoms.get_forces(), entry["outputs"]["forces"])
    np.testing.assert_array_equal(ds.energies, [e["outputs"]["energy"] for e in entries])
    assert list(ds.groups) == [e["group"] for e in entries]
    assert list(ds.splits) == ["train"] * 5

    bad = tmp_path / "trunc.json"
    bad.write_text(json.dumps(entries)[:-40])
    _one_line_error(datasets.load, bad, match=r"trunc.json: invalid JSON")
    entries[2]["structure"]["sites"][0]["species"][0]["element"] = "Qq"
    path.write_text(json.dumps(entries))
    _one_line_error(datasets.load, path, match=r"small.json: entry 2: unknown element 'Qq'")
    path.write_text(json.dumps([{"group": "x"}]))
    _one_line_error(datasets.load, path, match=r"entry 0: missing 'structure'")


def test_read_real_mlearn_si_training():
    path = mlearn_dir() / "Si_training.json"
    ds = datasets.load(path)
    # Reference numbers from the data's README (independent of this reader).
    assert len(ds.frames) == 214 and ds.n_atoms == 13_233
    assert Counter(ds.groups.tolist()) == {"Elastic": 55, "AIMD-NVT": 90, "Surface": 12,
                                           "Vacancy": 57}
    raw = json.loads(path.read_text())
    np.testing.assert_array_equal(ds.energies, [e["outputs"]["energy"] for e in raw])
    assert ds.species == (14,)
    np.testing.assert_allclose(ds.frames[7].get_forces(), raw[7]["outputs"]["forces"])


# --- verified download ------------------------------------------------------------------------


class _Server:
    """A local HTTP server: path -> (body, mode) with mode "ok" or "truncated"."""

    def __init__(self):
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                server.requests.append(self.path)
                if self.path not in server.routes:
                    self.send_error(404)
                    return
                body, mode = server.routes[self.path]
                self.send_response(200)
                extra = 500 if mode == "truncated" else 0
                self.send_header("Content-Length", str(len(body) + extra))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    with _Server() as s:
        yield s


def _serve_small_mlearn(server: _Server) -> dict[str, str]:
    rng = np.random.default_rng(1)
    checksums = {}
    for split, n in (("training", 6), ("test", 3)):
        body = json.dumps(_mlearn_entries(rng, n, "train" if split == "training" else "test"))
        rel = f"data/Si/{split}.json"
        server.routes[f"/mirror/{rel}"] = (body.encode(), "ok")
        checksums[rel] = hashlib.sha256(body.encode()).hexdigest()
    return checksums


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_end_to_end_and_cache(server, tmp_path):
    checksums = _serve_small_mlearn(server)
    paths = datasets.fetch("mlearn-Si", base_url=server.url, checksums=checksums)
    assert [p.name for p in paths] == ["training.json", "test.json"]
    assert all(p.parent == tmp_path / "cache" / "mlearn-Si" for p in paths)
    assert len(server.requests) == 2
    ds = datasets.load("mlearn-Si")
    assert len(ds.frames) == 9
    assert ds.splits.tolist() == ["train"] * 6 + ["test"] * 3
    assert "Zuo" in ds.provenance and "BSD-3" in ds.licence

    # Already verified: not downloaded again.
    datasets.fetch("mlearn-Si", base_url=server.url, checksums=checksums)
    assert len(server.requests) == 2
    # A corrupted cached file is replaced.
    paths[1].write_text("[]")
    datasets.fetch("mlearn-Si", base_url=server.url, checksums=checksums)
    assert server.requests[-1] == "/mirror/data/Si/test.json" and len(server.requests) == 3
    assert hashlib.sha256(paths[1].read_bytes()).hexdigest() == checksums["data/Si/test.json"]


def test_fetch_tampered_file_leaves_nothing(server, tmp_path):
    checksums = _serve_small_mlearn(server)
    body, _ = server.routes["/mirror/data/Si/test.json"]
    server.routes["/mirror/data/Si/test.json"] = (body.replace(b"Elastic", b"Elastik"), "ok")
    dest = tmp_path / "dest"
    _one_line_error(datasets.fetch, "mlearn-Si", base_url=server.url, dest=dest,
                    checksums=checksums, match=r"checksum mismatch.*test.json")
    assert _leftovers(dest) == ["training.json"]  # the good file stays, nothing half-written


def test_fetch_404_and_truncated(server, tmp_path):
    checksums = _serve_small_mlearn(server)
    del server.routes["/mirror/data/Si/training.json"]
    dest = tmp_path / "d404"
    _one_line_error(datasets.fetch, "mlearn-Si", base_url=server.url, dest=dest,
                    checksums=checksums, match=r"HTTP 404")
    assert _leftovers(dest) == []

    checksums = _serve_small_mlearn(server)
    body, _ = server.routes["/mirror/data/Si/training.json"]
    server.routes["/mirror/data/Si/training.json"] = (body, "truncated")
    dest = tmp_path / "dtrunc"
    _one_line_error(datasets.fetch, "mlearn-Si", base_url=server.url, dest=dest,
                    checksums=checksums, match=r"truncated")
    assert _leftovers(dest) == []


def test_fetch_pinned_checksums_reject_other_content(server):
    """Without an override the pinned upstream checksums apply."""
    _serve_small_mlearn(server)
    _one_line_error(datasets.fetch, "mlearn-Si", base_url=server.url, match="checksum mismatch")
    assert _leftovers(datasets.cache_dir() / "mlearn-Si") == []


def test_download_larger_than_expected_is_cut_off(server, tmp_path):
    body = b"x" * 300_000
    server.routes["/mirror/big.json"] = (body, "ok")
    target = tmp_path / "dl" / "big.json"
    _one_line_error(datasets.download._download, server.url + "big.json", target,
                    hashlib.sha256(body).hexdigest(), timeout=10, max_bytes=100_000,
                    match="larger than the expected 100000 bytes")
    assert _leftovers(tmp_path / "dl") == []


def test_fetch_refuses_plain_http_and_unknown_names():
    _one_line_error(datasets.fetch, "mlearn-Si", base_url="http://example.com/x/",
                    match="not allowed")
    _one_line_error(datasets.fetch, "mlearn-Si", base_url="file:///etc/", match="not allowed")
    _one_line_error(datasets.fetch, "mlearn-Xx", match="unknown fetchable dataset 'mlearn-Xx'")


# --- import and CLI ---------------------------------------------------------------------------


def test_import_user_file_then_load_by_name(tmp_path):
    path = tmp_path / "My Set.extxyz"
    ase.io.write(path, [_frame(group="a"), _frame(group="b")], format="extxyz")
    info = datasets.import_file(path, name="my-set")
    assert info.kind == "imported" and info.name == "my-set"
    assert any(r.name == "my-set" for r in datasets.list_available())
    assert list(datasets.load("my-set").groups) == ["a", "b"]
    _one_line_error(datasets.import_file, path, name="emt-alloys", match="taken")
    _one_line_error(datasets.import_file, path, name="../x", match="invalid")
    bad = tmp_path / "bad.xyz"
    bad.write_text("1\nProperties=species:S:1:pos:R:3\nCu 0 inf 0\n")
    _one_line_error(datasets.import_file, bad, match=r"bad.xyz: frame 0: positions")
    assert not (datasets.cache_dir() / "imported" / "bad.xyz").exists()


def test_import_compressed_file_is_named_without_its_suffixes(tmp_path):
    """``frames.extxyz.gz`` imports as ``frames`` (not ``frames.extxyz``) and is stored with
    both suffixes, also under a ``name`` of the user's (so the reader knows the format); a
    later import of that name in another format replaces it."""
    import gzip

    plain = tmp_path / "frames.extxyz"
    ase.io.write(plain, [_frame(group="a"), _frame(group="b")], format="extxyz")
    packed = tmp_path / "frames.extxyz.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    folder = datasets.cache_dir() / "imported"
    for name, kwargs in (("frames", {}), ("mine", {"name": "mine"})):
        info = datasets.import_file(packed, **kwargs)
        assert info.name == name and info.path == folder / f"{name}.extxyz.gz"
        assert list(datasets.load(name).groups) == ["a", "b"]
    assert datasets.import_file(plain).path == folder / "frames.extxyz"
    assert sorted(p.name for p in folder.iterdir()) == ["frames.extxyz", "mine.extxyz.gz"]
    assert [r.name for r in datasets.list_available() if r.kind == "imported"] == [
        "frames", "mine"]
    # only a format's suffix goes with the compression's: "v1.2.gz" is "v1.2"
    dotted = tmp_path / "v1.2.gz"
    dotted.write_bytes(packed.read_bytes())
    assert datasets.import_file(dotted).name == "v1.2"
    assert list(datasets.load("v1.2").groups) == ["a", "b"]
    _one_line_error(datasets.import_file, dotted, name="v1.xyz", match="format's suffix")
    # an older cache may hold x.extxyz and x.extxyz.gz (then named x and x.extxyz): both stay
    (folder / "old.extxyz").write_bytes(plain.read_bytes())
    (folder / "old.extxyz.gz").write_bytes(packed.read_bytes())
    names = {r.name: r.path.name for r in datasets.list_available() if r.kind == "imported"}
    assert names["old"] == "old.extxyz" and names["old.extxyz"] == "old.extxyz.gz"


def test_import_upstream_file_fills_fetch_cache(capsys):
    assert main(["datasets", "import", str(mlearn_dir() / "Si_test.json")]) == 0
    row = {r.name: r for r in datasets.list_available()}["mlearn-Si"]
    assert not row.cached  # training.json still missing, and the command says so
    out = capsys.readouterr().out
    assert "stored as a file of 'mlearn-Si'" in out and "once training.json is there" in out
    # with --name, the same file is a dataset of its own at once
    assert main(["datasets", "import", str(mlearn_dir() / "Si_test.json"),
                 "--name", "si-test"]) == 0
    assert "imported as 'si-test' (imported)" in capsys.readouterr().out
    assert len(datasets.load("si-test").frames) == 25
    datasets.import_file(mlearn_dir() / "Si_training.json")
    row = {r.name: r for r in datasets.list_available()}["mlearn-Si"]
    assert row.cached
    ds = datasets.load("mlearn-Si")
    assert Counter(ds.splits.tolist()) == {"train": 214, "test": 25}


def test_cli_list(capsys):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("emt-alloys", "teaching-stoichiometry", "mlearn-Si", "mlearn-Li"):
        assert name in out
    line = next(row for row in out.splitlines() if row.startswith("mlearn-Si"))
    assert "fetchable" in line and " no " in line and "BSD-3" in line


def test_cli_fetch_real_files_from_local_mirror(server, capsys, tmp_path):
    """The pinned checksums accept the upstream files served by a mirror."""
    for split in ("training", "test"):
        body = (mlearn_dir() / f"Si_{split}.json").read_bytes()
        server.routes[f"/mirror/data/Si/{split}.json"] = (body, "ok")
    assert main(["datasets", "fetch", "mlearn-Si", "--base-url", server.url]) == 0
    assert "sha256 verified" in capsys.readouterr().out
    assert main(["datasets", "list"]) == 0
    line = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("mlearn-Si"))
    assert " yes " in line


def test_cli_errors_exit_2_one_line(server, capsys, tmp_path):
    server.routes["/mirror/data/Si/training.json"] = (b"[]", "ok")
    assert main(["datasets", "fetch", "mlearn-Si", "--base-url", server.url,
                 "--dest", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checksum mismatch" in err and "Traceback" not in err
    assert _leftovers(tmp_path / "d") == []

    assert main(["datasets", "import", str(tmp_path / "missing.xyz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.xyz" in err

    path = tmp_path / "ok.xyz"
    ase.io.write(path, [_frame()], format="extxyz")
    assert main(["datasets", "import", str(path), "--name", "okset"]) == 0
    out, err = capsys.readouterr()
    assert "okset" in out and err == ""
    assert main(["datasets", "import", str(path), "--name", "okset"]) == 0  # again: said
    assert capsys.readouterr().err == ("lprviz: note: 'okset' replaces the earlier import of "
                                       "that name\n")


def test_bulk_only_training_gives_lower_lpr_on_surfaces_and_defects(emt):
    """The default set's purpose: a bulk-only training set leaves non-bulk atoms loose."""
    from lprviz.features import compute_soap
    from lprviz.rigidity import RigiditySolver

    desc = compute_soap(emt.frames, cache=False)
    atom_groups = emt.groups[emt.structure_index]
    bulk = np.isin(atom_groups, ["bulk-pure", "bulk-alloy"])
    solver = RigiditySolver.from_atoms(desc.values[bulk], emt.structure_index[bulk])
    for alpha in (1e-4, 1e-2):
        lpr = solver.lpr(desc.values, alpha)
        bulk_median = np.median(lpr[bulk])
        for group in ("surface", "cluster", "vacancy", "interstitial", "antisite"):
            assert np.median(lpr[atom_groups == group]) < 0.7 * bulk_median, (group, alpha)


def test_compressed_extxyz_loads_like_the_plain_file(tmp_path):
    import gzip

    plain = datasets.shipped_dir() / "teaching-stoichiometry.extxyz"
    packed = tmp_path / "teach.extxyz.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    a, b = datasets.load(plain), datasets.load(packed)
    assert len(a.frames) == len(b.frames)
    np.testing.assert_array_equal(a.energies, b.energies)
    np.testing.assert_array_equal(a.true_local_energies, b.true_local_energies)
    # a tight atom limit bounds the expansion and names the user's file
    with pytest.raises(InputError, match=r"teach\.extxyz\.gz: .*max_atoms"):
        datasets.load(packed, max_atoms=100)


# ---------------------------------------------------------------- derived arrays, once
def _counting_dataset(n_frames=30):
    """A dataset whose Atoms count every len() call."""

    class CountingAtoms(Atoms):
        calls = 0

        def __len__(self):
            CountingAtoms.calls += 1
            return super().__len__()

    frames = []
    for i in range(n_frames):
        a = CountingAtoms(bulk("Cu", cubic=True).repeat((1, 1, 1 + i % 3)))
        frames.append(a)
    n = len(frames)
    groups = np.array(["a", "b", "c"])[np.arange(n) % 3]
    ds = datasets.Dataset("count", frames, np.zeros(n), np.ones(n, bool), groups,
                 [f"f{i}" for i in range(n)], np.array([""] * n))
    return ds, CountingAtoms


def test_per_atom_arrays_are_computed_once():
    ds, counting = _counting_dataset()
    counting.calls = 0
    sizes = ds.frame_sizes
    assert counting.calls == len(ds.frames)
    for i in range(len(ds.frames)):  # the app's per-frame label loop: no recount
        assert ds.frame_sizes[i] == sizes[i]
        _ = ds.structure_index, ds.n_atoms, ds.atom_groups, ds.frame_starts
    assert counting.calls == len(ds.frames)
    np.testing.assert_array_equal(ds.structure_index, np.repeat(np.arange(30), sizes))
    np.testing.assert_array_equal(ds.atom_groups, ds.groups[ds.structure_index])
    np.testing.assert_array_equal(ds.frame_starts, np.concatenate([[0], np.cumsum(sizes)]))
    for i in (0, 7, len(ds.frames) - 1):
        np.testing.assert_array_equal(np.arange(ds.n_atoms)[ds.atoms_of(i)],
                                      np.flatnonzero(ds.structure_index == i))
    assert not ds.frame_sizes.flags.writeable
    # a new frames list (or subset) is a new dataset: nothing stale
    ds.frames = ds.frames[:5]
    assert len(ds.frame_sizes) == 5 and ds.n_atoms == int(sizes[:5].sum())
    sub = ds.subset([3, 1])
    np.testing.assert_array_equal(sub.frame_sizes, sizes[[3, 1]])
    ds.groups = np.array(["z"] * 5)
    assert set(ds.atom_groups) == {"z"}


def test_per_group_median_equals_pandas():
    import pandas as pd

    rng = np.random.default_rng(0)
    groups = rng.choice(["bulk", "surface", "cluster"], size=1001)
    values = rng.lognormal(size=(4, 1001))
    labels, med = datasets.per_group_median(values, groups)
    assert med.shape == (4, 3)
    for row, m in zip(values, med, strict=True):
        ref = pd.Series(row).groupby(groups).median()
        np.testing.assert_array_equal(labels, ref.index.to_numpy())
        np.testing.assert_allclose(m, ref.to_numpy(), rtol=1e-15)
    _, med1 = datasets.per_group_median(values[0], groups)
    np.testing.assert_allclose(med1, med[0])
    # even-sized groups average the two middle values; integer labels (frames) work too
    values2, frames2 = np.array([4.0, 1.0, 3.0, 2.0, 9.0]), np.array([0, 0, 0, 0, 1])
    _, m2 = datasets.per_group_median(values2, frames2)
    np.testing.assert_allclose(m2, [2.5, 9.0])
    with pytest.raises(InputError):
        datasets.per_group_median(values, groups[:5])


def test_label_names_a_file_everywhere_but_never_becomes_a_path(tmp_path):
    """An upload is stored under a content hash; the user's name is what people see."""
    stored = tmp_path / "2a3ed45a7ad65f06.extxyz"
    frames = [_frame(energy=-3.0), _frame(energy=-2.0, name="given")]
    ase.io.write(stored, frames, format="extxyz")
    ds = datasets.load(stored, label="my run.extxyz")
    assert ds.name == "my run.extxyz"
    assert ds.names == ["my run.extxyz#0", "given"]  # the file's own names are kept
    assert stored.name not in ds.provenance and "my run.extxyz" in ds.provenance
    # Errors name the label too, the stored file nowhere.
    stored.write_text("2\nProperties=species:S:1:pos:R:3\nCu 0 0 0\nCu nan 1 1\n")
    msg = _one_line_error(datasets.load, stored, label="my run.extxyz", match="frame 0")
    assert msg.startswith("my run.extxyz") and stored.name not in msg
    broken = tmp_path / "0123456789abcdef.json"
    broken.write_text("[{")
    msg = _one_line_error(datasets.load, broken, label="mine.json", match="invalid JSON")
    assert msg.startswith("mine.json") and broken.name not in msg
    missing = _one_line_error(datasets.load, tmp_path / "gone.xyz", label="mine.xyz",
                              match="existing file")
    assert "mine.xyz" in missing and "gone.xyz" not in missing


def test_compressed_file_structures_are_named_after_the_file(tmp_path):
    import gzip

    plain = tmp_path / "plain.extxyz"
    ase.io.write(plain, [_frame(energy=-1.0), _frame(energy=-2.0)], format="extxyz")
    path = tmp_path / "frames.extxyz.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    assert datasets.load(path).names == ["frames.extxyz.gz#0", "frames.extxyz.gz#1"]


def test_combine_puts_training_frames_first_with_splits(tmp_path):
    a = datasets.load("teaching-stoichiometry").subset(range(5))
    b = datasets.load("emt-alloys").subset([3, 1])
    both = datasets.combine(a, b)
    assert len(both.frames) == 7 and both.name == f"{a.name}+{b.name}"
    assert list(both.splits) == ["train"] * 5 + ["test"] * 2
    assert both.names == a.names + b.names
    assert list(both.groups) == list(a.groups) + list(b.groups)
    np.testing.assert_array_equal(both.energies, np.concatenate([a.energies, b.energies]))
    assert both.true_local_energies.shape == (both.n_atoms,)
    np.testing.assert_array_equal(both.true_local_energies[a.n_atoms:], b.true_local_energies)
    no_truth = dataclasses.replace(b, true_local_energies=None)
    assert datasets.combine(a, no_truth).true_local_energies is None
    empty = a.subset([])
    msg = _one_line_error(datasets.combine, a, empty, match="no structures")
    assert msg.startswith(a.name)


def _mutated_frames(rng, kind: str, n_frames: int = 12):
    """Valid periodic Cu frames with energies and forces, one of them broken by ``kind``."""
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for _ in range(n_frames):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1, 1, int(rng.integers(1, 3))))
        atoms.rattle(0.01, seed=int(rng.integers(1 << 30)))
        atoms.calc = SinglePointCalculator(atoms, energy=-3.0 * len(atoms),
                                           forces=rng.normal(0, 0.1, (len(atoms), 3)))
        atoms.arrays["true_local_energy"] = np.full(len(atoms), -3.0)
        frames.append(atoms)
    k = int(rng.integers(n_frames))
    a = frames[k]
    results = a.calc.results
    if kind == "element":
        a.numbers[0] = 0
    elif kind == "nan-position":
        a.positions[1, 2] = np.nan
    elif kind == "far-position":
        a.positions[0, 0] = 1e9
    elif kind == "nan-cell":
        a.cell[2, 2] = np.nan
    elif kind == "degenerate-cell":
        a.cell[2] = a.cell[1]
    elif kind == "nan-energy":
        results["energy"] = np.nan
    elif kind == "huge-energy":
        results["energy"] = 1e9
    elif kind == "missing-energy":
        del results["energy"]
    elif kind == "nan-force":
        results["forces"][0, 1] = np.inf
    elif kind == "force-shape":
        results["forces"] = results["forces"].reshape(-1)
    elif kind == "long-double-forces":  # finite as a long double, inf as float64
        results["forces"] = np.full((len(a), 3), np.longdouble("1e4000"))
    elif kind == "overflow-energy":  # an integer beyond float
        results["energy"] = 10**400
    elif kind == "text-forces":
        results["forces"] = np.full((len(a), 3), "x", dtype=object)
    elif kind == "nan-local":
        a.arrays["true_local_energy"][0] = np.nan
    elif kind == "empty":
        frames[k] = a[:0]
    return frames, k


def _first_error_frame_by_frame(frames, *, require_energy, max_atoms, limits):
    """The per-frame loop ``validate_frames`` ran before its array-wide screen."""
    from lprviz.datasets import readers

    total = 0
    for i, atoms in enumerate(frames):
        total += len(atoms)
        where = f"f: frame {i}"
        try:
            readers._check_values(atoms, where, limits, total=total, max_atoms=max_atoms,
                                  source="f")
            readers._check_results(atoms, where, limits, require_energy=require_energy)
        except InputError as exc:
            return str(exc)
    return None


@pytest.mark.parametrize("kind", ["none", "element", "nan-position", "far-position",
                                  "nan-cell", "degenerate-cell", "nan-energy", "huge-energy",
                                  "missing-energy", "nan-force", "force-shape", "text-forces",
                                  "long-double-forces", "overflow-energy",
                                  "nan-local", "empty"])
def test_validate_screen_reports_what_the_frame_loop_reports(kind):
    """The array-wide screen never clears a frame the per-frame checks refuse: the message
    is the frame-by-frame loop's, for every kind of bad value and position in the file."""
    from lprviz.datasets import readers
    from lprviz.limits import get_limits

    rng = np.random.default_rng(sum(map(ord, kind)))
    for _ in range(4):
        frames, k = _mutated_frames(rng, kind)
        for require_energy in (False, True):
            for max_atoms in (10_000, 50):
                want = _first_error_frame_by_frame(frames, require_energy=require_energy,
                                                   max_atoms=max_atoms, limits=get_limits())
                got = None
                try:
                    readers.validate_frames(frames, source="f", require_energy=require_energy,
                                            max_atoms=max_atoms)
                except InputError as exc:
                    got = str(exc)
                assert got == want, (kind, k, require_energy, max_atoms)
                screened = readers._suspects(frames, get_limits(),
                                             require_energy=require_energy,
                                             max_atoms=max_atoms)
                if kind != "none" and want is not None and "frame" in want:
                    assert screened and screened[0] <= k  # the bad frame is screened
    assert readers._suspects(_mutated_frames(rng, "none")[0], get_limits(),
                             require_energy=True, max_atoms=10_000) == []


def test_files_without_a_suffix_and_clearer_reader_messages(tmp_path):
    """A file without a suffix is extxyz when its first line is an atom count, else ASE
    tells its format (a VASP POSCAR was read as extxyz and refused); an unknown element and
    a JSON of neither format say so."""
    si = bulk("Si", "diamond", 5.43, cubic=True)
    ase.io.write(tmp_path / "POSCAR", si, format="vasp")
    poscar = datasets.load(tmp_path / "POSCAR")
    assert poscar.n_atoms == 8 and poscar.frames[0].get_chemical_formula() == "Si8"
    si.calc = SinglePointCalculator(si, energy=-40.0)
    ase.io.write(tmp_path / "frames", [si, si], format="extxyz")
    assert datasets.load(tmp_path / "frames").has_energy.tolist() == [True, True]
    (tmp_path / "xx.xyz").write_text("1\nProperties=species:S:1:pos:R:3\nXx 0 0 0\n")
    _one_line_error(datasets.load, tmp_path / "xx.xyz",
                    match=r"xx\.xyz: cannot read structures \(unknown element symbol or key 'Xx'\)")
    (tmp_path / "other.json").write_text('{"a": 1}')
    _one_line_error(datasets.load, tmp_path / "other.json",
                    match=r"other\.json: cannot read structures \(expected an mlearn JSON list or "
                          r"an ASE JSON database")
