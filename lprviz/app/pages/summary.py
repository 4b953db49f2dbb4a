"""Summary: open the summary of a big run (``lprviz lpr --summary run.json --sample N``).

A 10^6-atom result is too big to open here; its JSON summary holds the LPR quantiles per
group and per species and the lowest-LPR structures and atoms, and its sample file
(``run.sample.extxyz``) the lowest-LPR structures themselves, annotated like any output.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from lprviz import datasets, plots
from lprviz.app import common
from lprviz.errors import InputError
from lprviz.summary import QUANTILE_COLUMNS, read_summary
from lprviz.viewer import structure_html


def quantile_figure(rows: list[dict]) -> go.Figure:
    """One line per key: 5-95 % thin, 25-75 % thick, the median as a dot; log LPR axis."""
    fig = go.Figure()
    labels = [plots.escape(f"{r['by']}: {r['key']}") for r in rows]
    for lo, hi, width in (("q05", "q95", 2), ("q25", "q75", 8)):
        xs, ys = [], []
        for label, r in zip(labels, rows, strict=True):
            xs += [r[lo], r[hi], None]
            ys += [label, label, None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"width": width},
                                 name=f"{lo[1:]}-{hi[1:]} %", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=[r["q50"] for r in rows], y=labels, mode="markers",
                             name="median", marker={"size": 9, "color": "black"}))
    fig.update_layout(xaxis={"type": "log", "title": {"text": "LPR"}},
                      yaxis={"autorange": "reversed"}, height=120 + 28 * len(rows),
                      margin={"l": 10, "r": 10, "t": 30, "b": 10})
    return fig


def _sample(upload) -> None:
    """The sample's structures: a table and one of them in the 3D viewer, coloured by LPR."""
    with tempfile.TemporaryDirectory(prefix="lprviz-sample-") as tmp:
        path = Path(tmp) / "sample.extxyz"
        path.write_bytes(upload.getvalue())
        ds = datasets.load(path, label=upload.name)  # the validating reader, never pickle
    if not all("lpr" in a.arrays for a in ds.frames):
        raise InputError(f"{upload.name}: expected structures with a per-atom 'lpr' array "
                         "(a file written by lprviz lpr --sample)")
    lows = [float(a.arrays["lpr"].min()) for a in ds.frames]
    st.dataframe(pd.DataFrame({"name": ds.names, "group": ds.groups,
                               "atoms": np.asarray(ds.frame_sizes), "lowest LPR": lows}),
                 hide_index=True)
    frame = st.selectbox("Structure", range(len(ds.frames)), key="summary_frame",
                         format_func=lambda i: str(ds.names[i]))
    atoms = ds.frames[frame]
    lpr = np.asarray(atoms.arrays["lpr"], dtype=float)
    everything = np.concatenate([a.arrays["lpr"] for a in ds.frames])
    st.iframe(structure_html(
        atoms, lpr, vmin=float(everything.min()), vmax=float(everything.max()),
        atom_info={"LPR": lpr}, title=f"{ds.names[frame]} [{ds.groups[frame]}]",
        width="100%", height=420, script_url=common.script_url()), height=520)


def _summary(upload) -> None:
    """The summary's alpha, quantile plot and tables."""
    try:
        text = upload.getvalue().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{upload.name}: not a UTF-8 text file") from None
    data = read_summary(io.StringIO(text), source=upload.name)
    st.markdown(f"LPR at alpha = {float(data['alpha']):.3g}")
    rows = [r for r in data["quantiles"] if all(c in r for c in QUANTILE_COLUMNS)]
    if rows:
        st.plotly_chart(quantile_figure(rows), key="summary_plot")
    st.dataframe(pd.DataFrame(rows, columns=list(QUANTILE_COLUMNS)), hide_index=True)
    st.subheader("Lowest-LPR structures")
    st.dataframe(pd.DataFrame(data["lowest_structures"]), hide_index=True)
    st.subheader("Lowest-LPR atoms")
    st.dataframe(pd.DataFrame(data["lowest_atoms"]), hide_index=True)


def _body(_settings) -> None:
    upload = st.file_uploader("Summary (.json from lprviz lpr --summary)", type=["json"],
                              key="summary_json")
    if upload is None:
        st.markdown("Run `lprviz lpr ... --summary run.json --sample 20` (with `--workers N` "
                    "on a big set), then open `run.json` here, and `run.sample.extxyz` below.")
    else:
        with common.guarded():  # a bad summary leaves the sample's uploader in place
            _summary(upload)
    sample = st.file_uploader("Sample of structures (.sample.extxyz from --sample)",
                              type=["extxyz", "xyz"], key="summary_sample")
    if sample is not None:
        _sample(sample)


def main() -> None:
    common.run_page("Summary of a big run", _body)


if __name__ == "__main__":
    main()
