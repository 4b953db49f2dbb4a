"""Skip rules for tests of optional extras (a helper module of the tests).

The neural-network tests need torch, the backbone tests chgnet / sevenn too (``pip install
'lprviz[nn]'``). Without them they skip and say why, except under ``CI=true``: CI installs the
extra, so a missing package there is a failure.
"""

from __future__ import annotations

import importlib.util
import os

import pytest


def _skip_or_fail(reason: str) -> None:
    """Skip with ``reason``; under ``CI=true`` (the extra is installed there) fail instead."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_torch() -> None:
    """Skip the calling test when torch is missing (fail under ``CI=true``)."""
    if importlib.util.find_spec("torch") is None:
        _skip_or_fail("torch is not installed (pip install 'lprviz[nn]')")


def require_backbone(name: str) -> None:
    """Skip when ``lprviz.backbones`` is not part of this tree; when it is, skip (fail under
    ``CI=true``) while the backbone's packages are missing."""
    if importlib.util.find_spec("lprviz.backbones") is None:
        pytest.skip("lprviz.backbones is not part of this tree")
    from lprviz import sources

    reason = sources.backbone_unavailable(name)
    if reason is not None:
        _skip_or_fail(reason)
