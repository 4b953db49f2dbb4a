"""Learn: a guided tour of the local prediction rigidity, with live mini-experiments.

Each experiment is a fragment (its widgets rerun only it) with a table, a 3D structure
coloured by the quantity that changes (one colour range for both states, so the change shows)
and a notice built by :mod:`lprviz.lessons` from the numbers in the table.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from lprviz import lessons, pipeline, plots, selection
from lprviz.app import caches, common, state
from lprviz.viewer import structure_html

TEACHING = "teaching-stoichiometry"
ALLOYS = "emt-alloys"
PRESET = "default"
ALPHA = 1e-4  # the reference alpha of every experiment
SMALL_MAX_ATOMS = 8
SHOWCASE = 4  # structures offered in each viewer


def _settings(source: str) -> state.Settings:
    return state.Settings(source=source, label=source, preset=PRESET,
                          spec=pipeline.ModelSpec(kind="linear"))


def _frames(source: str, preset: str) -> tuple[int, ...]:
    ds = caches.dataset(source)
    mask = selection.preset_mask(preset, ds.groups, state.frame_numbers(source), seed=0,
                                 small_max_atoms=SMALL_MAX_ATOMS)
    return tuple(int(i) for i in np.flatnonzero(mask))


def _decades(*values: np.ndarray) -> tuple[float, float]:
    """One log colour range covering every state shown (whole decades)."""
    v = np.concatenate([np.asarray(x, float).ravel() for x in values])
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return 1e-3, 1.0
    lo, hi = np.floor(np.log10(v.min())), np.ceil(np.log10(v.max()))
    return float(10**lo), float(10 ** max(hi, lo + 1))


def _viewer(ds, frames: tuple[int, ...], values: np.ndarray, *, vmin: float, vmax: float,
            label: str, key: str, info: dict[str, np.ndarray] | None = None) -> None:
    """A structure picker over ``frames`` and the chosen one coloured by ``values``
    (per atom, whole dataset) on the fixed range ``vmin``..``vmax``."""
    frame = st.selectbox("Structure", frames, key=key,
                         format_func=lambda i: f"{ds.names[i]} [{ds.groups[i]}]")
    sel = ds.atoms_of(frame)
    hover = {label: values[sel], **{k: v[sel] for k, v in (info or {}).items()}}
    html = structure_html(ds.frames[frame], values[sel], vmin=vmin, vmax=vmax, atom_info=hover,
                          colorbar_label=label, title=f"{ds.names[frame]} [{ds.groups[frame]}]",
                          width="100%", height=360, script_url=common.script_url())
    st.iframe(html, height=450)


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
        "It needs no energies, only which structures are in training and $\\alpha$. Four "
        "levers raise it: more regularisation, structures of varied composition, small "
        "structures that isolate an environment, and training on forces. Each experiment "
        "below states what its numbers show; the structures are coloured on one scale for "
        "both settings."
    )
    st.caption(f"The experiments run on the shipped {TEACHING} and {ALLOYS} datasets with "
               "linear models on SOAP and controls of their own: the sidebar's dataset, "
               "model and alpha do not change them (the other pages use those).")


# --------------------------------------------------------------------------- experiments


def _experiment_alpha() -> None:
    st.header("1. Move alpha")
    settings = _settings(TEACHING)
    ds = caches.dataset(TEACHING)
    train = _frames(TEACHING, "varied compositions")
    st.markdown("Teaching set (Cu/Au), trained on varied compositions. The table compares "
                f"the chosen alpha with alpha = {plots.format_number(ALPHA)}.")
    lo_hi = state.ALPHA_LOG10_RANGE
    # starts away from the reference, so the table shows a change at once
    log_alpha = st.slider("log10 alpha", *lo_hi, -2.0, step=0.5, key="learn_alpha")
    ref = state.current_results(settings, ALPHA, train)
    res = state.current_results(settings, 10**log_alpha, train)
    lesson = lessons.alpha_lesson(ds, ref, res)
    st.dataframe(plots.format_table(lesson.table), hide_index=True, key="learn_t1")
    # the claim beside the picture of it
    left, right = st.columns(2)
    left.info(common.plain_text(lesson.notice))
    with right:
        # LPR grows with alpha (docs/science.md §7.5): the slider's ends bound every colour
        ends = [state.current_results(settings, 10**a, train).lpr for a in lo_hi]
        lo, hi = _decades(*ends)
        # the structures of experiment 2: their single-species atoms stand out
        frames = caches.composition_lesson(TEACHING, PRESET, ALPHA).frames
        _viewer(ds, frames, res.lpr, vmin=lo, vmax=hi, label="LPR", key="learn_v1",
                info={"data share of LPR": res.data_share})


def _experiment_composition() -> None:
    st.header("2. One stoichiometry or varied compositions")
    ds = caches.dataset(TEACHING)
    st.markdown("Train on Cu/Au structures that all share one composition (CuAu), or on as "
                "many structures of varied composition. Same number of structures, same "
                f"alpha = {plots.format_number(ALPHA)}, same feature scale; a quarter of each "
                "group is held out of both, as their common test set.")
    lesson = caches.composition_lesson(TEACHING, PRESET, ALPHA)
    choice = st.radio("Training set (colours the structure)", list(lessons.SETS),
                      horizontal=True, key="learn_comp")
    st.dataframe(plots.format_table(lesson.groups), hide_index=True, key="learn_t2")
    st.dataframe(plots.format_table(lesson.environments), hide_index=True, key="learn_t2_env")
    left, right = st.columns(2)
    with left:
        st.caption(f"RMSE of total energies per atom (eV/atom) on the same "
                   f"{int(lesson.test.sum())} held-out test structures:")
        c1, c2 = st.columns(2)
        for col, name in zip((c1, c2), lessons.SETS, strict=True):
            col.metric(name, plots.format_number(lesson.test_rmse[name]))
        st.info(common.plain_text(lesson.notice))
    with right:
        lo, hi = _decades(*lesson.lpr.values())
        _viewer(ds, lesson.frames, lesson.lpr[choice], vmin=lo, vmax=hi, label="LPR",
                key="learn_v2",
                info={"|local error| (eV)": lesson.abs_local_error[choice]})


def _experiment_small() -> None:
    st.header("3. Add small structures")
    settings = _settings(ALLOYS)
    ds = caches.dataset(ALLOYS)
    st.markdown("On the Cu/Ag/Au alloy set: train on bulk only, then add every structure of "
                f"at most {SMALL_MAX_ATOMS} atoms (clusters). Same feature scale for both.")
    add = st.toggle("Add small structures (colours the structure)", value=False,
                    key="learn_small")
    base = _frames(ALLOYS, "bulk only")
    more = _frames(ALLOYS, "bulk + small structures")
    before = caches.results(ALLOYS, PRESET, base, settings.spec, None, ALPHA)
    after = caches.results(ALLOYS, PRESET, more, settings.spec, base, ALPHA)
    lesson = lessons.small_structures_lesson(ds, before, after, max_atoms=SMALL_MAX_ATOMS)
    shown = after if add else before
    st.dataframe(plots.format_table(lesson.table), hide_index=True, key="learn_t3")
    left, right = st.columns(2)
    left.info(common.plain_text(lesson.notice))
    with right:
        in_neither = ~(before.train_mask | after.train_mask)
        frames = lessons.showcase_frames(before.lpr, after.lpr, ds.structure_index, in_neither,
                                         k=SHOWCASE)
        lo, hi = _decades(before.lpr[_in(ds, frames)], after.lpr[_in(ds, frames)])
        _viewer(ds, frames, shown.lpr, vmin=lo, vmax=hi, label="LPR", key="learn_v3")


def _in(ds, frames: tuple[int, ...]) -> np.ndarray:
    """Mask of the atoms of ``frames``."""
    return np.isin(ds.structure_index, frames)


def _experiment_errors() -> None:
    st.header("4. Does a low LPR mean a wrong local prediction?")
    settings = _settings(ALLOYS)
    ds = caches.dataset(ALLOYS)
    st.markdown("EMT knows every atom's true energy, so here we can check what the LPR "
                f"promises. Train on bulk only (alpha = {plots.format_number(ALPHA)}) and "
                "compare each test atom's local prediction with its true local energy.")
    res = state.current_results(settings, ALPHA, _frames(ALLOYS, "bulk only"))
    left, right = st.columns(2)
    with left:
        check = common.local_error_section(ds, res, key="learn_errors")
        if check is not None:
            st.info(common.plain_text(lessons.error_notice(check)))
    with right:
        colour = st.radio("Colour by", ["|local error|", "LPR"], horizontal=True,
                          key="learn_colour")
        test = ~res.train_mask[ds.structure_index]
        frames = tuple(int(i) for i in selection.frames_by_lowest_value(
            res.lpr, ds.structure_index, len(ds.frames)) if not res.train_mask[i])[:SHOWCASE]
        err = np.abs(res.local_error) if res.local_error is not None else None
        values, label = ((err, "|local error| (eV)") if colour == "|local error|"
                         and err is not None else (res.lpr, "LPR"))
        # one range per quantity over every test atom, so structures compare
        lo, hi = _decades(values[test])
        _viewer(ds, frames, values, vmin=lo, vmax=hi, label=label, key="learn_v4",
                info={"LPR": res.lpr} if label != "LPR" else None)


def _experiment_forces() -> None:
    st.header("5. Add forces")
    settings = _settings(ALLOYS)
    forced = pipeline.ModelSpec(kind="linear", force_weight=pipeline.DEFAULT_FORCE_WEIGHT)
    ds = caches.dataset(ALLOYS)
    st.markdown("Real potentials are fitted to forces as well as energies. Train on bulk only "
                "(same structures, same feature scale), once on their energies and once on "
                "energies and forces. Each force is a derivative of the predicted energy, "
                "so it adds rows to the normal matrix:")
    st.latex(r"\mathrm{LPR}_k = \frac{1}{x_k^{\top}\left(X^{\top}X + \lambda_F\,"
             r"G^{\top}G + \alpha I\right)^{-1} x_k}")
    show = st.toggle("Train on forces too (colours the structure)", value=False,
                     key="learn_forces")
    base = _frames(ALLOYS, "bulk only")
    before = caches.results(ALLOYS, PRESET, base, settings.spec, None, ALPHA)
    after = caches.results(ALLOYS, PRESET, base, forced, None, ALPHA)
    lesson = lessons.forces_lesson(ds, before, after)
    st.dataframe(plots.format_table(lesson.table), hide_index=True, key="learn_t5")
    left, right = st.columns(2)
    left.info(common.plain_text(lesson.notice))
    with right:
        frames = lessons.showcase_frames(before.lpr, after.lpr, ds.structure_index,
                                         ~before.train_mask, k=SHOWCASE)
        lo, hi = _decades(before.lpr[_in(ds, frames)], after.lpr[_in(ds, frames)])
        _viewer(ds, frames, (after if show else before).lpr, vmin=lo, vmax=hi, label="LPR",
                key="learn_v5")


def main() -> None:
    st.title("Learn: what the LPR tells you")
    _intro()
    # each experiment a fragment: its widgets rerun only it
    for experiment in (_experiment_alpha, _experiment_composition, _experiment_small,
                       _experiment_errors, _experiment_forces):
        common.guarded_fragment(experiment)


if __name__ == "__main__":
    main()
