"""A small Behler–Parrinello-style neural network on SOAP, and its last-layer features.

Architecture: one network shared by all species (the species enters as a one-hot input
appended to the standardised SOAP vector, so any number of species costs one network and
species with few atoms borrow strength from the others),

.. math::

    f_k = \\sigma(W_2\\, \\sigma(W_1 [\\tilde x_k, e_{Z_k}] + b_1) + b_2), \\qquad
    \\varepsilon_k = w^\\top f_k + b,

with :math:`\\sigma` the SiLU, :math:`\\tilde x_k` the SOAP vector standardised column by
column over the training atoms and :math:`\\varepsilon_k` the local energy. Training follows
the per-atom-mean convention (docs/science.md §3): the loss is the halved mean squared error
of energies per atom, :math:`\\tfrac12 \\langle (y_A/n_A - \\langle\\varepsilon\\rangle_A)^2
\\rangle_A`, on targets from which a least-squares composition baseline was removed and that
were divided by their spread; Adam with a fixed seed, full batch, early stopping on a
held-out tenth of the training frames (the weights of the best held-out loss are kept).

:meth:`NNFeatureMap.transform` gives :math:`f_k` (numpy only: the trained weights are kept
as arrays), the inputs of the final linear readout. :func:`lprviz.pipeline.prepare` treats
them as the features of a ridge readout, so the LPR it computes is the last-layer prediction
rigidity (LLPR; Bigi, Chong, Ceriotti, Grasselli, Mach. Learn.: Sci. Technol. 5, 045018
(2024); docs/science.md §13).

Torch is optional (the ``lprviz[nn]`` extra); without it :func:`fit_nn` raises a one-line
:class:`~lprviz.errors.InputError` saying how to add it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

from lprviz.errors import InputError
from lprviz.models import composition_features

__all__ = ["NNFeatureMap", "fit_nn", "torch_missing"]

#: What a user is told when torch is not installed.
INSTALL_HINT = "the neural-network model needs torch: pip install 'lprviz[nn]'"


def torch_missing() -> str | None:
    """None when torch can be imported, else the one-line hint :data:`INSTALL_HINT`."""
    return None if importlib.util.find_spec("torch") is not None else INSTALL_HINT


def _silu(x: np.ndarray) -> np.ndarray:
    return x * expit(x)


@dataclass(eq=False)
class NNFeatureMap:
    """A trained network: SOAP of an atom -> its last hidden layer (the readout's inputs).

    Attributes
    ----------
    species : tuple of int
        Species of the one-hot input columns.
    mean, std : numpy.ndarray of shape (d_soap,)
        Column standardisation of the SOAP inputs (training atoms).
    weights : list of (W, b) numpy arrays
        The two hidden layers, ``W`` of shape (inputs, hidden).
    readout : tuple of (numpy.ndarray of shape (hidden,), float)
        The network's own readout ``(w, b)`` (on standardised targets).
    history : numpy.ndarray of shape (n_epochs, 2)
        Training and held-out loss per epoch (halved mean square, standardised units).
    best_epoch : int
        Epoch whose weights were kept (``history[best_epoch, 1]`` is their held-out loss).
    seed : int
    target_shift : numpy.ndarray of shape (n_species,)
        Per-species energies per atom of the least-squares composition baseline (eV).
    target_scale : float
        Spread of the energies per atom after the baseline (eV): the unit of the targets.
    held_out : numpy.ndarray of shape (n_frames,), bool
        Training frames held out for early stopping.
    """

    species: tuple[int, ...]
    mean: np.ndarray
    std: np.ndarray
    weights: list
    readout: tuple
    history: np.ndarray
    best_epoch: int
    seed: int
    target_shift: np.ndarray = field(default_factory=lambda: np.zeros(0))
    target_scale: float = 1.0
    held_out: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def n_features(self) -> int:
        """Width of the last hidden layer."""
        return int(self.weights[-1][0].shape[1])

    def transform(self, values: np.ndarray, atom_numbers: np.ndarray, *,
                  chunk: int = 8192) -> np.ndarray:
        """Last-layer features of atoms with SOAP ``values`` (n, d_soap) -> (n, hidden)."""
        values = np.asarray(values, dtype=np.float64)
        onehot = composition_features(np.asarray(atom_numbers), self.species)
        out = np.empty((values.shape[0], self.n_features))
        for start in range(0, values.shape[0], chunk):
            h = np.hstack([(values[start:start + chunk] - self.mean) / self.std,
                           onehot[start:start + chunk]])
            for W, b in self.weights:
                h = _silu(h @ W + b)
            out[start:start + chunk] = h
        return out

    def predict_local(self, values: np.ndarray, atom_numbers: np.ndarray) -> np.ndarray:
        """The network's own local energies (eV) of atoms (n,): readout, spread and the
        composition baseline put back."""
        w, b = self.readout
        eps = self.transform(values, atom_numbers) @ w + b
        base = composition_features(np.asarray(atom_numbers), self.species) @ self.target_shift
        return eps * self.target_scale + base


def fit_nn(
    values: np.ndarray,
    atom_numbers: np.ndarray,
    structure_index: np.ndarray,
    energies: np.ndarray,
    *,
    species: Sequence[int],
    hidden: int = 32,
    seed: int = 0,
    max_epochs: int = 600,
    patience: int = 60,
    learning_rate: float = 3e-3,
    held_out: float = 0.1,
    progress=None,
) -> NNFeatureMap:
    """Train the network on the training atoms' SOAP and the frames' total energies.

    Parameters
    ----------
    values : numpy.ndarray of shape (n_atoms, d_soap)
        SOAP of the training atoms.
    atom_numbers : numpy.ndarray of shape (n_atoms,)
    structure_index : numpy.ndarray of shape (n_atoms,)
        Training frame of each atom, 0..n_frames-1.
    energies : numpy.ndarray of shape (n_frames,)
        Total energies (eV).
    species : sequence of int
        Species of the one-hot inputs (the dataset's).
    hidden : int
        Width of both hidden layers (the LLPR's feature count before the baseline).
    seed : int
        Seed of the initial weights and of the held-out frames (the result is deterministic
        for a fixed seed up to floating-point reordering).
    max_epochs, patience : int
        Full-batch Adam steps at most, and steps without a better held-out loss before
        stopping.
    learning_rate : float
    held_out : float
        Fraction of the training frames held out for early stopping (none below 5 frames).
    progress : callable, optional
        ``progress(epoch, max_epochs)`` every 20 epochs.

    Returns
    -------
    NNFeatureMap
    """
    reason = torch_missing()
    if reason is not None:
        raise InputError(f"model nn: {reason}")
    import torch

    values = np.asarray(values, dtype=np.float64)
    structure_index = np.asarray(structure_index, dtype=np.int64)
    energies = np.asarray(energies, dtype=np.float64)
    n_frames = len(energies)
    species = tuple(int(z) for z in species)
    sizes = np.bincount(structure_index, minlength=n_frames)
    if values.shape[0] == 0 or np.any(sizes == 0):
        raise InputError("model nn: every training frame needs at least one atom")
    onehot = composition_features(atom_numbers, species)
    # targets: energies per atom minus a least-squares composition baseline, in units of
    # their spread (the pipeline refits its own readout, so only the features matter)
    comp = np.zeros((n_frames, len(species)))
    np.add.at(comp, structure_index, onehot)
    comp /= sizes[:, None]
    y = energies / sizes
    shift = np.linalg.lstsq(comp, y, rcond=None)[0]
    resid = y - comp @ shift
    spread = float(np.std(resid)) or 1.0
    target = resid / spread

    mean = values.mean(axis=0)
    std = values.std(axis=0)
    std[std <= 1e-12 * max(float(std.max()), 1e-300)] = 1.0  # constant columns pass as zeros
    rng = np.random.default_rng(seed)
    n_val = int(round(held_out * n_frames)) if n_frames >= 5 else 0
    val = np.zeros(n_frames, dtype=bool)
    val[rng.choice(n_frames, size=n_val, replace=False)] = True

    threads = torch.get_num_threads()
    # One thread: these matrices are small, and torch's 2 threads on a busy 2-core machine
    # were 19x slower per epoch (0.32 s vs 0.017 s, 4000 atoms x 1476 inputs); also keeps the
    # summation order, hence the weights, the same from run to run.
    torch.set_num_threads(1)
    try:
        return _train(torch, values, onehot, structure_index, sizes, target, val, mean, std,
                      species=species, hidden=hidden, seed=seed, max_epochs=max_epochs,
                      patience=patience, learning_rate=learning_rate, progress=progress,
                      shift=shift, spread=spread)
    finally:
        torch.set_num_threads(threads)


def _train(torch, values, onehot, structure_index, sizes, target, val, mean, std, *, species,
           hidden, seed, max_epochs, patience, learning_rate, progress, shift,
           spread) -> NNFeatureMap:
    """The Adam loop of :func:`fit_nn` (arguments prepared there)."""
    n_frames, n_val = len(sizes), int(val.sum())
    torch.manual_seed(seed)
    dtype = torch.float32
    X = torch.as_tensor(np.hstack([(values - mean) / std, onehot]), dtype=dtype)
    idx = torch.as_tensor(structure_index)
    inv_size = torch.as_tensor(1.0 / sizes, dtype=dtype)
    t = torch.as_tensor(target, dtype=dtype)
    train_w = torch.as_tensor((~val).astype(np.float64) / max(int((~val).sum()), 1),
                              dtype=dtype)
    val_w = torch.as_tensor(val.astype(np.float64) / max(n_val, 1), dtype=dtype)
    net = torch.nn.Sequential(
        torch.nn.Linear(X.shape[1], hidden), torch.nn.SiLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
        torch.nn.Linear(hidden, 1),
    )
    opt = torch.optim.Adam(net.parameters(), lr=learning_rate)
    history, best, best_epoch, best_state = [], np.inf, 0, None
    for epoch in range(max_epochs):
        opt.zero_grad()
        local = net(X).squeeze(1)
        per_atom = torch.zeros(n_frames, dtype=dtype).index_add_(0, idx, local) * inv_size
        sq = 0.5 * (per_atom - t) ** 2
        loss = (sq * train_w).sum()
        val_loss = float((sq.detach() * val_w).sum()) if n_val else float(loss.detach())
        history.append((float(loss.detach()), val_loss))
        if val_loss < best:  # the weights that gave this loss, before the step below
            best, best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
        loss.backward()
        opt.step()
        if progress is not None and epoch % 20 == 0:
            progress(epoch, max_epochs)
    net.load_state_dict(best_state)
    layers = [m for m in net if isinstance(m, torch.nn.Linear)]
    as_np = [(m.weight.detach().double().numpy().T.copy(), m.bias.detach().double().numpy())
             for m in layers]
    return NNFeatureMap(
        species=species, mean=mean, std=std, weights=as_np[:2],
        readout=(as_np[2][0][:, 0].copy(), float(as_np[2][1][0])),
        history=np.asarray(history), best_epoch=best_epoch, seed=seed,
        target_shift=shift, target_scale=spread, held_out=val.copy(),
    )
