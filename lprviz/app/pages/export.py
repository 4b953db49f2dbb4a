"""Export: per-atom LPR and local predictions as extxyz, CSV or a chemiscope input file."""

from __future__ import annotations

import numpy as np
import streamlit as st

from lprviz.app import caches, common, state
from lprviz.export import chemiscope_bytes, csv_bytes, extxyz_bytes


def _body(settings: state.Settings) -> None:
    ds = caches.dataset(settings.source)
    alpha = state.alpha_slider()
    res = state.current_results(settings, alpha)
    st.markdown(f"Results of **{common.plain_text(settings.label)}** with the current training set "
                f"({int(np.sum(res.train_mask))} structures) at alpha = {alpha:.3g}.")
    stem = common.file_stem(f"lprviz-{settings.label.rsplit('.', 1)[0]}")
    st.download_button("extxyz (per-atom lpr, data_share, local_energy)",
                       extxyz_bytes(ds, res),
                       file_name=f"{stem}.extxyz", mime="chemical/x-extxyz",
                       key="dl_extxyz")
    st.download_button("CSV (one row per atom)", csv_bytes(ds, res),
                       file_name=f"{stem}.csv", mime="text/csv", key="dl_csv")
    if st.toggle("Prepare chemiscope file", key="want_chemiscope",
                 help="Open it at chemiscope.org or with chemiscope.show_input()."):
        st.download_button("chemiscope input (.json.gz)", chemiscope_bytes(ds, res),
                           file_name=f"{stem}.chemiscope.json.gz",
                           mime="application/gzip", key="dl_chemiscope")


def main() -> None:
    common.run_page("Export results", _body, fragment=True)


if __name__ == "__main__":
    main()
