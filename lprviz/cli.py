"""The ``lprviz`` command.

Sub-commands: ``lpr`` (per-atom LPR of test structures), ``suggest`` (what to add to
training), ``datasets list|fetch|import``, ``app`` (start the Streamlit app) and
``fetch-3dmol``. User errors print one line and exit with status 2. Also ``python -m lprviz``.
Steps and their times go to stderr (``-q``: nothing); output files are replaced atomically
(:func:`lprviz.export.atomic_output`) and never overwrite an input.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lprviz.errors import InputError
from lprviz.process import collector_paused, tune_process_memory


def _bars_shown() -> bool:
    """Whether stderr is a terminal: only there are bars redrawn in place (``\\r``); in a log
    file or a pipe each redraw would be text of its own, so only the step lines go there."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _progress_bar(label: str, *, enabled: bool = True, width: int = 30):
    """A tqdm-style text bar on stderr, as a ``progress(done, total)`` callback; nothing
    unless stderr is a terminal (:func:`_bars_shown`).

    The line is left open: the :class:`_Steps` step around it ends it with its time.
    """
    enabled = enabled and _bars_shown()

    def update(done: int, total: int) -> None:
        if not enabled:
            return
        frac = done / total if total else 1.0
        filled = int(round(width * frac))
        bar = "#" * filled + "." * (width - filled)
        print(f"\r{label} [{bar}] {done}/{total} atoms", end=" ", file=sys.stderr, flush=True)

    return update


class _Steps:
    """Progress of a command on stderr, one line per step: ``label... done in 1.2 s``.

    ``with steps("SOAP", bar=True) as progress:`` also gives a text bar callback for
    :func:`lprviz.features.compute_soap`. Disabled (``-q``), it prints nothing.
    """

    #: Whether a step's line is open (``label...`` printed, its time not yet), and the
    #: notes (:func:`_note`) waiting for it to end.
    open_line = False
    pending: list[str] = []

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @contextlib.contextmanager
    def __call__(self, label: str, *, bar: bool = False):
        progress = _progress_bar(label, enabled=self.enabled) if bar else None
        if not self.enabled:
            yield progress
            return
        print(f"{label}...", end=" ", file=sys.stderr, flush=True)
        start = time.perf_counter()
        _Steps.open_line = True
        try:
            yield progress
        except BaseException:
            print(file=sys.stderr, flush=True)  # the error message gets a line of its own
            raise
        else:
            print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        finally:
            _Steps.open_line = False
            for line in _Steps.pending:
                print(line, file=sys.stderr, flush=True)
            _Steps.pending.clear()

    def report(self, times: dict[str, float]) -> None:
        """One ``label... done in 1.2 s`` line per phase of a streamed step (times summed
        over its chunks)."""
        if self.enabled:
            for label, seconds in times.items():
                print(f"{label}... done in {seconds:.1f} s", file=sys.stderr, flush=True)


def _input_files(value: str | None) -> list[Path]:
    """Files a ``--train``/``--dataset``... value reads: the path, or the dataset's files."""
    if value is None:
        return []
    if Path(value).exists():
        return [Path(value)]
    from lprviz import datasets

    return [f for info in datasets.list_available() if info.name == value
            for f in (info.path, *info.files) if f.is_file()]


def _refuse_input_as_output(output: str, option: str, inputs: dict[str, str | None]) -> None:
    """InputError when ``output`` is one of the input files (symlinks, relative paths and
    hard links included): writing it would destroy the data being read."""
    out = Path(output)
    if not out.exists():  # inputs exist, so a new file cannot be one of them
        return
    for input_option, value in inputs.items():
        for path in _input_files(value):
            if os.path.samefile(out, path):
                raise InputError(f"{option} {output}: is the input file of {input_option} "
                                 f"({value}); choose another output file")


# The output name that means standard output (``lprviz lpr -o -``).
_STDOUT = "-"


def _check_output(path: str, option: str, inputs: dict[str, str | None], *,
                  stdout: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written (a directory, a
    missing directory) or that is one of the input files (:func:`_refuse_input_as_output`).
    ``-`` (:data:`_STDOUT`) is standard output where ``stdout`` allows it, else refused (a
    file named ``-`` would surprise whoever typed it)."""
    from lprviz.export import _COMPRESSED_OUTPUT

    if path == _STDOUT:
        if not stdout:
            raise InputError(f"{option} -: expected a file name (only -o of lprviz lpr "
                             "writes to standard output)")
        if not _stdout_open():
            raise InputError(f"{option} -: there is no standard output (it is closed)")
        return
    out = Path(path)
    if stdout:  # lpr's -o: extended XYZ, whatever the name says
        _refuse_other_format(path, option)
    try:
        if not path or out.is_dir():  # "" is the current directory
            raise InputError(f"{option} {path!r}: is a directory, expected a file name")
        folder = out.resolve().parent  # where the file is written (a link's target's)
        if not folder.is_dir():
            raise InputError(f"{option} {path}: directory {folder} does not exist")
        _refuse_input_as_output(path, option, inputs)
    except (OSError, RuntimeError) as exc:  # no permission, a symbolic link loop...
        raise InputError(f"{option} {path}: cannot use it as an output ({exc})") from None
    compressor = _COMPRESSED_OUTPUT.get(out.suffix.lower())
    if compressor is not None:
        import importlib

        try:
            importlib.import_module(compressor[0])
        except ImportError:
            raise InputError(f"{option} {path}: this Python has no {compressor[0]} module to "
                             f"write {out.suffix} files; choose another name") from None


# Suffixes of other formats a user may hope -o writes: tables, arrays, documents and the
# structure formats ASE writes (a name of theirs would not read back as what it says).
_NOT_EXTXYZ = frozenset({
    ".csv", ".tsv", ".txt", ".dat", ".json", ".npz", ".npy", ".h5", ".hdf5", ".parquet",
    ".xlsx", ".html", ".pdf", ".png", ".traj", ".db", ".cif", ".pdb", ".vasp", ".xsf",
    ".cfg", ".lammps", ".nc", ".gen", ".res", ".mol", ".sdf",
})


def _refuse_other_format(path: str, option: str) -> None:
    """Refuse an output name of another format (``out.csv``, ``out.json.gz``, ``out.traj``):
    ``lprviz lpr`` writes extended XYZ only. Names without a suffix, or with any other one
    (``run.out``, ``v1.2``), are taken as given."""
    from lprviz.export import _COMPRESSED_OUTPUT

    name = Path(path).name.lower()
    compression = Path(name).suffix
    if compression in _COMPRESSED_OUTPUT:  # the format is the suffix before it
        name = name[: -len(compression)]
    if Path(name).suffix in _NOT_EXTXYZ:
        raise InputError(f"{option} {path}: lprviz lpr writes extended XYZ; give a name ending "
                         ".extxyz or .xyz (optionally .gz, .bz2 or .xz); the app's Export page "
                         "writes per-atom CSV and chemiscope files")


def _refuse_shared_outputs(outputs: Sequence[tuple[str, str]]) -> None:
    """InputError when two of the ``(option, path)`` outputs are one file (the same path,
    a symbolic or hard link): the later write would replace the earlier."""
    seen: dict[object, str] = {}
    for option, path in outputs:
        if path == _STDOUT:
            continue  # a file of its own: the others are refused "-" (_check_output)
        try:
            stat = os.stat(path)
            key: object = (stat.st_dev, stat.st_ino)
        except FileNotFoundError:  # a new file: its resolved path
            key = Path(path).resolve()
        except (OSError, RuntimeError) as exc:  # no permission, a symbolic link loop...
            raise InputError(f"{option} {path}: cannot use it as an output ({exc})") from None
        if key in seen:
            raise InputError(f"{option} {path}: is also the file of {seen[key]}; choose "
                             "another file name")
        seen[key] = f"{option} {path}"


def _write_atomically(path: str, option: str, write, *, newline: str | None = None) -> None:
    """``write(file_object)`` into ``path`` via :func:`lprviz.export.atomic_output`; an
    ``OSError`` becomes a one-line InputError and leaves an existing file as it was.
    ``-`` (:data:`_STDOUT`) writes UTF-8 text to standard output as it comes (a pipe's
    reader sees it streamed, and a failed run leaves it cut short)."""
    from lprviz.export import atomic_output

    if path == _STDOUT:
        _write_stdout(option, write, newline)
        return
    try:
        with atomic_output(path, newline=newline) as fh:
            write(fh)
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot write ({exc.strerror or exc})") from None


def _output_name(path: str) -> str:
    """``path`` as messages name it ("standard output" for ``-``)."""
    return "standard output" if path == _STDOUT else path


def _stdout_open() -> bool:
    """Whether there is a standard output to write to (``>&-`` closes it: Python then has
    no ``sys.stdout``, or one whose descriptor is invalid). A replacement without a
    descriptor (a caller's ``StringIO``) counts as open."""
    if sys.stdout is None:
        return False
    try:
        os.fstat(sys.stdout.fileno())
    except (AttributeError, ValueError):  # no descriptor: written as it is
        return not getattr(sys.stdout, "closed", False)
    except OSError:
        return False
    return True


def _write_stdout(option: str, write, newline: str | None) -> None:
    """``write(text_file)`` to standard output: UTF-8 with the newlines a file gets, through
    a duplicate of its descriptor (closed here whatever happens; ``sys.stdout`` stays
    usable). A ``sys.stdout`` without a descriptor (a caller's replacement) is written
    as it is. A reader that closes the pipe early (``| head``) is one line."""
    import io

    fh = None
    try:
        sys.stdout.flush()  # anything printed before goes first
        try:
            fd = os.dup(sys.stdout.fileno())
        except (AttributeError, ValueError):  # no descriptor (io.UnsupportedOperation)
            write(sys.stdout)
            return
        fh = io.TextIOWrapper(os.fdopen(fd, "wb"), encoding="utf-8", newline=newline)
        write(fh)
        fh.flush()
    except BrokenPipeError:
        raise InputError(f"{option} -: standard output was closed by its reader before "
                         "the end") from None
    except OSError as exc:
        raise InputError(f"{option} -: cannot write to standard output "
                         f"({exc.strerror or exc})") from None
    finally:
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()  # closes the duplicate even when its last flush fails


def _parse_alphas(text: str) -> list[float]:
    from lprviz.pipeline import ALPHA_RANGE

    try:
        alphas = [float(v) for v in text.split(",")]  # an empty item is a typo: refused
    except ValueError:
        alphas = []
    if not alphas or not all(ALPHA_RANGE[0] <= a <= ALPHA_RANGE[1] for a in alphas):
        raise InputError(f"--alpha: expected comma-separated numbers in [{ALPHA_RANGE[0]:g}, "
                         f"{ALPHA_RANGE[1]:g}], got {text!r}")
    return alphas


def _check_numbers(args: argparse.Namespace) -> None:
    """Range-check numeric options before any work, naming the option (the library checks
    the same ranges again, naming its own fields)."""
    from lprviz.features import SoapHypers
    from lprviz.limits import check_number
    from lprviz.pipeline import FORCE_WEIGHT_RANGE, SCALE_RANGE, ModelSpec

    for field, (low, high) in SoapHypers.RANGES.items():
        value = getattr(args, field, None)
        if value is not None:
            check_number("--" + field.replace("_", "-"), value, low, high,
                         integer=field.startswith("max_"))
    for field in ("n_sparse", "nn_hidden", "nn_seed"):
        if getattr(args, field, None) is not None:
            check_number("--" + field.replace("_", "-"), getattr(args, field),
                         *ModelSpec.RANGES[field.removeprefix("nn_")], integer=True)
    if getattr(args, "scale", None) is not None:
        check_number("--scale", args.scale, *SCALE_RANGE)
    if getattr(args, "force_weight", None) is not None:
        if not args.forces:  # a weight without forces would be ignored without a word
            raise InputError("--force-weight: only with --forces (without it the model is "
                             "trained on energies alone)")
        check_number("--force-weight", args.force_weight, *FORCE_WEIGHT_RANGE)
        if args.force_weight == 0:  # the force work would be done for an energy-only model
            raise InputError("--force-weight 0: forces would count for nothing; give a "
                             "positive weight, or drop --forces to train on energies alone")
    if hasattr(args, "k"):  # suggest
        check_number("-k", args.k, 1, 10_000, integer=True)
        check_number("--target-fraction", args.target_fraction, 1e-6, 1.0)
        check_number("--random-seeds", args.random_seeds, 0, 1000, integer=True)


def _group_names(text: str, option: str) -> list[str]:
    """The comma-separated group names of ``text`` (``option`` names it in errors); none
    for a blank text. An empty name beside others (``a,,b``, ``a,``) is refused: a name
    left out by a typo would change the training set without a word."""
    items = [g.strip() for g in text.split(",")]
    wanted = [g for g in items if g]
    if wanted and len(wanted) < len(items):
        raise InputError(f"{option}: an empty group name in {text!r} (expected "
                         "comma-separated group names)")
    return wanted


def _group_mask(data, text: str, option: str):
    """Frames of ``data`` whose group is one of the comma-separated ``text`` (``option``
    names the command-line option in the error)."""
    import numpy as np

    wanted = _group_names(text, option)
    available = sorted(set(data.groups.tolist()))
    if not wanted:
        raise InputError(f"{option}: no group given (expected comma-separated group names; "
                         f"dataset '{data.name}' has {', '.join(available)})")
    unknown = [g for g in wanted if g not in available]
    if unknown:
        raise InputError(
            f"{option}: dataset '{data.name}' has no group {', '.join(unknown)}; "
            f"groups are {', '.join(available)}"
        )
    return np.isin(data.groups, wanted)


def _lpr_inputs(args: argparse.Namespace):
    """The combined dataset (training frames first) and its training mask."""

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
    _check_feature_arrays(args, train_set, test_set)
    train_set = _training_part(train_set, args.train, args.train_groups)
    data = datasets.combine(train_set, test_set)
    train = data.splits == "train"
    return data, train


def _check_feature_arrays(args: argparse.Namespace, *parts) -> None:
    """With ``--features-array``, check each input file's arrays on its own, so a bad frame
    is named by its file and its number there (the combined dataset's check that follows
    adds only the widths across files)."""
    from lprviz.sources import read_array

    if getattr(args, "features_array", None) is not None:
        for part in parts:
            read_array(part, args.features_array)


def _training_part(train_set, label: str, groups: str | None):
    """The frames of a ``--train`` input that train: its own test split (a fetched set's test
    file, frames whose ``split`` info says test) left out with a note, then only the
    ``--train-groups`` (``groups``) when given; each needs an energy (a missing one is
    named by its frame number in the file)."""
    import numpy as np

    held_out = np.asarray(train_set.splits) == "test"
    keep = np.flatnonzero(~held_out)
    if groups:
        keep = keep[_group_mask(train_set.subset(keep), groups, "--train-groups")]
    _training_left(label, int(held_out.sum()), keep.size)
    missing = keep[~np.asarray(train_set.has_energy, dtype=bool)[keep]]
    if missing.size:
        raise InputError(f"{label}: frame {missing[0]} has no energy ({missing.size} of "
                         f"{keep.size} training frames); training frames need energies")
    return train_set if keep.size == len(train_set.frames) else train_set.subset(keep)


def _note(text: str) -> None:
    """Print ``lprviz: note: text`` on stderr, after the step line open at the time if any
    (:class:`_Steps`), so a note never splits ``label... done in 1.2 s``."""
    line = f"lprviz: note: {text}"
    if _Steps.open_line:
        _Steps.pending.append(line)
    else:
        print(line, file=sys.stderr, flush=True)


def _training_left(label: str, held_out: int, n_train: int) -> None:
    """Say that a ``--train`` input's ``held_out`` test-split structures do not train;
    refuse when no training structure is left (the serial and distributed runs)."""
    if held_out:
        _note(f"{label}: its {held_out} test-split structures are left out of training")
    if n_train == 0:
        raise InputError(f"{label}: no structure left to train on (its test split and "
                         "--train-groups leave none)")


def _soap_hypers(args: argparse.Namespace):
    """The SOAP preset with the command line's overrides."""
    import dataclasses

    from lprviz.features import SOAP_PRESETS

    preset = "default" if args.preset is None else args.preset
    if preset not in SOAP_PRESETS:
        raise InputError(
            f"--preset: expected one of {', '.join(SOAP_PRESETS)}, got {preset!r}"
        )
    overrides = {
        "cutoff": args.cutoff,
        "max_radial": args.max_radial,
        "max_angular": args.max_angular,
        "gaussian_width": args.gaussian_width,
    }
    return dataclasses.replace(
        SOAP_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}
    )


def _feature_source(args: argparse.Namespace):
    """The :class:`lprviz.sources.FeatureSource` of ``lprviz lpr`` / ``suggest`` and the model
    kind of its readout: SOAP (with the preset and overrides), ``--features-array NAME`` or a
    backbone given as ``--model chgnet|sevenn`` (a linear readout on its last-layer
    features)."""
    from lprviz import sources
    from lprviz.pipeline import MODEL_KINDS

    kinds = (*MODEL_KINDS, *sources.backbone_names())
    if args.model not in kinds:
        raise InputError(f"--model: expected one of {', '.join(kinds)}, got {args.model!r}")
    soap = [o for o, v in (("--preset", args.preset), ("--cutoff", args.cutoff),
                           ("--max-radial", args.max_radial),
                           ("--max-angular", args.max_angular),
                           ("--gaussian-width", args.gaussian_width)) if v is not None]
    backbone = args.model in sources.backbone_names()
    if args.features_array is not None or backbone:
        what = (f"--features-array {args.features_array}" if args.features_array is not None
                else f"--model {args.model}")
        if soap:
            raise InputError(f"{soap[0]}: a SOAP option, but {what} takes its features "
                             "from elsewhere; drop the SOAP options")
        if args.features_array is not None and (backbone or args.model == "nn"):
            raise InputError(f"--features-array: not with --model {args.model} (it has "
                             "features of its own)")
    if backbone:
        reason = sources.backbone_unavailable(args.model)
        if reason is not None:
            raise InputError(f"--model {args.model}: {reason}")
        return sources.FeatureSource(args.model), "linear"
    if args.features_array is not None:
        return sources.FeatureSource("array", array=args.features_array), args.model
    return sources.FeatureSource("soap", hypers=_soap_hypers(args)), args.model


def _model_spec(args: argparse.Namespace, kind: str):
    """The :class:`lprviz.pipeline.ModelSpec` of the shared model options (readout ``kind``
    from :func:`_feature_source`)."""
    from lprviz.pipeline import ModelSpec

    given = {}
    for option, field, value, model in (("--n-sparse", "n_sparse", args.n_sparse,
                                         "sparse-kernel"),
                                        ("--nn-hidden", "hidden", args.nn_hidden, "nn"),
                                        ("--nn-seed", "seed", args.nn_seed, "nn")):
        if value is None:
            continue
        if args.model != model:  # it would be ignored without a word: refused instead
            raise InputError(f"{option}: only with --model {model} (the {args.model} model "
                             "does not use it)")
        given[field] = value
    return ModelSpec(kind=kind, baseline=args.baseline, **given)


def _fit_step(args: argparse.Namespace, kind: str, n_train: int) -> tuple[str, float | None]:
    """The progress label of fitting ``n_train`` training structures and the force weight of
    ``--forces`` (None without it), for ``lprviz lpr`` and ``suggest``."""
    from lprviz.pipeline import DEFAULT_FORCE_WEIGHT

    what = "training the network and factorising" if kind == "nn" else "factorising"
    if not args.forces:
        return f"{what} the model of {n_train} training structures", None
    weight = DEFAULT_FORCE_WEIGHT if args.force_weight is None else args.force_weight
    return f"{what} the model of {n_train} training structures (energies and forces)", weight


def _reference_set(args: argparse.Namespace, data):
    """The reference training set of ``--reference-train`` (a Dataset) or
    ``--reference-train-groups`` (a frame mask of ``data``), or None.

    A reference file fixes the SOAP species list, so it must contain every element of ``data``.
    """
    from lprviz import datasets

    given = [o for o, v in (("--scale", args.scale), ("--reference-train", args.reference_train),
                            ("--reference-train-groups", args.reference_train_groups))
             if v is not None]
    if len(given) > 1:
        raise InputError(f"give one of {', '.join(given)}: each fixes the feature scale")
    if args.reference_train_groups is not None:
        if args.dataset is None:
            raise InputError("--reference-train-groups: only with --dataset (else give "
                             "--reference-train FILE)")
        return _group_mask(data, args.reference_train_groups, "--reference-train-groups")
    if args.reference_train is None:
        return None
    ref = datasets.load(args.reference_train)
    if not ref.frames:
        raise InputError(f"--reference-train {args.reference_train}: contains no structures")
    missing = sorted(set(data.species) - set(ref.species))
    if missing:
        from ase.data import chemical_symbols

        raise InputError(
            f"--reference-train {args.reference_train}: has no "
            f"{', '.join(chemical_symbols[z] for z in missing)} atoms but the input structures "
            f"do; the reference must contain every element (it fixes the descriptor layout)"
        )
    return ref


def _reference_space(args, reference, data, desc, spec, steps, store=None, features=None):
    """What the reference fixes, as keyword arguments of :func:`lprviz.pipeline.prepare`
    (``scale``, and the sparse kernel's ``nystrom`` or the nn model's trained ``nn``), and
    their provenance entries. Without a reference: ``scale=args.scale`` only.

    With ``--model nn`` the network is trained on the reference structures (they need
    energies then), so every run with the same reference shares one network. With a
    :class:`_FrameDescriptors` ``store`` (``lprviz lpr``), reference frames of ``data`` are
    featurised through it (once per distinct structure); a reference file through
    ``features`` (:class:`lprviz.sources.FeatureSource`, default the SOAP of
    ``desc.hypers``)."""
    import numpy as np

    from lprviz.export import group_summary
    from lprviz.pipeline import prepare, reference_space
    from lprviz.sources import FeatureSource, descriptors_for

    nn_origin = {"nn_trained_on": "training"} if spec.kind == "nn" else {}
    if reference is None:
        origin = "training" if args.scale is None else "option"
        return {"scale": args.scale}, {"scale_from": origin, **nn_origin}
    if features is None:
        features = FeatureSource("soap", hypers=desc.hypers)
    if isinstance(reference, np.ndarray):  # --reference-train-groups: frames of the dataset
        groups, source = data.groups[reference], f"{data.name} groups"
        ref_data = data.subset(np.flatnonzero(reference))
    else:
        groups, source, ref_data = reference.groups, args.reference_train, reference
    with steps(f"{features.label} of the reference", bar=True) as progress:
        if isinstance(reference, np.ndarray) and store is not None:
            ref_desc = store.descriptors(np.flatnonzero(reference), progress)
        else:
            ref_desc = descriptors_for(ref_data, features, species=desc.species,
                                       progress=progress, cache=store is None)
    atoms = np.ones(ref_data.n_atoms, dtype=bool)
    provenance = {"scale_from": "reference", "reference": source,
                  "reference_n_frames": len(groups), "reference_groups": group_summary(groups)}
    if spec.kind == "nn":
        missing = np.flatnonzero(~np.asarray(ref_data.has_energy, dtype=bool))
        if missing.size:
            option = ("--reference-train-groups" if isinstance(reference, np.ndarray)
                      else f"--reference-train {args.reference_train}")
            raise InputError(f"{option}: frame '{ref_data.names[missing[0]]}' has no energy "
                             f"({missing.size} of {len(ref_data.frames)}); with --model nn "
                             "the network is trained on the reference, which needs energies")
        with steps(f"training the network on the {len(ref_data.frames)} reference "
                   "structures"):
            ref_fit = prepare(ref_data, ref_desc, np.ones(len(ref_data.frames), dtype=bool),
                              spec, project=False)
        return ({"scale": ref_fit.scale, "nn": ref_fit.nn},
                {**provenance, "nn_trained_on": "reference"})
    with steps("reference feature space"):
        scale, nystrom = reference_space(ref_desc, atoms, spec)
    return {"scale": scale, "nystrom": nystrom}, provenance


class _FrameDescriptors:
    """Features of the frames of one dataset (a :class:`lprviz.sources.FeatureSource`),
    each distinct structure featurised at most once.

    Frames featurised for training (or the reference) are kept and reused when the same
    structure appears again (a test file that repeats training frames), as are structures
    that occur more than once in the dataset; any other frame is featurised when asked for
    and not kept, so test frames can stream through in chunks.
    """

    def __init__(self, data, source, species):
        from collections import Counter

        from lprviz.features import structure_key
        from lprviz.sources import read_array

        self.data, self.source, self.species = data, source, tuple(species)
        if source.kind == "array":
            # checked once over the whole dataset, so a bad frame is named by its index
            # before any work (chunks below read frames of subsets)
            read_array(data, source.array)
        self.keys = [structure_key(a) for a in data.frames]
        counts = Counter(self.keys)
        self.repeated = {k for k, n in counts.items() if n > 1}  # kept when first seen
        self.kept: dict[bytes, object] = {}  # structure key -> (n_atoms, d) array
        self.blocks: dict = {}
        self.provenance: dict = {}

    def descriptors(self, frames, progress=None, *, keep: bool = True):
        """:class:`lprviz.features.Descriptors` of ``frames`` (indices, in order)."""
        import numpy as np

        from lprviz.features import Descriptors

        frames = np.asarray(frames, dtype=np.int64)
        values = self._values(frames, progress, keep=keep)
        sizes = np.asarray(self.data.frame_sizes)[frames]
        return Descriptors(
            values=values,
            structure_index=np.repeat(np.arange(len(frames)), sizes),
            atom_numbers=np.concatenate([self.data.frames[i].numbers for i in frames])
            .astype(np.int64),
            species=self.species,
            blocks=self.blocks,
            hypers=self.source.hypers,
            provenance=self.provenance,
        )

    def _values(self, frames, progress, *, keep: bool):
        """Descriptor rows of ``frames``, in order (n_atoms, d)."""
        import numpy as np

        from lprviz.sources import descriptors_for

        first: dict[bytes, int] = {}
        for i in frames:  # distinct structures not featurised yet, in order
            key = self.keys[i]
            if key not in self.kept and key not in first:
                first[key] = int(i)
        new = {}
        if first:
            todo = list(first.values())
            desc = descriptors_for(self.data.subset(todo), self.source, species=self.species,
                                   progress=progress, cache=False)
            self.blocks, self.provenance = desc.blocks, desc.provenance
            sizes = np.asarray(self.data.frame_sizes)[todo]
            for key, part in zip(first, np.split(desc.values, np.cumsum(sizes)[:-1]),
                                 strict=True):
                new[key] = part
        elif progress is not None:
            progress(1, 1)
        self.kept.update({k: v for k, v in new.items() if keep or k in self.repeated})
        if first and len(first) == len(frames):  # all new and distinct: in order, no copy
            return desc.values
        return np.concatenate([self.kept[k] if k in self.kept else new[k]
                               for k in (self.keys[i] for i in frames)], axis=0)


# Test atoms per chunk of ``lprviz lpr``: featurise, project, evaluate, write, drop.
_CLI_CHUNK_ATOMS = 4000


def _test_chunks(data, test_frames, chunk_atoms: int):
    """Consecutive runs of ``test_frames`` with about ``chunk_atoms`` atoms each."""
    import numpy as np

    sizes = np.asarray(data.frame_sizes)[test_frames]
    chunk, atoms = [], 0
    for frame, n in zip(test_frames, sizes, strict=True):
        chunk.append(int(frame))
        atoms += int(n)
        if atoms >= chunk_atoms:
            yield np.asarray(chunk, dtype=np.int64)
            chunk, atoms = [], 0
    if chunk:
        yield np.asarray(chunk, dtype=np.int64)


def _chunk_results(fit, alphas, data, train_frames, chunk, phi, times, grads=None, *,
                   baseline=None):
    """:class:`lprviz.pipeline.Results` per alpha of the dataset ``train_frames + chunk``
    (training atoms get placeholders: ``lprviz lpr`` writes only the test frames), from the
    raw model features ``phi`` of the chunk and their ``baseline`` columns
    (:meth:`lprviz.pipeline.Fit.model_feature_blocks`; :func:`~lprviz.pipeline.evaluate_features`:
    nothing n_atoms x d is kept). With ``grads`` (the chunk's summed position gradients,
    force-trained models) also the predicted forces. Adds the time of each alpha to
    ``times``."""
    import dataclasses

    import numpy as np

    from lprviz.pipeline import evaluate_features

    sizes = np.asarray(data.frame_sizes)
    n_train, n_frames = int(sizes[train_frames].sum()), len(train_frames)
    block = evaluate_features(fit, phi, np.repeat(np.arange(len(chunk)), sizes[chunk]), alphas,
                              baseline=baseline)

    def padded(values, fill, n):
        return np.concatenate([np.full(n, fill, dtype=np.asarray(values).dtype), values])

    out = []
    for alpha in alphas:
        start = time.perf_counter()
        res = next(block)
        forces = None
        if grads is not None:
            from lprviz.models import predict_forces

            w = fit.solver.solve(fit.xty, alpha)
            forces = np.concatenate([np.full((n_train, 3), np.nan),
                                     predict_forces(grads, w, fit.solver.scale)])
        out.append(dataclasses.replace(
            res,
            train_mask=np.arange(n_frames + len(chunk)) < n_frames,
            lpr=padded(res.lpr, 1.0, n_train),
            undetermined=padded(res.undetermined, False, n_train),
            local_energy=padded(res.local_energy, 1.0, n_train),
            energy_pred=padded(res.energy_pred, 0.0, n_frames),
            pr=padded(res.pr, 1.0, n_frames),
            energies=np.concatenate([data.energies[train_frames], data.energies[chunk]]),
            data_share=padded(res.data_share, 1.0, n_train),
            forces_pred=forces,
        ))
        times[f"LPR at alpha={alpha:g}"] += time.perf_counter() - start
    return out


def _chunk_gradients(fit, data, chunk):
    """Summed position gradients (n_chunk_atoms, 3, d_base) of the chunk's frames, for the
    predicted forces of a force-trained model (not cached: test frames stream through)."""
    import numpy as np

    from lprviz.forces import position_gradients

    frames = [data.frames[i] for i in chunk]
    parts = dict(position_gradients(frames, fit.hypers, species=fit.species,
                                    nystrom=fit.nystrom, cache=False,
                                    names=[data.names[i] for i in chunk]))
    return np.concatenate([parts[i] for i in range(len(frames))], axis=0)


class _Behind:
    """Runs jobs one at a time on a background thread, in the order given, at most one
    waiting: :meth:`submit` first waits for the previous job (and raises its error), so
    the work overlaps by one step and memory holds at most two steps. Leaving the block
    waits for the running job (a file it writes stays open until it is done) and raises
    its error, also in place of an error of the block itself: the job's step came first
    (an interrupt is kept as it is)."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lprviz")
        self._pending = None

    def submit(self, fn, *args) -> None:
        self.wait()
        self._pending = self._pool.submit(fn, *args)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> _Behind:
        return self

    def __exit__(self, kind, value, _traceback) -> None:
        try:
            if kind is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)
        if kind is not None and issubclass(kind, Exception) and self._pending is not None:
            earlier = self._pending.exception()
            if isinstance(earlier, Exception):
                if earlier.__cause__ is None:  # keep a cause of its own
                    raise earlier from value
                raise earlier


# GIL switch interval of the streamed phase (Python's default is 5 ms); see _short_gil_turns.
_STREAM_SWITCH_INTERVAL = 1e-4


@contextlib.contextmanager
def _short_gil_turns(interval: float = _STREAM_SWITCH_INTERVAL):
    """Hand the GIL between threads every ``interval`` seconds inside the block.

    featomic calls back into Python for each structure's positions, cell and types at the
    start of every ``compute``; while the background thread holds the GIL (formatting the
    output, small numpy steps), each callback waits for the holder's turn to end. Measured
    on 400 structures: featomic took 2.2 s beside a busy Python thread at the default 5 ms,
    1.3 s at 0.1 ms (0.85 s alone); the CLI on 100k atoms gained ~0.2 s.
    """
    old = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _cmd_lpr(args: argparse.Namespace) -> int:
    """``lprviz lpr``: fit on the training frames, then stream the test frames in chunks of
    about :data:`_CLI_CHUNK_ATOMS` atoms (featurise, evaluate, write, drop). Every distinct
    structure is featurised once; peak memory is the training set plus two chunks (one
    being featurised, one evaluated and written on the background thread)."""
    import numpy as np

    from lprviz.export import annotated_frames, write_annotated
    from lprviz.pipeline import prepare
    from lprviz.rigidity import _one_thread

    steps = _Steps(enabled=not args.quiet)
    alphas = _parse_alphas(args.alpha)
    _check_numbers(args)
    source, kind = _feature_source(args)
    spec = _model_spec(args, kind)
    _check_output(args.output, "-o", {
        "--train": args.train, "--test": args.test, "--dataset": args.dataset,
        "--reference-train": args.reference_train}, stdout=True)
    collector = _summary_collector(args, alphas)
    if collector is not None:
        _refuse_shared_outputs([("-o", args.output), *_summary_outputs(args)])
    if args.workers is not None or args.scheduler is not None:
        from lprviz.distributed import run_lpr

        if source.kind != "soap":
            option = (f"--features-array {args.features_array}" if source.kind == "array"
                      else f"--model {args.model}")
            raise InputError(f"{option} ({source.label}): not available with --workers/"
                             "--scheduler (the distributed run computes SOAP features on its "
                             "workers)")
        n_frames, _, lprs, undetermined = run_lpr(args, steps, alphas, source.hypers, spec,
                                                  collector)
        return _finish_lpr(args, steps, collector, n_frames, lprs, alphas[0], undetermined)
    if args.process_entry:
        tune_process_memory()
    with steps("loading structures"), collector_paused(args.process_entry):
        data, train = _lpr_inputs(args)
        reference = _reference_set(args, data)
    species = getattr(reference, "species", data.species)  # a reference file fixes them
    checking = (steps(f"checking {source.label}") if source.kind == "array"
                else contextlib.nullcontext())
    with checking:
        store = _FrameDescriptors(data, source, species)
    train_frames = np.flatnonzero(train)
    test_frames = np.flatnonzero(~train)
    with steps(source.label, bar=True) as progress:  # of the training structures
        desc_train = store.descriptors(train_frames, progress)
    space, provenance = _reference_space(args, reference, data, desc_train, spec, steps,
                                         store=store, features=source)
    label, force_weight = _fit_step(args, kind, train_frames.size)
    with steps(label):
        fit = prepare(data.subset(train_frames), desc_train,
                      np.ones(train_frames.size, dtype=bool), spec, **space,
                      project=False, force_weight=force_weight)
        blocks = None
        if args.lcpr:
            from lprviz.validation import fit_blocks

            blocks = fit_blocks(fit, desc_train)
        del desc_train
    if fit.notice:
        _note(fit.notice)
    _note_unseen_elements(data, train)  # once the model stands
    n_test_atoms = int(np.asarray(data.frame_sizes)[test_frames].sum())
    summary, undetermined = [], []
    # the streamed phases, reported as steps of their own (times summed over chunks)
    featurise = f"{source.label} of the test structures"
    writing = f"writing {_output_name(args.output)}"
    times = dict.fromkeys([featurise,
                           *(["SOAP gradients of the test structures"] if args.forces else []),
                           *(f"LPR at alpha={a:g}" for a in alphas),
                           *(["LCPR per descriptor block"] if args.lcpr else []),
                           writing], 0.0)

    bar = not args.quiet and _bars_shown()
    progress = _progress_bar("test structures", enabled=bar)
    done = 0

    def finish(fh, chunk, desc, grads) -> None:
        """Model features, LPR, output and summary of one featurised chunk (on the
        background thread; the model features' time counts in the first alpha's)."""
        nonlocal done
        start = time.perf_counter()
        phi, baseline = fit.model_feature_blocks(desc.values, desc.atom_numbers)
        del desc
        times[f"LPR at alpha={alphas[0]:g}"] += time.perf_counter() - start
        results = _chunk_results(fit, alphas, data, train_frames, chunk, phi, times, grads,
                                 baseline=baseline)
        lcpr = {}
        if blocks is not None:
            start = time.perf_counter()
            pad = np.full(len(results[0].lpr) - len(phi), np.nan)
            full = phi if baseline is None else np.hstack([phi, baseline])
            lcpr = {"lcpr_" + re.sub(r"[^A-Za-z0-9_]+", "", k.replace("-", "_")):
                    np.concatenate([pad, v])
                    for k, v in fit.solver.lcpr(full, alphas[0], blocks).items()}
            times["LCPR per descriptor block"] += time.perf_counter() - start
        start = time.perf_counter()
        part = data.subset(np.concatenate([train_frames, chunk]))
        schema = {"include_training": False, "atom_arrays": lcpr,
                  "extra_provenance": provenance}
        write_annotated(fh, part, results, **schema)
        # copies only for --sample's texts (the same bytes as in the output)
        annotated = (annotated_frames(part, results, **schema)
                     if collector is not None and collector.n_sample else None)
        times[writing] += time.perf_counter() - start
        summary.append(results[0].lpr[-len(phi):])
        undetermined.append(int(np.count_nonzero(results[0].undetermined[-len(phi):])))
        if collector is not None:
            _summarise_chunk(collector, data, chunk, np.searchsorted(test_frames, chunk),
                             results[0], summary[-1], annotated)
        done += len(phi)
        progress(done, n_test_atoms)

    def write(fh) -> None:
        progress(0, n_test_atoms)
        # Each chunk's LPR and writing run behind the next chunk's featurisation. featomic
        # releases the GIL and runs threads of its own (~1.5 cores busy alone), so with SOAP
        # the streamed phase has one BLAS thread (no oversubscribed cores; other sources
        # keep every thread) and short GIL turns for featomic's callbacks.
        # The distributed workers' test chunks run the same way (distributed._test_chunk):
        # a sparse kernel's features carry the GEMM's summation order at ~1e-8.
        # (_Behind inside: the last chunk finishes before the limits are lifted)
        with _one_thread(source.kind == "soap"), _short_gil_turns(), _Behind() as behind:
            for chunk in _test_chunks(data, test_frames, _CLI_CHUNK_ATOMS):
                start = time.perf_counter()
                desc = store.descriptors(chunk, keep=False)
                times[featurise] += time.perf_counter() - start
                grads = None
                if args.forces:
                    start = time.perf_counter()
                    grads = _chunk_gradients(fit, data, chunk)
                    times["SOAP gradients of the test structures"] += (time.perf_counter()
                                                                       - start)
                behind.submit(finish, fh, chunk, desc, grads)

    try:
        _write_atomically(args.output, "-o", write)
    finally:
        if bar:
            print(file=sys.stderr, flush=True)  # ends the line of the test-structure bar
    steps.report(times)
    return _finish_lpr(args, steps, collector, test_frames.size, summary, alphas[0],
                       sum(undetermined))


def _note_unseen_elements(data, train) -> None:
    """A note on stderr naming the elements of the test structures (``~train``) that no
    training structure contains: the model's answer for them comes from the regulariser,
    and their low LPRs are the point, not a failure (nothing is refused)."""
    import numpy as np

    in_training = train[data.structure_index]
    _note_unseen(np.setdiff1d(data.atom_numbers[~in_training],
                              data.atom_numbers[in_training]).tolist())


def _note_unseen(unseen: Sequence[int]) -> None:
    """The note of :func:`_note_unseen_elements` for the atomic numbers ``unseen`` (none:
    no note); also the distributed run's, from its scan."""
    from ase.data import chemical_symbols

    if len(unseen):
        names = ", ".join(chemical_symbols[z] for z in sorted(unseen))
        _note(f"no training structure contains {names}: what the model "
              "predicts for these elements is set by the regulariser, not by data (expect "
              "low LPRs on and near their atoms)")


def _summary_collector(args: argparse.Namespace, alphas: list[float]):
    """The :class:`lprviz.summary.SummaryCollector` of ``--summary`` (None without it)."""
    if args.summary is None:
        if args.sample:
            raise InputError("--sample: also give --summary PATH (the sample is written next "
                             "to it)")
        return None
    if Path(args.summary).suffix.lower() not in (".csv", ".json"):
        raise InputError(f"--summary {args.summary}: expected a .csv or .json file name")
    if not 0 <= args.sample <= 10_000:
        raise InputError(f"--sample: expected 0..10000 structures, got {args.sample}")
    inputs = {"--train": args.train, "--test": args.test, "--dataset": args.dataset,
              "--reference-train": args.reference_train}
    for option, path in _summary_outputs(args):
        _check_output(path, option, inputs)
    from lprviz.summary import SummaryCollector

    return SummaryCollector(alphas[0], n_sample=args.sample)


def _summary_outputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(option, path)`` of ``--summary`` and the files written next to it (CSV tables,
    ``--sample``); the option names the file in messages."""
    path = Path(args.summary)
    out = [("--summary", str(path))]
    if path.suffix.lower() == ".csv":
        out += [("--summary", str(path.with_suffix(f".{t}.csv")))
                for t in ("lowest_structures", "lowest_atoms")]
    if args.sample:
        out.append(("--sample", str(path.with_suffix(".sample.extxyz"))))
    return out


def _summary_files(args: argparse.Namespace) -> list[str]:
    """The paths of :func:`_summary_outputs`."""
    return [path for _, path in _summary_outputs(args)]


def _summarise_chunk(collector, data, chunk, out_frames, first, lpr, annotated) -> None:
    """Add one serial test chunk to ``collector`` (``lpr``: the chunk's atoms, first alpha)."""
    import numpy as np

    from lprviz.summary import chunk_summary

    atoms = np.concatenate([np.arange(data.frame_starts[f], data.frame_starts[f + 1])
                            for f in chunk])
    collector.add(chunk_summary(
        out_frames, [data.names[f] for f in chunk], data.groups[chunk].tolist(),
        np.asarray(data.frame_sizes)[chunk], data.atom_numbers[atoms], lpr,
        first.undetermined[-len(lpr):], n_sample=collector.n_sample, annotated=annotated))


def _finish_lpr(args, steps, collector, n_frames: int, lprs: list, alpha: float,
                undetermined: int) -> int:
    """Write the ``--summary`` files and print the closing line of ``lprviz lpr``; a note
    when ``undetermined`` test atoms (at ``alpha``) have an LPR set by numerical resolution
    (printed with ``-q`` too, as the other notes)."""
    import numpy as np

    if collector is not None:
        files = _summary_files(args)
        with steps(f"writing {args.summary}"):
            if files[0].lower().endswith(".json"):
                _write_atomically(files[0], "--summary", collector.write_json)
            else:
                for path, table in zip(files, ("quantiles", "lowest_structures",
                                               "lowest_atoms"), strict=False):
                    _write_atomically(path, "--summary",
                                      lambda fh, t=table: collector.write_csv(fh, t), newline="")
            if args.sample:
                _write_atomically(files[-1], "--sample",
                                  lambda fh: fh.write(collector.sample_text()))
    n_atoms = sum(len(part) for part in lprs)
    if undetermined:
        _note(f"{undetermined} of {n_atoms} test atoms are undetermined at "
              f"alpha={alpha:g}: the data cannot fix their local energy and their LPR is set "
              "by numerical resolution (an upper bound of the exact value); raise alpha")
    if not args.quiet:
        lpr = np.concatenate(lprs) if lprs else np.zeros(0)
        print(
            f"wrote {n_frames} structures ({n_atoms} atoms) to {_output_name(args.output)}; "
            f"LPR at alpha={alpha:g}: median {np.median(lpr):.3g}, min {lpr.min():.3g}",
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
    _check_feature_arrays(args, *parts)
    parts[0] = _training_part(parts[0], args.train, args.train_groups)
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
    pool = (frame >= sizes[0]) & (frame < sizes[0] + sizes[1])
    if args.pool_groups:  # the pool file stays whole: "frame" numbers its structures
        pool &= np.concatenate([np.zeros(sizes[0], dtype=bool),
                                _group_mask(parts[1], args.pool_groups, "--pool-groups"),
                                np.zeros(sum(sizes[2:]), dtype=bool)])
    pool = np.flatnonzero(pool)
    target = None
    if args.target is not None:
        target = data.structure_index >= sizes[0] + sizes[1]
    if args.target_groups:  # atoms of those groups (of the --target file, when given)
        in_groups = _group_mask(data if args.target is None else parts[2], args.target_groups,
                                "--target-groups")
        if args.target is not None:
            in_groups = np.concatenate([np.zeros(sizes[0] + sizes[1], dtype=bool), in_groups])
        target = in_groups[data.structure_index]
    return data, train, pool, None if target is None else np.flatnonzero(target)


def _cmd_suggest(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from lprviz.pipeline import evaluate, prepare
    from lprviz.sources import descriptors_for
    from lprviz.suggest import (
        force_pool,
        lowest_lpr_atoms,
        random_additions,
        suggest_from_projections,
    )

    steps = _Steps(enabled=not args.quiet)
    source, kind = _feature_source(args)
    alphas = _parse_alphas(args.alpha)
    if len(alphas) != 1:
        raise InputError(f"--alpha: expected one number, got {args.alpha!r}")
    alpha = alphas[0]
    _check_numbers(args)
    if args.csv:
        _check_output(args.csv, "--csv", {
            "--train": args.train, "--pool": args.pool, "--target": args.target,
            "--dataset": args.dataset})
    with steps("loading structures"):
        data, train, pool, target = _suggest_inputs(args)
    spec = _model_spec(args, kind)
    with steps(source.label, bar=True) as progress:
        desc = descriptors_for(data, source, progress=progress)
    label, force_weight = _fit_step(args, kind, int(train.sum()))
    with steps(label):
        fit = prepare(data, desc, train, spec, force_weight=force_weight)
    if fit.notice:
        _note(fit.notice)
    if target is None:
        with steps(f"LPR at alpha={alpha:g}"):
            res = evaluate(fit, alpha)
        rest = np.flatnonzero(~train[data.structure_index])
        target = rest[lowest_lpr_atoms(res.lpr[rest], args.target_fraction)]
        what = f"lowest-LPR {args.target_fraction * 100:.3g}% of non-training atoms"
    else:
        what = "given target"
    if target.size == 0:
        raise InputError("target: no atoms selected")
    P, Q = fit.atom_projections(target), fit.structure_projections[pool]
    if args.forces:  # each candidate adds its energy row and 3 N force rows
        with steps(f"force rows of {pool.size} candidate structures"):
            Q = force_pool(fit, data, pool)
        if Q.notice:
            _note(Q.notice)
    if args.k > pool.size:
        _note(f"-k {args.k}: the pool has {pool.size} candidate structures; "
              "ranking all of them")
    with steps(f"ranking {pool.size} candidate structures"):
        sug = suggest_from_projections(fit.solver, P, Q, alpha, args.k)
    frames = pool[sug.chosen]
    # "frame": the index in the file the structure comes from (the pool file, or the dataset)
    first = 0 if args.dataset is not None else int(train.sum())  # where the pool file starts
    table = pd.DataFrame({
        "step": np.arange(1, len(frames) + 1),
        "frame": frames - first,
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
        with steps(f"{args.random_seeds} random draws"):
            rand = random_additions(fit.solver, P, Q, alpha, len(frames),
                                    n_seeds=args.random_seeds)
        factor = np.exp(rand[:, -1] - rand[:, 0])
        print(f"random {len(frames)} additions ({args.random_seeds} draws): LPR factor "
              f"{factor.mean():.4g} (min {factor.min():.4g}, max {factor.max():.4g}); "
              f"guided: {table['lpr_factor'].iloc[-1]:.4g}")
    if args.csv:
        with steps(f"writing {args.csv}"):
            _write_atomically(args.csv, "--csv", lambda fh: table.to_csv(fh, index=False),
                              newline="")
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

    before = {r.name for r in datasets.list_available() if r.kind == "imported"}
    info = datasets.import_file(args.file, name=args.name)
    if info.kind == "imported" and info.name in before:
        _note(f"'{info.name}' replaces the earlier import of that name")
    if info.kind == "fetchable" and not info.cached:
        missing = ", ".join(p.name for p in info.files if not p.is_file())
        print(f"stored as a file of '{info.name}' ({info.path}); it loads by that name once "
              f"{missing} is there too (import it, or lprviz datasets fetch {info.name}); to "
              "use this file alone now, import it with --name NAME")
    else:
        print(f"imported as '{info.name}' ({info.kind}): {info.path}")
    return 0


def _cmd_app(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lprviz.app.server import serve

    if args.threedmol_js and not Path(args.threedmol_js).is_file():
        raise InputError(f"--3dmol-js {args.threedmol_js}: expected an existing 3Dmol-min.js file")
    if not 0 < args.port < 65536:
        raise InputError(f"--port: expected 1..65535, got {args.port}")
    return serve(address=args.address, port=args.port, threedmol_js=args.threedmol_js,
                 fetch_3dmol=not args.no_fetch_3dmol)


def _cmd_fetch_3dmol(args: argparse.Namespace) -> int:
    from lprviz import threedmol

    path = threedmol.fetch(args.dest)
    print(f"{path}  (3dmol@{threedmol.VERSION}, integrity verified)")
    return 0


def _add_force_options(p: argparse.ArgumentParser, effect: str) -> None:
    """``--forces`` and ``--force-weight`` (one definition for ``lpr`` and ``suggest``);
    ``effect`` ends the help of ``--forces``."""
    from lprviz.pipeline import DEFAULT_FORCE_WEIGHT

    p.add_argument("--forces", action="store_true",
                   help="train on forces too (training frames need forces; frames without "
                        "them count for energies only, with a note): the LPR of a potential "
                        f"fitted to energies and forces; {effect}")
    p.add_argument("--force-weight", type=float, default=None,  # DEFAULT_FORCE_WEIGHT
                   help="with --forces: weight lambda_F of the squared force errors, in "
                        "A^2/atom^2 (energies enter per atom in eV/atom, forces in eV/A). "
                        f"Default {DEFAULT_FORCE_WEIGHT:g}: "
                        "forces and energies then add about equal curvature to the model "
                        "on the shipped emt-alloys data and real Si (docs/science.md §12)")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """The feature-source and model options of ``lprviz lpr`` and ``lprviz suggest`` (read
    back by :func:`_feature_source` and :func:`_model_spec`)."""
    from lprviz.pipeline import MODEL_KINDS
    from lprviz.sources import backbone_names

    kinds = (*MODEL_KINDS, *backbone_names())
    p.add_argument("--model", metavar="{" + ",".join(kinds) + "}", default="linear",
                   help="readout model: linear / sparse-kernel / nn (a small network trained "
                        "on SOAP; its last hidden layer gives the LLPR), or a pretrained "
                        "backbone whose last-layer features get a linear readout refit on "
                        "the training set (needs pip install 'lprviz[nn]')")
    p.add_argument("--nn-hidden", type=int,
                   help="nn model: width of the hidden layers (default 32)")
    p.add_argument("--nn-seed", type=int, help="nn model: training seed (default 0)")
    p.add_argument("--features-array", metavar="NAME",
                   help="features from the per-atom array NAME of the input files (e.g. "
                        "descriptors written into the extxyz) instead of SOAP")
    p.add_argument("--n-sparse", type=int,
                   help="active environments of the sparse-kernel model (default 500)")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="per-species composition baseline in the model (default on)")
    p.add_argument("--preset", default=None,
                   help="SOAP preset: fast, default (the default), accurate")
    p.add_argument("--cutoff", type=float, help="SOAP cutoff radius in A (overrides preset)")
    p.add_argument("--max-radial", type=int, help="SOAP largest radial index (inclusive)")
    p.add_argument("--max-angular", type=int, help="SOAP largest angular channel l")
    p.add_argument("--gaussian-width", type=float, help="SOAP Gaussian width in A")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``lprviz`` command."""
    from lprviz import __version__

    parser = argparse.ArgumentParser(prog="lprviz", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lprviz {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("lpr", help="per-atom LPR of test structures")
    p.add_argument("--train", help="training structures with energies: file or dataset name")
    p.add_argument("--test", help="structures to compute the LPR of: file or dataset name")
    p.add_argument("--dataset", help="one dataset split by group (use with --train-groups)")
    p.add_argument("--train-groups",
                   help="comma-separated groups to train on: of --dataset (the other groups "
                        "are the test set), or of the --train file (its other groups are left "
                        "out)")
    p.add_argument("--alpha", default="1e-4",
                   help="regulariser(s), comma-separated (default 1e-4)")
    _add_model_options(p)
    p.add_argument("--scale", type=float, default=None,
                   help="fixed feature scale (default: sfactor of the training atoms)")
    p.add_argument("--reference-train", metavar="FILE",
                   help="reference training set (file or dataset name; no energies needed) "
                        "that fixes the feature scale, the sparse-kernel active set and the "
                        "element list. Use it whenever LPRs of several runs are compared (e.g. "
                        "before and after adding training structures): without it each run "
                        "picks its own from its training set, and the numbers are not "
                        "comparable. With a fixed reference, adding training structures never "
                        "lowers an LPR")
    p.add_argument("--reference-train-groups", metavar="G1,G2",
                   help="with --dataset: these groups are the reference training set (as "
                        "--reference-train)")
    p.add_argument("--lcpr", action="store_true",
                   help="also write per-atom LCPR of each descriptor block (species pair, "
                        "angular channel, baseline) as arrays lcpr_<block>; linear model only; a "
                        "block absent from an atom's environment gets ~1e308 (unbounded)")
    _add_force_options(p, "the output gains forces_pred (eV/A)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run on a local Dask cluster of N worker processes (SOAP with "
                        "the linear or sparse-kernel model; needs pip install 'lprviz[dask]')")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on a running Dask scheduler, e.g. tcp://host:8786 (workers need "
                        "the same lprviz version)")
    p.add_argument("--summary", default=None, metavar="PATH",
                   help="also write per-group/per-species LPR quantiles and the lowest-LPR "
                        "structures and atoms (run.json, or run.csv plus "
                        "run.lowest_structures.csv and run.lowest_atoms.csv)")
    p.add_argument("--sample", type=int, default=0, metavar="N",
                   help="with --summary run.json (or run.csv): also write the N lowest-LPR "
                        "structures to run.sample.extxyz")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress (steps and times on stderr) or summary")
    p.add_argument("-o", "--output", required=True,
                   help="output extxyz of the test structures (schema: docs/output_schema.md); "
                        "replaced atomically, never one of the input files; a name of another "
                        "format (.csv, .json, .traj...) is refused; '-': standard output")
    p.set_defaults(func=_cmd_lpr)

    p = sub.add_parser("suggest", help="structures to add to training to raise a target's LPR")
    p.add_argument("--train", help="training structures with energies: file or dataset name")
    p.add_argument("--pool", help="candidate structures (no energies needed): file or name")
    p.add_argument("--target", help="structures whose atoms are the target (default: the "
                   "lowest-LPR --target-fraction of the non-training atoms)")
    p.add_argument("--dataset", help="one dataset split by group (use with --train-groups)")
    p.add_argument("--train-groups", help="comma-separated groups to train on: of --dataset, "
                   "or of the --train file (its other groups are left out)")
    p.add_argument("--pool-groups", help="groups of --dataset, or of the --pool file, to draw "
                   "candidates from (default: all non-training frames)")
    p.add_argument("--target-groups", help="groups whose atoms are the target (of --dataset, "
                   "of the --target file, or else of the training and pool files)")
    p.add_argument("--target-fraction", type=float, default=0.05,
                   help="target = this lowest-LPR fraction when no target is given (0.05)")
    p.add_argument("-k", type=int, default=10, help="structures to pick greedily (default 10)")
    p.add_argument("--alpha", default="1e-4", help="regulariser (default 1e-4)")
    _add_model_options(p)
    _add_force_options(p, "each candidate is ranked by the energy row and the 3 N force "
                          "rows it adds (a candidate without forces: its energy row only)")
    p.add_argument("--random-seeds", type=int, default=5,
                   help="random draws of k additions to compare with (default 5; 0: none)")
    p.add_argument("--csv", help="also write the ranked table to this CSV file (replaced "
                   "atomically, never one of the input files; its 'frame' is the index in "
                   "the --pool file, or in the --dataset)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress (steps and times on stderr)")
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
    p.add_argument("--name", default=None, help="name to load it by (default: the file's "
                   "name without its format and compression suffixes)")
    p.set_defaults(func=_cmd_datasets_import)

    p = sub.add_parser(
        "app", help="start the Streamlit app",
        description="Start the app (Ctrl-C or kill stops it). It listens on 127.0.0.1 only; "
                    "--address 0.0.0.0 lets other machines connect (a classroom): anyone who "
                    "can reach the port can then upload files and use the server's CPU, and "
                    "the connection is plain HTTP, so do that only on a network you trust.")
    p.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    p.add_argument("--address", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--3dmol-js", dest="threedmol_js", default=None,
                   help="local 3Dmol-min.js (else $LPRVIZ_3DMOL_JS, else the user cache, "
                        "filled once from the npm package 3dmol)")
    p.add_argument("--no-fetch-3dmol", action="store_true",
                   help="do not fetch 3Dmol.js with npm when there is no local copy")
    p.set_defaults(func=_cmd_app)

    p = sub.add_parser("fetch-3dmol", help="get 3Dmol.js (npm package 3dmol, integrity "
                       "checked) for the offline 3D viewer")
    p.add_argument("--dest", default=None,
                   help="directory for 3Dmol-min.js (default: the user cache, where the app "
                        "looks)")
    p.set_defaults(func=_cmd_fetch_3dmol)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lprviz`` command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.process_entry = argv is None  # the command itself, not a caller's process
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"lprviz: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C: one line, the shell's 128 + SIGINT status; every file writer (caches,
        # output) removes its temporary file in a finally block, so nothing partial is left
        # (but standard output, -o -, is cut short where it was).
        print("lprviz: interrupted", file=sys.stderr)  # a step already ended its line
        # Objects the interrupt left half-built are freed after this block; featomic's
        # calculator __del__ then raises (and would print a traceback). We are exiting.
        sys.unraisablehook = lambda unraisable: None
        return 130


if __name__ == "__main__":
    sys.exit(main())
