"""Low-dimensional maps of atomic environments, for display (the Explore page's 2D map).

Computation only; :func:`lprviz.plots.environment_map_figure` draws the result.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pca_2d"]


def pca_2d(X: np.ndarray) -> np.ndarray:
    """First two principal components of the rows of ``X`` (n, d) -> (n, 2), for display."""
    X = np.asarray(X, dtype=float)
    Xc = X - X.mean(axis=0)
    if Xc.shape[0] < 2:
        return np.zeros((Xc.shape[0], 2))
    if min(Xc.shape) > 50:
        # Two components only: a truncated (Lanczos) SVD costs a few passes over X instead
        # of the O(n d^2) of a full one (seconds -> ~0.1 s at 8k atoms x 1.5k features).
        from scipy.sparse.linalg import svds

        _, sv, vt = svds(Xc, k=2, random_state=0)
        vt = vt[np.argsort(sv)[::-1]]
    else:
        _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    out = Xc @ vt[:2].T
    if out.shape[1] < 2:
        out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    return out
