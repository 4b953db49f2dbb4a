"""Compare: two training sets A and B at the same feature scale (per-atom LPR ratio B/A), or
two models (feature source and readout) on the current training set (rank agreement)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import streamlit as st

from lprviz import comparison, features, insight_plots, plots, selection, sources
from lprviz.app import caches, common, state
from lprviz.errors import InputError
from lprviz.viewer import structure_html

CURRENT = "current training set"
MODES = ("two training sets", "two models")


def _choose(settings: state.Settings, ds, numbers, side: str, default: str) -> tuple[int, ...]:
    options = [CURRENT, *selection.PRESETS]
    choice = st.selectbox(f"Training set {side}", options,
                          key=state.remembered(f"cmp_{side}", default))
    if choice == CURRENT:
        return state.training_frames(settings)
    mask = selection.preset_mask(choice, ds.groups, numbers, seed=0)
    return tuple(int(i) for i in np.flatnonzero(mask))


def main() -> None:
    common.run_page(
        "Compare", _body,
        intro=(
            "**Two training sets** (the paper's central experiment): train on set A, then on "
            "set B, and see which atoms became more (or less) rigid. Both fits use **A's "
            "feature scale**, so the ratio reflects the data, not a changed regulariser. "
            "Blue: B pins the atom's local prediction more firmly (ratio > 1); red: less.\n\n"
            "**Two models**: the same training set and alpha, two (features, model) pairs; "
            "each model has its own feature scale, so their LPRs are compared by rank."
        ),
    )


def _body(settings: state.Settings) -> None:
    mode = st.radio("Compare", MODES, horizontal=True, key="cmp_mode")
    if mode == MODES[1]:
        _two_models(settings)
        return
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


# --------------------------------------------------------------------------- two models


def _model_options(source: str) -> dict[str, str]:
    """Label -> feature-source key: every SOAP preset, then the sidebar's other sources."""
    options = {sources.key_label(p): p for p in features.SOAP_PRESETS}
    options.update({label: key for label, key in state.feature_options(source).items()
                    if key is not None})
    return options


def _pick_model(settings: state.Settings, side: str, key: str, kind: str) -> tuple[str, str]:
    """Draw the feature-source and model choices of model ``side``; return (key, kind)."""
    options = _model_options(settings.source)
    labels, kinds = list(options), state.model_kinds()
    default = sources.key_label(key) if key in options.values() else labels[0]
    feature = st.selectbox(f"Features {side}", labels, index=labels.index(default),
                           key=f"cmp_features_{side}")
    kind = st.radio(f"Model {side}", kinds, index=kinds.index(kind) if kind in kinds else 0,
                    horizontal=True, key=f"cmp_kind_{side}")
    note = state.computed_note(options[feature], kind)
    if note is not None:
        st.caption(common.plain_text(note))
    return options[feature], kind


def _spec(settings: state.Settings, key: str, kind: str):
    """The sidebar's model spec for (``key``, ``kind``); training on forces is kept where it
    applies (SOAP features, a linear or sparse-kernel readout)."""
    forces = sources.from_key(key).kind == "soap" and kind != "nn"
    return replace(settings.spec, kind=kind,
                   force_weight=settings.spec.force_weight if forces else None)


def _two_models(settings: state.Settings) -> None:
    train = state.training_frames(settings)
    kind_b = "sparse-kernel" if settings.spec.kind == "linear" else "linear"
    c1, c2 = st.columns(2)
    with c1:
        a = _pick_model(settings, "a", settings.preset, settings.spec.kind)
    with c2:
        b = _pick_model(settings, "b", settings.preset, kind_b)
    st.caption(f"Both on the current training set ({len(train)} structures; edit it on the "
               "Training set page) and the same alpha. The LPR of each model is that of its "
               "linear readout refit on this training set.")
    common.guarded_fragment(_models_at_alpha, settings, train, a, b)


def _models_at_alpha(settings: state.Settings, train: tuple[int, ...], a: tuple[str, str],
                     b: tuple[str, str]) -> None:
    alpha = state.alpha_slider()
    ds = caches.dataset(settings.source)
    specs = [_spec(settings, key, kind) for key, kind in (a, b)]
    res = [state.current_results(replace(settings, preset=key, spec=spec), alpha, train)
           for (key, _), spec in zip((a, b), specs, strict=True)]
    labels = [f"{sources.key_label(key)}, {kind}" for key, kind in (a, b)]
    if settings.spec.force_weight is not None:
        # the sidebar trains on forces: say which of the two could follow it
        trained = ["energies only" if spec.force_weight is None else "energies and forces"
                   for spec in specs]
        labels = [f"{label} ({t})" for label, t in zip(labels, trained, strict=True)]
        if any(spec.force_weight is None for spec in specs):
            st.caption("Training on forces needs SOAP features with a linear or sparse-kernel "
                       "readout; a model marked *energies only* is fitted to energies alone.")
    sidx = ds.structure_index
    groups_atom = np.asarray(ds.groups)[sidx].astype(str)
    agree = caches.rank_agreement(settings.source, (a, specs[0], b, specs[1]), train, alpha,
                                  res[0].lpr, res[1].lpr, groups_atom)
    st.metric("Spearman rank correlation, all atoms", f"{agree.spearman:.3f}")
    left, right = st.columns([3, 2])
    with left:
        drawn = common.every_kth(sidx.size)
        st.plotly_chart(insight_plots.model_scatter_figure(
            res[0].lpr[drawn], res[1].lpr[drawn], groups_atom[drawn], label_a=labels[0],
            label_b=labels[1], spearman=agree.spearman), key="cmp_models_scatter")
        if drawn.size < sidx.size:
            st.caption(f"The plot shows every {sidx.size // drawn.size}th of {sidx.size} "
                       "atoms; the correlations use every atom.")
    with right:
        st.dataframe(plots.format_table(agree.per_group.rename(
            columns={"spearman": "Spearman a vs b"})), hide_index=True, width="stretch",
            key="cmp_models_groups")
        st.caption("Training and test atoms alike. Rank difference = percentile rank of the "
                   "atom's LPR under b minus under a (blue: b finds it relatively more "
                   "rigid).")
    diff = agree.rank_difference
    spread = pd.Series(np.abs(diff)).groupby(sidx).median().reindex(range(len(ds.frames)))
    idx = np.argsort(-spread.to_numpy(), kind="stable")[:common.MAX_STRUCTURE_OPTIONS]
    names = {int(i): f"{ds.names[i]} [{ds.groups[i]}] median |rank difference| "
                     f"{spread.iloc[i]:.3g}" for i in idx}
    if idx.size < len(ds.frames):
        st.caption(f"The {idx.size} structures of most disagreement, of {len(ds.frames)}.")
    frame = st.selectbox("Structure (most disagreement first)", list(names),
                         format_func=names.__getitem__, key="cmp_models_structure")
    sel = ds.atoms_of(frame)
    html = structure_html(
        ds.frames[frame], diff[sel], vmin=-100.0, vmax=100.0, log=False,
        colormap=plots.RATIO_COLORMAP,
        atom_info={"rank difference b - a": diff[sel], "LPR a": res[0].lpr[sel],
                   "LPR b": res[1].lpr[sel]},
        title=f"{ds.names[frame]} [{ds.groups[frame]}]",
        colorbar_label="percentile rank b - a", width="100%", height=420,
        script_url=common.script_url(),
    )
    st.iframe(html, height=520)


if __name__ == "__main__":
    main()
