"""Learn experiment 2 measured on the shipped teaching set (lprviz.lessons)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from lprviz import datasets, features
from lprviz.lessons import MIXED, SETS, SINGLE, composition_lesson, unlike_neighbour_fraction


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


def test_varied_compositions_pin_single_species_environments(lesson):
    env = lesson.environments.set_index(["environment", "training set"])
    one, var = SETS
    lpr, err = env["median LPR"], env["median |local error| (eV)"]
    # the effect is real where offsets matter: single-species environments
    assert lpr[SINGLE, var] > 100 * lpr[SINGLE, one]
    assert err[SINGLE, var] < 0.3 * err[SINGLE, one]
    # and small where the split of unlike contacts matters
    assert lpr[MIXED, var] < 20 * lpr[MIXED, one]
    assert err[MIXED, var] > 0.5 * err[MIXED, one]
    assert lesson.test_rmse[var] < lesson.test_rmse[one]
    groups = lesson.groups.pivot(index="group", columns="training set", values="median LPR")
    assert np.all(groups[var] > groups[one])


def test_notice_is_built_from_the_numbers(lesson):
    from lprviz.plots import format_number

    env = lesson.environments.set_index(["environment", "training set"])
    text = lesson.notice
    for key in ((SINGLE, SETS[0]), (SINGLE, SETS[1]), (MIXED, SETS[0]), (MIXED, SETS[1])):
        assert format_number(env.loc[key, "median |local error| (eV)"]) in text
    assert format_number(lesson.test_rmse[SETS[1]]) in text
    assert "fall" in text and "\n" not in text
