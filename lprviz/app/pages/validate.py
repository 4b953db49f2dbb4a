"""Validate: does a low LPR mean a loose local prediction? Committee, local errors,
accuracy-rigidity trade-off, LCPR per descriptor block, PR of every test structure."""

from __future__ import annotations

import numpy as np
import streamlit as st

from lprviz import calibration, insight_plots, plots, validation
from lprviz.app import caches, common, state
from lprviz.errors import InputError
from lprviz.viewer import structure_html

TRADEOFF_ALPHAS = tuple(np.logspace(-8, 2, 11).tolist())


#: What the uncertainty can be calibrated against.
CALIBRATION_TARGETS = ("held-out errors", "committee spread")


def _committee_section(settings, ds, train, alpha) -> None:
    st.subheader("Committee spread vs 1/LPR")
    c1, c2 = st.columns([1, 2])
    n_models = int(c2.number_input("Committee members (each on 70% of the training set)",
                                   2, 32, 4, key="val_n_models"))
    if not c1.toggle("Train the committee", key="val_committee",
                     help="One ridge fit per member: seconds for wide descriptors."):
        return
    check = caches.committee(settings.source, settings.preset, train, settings.spec, alpha,
                             n_models)
    labels = [f"{ds.groups[f]} / {ds.names[f]}" for f in ds.structure_index[check.atoms]]
    st.plotly_chart(insight_plots.spread_figure(1.0 / check.lpr, check.spread, check.spearman,
                                                labels=labels), key="val_spread")
    st.caption("The LPR promises that the committee disagrees most where 1/LPR is large "
               f"(rank correlation {check.spearman:.2f} over {check.atoms.size} atoms).")


def _tradeoff_section(settings, train, alpha) -> None:
    st.subheader("Accuracy-rigidity trade-off")
    try:
        tr = caches.tradeoff(settings.source, settings.preset, train, settings.spec,
                             TRADEOFF_ALPHAS)
    except InputError as exc:
        st.info(common.plain_text(str(exc)))
        return
    st.plotly_chart(insight_plots.tradeoff_figure(tr.alphas, tr.median_lpr, tr.rmse_per_atom,
                                                  current_alpha=alpha), key="val_tradeoff")
    st.caption("Each point is one alpha: regularisation raises every LPR but the test error "
               f"grows ({tr.n_test_frames} test structures with energies).")


def _lcpr_section(settings, ds, res, train, alpha, frame: int) -> None:
    st.subheader("Component-wise rigidity (LCPR) of one atom")
    desc = caches.descriptors(settings.source, settings.preset)
    fit = caches.fit(settings.source, settings.preset, train, settings.spec, None)
    try:
        blocks = validation.fit_blocks(fit, desc)
    except InputError as exc:
        st.info(common.plain_text(str(exc)))
        return
    atoms = np.arange(ds.n_atoms)[ds.atoms_of(frame)]
    lowest = int(np.argmin(res.lpr[atoms]))
    label = (f"Atom of {common.plain_text(ds.names[frame])} (0-{atoms.size - 1}; default: "
             "lowest LPR)")
    i = int(st.number_input(label, 0, atoms.size - 1, lowest, key=f"val_atom_{frame}"))
    atom = int(atoms[i])
    x = fit.model_features(desc.values[atom:atom + 1], desc.atom_numbers[atom:atom + 1])
    comp = validation.component_rigidity(fit.solver, x, alpha, blocks)
    keep = comp.present
    names = [n for n, k in zip(comp.names, keep, strict=True) if k]
    # bars grouped by kind: species-pair and angular-channel blocks overlap, never combine
    kinds = [validation.block_kind(n) for n in names]
    st.plotly_chart(insight_plots.lcpr_figure(names, comp.lcpr[keep], comp.lpr, kinds=kinds),
                    key="val_lcpr")
    st.caption(f"Atom {i} ({ds.frames[frame][i].symbol}); blocks absent from its environment "
               "are left out. The lowest bar of each group is the least determined part of its "
               "description.")
    with st.expander("How the species-pair and angular-channel blocks relate", expanded=True):
        st.markdown(common.plain_text(validation.LCPR_BLOCKS_EXPLANATION))


def _pr_section(settings, ds, res) -> int:
    test = np.flatnonzero(~res.train_mask)
    st.subheader("Prediction rigidity of test structures" if test.size else
                 "Prediction rigidity of the structures (all in training: no test set)")
    frames = test if test.size else np.arange(len(ds.frames))
    table = validation.pr_table(ds, res.pr, frames=frames, lpr=res.lpr)
    event = st.dataframe(plots.format_table(table), hide_index=True, key="val_pr_table",
                         on_select="rerun", selection_mode="single-row", height=280,
                         width="stretch")
    rows = event.selection.rows if event is not None and hasattr(event, "selection") else []
    frame = int(table["frame"].iloc[rows[0] if rows else 0])
    sel = ds.atoms_of(frame)
    lpr = res.lpr[sel]
    lo, hi = float(np.min(res.lpr)), float(np.max(res.lpr))
    html = structure_html(ds.frames[frame], lpr, vmin=lo, vmax=max(hi, lo * 1.0001), log=True,
                          colormap=plots.LPR_COLORMAP, atom_info={"LPR": lpr},
                          undetermined=np.asarray(res.undetermined, bool)[sel],
                          title=f"{ds.names[frame]} [{ds.groups[frame]}]", width=620,
                          height=380, script_url=common.script_url())
    st.iframe(html, height=470)
    return frame


def _calibration_section(settings, ds, train, alpha, frame: int) -> None:
    st.subheader("Calibrated uncertainties")
    target = st.radio("Calibrate against", CALIBRATION_TARGETS, horizontal=True,
                      key="val_calibration_target",
                      help="Held-out structures' total-energy errors, or the spread of the "
                           "local energies of the committee below (its size; trains it).")
    n_models = (int(st.session_state.get("val_n_models", 4))
                if target == CALIBRATION_TARGETS[1] else 0)
    try:
        cal = caches.calibration(settings.source, settings.preset, train, settings.spec, alpha,
                                 n_models)
    except InputError as exc:
        st.info(common.plain_text(str(exc)))
        return
    st.plotly_chart(insight_plots.calibration_figure(
        *calibration.calibration_curve(cal.sigma_frames, cal.errors),
        sigma=cal.sigma_frames, errors=cal.errors, spread=cal.target == "spread"),
        key="val_calibration")
    what = (f"the total-energy errors of {cal.frames.size} held-out structures"
            if cal.target == "errors" else
            f"the {n_models}-member committee's spread of {cal.frames.size} test atoms' local "
            "energies")
    st.caption(f"sigma_k^2 = c / LPR_k(alpha_u), with c = {plots.format_number(cal.factor)} "
               f"eV^2 and alpha_u = {plots.format_number(cal.alpha)} fitted by maximum "
               f"likelihood to {what} (the model's predictions stay those at the slider's "
               "alpha). Points on the dotted line are calibrated.")
    if cal.at_grid_edge:
        st.warning(f"alpha_u = {plots.format_number(cal.alpha)} is at the end of the range "
                   f"tried ({plots.format_number(cal.alphas[0])} to "
                   f"{plots.format_number(cal.alphas[-1])}): the likelihood may be higher "
                   "beyond it, so these uncertainties are the best the range allows, not a "
                   "fitted optimum.")
    sel = ds.atoms_of(frame)
    sigma = cal.sigma_atoms[sel]
    html = structure_html(ds.frames[frame], sigma, vmin=float(cal.sigma_atoms.min()),
                          vmax=float(cal.sigma_atoms.max()) * 1.0001, log=True,
                          colormap=plots.LPR_COLORMAP, atom_info={"sigma (eV)": sigma},
                          title=f"{ds.names[frame]}: calibrated uncertainty of local energies",
                          colorbar_label="sigma (eV)", width=620, height=380,
                          script_url=common.script_url())
    st.iframe(html, height=470)


def _body(settings: state.Settings) -> None:
    ds = caches.dataset(settings.source)
    alpha = state.alpha_slider()
    train = state.training_frames(settings)
    res = state.current_results(settings, alpha)
    frame = _pr_section(settings, ds, res)
    _calibration_section(settings, ds, train, alpha, frame)
    _lcpr_section(settings, ds, res, train, alpha, frame)
    st.subheader("|Local error| vs LPR")
    common.local_error_section(ds, res, key="val_errors")
    _tradeoff_section(settings, train, alpha)
    _committee_section(settings, ds, train, alpha)


def main() -> None:
    common.run_page(
        "Validate the LPR", _body,
        intro=(
            "Empirical checks of what the LPR promises: committees disagree and local "
            "errors are large where the LPR is low; regularisation buys rigidity with "
            "accuracy. Pick a structure in the table to see its atoms and their LCPR."
        ),
        fragment=True,
    )


if __name__ == "__main__":
    main()
