"""The ``lprviz`` command.

Sub-commands: ``lpr`` (per-atom LPR of test structures), ``datasets list|fetch|import``,
``app`` (start the Streamlit app). User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lprviz.errors import InputError

# True while a progress bar's line is unfinished (a message must start on a new line).
_open_line = [False]


def _progress_bar(label: str, *, enabled: bool = True, width: int = 30):
    """A tqdm-style text bar on stderr, as a ``progress(done, total)`` callback."""

    def update(done: int, total: int) -> None:
        if not enabled:
            return
        frac = done / total if total else 1.0
        filled = int(round(width * frac))
        bar = "#" * filled + "." * (width - filled)
        end = "\n" if done >= total else ""
        _open_line[0] = not end  # before printing: Ctrl-C may land right after the print
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


def _group_mask(data, text: str, option: str):
    """Frames of ``data`` whose group is one of the comma-separated ``text`` (``option``
    names the command-line option in the error)."""
    import numpy as np

    wanted = [g.strip() for g in text.split(",") if g.strip()]
    available = sorted(set(data.groups.tolist()))
    unknown = [g for g in wanted if g not in available]
    if unknown:
        raise InputError(
            f"{option}: dataset '{data.name}' has no group {', '.join(unknown)}; "
            f"groups are {', '.join(available)}"
        )
    return np.isin(data.groups, wanted)


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
        train = _group_mask(data, args.train_groups, "--train-groups")
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


def _lcpr_arrays(fit, desc, atoms_mask, alpha: float) -> dict:
    """Per-atom LCPR of every descriptor block, as extxyz array names -> (n_atoms,) arrays
    (NaN outside ``atoms_mask``, which are not written)."""
    import re

    import numpy as np

    from lprviz.validation import fit_blocks

    blocks = fit_blocks(fit, desc)
    rows = np.flatnonzero(atoms_mask)
    phi = fit.model_features(desc.values[rows], desc.atom_numbers[rows])
    out = {}
    for name, values in fit.solver.lcpr(phi, alpha, blocks).items():
        full = np.full(len(atoms_mask), np.nan)
        full[rows] = values
        out["lcpr_" + re.sub(r"[^A-Za-z0-9_]+", "", name.replace("-", "_"))] = full
    return out


def _cmd_lpr(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator

    from lprviz import __version__
    from lprviz.export import write_extxyz
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
    lcpr = _lcpr_arrays(fit, desc, ~train[desc.structure_index], alphas[0]) if args.lcpr else {}
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
        for key, values in lcpr.items():
            atoms.arrays[key] = values[rows]
        if len(alphas) > 1:
            for alpha, res in zip(alphas, results, strict=True):
                atoms.arrays[f"lpr_alpha={alpha:g}"] = res.lpr[rows]
        atoms.info.update(meta)
        atoms.info["lpr_pr"] = float(results[0].pr[frame])
        out_frames.append(atoms)
    try:
        write_extxyz(args.output, out_frames)
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


def _suggest_inputs(args: argparse.Namespace):
    """Combined dataset (train, pool, target frames), training mask, pool frames, target atoms
    (None: the lowest-LPR fraction of the non-training atoms)."""
    import numpy as np

    from lprviz import datasets

    if args.dataset is not None:
        if args.train is not None or args.pool is not None or args.target is not None:
            raise InputError("give either --dataset with --train-groups, or --train and --pool")
        if not args.train_groups:
            raise InputError("--dataset: also give --train-groups G1,G2")
        data = datasets.load(args.dataset)
        train = _group_mask(data, args.train_groups, "--train-groups")
        pool = (_group_mask(data, args.pool_groups, "--pool-groups") if args.pool_groups
                else ~train) & ~train
        if not pool.any():
            raise InputError(f"dataset '{data.name}': no pool structure outside training")
        target = None
        if args.target_groups:
            target = np.flatnonzero(
                _group_mask(data, args.target_groups, "--target-groups")[data.structure_index])
        return data, train, np.flatnonzero(pool), target
    if args.train is None or args.pool is None:
        raise InputError("give --train TRAIN and --pool POOL (or --dataset NAME --train-groups)")
    parts = [datasets.load(args.train), datasets.load(args.pool)]
    if args.target is not None:
        parts.append(datasets.load(args.target))
    for part, label in zip(parts, (args.train, args.pool, args.target), strict=False):
        if not part.frames:
            raise InputError(f"{label}: contains no structures")
    if not parts[0].has_energy.all():
        raise InputError(f"{args.train}: every training frame needs an energy")
    sizes = [len(p.frames) for p in parts]
    data = datasets.Dataset(
        name="+".join(p.name for p in parts),
        frames=[a for p in parts for a in p.frames],
        energies=np.concatenate([p.energies for p in parts]),
        has_energy=np.concatenate([p.has_energy for p in parts]),
        groups=np.concatenate([p.groups for p in parts]),
        names=[n for p in parts for n in p.names],
        splits=np.concatenate([np.full(n, "") for n in sizes]),
    )
    frame = np.arange(len(data.frames))
    train = frame < sizes[0]
    pool = np.flatnonzero((frame >= sizes[0]) & (frame < sizes[0] + sizes[1]))
    target = None
    if args.target is not None:
        target = np.flatnonzero(data.structure_index >= sizes[0] + sizes[1])
    return data, train, pool, target


def _cmd_suggest(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from lprviz.features import SOAP_PRESETS, compute_soap
    from lprviz.pipeline import ModelSpec, evaluate, prepare
    from lprviz.suggest import lowest_lpr_atoms, random_additions, suggest_from_projections

    if args.preset not in SOAP_PRESETS:
        raise InputError(
            f"--preset: expected one of {', '.join(SOAP_PRESETS)}, got {args.preset!r}"
        )
    try:
        alpha = float(args.alpha)
    except ValueError:
        raise InputError(f"--alpha: expected a number, got {args.alpha!r}") from None
    data, train, pool, target = _suggest_inputs(args)
    desc = compute_soap(data.frames, SOAP_PRESETS[args.preset], species=data.species)
    fit = prepare(data, desc, train, ModelSpec(kind=args.model))
    if target is None:
        res = evaluate(fit, alpha)
        rest = np.flatnonzero(~train[data.structure_index])
        target = rest[lowest_lpr_atoms(res.lpr[rest], args.target_fraction)]
        what = f"lowest-LPR {args.target_fraction:.0%} of non-training atoms"
    else:
        what = "given target"
    if target.size == 0:
        raise InputError("target: no atoms selected")
    P, Q = fit.projections[target], fit.structure_projections[pool]
    sug = suggest_from_projections(fit.solver, P, Q, alpha, args.k)
    frames = pool[sug.chosen]
    table = pd.DataFrame({
        "step": np.arange(1, len(frames) + 1),
        "frame": frames,
        "name": [str(data.names[i]) for i in frames],
        "group": [str(data.groups[i]) for i in frames],
        "atoms": np.asarray(data.frame_sizes)[frames],
        "composition": [data.frames[i].get_chemical_formula() for i in frames],
        "gain_mean_ln_lpr": sug.gains,
        "alone_gain": sug.first_gains[sug.chosen],
        "lpr_factor": np.exp(sug.curve[1:] - sug.curve[0]),
    })
    print(f"target: {target.size} atoms ({what}); pool: {pool.size} structures; "
          f"alpha = {alpha:g}; geometric-mean target LPR now {np.exp(sug.curve[0]):.4g}")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.random_seeds > 0:
        rand = random_additions(fit.solver, P, Q, alpha, len(frames), n_seeds=args.random_seeds)
        factor = np.exp(rand[:, -1] - rand[:, 0])
        print(f"random {len(frames)} additions ({args.random_seeds} draws): LPR factor "
              f"{factor.mean():.4g} (min {factor.min():.4g}, max {factor.max():.4g}); "
              f"guided: {table['lpr_factor'].iloc[-1]:.4g}")
    if args.csv:
        try:
            table.to_csv(args.csv, index=False)
        except OSError as exc:
            raise InputError(f"{args.csv}: cannot write ({exc.strerror or exc})") from None
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
    import os
    import subprocess
    from pathlib import Path

    app = Path(__file__).resolve().parent.parent / "app.py"
    if not app.is_file():
        raise InputError(f"{app}: the app script is missing (install lprviz from its source tree)")
    env = dict(os.environ)
    if args.threedmol_js:
        js = Path(args.threedmol_js)
        if not js.is_file():
            raise InputError(f"--3dmol-js {js}: expected an existing 3Dmol-min.js file")
        env["LPRVIZ_3DMOL_JS"] = str(js.resolve())
    elif not env.get("LPRVIZ_3DMOL_JS"):
        # The copy the test set-up fetched (bash .ci/run): the viewer then works offline.
        local = app.parent / ".cache" / "3dmol" / "3Dmol-min.js"
        if local.is_file():
            env["LPRVIZ_3DMOL_JS"] = str(local)
    cmd = [sys.executable, "-m", "streamlit", "run", str(app),
           "--server.port", str(args.port), "--server.address", args.address]
    # streamlit reads .streamlit/config.toml from the working directory: run beside app.py;
    # LPRVIZ_3DMOL_JS passes through the environment.
    return subprocess.call(cmd, cwd=app.parent, env=env)


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
    p.add_argument("--lcpr", action="store_true",
                   help="also write per-atom LCPR of each descriptor block (species pair, "
                        "angular channel, baseline) as arrays lcpr_<block>; linear model only; a "
                        "block absent from an atom's environment gets ~1e308 (unbounded)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("-o", "--output", required=True, help="output extxyz file")
    p.set_defaults(func=_cmd_lpr)

    p = sub.add_parser("suggest", help="structures to add to training to raise a target's LPR")
    p.add_argument("--train", help="training structures with energies: file or dataset name")
    p.add_argument("--pool", help="candidate structures (no energies needed): file or name")
    p.add_argument("--target", help="structures whose atoms are the target (default: the "
                   "lowest-LPR --target-fraction of the non-training atoms)")
    p.add_argument("--dataset", help="one dataset split by group (use with --train-groups)")
    p.add_argument("--train-groups", help="comma-separated groups of --dataset to train on")
    p.add_argument("--pool-groups", help="groups of --dataset to draw candidates from "
                   "(default: all non-training frames)")
    p.add_argument("--target-groups", help="groups of --dataset whose atoms are the target")
    p.add_argument("--target-fraction", type=float, default=0.05,
                   help="target = this lowest-LPR fraction when no target is given (0.05)")
    p.add_argument("-k", type=int, default=10, help="structures to pick greedily (default 10)")
    p.add_argument("--alpha", default="1e-4", help="regulariser (default 1e-4)")
    p.add_argument("--model", choices=("linear", "sparse-kernel"), default="linear")
    p.add_argument("--preset", default="default", help="SOAP preset: fast, default, accurate")
    p.add_argument("--random-seeds", type=int, default=5,
                   help="random draws of k additions to compare with (default 5; 0: none)")
    p.add_argument("--csv", help="also write the ranked table to this CSV file")
    p.set_defaults(func=_cmd_suggest)

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
    p.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    p.add_argument("--address", default="127.0.0.1", help="address (default 127.0.0.1)")
    p.add_argument("--3dmol-js", dest="threedmol_js", default=None,
                   help="local 3Dmol-min.js (else $LPRVIZ_3DMOL_JS, else the CDN)")
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
    except KeyboardInterrupt:
        # Ctrl-C: one line, the shell's 128 + SIGINT status; every file writer (caches,
        # output) removes its temporary file in a finally block, so nothing partial is left.
        print("\n" * _open_line[0] + "lprviz: interrupted", file=sys.stderr)
        # Objects the interrupt left half-built are freed after this block; featomic's
        # calculator __del__ then raises (and would print a traceback). We are exiting.
        sys.unraisablehook = lambda unraisable: None
        return 130


if __name__ == "__main__":
    sys.exit(main())
