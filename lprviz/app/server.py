"""Starting the app's server: its settings, its run folder, and ``lprviz app``.

Everything the installed package needs to serve the app ships inside it: the server settings
are :data:`SERVER_OPTIONS` (passed to Streamlit as flags, so no ``.streamlit/config.toml`` is
needed; the source checkout's copy for ``streamlit run app.py`` holds the same values, a test
keeps them equal), and :func:`prepare_run_dir` writes a two-line entry script and a
``static/`` folder (the local 3Dmol.js) into the user cache, because Streamlit serves static
files only from beside the main script and ``site-packages`` may not be writable.

Streamlit runs in this process (:func:`serve`), so ``kill`` or Ctrl-C stop the server itself:
no orphaned child keeps the port busy.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lprviz import threedmol

__all__ = ["DEFAULT_ADDRESS", "DEFAULT_PORT", "SERVER_OPTIONS", "check_listen",
           "prepare_run_dir", "serve"]

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 8501

#: Streamlit settings of the app (config option name -> value).
SERVER_OPTIONS: dict[str, object] = {
    # Only this machine can connect unless the user asks for more (lprviz app --address).
    "server.address": DEFAULT_ADDRESS,
    "server.headless": True,
    "server.maxUploadSize": 50,  # MB; lprviz.limits also bounds what a file may ask for
    "server.enableXsrfProtection": True,
    # static/ holds only the local 3Dmol.js, so browsers cache it instead of receiving it
    # inlined with every rerun.
    "server.enableStaticServing": True,
    # The app's code does not change while it runs; polling would cost CPU.
    "server.fileWatcherType": "none",
    # Errors show as one-line messages written by the app; never tracebacks in the page.
    "client.showErrorDetails": "none",
    "client.toolbarMode": "minimal",
    "browser.gatherUsageStats": False,
    # Keep the session usable when a rerun is interrupted by a new widget change.
    "runner.fastReruns": True,
}

_ENTRY = '''"""Written by `lprviz app` at each start: runs the app installed with lprviz."""

from lprviz.app.entry import main

main()
'''


def prepare_run_dir(root: Path | None = None) -> Path:
    """Write the entry script and ``static/`` folder the server runs from; return the script.

    Parameters
    ----------
    root : pathlib.Path, optional
        Folder to use (default: ``<lprviz cache>/app``).
    """
    from lprviz.datasets import cache_dir

    root = Path(root) if root is not None else cache_dir() / "app"
    (root / "static").mkdir(parents=True, exist_ok=True)
    script = root / "lprviz_app.py"
    if not script.is_file() or script.read_text() != _ENTRY:
        part = root / f".lprviz_app.{os.getpid()}.part"
        part.write_text(_ENTRY)
        os.replace(part, script)
    return script


def flags(options: dict[str, object]) -> list[str]:
    """``--name value`` command-line flags of Streamlit settings."""
    out: list[str] = []
    for name, value in options.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        out += [f"--{name}", text]
    return out


def check_listen(address: str, port: int) -> None:
    """Refuse, in one line, an address that does not resolve or where nothing can listen,
    or a port already in use there (Streamlit would print a traceback or a log line and
    exit 1).

    Every address ``address`` resolves to is tried, as the server binds them (``localhost``
    is ``127.0.0.1`` and ``::1``); one that cannot be bound (IPv6 turned off) is skipped
    while another can.

    Parameters
    ----------
    address : str
        Host name or IP address to listen on.
    port : int
        TCP port.

    Raises
    ------
    lprviz.InputError
    """
    import errno
    import socket

    from lprviz.errors import InputError

    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"--address {address}: not an address of this machine ({exc})") from None
    problem = None
    for family, kind, proto, _, where in infos:
        with socket.socket(family, kind, proto) as sock:
            if os.name != "nt":  # as the server binds: a port in TIME_WAIT is free to use
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(where)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise InputError(f"--port {port}: already in use on {address} (another "
                                     "server may be running); choose another port") from None
                problem = exc
                continue
        return
    raise InputError(f"--address {address}: cannot listen there "
                     f"({getattr(problem, 'strerror', None) or problem})")


def serve(*, address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT,
          threedmol_js: str | None = None, fetch_3dmol: bool = True) -> int:
    """Run the app's server in this process until it is stopped; return an exit status.

    Parameters
    ----------
    address, port : str, int
        Where to listen (default: this machine only).
    threedmol_js : str, optional
        A local ``3Dmol-min.js`` (else ``$LPRVIZ_3DMOL_JS``, else the user cache).
    fetch_3dmol : bool
        With no local 3Dmol.js yet, fetch it once into the user cache (npm).
    """
    from streamlit.web import cli as streamlit_cli

    check_listen(address, port)
    if threedmol_js:
        os.environ[threedmol.JS_ENV] = str(Path(threedmol_js).resolve())
    path, problem = threedmol.ensure(allow_fetch=fetch_3dmol)
    if problem:
        print(f"lprviz: {problem}", file=sys.stderr)
    elif threedmol.JS_ENV not in os.environ:
        # the app (this process and its sessions) uses exactly this copy
        os.environ[threedmol.JS_ENV] = str(path)
    script = prepare_run_dir()
    if path is not None:  # served from the first request on (the pages publish it too)
        threedmol.publish(path, script.parent / "static")
    options = {**SERVER_OPTIONS, "server.address": address, "server.port": port}
    argv = ["run", str(script), *flags(options)]
    # Streamlit's own command, in process: its signal handlers stop the server on SIGTERM.
    result = streamlit_cli.main(args=argv, prog_name="streamlit", standalone_mode=False)
    return int(result or 0)
