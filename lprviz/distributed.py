"""``lprviz lpr`` on a Dask cluster (``--workers N`` or ``--scheduler ADDRESS``).

The client cuts an extxyz input into blocks of whole frames (their text: a line walk, no
parsing; never the whole file in memory) and sends each block to the workers, which parse
and check it (:func:`lprviz.datasets.validate_frames`), featurise
(:func:`lprviz.features.compute_soap`) and do all per-atom work. Three passes over the input:

1. a scan on the workers: species (they fix the descriptor layout), groups, frame counts,
   energies of the training frames;
2. training chunks: each worker task returns the raw ``X^T X``, ``X^T y`` and sums of
   squares of its chunk's mean rows, and these are added pairwise on the workers (a tree of
   partial sums), so only ``d x d`` matrices and ``d``-vectors travel. The client builds the
   :class:`~lprviz.rigidity.RigiditySolver` (:meth:`~lprviz.rigidity.RigiditySolver.from_gram`)
   and factorises it once; the fitted model is broadcast to the workers;
3. test chunks: each task featurises, evaluates (:func:`lprviz.cli._chunk_results`, the
   serial command's own per-chunk function) and returns the chunk's extxyz text and its
   :class:`~lprviz.summary.ChunkSummary`; the client writes the texts in frame order with a
   bounded number of chunks in flight.

The sparse-kernel model adds a pass before 2: the workers return the training atoms' SOAP,
the client gathers them (at most ``LPRVIZ_MAX_ARRAY_BYTES``), picks the active environments
by FPS (:func:`lprviz.models.fit_nystrom`, as the serial run) and broadcasts the Nyström
map; the workers then sum the Nyström features' ``X^T X`` as for the linear model.

Client memory is ``O(d^2)`` plus a bounded number of chunks, 4 bytes per test atom for the
closing line's median and, with ``--summary``, 10 more (the sparse kernel: plus the
training SOAP during FPS). Sums follow :mod:`lprviz.gramsum`'s order, so the results are
the serial run's. A killed worker's tasks are re-run by Dask on the others (their inputs
are held by the scheduler), so the result is unchanged.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lprviz.cli import _group_names, _note_unseen, _training_left
from lprviz.errors import InputError

__all__ = ["DASK_HINT", "connect", "gather_training", "iter_chunks", "reduce_training",
           "run_lpr"]

DASK_HINT = "pip install 'lprviz[dask]'"

#: Test or training atoms per task (as the serial command's chunks).
CHUNK_ATOMS = 4000

#: Seconds to wait for a ``--scheduler`` before giving up.
CONNECT_TIMEOUT = 10.0

# Suffixes read frame by frame with ase.io.iread; other formats (mlearn JSON, compressed
# files) are one document and are loaded whole, then cut into chunks.
_STREAMED = (".xyz", ".extxyz", "")


def _distributed():
    try:
        import distributed
    except ImportError:
        raise InputError(f"--workers/--scheduler need Dask: {DASK_HINT}") from None
    return distributed


@contextlib.contextmanager
def connect(workers: int | None = None, scheduler: str | None = None, *,
            timeout: float | None = None, memory_limit: str | float = "auto"):
    """A ``distributed.Client``: of a new ``LocalCluster`` of ``workers`` processes (one
    thread each, ``memory_limit`` per worker) or of the running ``scheduler``; both closed
    on exit (also on Ctrl-C).

    Raises
    ------
    InputError
        Dask missing, ``workers < 1``, or a scheduler not reached within ``timeout`` seconds.
    """
    dd = _distributed()
    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    if (workers is None) == (scheduler is None):
        raise InputError("give one of --workers N or --scheduler ADDRESS")
    with contextlib.ExitStack() as stack:
        if scheduler is not None:
            try:
                client = dd.Client(scheduler, timeout=timeout)
            except (OSError, TimeoutError, ValueError) as exc:
                msg = " ".join(str(exc).split())[:160] or type(exc).__name__
                waited = (f" within {timeout:g} s" if isinstance(exc, TimeoutError)
                          or "timed out" in msg.lower() else "")
                raise InputError(f"--scheduler {scheduler}: cannot reach a Dask scheduler"
                                 f"{waited} ({msg})") from None
        else:
            if workers < 1:
                raise InputError(f"--workers: expected at least 1, got {workers}")
            # featomic's thread pool would otherwise use every core in every worker
            cluster = stack.enter_context(dd.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True,
                # errors reach the command through the futures; the workers' own log lines
                # (a heartbeat racing the cluster's close) are noise on its stderr
                memory_limit=memory_limit, dashboard_address=":0",
                silence_logs=logging.CRITICAL,
                env={"RAYON_NUM_THREADS": "1"}))
            client = dd.Client(cluster)
        stack.enter_context(client)
        if scheduler is not None:
            _check_workers(client, scheduler, timeout)
        yield client


def _submit_value(client, value):
    """A future of ``value`` as a task (not scattered data: if every worker holding it dies,
    the scheduler recomputes it). Dask warns that such a graph is large (a fitted model is
    tens of MB) and suggests scattering; that warning, and only it, is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
        return client.submit(_same, value, pure=False)


def _lprviz_version() -> str | None:
    try:
        from lprviz import __version__
    except ImportError:
        return None
    return __version__


def _check_workers(client, scheduler: str, timeout: float) -> None:
    """At least one worker, each with this lprviz version (tasks are this module's
    functions, pickled by reference)."""
    from lprviz import __version__

    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise InputError(f"--scheduler {scheduler}: no worker connected within {timeout:g} s; "
                         "start workers with: dask worker " + scheduler) from None
    versions = client.run(_lprviz_version)
    wrong = {w: v for w, v in versions.items() if v != __version__}
    if wrong:
        worker, version = next(iter(wrong.items()))
        raise InputError(f"--scheduler {scheduler}: worker {worker} has lprviz "
                         f"{version or 'not installed'}, this client {__version__} "
                         f"({len(wrong)} of {len(versions)} workers differ); install the same "
                         "version on the workers")


# ------------------------------------------------------------------------- reading
@dataclass
class _Source:
    """An input resolved to a streamable file (``path``) or a loaded dataset (``data``)."""

    name: str
    label: str
    path: Path | None = None
    data: object = None


def _resolve(value: str) -> _Source:
    from lprviz import datasets
    from lprviz.datasets import registry

    if value in registry._SHIPPED:
        path = registry.shipped_dir() / registry._SHIPPED[value].filename
        return _Source(value, path.name, path=path)
    path = Path(value).expanduser()
    if value not in registry._imported_files() and path.is_file() \
            and path.suffix.lower() in _STREAMED and _xyz_text(path):
        return _Source(path.name, path.name, path=path)
    data = datasets.load(value)  # names, JSON and compressed files: loaded whole
    return _Source(data.name, data.name, data=data)


def _xyz_text(path: Path) -> bool:
    """Whether ``path`` streams as (ext)xyz: any ``.xyz``/``.extxyz``, and a file without a
    suffix whose first line is an atom count (others go to ASE's format detection, as the
    serial readers do)."""
    from lprviz.datasets import readers

    if path.suffix:
        return True
    with open(path, "rb") as fh:
        return readers._xyz_count_line(fh.read(4096))


def _chunk_dataset(source: _Source, frames, start: int):
    """A Dataset of ``frames`` (the file's frames ``start...``), checked as ``load`` does."""
    from lprviz.datasets import readers, registry

    meta = {"groups": readers._groups_from_info(frames, None, source=source.label),
            "names": [str(a.info.get("name", f"{source.label}#{start + i}"))
                      for i, a in enumerate(frames)],
            "splits": [readers._split_from_info(a) for a in frames]}
    for a in frames:
        readers._energy_to_calc(a)
    try:
        return registry._build(source.name, frames, meta, source=source.label,
                               max_atoms=max(readers.max_atoms_in_force(), sum(map(len, frames))),
                               provenance=f"file {source.label}", licence="")
    except InputError as exc:  # frame numbers of the file, not of the chunk
        raise InputError(re.sub(r"frame (\d+)", lambda m: f"frame {start + int(m[1])}",
                                str(exc), count=1)) from None


@dataclass
class _Block:
    """The text of consecutive extxyz frames ``start...`` of a file, parsed on a worker."""

    text: str
    name: str
    label: str
    start: int


def _text_blocks(source: _Source, chunk_atoms: int) -> Iterator[_Block]:
    """Blocks of whole frames of about ``chunk_atoms`` atoms: the walk of
    ``readers._check_xyz_counts`` (count line, comment, one line per atom, ``VEC`` lines;
    stop at the first blank line), each comment's ``Properties`` checked on the way."""
    from lprviz.datasets import readers
    from lprviz.limits import get_limits

    label = source.label
    head = readers._sniff(source.path, label)
    if not head or not readers._is_text(head):
        raise InputError(f"{label}: expected an extended XYZ text file")
    lines: list[str] = []
    start = frame = atoms = 0
    limit = get_limits().max_columns
    try:
        with open(source.path) as fh:  # default encoding and newlines, as ase.io.read
            line = fh.readline()
            while line.strip():
                try:
                    n = int(line)
                except ValueError:
                    raise InputError(f"{label}: frame {frame}: expected the number of atoms, "
                                     f"got {line.strip()[:40]!r}") from None
                if n < 1:
                    raise InputError(f"{label}: frame {frame}: has {n} atoms")
                comment = fh.readline()
                readers._check_properties(comment, f"{label}: frame {frame}", limit)
                lines += [line, comment]
                for _ in range(n):
                    row = fh.readline()
                    if not row:
                        raise InputError(f"{label}: frame {frame}: the file ends inside the "
                                         f"frame ({n} atoms claimed)")
                    lines.append(row)
                line = fh.readline()
                while line.lstrip().startswith("VEC"):
                    lines.append(line)
                    line = fh.readline()
                frame += 1
                atoms += n
                if atoms >= chunk_atoms:
                    yield _Block("".join(lines), source.name, label, start)
                    lines, start, atoms = [], frame, 0
    except UnicodeDecodeError:
        raise InputError(f"{label}: not a UTF-8 text file") from None
    if lines:
        yield _Block("".join(lines), source.name, label, start)
    elif frame == 0:
        raise InputError(f"{label}: no structures found")


def _materialise(item):
    """The Dataset of a chunk: parsed and checked from a :class:`_Block`, or as given."""
    import ase.io

    if not isinstance(item, _Block):
        return item
    try:
        frames = ase.io.read(io.StringIO(item.text), index=":", format="extxyz")
    except Exception as exc:  # ASE raises many types for malformed files
        msg = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise InputError(f"{item.label}: cannot read structures from frame {item.start} on "
                         f"({msg})") from None
    return _chunk_dataset(_Source(item.name, item.label), list(frames), item.start)


def _items(value: str, chunk_atoms: int) -> Iterator[tuple[int, object]]:
    """``(first_frame, chunk)``: :class:`_Block` texts of an extxyz file, else Datasets cut
    from the whole input (mlearn JSON and compressed files are one document)."""
    source = _resolve(value)
    if source.data is None:
        for block in _text_blocks(source, chunk_atoms):
            yield block.start, block
        return
    data = source.data
    start = 0
    for stop in _cuts(np.asarray(data.frame_sizes), chunk_atoms):
        yield start, data.subset(np.arange(start, stop))
        start = stop


def iter_chunks(value: str, chunk_atoms: int = CHUNK_ATOMS) -> Iterator[tuple[int, object]]:
    """``(first_frame, Dataset)`` chunks of about ``chunk_atoms`` atoms of an input.

    An extxyz file is cut into blocks of whole frames by a line walk (no parsing), each
    parsed and checked with :func:`lprviz.datasets.validate_frames` (limits of
    :mod:`lprviz.limits`; messages name the file's frame numbers). Other inputs (dataset
    names of JSON files, compressed files) are loaded whole and cut into chunks. The
    distributed run does the same, the parsing on the workers.

    Raises
    ------
    InputError
        As :func:`lprviz.datasets.load` would, for the first bad frame.
    """
    for start, item in _items(value, chunk_atoms):
        yield start, _materialise(item)


def _cuts(sizes: np.ndarray, chunk_atoms: int) -> list[int]:
    """Frame indices ending chunks of at least ``chunk_atoms`` atoms (the last may be less)."""
    out, atoms = [], 0
    for i, n in enumerate(sizes):
        atoms += int(n)
        if atoms >= chunk_atoms:
            out.append(i + 1)
            atoms = 0
    if not out or out[-1] != len(sizes):
        out.append(len(sizes))
    return out


@dataclass
class _Plan:
    """What the first pass learns: where training and test frames come from, and the blocks
    of the training sums (:mod:`lprviz.gramsum`)."""

    name: str
    species: tuple[int, ...]
    train_groups: Counter
    n_train: int
    n_test: int
    n_test_atoms: int
    n_train_atoms: int
    unseen: tuple[int, ...]  # elements of test frames that no training frame contains
    stops: np.ndarray  # block ends among the training rows (gramsum.block_stops)
    first_rows: list[int]  # index of each chunk's first training row


def _inputs(args) -> list[tuple[str, str | None]]:
    """``(input, role)`` pairs: role "train", "test", or None (split by ``--train-groups``)."""
    given = _group_names(args.train_groups or "", "--train-groups")
    if args.dataset is not None:
        if args.train is not None or args.test is not None:
            raise InputError("give either --dataset with --train-groups, or --train and --test")
        if not given:
            raise InputError("--dataset: also give --train-groups G1,G2 (test = the other groups)")
        return [(args.dataset, None)]
    if args.train is None or args.test is None:
        raise InputError("give --train TRAIN and --test TEST (or --dataset NAME --train-groups)")
    if args.train_groups is not None and not given:
        raise InputError("--train-groups: no group given (expected comma-separated group "
                         "names)")
    return [(args.train, "train"), (args.test, "test")]


def _train_mask(chunk, role, wanted: list[str]) -> np.ndarray:
    """Training frames of a chunk: by ``wanted`` group (a dataset split by groups); of a
    ``--train`` input, all but its own test split and, with ``wanted``, those groups only (as
    the serial run's ``cli._training_part``); none of a ``--test`` input."""
    if role is None:
        return np.isin(chunk.groups, wanted)
    if role == "test":
        return np.zeros(len(chunk.frames), dtype=bool)
    keep = np.asarray(chunk.splits) != "test"
    return keep & np.isin(chunk.groups, wanted) if wanted else keep


def _test_mask(chunk, role, wanted: list[str]) -> np.ndarray:
    """Test frames of a chunk: the other groups of a dataset split by groups, every frame of
    the ``--test`` input (the frames a ``--train`` input leaves out are neither)."""
    if role is None:
        return ~np.isin(chunk.groups, wanted)
    return np.full(len(chunk.frames), role == "test")


def _split(item, role, wanted: list[str], train: bool):
    """The training (or test) frames of a chunk."""
    chunk = _materialise(item)
    mask = _train_mask(chunk, role, wanted) if train else _test_mask(chunk, role, wanted)
    return chunk.subset(np.flatnonzero(mask))


def _scan_chunk(item, role, wanted: list[str], value: str, start: int) -> dict:
    """What the scan needs of one chunk (a worker task)."""
    chunk = _materialise(item)
    train = _train_mask(chunk, role, wanted)
    test = _test_mask(chunk, role, wanted)
    missing = np.flatnonzero(train & ~chunk.has_energy)
    if missing.size:
        raise InputError(f"{value}: frame {start + missing[0]} has no energy; training "
                         "frames need energies")
    return {"name": chunk.name,
            "train_species": set(np.unique(chunk.atom_numbers[train[chunk.structure_index]])
                                 .tolist()),
            "test_species": set(np.unique(chunk.atom_numbers[test[chunk.structure_index]])
                                .tolist()),
            # the groups --train-groups may name (of a --train input: outside its test split)
            "groups": Counter((chunk.groups if role is None else
                               chunk.groups[np.asarray(chunk.splits) != "test"]).tolist()),
            "train_groups": Counter(chunk.groups[train].tolist()),
            "n_train": int(train.sum()), "n_test": int(test.sum()),
            "held_out": int((np.asarray(chunk.splits) == "test").sum()) if role == "train"
            else 0,
            "train_sizes": np.asarray(chunk.frame_sizes, dtype=np.int32)[train],
            "n_test_atoms": int(np.asarray(chunk.frame_sizes)[test].sum())}


def _ordered(client, tasks, in_flight: int):
    """Results of ``tasks`` (``(function, *args)``), submitted with at most ``in_flight``
    unfinished, yielded in submission order."""
    pending: deque = deque()
    for task in tasks:
        pending.append(client.submit(*task, pure=False))
        while len(pending) > in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _scan(client, args, wanted: list[str], chunk_atoms: int,
          in_flight: int) -> tuple[_Plan, list[int]]:
    """First pass, on the workers: species, groups and sizes; the checks the serial command
    makes on the whole dataset (groups exist, training frames have energies, a test frame
    exists). Also the number of test frames of each chunk (where its output frames start)
    and the atoms of every training frame (4 bytes each: they fix the blocks of the
    training sums, :func:`lprviz.gramsum.block_stops`)."""
    from lprviz.gramsum import block_stops

    train_species: set[int] = set()
    test_species: set[int] = set()
    groups: Counter = Counter()
    train_groups: Counter = Counter()
    n_train = n_test = n_test_atoms = held_out = 0
    names, test_per_chunk, first_rows, train_sizes = [], [], [], []
    for value, role in _inputs(args):
        tasks = ((_scan_chunk, item, role, wanted, value, start)
                 for start, item in _items(value, chunk_atoms))
        for i, part in enumerate(_ordered(client, tasks, in_flight)):
            if i == 0:
                names.append(part["name"])
            train_species |= part["train_species"]
            test_species |= part["test_species"]
            if role != "test":  # the groups --train-groups may name
                groups.update(part["groups"])
            train_groups.update(part["train_groups"])
            held_out += part["held_out"]
            first_rows.append(n_train)
            train_sizes.append(part["train_sizes"])
            n_train += part["n_train"]
            n_test += part["n_test"]
            n_test_atoms += part["n_test_atoms"]
            test_per_chunk.append(part["n_test"])
    unknown = [g for g in wanted if g not in groups]
    if unknown:
        raise InputError(f"--train-groups: dataset '{names[0]}' has no group "
                         f"{', '.join(unknown)}; groups are {', '.join(sorted(groups))}")
    if args.dataset is not None and n_test == 0:
        raise InputError(f"dataset '{names[0]}': --train-groups leave no test frame")
    _training_left(args.train or args.dataset, held_out, n_train)
    plan = _Plan("+".join(names), tuple(sorted(train_species | test_species)), train_groups,
                 n_train, n_test, n_test_atoms, int(sum(int(t.sum()) for t in train_sizes)),
                 tuple(sorted(test_species - train_species)),
                 block_stops(np.concatenate(train_sizes)), first_rows)
    return plan, test_per_chunk


# ------------------------------------------------------------------------- worker tasks
def _train_descriptors(item, role, wanted: list[str], hypers, species) -> np.ndarray | None:
    """SOAP of the training atoms of one chunk (for the sparse kernel's FPS on the client)."""
    from lprviz.features import compute_soap

    chunk = _split(item, role, wanted, train=True)
    if not chunk.frames:
        return None
    desc = compute_soap(chunk.frames, hypers, species=species, cache=False, names=chunk.names)
    return np.asarray(desc.values, dtype=np.float64)


def _train_partial(item, role, wanted: list[str], hypers, species, baseline: bool,
                   first_row: int, stops: np.ndarray, nystrom=None) -> dict | None:
    """Raw sums of the training frames of one chunk (training rows ``first_row...``): the
    :class:`lprviz.gramsum.Partial` of ``M^T M`` and ``M^T y`` of the mean rows
    ``M = [base rows, composition rows]`` (base: SOAP, or its Nyström features with
    ``nystrom``; composition unscaled), the base's sum of squares, atom and row counts, and
    the rows themselves (for the dual route while few). None when the chunk has no training
    frame."""
    from lprviz.features import compute_soap
    from lprviz.gramsum import partial
    from lprviz.models import composition_features
    from lprviz.rigidity import structure_features

    chunk = _split(item, role, wanted, train=True)
    if not chunk.frames:
        return None
    desc = compute_soap(chunk.frames, hypers, species=species, cache=False, names=chunk.names)
    n = len(chunk.frames)
    base = np.asarray(desc.values, dtype=np.float64)
    if nystrom is not None:
        base = nystrom.transform(base)
    norm2 = np.einsum("ij,ij->i", base, base)
    if not np.all(np.isfinite(norm2)):
        raise InputError(f"descriptors of dataset '{chunk.name}' contain NaN or inf")
    rows = structure_features(base, desc.structure_index, n, convention="mean")
    if baseline:
        comp = composition_features(desc.atom_numbers, species)
        rows = np.hstack([rows, structure_features(comp, desc.structure_index, n)])
    y = chunk.energies / np.asarray(chunk.frame_sizes)
    few = _few_rows(rows)
    return {"sums": partial(rows, y, norm2, chunk.frame_sizes, first_row, stops),
            "n_atoms": int(len(norm2)), "n_structures": n, "rows": few,
            "y": None if few is None else y,
            "numbers": None if few is None else desc.atom_numbers,
            "sizes": None if few is None else np.asarray(chunk.frame_sizes)}


def _few_rows(rows: np.ndarray | None) -> np.ndarray | None:
    from lprviz.rigidity import _DUAL_SHARE

    if rows is None or rows.shape[0] >= _DUAL_SHARE * rows.shape[1]:
        return None
    return rows


def _same(value):
    return value


def _add_partials(a: dict | None, b: dict | None, stops: np.ndarray) -> dict | None:
    """Sum of two training partials of consecutive chunks (rows kept, in order, while they
    stay few); ``M^T M`` and ``M^T y`` in :mod:`lprviz.gramsum`'s order."""
    from lprviz.gramsum import merge

    if a is None or b is None:
        return b if a is None else a
    out = {"sums": merge(a["sums"], b["sums"], stops),
           "n_atoms": a["n_atoms"] + b["n_atoms"],
           "n_structures": a["n_structures"] + b["n_structures"]}
    rows = None
    if a["rows"] is not None and b["rows"] is not None:
        rows = _few_rows(np.vstack([a["rows"], b["rows"]]))
    for key in ("y", "numbers", "sizes"):
        out[key] = None if rows is None else np.concatenate([a[key], b[key]])
    return {**out, "rows": rows}


def _test_chunk(item, role, wanted: list[str], first: int, fit, alphas,
                provenance: dict, n_sample: int):
    """extxyz text, summary and phase times of the test frames of one chunk (frames
    ``first...`` of the output); None when it has none."""
    from lprviz.cli import _chunk_results
    from lprviz.export import annotated_frames, write_annotated
    from lprviz.features import compute_soap
    from lprviz.rigidity import _one_thread
    from lprviz.summary import chunk_summary

    chunk = _split(item, role, wanted, train=False)
    if not chunk.frames:
        return None
    times = Counter()
    frames = np.arange(len(chunk.frames))
    # one BLAS thread, as the serial run's streamed phase: the same bits
    with _one_thread():
        desc = compute_soap(chunk.frames, fit.hypers, species=fit.species, cache=False,
                            names=chunk.names)
        phi, baseline = fit.model_feature_blocks(desc.values, desc.atom_numbers)
        del desc
        results = _chunk_results(fit, alphas, chunk, frames[:0], frames, phi, times,
                                 baseline=baseline)
    schema = {"include_training": False, "extra_provenance": provenance}
    buf = io.StringIO()
    write_annotated(buf, chunk, results, **schema)
    # copies only for --sample's texts (the same bytes as in the output)
    annotated = annotated_frames(chunk, results, **schema) if n_sample else None
    part = chunk_summary(first + frames, chunk.names, chunk.groups.tolist(),
                         chunk.frame_sizes, chunk.atom_numbers, results[0].lpr,
                         results[0].undetermined, n_sample=n_sample, annotated=annotated)
    return buf.getvalue(), part, dict(times)


# ------------------------------------------------------------------------- client side
def _bounded(futures: deque, limit: int):
    """Wait for the oldest futures until at most ``limit`` are unfinished (bounds the
    chunks the client and the scheduler hold)."""
    dd = _distributed()
    while len(futures) > limit:
        dd.wait([futures.popleft()])


#: Training chunks per round of the reduction. Each round's partial sums are added as a tree
#: on the workers and the round's total is fetched and added on the client: the scheduler
#: keeps every input of a pending sum (to recompute it if a worker dies), so rounds bound
#: what it holds to two rounds of chunks, at the price of one d x d transfer per round.
ROUND_CHUNKS = 32


def gather_training(client, chunks, hypers, species, n_atoms: int, *,
                    in_flight: int) -> np.ndarray:
    """The training atoms' SOAP, gathered from the workers in frame order (the sparse
    kernel's FPS needs them in one place), into one ``n_atoms x d`` float64 array.

    Raises
    ------
    InputError
        When ``n_atoms x d`` floats exceed ``Limits.max_array_bytes`` (checked once the
        first chunk gives ``d``, before the rest is gathered).
    """
    from lprviz.limits import get_limits

    limit = get_limits().max_array_bytes
    out, at = None, 0
    tasks = ((_train_descriptors, item, role, wanted, hypers, species)
             for item, role, wanted in chunks)
    for values in _ordered(client, tasks, in_flight):
        if values is None:
            continue
        if out is None:
            size = n_atoms * values.shape[1] * 8
            if size > limit:
                raise InputError(
                    f"--model sparse-kernel: the {n_atoms} training atoms' descriptors "
                    f"({n_atoms} x {values.shape[1]} floats, {size / 2**30:.2g} GiB) exceed "
                    f"the limit of {limit / 2**30:.2g} GiB (LPRVIZ_MAX_ARRAY_BYTES) that the "
                    "client's active-point selection may hold; use fewer training atoms or "
                    "the linear model")
            out = np.empty((n_atoms, values.shape[1]))
        out[at:at + len(values)] = values
        at += len(values)
    if out is None or at != n_atoms:
        raise InputError(f"training descriptors: expected {n_atoms} atoms, got {at}")
    return out


def reduce_training(client, chunks, hypers, species, baseline: bool, *,
                    in_flight: int, first_rows: list[int], stops: np.ndarray,
                    nystrom=None) -> dict:
    """Sum the training partials of ``chunks`` (``(chunk, role, wanted)``: a Dataset or
    block, its role or None and the training groups; ``first_rows`` their first training
    rows, ``stops`` the blocks of :func:`lprviz.gramsum.block_stops`) and return the total
    (``M^T M``, ``M^T y`` as a :class:`lprviz.gramsum.Partial`, counts): pairwise on the
    workers as a binary tree (a binary counter: at most log2(n) pending sums) within rounds
    of :data:`ROUND_CHUNKS` chunks, the rounds' totals added on the client in frame order
    while the next round runs. Where the partials meet, the sums follow gramsum's one order,
    so the result is the serial run's to the last bit. ``nystrom`` (a future of a
    :class:`lprviz.models.NystromMap`, or None): the sparse kernel's feature map."""
    stack: list[tuple[int, object]] = []  # (level, future of a partial sum), in frame order
    pending: deque = deque()
    rounds: deque = deque()
    total = None

    def collapse():
        top = stack.pop()[1]
        while stack:
            top = client.submit(_add_partials, stack.pop()[1], top, stops, pure=False)
        return top

    for n, ((item, role, wanted), first) in enumerate(zip(chunks, first_rows, strict=False),
                                                      start=1):
        future = client.submit(_train_partial, item, role, wanted, hypers, species, baseline,
                               first, stops, nystrom, pure=False)
        pending.append(future)
        _bounded(pending, in_flight)
        level = 0
        while stack and stack[-1][0] == level:
            future = client.submit(_add_partials, stack.pop()[1], future, stops, pure=False)
            level += 1
        stack.append((level, future))
        if n % ROUND_CHUNKS == 0:
            rounds.append(collapse())
            while len(rounds) > 1:
                total = _add_partials(total, rounds.popleft().result(), stops)
    if stack:
        rounds.append(collapse())
    while rounds:
        total = _add_partials(total, rounds.popleft().result(), stops)
    if total is None:
        raise InputError("no training frame")
    return total


def _fit_from_partial(total: dict, spec, hypers, species, scale, nystrom=None):
    """The client's :class:`lprviz.pipeline.Fit` from the reduced sums (what ``prepare``
    builds from the stacked rows): scale from the sum of squares unless fixed, composition
    columns multiplied by the scale, one factorisation."""
    from lprviz.gramsum import scaled
    from lprviz.gramsum import total as tree_total
    from lprviz.limits import get_limits
    from lprviz.models import composition_features
    from lprviz.pipeline import Fit
    from lprviz.rigidity import RigiditySolver, structure_features

    n_baseline = len(species) if spec.baseline else 0
    sums = tree_total(total["sums"])
    d = sums[0].shape[0]
    if d > get_limits().max_features:
        raise InputError(f"model: {d} features, more than the limit of "
                         f"{get_limits().max_features} (LPRVIZ_MAX_FEATURES)")
    if scale is None:  # in prepare()'s order (gramsum.atom_sumsq)
        scale = float(np.sqrt(float(sums[2]) / max(total["n_atoms"], 1)))
    gram, xty = scaled(sums[:2], scale, n_baseline)
    n = total["n_structures"]
    rows = None
    if total["rows"] is not None:
        # Few rows (the dual route): the ridge weights are then so ill-conditioned that
        # rounding the scale or the composition rows differently moves local energies by
        # ~1e-10, so scale and rows are built exactly as prepare() builds them.
        rows = total["rows"].copy()
        if n_baseline:
            comp = scale * composition_features(total["numbers"], species)
            rows[:, d - n_baseline:] = structure_features(
                comp, np.repeat(np.arange(n), total["sizes"]), n)
    solver = RigiditySolver.from_gram(gram, scale=scale, n_structures=n, rows_raw=rows)
    return Fit(spec=spec, train_mask=np.ones(n, dtype=bool), solver=solver, scale=float(scale),
               species=tuple(species), nystrom=nystrom, structure_index=np.zeros(0, dtype=np.int64),
               projections=np.empty((0, d), dtype=np.float32),
               structure_projections=np.empty((0, d)), xty=xty / scale,
               energies=np.full(n, np.nan), hypers=hypers)


def _check_supported(args) -> None:
    for option, given in ((f"--model {args.model}", args.model not in ("linear", "sparse-kernel")),
                          ("--reference-train", args.reference_train is not None),
                          ("--reference-train-groups", args.reference_train_groups is not None),
                          ("--lcpr", args.lcpr),
                          ("--forces", getattr(args, "forces", False)),
                          ("--features-array", getattr(args, "features_array", None) is not None)):
        if given:
            raise InputError(f"{option}: not available with --workers/--scheduler (the "
                             "distributed run supports the linear and sparse-kernel models "
                             "on SOAP features, with --scale)")


def run_lpr(args, steps, alphas, hypers, spec, summary=None, *,
            chunk_atoms: int | None = None) -> tuple[int, int, list, int]:
    """``lprviz lpr`` on Dask: scan, reduce the training Gram on the workers, factorise,
    stream the test chunks into ``args.output`` in frame order.

    Parameters
    ----------
    args : argparse.Namespace
        The command line (inputs, ``workers``/``scheduler``, ``output``, ``scale``...).
    steps : callable
        The command's step reporter (``with steps(label):``).
    alphas : list of float
    hypers : lprviz.features.SoapHypers
    spec : lprviz.pipeline.ModelSpec
    summary : lprviz.summary.SummaryCollector, optional
        Receives every test chunk's summary, in frame order.
    chunk_atoms : int, optional
        Atoms per task (default :data:`CHUNK_ATOMS`).

    Returns
    -------
    (n_test_frames, n_test_atoms, list of per-chunk LPR arrays of the first alpha, number
    of test atoms undetermined at the first alpha)
    """
    _check_supported(args)
    chunk_atoms = CHUNK_ATOMS if chunk_atoms is None else chunk_atoms
    try:
        return _run(args, steps, alphas, hypers, spec, summary, chunk_atoms)
    except _distributed().KilledWorker as exc:
        raise InputError(f"a task failed on several workers in a row (workers killed or out "
                         f"of memory): {' '.join(str(exc).split())[:200]}") from None


def _run(args, steps, alphas, hypers, spec, summary, chunk_atoms):
    from lprviz.cli import _write_atomically
    from lprviz.export import group_summary
    from lprviz.models import fit_nystrom

    wanted = _group_names(args.train_groups or "", "--train-groups")
    with connect(args.workers, args.scheduler) as client:
        n_workers = max(len(client.scheduler_info()["workers"]), 1)
        in_flight = 2 * n_workers + 1
        with steps(f"scanning the input on {n_workers} workers"):
            plan, test_per_chunk = _scan(client, args, wanted, chunk_atoms, in_flight)

        def chunks():  # the input again, chunk by chunk (the same cuts as the scan)
            for value, role in _inputs(args):
                for _, item in _items(value, chunk_atoms):
                    yield item, role, wanted

        nystrom = nystrom_future = None
        if spec.kind == "sparse-kernel":
            with steps(f"SOAP of {plan.n_train_atoms} training atoms gathered from "
                       f"{n_workers} workers, {spec.n_sparse} active environments (FPS)"):
                values = gather_training(client, chunks(), hypers, plan.species,
                                         plan.n_train_atoms, in_flight=in_flight)
                nystrom = fit_nystrom(values, spec.n_sparse, zeta=spec.zeta)
                del values
                nystrom_future = _submit_value(client, nystrom)
        with steps(f"SOAP and X^T X of {plan.n_train} training structures on {n_workers} "
                   "workers"):
            total = reduce_training(client, chunks(), hypers, plan.species,
                                    spec.baseline, in_flight=in_flight,
                                    first_rows=plan.first_rows, stops=plan.stops,
                                    nystrom=nystrom_future)
        with steps(f"factorising the model of {plan.n_train} training structures"):
            fit = _fit_from_partial(total, spec, hypers, plan.species, args.scale, nystrom)
            del total
        _note_unseen(plan.unseen)  # once the model stands, as the serial run
        provenance = {"dataset": plan.name, "n_train_frames": plan.n_train,
                      "train_groups": group_summary(
                          [g for g, n in plan.train_groups.items() for _ in range(n)]),
                      "scale_from": "training" if args.scale is None else "option"}
        fit_future = _submit_value(client, fit)
        lprs: list = []
        undetermined = 0
        times: Counter = Counter()

        def write(fh) -> None:
            nonlocal undetermined
            firsts = np.concatenate([[0], np.cumsum(test_per_chunk)])
            tasks = ((_test_chunk, item, role, wanted_, int(first), fit_future,
                      alphas, provenance, getattr(summary, "n_sample", 0))
                     for (item, role, wanted_), first in zip(chunks(), firsts, strict=False))
            for out in _ordered(client, tasks, in_flight):
                if out is None:  # a chunk of training frames only
                    continue
                text, part, chunk_times = out
                fh.write(text)
                times.update(chunk_times)
                lprs.append(part.lpr.astype(np.float32))  # the closing line's median
                undetermined += int(np.count_nonzero(part.undetermined))
                if summary is not None:
                    summary.add(part)

        with steps(f"LPR of {plan.n_test} test structures ({plan.n_test_atoms} atoms) on "
                   f"{n_workers} workers"):
            _write_atomically(args.output, "-o", write)
    steps.report({f"{k} (summed over the workers)": v for k, v in times.items()})
    return plan.n_test, plan.n_test_atoms, lprs, undetermined
