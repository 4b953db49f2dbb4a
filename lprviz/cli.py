"""The ``lprviz`` command.

Sub-commands: ``lpr`` (per-atom LPR of test structures), ``datasets list|fetch|import``,
``app`` (start the Streamlit app). User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lprviz.errors import InputError


def _progress_bar(label: str, *, enabled: bool = True, width: int = 30):
    """A tqdm-style text bar on stderr, as a ``progress(done, total)`` callback."""

    def update(done: int, total: int) -> None:
        if not enabled:
            return
        frac = done / total if total else 1.0
        filled = int(round(width * frac))
        bar = "#" * filled + "." * (width - filled)
        end = "\n" if done >= total else ""
        print(f"\r{label} [{bar}] {done}/{total} atoms", end=end, file=sys.stderr, flush=True)

    return update


def _parse_alphas(text: str) -> list[float]:
    try:
        alphas = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        alphas = []
    if not alphas or not all(a >= 0 and a < float("inf") for a in alphas):
        raise InputError(f"--alpha: expected comma-separated non-negative numbers, got {text!r}")
    return alphas


def _lpr_inputs(args: argparse.Namespace):
    """The combined dataset (training frames first) and its training mask."""
    import numpy as np

    from lprviz import datasets

    if args.dataset is not None:
        if args.train is not None or args.test is not None:
            raise InputError("give either --dataset with --train-groups, or --train and --test")
        if not args.train_groups:
            raise InputError("--dataset: also give --train-groups G1,G2 (test = the other groups)")
        data = datasets.load(args.dataset)
        wanted = [g.strip() for g in args.train_groups.split(",") if g.strip()]
        available = sorted(set(data.groups.tolist()))
        unknown = [g for g in wanted if g not in available]
        if unknown:
            raise InputError(
                f"dataset '{data.name}': no group {', '.join(unknown)}; "
                f"groups are {', '.join(available)}"
            )
        train = np.isin(data.groups, wanted)
        if train.all():
            raise InputError(f"dataset '{data.name}': --train-groups leave no test frame")
        return data, train
    if args.train is None or args.test is None:
        raise InputError("give --train TRAIN and --test TEST (or --dataset NAME --train-groups)")
    train_set = datasets.load(args.train)
    test_set = datasets.load(args.test)
    for part, label in ((train_set, args.train), (test_set, args.test)):
        if not part.frames:
            raise InputError(f"{label}: contains no structures")
    missing = np.flatnonzero(~train_set.has_energy)
    if missing.size:
        raise InputError(
            f"{args.train}: frame {missing[0]} has no energy ({missing.size} of "
            f"{len(train_set.frames)} frames); training frames need energies"
        )
    parts = (train_set, test_set)
    local = None
    if all(p.true_local_energies is not None for p in parts):
        local = np.concatenate([p.true_local_energies for p in parts])
    data = datasets.Dataset(
        name=f"{train_set.name}+{test_set.name}",
        frames=train_set.frames + test_set.frames,
        energies=np.concatenate([p.energies for p in parts]),
        has_energy=np.concatenate([p.has_energy for p in parts]),
        groups=np.concatenate([p.groups for p in parts]),
        names=train_set.names + test_set.names,
        splits=np.array(["train"] * len(train_set.frames) + ["test"] * len(test_set.frames)),
        true_local_energies=local,
    )
    train = np.arange(len(data.frames)) < len(train_set.frames)
    return data, train


def _write_extxyz(path: str, frames) -> None:
    """Write extxyz with floats at full precision.

    ASE's writer prints floats as ``%16.8f``, which rounds an LPR of 1e-9 to zero; this
    uses ASE's own header builder and calculator-results handling, with ``%.15e`` floats.
    """
    import numpy as np
    from ase.io.extxyz import output_column_format, save_calc_results

    with open(path, "w") as fh:
        for original in frames:
            atoms = original.copy()
            save_calc_results(atoms, original.calc, calc_prefix="")
            skip = {"numbers", "positions", "symbols", "species", "pos"}
            columns = ["symbols", "positions", *[k for k in atoms.arrays if k not in skip]]
            arrays = {k: atoms.arrays[k] for k in columns[2:]}
            arrays["symbols"] = np.array(atoms.get_chemical_symbols())
            arrays["positions"] = atoms.positions
            comment, ncols, dtype, fmt = output_column_format(atoms, columns, arrays, True)
            fmt = fmt.replace("%16.8f", "%22.15e")
            data = np.zeros(len(atoms), dtype)
            for column, ncol in zip(columns, ncols, strict=True):
                value = arrays[column]
                if ncol == 1:
                    data[column] = np.squeeze(value)
                else:
                    for c in range(ncol):
                        data[column + str(c)] = value[:, c]
            fh.write(f"{len(atoms)}\n{comment}\n")
            for row in data:
                fh.write(fmt % tuple(row))


def _cmd_lpr(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator

    from lprviz import __version__
    from lprviz.features import SOAP_PRESETS, compute_soap
    from lprviz.pipeline import ModelSpec, evaluate, prepare

    alphas = _parse_alphas(args.alpha)
    if args.preset not in SOAP_PRESETS:
        raise InputError(
            f"--preset: expected one of {', '.join(SOAP_PRESETS)}, got {args.preset!r}"
        )
    overrides = {
        "cutoff": args.cutoff,
        "max_radial": args.max_radial,
        "max_angular": args.max_angular,
        "gaussian_width": args.gaussian_width,
    }
    hypers = dataclasses.replace(
        SOAP_PRESETS[args.preset], **{k: v for k, v in overrides.items() if v is not None}
    )
    spec = ModelSpec(kind=args.model, baseline=args.baseline, n_sparse=args.n_sparse)
    data, train = _lpr_inputs(args)

    progress = _progress_bar("SOAP", enabled=not args.quiet)
    desc = compute_soap(data.frames, hypers, species=data.species, progress=progress)
    fit = prepare(data, desc, train, spec, scale=args.scale)
    results = [evaluate(fit, alpha) for alpha in alphas]

    test_frames = np.flatnonzero(~train)
    atom_index = np.arange(len(desc.structure_index))
    meta = {
        "lpr_alpha": alphas[0],
        "lpr_alphas": json.dumps(alphas),
        "lpr_model": spec.kind,
        "lpr_baseline": spec.baseline,
        "lpr_soap": json.dumps(dataclasses.asdict(hypers)),
        "lpr_scale": fit.scale,
        "lpr_n_train_frames": int(train.sum()),
        "lprviz_version": __version__,
    }
    if spec.kind == "sparse-kernel":
        meta["lpr_n_sparse"] = len(fit.nystrom.active_index)
    out_frames = []
    for frame in test_frames:
        original = data.frames[frame]
        atoms = original.copy()
        if original.calc is not None and getattr(original.calc, "results", None):
            results_copy = {k: v for k, v in original.calc.results.items()}
            atoms.calc = SinglePointCalculator(atoms, **results_copy)
        rows = atom_index[desc.structure_index == frame]
        atoms.arrays["lpr"] = results[0].lpr[rows]
        atoms.arrays["local_energy"] = results[0].local_energy[rows]
        atoms.arrays["lpr_undetermined"] = results[0].undetermined[rows]
        if len(alphas) > 1:
            for alpha, res in zip(alphas, results, strict=True):
                atoms.arrays[f"lpr_alpha={alpha:g}"] = res.lpr[rows]
        atoms.info.update(meta)
        atoms.info["lpr_pr"] = float(results[0].pr[frame])
        out_frames.append(atoms)
    try:
        _write_extxyz(args.output, out_frames)
    except OSError as exc:
        raise InputError(f"{args.output}: cannot write output ({exc.strerror or exc})") from None
    if not args.quiet:
        n_atoms = sum(len(a) for a in out_frames)
        lpr = results[0].lpr[~train[desc.structure_index]]
        print(
            f"wrote {len(out_frames)} structures ({n_atoms} atoms) to {args.output}; "
            f"LPR at alpha={alphas[0]:g}: median {np.median(lpr):.3g}, min {lpr.min():.3g}",
            file=sys.stderr,
        )
    return 0


def _cmd_datasets_list(args: argparse.Namespace) -> int:
    from lprviz import datasets

    rows = [("name", "kind", "cached", "size", "licence", "description")]
    for info in datasets.list_available():
        size = f"{info.size_bytes / 1e6:.1f} MB"
        rows.append((info.name, info.kind, "yes" if info.cached else "no", size, info.licence,
                     info.description))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    print(f"cache: {datasets.cache_dir()}")
    return 0


def _cmd_datasets_fetch(args: argparse.Namespace) -> int:
    from lprviz import datasets

    paths = datasets.fetch(args.name, base_url=args.base_url, dest=args.dest)
    for path in paths:
        print(f"{path}  ({path.stat().st_size / 1e6:.1f} MB, sha256 verified)")
    return 0


def _cmd_datasets_import(args: argparse.Namespace) -> int:
    from lprviz import datasets

    info = datasets.import_file(args.file, name=args.name)
    print(f"imported as '{info.name}' ({info.kind}): {info.path}")
    return 0


def _cmd_app(args: argparse.Namespace) -> int:
    raise NotImplementedError  # owned by the app work


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``lprviz`` command."""
    parser = argparse.ArgumentParser(prog="lprviz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("lpr", help="per-atom LPR of test structures")
    p.add_argument("--train", help="training structures with energies: file or dataset name")
    p.add_argument("--test", help="structures to compute the LPR of: file or dataset name")
    p.add_argument("--dataset", help="one dataset split by group (use with --train-groups)")
    p.add_argument("--train-groups", help="comma-separated groups of --dataset to train on")
    p.add_argument("--alpha", default="1e-4",
                   help="regulariser(s), comma-separated (default 1e-4)")
    p.add_argument("--model", choices=("linear", "sparse-kernel"), default="linear")
    p.add_argument("--n-sparse", type=int, default=500,
                   help="active environments of the sparse-kernel model (default 500)")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="per-species composition baseline in the model (default on)")
    p.add_argument("--preset", default="default", help="SOAP preset: fast, default, accurate")
    p.add_argument("--cutoff", type=float, help="SOAP cutoff radius in A (overrides preset)")
    p.add_argument("--max-radial", type=int, help="SOAP largest radial index (inclusive)")
    p.add_argument("--max-angular", type=int, help="SOAP largest angular channel l")
    p.add_argument("--gaussian-width", type=float, help="SOAP Gaussian width in A")
    p.add_argument("--scale", type=float, default=None,
                   help="fixed feature scale (default: sfactor of the training atoms)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("-o", "--output", required=True, help="output extxyz file")
    p.set_defaults(func=_cmd_lpr)

    pd = sub.add_parser("datasets", help="list, fetch or import datasets")
    dsub = pd.add_subparsers(dest="datasets_command", required=True)
    p = dsub.add_parser("list", help="shipped, fetchable and cached datasets")
    p.set_defaults(func=_cmd_datasets_list)
    p = dsub.add_parser("fetch", help="download a real DFT dataset (checksums verified)")
    p.add_argument("name", help="fetchable dataset, e.g. mlearn-Si (see: lprviz datasets list)")
    p.add_argument("--base-url", default=None,
                   help="replace the pinned download prefix (a mirror; https only)")
    p.add_argument("--dest", default=None,
                   help="directory for the files (default: the lprviz cache, where load looks)")
    p.set_defaults(func=_cmd_datasets_fetch)
    p = dsub.add_parser("import", help="import a dataset file you already have")
    p.add_argument("file", help="extxyz (or ASE-readable) or mlearn JSON file")
    p.add_argument("--name", default=None, help="name to load it by (default: file stem)")
    p.set_defaults(func=_cmd_datasets_import)

    p = sub.add_parser("app", help="start the Streamlit app")
    p.set_defaults(func=_cmd_app)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lprviz`` command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"lprviz: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
