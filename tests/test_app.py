"""The Streamlit app through streamlit.testing (AppTest): every page, alpha, training set,
uploads, URL parameters and the export files."""

from __future__ import annotations

import io
import re
from pathlib import Path

import ase.io
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
PAGES = ["explore", "training_set", "compare", "learn", "export"]
TIMEOUT = 600  # the first run featurises the default dataset


def _app(**query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _table(at: AppTest, column: str = "median LPR"):
    """The page's per-group LPR table (the dataframe with a ``median LPR`` column)."""
    for df in at.dataframe:
        if column in df.value.columns:
            return df.value
    raise AssertionError(f"no dataframe with a {column!r} column")


def _median(table, group: str) -> float:
    return float(table.set_index("group").loc[group, "median LPR"])


@pytest.fixture(scope="module")
def app() -> AppTest:
    at = _app()
    _ok(at)
    return at


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_the_default_dataset(app, page):
    app.switch_page(f"lprviz/app/pages/{page}.py").run()
    _ok(app)
    assert app.title, "page has a title"
    if page in ("explore", "compare"):
        assert any("3dmolviewer" in str(el.proto) for el in app.main
                   if el.type == "iframe") or "3dmolviewer" in str(app.main)


def test_explore_opens_on_default_dataset_bulk_only_alpha_1e4():
    at = _app()
    _ok(at)
    caption = " ".join(c.value for c in at.caption)
    assert "emt-alloys" in caption and "alpha = 0.0001" in caption
    table = _table(at)
    trained = table.set_index("group")["training atoms"]
    # bulk only: every bulk atom trains, no surface/defect atom does
    assert trained.loc["surface"] == 0 and trained.loc["vacancy"] == 0
    assert trained.loc["bulk-pure"] > 0


def test_alpha_raises_every_groups_lpr():
    at = _app()
    before = _table(at)
    at.slider(key="alpha_log10").set_value(-2.0).run()
    _ok(at)
    after = _table(at)
    assert at.query_params["alpha"] == "0.01"
    for g in before["group"]:
        # LPR grows monotonically with alpha (docs/science.md §7.5)
        assert _median(after, g) > _median(before, g)


def test_query_params_set_alpha():
    at = _app(alpha="0.01")
    _ok(at)
    assert "alpha = 0.01" in " ".join(c.value for c in at.caption)


def test_adding_surface_structures_raises_surface_lpr():
    at = _app()
    at.switch_page("lprviz/app/pages/training_set.py").run()
    _ok(at)
    before = _table(at)
    at.selectbox(key="ts_preset").set_value("bulk + a few surface/defect structures").run()
    at.button(key="ts_apply_preset").click().run()
    _ok(at)
    after = _table(at)
    assert int(after.set_index("group").loc["surface", "training structures"]) == 3
    assert _median(after, "surface") > 1.5 * _median(before, "surface")
    # the Explore page uses the edited training set too
    at.switch_page("lprviz/app/pages/explore.py").run()
    _ok(at)
    assert _table(at).set_index("group").loc["surface", "training atoms"] > 0


def test_view_choices_survive_a_visit_to_other_pages(monkeypatch):
    """Explore's, Training set's and Compare's choices come back as the user left them (a
    widget a page does not draw is forgotten by Streamlit unless kept), and keeping them
    makes Streamlit log no "default value but also ... Session State API" warning (its
    logger does not propagate, so the flag it sets after warning once is watched)."""
    from streamlit.elements.lib import policies

    monkeypatch.setattr(policies, "_shown_default_value_warning", False)
    at = _app()
    chosen = {"color_by": "data share of the rigidity", "group_filter": "surface",
              "order": "name"}
    for key, value in chosen.items():
        at.selectbox(key=key).set_value(value).run()
    at.text_input(key="structure_query").input("surf").run()
    at.toggle(key="log_colours").set_value(False).run()
    _ok(at)
    at.switch_page("lprviz/app/pages/training_set.py").run()
    at.selectbox(key="ts_preset").set_value("bulk + small structures").run()
    at.number_input(key="ts_small").set_value(12).run()
    at.switch_page("lprviz/app/pages/compare.py").run()
    at.selectbox(key="cmp_B").set_value("bulk + small structures").run()
    _ok(at)
    at.switch_page("lprviz/app/pages/export.py").run()
    at.switch_page("lprviz/app/pages/explore.py").run()
    _ok(at)
    for key, value in chosen.items():
        assert at.selectbox(key=key).value == value, key
    assert at.text_input(key="structure_query").value == "surf"
    assert at.toggle(key="log_colours").value is False
    at.switch_page("lprviz/app/pages/training_set.py").run()
    assert at.selectbox(key="ts_preset").value == "bulk + small structures"
    assert at.number_input(key="ts_small").value == 12
    at.switch_page("lprviz/app/pages/compare.py").run()
    _ok(at)
    assert at.selectbox(key="cmp_B").value == "bulk + small structures"
    assert at.selectbox(key="cmp_A").value == "bulk only"  # its default, never touched
    assert policies._shown_default_value_warning is False


def test_bad_upload_shows_one_line_error_and_page_keeps_working():
    at = _app()
    at.file_uploader(key="upload").set_value(
        ("broken.extxyz", b"this is not\nan extxyz file\n", "application/octet-stream")
    ).run()
    assert not at.exception
    assert len(at.error) == 1 and "\n" not in at.error[0].value
    assert "broken.extxyz" in at.error[0].value or "extxyz" in at.error[0].value
    # still usable: alpha moves, the default dataset's table is shown
    at.slider(key="alpha_log10").set_value(-3.0).run()
    assert not at.exception
    assert "emt-alloys" in " ".join(c.value for c in at.caption)


def _teaching_extxyz(frames: slice, *, splits: tuple[str, ...] = ()) -> bytes:
    """Some frames of the teaching set as a user's extxyz file: no structure names, so the
    app has to name them (after the file); ``splits``: each frame's ``split`` info."""
    from lprviz import datasets

    chosen = []
    for i, original in enumerate(datasets.load("teaching-stoichiometry").frames[frames]):
        atoms = original.copy()
        atoms.calc = original.calc  # energy and forces (copy() drops the calculator)
        atoms.info.pop("name", None)
        if splits:
            atoms.info["split"] = splits[i]
        chosen.append(atoms)
    buf = io.StringIO()
    ase.io.write(buf, chosen, format="extxyz")
    return buf.getvalue().encode()


def _upload(at: AppTest, name: str, data: bytes, *, key: str = "upload") -> AppTest:
    (widget,) = [u for u in at.file_uploader if u.key.startswith(key)]
    return widget.set_value((name, data, "application/octet-stream")).run()


def _split(at: AppTest, kind: str) -> AppTest:
    """Choose the sidebar's train/test split of the current upload."""
    (widget,) = [s for s in at.sidebar.selectbox if s.key.startswith("split_kind_")]
    return widget.set_value(kind).run()


def _structure_labels(at: AppTest) -> list[str]:
    (picker,) = [s for s in at.selectbox if s.key == "structure"]
    return list(picker.options)


def _counts(at: AppTest) -> tuple[int, int]:
    """(training, test) structures from Explore's caption."""
    import re

    caption = " ".join(c.value for c in at.caption)
    found = re.search(r"training set (\d+) structures, test (\d+) structures", caption)
    assert found, caption
    return int(found[1]), int(found[2])


def _parity_traces(at: AppTest) -> list[str]:
    import json

    for chart in at.get("plotly_chart"):
        fig = json.loads(chart.proto.spec)
        if fig["layout"].get("xaxis", {}).get("title", {}).get("text", "").startswith(
                "reference energy"):
            return [t.get("name", "") for t in fig["data"]]
    raise AssertionError("no parity plot")


def test_good_upload_becomes_the_dataset():
    at = _upload(_app(), "mine.extxyz", _teaching_extxyz(slice(0, 12)))
    _ok(at)
    assert "mine.extxyz" in " ".join(c.value for c in at.caption)


def test_uploaded_structures_are_named_after_the_users_file(monkeypatch):
    """Not after the content hash the server stores the file under."""
    from lprviz import export

    offered: list[bytes] = []
    real_csv = export.csv_bytes

    def recording_csv(*args, **kwargs):
        offered.append(real_csv(*args, **kwargs))
        return offered[-1]

    monkeypatch.setattr(export, "csv_bytes", recording_csv)
    at = _app()
    assert at.query_params["dataset"] == "emt-alloys"
    at = _upload(at, "cu-au run 7.extxyz", _teaching_extxyz(slice(0, 12)))
    _ok(at)
    # a link to the page cannot name the upload, and must not name the dataset before it
    assert "dataset" not in at.query_params
    stored = Path(at.session_state["uploads"]["cu-au run 7.extxyz"]).name
    labels = _structure_labels(at)
    assert len(labels) == 12
    assert all(label.startswith("cu-au run 7.extxyz#") for label in labels), labels[:3]
    assert not any(stored in label for label in labels)
    at.switch_page("lprviz/app/pages/export.py").run()
    _ok(at)
    import pandas as pd

    table = pd.read_csv(io.BytesIO(offered[-1]))
    names = set(table["name"])
    assert names == {f"cu-au run 7.extxyz#{i}" for i in range(12)}


def state_train(at: AppTest) -> tuple[int, ...]:
    """The session's training set of the (one) uploaded file."""
    (frames,) = [v for k, v in at.session_state["train"].items() if k.endswith(".extxyz")]
    return frames


def test_random_split_of_an_upload_gives_test_atoms_for_every_page():
    from lprviz import datasets

    at = _upload(_app(), "mine.extxyz", _teaching_extxyz(slice(0, 16)))
    _ok(at)
    assert _counts(at) == (16, 0)  # an upload trains on everything until split
    assert not any("(test)" in name for name in _parity_traces(at))
    at = _split(at, "random fraction")
    _ok(at)
    n_train, n_test = _counts(at)
    assert n_test > 0 and n_train + n_test == 16
    assert any("(test)" in name for name in _parity_traces(at))
    assert sum("(test," in label for label in _structure_labels(at)) == n_test
    for page in ("compare", "improve", "training_set"):
        at.switch_page(f"lprviz/app/pages/{page}.py").run()
        _ok(at)
    # The split survives page switches and the Training set page edits on top of it.
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Test structures"]) == n_test
    at.selectbox(key="ts_preset").set_value("all structures").run()
    at.button(key="ts_apply_preset").click().run()
    at.switch_page("lprviz/app/pages/explore.py").run()
    _ok(at)
    assert _counts(at) == (16, 0)
    # A new seed is a new split: the training set starts again from it.
    (seed,) = [n for n in at.sidebar.number_input if n.key.startswith("split_seed_")]
    seed.set_value(1).run()
    _ok(at)
    assert _counts(at)[1] == n_test
    frames_kept = state_train(at)
    # ...and it is kept per file while the user looks at another dataset.
    at.sidebar.selectbox(key="dataset_label").set_value(datasets.DEFAULT_DATASET).run()
    _ok(at)
    assert not [s for s in at.sidebar.selectbox if s.key.startswith("split_kind_")]
    at.sidebar.selectbox(key="dataset_label").set_value("mine.extxyz").run()
    _ok(at)
    (kind,) = [s for s in at.sidebar.selectbox if s.key.startswith("split_kind_")]
    assert kind.value == "random fraction" and _counts(at)[1] == n_test
    assert state_train(at) == frames_kept


def test_a_second_file_is_the_test_set_and_a_bad_one_is_named():
    at = _upload(_app(), "train part.extxyz", _teaching_extxyz(slice(0, 12)))
    at = _split(at, "second file")
    _ok(at)
    at = _upload(at, "held out.extxyz", _teaching_extxyz(slice(12, 18)), key="split_test_file")
    _ok(at)
    assert _counts(at) == (12, 6)
    labels = _structure_labels(at)
    assert sum(label.startswith("held out.extxyz#") and "(test," in label
               for label in labels) == 6
    for page in ("compare", "improve"):
        at.switch_page(f"lprviz/app/pages/{page}.py").run()
        _ok(at)
    at.switch_page("lprviz/app/pages/explore.py").run()
    at = _upload(at, "typo.extxyz", b"3\n\nCu 0 0 nan\n", key="split_test_file")
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert error.startswith("typo.extxyz") and "\n" not in error
    assert _counts(at) == (12, 6)  # the good test file stays in use


def test_test_groups_of_an_upload_are_its_test_set():
    at = _upload(_app(), "two groups.extxyz", _teaching_extxyz(slice(34, 46)))
    at = _split(at, "by group")
    _ok(at)
    assert _counts(at) == (12, 0)  # no group chosen yet
    (groups,) = [m for m in at.sidebar.multiselect if m.key.startswith("split_groups_")]
    groups.set_value(["varied-composition", "fixed-stoichiometry"]).run()
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert error.startswith("two groups.extxyz") and "no labelled structure" in error
    (groups,) = [m for m in at.sidebar.multiselect if m.key.startswith("split_groups_")]
    groups.set_value(["varied-composition"]).run()
    _ok(at)
    assert _counts(at) == (6, 6)
    assert all(("(test," in label) == ("[varied-composition]" in label)
               for label in _structure_labels(at))


def test_a_files_own_split_is_the_default_training_set():
    """Frames marked split=test in the file (as mlearn's test file) are not trained on."""
    splits = tuple("test" if i % 3 == 0 else "train" for i in range(10))
    at = _upload(_app(), "marked.extxyz", _teaching_extxyz(slice(0, 10), splits=splits))
    _ok(at)
    assert _counts(at) == (6, 4)


@pytest.mark.parametrize("page", ["explore", "learn"])
def test_local_error_vs_lpr_shown_where_true_local_energies_exist(app, page):
    """The sceptic's picture: on EMT data the lowest-LPR test atoms carry the large errors."""
    app.session_state["explore_tab"] = "Local error vs LPR"  # Explore runs its open tab only
    app.switch_page(f"lprviz/app/pages/{page}.py").run()
    _ok(app)
    metrics = {m.label: m.value for m in app.metric}
    low = float(metrics["Large errors among lowest-LPR 5%"].rstrip("%"))
    rest = float(metrics["Large errors among the rest"].rstrip("%"))
    assert low > 2 * rest


def test_colour_by_committee_spread(app):
    app.switch_page("lprviz/app/pages/explore.py").run()
    app.selectbox(key="color_by").set_value("committee spread").run()
    _ok(app)
    captions = " ".join(c.value for c in app.caption)
    assert "rank correlation with 1/LPR" in captions
    rho = float(captions.split("rank correlation with 1/LPR ")[1].split(")")[0])
    assert rho > 0.3  # the committee disagrees where the LPR is low
    app.selectbox(key="color_by").set_value("LPR").run()


def test_sessions_do_not_share_training_sets_or_alpha():
    """Two sessions of one server process (shared caches): A's edits never show in B."""
    a, b = _app(), _app()
    a.switch_page("lprviz/app/pages/training_set.py").run()
    a.selectbox(key="ts_preset").set_value("bulk + a few surface/defect structures").run()
    a.button(key="ts_apply_preset").click().run()
    a.switch_page("lprviz/app/pages/explore.py").run()
    a.slider(key="alpha_log10").set_value(-2.0).run()
    _ok(a)
    b.run()
    _ok(b)
    caption_a = " ".join(c.value for c in a.caption)
    caption_b = " ".join(c.value for c in b.caption)
    assert "alpha = 0.01" in caption_a and "alpha = 0.0001" in caption_b
    assert "training set 100 structures" in caption_b
    assert "training set 100 structures" not in caption_a
    assert _table(b).set_index("group").loc["surface", "training atoms"] == 0


def test_plot_selection_does_not_follow_a_dataset_switch():
    """A point picked in the environment map of one dataset is not looked up in another."""
    at = _app()
    at.session_state["env_map_0"] = {"selection": {"points": [{"customdata": 7000}]}}
    at.run()
    _ok(at)
    assert any("highlighted" in i.value for i in at.info)  # the pick is shown on its dataset
    at.sidebar.selectbox(key="dataset_label").set_value("teaching-stoichiometry").run()
    _ok(at)  # 7000 > the 2560 atoms of this dataset: no IndexError, no stale highlight
    assert not any("highlighted" in i.value for i in at.info)


def test_a_dataset_of_bulk_groups_only_opens_with_a_test_set():
    """teaching-stoichiometry's groups are both bulk, so "bulk only" would train on every
    structure and leave Explore, Improve and Validate nothing to test: half of it trains."""
    at = _app()
    at.sidebar.selectbox(key="dataset_label").set_value("teaching-stoichiometry").run()
    _ok(at)
    caption = " ".join(c.value for c in at.caption)
    found = re.search(r"training set (\d+) structures, test (\d+) structures", caption)
    assert found, caption
    n_train, n_test = map(int, found.groups())
    assert n_train + n_test == 80 and 30 <= n_train <= 50


def test_pages_when_everything_or_nothing_trains():
    """Every structure in training is a state, not an error: Improve says how to leave some
    out, Validate's heading says there is no test set; an empty training set's summary says
    "none"."""
    at = _app()
    at.switch_page("lprviz/app/pages/training_set.py").run()
    at.selectbox(key="ts_preset").set_value("all structures").run()
    at.button(key="ts_apply_preset").click().run()
    _ok(at)
    at.switch_page("lprviz/app/pages/improve.py").run()
    _ok(at)
    assert not at.error
    assert any("Every structure is in the training set" in i.value for i in at.info)
    at.switch_page("lprviz/app/pages/validate.py").run()
    _ok(at)
    assert any("no test set" in h.value for h in at.subheader)
    at.switch_page("lprviz/app/pages/training_set.py").run()
    at.multiselect(key="ts_groups").set_value([]).run()
    at.button(key="ts_apply_rules").click().run()
    assert not at.exception
    assert any(m.value == "Atoms per species: none" for m in at.markdown)


def test_clear_selection_brings_back_the_structure_picker():
    at = _app()
    at.session_state["env_map_0"] = {"selection": {"points": [{"customdata": 12}]}}
    at.run()
    _ok(at)
    assert any("highlighted" in i.value for i in at.info)
    assert not [s for s in at.selectbox if s.key == "structure"]
    at.button(key="clear_selection").click().run()
    _ok(at)
    assert not any("highlighted" in i.value for i in at.info)
    assert [s for s in at.selectbox if s.key == "structure"]


def test_unlabelled_frames_never_enter_the_training_set(tmp_path):
    """An upload that mixes labelled structures with unlabelled candidates: the default
    training set and the Improve page's candidates leave the unlabelled ones out."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    frames = []
    for i in range(8):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
        atoms.rattle(0.05, seed=i)
        if i < 7:
            atoms.calc = EMT()
            atoms.get_potential_energy()
        frames.append(atoms)
    buf = io.StringIO()
    ase.io.write(buf, frames, format="extxyz")
    at = _app()
    at.file_uploader(key="upload").set_value(
        ("mixed.extxyz", buf.getvalue().encode(), "application/octet-stream")).run()
    _ok(at)
    train = at.session_state["train"]
    (frames_in,) = [v for k, v in train.items() if k.endswith(".extxyz")]
    assert 7 not in frames_in and len(frames_in) == 7


DATA_SHARE = "data share of the rigidity"


def test_colour_by_data_share(app):
    """The share of each LPR due to the data (docs/science.md §11): a 0..1 colour with its own
    colour bar label, and a per-group median in the table."""
    app.switch_page("lprviz/app/pages/explore.py").run()
    app.selectbox(key="color_by").set_value(DATA_SHARE).run()
    _ok(app)
    (viewer,) = [str(el.proto).replace('\\"', '"') for el in app.main if el.type == "iframe"]
    # the colour bar is labelled with the option and runs linearly from 0 to 1
    bar = viewer.split(f'<div style="margin-bottom:2px;">{DATA_SHARE}</div>')[1]
    ticks = re.findall(r'translateX\(-50%\);">([^<]*)</span>', bar)
    assert ticks[0] == "0" and ticks[-1] == "1" and "0.5" in ticks
    shares = _table(app, "median data share")["median data share"].to_numpy()
    assert ((shares >= 0) & (shares <= 1)).all()
    app.selectbox(key="color_by").set_value("LPR").run()


def test_regulariser_limited_warning_only_when_alpha_sets_the_lpr():
    """At alpha 1e-4 the emt-alloys data set most test atoms' LPR: no warning. At alpha 100
    the regulariser does, and the page says so."""
    low = _app()
    _ok(low)
    shares = _table(low, "median data share")["median data share"]
    assert (shares > 0.5).all()
    assert not [w for w in low.warning if "regulariser" in w.value]
    high = _app(alpha="100")
    _ok(high)
    (line,) = [w.value for w in high.warning if "regulariser" in w.value]
    assert "test atoms" in line
    assert (_table(high, "median data share")["median data share"] < 0.5).all()


def test_structure_picker_is_capped_and_filtered(monkeypatch):
    """The picker lists at most MAX_STRUCTURE_OPTIONS structures in the chosen order; the
    text filter reaches the others (name or group), a filter matching nothing keeps all."""
    from lprviz.app import common

    monkeypatch.setattr(common, "MAX_STRUCTURE_OPTIONS", 12)
    at = _app()
    _ok(at)
    labels = _structure_labels(at)
    assert len(labels) == 12
    assert any("The first 12 of 300 structures" in c.value for c in at.caption)
    groups = {re.search(r"\[(.+?)\]", lab)[1] for lab in labels}
    rare = next(g for g in ("antisite", "interstitial", "bulk-alloy", "vacancy", "surface",
                            "bulk-pure", "cluster") if g not in groups)
    at.text_input(key="structure_query").set_value(rare.upper()).run()
    _ok(at)
    found = _structure_labels(at)
    assert found and all(rare in lab.lower() for lab in found)
    at.text_input(key="structure_query").set_value("no such structure zz").run()
    assert any("No structure matches" in i.value for i in at.info)
    assert len(_structure_labels(at)) == 12


def test_group_table_equals_pandas_groupby():
    """Explore's per-group table (one permutation per dataset, a partition per group) equals
    a pandas groupby of the same atoms."""
    from types import SimpleNamespace

    import numpy as np
    import pandas as pd

    from lprviz import datasets
    from lprviz.app import caches
    from lprviz.app.pages import explore

    source = datasets.DEFAULT_DATASET
    ds = caches.dataset(source)
    rng = np.random.default_rng(3)
    res = SimpleNamespace(lpr=rng.lognormal(size=ds.n_atoms), data_share=rng.random(ds.n_atoms),
                          train_mask=rng.random(len(ds.frames)) < 0.4)
    got = explore._lpr_table(source, res)
    df = pd.DataFrame({"group": np.asarray(ds.atom_groups).astype(str), "lpr": res.lpr,
                       "share": res.data_share,
                       "train": res.train_mask[ds.structure_index]})
    ref = df.groupby("group").agg(
        atoms=("lpr", "size"), median_lpr=("lpr", "median"), min_lpr=("lpr", "min"),
        training_atoms=("train", "sum"), median_data_share=("share", "median")).reset_index()
    assert list(got.columns) == list(ref.columns) and list(got["group"]) == list(ref["group"])
    for col in ref.columns[1:]:
        np.testing.assert_allclose(got[col].to_numpy(float), ref[col].to_numpy(float),
                                   rtol=1e-12)


def test_the_servers_process_gets_small_pages(monkeypatch):
    """Every run of the app's entry script turns NumPy's huge-page advice off for the
    server's process (:func:`lprviz.process.small_pages`: on a virtual machine the first
    page load at 102k atoms took 21.6-28.1 s with huge pages, 9.1-9.4 s without)."""
    from lprviz import process

    calls = []
    monkeypatch.setattr(process, "small_pages", lambda: calls.append(True) or True)
    _ok(_app())
    assert calls
