"""Generate the datasets shipped with lprviz (EMT metals with exact per-atom energies).

Run ``python datasets/generate.py [--out DIR] [--only NAME]``. Every random choice comes from
``numpy.random.default_rng`` seeded with a fixed number per dataset, and the extxyz writer
uses fixed float formats, so re-running reproduces the files bit for bit (with the same ASE
and numpy versions; ``tests/test_datasets.py`` checks it).

ASE's EMT calculator (effective-medium theory for Al, Cu, Ag, Au, Ni, Pd, Pt) is a sum of
atomic energies, so ``atoms.get_potential_energies()`` gives the *true local energies* that
sum to the total: the ground truth against which a model's local predictions, and the LPR's
warnings about them, can be checked.

Files (see ``datasets/README.md`` for what each group is for):

- ``emt-alloys.extxyz``: Cu/Ag/Au bulk, alloys, point defects, surfaces and small clusters;
- ``teaching-stoichiometry.extxyz``: Cu/Au structures that all share the CuAu (1:1)
  stoichiometry, against the same kind of structures with varied compositions.

Per frame (extxyz comment line): ``energy`` (eV, written by ASE as a calculator result),
``group``, ``name``, ``composition``. Per atom: ``forces`` (eV/A, calculator result),
``true_local_energy`` (eV, EMT's per-atom energy) and ``coordination`` (neighbours closer
than 1.2 x the mean nearest-neighbour distance of the pair's elements).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import ase
import numpy as np
from ase import Atoms
from ase.build import bulk, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.neighborlist import neighbor_list

SEEDS = {"emt-alloys": 20231002, "teaching-stoichiometry": 20231003}

# Lattice constants (A) at EMT's energy minimum for the fcc elements (scan in 0.005 A steps).
LATTICE = {"Cu": 3.59, "Ag": 4.065, "Au": 4.055}
ELEMENTS = ("Cu", "Ag", "Au")


def _vegard(symbols: list[str]) -> float:
    """Lattice constant of a random alloy by Vegard's law (composition-weighted mean)."""
    return float(np.mean([LATTICE[s] for s in symbols]))


def _random_symbols(rng: np.random.Generator, n: int, elements: tuple[str, ...]) -> list[str]:
    """``n`` symbols with a random composition over ``elements`` (each present at least once)."""
    fractions = rng.dirichlet(np.ones(len(elements)))
    counts = np.maximum(1, np.floor(fractions * n).astype(int))
    while counts.sum() > n:
        counts[np.argmax(counts)] -= 1
    while counts.sum() < n:
        counts[rng.integers(len(elements))] += 1
    symbols = [el for el, c in zip(elements, counts, strict=True) for _ in range(c)]
    return [symbols[i] for i in rng.permutation(n)]


def _alloy_elements(rng: np.random.Generator) -> tuple[str, ...]:
    """Two or three of the EMT elements, in a fixed order."""
    k = int(rng.integers(2, 4))
    picked = sorted(rng.choice(len(ELEMENTS), size=k, replace=False))
    return tuple(ELEMENTS[i] for i in picked)


def _rattle(atoms: Atoms, rng: np.random.Generator, stdev: float) -> None:
    atoms.positions += rng.normal(0.0, stdev, size=atoms.positions.shape)


def _fcc_cell(symbols: list[str], a: float) -> Atoms:
    """2x2x2 conventional fcc cell (32 atoms) with the given symbols."""
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 2, 2))
    atoms.set_chemical_symbols(symbols)
    return atoms


def _coordination(atoms: Atoms) -> np.ndarray:
    """Neighbour count within 1.2 x the mean nearest-neighbour distance of each pair."""
    nn = {el: LATTICE[el] / np.sqrt(2.0) for el in LATTICE}
    present = sorted(set(atoms.get_chemical_symbols()))
    cutoff = {(a, b): 0.6 * (nn[a] + nn[b]) for a in present for b in present}
    i = neighbor_list("i", atoms, cutoff)
    return np.bincount(i, minlength=len(atoms)).astype(np.int64)


def _label(atoms: Atoms, group: str, name: str) -> Atoms:
    """Attach EMT energy/forces (as calculator results), true local energies and metadata."""
    atoms.calc = EMT()
    energy = float(atoms.get_potential_energy())
    forces = atoms.get_forces().copy()
    local = atoms.get_potential_energies().copy()
    atoms.calc = None
    atoms.arrays["true_local_energy"] = local
    atoms.arrays["coordination"] = _coordination(atoms)
    atoms.info.clear()
    atoms.info["group"] = group
    atoms.info["name"] = name
    atoms.info["composition"] = atoms.get_chemical_formula(mode="metal")
    # ASE writes these as extxyz "energy"/"forces" and reads them back into atoms.calc.
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def emt_alloys(rng: np.random.Generator) -> list[Atoms]:
    """The default dataset: bulk (pure, alloys), point defects, surfaces, clusters."""
    frames: list[Atoms] = []

    # Pure bulk, rattled, at several lattice constants (the "training-like" part).
    for el in ELEMENTS:
        for scale in (0.96, 0.98, 1.00, 1.02, 1.04):
            for k in range(4):
                atoms = _fcc_cell([el] * 32, LATTICE[el] * scale)
                _rattle(atoms, rng, 0.03 + 0.025 * k)
                frames.append(_label(atoms, "bulk-pure", f"bulk-{el}-a{scale:.2f}-{k}"))

    # Random substitutional alloys of 2-3 elements with varied compositions.
    for k in range(40):
        symbols = _random_symbols(rng, 32, _alloy_elements(rng))
        atoms = _fcc_cell(symbols, _vegard(symbols) * rng.uniform(0.98, 1.02))
        _rattle(atoms, rng, rng.uniform(0.03, 0.1))
        frames.append(_label(atoms, "bulk-alloy", f"alloy-{k:03d}"))

    # Vacancies (one or two removed atoms) in pure metals and alloys.
    for k in range(40):
        pure = k < 25
        symbols = [ELEMENTS[k % 3]] * 32 if pure else _random_symbols(rng, 32, _alloy_elements(rng))
        atoms = _fcc_cell(symbols, _vegard(symbols))
        n_vac = 1 if k % 4 else 2
        del atoms[sorted(rng.choice(32, size=n_vac, replace=False).tolist(), reverse=True)]
        _rattle(atoms, rng, rng.uniform(0.03, 0.08))
        frames.append(_label(atoms, "vacancy", f"vacancy{n_vac}-{k:03d}"))

    # Antisite pairs in ordered L1_2 alloys (A3B): swap one A and one B atom.
    for k in range(15):
        host, solute = rng.choice(ELEMENTS, size=2, replace=False).tolist()
        # The 2x2x2 repeat keeps the 4-atom basis order: i % 4 == 0 are the cube corners (B).
        symbols = [solute if i % 4 == 0 else host for i in range(32)]
        atoms = _fcc_cell(symbols, 0.75 * LATTICE[host] + 0.25 * LATTICE[solute])
        a_site = int(rng.choice([i for i in range(32) if i % 4]))
        b_site = int(rng.choice([i for i in range(32) if i % 4 == 0]))
        atoms.symbols[a_site], atoms.symbols[b_site] = solute, host
        _rattle(atoms, rng, rng.uniform(0.03, 0.08))
        frames.append(_label(atoms, "antisite", f"antisite-{host}3{solute}-{k:03d}"))

    # Octahedral interstitials; the six neighbours are pushed out by 0.25 A (no relaxation).
    for k in range(15):
        pure = k < 9
        symbols = [ELEMENTS[k % 3]] * 32 if pure else _random_symbols(rng, 32, _alloy_elements(rng))
        a = _vegard(symbols)
        atoms = _fcc_cell(symbols, a)
        site = np.array([0.5, 0.5, 0.5]) * a  # octahedral hole of the conventional cell
        extra = str(rng.choice(ELEMENTS))
        vec = atoms.positions - site
        d = np.linalg.norm(vec, axis=1)
        near = d < 0.6 * a
        atoms.positions[near] += 0.25 * vec[near] / d[near, None]
        atoms += Atoms(extra, positions=[site])
        _rattle(atoms, rng, rng.uniform(0.03, 0.06))
        frames.append(_label(atoms, "interstitial", f"interstitial-{extra}-{k:03d}"))

    # Slabs: fcc(111) and fcc(100), 4 layers, pure and alloy; environments bulk lacks.
    for k in range(50):
        builder: Callable[..., Atoms] = fcc111 if k % 2 == 0 else fcc100
        elements = (ELEMENTS[k % 3],) if k < 30 else _alloy_elements(rng)
        symbols = [elements[0]] * 36 if len(elements) == 1 else _random_symbols(rng, 36, elements)
        a = _vegard(symbols)
        atoms = builder("Cu", size=(3, 3, 4), a=a, vacuum=6.0)
        atoms.set_chemical_symbols(symbols)
        _rattle(atoms, rng, rng.uniform(0.03, 0.08))
        facet = "111" if k % 2 == 0 else "100"
        frames.append(_label(atoms, "surface", f"surface{facet}-{k:03d}"))

    # Small clusters (3-13 atoms): compact fcc fragments, free in space.
    for k in range(80):
        n = int(rng.integers(3, 14))
        elements = (ELEMENTS[k % 3],) if k < 50 else _alloy_elements(rng)
        symbols = [elements[0]] * n if len(elements) == 1 else _random_symbols(rng, n, elements)
        a = _vegard(symbols)
        block = bulk("Cu", "fcc", a=a, cubic=True).repeat((3, 3, 3))
        centre = block.positions[len(block) // 2]
        # Nearest n sites to a slightly off-centre point give varied compact shapes.
        point = centre + rng.normal(0.0, 0.4, size=3)
        order = np.argsort(np.linalg.norm(block.positions - point, axis=1), kind="stable")
        positions = block.positions[order[:n]] - point
        atoms = Atoms(symbols, positions=positions)
        _rattle(atoms, rng, rng.uniform(0.03, 0.1))
        frames.append(_label(atoms, "cluster", f"cluster{n}-{k:03d}"))
    return frames


def teaching_stoichiometry(rng: np.random.Generator) -> list[Atoms]:
    """Cu/Au structures: one stoichiometry (CuAu) vs varied compositions.

    With a per-species baseline (or any model whose features include species counts), the
    ``fixed-stoichiometry`` group determines only e_Cu + e_Au, never e_Cu - e_Au: trained
    on it alone, every local prediction is undetermined (low LPR everywhere).
    ``varied-composition`` holds the same kinds of structures with Cu fractions from 0 to 1.
    """
    frames: list[Atoms] = []
    elements = ("Cu", "Au")
    for group in ("fixed-stoichiometry", "varied-composition"):
        for k in range(40):
            n_cu = 16 if group == "fixed-stoichiometry" else int(rng.integers(0, 33))
            symbols = ["Cu"] * n_cu + ["Au"] * (32 - n_cu)
            if k % 4 == 0 and group == "fixed-stoichiometry":
                # Ordered L1_0 CuAu: alternating (001) layers.
                atoms = _fcc_cell(symbols, _vegard(symbols))
                z = atoms.get_scaled_positions()[:, 2]
                layer = np.rint(z * 4).astype(int) % 2
                atoms.set_chemical_symbols([elements[i] for i in layer])
            else:
                symbols = [symbols[i] for i in rng.permutation(32)]
                atoms = _fcc_cell(symbols, _vegard(symbols))
            atoms.set_cell(atoms.cell * rng.uniform(0.98, 1.02), scale_atoms=True)
            _rattle(atoms, rng, rng.uniform(0.03, 0.1))
            frames.append(_label(atoms, group, f"{group}-{k:03d}"))
    return frames


GENERATORS: dict[str, Callable[[np.random.Generator], list[Atoms]]] = {
    "emt-alloys": emt_alloys,
    "teaching-stoichiometry": teaching_stoichiometry,
}


def build(name: str) -> list[Atoms]:
    """Frames of the shipped dataset ``name``, labelled with EMT, from its fixed seed."""
    return GENERATORS[name](np.random.default_rng(SEEDS[name]))


def write_dataset(frames: list[Atoms], path: Path) -> None:
    """Write frames as extxyz with fixed column order and float formats."""
    write(
        path,
        frames,
        format="extxyz",
        columns=["symbols", "positions", "forces", "true_local_energy", "coordination"],
        write_results=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The shipped files are package data of lprviz (read through importlib.resources).
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent.parent / "lprviz" / "data")
    parser.add_argument("--only", choices=sorted(GENERATORS), default=None)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in [args.only] if args.only else sorted(GENERATORS):
        frames = build(name)
        path = args.out / f"{name}.extxyz"
        write_dataset(frames, path)
        n_atoms = sum(len(f) for f in frames)
        print(f"{path}: {len(frames)} frames, {n_atoms} atoms (ASE {ase.__version__})")


if __name__ == "__main__":
    main()
