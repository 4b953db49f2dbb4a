"""Compare: two training sets A and B at the same feature scale; per-atom LPR ratio B/A."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from lprviz import comparison, plots, selection
from lprviz.app import caches, common, state
from lprviz.errors import InputError
from lprviz.viewer import structure_html

CURRENT = "current training set"


def _choose(settings: state.Settings, ds, numbers, side: str, default: str) -> tuple[int, ...]:
    options = [CURRENT, *selection.PRESETS]
    choice = st.selectbox(f"Training set {side}", options, index=options.index(default),
                          key=f"cmp_{side}")
    if choice == CURRENT:
        return state.training_frames(settings)
    mask = selection.preset_mask(choice, ds.groups, numbers, seed=0)
    return tuple(int(i) for i in np.flatnonzero(mask))


def main() -> None:
    common.run_page(
        "Compare two training sets", _body,
        intro=(
            "The paper's central experiment: train on set A, then on set B, and see which "
            "atoms became more (or less) rigid. Both fits use **A's feature scale**, so the"
            " ratio reflects the data, not a changed regulariser. Blue: B pins the atom's "
            "local prediction more firmly (ratio > 1); red: less."
        ),
    )


def _body(settings: state.Settings) -> None:
    ds = caches.dataset(settings.source)
    numbers = state.frame_numbers(settings.source)
    c1, c2 = st.columns(2)
    with c1:
        train_a = _choose(settings, ds, numbers, "A", "bulk only")
    with c2:
        train_b = _choose(settings, ds, numbers, "B", "bulk + a few surface/defect structures")
    # everything below depends on alpha: a fragment, so moving it reruns this part only
    common.guarded_fragment(_compare_at_alpha, settings, ds, train_a, train_b)


def _compare_at_alpha(settings: state.Settings, ds, train_a: tuple[int, ...],
                      train_b: tuple[int, ...]) -> None:
    alpha = state.alpha_slider()
    if not train_a or not train_b:
        raise InputError("training set A or B: empty; include at least one structure")
    scale = caches.fit(settings.source, settings.preset, train_a, settings.spec, None).scale
    res_a = caches.results(settings.source, settings.preset, train_a, settings.spec, None,
                           alpha)
    # B in A's feature space: A's scale (and A's active set for the sparse kernel)
    res_b = caches.results(settings.source, settings.preset, train_b, settings.spec, train_a,
                           alpha)
    ratio = res_b.lpr / res_a.lpr
    st.caption(f"A: {len(train_a)} structures, B: {len(train_b)} structures; alpha = "
               f"{alpha:.3g}; fixed scale s = {scale:.4g}.")

    sidx = ds.structure_index
    n = len(ds.frames)
    med = pd.Series(ratio).groupby(sidx).median().reindex(range(n)).to_numpy()
    left, right = st.columns([3, 2])
    with left:
        order = st.radio("Structures", ["largest gain first", "largest loss first"],
                         horizontal=True, key="cmp_order")
        idx = np.argsort(-med if order.startswith("largest gain") else med, kind="stable")
        labels = {int(i): f"{ds.names[i]} [{ds.groups[i]}] median ratio {med[i]:.3g}"
                  for i in idx}
        frame = st.selectbox("Structure", list(labels), format_func=labels.__getitem__,
                             key="cmp_structure")
        sel = ds.atoms_of(frame)
        vmin, vmax = plots.ratio_range(ratio)
        html = structure_html(
            ds.frames[frame], ratio[sel], vmin=vmin, vmax=vmax, log=True,
            colormap=plots.RATIO_COLORMAP,
            atom_info={"LPR ratio B/A": ratio[sel], "LPR A": res_a.lpr[sel],
                       "LPR B": res_b.lpr[sel]},
            title=f"{ds.names[frame]} [{ds.groups[frame]}]", colorbar_label="LPR ratio B/A",
            width="100%", height=420, script_url=common.script_url(),
        )
        st.iframe(html, height=520)
    with right:
        st.plotly_chart(plots.histogram_figure({"A": res_a.lpr, "B": res_b.lpr}),
                        key="cmp_hist")
        groups_atom = np.asarray(ds.groups)[sidx].astype(str)
        per_group = pd.DataFrame({"group": groups_atom, "ratio": ratio}).groupby("group")[
            "ratio"].median().rename("median ratio B/A").reset_index()
        st.dataframe(plots.format_table(per_group), hide_index=True, width="stretch",
                     key="cmp_groups")
    st.subheader("Structures that gained or lost most")
    gl = comparison.gain_loss(ds.names, ds.groups, sidx, res_a.lpr, res_b.lpr,
                              train_a=train_a, train_b=train_b, k=10)
    # Stacked, full width: side by side the nine columns of each table were cut off.
    for heading, rows, note, key in ((gl.gained_heading, gl.gained, gl.gained_note, "cmp_gain"),
                                     (gl.lost_heading, gl.lost, gl.lost_note, "cmp_loss")):
        st.markdown(f"**{common.plain_text(heading)}**")
        if note is not None:
            st.info(common.plain_text(note))
        else:
            st.dataframe(plots.format_table(rows), hide_index=True, width="stretch",
                         key=key)


if __name__ == "__main__":
    main()
