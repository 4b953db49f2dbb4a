"""Time and size the force rows of force-trained models (lprviz.forces).

On emt-alloys (shipped) and real Si (mlearn training file, when present), default SOAP:

* featurisation with position gradients per atom: ``lprviz.forces.position_gradients``
  (featomic + summing over centres + densifying) vs featomic's ``compute(...,
  gradients=["positions"])`` called directly on the same frames in the same chunks
  (target <= 1.3x);
* accumulating ``G^T G`` and ``G^T F`` structure by structure (``ForceGramBuilder``) vs one
  GEMM of the stacked ``3 n_atoms x d`` force rows (gradients precomputed for both);
* peak traced memory (tracemalloc; numpy arrays, including featomic's, which metatensor
  allocates through numpy) of ``force_gram`` over the whole set vs ``d^2`` floats plus one
  chunk, and vs the ``3 n_atoms x d`` matrix it never forms.

With ``--si-lpr``: the README's table instead, how much training on forces raises the
median LPR per group of the real Si test file (trained on the whole training file, linear
model, default SOAP, alpha = 1e-4, same feature scale with and without forces).

With ``--big N``: only ``force_gram``'s time and peak traced memory on emt-alloys repeated N
times (N = 13: 102k atoms).

Usage: ``python benchmarks/bench_forces.py [--quick] [--si PATH] [--si-lpr] [--big N]``.
Prints ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np

from lprviz import datasets
from lprviz.features import SoapHypers, _featomic_ready
from lprviz.forces import (
    _GRAD_CHUNK_ATOMS,
    ForceGramBuilder,
    force_gram,
    position_gradients,
    reference_forces,
)
from lprviz.pipeline import DEFAULT_FORCE_WEIGHT

SI = Path(__file__).resolve().parents[2] / "shared" / "data" / "mlearn_zuo2020" / "Si_training.json"


def _chunks(frames, chunk_atoms):
    chunk, n = [], 0
    for atoms in frames:
        chunk.append(atoms)
        n += len(atoms)
        if n >= chunk_atoms:
            yield chunk
            chunk, n = [], 0
    if chunk:
        yield chunk


def featomic_direct(frames, hypers):
    import featomic

    calculator = featomic.SoapPowerSpectrum(**hypers.featomic_hypers())
    for chunk in _chunks(frames, _GRAD_CHUNK_ATOMS):
        calculator.compute([_featomic_ready(a, hypers.cutoff) for a in chunk],
                           gradients=["positions"])


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run(name, ds, hypers, repeat):
    frames = ds.frames
    n_atoms = sum(len(a) for a in frames)

    def ours():
        for _ in position_gradients(frames, hypers, species=ds.species, cache=False):
            pass

    t_direct = best_of(lambda: featomic_direct(frames, hypers), repeat)
    t_ours = best_of(ours, repeat)
    print(f"{name}: {len(frames)} frames, {n_atoms} atoms")
    print(f"  gradients: featomic direct {1e6 * t_direct / n_atoms:.0f} us/atom, lprviz "
          f"{1e6 * t_ours / n_atoms:.0f} us/atom, ratio {t_ours / t_direct:.2f}x (target <= 1.3)")

    grads = [g for _, g in position_gradients(frames, hypers, species=ds.species, cache=False)]
    grads_of = grads.__iter__  # the closures below read the list; it is emptied after
    forces = [reference_forces([a]) for a in frames]
    d = grads[0].shape[-1]

    def accumulate():
        b = ForceGramBuilder()
        for g, f in zip(grads_of(), forces, strict=True):
            b.add(g, f)
        return b.result()

    def one_gemm():
        G = -np.vstack([g.reshape(-1, d) for g in grads_of()])
        F = np.concatenate([f.reshape(-1) for f in forces])
        return G.T @ G, G.T @ F

    t_acc = best_of(accumulate, repeat)
    t_gemm = best_of(one_gemm, repeat)
    acc, (gram, _) = accumulate(), one_gemm()
    rel = np.abs(acc.gram - gram).max() / np.abs(gram).max()
    print(f"  G^T G (d = {d}, {3 * n_atoms} rows): per structure {t_acc:.3f} s, one GEMM of "
          f"the stacked rows {t_gemm:.3f} s, ratio {t_acc / t_gemm:.2f}x, max rel diff "
          f"{rel:.1e}")
    grads.clear()

    tracemalloc.start()
    force_gram(frames, hypers, species=ds.species)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    mib = 2**20
    print(f"  force_gram peak traced memory {peak / mib:.0f} MiB; d^2 floats "
          f"{d * d * 8 / mib:.0f} MiB; one {_GRAD_CHUNK_ATOMS}-atom chunk of summed gradients "
          f"{_GRAD_CHUNK_ATOMS * 3 * d * 8 / mib:.0f} MiB; the full 3 n_atoms x d matrix "
          f"{3 * n_atoms * d * 8 / mib:.0f} MiB")


def _si_both(train_path):
    """Real Si training + test file as one dataset (``splits`` says which)."""
    parts = [datasets.load(str(train_path)),
             datasets.load(str(Path(train_path).with_name("Si_test.json")))]
    return datasets.Dataset(
        name="mlearn-Si",
        frames=parts[0].frames + parts[1].frames,
        energies=np.concatenate([p.energies for p in parts]),
        has_energy=np.concatenate([p.has_energy for p in parts]),
        groups=np.concatenate([p.groups for p in parts]),
        names=parts[0].names + parts[1].names,
        splits=np.array(["train"] * len(parts[0].frames) + ["test"] * len(parts[1].frames)),
    )


def si_lpr_table(train_path, alpha=1e-4, weights=(DEFAULT_FORCE_WEIGHT, 1.0)):
    """Median LPR per group of the non-training real Si atoms, energy-only vs force-trained,
    for two training sets: the whole training file, and its Elastic + AIMD-NVT groups
    (docs/science.md §10)."""
    from lprviz.features import compute_soap
    from lprviz.pipeline import coordination, prepare

    data = _si_both(train_path)
    desc = compute_soap(data.frames, SoapHypers(), species=data.species)
    coord = coordination(data.frames, 2.7)
    train_file = data.splits == "train"
    setups = {"whole training file (214 structures)": train_file,
              "Elastic + AIMD-NVT of the training file (145)":
                  train_file & np.isin(data.groups, ["Elastic", "AIMD-NVT"])}
    for title, mask in setups.items():
        out_atoms = ~mask[data.structure_index]
        label = np.char.add(np.char.add(data.splits[data.structure_index].astype(str), " "),
                            data.groups[data.structure_index].astype(str))[out_atoms]
        surface = (data.groups[data.structure_index] == "Surface") & (coord < 4)
        label = np.where(surface[out_atoms], np.char.add(label, ", coord < 4"), label)
        lprs = {}
        for w in (None, *weights):
            start = time.perf_counter()
            fit = prepare(data, desc, mask, project=False, force_weight=w)
            phi = fit.model_features(desc.values[out_atoms], data.atom_numbers[out_atoms])
            lprs["energies only" if w is None else f"forces, lambda_F = {w:g}"] = (
                fit.solver.lpr(phi, alpha))
            print(f"  ({title}, lambda_F = {w}: prepare {time.perf_counter() - start:.1f} s)")
        names = list(lprs)
        print(f"\nTrained on {title}, alpha = {alpha:g}, linear model, default SOAP")
        print(f"| atoms (split group) | n | median LPR, {names[0]} | "
              + " | ".join(f"{n}: median (raise)" for n in names[1:]) + " |")
        print("|---|---|---|" + "---|" * (len(names) - 1))
        for g in [*sorted(set(label)), "all"]:
            sel = np.ones(len(label), dtype=bool) if g == "all" else label == g
            base = np.median(lprs[names[0]][sel])
            cells = [f"{np.median(lprs[n][sel]):.3g} ({np.median(lprs[n][sel]) / base:.0f}x)"
                     for n in names[1:]]
            print(f"| {g} | {int(sel.sum())} | {base:.3g} | " + " | ".join(cells) + " |")


def big_memory(copies):
    """Peak traced memory of force_gram over emt-alloys repeated ``copies`` times."""
    ds = datasets.load("emt-alloys")
    frames = list(ds.frames) * copies
    n_atoms = sum(len(a) for a in frames)
    tracemalloc.start()
    start = time.perf_counter()
    result = force_gram(frames, SoapHypers(), species=ds.species)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    d = result.gram.shape[0]
    mib = 2**20
    print(f"emt-alloys x{copies}: {n_atoms} atoms, d = {d}: force_gram {elapsed:.0f} s "
          f"({1e6 * elapsed / n_atoms:.0f} us/atom), peak traced memory {peak / mib:.0f} MiB "
          f"(d^2 floats {d * d * 8 / mib:.0f} MiB; the 3 n_atoms x d matrix it never forms "
          f"{3 * n_atoms * d * 8 / mib:.0f} MiB)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the frames, once")
    parser.add_argument("--si", default=str(SI), help="mlearn Si training file")
    parser.add_argument("--si-lpr", action="store_true",
                        help="print the README table of LPR raised by forces on real Si")
    parser.add_argument("--big", type=int, default=0, metavar="N",
                        help="force_gram peak memory on emt-alloys x N only")
    args = parser.parse_args()
    if args.big:
        big_memory(args.big)
        return
    if args.si_lpr:
        si_lpr_table(args.si)
        return
    hypers = SoapHypers()
    repeat = 1 if args.quick else 2
    sets = [("emt-alloys", datasets.load("emt-alloys"))]
    if Path(args.si).is_file():
        sets.append(("mlearn Si training", datasets.load(args.si)))
    else:
        print(f"(real Si skipped: {args.si} not found)")
    for name, ds in sets:
        if args.quick:
            ds = ds.subset(np.arange(0, len(ds.frames), 5))
        run(name, ds, hypers, repeat)


if __name__ == "__main__":
    main()
