"""The built wheel, installed into a fresh venv, works from a directory outside the repository.

What a ``pip install lprviz`` user gets: the shipped datasets, the app and its settings must
all be inside the package. The venv gets its dependencies from the package index (as a user's
would); under ``CI=true`` failing to build or install is a failure, never a skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser.conftest import ARTIFACTS, ROOT, running_app
from tests.browser.test_app_browser import _colour_classes, _settled_canvas

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _run(cmd: list[str], *, cwd: Path, env: dict | None = None, timeout: float = 900):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}:\n{proc.stdout[-2000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """bin/ of a fresh venv with the wheel built from this checkout installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w",
          str(tmp / "dist"), str(ROOT)], cwd=tmp)
    wheels = sorted((tmp / "dist").glob("lprviz-*.whl"))
    assert len(wheels) == 1, wheels
    _run([sys.executable, "-m", "venv", str(tmp / "venv")], cwd=tmp)
    bindir = tmp / "venv" / "bin"
    # no PYTHONPATH: a checkout on it (with the egg-info the build leaves) would look installed
    _run([str(bindir / "python"), "-m", "pip", "install", "--quiet",
          "--disable-pip-version-check", str(wheels[0])], cwd=tmp, timeout=1800,
         env=_outside_env(tmp))
    return bindir


def _outside_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "LPRVIZ_3DMOL_JS", "LPRVIZ_DATASETS_DIR")}
    env["LPRVIZ_CACHE_DIR"] = str(tmp / "cache")
    return env


def test_wheel_cli_outside_the_repository(wheel_venv, tmp_path):
    env = _outside_env(tmp_path)
    lprviz = str(wheel_venv / "lprviz")
    where = _run([str(wheel_venv / "python"), "-c", "import lprviz; print(lprviz.__file__)"],
                 cwd=tmp_path, env=env)
    assert str(wheel_venv.parent) in where.stdout  # the installed copy, not this checkout
    version = _run([lprviz, "--version"], cwd=tmp_path, env=env)
    assert version.stdout.startswith("lprviz ")
    listing = _run([lprviz, "datasets", "list"], cwd=tmp_path, env=env).stdout
    shipped = [line.split() for line in listing.splitlines() if " shipped " in line]
    assert {row[0] for row in shipped} >= {"emt-alloys", "teaching-stoichiometry"}
    assert all(row[2] == "yes" for row in shipped), listing  # present inside the package
    out = tmp_path / "out.extxyz"
    _run([lprviz, "lpr", "--dataset", "emt-alloys", "--train-groups", "bulk-pure,bulk-alloy",
          "--alpha", "1e-4", "-q", "-o", str(out)], cwd=tmp_path, env=env)
    import ase.io

    frames = ase.io.read(out, index=":")
    assert frames and all("lpr" in a.arrays for a in frames)


def test_wheel_app_shows_coloured_atoms_without_a_cdn(wheel_venv, tmp_path, browser):
    """``lprviz app`` from the wheel, first start: it fetches 3Dmol.js itself (npm) and the
    viewer draws atoms in several LPR colours (this machine reaches no CDN)."""
    with running_app([str(wheel_venv / "lprviz")], cache=tmp_path / "cache", cwd=tmp_path,
                     log_name="wheel-app-server.log") as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="domcontentloaded")
        frame, pixels = _settled_canvas(page)
        page.screenshot(path=str(ARTIFACTS / "wheel-explore.png"), full_page=False)
        assert frame.locator('script[src="/app/static/3Dmol-min.js"]').count() == 1
        assert not frame.locator("#lprviz-3dmol-missing").is_visible()
        classes = {h: n for h, n in _colour_classes(pixels).items() if n >= 30}
        assert len(classes) >= 2, f"expected atoms in >= 2 LPR colours, got {classes}"
        page.close()
    log = (ARTIFACTS / "wheel-app-server.log").read_text()
    assert "Traceback" not in log and "no static folder" not in log.lower()
