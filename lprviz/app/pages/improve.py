"""Improve: which structures to add to the training set to raise a target's LPR."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from lprviz import insight_plots, plots, sources, suggest
from lprviz.app import caches, common, state
from lprviz.errors import InputError

LOWEST = "lowest-LPR 5% of test atoms"
N_RANDOM = 5


def _target_atoms(ds, res, train_atom: np.ndarray, choice: str) -> np.ndarray:
    test_atoms = np.flatnonzero(~train_atom)
    if choice == LOWEST:
        if test_atoms.size == 0:
            raise InputError("target: every structure is in training; no test atoms")
        return test_atoms[suggest.lowest_lpr_atoms(res.lpr[test_atoms], 0.05)]
    in_group = ds.atom_groups == choice
    atoms = np.flatnonzero(in_group & ~train_atom)
    return atoms if atoms.size else np.flatnonzero(in_group)


def _last_addition(settings: state.Settings, alpha: float) -> None:
    """Predicted vs realised gain of the last "Add" (same feature scale, same target)."""
    last = st.session_state.get("improve_last")
    if not last or last["source"] != settings.source or last["alpha"] != alpha:
        return
    before = caches.results(settings.source, settings.preset, last["before"], settings.spec,
                            None, alpha)
    after = caches.results(settings.source, settings.preset, last["after"], settings.spec,
                           last["before"], alpha)
    t = last["target"]
    realised = float(np.mean(np.log(after.lpr[t])) - np.mean(np.log(before.lpr[t])))
    st.success(
        f"Added {len(last['after']) - len(last['before'])} structures. Target geometric-mean "
        f"LPR x{np.exp(realised):.4g} realised (predicted x{np.exp(last['predicted']):.4g}), "
        "at the previous training set's feature scale."
    )


def _body(settings: state.Settings) -> None:
    ds = caches.dataset(settings.source)
    alpha = state.alpha_slider()
    train = state.training_frames(settings)
    res = state.current_results(settings, alpha)
    fit = caches.fit(settings.source, settings.preset, train, settings.spec, None)
    _last_addition(settings, alpha)

    train_mask = np.zeros(len(ds.frames), dtype=bool)
    train_mask[list(train)] = True
    train_atom = train_mask[ds.structure_index]
    groups = list(dict.fromkeys(str(g) for g in ds.groups))
    c1, c2, c3 = st.columns([2, 2, 1])
    choice = c1.selectbox("Target atoms", [LOWEST, *groups], key="improve_target",
                          help="Atoms whose LPR should rise (test atoms of a group, or the "
                               "least rigid test atoms).")
    pool_groups = c2.multiselect("Candidates from groups", groups, default=groups,
                                 key="improve_pool_groups")
    k = int(c3.number_input("Structures to pick", 1, 50, 5, key="improve_k"))
    if train_mask.all():
        st.info("Every structure is in the training set: nothing is left to test or to add. "
                "Leave some out on the Training set page (for your own file: its train/test "
                "split in the sidebar).")
        return
    target = _target_atoms(ds, res, train_atom, choice)
    # Only labelled structures can join the training set.
    pool = np.flatnonzero(~train_mask & np.isin(ds.groups, pool_groups)
                          & np.asarray(ds.has_energy, dtype=bool))
    if pool.size == 0:
        st.info("No candidate structures: every structure of these groups is in training.")
        return

    P, Q = fit.atom_projections(target), fit.structure_projections[pool]
    how = "rank-1 updates"
    if fit.force_weight is not None:  # a candidate adds its energy row and 3 N force rows
        Q = caches.force_pool(settings.source, settings.preset, train, settings.spec,
                              tuple(int(i) for i in pool))
        how = "block updates by each candidate's energy and 3 N force rows"
        if Q.notice:
            st.info(Q.notice)
    sug = suggest.suggest_from_projections(fit.solver, P, Q, alpha, k)
    chosen = pool[sug.chosen]
    st.caption(common.plain_text(
        f"Model: {sources.key_label(settings.preset)}, {settings.spec.kind} (the sidebar's). "
        f"Target: {target.size} atoms, geometric-mean LPR {np.exp(sug.curve[0]):.4g}; "
        f"{pool.size} candidates; alpha = {alpha:.3g}. Gains are exact ({how} of the "
        "current factorisation at a fixed feature scale)."))
    table = pd.DataFrame({
        "pick": np.arange(1, chosen.size + 1),
        "name": [str(ds.names[i]) for i in chosen],
        "group": [str(ds.groups[i]) for i in chosen],
        "atoms": ds.frame_sizes[chosen].astype(int),
        "composition": [ds.frames[i].get_chemical_formula() for i in chosen],
        "gain (mean ln LPR)": sug.gains,
        "target LPR factor so far": np.exp(sug.curve[1:] - sug.curve[0]),
    })
    st.dataframe(plots.format_table(table, digits=4), hide_index=True, width="stretch",
                 key="improve_table")
    n_add = int(st.number_input("Add the first N picks", 1, chosen.size, chosen.size,
                                key=f"improve_n_add_{chosen.size}"))
    if st.button("Add to training set", type="primary", key="improve_add"):
        after = tuple(sorted({*train, *(int(i) for i in chosen[:n_add])}))
        st.session_state["improve_last"] = {
            "source": settings.source, "alpha": alpha, "before": train, "after": after,
            "target": target,
            "predicted": float(sug.curve[n_add] - sug.curve[0]),
        }
        state.set_training_frames(settings, after)
        st.rerun()

    random = suggest.random_additions(fit.solver, P, Q, alpha, chosen.size, n_seeds=N_RANDOM)
    st.plotly_chart(insight_plots.addition_figure(sug.curve, random), key="improve_curve")
    st.caption(f"Guided picks vs {N_RANDOM} random draws of the same number of candidates.")


def main() -> None:
    common.run_page(
        "Suggest structures to add", _body,
        intro=(
            "Pick a set of atoms whose local predictions are loose; the candidates are "
            "ranked by how much adding each raises the target's mean log-LPR, chosen "
            "greedily. *Add to training set* updates the training set used by every page."
        ),
        fragment=True,
    )


if __name__ == "__main__":
    main()
