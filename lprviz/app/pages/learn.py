"""Learn: a guided tour of the local prediction rigidity, with live mini-experiments."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from lprviz import pipeline, plots, selection
from lprviz.app import caches, common, state

TEACHING = "teaching-stoichiometry"
ALLOYS = "emt-alloys"


def _settings(source: str) -> state.Settings:
    return state.Settings(source=source, label=source, preset="default",
                           spec=pipeline.ModelSpec(kind="linear"))


def _frames(source: str, preset: str) -> tuple[int, ...]:
    ds = caches.dataset(source)
    mask = selection.preset_mask(preset, ds.groups, state.frame_numbers(source), seed=0)
    return tuple(int(i) for i in np.flatnonzero(mask))


def _group_table(ds, res, *, with_error: bool) -> pd.DataFrame:
    groups_atom = np.asarray(ds.groups)[ds.structure_index].astype(str)
    df = pd.DataFrame({"group": groups_atom, "LPR": res.lpr})
    agg = {"median LPR": ("LPR", "median")}
    if with_error and res.local_error is not None:
        df["|local error| (eV)"] = np.abs(res.local_error)
        agg["median |local error| (eV)"] = ("|local error| (eV)", "median")
    return df.groupby("group").agg(**agg).reset_index()


def _intro() -> None:
    st.markdown(
        "An atomistic model predicts a structure's energy as a **sum of atomic (local) "
        "contributions**, one per atom. Only the total is measured, so many different splits "
        "into local terms fit the training data equally well. The *local prediction "
        "rigidity* (LPR) asks: if I force one atom's local prediction to change, how much "
        "does the training loss resist? A stiff (high-LPR) prediction is pinned down by the "
        "data; a floppy (low-LPR) one is not, however good the total energies look."
    )
    st.markdown("For a ridge model with descriptors $x$, per-structure mean rows $X$ of the "
                "training set and regulariser $\\alpha$:")
    st.latex(r"\mathrm{LPR}_k \;=\; \frac{1}{x_k^{\top}\,\left(X^{\top}X + \alpha I\right)^{-1}"
             r"x_k}")
    st.markdown(
        "It needs no energies, only which structures are in training and $\\alpha$. Three "
        "levers raise it: more regularisation, structures of varied composition, and small "
        "structures that isolate an environment."
    )


@st.fragment
def _experiment_alpha() -> None:
    with common.guarded():  # the widgets here rerun only this experiment
        __experiment_alpha_body()


def __experiment_alpha_body() -> None:
    st.header("1. Move alpha")
    settings = _settings(TEACHING)
    ds = caches.dataset(TEACHING)
    train = _frames(TEACHING, "varied compositions")
    log_alpha = st.slider("log10 alpha", -8.0, 2.0, -4.0, step=0.5, key="learn_alpha")
    res = state.current_results(settings, 10**log_alpha, train)
    st.dataframe(_group_table(ds, res, with_error=True), hide_index=True, key="learn_t1")
    st.info("Notice: every LPR rises with alpha, toward alpha/|x|^2. Regularisation buys "
            "rigidity, but it is the prior talking, not the data: watch the local errors.")


@st.fragment
def _experiment_composition() -> None:
    with common.guarded():  # the widgets here rerun only this experiment
        __experiment_composition_body()


def __experiment_composition_body() -> None:
    st.header("2. One stoichiometry or varied compositions")
    settings = _settings(TEACHING)
    ds = caches.dataset(TEACHING)
    st.markdown("Train on Cu/Au structures that all share one composition (CuAu), or on as "
                "many structures of varied composition. Same number of structures, same "
                "alpha = 1e-4.")
    choice = st.radio("Training set", ["one stoichiometry", "varied compositions"],
                      horizontal=True, key="learn_comp")
    train = _frames(TEACHING, choice)
    res = state.current_results(settings, 1e-4, train)
    c1, c2 = st.columns(2)
    c1.dataframe(_group_table(ds, res, with_error=True), hide_index=True, key="learn_t2")
    groups_atom = np.asarray(ds.groups)[ds.structure_index].astype(str)
    c2.plotly_chart(plots.lpr_distribution_figure(res.lpr, groups_atom, title="LPR per group"),
                    key="learn_f2")
    st.info("Notice: with one stoichiometry the total energy only fixes e(Cu) + e(Au), never "
            "e(Cu) - e(Au). The fit of totals is fine, yet the local energies are loose: "
            "low LPR, large local errors. Varying the composition separates them.")


@st.fragment
def _experiment_small() -> None:
    with common.guarded():  # the widgets here rerun only this experiment
        __experiment_small_body()


def __experiment_small_body() -> None:
    st.header("3. Add small structures")
    settings = _settings(ALLOYS)
    ds = caches.dataset(ALLOYS)
    st.markdown("On the Cu/Ag/Au alloy set: train on bulk only, then add every structure of "
                "at most 8 atoms (clusters). Same feature scale for both.")
    add = st.toggle("Add small structures", value=False, key="learn_small")
    base = _frames(ALLOYS, "bulk only")
    train = _frames(ALLOYS, "bulk + small structures") if add else base
    caches.descriptors(ALLOYS, settings.preset)
    res = caches.results(ALLOYS, settings.preset, train, settings.spec, base, 1e-4)
    st.dataframe(_group_table(ds, res, with_error=False), hide_index=True, key="learn_t3")
    st.info("Notice: a lone environment in a small structure pins its local energy (an atom "
            "alone in its structure has LPR >= 1). Atoms that resemble it elsewhere gain too.")


def _experiment_errors() -> None:
    st.header("4. Does a low LPR mean a wrong local prediction?")
    settings = _settings(ALLOYS)
    ds = caches.dataset(ALLOYS)
    st.markdown("EMT knows every atom's true energy, so here we can check what the LPR "
                "promises. Train on bulk only (alpha = 1e-4) and compare each test atom's "
                "local prediction with its true local energy.")
    res = state.current_results(settings, 1e-4, _frames(ALLOYS, "bulk only"))
    common.local_error_section(ds, res, key="learn_errors")
    st.info("Notice: the large local errors crowd among the lowest-LPR atoms. In a real "
            "dataset there is no true local energy to compare with, but the LPR is still "
            "there: it is the warning you can compute.")


def main() -> None:
    st.title("Learn: what the LPR tells you")
    _intro()
    _experiment_alpha()
    _experiment_composition()
    _experiment_small()
    with common.guarded():
        _experiment_errors()


if __name__ == "__main__":
    main()
