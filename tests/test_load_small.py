"""Small version of benchmarks/load_app.py: 2 browser sessions x 3 interactions at once.

Checks what the benchmark checks (no error on the page, no cross-session leakage, every step
done within the time bound). Under ``CI=true`` a missing Chromium or Playwright is a failure;
outside CI the test skips with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _require_browser() -> None:
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("playwright")
    if not Path("/usr/bin/chromium").exists():
        missing.append("/usr/bin/chromium")
    if missing:
        reason = f"load test needs {', '.join(missing)}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"under CI: {reason}", pytrace=False)
        pytest.skip(reason)


def test_two_sessions_three_interactions(tmp_path):
    _require_browser()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "load_app.py"), "--sessions", "2",
         "--interactions", "3", "--max-seconds", "600", "--log", str(tmp_path / "server.log")],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    report = proc.stdout + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    assert "6 steps done" in proc.stdout, report
    assert "errors on page: 0; cross-session leaks: 0; timeouts: 0" in proc.stdout, report
