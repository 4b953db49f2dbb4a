"""Training-set presets and rules on hand-made frame labels."""

import numpy as np
import pytest

from lprviz import selection

GROUPS = ["bulk", "bulk", "surface", "surface", "cluster", "bulk"]
NUMBERS = [np.array([29, 79]), np.array([29, 79]), np.array([29] * 4), np.array([79] * 4),
           np.array([29]), np.array([29, 29, 29, 79])]


def test_presets():
    assert selection.preset_mask("bulk only", GROUPS, NUMBERS).tolist() == [1, 1, 0, 0, 0, 1]
    few = selection.preset_mask("bulk + a few surface/defect structures", GROUPS, NUMBERS,
                                n_extra=1)
    assert few.sum() == 5 and few[[0, 1, 5]].all()
    small = selection.preset_mask("bulk + small structures", GROUPS, NUMBERS, small_max_atoms=1)
    assert small.tolist() == [1, 1, 0, 0, 1, 1]
    one = selection.preset_mask("one stoichiometry", GROUPS, NUMBERS)
    assert one.tolist() == [1, 1, 0, 0, 0, 0]
    varied = selection.preset_mask("varied compositions", GROUPS, NUMBERS)
    assert varied.sum() == 2 and varied[5]  # same count, both compositions
    with pytest.raises(ValueError, match="preset"):
        selection.preset_mask("nope", GROUPS, NUMBERS)


def test_rules_and_helpers():
    rule = selection.TrainingRule(groups=("surface",), species=(29,))
    assert selection.apply_rule(rule, GROUPS, NUMBERS).tolist() == [0, 0, 1, 0, 0, 0]
    half = selection.apply_rule(selection.TrainingRule(fraction=0.5, seed=1), GROUPS, NUMBERS)
    assert half.sum() == 3
    order = selection.frames_by_lowest_value(np.array([5.0, 1.0, 3.0]), np.array([0, 1, 2]), 3)
    assert order.tolist() == [1, 2, 0]
    s = selection.summary(np.array([1, 0, 0, 0, 1, 0], bool), GROUPS, NUMBERS)
    assert s == {"structures": 2, "atoms": 3, "species": {29: 2, 79: 1},
                 "groups": {"bulk": 1, "cluster": 1}}
