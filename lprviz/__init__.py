"""lprviz: explore the local prediction rigidity (LPR) of atomistic ML models.

The pipeline reads ``datasets -> features -> models & rigidity -> views``:

- :mod:`lprviz.datasets` loads, validates and fetches structures;
- :mod:`lprviz.features` computes SOAP power-spectrum descriptors (featomic);
- :mod:`lprviz.rigidity` computes LPR, PR and LCPR (Chong et al., JCTC 19, 8020 (2023));
- :mod:`lprviz.models` fits ridge / sparse-kernel models and committees;
- :mod:`lprviz.pipeline` ties them together for the CLI and the app;
- :mod:`lprviz.plots` and :mod:`lprviz.viewer` turn arrays into figures and 3D HTML.
"""

from lprviz.errors import InputError

__version__ = "0.1.0"

__all__ = ["InputError", "__version__"]
