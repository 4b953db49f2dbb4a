"""Skip rules for tests of optional extras (a helper module of the tests).

The neural-network tests need torch (``pip install 'lprviz[nn]'``). Without it they skip and
say why, except under ``CI=true``: CI installs the extra, so a missing torch there is a failure.
"""

from __future__ import annotations

import importlib.util
import os

import pytest


def require_torch() -> None:
    """Skip the calling test when torch is missing (fail under ``CI=true``)."""
    if importlib.util.find_spec("torch") is not None:
        return
    reason = "torch is not installed (pip install 'lprviz[nn]')"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"under CI: {reason}", pytrace=False)
    pytest.skip(reason)
