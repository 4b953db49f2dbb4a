"""Export: per-atom LPR and local predictions as extxyz, CSV or a chemiscope input file."""

from __future__ import annotations

import gzip
import io
import json
import tempfile
from pathlib import Path

import ase.io
import numpy as np
import pandas as pd
import streamlit as st

from lprviz.errors import InputError
from lprviz.pages import common


def annotated_frames(ds, res) -> list:
    """Copies of the frames with per-atom ``lpr``, ``log10_lpr``, ``local_energy``,
    ``undetermined`` arrays.

    ASE's extxyz writer prints floats with 8 decimals, which loses the relative precision of
    small LPR values; ``log10_lpr`` keeps it.
    """
    out = []
    sidx = ds.structure_index
    for i, atoms in enumerate(ds.frames):
        sel = sidx == i
        a = atoms.copy()
        a.calc = atoms.calc  # keep the reference energy (written as a calculator result)
        a.arrays["lpr"] = res.lpr[sel]
        a.arrays["log10_lpr"] = np.log10(res.lpr[sel])
        a.arrays["local_energy"] = res.local_energy[sel]
        a.arrays["undetermined"] = np.asarray(res.undetermined)[sel].astype(int)
        a.info["energy_pred"] = float(res.energy_pred[i])
        a.info["pr"] = float(res.pr[i])
        a.info["in_training"] = bool(res.train_mask[i])
        a.info["lpr_alpha"] = float(res.alpha)
        out.append(a)
    return out


def extxyz_bytes(ds, res) -> bytes:
    """Extended XYZ of every frame with the per-atom results."""
    buf = io.StringIO()
    ase.io.write(buf, annotated_frames(ds, res), format="extxyz")
    return buf.getvalue().encode()


def csv_bytes(ds, res) -> bytes:
    """One CSV row per atom: frame, name, group, species, position, LPR, local energy."""
    sidx = ds.structure_index
    pos = np.concatenate([a.positions for a in ds.frames])
    df = pd.DataFrame({
        "frame": sidx, "name": np.asarray([str(n) for n in ds.names])[sidx],
        "group": np.asarray([str(g) for g in ds.groups])[sidx],
        "atom": np.arange(len(sidx)) - np.searchsorted(sidx, sidx),
        "Z": ds.atom_numbers, "x": pos[:, 0], "y": pos[:, 1], "z": pos[:, 2],
        "lpr": res.lpr, "undetermined": np.asarray(res.undetermined, bool),
        "local_energy": res.local_energy,
        "in_training": np.asarray(res.train_mask, bool)[sidx],
    })
    if ds.true_local_energies is not None:
        df["true_local_energy"] = ds.true_local_energies
    return df.to_csv(index=False).encode()


def chemiscope_bytes(ds, res) -> bytes:
    """A chemiscope input file (gzipped JSON) with LPR as an atom property."""
    import chemiscope

    frames = [a.copy() for a in ds.frames]
    properties = {
        "LPR": {"target": "atom", "values": res.lpr.tolist(),
                "description": f"local prediction rigidity at alpha={res.alpha:.3g}"},
        "log10 LPR": {"target": "atom", "values": np.log10(res.lpr).tolist()},
        "local energy": {"target": "atom", "values": res.local_energy.tolist(), "units": "eV"},
        "energy per atom": {"target": "structure",
                            "values": (np.asarray(ds.energies) / ds.frame_sizes).tolist(),
                            "units": "eV"},
        "in training": {"target": "structure",
                        "values": [str(bool(t)) for t in res.train_mask]},
        "group": {"target": "structure", "values": [str(g) for g in ds.groups]},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lprviz.json.gz"
        chemiscope.write_input(
            str(path), frames=frames, properties=properties,
            environments=chemiscope.all_atomic_environments(frames),
            meta={"name": f"lprviz: {ds.name}"},
            settings={"structure": [{"color": {"property": "log10 LPR"}}]},
        )
        return path.read_bytes()


def main() -> None:
    st.title("Export results")
    settings = common.sidebar()
    try:
        ds = common.dataset(settings.source)
        alpha = common.alpha_slider()
        res = common.current_results(settings, alpha)
        st.markdown(f"Results of **{settings.label}** with the current training set "
                    f"({int(np.sum(res.train_mask))} structures) at alpha = {alpha:.3g}.")
        stem = f"lprviz-{settings.label.rsplit('.', 1)[0]}"
        st.download_button("extxyz (per-atom lpr, local_energy)", extxyz_bytes(ds, res),
                           file_name=f"{stem}.extxyz", mime="chemical/x-extxyz",
                           key="dl_extxyz")
        st.download_button("CSV (one row per atom)", csv_bytes(ds, res),
                           file_name=f"{stem}.csv", mime="text/csv", key="dl_csv")
        if st.toggle("Prepare chemiscope file", key="want_chemiscope",
                     help="Open it at chemiscope.org or with chemiscope.show_input()."):
            st.download_button("chemiscope input (.json.gz)", chemiscope_bytes(ds, res),
                               file_name=f"{stem}.chemiscope.json.gz",
                               mime="application/gzip", key="dl_chemiscope")
    except InputError as exc:
        st.error(str(exc))


def _read_chemiscope(data: bytes) -> dict:
    """Parse a chemiscope file produced by :func:`chemiscope_bytes` (tests)."""
    return json.loads(gzip.decompress(data))


if __name__ == "__main__":
    main()
