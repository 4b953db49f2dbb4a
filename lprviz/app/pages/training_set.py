"""Training set: compose which structures the model is trained on; live summary and LPR."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import streamlit as st
from ase.data import chemical_symbols

from lprviz import plots, selection
from lprviz.app import caches, common, state


def _apply(settings: state.Settings, mask: np.ndarray) -> None:
    state.set_training_frames(settings, np.flatnonzero(mask))
    state.new_training_table(settings.source)


def _presets(settings: state.Settings, ds, numbers) -> None:
    st.subheader("Presets")
    c1, c2, c3, c4, c5 = st.columns([3, 1, 1, 1, 1])
    preset = c1.selectbox("Strategy", selection.PRESETS, key="ts_preset",
                          help="Mirrors the paper's strategies for raising the LPR.")
    n_extra = c2.number_input("extra per group", 1, 50, key=state.remembered("ts_n_extra", 3))
    small = c3.number_input("small = at most (atoms)", 1, 500,
                            key=state.remembered("ts_small", 8))
    fraction = c4.number_input("fraction", 0.01, 1.0, step=0.05,
                               key=state.remembered("ts_fraction", 0.5))
    seed = c5.number_input("seed", 0, 10**6, key="ts_seed")
    if st.button("Apply preset", key="ts_apply_preset", type="primary"):
        mask = selection.preset_mask(preset, ds.groups, numbers, n_extra=int(n_extra),
                                     small_max_atoms=int(small), fraction=float(fraction),
                                     seed=int(seed))
        _apply(settings, mask)


def _rules(settings: state.Settings, ds, numbers) -> None:
    with st.expander("Rules: include by group, species, size; random fraction"):
        groups = list(dict.fromkeys(str(g) for g in ds.groups))
        chosen = st.multiselect("Groups", groups, default=groups, key="ts_groups")
        species = [int(z) for z in ds.species]
        sp = st.multiselect("Only structures made of", species, default=species,
                            format_func=lambda z: chemical_symbols[z], key="ts_species")
        lo, hi = int(ds.frame_sizes.min()), int(ds.frame_sizes.max())
        size = st.slider("Structure size (atoms)", lo, max(hi, lo + 1), (lo, max(hi, lo + 1)),
                         key="ts_size")
        c1, c2 = st.columns(2)
        frac = c1.slider("Random fraction", 0.05, 1.0, 1.0, step=0.05, key="ts_rule_fraction")
        seed = c2.number_input("Seed", 0, 10**6, 0, key="ts_rule_seed")
        if st.button("Apply rules", key="ts_apply_rules"):
            rule = selection.TrainingRule(groups=tuple(chosen), species=tuple(sp),
                                          min_atoms=size[0], max_atoms=size[1],
                                          fraction=float(frac), seed=int(seed))
            _apply(settings, selection.apply_rule(rule, ds.groups, numbers))


def _editor(settings: state.Settings, ds) -> None:
    st.subheader("Structures")
    train = set(state.training_frames(settings))
    version = st.session_state.setdefault("editor_version", {}).get(settings.source, 0)
    base_key = ("editor_base", settings.source, version)
    if base_key not in st.session_state:
        st.session_state[base_key] = tuple(sorted(train))
    base = set(st.session_state[base_key])
    table = pd.DataFrame({
        "train": [i in base for i in range(len(ds.frames))],
        "name": [str(n) for n in ds.names],
        "group": [str(g) for g in ds.groups],
        "atoms": ds.frame_sizes.astype(int),
        "formula": [a.get_chemical_formula() for a in ds.frames],
    })
    tag = hashlib.sha1(settings.source.encode()).hexdigest()[:8]
    # A form: ticking boxes refactorises nothing until "Apply" (one factorisation per batch).
    with st.form(f"ts_form_{tag}_{version}", border=False):
        edited = st.data_editor(
            table, key=f"ts_editor_{tag}_{version}", hide_index=False,
            disabled=["name", "group", "atoms", "formula"], height=320,
            column_config={"train": st.column_config.CheckboxColumn("train")},
        )
        c1, c2, _ = st.columns([1, 1, 2])
        apply = c1.form_submit_button("Apply changes", type="primary")
        reset = c2.form_submit_button("Reset to the default",
                                      help="The default training set: the sidebar's train/test "
                                           "split of your file, the dataset's own split, or "
                                           f"'{state.DEFAULT_PRESET}'.")
    if reset:
        state.set_training_frames(settings, state.default_training_frames(settings))
        state.new_training_table(settings.source)
        st.rerun()
    if apply:
        frames = tuple(int(i) for i in np.flatnonzero(edited["train"].to_numpy(bool)))
        if frames != tuple(sorted(train)):
            state.set_training_frames(settings, frames)
        state.new_training_table(settings.source)
        st.rerun()


def _summary(settings: state.Settings, ds, numbers) -> None:
    train = state.training_frames(settings)
    mask = np.zeros(len(ds.frames), dtype=bool)
    mask[list(train)] = True
    s = selection.summary(mask, ds.groups, numbers)
    st.subheader("Summary")
    c1, c2, c3 = st.columns(3)
    c1.metric("Training structures", s["structures"], help=f"of {len(ds.frames)}")
    c2.metric("Training atoms", s["atoms"], help=f"of {ds.n_atoms}")
    c3.metric("Test structures", len(ds.frames) - s["structures"])
    st.write("Atoms per species: " + (", ".join(
        f"{chemical_symbols[z]} {n}" for z, n in s["species"].items()) or "none"))
    if not train:
        st.warning("The training set is empty: include at least one structure.")
        return
    alpha = state.alpha()
    res = state.current_results(settings, alpha)
    groups_atom = ds.atom_groups
    df = pd.DataFrame({"group": groups_atom, "lpr": res.lpr})
    per_group = df.groupby("group")["lpr"].median().rename("median_lpr").to_frame()
    counts = pd.Series(s["groups"], name="training_structures", dtype=int)
    per_group = per_group.join(counts).fillna({"training_structures": 0}).reset_index()
    st.caption(f"Median LPR per group at alpha = {alpha:.3g} (all atoms, training and test):")
    st.dataframe(plots.format_table(per_group), hide_index=True, key="ts_lpr_table")


def _body(settings: state.Settings) -> None:
    ds = caches.dataset(settings.source)
    numbers = state.frame_numbers(settings.source)
    _presets(settings, ds, numbers)
    _rules(settings, ds, numbers)
    _editor(settings, ds)
    _summary(settings, ds, numbers)


def main() -> None:
    common.run_page(
        "Training set", _body,
        intro=("Choose which structures the model is trained on. Everything not in training "
               "is the test set. Adding structures never lowers an atom's LPR; small and "
               "compositionally varied structures raise it most."),
    )


if __name__ == "__main__":
    main()
