"""What the server gives back when sessions close: RSS and upload folder, measured.

Starts the app (``load_app.Server``), warms it with one session on the default dataset, then
has ``--sessions`` browser sessions each upload its own copy of emt-alloys (atoms rattled
differently, so nothing is shared between them) and draw it on Explore. The sessions close;
past Streamlit's reconnection window the app's background prune deletes the closed sessions'
uploads and releases their cached datasets, descriptors and fits. Prints
server RSS and upload-folder bytes at each stage.

Usage: ``LPRVIZ_3DMOL_JS=.cache/3dmol/3Dmol-min.js PYTHONPATH=. python
benchmarks/sessions_memory.py --sessions 4`` (the viewer needs a local 3Dmol.js offline).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from load_app import CHROMIUM, CHROMIUM_ARGS, Server, rss_bytes  # noqa: E402

from lprviz.app.common import PRUNE_SECONDS, reconnect_grace  # noqa: E402
from tests.browser.test_app_browser import _settled_canvas  # noqa: E402


def variant(seed: int) -> bytes:
    """emt-alloys with every position rattled by 0.01 A (seeded): a distinct dataset."""
    import ase.io

    from lprviz import datasets

    frames = [a.copy() for a in datasets.load("emt-alloys").frames]
    for k, atoms in enumerate(frames):
        atoms.rattle(0.01, seed=1000 * seed + k)
        atoms.calc = None
        atoms.info["energy"] = float(k)  # any label will do: only the LPR is measured
    buf = io.StringIO()
    ase.io.write(buf, frames, format="extxyz")
    return buf.getvalue().encode()


def upload_bytes(started: float) -> int:
    """Bytes in the upload folders made by this server (created after ``started``)."""
    import tempfile

    total = 0
    for root in Path(tempfile.gettempdir()).glob("lprviz-uploads-*"):
        if root.stat().st_mtime >= started - 1:
            total += sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=4)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    mib = 1 << 20
    files = {f"session{i}.xyz": variant(i) for i in range(args.sessions)}
    started = time.time()
    with Server(ROOT / "artifacts" / "sessions-server.log") as srv, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

        def visit(name: str | None = None):
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = ctx.new_page()
            page.goto(srv.url, wait_until="domcontentloaded")
            if name is not None:
                _settled_canvas(page)
                page.locator("input[type=file]").first.set_input_files(files=[{
                    "name": name, "mimeType": "text/plain", "buffer": files[name]}])
                page.get_by_text(f"{name}: ", exact=False).first.wait_for(timeout=600_000)
            _settled_canvas(page)
            return ctx

        visit().close()
        time.sleep(3)
        rows = [("warm server, default dataset", rss_bytes(srv.proc.pid), upload_bytes(started))]
        contexts = [visit(name) for name in files]
        time.sleep(3)
        rows.append((f"{args.sessions} sessions open, each with its upload drawn",
                     rss_bytes(srv.proc.pid), upload_bytes(started)))
        for ctx in contexts:
            ctx.close()
        time.sleep(5)
        rows.append(("sessions closed (may still reconnect)", rss_bytes(srv.proc.pid),
                     upload_bytes(started)))
        # Past the reconnection window (Streamlit drops the sessions' state then too) plus
        # one interval of the app's background prune.
        time.sleep(reconnect_grace() + PRUNE_SECONDS + 10)
        rows.append(("3 min later (pruned in the background)", rss_bytes(srv.proc.pid),
                     upload_bytes(started)))
        browser.close()
    print("| stage | server RSS | upload folder |")
    print("|---|---|---|")
    for stage, rss, up in rows:
        print(f"| {stage} | {rss / mib:.0f} MiB | {up / mib:.1f} MiB |")


if __name__ == "__main__":
    main()
