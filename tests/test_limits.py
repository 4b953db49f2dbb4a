"""Limits on input values and on the work they cause (lprviz.limits, issue 11).

The estimators are checked against geometry computed another way (brute-force distances,
ASE's cell tools) and against the real datasets, which must pass with a wide margin; the
refusals must happen before the expensive call (featomic, the d x d factorisation), which
the tests replace by a tripwire.
"""

from __future__ import annotations

import itertools
import math

import ase
import numpy as np
import pytest
from ase.build import bulk, fcc111, molecule
from test_data_share import si  # noqa: F401 - the real mlearn Si fixture

from lprviz import datasets, features, limits, pipeline
from lprviz.errors import InputError
from lprviz.features import SoapHypers, compute_soap
from lprviz.pipeline import ModelSpec, evaluate, prepare


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LPRVIZ_CACHE_DIR", str(tmp_path / "cache"))
    for field in ("MAX_FEATURES", "MAX_SEARCH_PAIRS", "MAX_ARRAY_BYTES", "MIN_DISTANCE",
                  "MAX_ATOMS"):
        monkeypatch.delenv(f"LPRVIZ_{field}", raising=False)
    features.clear_memory_cache()


def _tripwire(monkeypatch):
    """Make any featomic SOAP computation fail the test."""
    import featomic

    def refuse(*args, **kwargs):
        raise AssertionError("featomic was called")

    monkeypatch.setattr(featomic, "SoapPowerSpectrum", refuse)


# --------------------------------------------------------------------------- configuration


def test_limits_come_from_the_environment(monkeypatch):
    assert limits.get_limits() == limits.Limits()
    monkeypatch.setenv("LPRVIZ_MAX_FEATURES", "6000")
    monkeypatch.setenv("LPRVIZ_MIN_DISTANCE", "0.25")
    got = limits.get_limits()
    assert got.max_features == 6000 and isinstance(got.max_features, int)
    assert got.min_distance == 0.25
    monkeypatch.setenv("LPRVIZ_MAX_FEATURES", "lots")
    with pytest.raises(InputError, match="LPRVIZ_MAX_FEATURES"):
        limits.get_limits()


def test_max_atoms_comes_from_the_environment(tmp_path, monkeypatch, capsys):
    """LPRVIZ_MAX_ATOMS changes the atom limit of every load (the serial CLI's too); an
    explicit ``max_atoms=`` argument still wins."""
    from lprviz.cli import main

    n = datasets.load("emt-alloys").n_atoms
    monkeypatch.setenv("LPRVIZ_MAX_ATOMS", "1000")
    with pytest.raises(InputError) as info:
        datasets.load("emt-alloys")
    msg = str(info.value)
    assert "more than 1000 atoms" in msg and "LPRVIZ_MAX_ATOMS" in msg and "\n" not in msg
    assert datasets.load("emt-alloys", max_atoms=n).n_atoms == n
    code = main(["lpr", "--dataset", "emt-alloys", "--train-groups", "bulk-pure", "-q",
                 "-o", str(tmp_path / "out.extxyz")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "LPRVIZ_MAX_ATOMS" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out.extxyz").exists()

    # raised above the default: a file claiming 250k atoms gets past the count walk (then
    # ASE reports the missing atom lines), where by default the count walk refuses it
    claims = tmp_path / "claims.xyz"
    claims.write_text("250000\nProperties=species:S:1:pos:R:3\nSi 0 0 0\n")
    monkeypatch.delenv("LPRVIZ_MAX_ATOMS")
    with pytest.raises(InputError, match=r"claims\.xyz: frame 0: more than 200000 atoms .*"
                                          r"LPRVIZ_MAX_ATOMS"):
        datasets.load(claims)
    monkeypatch.setenv("LPRVIZ_MAX_ATOMS", "300000")
    with pytest.raises(InputError) as info:
        datasets.load(claims)
    assert "claims.xyz" in str(info.value) and "max_atoms" not in str(info.value)


@pytest.mark.parametrize("value", [math.inf, math.nan, -1.0, 21.0, "5", True, None, 10**400])
def test_check_number_refuses_out_of_range_and_non_numbers(value):
    with pytest.raises(InputError) as info:
        limits.check_number("--cutoff", value, 1.0, 20.0)
    assert str(info.value).startswith("--cutoff: expected a number in [1, 20]")


def test_check_number_integers():
    assert limits.check_number("n", np.int64(5), 1, 10, integer=True) == 5
    assert limits.check_number("n", 5.0, 1, 10, integer=True) == 5
    with pytest.raises(InputError, match="integer"):
        limits.check_number("n", 5.5, 1, 10, integer=True)


# --------------------------------------------------------------------------- geometry


def test_cell_heights_are_volume_over_face_area():
    cell = np.array([[3.0, 0, 0], [1.0, 4.0, 0], [0.5, 0.5, 5.0]])
    heights = limits.cell_heights(cell, (True, True, True))
    volume = abs(np.linalg.det(cell))
    for i in range(3):
        j, k = [x for x in range(3) if x != i]
        assert heights[i] == pytest.approx(volume / np.linalg.norm(np.cross(cell[j], cell[k])))
    # a slab: only the periodic vectors count; a wire: the length of its vector
    slab = limits.cell_heights(cell, (True, True, False))
    assert slab[2] == math.inf
    assert slab[0] == pytest.approx(np.linalg.norm(np.cross(cell[0], cell[1]))
                                    / np.linalg.norm(cell[1]))
    assert limits.cell_heights(cell, (False, True, False))[1] == pytest.approx(np.hypot(1, 4))
    assert limits.cell_heights(np.zeros((3, 3)), (True, True, True)).max() == 0


def _brute_closest(atoms, below):
    """Closest pair by explicit images of the wrapped atoms (small cells only)."""
    atoms = atoms.copy()
    atoms.wrap()
    best = None
    shifts = [np.array(s) for s in itertools.product(*[(-1, 0, 1) if p else (0,)
                                                          for p in atoms.pbc])]
    pos = atoms.positions
    for i, j in itertools.combinations(range(len(atoms)), 2):
        for s in shifts:
            d = np.linalg.norm(pos[j] + s @ atoms.cell.array - pos[i])
            if d < below and (best is None or d < best[2]):
                best = (i, j, d)
    return best


@pytest.mark.parametrize("pbc", [(True, True, True), (True, True, False), (False,) * 3])
def test_closest_pair_matches_brute_force_through_periodic_images(pbc):
    rng = np.random.default_rng(4)
    cell = np.array([[4.0, 0, 0], [1.5, 3.8, 0], [0.7, -0.9, 4.2]])
    for trial in range(20):
        atoms = ase.Atoms("Cu6", cell=cell, pbc=pbc,
                          positions=rng.uniform(-2, 6, (6, 3)))
        got = limits.closest_pair(atoms.positions, atoms.cell.array, atoms.pbc, 1.0)
        want = _brute_closest(atoms, 1.0)
        if want is None:
            assert got is None, trial
        else:
            assert got is not None and got[2] == pytest.approx(want[2]), trial


def test_closest_pair_stays_linear_when_every_atom_coincides():
    """100k atoms at one point: the check reports a pair without listing 5e9 pairs."""
    pos = np.zeros((100_000, 3))
    assert limits.closest_pair(pos, np.eye(3) * 50, (True,) * 3, 0.4)[2] == 0.0


def _real_frames():
    frames = []
    for name in ("emt-alloys", "teaching-stoichiometry"):
        frames += datasets.load(name).frames
    return frames


def test_real_structures_pass_every_geometry_limit_with_margin(si):  # noqa: F811
    """Shipped sets, real DFT Si (bulk, surfaces, vacancies, AIMD), a slab with 40 A of
    vacuum, a molecule without cell and a 100k-atom cell: far inside every limit."""
    frames = _real_frames() + si.frames
    slab = fcc111("Cu", (4, 4, 6), vacuum=20.0, periodic=True)
    big = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((30, 30, 28))  # 100,800 atoms
    frames += [slab, molecule("CH3CH2OH"), big]
    lim = limits.Limits()
    for atoms in frames:
        ready = features._featomic_ready(atoms, 5.0)
        pairs = limits.search_pairs(ready.positions, ready.cell.array, 5.0)
        assert pairs < lim.max_search_pairs / 2, (atoms.get_chemical_formula(), pairs)
        assert limits.cell_heights(atoms.cell.array, atoms.pbc).min() > 4 * lim.min_distance
    assert limits.closest_pair(big.positions, big.cell.array, big.pbc, lim.min_distance) is None
    datasets.validate_frames([slab, molecule("CH3CH2OH"), big], source="realistic")


def test_search_estimate_sees_thin_cells_and_crowding():
    one = ase.Atoms("Cu", cell=[[1, 0, 0], [1e6, 1, 0], [0, 0, 1]], pbc=True)
    assert limits.search_pairs(one.positions, one.cell.array, 5.0) > 1e9
    # the same 4000 atoms, spread over a 1e4 A cell or crowded into one corner of it
    rng = np.random.default_rng(0)
    cell = np.eye(3) * 1e4
    spread = limits.search_pairs(rng.uniform(0, 1e4, (4000, 3)), cell, 5.0)
    crowded = limits.search_pairs(rng.uniform(0, 15, (4000, 3)), cell, 5.0)
    assert crowded > 4 * spread
    assert crowded >= 4000**2 / 2


# --------------------------------------------------------------------------- before featomic


def test_thin_cell_is_refused_before_featomic_is_called(monkeypatch):
    thin = ase.Atoms("Cu", cell=[[1, 0, 0], [1e6, 1, 0], [0, 0, 1]], pbc=True)
    _tripwire(monkeypatch)
    with pytest.raises(InputError) as info:
        compute_soap([thin], SoapHypers(), cache=False, names=["thin.xyz#0"])
    msg = str(info.value)
    assert msg.startswith("thin.xyz#0: ") and "LPRVIZ_MAX_SEARCH_PAIRS" in msg
    assert "\n" not in msg


def test_normal_cell_passes_the_check_and_featomic_runs():
    atoms = bulk("Si", "diamond", a=5.43)
    desc = compute_soap([atoms], SoapHypers(cutoff=5.0, max_radial=2, max_angular=1),
                        cache=False)
    assert desc.values.shape == (2, 18) and np.all(np.isfinite(desc.values))


def test_descriptor_array_limit_is_checked_before_featomic(monkeypatch):
    frames = [bulk("Cu", "fcc", a=3.6, cubic=True)] * 3
    monkeypatch.setenv("LPRVIZ_MAX_ARRAY_BYTES", str(12 * 245 * 8 - 1))
    _tripwire(monkeypatch)
    with pytest.raises(InputError, match="LPRVIZ_MAX_ARRAY_BYTES"):
        compute_soap(frames, SoapHypers(), cache=False)


def test_molecule_is_featurised_in_a_box_with_unchanged_descriptors():
    """A cell-less structure goes to featomic boxed (sub-cell search, O(n) memory); its
    descriptor equals featomic's own all-pairs result."""
    import featomic

    mol = molecule("C6H6")
    mol.positions += 50.0
    hypers = SoapHypers(cutoff=4.0, max_radial=3, max_angular=2)
    ready = features._featomic_ready(mol, hypers.cutoff)
    assert ready.pbc.all() and np.all(ready.cell.lengths() > np.ptp(mol.positions, 0) + 8)
    ours = compute_soap([mol], hypers, cache=False).values
    plain = mol.copy()
    plain.set_cell(np.zeros((3, 3)))
    tensor = featomic.SoapPowerSpectrum(**hypers.featomic_hypers()).compute([plain])
    tensor = tensor.keys_to_samples("center_type").keys_to_properties(
        ["neighbor_1_type", "neighbor_2_type"])
    direct = tensor.block().values
    order = np.argsort(tensor.block().samples.column("atom"))
    np.testing.assert_allclose(np.sort(ours, axis=1), np.sort(direct[order], axis=1),
                               rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- model width


def _dataset(frames):
    energies = np.array([-1.0 * len(a) for a in frames])
    return datasets.Dataset(name="six.xyz", frames=frames, energies=energies,
                            has_energy=np.ones(len(frames), bool),
                            groups=np.array(["g"] * len(frames)),
                            names=[f"six.xyz#{i}" for i in range(len(frames))],
                            splits=np.array([""] * len(frames)))


def test_six_elements_at_the_default_preset_are_refused_before_the_factorisation(monkeypatch):
    """The issue's 12-atom file with 6 elements: d = 5145 + 6 > 4096."""
    rng = np.random.default_rng(2)
    frames = []
    for k in range(2):
        atoms = ase.Atoms("CuAgAuNiPdPt" * 2, cell=np.eye(3) * 7.0, pbc=True,
                          positions=rng.permutation(np.array(list(
                              itertools.product((0.5, 2.5, 4.5), (0.5, 2.5, 4.5), (1.0, 4.0))))
                          )[:12] + 0.1 * k)
        frames.append(atoms)
    ds = _dataset(frames)
    desc = compute_soap(ds.frames, SoapHypers(), species=ds.species, cache=False)
    assert desc.values.shape[1] == 21 * 245

    def tripwire(*args, **kwargs):
        raise AssertionError("the d x d matrix was built")

    monkeypatch.setattr(pipeline.RigiditySolver, "from_atoms", tripwire)
    with pytest.raises(InputError) as info:
        prepare(ds, desc, np.array([True, False]), ModelSpec())
    msg = str(info.value)
    assert "5151 features" in msg and "LPRVIZ_MAX_FEATURES" in msg and "six.xyz" in msg
    # the sparse-kernel model of the same data is narrow: allowed
    monkeypatch.undo()
    fit = prepare(ds, desc, np.array([True, False]), ModelSpec("sparse-kernel", n_sparse=8))
    assert fit.solver.n_features <= 8 + 6


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("field,value", [("cutoff", math.inf), ("cutoff", 0.0),
                                         ("gaussian_width", 1e-300), ("max_radial", 10_000),
                                         ("max_angular", -1), ("max_radial", 2.5),
                                         ("cutoff_smoothing", math.nan)])
def test_soap_hypers_range(field, value):
    with pytest.raises(InputError) as info:
        SoapHypers(**{field: value})
    assert str(info.value).startswith(f"SOAP {field}: expected")


@pytest.mark.parametrize("kw", [{"n_sparse": -5}, {"n_sparse": 0}, {"zeta": 1e9},
                                {"n_sparse": math.nan}])
def test_model_spec_range(kw):
    with pytest.raises(InputError, match=next(iter(kw))):
        ModelSpec(**kw)


def test_scale_and_alpha_are_range_checked():
    frames = [bulk("Cu", "fcc", a=a, cubic=True) for a in (3.5, 3.6, 3.7)]
    ds = _dataset(frames)
    desc = compute_soap(frames, SoapHypers(max_radial=2, max_angular=1), cache=False)
    mask = np.array([True, True, False])
    for scale in (math.nan, -1.0, 1e300):
        with pytest.raises(InputError, match="scale"):
            prepare(ds, desc, mask, scale=scale)
    fit = prepare(ds, desc, mask)
    for alpha in (math.inf, -1e-3, 1e400, math.nan):
        with pytest.raises(InputError, match="alpha"):
            evaluate(fit, alpha)
    assert np.all(np.isfinite(evaluate(fit, 1e6).lpr))


def test_app_coordination_cutoff_never_forms_all_pair_distances(monkeypatch):
    """The app's hover coordination looks at pairs within 5 A, not all n^2 distances (a
    30k-atom upload would have needed 20 GB)."""
    from lprviz.app import caches

    big = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((10, 10, 10))
    monkeypatch.setattr(caches, "dataset", lambda source: _dataset([big]))

    def tripwire(*args, **kwargs):
        raise AssertionError("all pair distances formed")

    monkeypatch.setattr(ase.Atoms, "get_all_distances", tripwire)
    assert caches.coordination_cutoff("big.xyz") == pytest.approx(1.2 * 3.6 / np.sqrt(2))


def test_a_costly_frame_late_in_the_list_stops_featomic_before_any_call(monkeypatch):
    frames = [bulk("Cu", "fcc", a=3.6, cubic=True) for _ in range(5)]
    frames.append(ase.Atoms("Cu4", cell=[[1, 0, 0], [1e4, 1, 0], [0, 0, 1]], pbc=True,
                            positions=[[0, 0, 0], [0.3, 0.3, 0], [0.3, 0, 0.3], [0, 0.3, 0.3]]))
    _tripwire(monkeypatch)
    with pytest.raises(InputError, match="^late.xyz#5: a neighbour search"):
        compute_soap(frames, SoapHypers(), cache=False, chunk_atoms=4,
                     names=[f"late.xyz#{i}" for i in range(6)])


def test_cell_heights_equal_volume_over_face_area_for_random_cells():
    """Heights against cross products: volume / face area (3 periodic vectors), area / length
    of the other vector (2), the length (1); inf where not periodic."""
    rng = np.random.default_rng(12)
    for _ in range(30):
        cell = rng.normal(size=(3, 3)) * rng.uniform(1, 10)
        a = cell
        vol = abs(np.linalg.det(cell))
        full = [vol / np.linalg.norm(np.cross(a[(i + 1) % 3], a[(i + 2) % 3])) for i in range(3)]
        np.testing.assert_allclose(limits.cell_heights(cell, (True,) * 3), full, rtol=1e-10)
        area = np.linalg.norm(np.cross(a[0], a[2]))
        got = limits.cell_heights(cell, (True, False, True))
        np.testing.assert_allclose(got[[0, 2]], [area / np.linalg.norm(a[2]),
                                                 area / np.linalg.norm(a[0])], rtol=1e-10)
        assert got[1] == np.inf
        one = limits.cell_heights(cell, (False, True, False))
        assert one[1] == pytest.approx(np.linalg.norm(a[1])) and np.isinf(one[[0, 2]]).all()
    assert np.isnan(limits.cell_heights(np.full((3, 3), np.nan), (True,) * 3)).all()


def _random_frames(rng, n_frames):
    """Small frames of every periodicity, some with a pair closer than 1 A (also through a
    boundary), some crowded (12 coincident atoms), in random order."""
    cell = np.array([[4.0, 0, 0], [1.5, 3.8, 0], [0.7, -0.9, 4.2]])
    patterns = [(True,) * 3, (True, True, False), (False, True, False), (False,) * 3]
    frames = []
    for k in range(n_frames):
        n = int(rng.integers(1, 9))
        atoms = ase.Atoms(f"Cu{n}", cell=cell * rng.uniform(1.0, 1.6),
                          pbc=patterns[k % len(patterns)],
                          positions=rng.uniform(-3, 8, (n, 3)))
        if k % 7 == 3:
            atoms += ase.Atoms("Cu12", positions=np.full((12, 3), 1.0))
        frames.append(atoms)
    return [frames[i] for i in rng.permutation(len(frames))]


def test_frames_with_close_pairs_agrees_with_closest_pair_frame_by_frame():
    """The screen of all frames at once (one KD-tree, frames apart in a 4th coordinate)
    flags exactly the frames where closest_pair finds a pair, for every periodicity."""
    rng = np.random.default_rng(21)
    frames = _random_frames(rng, 120)
    flags = limits.frames_with_close_pairs(
        np.concatenate([a.positions for a in frames]), [len(a) for a in frames],
        [a.cell.array for a in frames], [a.pbc for a in frames], 1.0)
    want = [limits.closest_pair(a.positions, a.cell.array, a.pbc, 1.0) is not None
            for a in frames]
    assert flags.tolist() == want
    assert 10 < sum(want) < 110  # both kinds are really there
    # and against explicit images, not only the single-frame path
    brute = [_brute_closest(a, 1.0) is not None for a in frames if len(a) <= 8]
    assert flags[[len(a) <= 8 for a in frames]].tolist() == brute


def test_validation_names_the_first_failing_frame_whatever_the_check():
    """Geometry is checked for all frames at once, after the per-frame checks: a close pair
    in frame 2 is still reported before a NaN energy in frame 4, a NaN energy in frame 1
    before the close pair in frame 2, and within one frame the close pair first."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from lprviz.datasets.readers import validate_frames

    def frame(close=False, energy=1.0):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        if close:
            atoms.positions[1] = atoms.positions[0] + [0.1, 0, 0]
        atoms.calc = SinglePointCalculator(atoms, energy=energy)
        return atoms

    frames = [frame(), frame(), frame(close=True), frame(), frame(energy=math.nan)]
    with pytest.raises(InputError, match=r"^f: frame 2: atoms 0 and 1 are 0\.1 A apart"):
        validate_frames(frames, source="f")
    frames[1] = frame(energy=math.nan)
    with pytest.raises(InputError, match="^f: frame 1: energy is not a finite number"):
        validate_frames(frames, source="f")
    with pytest.raises(InputError, match="^f: frame 0: atoms 0 and 1"):
        validate_frames([frame(close=True, energy=math.nan)], source="f")
    thin = frame()
    thin.set_cell(np.diag([3.6, 3.6, 0.05]))
    with pytest.raises(InputError, match="^f: frame 1: periodic cell is only 0.05 A thick"):
        validate_frames([frame(), thin, frame(close=True)], source="f")
    with pytest.raises(InputError, match="^f: frame 0: atoms 0 and 1"):
        validate_frames([frame(close=True), thin], source="f")


def test_search_pairs_many_equals_search_pairs_frame_by_frame():
    """The batched count (one expression for single-sub-cell frames) equals search_pairs
    for small, large, thin, crowded and degenerate cells."""
    rng = np.random.default_rng(8)
    positions, cells = [], []
    for k in range(60):
        size = [4.0, 7.0, 9.9, 12.0, 30.0][k % 5] * rng.uniform(0.9, 1.1)
        cell = np.diag([size, size * rng.uniform(0.8, 1.2), size]) + rng.normal(0, 0.3, (3, 3))
        if k % 11 == 4:
            cell[2] = [0.0, 0.0, 0.02]  # thin: many images
        if k % 13 == 6:
            cell[2] = cell[1]  # degenerate
        n = int(rng.integers(0, 40))
        positions.append(rng.uniform(0, 1, (n, 3)) @ cell)
        cells.append(cell)
    got = limits.search_pairs_many(positions, cells, 5.0)
    want = [limits.search_pairs(p, c, 5.0) for p, c in zip(positions, cells, strict=True)]
    np.testing.assert_array_equal(got, want)
    assert np.isinf(got).any() and (got > 1e6).any() and (got < 1e4).any()
    # with a limit: upper bounds, and the same verdict against the limit for every frame
    want = np.array(want)
    for limit in (1e3, 1e5, 1e7):
        bounded = limits.search_pairs_many(positions, cells, 5.0, limit)
        assert np.all(bounded >= want)
        np.testing.assert_array_equal(bounded <= limit, want <= limit)
        assert np.any((bounded > want) & (bounded <= limit))  # some were only bounded


def test_far_apart_atoms_in_many_frames_are_not_a_close_pair():
    """Frames spanning 1.8e5 A together (bins beyond 2**53 once frames are stacked): a float
    bin key merged neighbouring bins and reported a pair that closest_pair then did not find
    (a TypeError). Exact integer bins: nothing is flagged, and a real pair still is."""
    from lprviz.datasets.readers import validate_frames

    far = ase.Atoms("H2", positions=[[-9e4] * 3, [9e4] * 3])
    line = ase.Atoms("C9", positions=[[0, 0, float(k)] for k in range(9)])
    frames = [far.copy(), far.copy(), far.copy(), line]
    flags = limits.frames_with_close_pairs(
        np.concatenate([a.positions for a in frames]), [len(a) for a in frames],
        [a.cell.array for a in frames], [a.pbc for a in frames], 0.4)
    assert not flags.any()
    validate_frames(frames, source="x.xyz")
    for offset in np.linspace(-2e4, 2e4, 41):  # the line anywhere between the far atoms
        moved = line.copy()
        moved.positions += offset
        assert limits.closest_pair(np.vstack([far.positions, moved.positions]), np.zeros((3, 3)),
                                   (False,) * 3, 0.4) is None
    close = line.copy()
    close.positions[8] = close.positions[7] + [0.1, 0, 0]
    with pytest.raises(InputError, match="frame 3: atoms 7 and 8 are 0.1 A apart"):
        validate_frames([*frames[:3], close], source="x.xyz")


def test_text_in_a_numeric_column_is_one_line_after_earlier_geometry(tmp_path):
    """A text true_local_energy column is a one-line error naming the field, and a close
    pair in the same frame (checked first) is still what is reported."""
    body = ("2\nLattice=\"6 0 0 0 6 0 0 0 6\" Properties=species:S:1:pos:R:3:"
            "true_local_energy:S:1 energy=1.0 pbc=\"T T T\"\n"
            "Cu 0 0 0 a\nCu {x} 0 0 b\n")
    close, apart = tmp_path / "close.xyz", tmp_path / "apart.xyz"
    close.write_text(body.format(x=0.1))
    apart.write_text(body.format(x=2.5))
    with pytest.raises(InputError, match="frame 0: atoms 0 and 1 are 0.1 A apart"):
        datasets.load(str(close))
    with pytest.raises(InputError,
                       match=r"^apart.xyz: frame 0: true_local_energy: expected numbers"):
        datasets.load(str(apart))
