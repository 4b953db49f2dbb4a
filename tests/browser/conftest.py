"""Fixtures of the real-browser tests: a Streamlit server and a headless Chromium.

Under ``CI=true`` these tests must run: a missing Chromium or Playwright is a failure, never a
skip. Outside CI they skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"browser test cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _local_3dmol() -> str:
    """Path of a local 3Dmol-min.js: $LPRVIZ_3DMOL_JS, or fetched via the viewer's command."""
    env = os.environ.get("LPRVIZ_3DMOL_JS")
    if env and Path(env).is_file():
        return env
    dest = ROOT / ".cache" / "3dmol"
    proc = subprocess.run(
        [sys.executable, "-m", "lprviz.viewer", "fetch-3dmol", "--dest", str(dest)],
        capture_output=True, text=True, check=False, timeout=300,
    )
    path = dest / "3Dmol-min.js"
    if proc.returncode != 0 or not path.is_file():
        _missing(f"could not obtain 3Dmol-min.js: {proc.stderr.strip()[:300]}")
    return str(path)


@pytest.fixture(scope="session")
def app_url():
    """Start ``streamlit run app.py`` on 127.0.0.1:<free port>; always terminated."""
    js = _local_3dmol()
    port = _free_port()
    env = dict(os.environ, LPRVIZ_3DMOL_JS=js, PYTHONUNBUFFERED="1")
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "streamlit-server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
         "--server.address", "127.0.0.1", "--server.port", str(port),
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited early (status {proc.returncode}); see "
                            f"{ARTIFACTS / 'streamlit-server.log'}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("streamlit server did not become healthy within 90 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (sync API)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install playwright)")
    if not (Path(CHROMIUM).is_file() or shutil.which("chromium")):
        _missing(f"{CHROMIUM} not found (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
