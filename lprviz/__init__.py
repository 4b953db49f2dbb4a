"""lprviz: explore the local prediction rigidity (LPR) of atomistic ML models.

The pipeline reads ``datasets -> features -> models & rigidity -> views``:

- :mod:`lprviz.datasets` loads, validates and fetches structures;
- :mod:`lprviz.features` computes SOAP power-spectrum descriptors (featomic);
- :mod:`lprviz.sources` takes per-atom features from SOAP, an array in the file or a
  pretrained backbone; :mod:`lprviz.nn` trains a small network whose last layer gives the
  LLPR; :mod:`lprviz.calibration` turns 1/LPR into calibrated uncertainties;
- :mod:`lprviz.rigidity` computes LPR, PR and LCPR (Chong et al., JCTC 19, 8020 (2023));
- :mod:`lprviz.models` fits ridge / sparse-kernel models and committees;
- :mod:`lprviz.pipeline` ties them together for the CLI and the app;
- :mod:`lprviz.plots` and :mod:`lprviz.viewer` turn arrays into figures and 3D HTML.
"""

from lprviz.errors import InputError

__version__ = "0.1.0"

# The few names a notebook needs, imported on first use (``import lprviz`` stays light, so
# ``lprviz --version`` does not load featomic or scipy):
#     ds = lprviz.load("emt-alloys")
#     desc = lprviz.compute_soap(ds.frames, species=ds.species)
#     fit = lprviz.prepare(ds, desc, train_mask, lprviz.ModelSpec())
#     res = lprviz.evaluate(fit, alpha=1e-4)        # res.lpr, res.local_energy, ...
_LAZY = {
    "load": "lprviz.datasets",
    "compute_soap": "lprviz.features",
    "SoapHypers": "lprviz.features",
    "FeatureSource": "lprviz.sources",
    "descriptors_for": "lprviz.sources",
    "ModelSpec": "lprviz.pipeline",
    "prepare": "lprviz.pipeline",
    "evaluate": "lprviz.pipeline",
    "RigiditySolver": "lprviz.rigidity",
    "local_prediction_rigidity": "lprviz.rigidity",
}

__all__ = ["InputError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lprviz' has no attribute {name!r}")
