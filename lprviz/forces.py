r"""Force rows of linear models: descriptor position gradients, force Gram, predicted forces.

A model that is linear in per-atom features, :math:`E_A = \sum_{k \in A} \boldsymbol\phi_k
\cdot \mathbf{w} / s`, predicts the forces :math:`\mathbf{F}_j = -\sum_{k\in A}
(\partial\boldsymbol\phi_k/\partial\mathbf{r}_j) \cdot \mathbf{w} / s`: each atom of a
structure gives three more *rows* :math:`\mathbf{g}_{j,c} = -\sum_k \partial
\boldsymbol\phi_k / \partial r_{j,c}` of the same linear problem (docs/science.md §12).
Trained with weight :math:`\lambda_F` on forces, the normal matrix becomes
:math:`\bar{X}^\top\bar{X} + \lambda_F \sum_A G_A^\top G_A + \alpha I`.

This module computes, structure by structure (never the ``3 n_atoms x d`` matrix of a
dataset):

* :func:`position_gradients`: :math:`\sum_k \partial\boldsymbol\phi_k/\partial\mathbf{r}_j`
  per atom ``j``, shape ``(n_atoms, 3, d)``, of raw SOAP (linear model) or of the Nyström
  features of the sparse kernel (chain rule through :math:`(\hat x\cdot\hat m)^\zeta`), from
  featomic's ``gradients=["positions"]``;
* :func:`force_gram`: :math:`\sum_A G_A^\top G_A` and :math:`\sum_A G_A^\top
  \mathbf{F}^\mathrm{ref}_A` of the raw (unscaled) model features, accumulated chunk by chunk
  (memory :math:`O(d^2)` plus one chunk);
* :func:`reference_forces`: the forces a dataset's frames carry (NaN where unknown).

Cache: on request (``cache=True``; :func:`lprviz.pipeline.prepare` asks for it when it keeps
the gradients of every atom anyway, for the predicted forces) the summed SOAP gradients of a
structure are kept in :mod:`lprviz.features`' byte-bounded (1 GiB, FIFO) per-structure memory
cache, beside the descriptor values, under keys of the SOAP settings, the structure and
``position-gradients`` (``features.clear_memory_cache`` forgets both), so another training
set of the same frames never calls featomic again. Off by default: an entry is ``3 x`` the
structure's descriptor bytes, and the streaming paths (:func:`force_gram`, ``lprviz lpr
--forces``) promise memory ``O(d^2)`` plus one chunk.
There is no disk cache: a per-training-set Gram on disk would save only the GEMMs (faster
than featomic, benchmarks/bench_forces.py), not the gradients the predicted forces need.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import ase
import numpy as np
import scipy.sparse

from lprviz.errors import InputError
from lprviz.features import (
    _MEMORY,
    SoapHypers,
    _check_search,
    _featomic_system,
    _layout,
    _remember,
    _settings_hash,
    _soap_calculator,
    _structure_hash,
)
from lprviz.limits import get_limits
from lprviz.rigidity import _one_thread

__all__ = [
    "ForceGram",
    "ForceGramBuilder",
    "force_gram",
    "has_forces",
    "position_gradients",
    "reference_forces",
]

# Atoms per featomic call with gradients: featomic holds one (3 x width) gradient per
# neighbour pair and species block (~40-80 pairs per atom at a 5 A cutoff), so chunks are far
# smaller than compute_soap's.
_GRAD_CHUNK_ATOMS = 256
# Bytes of the block of force rows per product when accumulating G^T G: big blocks keep
# BLAS efficient at small d (2048 rows at d = 245 ran ~3x slower than one GEMM), and the
# buffer stays bounded at any d.
_GEMM_BYTES = 32 << 20
# Gradient samples per block of the sparse kernel's chain rule (3 x 512 rows x M columns:
# 6 MB at M = 500).
_KERNEL_BLOCK = 512
_KERNEL_ONE_THREAD = False  # measured slower (bench_forces_kernel.py); kept for the benchmark


def has_forces(atoms: ase.Atoms) -> bool:
    """Whether a frame carries reference forces (a calculator result or a ``forces`` array)."""
    return _forces_of(atoms) is not None


def _forces_of(atoms: ase.Atoms) -> np.ndarray | None:
    calc = atoms.calc
    forces = None
    if calc is not None and "forces" in getattr(calc, "results", {}):
        forces = calc.results["forces"]
    elif "forces" in atoms.arrays:
        forces = atoms.arrays["forces"]
    if forces is None:
        return None
    forces = np.asarray(forces, dtype=np.float64)
    if forces.shape != (len(atoms), 3) or not np.all(np.isfinite(forces)):
        return None
    return forces


def reference_forces(frames: Sequence[ase.Atoms]) -> np.ndarray:
    """Reference forces of every atom, NaN for frames without (finite, ``(n, 3)``) forces.

    Parameters
    ----------
    frames : sequence of ase.Atoms

    Returns
    -------
    numpy.ndarray of shape (n_atoms, 3)
        eV/A, dataset atom order.
    """
    out = []
    for atoms in frames:
        forces = _forces_of(atoms)
        out.append(np.full((len(atoms), 3), np.nan) if forces is None else forces)
    return np.concatenate(out, axis=0) if out else np.zeros((0, 3))


def _kernel_factors(values: np.ndarray, nystrom) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Per-atom factors of :math:`\partial k_m/\partial x = f_1 \hat m - f_2 \hat x`:
    ``xhat`` (n, d), ``f1 = zeta c^(zeta-1) / |x|`` and ``f2 = zeta c^zeta / |x|`` (n, M)
    with ``c = xhat . mhat``; zero for an all-zero descriptor (its kernel row is fixed at 0)."""
    norms = np.linalg.norm(values, axis=1)
    ok = norms > 0
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=ok)
    xhat = values * inv[:, None]
    c = xhat @ nystrom.active.T
    zeta = nystrom.zeta
    cz1 = c ** (zeta - 1) if zeta > 1 else np.ones_like(c)
    f1 = zeta * cz1 * inv[:, None]
    f2 = f1 * c
    return xhat, f1, f2


def _summed_gradients(
    frames: Sequence[ase.Atoms],
    hypers: SoapHypers,
    offsets: dict[tuple[int, int], int],
    l_of_prop: np.ndarray,
    nystrom=None,
) -> np.ndarray:
    r"""``sum_k d phi_k / d r_j`` of every atom ``j`` of ``frames`` (one featomic call; the
    frames fully periodic, :func:`~lprviz.features._featomic_system`): shape
    ``(n_atoms, 3, d)`` for raw SOAP, ``(n_atoms, 3, r)`` with a Nyström map.

    featomic's gradient block of a (center type, neighbour pair) key has samples
    ``(sample, system, atom)``: row ``sample`` of the values block (a center ``k``), and the
    atom ``j`` moved; values ``(n_grad, 3, width)`` are ``d x_k[cols] / d r_j``. Summing over
    centres is a sparse ``(n_atoms, n_grad)`` indicator product. For the kernel, the chain
    rule factor depends on the centre only, so it is applied per gradient sample before the
    sum, block by block (``d k_m/d r = f1 (g . m) - f2 (g . xhat)``).
    """
    tensor = _soap_calculator(hypers).compute(list(frames), gradients=["positions"])
    width = len(l_of_prop)
    d = width * len(offsets)
    sizes = np.array([len(a) for a in frames])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n = int(sizes.sum())
    blocks = []
    values = np.zeros((n, d)) if nystrom is not None else None
    for key, block in tensor.items():
        pair = (int(key["neighbor_1_type"]), int(key["neighbor_2_type"]))
        props = block.properties.values
        if props.shape[0] != width or not np.array_equal(props[:, 0], l_of_prop):
            raise RuntimeError("unexpected featomic property layout")  # guards the column map
        samples = block.samples.values
        rows = starts[samples[:, 0]] + samples[:, 1]
        if values is not None:
            values[rows, offsets[pair] : offsets[pair] + width] = block.values
        blocks.append((offsets[pair], rows, block.gradient("positions")))
    if nystrom is None:
        out = np.zeros((n, 3, d))
    else:
        xhat, f1, f2 = _kernel_factors(values, nystrom)
        out = np.zeros((n, 3, nystrom.active.shape[0]))
    for off, rows, grad in blocks:
        gs = grad.samples.values
        if gs.shape[0] == 0:
            continue
        centre = rows[gs[:, 0]]
        moved = starts[gs[:, 1]] + gs[:, 2]
        gv = np.asarray(grad.values)  # (n_grad, 3, width)
        if nystrom is None:
            out[:, :, off : off + width] += _sum_rows(moved, gv.reshape(gv.shape[0], -1),
                                                      n).reshape(n, 3, -1)
            continue
        cols = slice(off, off + width)
        active = np.ascontiguousarray(nystrom.active[:, cols].T)
        # In blocks of gradient samples: the (3 n_grad x M) products of a whole key
        # (1 GB at 5 A, M = 500) thrashed memory; a block stays in cache (0.9-2.2x faster
        # over four loaded runs). BLAS keeps its threads: pinning them to one was no faster
        # (benchmarks/bench_forces_kernel.py).
        with _one_thread(_KERNEL_ONE_THREAD):
            for lo in range(0, gv.shape[0], _KERNEL_BLOCK):
                hi = min(lo + _KERNEL_BLOCK, gv.shape[0])
                g, c = gv[lo:hi], centre[lo:hi]
                T = (g.reshape(-1, width) @ active).reshape(hi - lo, 3, -1)
                T *= f1[c][:, None, :]
                proj = np.einsum("gcw,gw->gc", g, xhat[c, cols])
                T -= proj[:, :, None] * f2[c][:, None, :]
                out += _sum_rows(moved[lo:hi], T.reshape(hi - lo, -1), n).reshape(n, 3, -1)
    if nystrom is not None:
        out = out @ nystrom.projector
    return out


def _sum_rows(target: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """``out[t] = sum of values[i] with target[i] == t`` (n rows), as one sparse product."""
    S = scipy.sparse.csr_matrix((np.ones(len(target)), (target, np.arange(len(target)))),
                                shape=(n, len(target)))
    return np.asarray(S @ values)


def position_gradients(
    frames: Sequence[ase.Atoms],
    hypers: SoapHypers | None = None,
    *,
    species: Sequence[int] | None = None,
    nystrom=None,
    chunk_atoms: int | None = None,
    cache: bool = False,
    names: Sequence[str] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    r"""Position gradients of the summed per-atom features, structure by structure.

    Parameters
    ----------
    frames : sequence of ase.Atoms
    hypers : SoapHypers, optional
        SOAP hyper-parameters (``SoapHypers()`` by default).
    species : sequence of int, optional
        Species list of the columns (as for :func:`lprviz.features.compute_soap`).
    nystrom : lprviz.models.NystromMap, optional
        Gradients of the Nyström features instead of raw SOAP (sparse-kernel model).
    chunk_atoms : int, optional
        Approximate number of atoms per featomic call (default :data:`_GRAD_CHUNK_ATOMS`).
    cache : bool
        Use (and fill) the per-structure memory cache of raw SOAP gradients (off by default:
        it holds ``24 d`` bytes per atom, so memory is no longer ``O(d^2)`` + one chunk).
    names : sequence of str, optional
        One name per frame for error messages.

    Yields
    ------
    index : int
        Frame index (cached frames may come before earlier ones still being computed).
    gradients : numpy.ndarray of shape (n_atoms_A, 3, d)
        ``out[j, c] = sum_k d phi_k / d r_{j,c}`` (raw, unscaled features); the force rows
        of the structure are ``-out.reshape(3 n_atoms_A, d) / scale``.

    Raises
    ------
    InputError
        A species outside ``species``, or a frame's neighbour search over the limit.
    """
    hypers = SoapHypers() if hypers is None else hypers
    chunk_atoms = _GRAD_CHUNK_ATOMS if chunk_atoms is None else int(chunk_atoms)
    frames = list(frames)
    present = sorted({int(z) for a in frames for z in a.numbers})
    species_t = tuple(sorted({int(z) for z in species})) if species is not None else tuple(present)
    unknown = set(present) - set(species_t)
    if unknown:
        raise InputError(f"structures contain species {sorted(unknown)} outside the species "
                         f"list {species_t}")
    offsets, l_of_prop, _ = _layout(hypers, species_t)
    labels = list(names) if names is not None else [f"structure {i}" for i in range(len(frames))]
    settings = _settings_hash(hypers, species_t) + b"position-gradients"
    keys = [hashlib.sha256(settings + _structure_hash(a)).hexdigest() for a in frames]
    # Only raw SOAP gradients are cached: the kernel's chain rule needs per-centre gradients
    # (not their sums), and its active set changes with the training set anyway.
    use_cache = cache and nystrom is None
    todo = [i for i, k in enumerate(keys) if not (use_cache and k in _MEMORY)]
    ready = dict(zip(todo, _check_search([frames[i] for i in todo], hypers.cutoff,
                                         [labels[i] for i in todo]), strict=True))
    pending: list[int] = []

    def flush() -> Iterator[tuple[int, np.ndarray]]:
        sizes = [len(frames[i]) for i in pending]
        # the checked copies; one evicted from the cache since the check is made now
        copies = [ready.pop(i) if i in ready else _featomic_system(frames[i], hypers.cutoff)
                  for i in pending]
        dense = _summed_gradients(copies, hypers, offsets, l_of_prop, nystrom)
        for i, part in zip(pending, np.split(dense, np.cumsum(sizes)[:-1]), strict=True):
            part = np.ascontiguousarray(part)
            if use_cache:
                _remember(keys[i], part)
            yield i, part

    n_pending = 0
    for i, atoms in enumerate(frames):
        hit = _MEMORY.get(keys[i]) if use_cache else None
        if hit is not None:
            yield i, hit
            continue
        pending.append(i)
        n_pending += len(atoms)
        if n_pending >= chunk_atoms:
            yield from flush()
            pending, n_pending = [], 0
    if pending:
        yield from flush()


@dataclass(frozen=True)
class ForceGram:
    r"""Force-row statistics of a training set (raw, unscaled model features).

    Attributes
    ----------
    gram : numpy.ndarray of shape (d, d)
        :math:`\sum_A G_A^\top G_A` with :math:`G_A = -\sum_k \partial\phi_k/\partial r`
        (``3 n_A x d``); baseline columns are 0.
    gtf : numpy.ndarray of shape (d,)
        :math:`\sum_A G_A^\top \mathbf{F}^\mathrm{ref}_A` (eV/A times feature units).
    n_rows : int
        Number of force rows (3 x atoms of the frames with forces).
    n_frames : int
        Frames that contributed (had reference forces).
    """

    gram: np.ndarray
    gtf: np.ndarray
    n_rows: int
    n_frames: int


def force_gram(
    frames: Sequence[ase.Atoms],
    hypers: SoapHypers | None = None,
    *,
    species: Sequence[int] | None = None,
    nystrom=None,
    n_extra_columns: int = 0,
    gradients: Callable[[Sequence[ase.Atoms]], Iterator[tuple[int, np.ndarray]]] | None = None,
) -> ForceGram:
    """Accumulate :math:`G^T G` and :math:`G^T F` over the frames that carry forces.

    Memory: the ``d x d`` result plus one block of :data:`_GEMM_BYTES` of force rows
    (and featomic's chunk); the ``3 n_atoms x d`` matrix is never formed.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        Training frames; those without forces are skipped.
    hypers, species, nystrom
        As for :func:`position_gradients`.
    n_extra_columns : int
        Zero-gradient columns appended after the features (the one-hot baseline).
    gradients : callable, optional
        Replaces :func:`position_gradients` (same yield), e.g. to reuse gradients.

    Returns
    -------
    ForceGram
    """
    frames = list(frames)
    with_forces = [i for i, a in enumerate(frames) if has_forces(a)]
    chosen = [frames[i] for i in with_forces]
    if gradients is None:
        stream = position_gradients(chosen, hypers, species=species, nystrom=nystrom)
    else:
        stream = gradients(chosen)
    builder = ForceGramBuilder()
    for j, grad in stream:
        builder.add(grad, _forces_of(chosen[j]))
    return builder.result(n_extra_columns)


class ForceGramBuilder:
    """Accumulates :class:`ForceGram` structure by structure.

    Rows are copied into one buffer of :data:`_GEMM_BYTES`; each full buffer is one
    ``syrk`` (the upper triangle of ``B^T B``: half the flops of a GEMM) and one GEMV. Memory:
    ``d x d`` plus the buffer. The sign of ``G = -gradients`` cancels in ``G^T G`` and is
    applied once to ``G^T F``.
    """

    def __init__(self) -> None:
        self._gram: np.ndarray | None = None  # upper triangle only, until result()
        self._gtf: np.ndarray | None = None
        self._buf: np.ndarray | None = None
        self._fbuf: np.ndarray | None = None
        self._fill = 0
        self.n_rows = 0
        self.n_frames = 0

    def add(self, gradients: np.ndarray, forces: np.ndarray) -> None:
        """Add one structure: its summed gradients (n, 3, d) and reference forces (n, 3)."""
        g = np.asarray(gradients)
        rows = g.reshape(-1, g.shape[-1])
        f = np.asarray(forces, dtype=np.float64).reshape(-1)
        if self._buf is None:
            n_buf = max(_GEMM_BYTES // (8 * rows.shape[1]), 1)
            self._buf = np.empty((n_buf, rows.shape[1]))  # rows copy in contiguously
            self._fbuf = np.empty(n_buf)
            self._gram = np.zeros((rows.shape[1], rows.shape[1]), order="F")
            self._gtf = np.zeros(rows.shape[1])
        self.n_rows += rows.shape[0]
        self.n_frames += 1
        if rows.shape[0] > len(self._buf):  # a big structure: its own product
            self._product(np.asarray(rows, dtype=np.float64), f)
            return
        if self._fill + rows.shape[0] > len(self._buf):
            self._flush()
        self._buf[self._fill : self._fill + rows.shape[0]] = rows
        self._fbuf[self._fill : self._fill + rows.shape[0]] = f
        self._fill += rows.shape[0]

    def _product(self, B: np.ndarray, f: np.ndarray) -> None:
        from scipy.linalg.blas import dsyrk

        # B^T B as A A^T with A = B^T: the transpose of a C-ordered block is the Fortran
        # array BLAS wants (no copy)
        self._gram = dsyrk(1.0, B.T, beta=1.0, c=self._gram, trans=0, lower=0,
                           overwrite_c=True)
        self._gtf -= B.T @ f

    def _flush(self) -> None:
        if self._fill:
            self._product(self._buf[: self._fill], self._fbuf[: self._fill])
            self._fill = 0

    def result(self, n_extra_columns: int = 0) -> ForceGram:
        """The accumulated :class:`ForceGram`, with ``n_extra_columns`` zero columns
        (baseline) appended; an empty (0 x 0) Gram when nothing was added."""
        self._flush()
        if self._gram is None:
            return ForceGram(np.zeros((0, 0)), np.zeros(0), 0, 0)
        upper = np.triu(self._gram)
        gram = upper + np.triu(upper, 1).T
        gtf = self._gtf.copy()
        if n_extra_columns:
            d = gram.shape[0] + n_extra_columns
            full = np.zeros((d, d))
            full[: gram.shape[0], : gram.shape[0]] = gram
            gram = full
            gtf = np.concatenate([gtf, np.zeros(n_extra_columns)])
        return ForceGram(gram=np.ascontiguousarray(gram), gtf=gtf, n_rows=self.n_rows,
                         n_frames=self.n_frames)


def check_gradient_bytes(n_atoms: int, width: int, what: str) -> None:
    """Refuse keeping ``(n_atoms, 3, width)`` float32 gradients over ``max_array_bytes``."""
    limit = get_limits().max_array_bytes
    need = n_atoms * 3 * width * 4
    if need > limit:
        raise InputError(
            f"{what}: the force rows of {n_atoms} atoms x {width} features would take "
            f"{need / 2**30:.2g} GiB (limit {limit / 2**30:.2g} GiB, LPRVIZ_MAX_ARRAY_BYTES); "
            "use fewer atoms or a smaller model"
        )


__all__ += ["check_gradient_bytes"]
