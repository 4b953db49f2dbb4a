"""Fixtures of the real-browser tests: a Streamlit server and a headless Chromium.

Under ``CI=true`` these tests must run: a missing Chromium or Playwright is a failure, never a
skip. Outside CI they skip with the reason.
"""

from __future__ import annotations

import contextlib
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


def wait_healthy(proc: subprocess.Popen, url: str, log_path: Path, *,
                 seconds: float = 90) -> None:
    """Wait for the app server ``proc`` at ``url`` to answer its health check; fail the test
    (naming the log) if it exits or does not answer within ``seconds``."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"lprviz app exited early (status {proc.returncode}); see {log_path}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"lprviz app did not become healthy within {seconds:g} s; see {log_path}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_app(cmd: list[str], *, cache: Path, log_name: str, cwd: Path = ROOT):
    """Run ``cmd ... app --port P`` on 127.0.0.1:<free port> with an empty lprviz cache and no
    ``LPRVIZ_3DMOL_JS``: the app must fetch 3Dmol.js itself, as on a user's first start.
    Yields the URL; the server is always stopped."""
    if shutil.which("npm") is None:
        _missing("npm not found: the app's first start fetches 3Dmol.js with it")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "LPRVIZ_3DMOL_JS"}
    env.update(LPRVIZ_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / log_name
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*cmd, "app", "--port", str(port)], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, log_path, seconds=180)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


def save_docs_screenshot(source: Path, dest: Path, *, box: tuple[int, int] = (1000, 1000)
                         ) -> None:
    """A browser screenshot downscaled into ``box`` and quantised (128 colours): small enough
    to commit under docs/."""
    from PIL import Image

    img = Image.open(source).convert("RGB")
    img.thumbnail(box)
    dest.parent.mkdir(parents=True, exist_ok=True)
    img.quantize(colors=128).save(dest, optimize=True)


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    """``lprviz app`` (this checkout) on a free port, first start with an empty cache."""
    with running_app([sys.executable, "-m", "lprviz"], cache=tmp_path_factory.mktemp("cache"),
                     log_name="streamlit-server.log") as url:
        yield url


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
