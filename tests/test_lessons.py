"""Learn's numbers (lprviz.lessons) and the Learn page: its notices agree with its tables."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from lprviz import datasets, features
from lprviz.lessons import (
    ERROR,
    LPR,
    MIXED,
    SETS,
    SINGLE,
    column,
    composition_lesson,
    unlike_neighbour_fraction,
)


def test_unlike_neighbour_fraction_on_a_hand_built_chain():
    atoms = Atoms("CuCuAu", positions=[[0, 0, 0], [2.5, 0, 0], [5.0, 0, 0]])
    np.testing.assert_allclose(unlike_neighbour_fraction([atoms], 3.0), [0.0, 0.5, 1.0])
    lone = Atoms("Cu", positions=[[0, 0, 0]])
    np.testing.assert_allclose(unlike_neighbour_fraction([lone], 3.0), [0.0])


@pytest.fixture(scope="module")
def lesson():
    ds = datasets.load("teaching-stoichiometry")
    desc = features.compute_soap(ds.frames, features.SOAP_PRESETS["fast"])
    return composition_lesson(ds, desc, alpha=1e-4)


def _by(table, key: str, quantity: str) -> dict:
    """``{(label, training set): value}`` of a wide :func:`compare_states` table."""
    return {(r[key], name): r[column(quantity, name)] for _, r in table.iterrows()
            for name in SETS}


def test_varied_compositions_pin_single_species_environments(lesson):
    one, var = SETS
    lpr = _by(lesson.environments, "environment", LPR)
    err = _by(lesson.environments, "environment", ERROR)
    # the effect is real where offsets matter: single-species environments
    assert lpr[SINGLE, var] > 100 * lpr[SINGLE, one]
    assert err[SINGLE, var] < 0.3 * err[SINGLE, one]
    # and small where the split of unlike contacts matters
    assert lpr[MIXED, var] < 20 * lpr[MIXED, one]
    assert err[MIXED, var] > 0.5 * err[MIXED, one]
    assert lesson.test_rmse[var] < lesson.test_rmse[one]
    assert np.all(lesson.groups["LPR ratio"] > 1)


def test_notice_is_built_from_the_numbers(lesson):
    from lprviz.plots import format_number

    text = lesson.notice
    err = _by(lesson.environments, "environment", ERROR)
    for value in err.values():
        assert format_number(value) in text
    assert format_number(lesson.test_rmse[SETS[1]]) in text
    assert "fall" in text and "\n" not in text
    # the showcase structures are in neither training set
    train = lesson.train[SETS[0]] | lesson.train[SETS[1]]
    assert lesson.frames and not train[list(lesson.frames)].any()


def test_both_training_sets_are_tested_on_the_same_structures(lesson):
    """The RMSE of each training set is measured on one held-out test set that neither
    trains on (each set's own leftovers were mostly different structures), with both
    groups in it; the two training sets are the same size."""
    ds = datasets.load("teaching-stoichiometry")
    one, var = (lesson.train[s] for s in SETS)
    assert not (lesson.test & (one | var)).any()
    assert set(np.asarray(ds.groups)[lesson.test]) == set(ds.groups)
    assert one.sum() == var.sum() > 0
    assert f"same {int(lesson.test.sum())} held-out test structures" in lesson.notice
    assert lesson.test.sum() == 2 * round(0.25 * 40)  # a quarter of each group of 40


@pytest.mark.parametrize(("before", "after", "word"), [
    (1.0, 2.0, "rise"), (1.0, 0.5, "fall"), (1.0, 1.1, "barely move"), (2.0, 1.7, "barely move"),
])
def test_change_words_follow_the_numbers(before, after, word):
    from lprviz.lessons import CHANGE_PATTERN, change

    text = change(before, after, unit="eV")
    ((w, ratio, a, b),) = CHANGE_PATTERN.findall(text)
    assert w == word and float(a) == before and float(b) == after
    assert float(ratio) == pytest.approx(after / before, rel=0.05)


def test_showcase_frames_rank_the_largest_change_first():
    from lprviz.lessons import showcase_frames

    sidx = np.array([0, 0, 1, 1, 2, 2])
    a = np.ones(6)
    b = np.array([1.0, 2.0, 1.0, 100.0, 1e4, 1.0])
    candidates = np.array([True, True, False])
    # frame 2 changes most but is excluded (a training frame, say)
    assert showcase_frames(a, b, sidx, candidates) == (1, 0)
    assert showcase_frames(a, b, sidx, np.ones(3, bool), k=2) == (2, 1)


# --------------------------------------------------------------------------- the Learn page
# AppTest of lprviz/app/pages/learn.py: every experiment shows a coloured structure, and every
# notice's words agree with the numbers of its own table, in both settings of its widget.

APP = str(Path(__file__).resolve().parents[1] / "app.py")
STYLE = re.compile(r'setStyle\(\{"index": \[[\d, ]*\]\},\{"sphere": \{"color": "(#[0-9a-f]{6})"')
EXPERIMENTS = 5


@pytest.fixture(scope="module")
def learn():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=600).run()
    at.switch_page("lprviz/app/pages/learn.py").run()
    _ok(at)
    return at


def _ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _viewers(at) -> list[str]:
    return [el.proto.srcdoc for el in at.main if el.type == "iframe"]


def _colours(html: str) -> list[np.ndarray]:
    return [np.array([int(c[i:i + 2], 16) for i in (1, 3, 5)]) for c in STYLE.findall(html)]


def _distinct(colours: list[np.ndarray], tol: int = 24) -> int:
    """Colours that differ from each other by more than ``tol`` in some channel."""
    kept: list[np.ndarray] = []
    for c in colours:
        if all(np.abs(c - k).max() > tol for k in kept):
            kept.append(c)
    return len(kept)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)  # common.plain_text's Markdown escapes


def _numbers(at) -> np.ndarray:
    """Every number the page shows in a table or metric."""
    values = [df.value.select_dtypes("number").to_numpy().ravel() for df in at.dataframe]
    values.append(np.array([float(m.value) for m in at.metric
                            if re.fullmatch(r"[-\d.e]+", m.value)]))
    return np.concatenate(values)


def _shown(x: float, numbers: np.ndarray) -> bool:
    return bool(np.any(np.isclose(numbers, x, rtol=6e-3, atol=0)))


def _check_notice(at, i: int) -> list[tuple]:
    """Parse notice ``i``'s change phrases; each agrees with numbers shown on the page."""
    from lprviz.lessons import CHANGE_PATTERN

    text = _unescape(at.info[i].value)
    assert "\n" not in text
    numbers = _numbers(at)
    claims = [(w, float(r), float(a), float(b)) for w, r, a, b in CHANGE_PATTERN.findall(text)]
    for word, ratio, before, after in claims:
        assert _shown(before, numbers) and _shown(after, numbers), (word, before, after, text)
        assert ratio == pytest.approx(after / before, rel=0.06)
        if word == "rise":
            assert after > 1.2 * before
        elif word == "fall":
            assert after < 0.85 * before
        else:
            assert 0.75 < after / before < 1.3
    return claims


def _check_table_is_worded(at, table_index: int, claims: list[tuple]) -> None:
    """Every row's median LPR change appears in the notice with its two numbers."""
    df = at.dataframe[table_index].value
    a, b = [c for c in df.columns if c.startswith("median LPR, ")]
    pairs = [(x, y) for _, _, x, y in claims]
    for x, y in zip(df[a], df[b], strict=True):
        assert any(np.isclose(x, p, rtol=6e-3) and np.isclose(y, q, rtol=6e-3)
                   for p, q in pairs), (x, y, pairs)


def _check_viewers(at) -> list[list[np.ndarray]]:
    viewers = _viewers(at)
    assert len(viewers) == EXPERIMENTS
    colours = [_colours(html) for html in viewers]
    assert all(len({tuple(c) for c in cs}) >= 2 for cs in colours), [len(c) for c in colours]
    return colours


def _set_and_check(at, widget, value, *, notice: int, tables: tuple[int, ...]) -> list[tuple]:
    """Set ``widget``, rerun, check the viewers, and check notice ``notice`` against its
    numbers and every row of ``tables``; returns the notice's change phrases."""
    widget.set_value(value).run()
    _ok(at)
    _check_viewers(at)
    claims = _check_notice(at, notice)
    for t in tables:
        _check_table_is_worded(at, t, claims)
    return claims


def test_learn_alpha_notice_follows_the_slider(learn):
    seen = []
    for log_alpha, direction in ((-2.0, "rise"), (-6.0, "fall"), (-4.0, None)):
        learn.slider(key="learn_alpha").set_value(log_alpha).run()
        _ok(learn)
        seen.append(_check_viewers(learn)[0])
        claims = _check_notice(learn, 0)
        if direction is None:  # the reference alpha itself: nothing to compare
            assert not claims and "reference alpha" in learn.info[0].value
            continue
        _check_table_is_worded(learn, 0, claims)
        # LPR is monotonic in alpha (docs/science.md §7.5): every group moves the same way
        assert {w for w, *_ in claims[:3]} == {direction}
        text = _unescape(learn.info[0].value)
        table = learn.dataframe[0].value.set_index("group")
        share = re.search(r"account for (\d+)% of the median test atom's LPR at (.+?) \((\d+)%",
                          text)
        col = [c for c in table.columns if c.startswith("median data share of LPR, chosen")][0]
        assert float(share.group(1)) == pytest.approx(100 * table.loc["all test atoms", col],
                                                      abs=0.6)
    # one colour range for every alpha: the structure's colours change with the slider
    assert _distinct(seen[0] + seen[1]) > _distinct(seen[0])


@pytest.mark.parametrize("choice", SETS)
def test_learn_composition_notice_matches_its_tables(learn, choice):
    claims = _set_and_check(learn, learn.radio(key="learn_comp"), choice, notice=1,
                            tables=(1, 2))
    env = learn.dataframe[2].value.set_index("environment")
    err = [c for c in env.columns if c.startswith("median |local error|")]
    # the effect is real where the notice says it is: single-species environments
    single = env.loc[SINGLE, err].to_numpy()
    assert any(w == "fall" and np.isclose(a, single[0], rtol=6e-3) for w, _, a, _ in claims)


def test_learn_composition_colours_change_with_the_training_set(learn):
    colours = []
    for choice in SETS:
        learn.radio(key="learn_comp").set_value(choice).run()
        colours.append(_check_viewers(learn)[1])
    # one colour range for both training sets: the structure visibly changes colour (the
    # second set brings colours the first did not show; it may keep some of the first's,
    # e.g. for atoms of the minority element)
    assert _distinct(colours[0] + colours[1]) > _distinct(colours[0])
    assert _distinct(colours[1]) >= 2


@pytest.mark.parametrize("add", [False, True])
def test_learn_small_structures_notice_matches_its_table(learn, add):
    _set_and_check(learn, learn.toggle(key="learn_small"), add, notice=2, tables=(3,))
    table = learn.dataframe[3].value
    gained = set(table.loc[table["LPR ratio"] > 1.25, "group"])
    text = _unescape(learn.info[2].value)
    if "gain too (" in text:
        named = text.split("gain too (")[1].split(")")[0].split(", ")
        assert set(named) <= gained


@pytest.mark.parametrize("colour", ["|local error|", "LPR"])
def test_learn_error_notice_matches_its_metrics(learn, colour):
    learn.radio(key="learn_colour").set_value(colour).run()
    _ok(learn)
    colours = _check_viewers(learn)[3]
    assert _distinct(colours) >= 2
    text = _unescape(learn.info[3].value)
    low, rest = (float(x) for x in re.findall(r"(\d+)% of the", text)[:1]
                 + re.findall(r"against (\d+)%", text))
    metrics = {m.label: float(m.value.rstrip("%")) for m in learn.metric if "%" in m.value}
    assert low == metrics["Large errors among lowest-LPR 5%"]
    assert rest == metrics["Large errors among the rest"]
    assert ("crowd among the lowest-LPR" in text) == (low > 2 * rest)


def test_forces_raise_every_groups_median_lpr_at_fixed_scale():
    from lprviz import pipeline
    from lprviz.lessons import CHANGE_PATTERN, forces_lesson

    full = datasets.load("emt-alloys")
    groups = np.asarray(full.groups)
    ds = full.subset(np.flatnonzero(np.isin(groups, ["bulk-alloy", "surface", "vacancy",
                                                      "cluster"]))[::3])
    desc = features.compute_soap(ds.frames, features.SOAP_PRESETS["fast"], species=ds.species)
    train = np.asarray(ds.groups) == "bulk-alloy"
    plain = pipeline.prepare(ds, desc, train, pipeline.ModelSpec())
    forced = pipeline.prepare(ds, desc, train, pipeline.ModelSpec(), force_weight=0.03)
    assert forced.scale == pytest.approx(plain.scale, rel=1e-12)  # same training atoms
    lesson = forces_lesson(ds, pipeline.evaluate(plain, 1e-4), pipeline.evaluate(forced, 1e-4))
    table = lesson.table.set_index("group")
    assert set(table.index) == {"bulk-alloy", "surface", "vacancy", "cluster"}
    assert np.all(table["LPR ratio"] > 1.25)  # every group's median LPR rises
    claims = CHANGE_PATTERN.findall(lesson.notice)
    lpr_cols = [c for c in table.columns if c.startswith(LPR)]
    for (word, _, before, after), (_, row) in zip(claims, table.iterrows(), strict=False):
        assert word == "rise"
        assert float(before) == pytest.approx(row[lpr_cols[0]], rel=6e-3)
        assert float(after) == pytest.approx(row[lpr_cols[1]], rel=6e-3)
    n_atoms = int(ds.frame_sizes[train].sum())
    assert f"{3 * n_atoms} force components" in lesson.notice and "\n" not in lesson.notice


@pytest.mark.parametrize("show", [True, False])
def test_learn_forces_notice_matches_its_table(learn, show):
    learn.toggle(key="learn_forces").set_value(show).run()
    _ok(learn)
    _check_viewers(learn)
    (notice,) = [i for i, box in enumerate(learn.info) if "force components" in box.value]
    (table,) = [i for i, df in enumerate(learn.dataframe)
                if any("energies + forces" in str(c) for c in df.value.columns)]
    claims = _check_notice(learn, notice)
    _check_table_is_worded(learn, table, claims)
    # at fixed scale the force rows raise every group's median LPR
    assert np.all(learn.dataframe[table].value["LPR ratio"] > 1)
