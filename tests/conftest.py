"""Fixtures shared by the test modules (use with
``pytestmark = pytest.mark.usefixtures("isolated_cache")``)."""

from __future__ import annotations

import pytest

from lprviz import features


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """An empty cache directory of the test's own (``LPRVIZ_CACHE_DIR``) and an empty
    in-memory descriptor cache before and after it, so no test reuses another's features."""
    monkeypatch.setenv("LPRVIZ_CACHE_DIR", str(tmp_path / "cache"))
    features.clear_memory_cache()
    yield tmp_path / "cache"
    features.clear_memory_cache()
