"""Explore: per-atom LPR on 3D structures, parity and rigidity plots, linked selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from lprviz import plots, rigidity, selection, sources
from lprviz.app import caches, common, state
from lprviz.viewer import structure_html

DATA_SHARE = "data share of the rigidity"
COLOR_BY = ("LPR", DATA_SHARE, "local prediction", "local error vs true local energy",
            "committee spread")
COMMITTEE_MODELS = 4
SWEEP_ALPHAS = state.ALPHA_POSITIONS[::2]  # every other slider position: read from its grid


ORDERS = ("lowest LPR first (test structures)", "lowest LPR first (all)", "group", "name")


def _structure_order(ds, res, how: str) -> list[int]:
    n = len(ds.frames)
    if how.startswith("lowest LPR first"):
        order = selection.frames_by_lowest_value(res.lpr, ds.structure_index, n)
        if how.endswith("(test structures)"):
            # The question a model's user asks first: which predictions are loose?
            order = sorted(order, key=lambda i: bool(res.train_mask[i]))
        return [int(i) for i in order]
    if how == "name":
        return sorted(range(n), key=lambda i: str(ds.names[i]))
    return sorted(range(n), key=lambda i: (str(ds.groups[i]), i))


def _structure_picker(source: str, ds, res, order: list[int]) -> int:
    """Selectbox of at most :data:`common.MAX_STRUCTURE_OPTIONS` structures in ``order``,
    narrowed by a text filter on name and group (a browser list of thousands of options
    costs more than the LPR update and nobody scrolls it)."""
    query = st.text_input("Find structure", key="structure_query",
                          placeholder="part of a name or group").strip().lower()
    if query:
        text = _search_text(source)
        matches = [i for i in order if query in text[i]]
        if matches:
            order = matches
        else:
            st.info(f"No structure matches '{common.plain_text(query)}'; showing them all.")
    shown = order[:common.MAX_STRUCTURE_OPTIONS]
    if len(order) > len(shown):
        st.caption(f"The first {len(shown)} of {len(order)} structures in this order; type "
                   "in *Find structure* to reach the others.")
    sizes = ds.frame_sizes
    labels = {i: f"{ds.names[i]} [{ds.groups[i]}] "
              f"({'train' if res.train_mask[i] else 'test'}, {sizes[i]} atoms)" for i in shown}
    return st.selectbox("Structure", shown, format_func=labels.__getitem__, key="structure")


def _search_text(source: str) -> list[str]:
    """Lower-case "name [group]" of every structure, what *Find structure* matches, once per
    dataset."""
    def compute() -> list[str]:
        ds = caches.dataset(source)
        return [f"{n} [{g}]".lower() for n, g in zip(ds.names, ds.groups, strict=True)]

    return caches.DERIVED.get((source, "search_text"), compute)


def _clear_selection() -> None:
    # plotly selections are widget state: a new key generation draws the charts afresh
    st.session_state["_selection_gen"] = st.session_state.get("_selection_gen", 0) + 1


def _chart_key(name: str) -> str:
    return f"{name}_{st.session_state.get('_selection_gen', 0)}"


def _forget_stale_selection(source: str) -> None:
    """A plot selection belongs to the dataset it was made on: drop it after a switch (its
    indices point into the other dataset)."""
    if st.session_state.get("_selection_source", source) != source:
        _clear_selection()
    st.session_state["_selection_source"] = source


def _linked_atoms(ds) -> np.ndarray:
    """Atom indices picked in the environment map or parity plot (session state)."""
    picked: list[int] = []
    state = st.session_state.get(_chart_key("env_map"))
    if state and state.get("selection", {}).get("points"):
        picked = [int(p["customdata"]) for p in state["selection"]["points"]
                  if "customdata" in p]
    picked = [i for i in picked if 0 <= i < ds.n_atoms]
    if picked:
        return np.asarray(picked)
    state = st.session_state.get(_chart_key("parity"))
    if state and state.get("selection", {}).get("points"):
        frames = [int(p["customdata"]) for p in state["selection"]["points"]
                  if "customdata" in p]
        frames = [f for f in frames if 0 <= f < len(ds.frames)]
        if frames:
            return np.arange(ds.n_atoms)[ds.atoms_of(frames[0])]
    return np.zeros(0, dtype=int)


def _lpr_table(source: str, res) -> pd.DataFrame:
    """Per-group LPR summary, groups sorted by name: each group's atoms are contiguous after
    one permutation computed per dataset (:func:`_group_runs`), so an alpha change costs
    one gather and a partition per group (O(n_atoms), no sort of 100k atoms)."""
    perm, bounds, names = _group_runs(source)
    ds = caches.dataset(source)
    train = np.asarray(res.train_mask, dtype=bool)[ds.structure_index][perm]
    lpr, share = res.lpr[perm], res.data_share[perm]
    runs = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    return pd.DataFrame({
        "group": names,
        "atoms": np.diff(bounds),
        "median_lpr": [np.median(lpr[r]) for r in runs],
        "min_lpr": [lpr[r].min() for r in runs],
        "training_atoms": [int(train[r].sum()) for r in runs],
        "median_data_share": [np.median(share[r]) for r in runs],
    })


def _group_runs(source: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Atom permutation that makes each group's atoms contiguous (groups sorted by name), the
    run boundaries (n_groups + 1,) and the group names, once per dataset."""
    def compute() -> tuple[np.ndarray, np.ndarray, list[str]]:
        groups = caches.atom_categories(source)["group"]  # every category occurs
        names = [str(c) for c in groups.categories]
        order = np.argsort(names, kind="stable")  # position by name -> category
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))  # category -> position by name
        keys = rank[np.asarray(groups.codes)]
        bounds = np.concatenate([[0], np.cumsum(np.bincount(keys, minlength=len(names)))])
        return np.argsort(keys, kind="stable"), bounds, [names[i] for i in order]

    return caches.DERIVED.get((source, "group_runs"), compute)


def _regulariser_warning(ds, res) -> None:
    """One line when alpha, not the training data, sets most test atoms' LPR
    (docs/science.md §11): otherwise a prior-only number passes for a rigidity."""
    test = ~np.asarray(res.train_mask, dtype=bool)[ds.structure_index]
    what = "test atoms"
    if not test.any():  # everything trains: judge all atoms rather than none
        test, what = np.ones_like(test), "atoms"
    line = rigidity.regulariser_limited(res.data_share[test], what=what)
    if line is not None:
        st.warning(common.plain_text(line) + f" (colour by *{DATA_SHARE}* to see which).")


def _alpha_dependent(settings: state.Settings) -> None:
    """Everything on the page depends on alpha (a fragment: reruns alone when it moves)."""
    _forget_stale_selection(settings.source)
    ds = caches.dataset(settings.source)
    alpha = state.alpha_slider()
    train = state.training_frames(settings)
    res = state.current_results(settings, alpha)
    n_train = len(train)
    st.caption(
        f"**{common.plain_text(settings.label)}**: {len(ds.frames)} structures, "
        f"{ds.n_atoms} atoms; training set "
        f"{n_train} structures, test {len(ds.frames) - n_train} structures (edit on the "
        f"*Training set* page); alpha = {alpha:.3g}; "
        f"model {settings.spec.kind}, "
        f"{common.plain_text(sources.key_label(settings.preset))}."
    )
    und = np.asarray(res.undetermined, dtype=bool)
    if und.any():
        st.warning(f"{int(und.sum())} atoms are undetermined at this alpha (grey in the viewer):"
                   " with alpha this close to 0 neither the data nor the regulariser pin their"
                   " local energy; raise alpha or add data.")

    _regulariser_warning(ds, res)

    vmin, vmax = _lpr_range(res.lpr)
    left, right = st.columns([3, 2])
    with left:
        c1, c2, c3 = st.columns(3)
        how = c1.selectbox("Order structures by", ORDERS, key="order")
        groups = ["all", *dict.fromkeys(str(g) for g in ds.groups)]
        group = c2.selectbox("Group", groups, key="group_filter")
        color_by = c3.selectbox("Colour by", COLOR_BY, key="color_by")
        order = _structure_order(ds, res, how)
        if group != "all":
            order = [i for i in order if str(ds.groups[i]) == group]
        linked = _linked_atoms(ds)
        if linked.size:
            frame = int(ds.structure_index[linked[0]])
            i1, i2 = st.columns([3, 1])
            i1.info(f"Showing the structure picked in a plot; {linked.size} atom(s) "
                    "highlighted.")
            i2.button("Clear selection", key="clear_selection", on_click=_clear_selection,
                      help="Back to the structure list (double-clicking the plot also "
                           "clears it).")
        else:
            frame = _structure_picker(settings.source, ds, res, order)
        o1, o2, o3, o4 = st.columns(4)
        style = o1.radio("Style", ["sphere", "stick"], horizontal=True, key="style")
        log = o2.toggle("Log colours", key=state.remembered("log_colours", True))
        show_cell = o3.toggle("Unit cell", key=state.remembered("show_cell", True))
        grey = o4.toggle("Grey if undetermined", key=state.remembered("grey_undetermined", True),
                         help="Atoms whose LPR is below numerical resolution (alpha ~ 0 and a "
                         "descriptor outside the span of the training data).")
        if not grey:
            res = _without_undetermined(res)
        _viewer(ds, res, settings, int(frame), color_by, style, log, show_cell, vmin, vmax,
                linked)
    with right:
        e_ref = np.asarray(ds.energies, float) / ds.frame_sizes
        e_pred = np.asarray(res.energy_pred, float) / ds.frame_sizes
        st.plotly_chart(
            plots.parity_figure(e_ref, e_pred, is_train=res.train_mask, groups=ds.groups,
                                names=ds.names),
            key=_chart_key("parity"), on_select="rerun", selection_mode=("points",),
        )
        if res.forces_pred is not None:  # a force-trained model (sidebar toggle)
            st.plotly_chart(plots.force_parity_figure(
                res.forces, res.forces_pred, is_train=res.train_mask[ds.structure_index]))
            if res.notice:
                st.caption(res.notice)

    # full width: in the parity plot's column the six columns were cut off
    categories = caches.atom_categories(settings.source)
    st.dataframe(plots.format_table(_lpr_table(settings.source, res)), hide_index=True,
                 width="stretch", key="lpr_table")
    # Only the open tab runs (stateful tabs): the others' figures cost as much as the whole
    # LPR update at 100k atoms, for content nobody looks at.
    tab1, tab2, tab3, tab4 = st.tabs(["LPR distributions", "LPR vs alpha", "Environment map",
                                      "Local error vs LPR"], key="explore_tab",
                                     on_change="rerun")
    if tab4.open:
        with tab4:
            common.local_error_section(ds, res, key="explore_errors")
            st.caption("Where the dataset knows each atom's true energy (EMT), the lowest-LPR "
                       "test atoms are where the model's local predictions go wrong: the LPR "
                       "warns without needing that truth.")
    if tab1.open:
        with tab1:
            a, b = st.columns(2)
            a.plotly_chart(plots.lpr_distribution_figure(res.lpr, categories["group"],
                                                         title="per group"))
            b.plotly_chart(plots.lpr_distribution_figure(res.lpr, categories["species"],
                                                         title="per species"))
    if tab2.open:
        with tab2:
            labels, medians = caches.group_lpr_sweep(settings.source, settings.preset, train,
                                                     settings.spec, SWEEP_ALPHAS,
                                                     grid_alphas=state.ALPHA_POSITIONS)
            st.plotly_chart(plots.lpr_alpha_figure(np.asarray(SWEEP_ALPHAS), medians,
                                                   list(labels), current_alpha=alpha))
            st.caption("Median LPR of each group's atoms. LPR rises with alpha toward "
                       "alpha/|x|^2, for every atom: regularisation buys rigidity with "
                       "accuracy.")
    if tab3.open:
        with tab3:
            _environment_map(settings, res, vmin, vmax)


def _environment_map(settings: state.Settings, res, vmin: float, vmax: float) -> None:
    coords = caches.environment_map(settings.source, settings.preset)
    shown, where = _map_points(settings.source)
    hover = [f"{w}: LPR {v:.3g}" for w, v in zip(where, res.lpr[shown].tolist(), strict=True)]
    st.plotly_chart(
        plots.environment_map_figure(coords[shown], res.lpr[shown], vmin=vmin, vmax=vmax,
                                     hover=hover, hover_escaped=True, customdata=shown),
        key=_chart_key("env_map"), on_select="rerun", selection_mode=("points", "box", "lasso"),
    )
    st.caption("PCA of the SOAP descriptors, coloured like the viewer. Select points "
               "(box or lasso) to show their structure with those atoms highlighted.")


def _map_points(source: str) -> tuple[np.ndarray, list[str]]:
    """Atoms drawn in the environment map (a fixed stride, :func:`common.every_kth`) and
    their alpha-independent hover text (structure, index in it, species; escaped), once per
    dataset."""
    def compute() -> tuple[np.ndarray, list[str]]:
        ds = caches.dataset(source)
        sidx = ds.structure_index
        shown = common.every_kth(len(sidx))
        local_idx = (np.arange(len(sidx)) - np.searchsorted(sidx, sidx))[shown]
        species = np.asarray(caches.atom_categories(source)["species"])[shown]
        names = [str(ds.names[s]) for s in sidx[shown]]
        return shown, [plots.escape(f"{n} #{i} {sp}")
                       for n, i, sp in zip(names, local_idx.tolist(), species, strict=True)]

    return caches.DERIVED.get((source, "map_points", common.MAX_SCATTER_POINTS), compute)


def _lpr_range(lpr: np.ndarray) -> tuple[float, float]:
    """Colour range fixed across structures: the dataset's 1st-99th percentile, in decades."""
    v = np.asarray(lpr, float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return 1e-3, 1.0
    lo, hi = np.percentile(v, [1, 99])
    lo, hi = 10 ** np.floor(np.log10(lo)), 10 ** np.ceil(np.log10(hi))
    return float(lo), float(max(hi, lo * 10))


def _viewer(ds, res, settings, frame, color_by, style, log, show_cell, vmin, vmax,
            linked) -> None:
    sel = ds.atoms_of(frame)
    atoms = ds.frames[frame]
    lpr = res.lpr[sel]
    local = res.local_energy[sel]
    share = res.data_share[sel]
    info: dict[str, np.ndarray] = {"LPR": lpr, DATA_SHARE: share,
                                   "local prediction (eV)": local}
    true_local = None
    if ds.true_local_energies is not None:
        true_local = np.asarray(ds.true_local_energies)[sel]
        info["true local energy (eV)"] = true_local
    info["coordination"] = caches.coordination(settings.source)[sel]
    label, values, cmap, lg, lo, hi = "LPR", lpr, plots.LPR_COLORMAP, log, vmin, vmax
    if color_by == DATA_SHARE:
        # a fraction: linear and a fixed 0..1 range, so colours compare across structures
        label, values, cmap, lg, lo, hi = DATA_SHARE, share, "Cividis", False, 0.0, 1.0
        st.caption("Share of each atom's LPR that the training data provide: 1 − (alpha / "
                   "|x|²) / LPR. Near 0 the regulariser alone sets the number.")
    elif color_by == "local prediction":
        label, values, cmap, lg = "local prediction (eV)", local, "Plasma", False
        lo, hi = _lin_range(res.local_energy)
    elif color_by == "local error vs true local energy":
        if true_local is None:
            st.info("This dataset has no true local energies; colouring by LPR.")
        else:
            err = np.abs(local - true_local)
            label, values, cmap, lg = "|local error| (eV)", err, "Inferno", log
            all_err = np.abs(res.local_energy - np.asarray(ds.true_local_energies))
            lo, hi = _lpr_range(all_err) if log else _lin_range(all_err)
            info["|local error| (eV)"] = err
    elif color_by == "committee spread":
        train = state.training_frames(settings)
        check = caches.committee(settings.source, settings.preset, train, settings.spec,
                                 res.alpha, COMMITTEE_MODELS)
        spread = check.spread[sel]
        label, values, cmap, lg = "committee spread (eV)", spread, "Inferno", log
        lo, hi = _lpr_range(check.spread) if log else _lin_range(check.spread)
        info["committee spread (eV)"] = spread
        st.caption(f"Spread of the local prediction across {COMMITTEE_MODELS} models, each "
                   "trained on a random 70 % of the training set: the empirical counterpart "
                   f"of 1/LPR (rank correlation with 1/LPR {check.spearman:.2f}).")
    first = sel.start
    highlight = [int(i) - first for i in linked if ds.structure_index[int(i)] == frame]
    html = structure_html(
        atoms, values, vmin=lo, vmax=hi, log=lg, colormap=cmap, atom_info=info,
        highlight=highlight, style=style, show_cell=show_cell,
        undetermined=np.asarray(res.undetermined, bool)[sel] if label == "LPR" else None,
        title=f"{ds.names[frame]} [{ds.groups[frame]}]", colorbar_label=label,
        width="100%", height=420, script_url=common.script_url(),
    )
    st.iframe(html, height=520)


def _without_undetermined(res):
    """A view of ``res`` with no atom flagged (display choice only)."""
    import dataclasses

    return dataclasses.replace(res, undetermined=np.zeros_like(res.undetermined))


def _lin_range(v: np.ndarray) -> tuple[float, float]:
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(v, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def main() -> None:
    common.run_page("Explore local prediction rigidity", _alpha_dependent, fragment=True)


if __name__ == "__main__":
    main()
