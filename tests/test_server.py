"""``lprviz app``: packaged settings, localhost by default, stops on SIGTERM/SIGINT, serves
its local 3Dmol.js; ``lprviz --version`` and ``python -m lprviz``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from lprviz import __version__
from lprviz.app import server
from tests.browser.conftest import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]


def test_source_checkout_config_matches_packaged_settings():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    flat = {f"{section}.{key}": value for section, table in config.items()
            for key, value in table.items()}
    assert flat == server.SERVER_OPTIONS
    assert flat["server.address"] == "127.0.0.1"


def test_flags_and_run_dir(tmp_path):
    assert server.flags({"server.headless": True, "server.port": 8})[1::2] == ["true", "8"]
    script = server.prepare_run_dir(tmp_path / "run")
    assert (script.parent / "static").is_dir()
    assert "from lprviz.app.entry import main" in script.read_text()
    assert server.prepare_run_dir(tmp_path / "run") == script  # idempotent


@pytest.mark.parametrize("cmd", [["-m", "lprviz"], ["-m", "lprviz.cli"]])
def test_version_and_module_entry(cmd):
    out = subprocess.run([sys.executable, *cmd, "--version"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0 and out.stdout.strip() == f"lprviz {__version__}"


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses (hex, as in /proc/net/tcp) listening on ``port``."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if int(p, 16) == port and state == "0A":  # LISTEN
            found.add(addr)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_app_binds_localhost_serves_3dmol_and_stops_on_signal(tmp_path, sig):
    js = tmp_path / "3Dmol-min.js"
    js.write_text("window.$3Dmol={marker:'SERVED'};" + " " * 120_000)
    port = free_port()
    env = dict(os.environ, LPRVIZ_CACHE_DIR=str(tmp_path / "cache"), LPRVIZ_3DMOL_JS=str(js))
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lprviz", "app", "--port", str(port)],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, log)
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only
        with urllib.request.urlopen(f"{url}/app/static/3Dmol-min.js", timeout=10) as r:
            assert b"SERVED" in r.read()
        proc.send_signal(sig)
        assert proc.wait(timeout=30) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=15)
    text = log.read_text()
    assert "no static folder" not in text.lower() and "Traceback" not in text
    with socket.socket() as s:  # the port is free again: nothing was left running
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_app_refuses_a_missing_3dmol_file(tmp_path, capsys):
    from lprviz.cli import main

    assert main(["app", "--3dmol-js", str(tmp_path / "none.js")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.js" in err


def test_app_refuses_a_busy_port_or_an_unknown_address_in_one_line(capsys):
    """Streamlit printed a traceback (an unresolvable --address) or a log line (a busy
    port), exit 1; lprviz names the option, exit 2, before starting anything."""
    from lprviz.cli import main

    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        assert main(["app", "--port", str(port), "--no-fetch-3dmol"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--port {port}: already in use on 127.0.0.1" in err
    assert main(["app", "--address", "no-such-host.invalid", "--no-fetch-3dmol"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--address no-such-host.invalid: not an address" in err
    # an address of another machine: nothing can listen there
    assert main(["app", "--address", "192.0.2.1", "--no-fetch-3dmol"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--address 192.0.2.1: cannot listen there" in err
    server.check_listen("127.0.0.1", free_port())  # a free port passes
