"""Load test of the app: N independent browser sessions at once against one server.

Starts ``streamlit run app.py`` on 127.0.0.1 (free port), opens ``--sessions`` Playwright
contexts in Debian's Chromium, and has each do ``--interactions`` steps on the Explore page:
mostly moving the alpha slider one notch (up or down), every tenth step switching the
dataset. Each session starts from its own alpha and dataset and after every step checks
that the page caption shows *its* dataset and *its* alpha (no cross-session leakage) and
that no error (``stException`` / ``st.error``) is on the page. Prints p50/p95 latency per
interaction, errors, leaks and the server's peak RSS. Bounded in steps and wall time.

Usage: ``python benchmarks/load_app.py --sessions 8 --interactions 50``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
DATASETS = ("emt-alloys", "teaching-stoichiometry")
STEP = 0.25  # the alpha slider's step in log10
LOG10_RANGE = (-8.0, 2.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (psutil if available, else /proc)."""
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Server:
    """``streamlit run app.py`` on 127.0.0.1 with an RSS sampler; a context manager."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.samples: list[int] = []
        self._stop = threading.Event()

    def __enter__(self) -> Server:
        self._log = open(self.log, "w")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
             "--server.port", str(self.port), "--server.address", "127.0.0.1",
             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        deadline = time.time() + 90
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited early; see {self.log}")
            try:
                urllib.request.urlopen(self.url + "/_stcore/health", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("streamlit did not start within 90 s") from None
                time.sleep(0.5)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(rss_bytes(self.proc.pid))
            except OSError:
                return
            self._stop.wait(0.5)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def _fmt_alpha(log10: float) -> str:
    return f"{10 ** log10:.3g}"


async def _caption(page) -> tuple[str, str]:
    """(dataset label, alpha text) of the Explore caption."""
    text = await page.get_by_text("alpha =", exact=False).first.inner_text(timeout=60_000)
    label = text.split(":")[0].strip().strip("*")
    alpha = text.split("alpha =")[1].split(";")[0].strip()
    return label, alpha


async def _errors(page) -> list[str]:
    out = []
    for sel in ('[data-testid="stException"]', '[data-testid="stAlertContentError"]'):
        loc = page.locator(sel)
        for i in range(await loc.count()):
            out.append((await loc.nth(i).inner_text())[:200])
    return out


async def _wait_for(page, label: str, alpha: str, deadline: float) -> None:
    while True:
        try:
            got = await _caption(page)
        except Exception:  # noqa: BLE001 - the caption is re-rendered while we read it
            got = None
        if got == (label, alpha):
            return
        if time.time() > deadline:
            raise TimeoutError(f"expected ({label}, alpha = {alpha}), page shows {got}")
        await page.wait_for_timeout(100)


async def session(browser, url: str, index: int, n_steps: int, stop_at: float,
                  stats: dict) -> None:
    """One user: own dataset and alpha; checks its own values after every step."""
    from playwright.async_api import Error as PlaywrightError

    ctx = await browser.new_context(viewport={"width": 1300, "height": 900})
    page = await ctx.new_page()
    page.set_default_timeout(120_000)  # a loaded 2-core server re-renders slowly
    ds = DATASETS[index % len(DATASETS)]
    log10 = -6.0 + 0.5 * (index % 9)
    await page.goto(f"{url}/?dataset={ds}&alpha={_fmt_alpha(log10)}",
                    wait_until="domcontentloaded")
    await _wait_for(page, ds, _fmt_alpha(log10), time.time() + 600)
    slider = page.get_by_role("slider").first
    direction = 1
    for step in range(n_steps):
        if time.time() > stop_at:
            stats["timeouts"] += 1
            break
        t0 = time.perf_counter()
        try:
            if step % 10 == 9:
                ds = DATASETS[(DATASETS.index(ds) + 1) % len(DATASETS)]
                box = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first
                await box.click()
                await page.get_by_role("option", name=ds, exact=True).click()
            else:
                if not LOG10_RANGE[0] < log10 + direction * STEP < LOG10_RANGE[1]:
                    direction = -direction
                await slider.focus()
                await slider.press("ArrowRight" if direction > 0 else "ArrowLeft")
                log10 += direction * STEP
                direction = -direction if step % 4 == 3 else direction
            await _wait_for(page, ds, _fmt_alpha(log10), time.time() + 300)
        except PlaywrightError as exc:
            stats["timeouts"] += 1
            stats["messages"].append(f"session {index} step {step}: {str(exc).splitlines()[0]}")
            break
        except TimeoutError as exc:
            got = re.findall(r"page shows (.*)", str(exc))
            stats["leaks" if got and got[0] != "None" else "timeouts"] += 1
            stats["messages"].append(f"session {index} step {step}: {exc}")
            break
        stats["latency"].append(time.perf_counter() - t0)
        errs = await _errors(page)
        if errs:
            stats["errors"] += 1
            stats["messages"].append(f"session {index} step {step}: {errs[0]}")
        stats["steps"] += 1
    await ctx.close()


async def run(sessions: int, interactions: int, max_seconds: float, url: str) -> dict:
    from playwright.async_api import async_playwright

    stats = {"latency": [], "errors": 0, "leaks": 0, "timeouts": 0, "steps": 0, "messages": []}
    stop_at = time.time() + max_seconds
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # warm the server's caches with one session first (first featurisation)
            await session(browser, url, 0, 1, stop_at, {**stats, "latency": [],
                                                        "messages": []})
            await asyncio.gather(*[session(browser, url, i, interactions, stop_at, stats)
                                   for i in range(sessions)])
        finally:
            await browser.close()
    return stats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--interactions", type=int, default=50)
    parser.add_argument("--max-seconds", type=float, default=1800,
                        help="wall-time bound of the whole run (default 1800)")
    parser.add_argument("--log", default=str(ROOT / "artifacts" / "load-server.log"))
    args = parser.parse_args(argv)
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with Server(Path(args.log)) as server:
        rss0 = rss_bytes(server.proc.pid)
        stats = asyncio.run(run(args.sessions, args.interactions, args.max_seconds, server.url))
        samples = server.samples or [rss0]
    import numpy as np

    lat = np.array(stats["latency"]) * 1000
    print(f"sessions {args.sessions} x interactions {args.interactions}: "
          f"{stats['steps']} steps done in {time.time() - t0:.0f} s")
    if lat.size:
        print(f"latency per interaction: p50 {np.percentile(lat, 50):.0f} ms, "
              f"p95 {np.percentile(lat, 95):.0f} ms, max {lat.max():.0f} ms")
    print(f"errors on page: {stats['errors']}; cross-session leaks: {stats['leaks']}; "
          f"timeouts: {stats['timeouts']}")
    print(f"server RSS: start {rss0 / 2**20:.0f} MiB, peak {max(samples) / 2**20:.0f} MiB, "
          f"end {samples[-1] / 2**20:.0f} MiB")
    for msg in stats["messages"][:10]:
        print("  ", msg)
    ok = (stats["errors"] == 0 and stats["leaks"] == 0 and stats["timeouts"] == 0
          and stats["steps"] == args.sessions * args.interactions)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
