"""The package's top level: the names a notebook needs, and a light ``import lprviz``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import lprviz


def test_import_is_light():
    code = "import sys, lprviz; print('featomic' in sys.modules, 'scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]


def test_notebook_names_resolve_to_the_library():
    from lprviz import datasets, features, pipeline, rigidity

    assert lprviz.load is datasets.load and lprviz.compute_soap is features.compute_soap
    assert lprviz.ModelSpec is pipeline.ModelSpec and lprviz.evaluate is pipeline.evaluate
    assert lprviz.local_prediction_rigidity is rigidity.local_prediction_rigidity
    assert set(lprviz.__all__) >= {"load", "prepare", "evaluate", "RigiditySolver"}
    with pytest.raises(AttributeError):
        lprviz.not_a_name  # noqa: B018


def test_notebook_example_runs():
    ds = lprviz.load("teaching-stoichiometry").subset(np.arange(40))
    desc = lprviz.compute_soap(ds.frames, lprviz.SoapHypers(max_radial=2, max_angular=2),
                               species=ds.species, cache=False)
    train = np.arange(len(ds.frames)) % 2 == 0
    res = lprviz.evaluate(lprviz.prepare(ds, desc, train, lprviz.ModelSpec()), alpha=1e-4)
    assert res.lpr.shape == (ds.n_atoms,) and np.all(np.isfinite(res.lpr)) and res.lpr.min() > 0
