"""The dashboard benchmark: how long a History view takes to draw, and how many bytes it costs.

    .venv/bin/python bench/dashboard.py                      # a year of demo data, kept in /tmp/roost-bench-dashboard
    .venv/bin/python bench/dashboard.py --runs 3 --screenshots docs/img

A store holding a year of the demo house (3 rooms x temperature, humidity, pressure, plus the energy meter: the
History view draws 3 charts x 3 rooms and the power chart) is written once through the store's bulk API and
kept for later runs. A `roost run` hub serves it on a free port; headless Chromium opens `/#history?range=7d`
and `/#history?range=1y` in a fresh browser context each run (cold cache), and reports, from the page's own
Performance API:

- lines drawn: navigation start to `performance.mark("roost:history-lines")`, when every chart has its lines;
- bands drawn: to `roost:history-bands`, when the min/max bands of the 30-day and 1-year views are in too;
- bytes: transferSize of the document and every resource (`performance.getEntriesByType("resource")`).

Medians of `--runs` runs after one warm-up, next to the targets (7 d <= 300 ms, 1 y <= 500 ms, < 500 kB), with
the machine's load average before and after (the figures mean little on a busy machine).
With --screenshots DIR it also saves overview.png, history-7d.png and things.png for docs/dashboard.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from peers import Peer, free_port  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
DAY_MS = 86_400_000
TARGETS = {"7d": 300.0, "1y": 500.0}
BYTES_TARGET = 500_000


def ensure_store(data: Path, days: int) -> None:
    from roost import demo
    from roost.errors import RoostError
    from roost.model import now_ms
    from roost.store import Store

    if data.exists():
        try:
            with Store.open(data) as store:
                latest = store.latest()
            if latest and min(ts for ts, _v in latest.values()) > now_ms() - 2 * DAY_MS:
                return
        except (RoostError, sqlite3.Error) as exc:  # an old store format: write it again
            print(f"rewriting {data}: {exc}")
        shutil.rmtree(data)
    print(f"writing {days} days of the demo house into {data} …", flush=True)
    started = time.monotonic()
    store = Store.open(data, writer=True)
    try:
        written = demo.backfill(store, demo.House(), days * DAY_MS, now_ms())
    finally:
        store.close()
    print(f"  {written:,} samples in {time.monotonic() - started:.0f} s", flush=True)


def start_hub(data: Path, command: str) -> Peer:
    """`roost run` (or `roost demo` with a week of history) on `data`, its log beside the store."""
    port = free_port()
    args = [sys.executable, "-m", "roost", command, "--data", str(data), "--listen", f"127.0.0.1:{port}"]
    if command == "demo":
        args += ["--backfill", "7d"]
    return Peer(args, port, data.parent / f"{data.name}.hub.log", "/healthz", name=f"the hub on {data}", timeout=120,
                env={"PYTHONPATH": str(ROOT / "src")})


MEASURE = """() => {
    const mark = name => performance.getEntriesByName(name)[0]?.startTime ?? null;
    const nav = performance.getEntriesByType("navigation")[0];
    const resources = performance.getEntriesByType("resource");
    return {
        lines: mark("roost:history-lines"), bands: mark("roost:history-bands"),
        bytes: nav.transferSize + resources.reduce((n, r) => n + r.transferSize, 0),
        requests: 1 + resources.length,
    };
}"""


def measure(browser, url: str, view: str) -> dict:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{url}/#history?range={view}")
    page.wait_for_selector("#history[data-state=drawn]", timeout=60_000)
    result = page.evaluate(MEASURE)
    context.close()
    return result


def screenshots(browser, url: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(f"{url}/")
    page.wait_for_selector('#tiles dd[data-today][data-value]:not([data-value=""])', timeout=30_000)
    page.screenshot(path=str(out / "overview.png"))
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{url}/#history?range=7d")
    page.wait_for_selector("#history[data-state=drawn]", timeout=30_000)
    page.mouse.move(760, 330)  # a hover shows values in the legends
    page.screenshot(path=str(out / "history-7d.png"))
    page.goto(f"{url}/#things")
    page.wait_for_selector("#things-list[data-state=ready] [data-thing=lounge-lamp]", timeout=30_000)
    page.get_by_role("switch", name="Lounge Lamp On").click()  # a lamp that is on shows both controls at work
    page.wait_for_selector('[data-thing=lounge-lamp] [data-property=on][data-value="true"]:not([aria-busy])')
    page.mouse.move(0, 0)
    page.screenshot(path=str(out / "things.png"), full_page=True)
    page.close()
    print(f"screenshots: {out / 'overview.png'}, {out / 'history-7d.png'}, {out / 'things.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/roost-bench-dashboard"), help="year store (kept)")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--screenshots", type=Path, metavar="DIR", help="save overview.png and history-7d.png here")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium (make peers)")
    ensure_store(args.data, args.days)
    load_before = os.getloadavg()
    hub = start_hub(args.data, "run")
    url = hub.url
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            rows = []
            for view in ("7d", "1y"):
                measure(browser, url, view)  # warm-up: the hub's page cache, Chromium's first start
                runs = [measure(browser, url, view) for _ in range(args.runs)]
                lines = statistics.median(r["lines"] for r in runs)
                bands = [r["bands"] for r in runs if r["bands"] is not None]
                band = statistics.median(bands) if bands else None
                size = statistics.median(r["bytes"] for r in runs)
                rows.append((view, lines, band, size, runs[0]["requests"]))
                each = ", ".join(f"{r['lines']:.0f}" for r in runs)
                band_text = "-" if band is None else f"{band:.0f} ms"
                print(f"{view}: lines drawn {lines:.0f} ms, bands {band_text}, "
                      f"{size / 1000:.0f} kB in {runs[0]['requests']} requests (runs: {each} ms)", flush=True)
            hub.stop()
            load_after = os.getloadavg()
            if args.screenshots:
                # The pictures show what `make demo` shows: a fresh demo house with a week of history.
                with tempfile.TemporaryDirectory(prefix="roost-shots-") as tmp:
                    hub = start_hub(Path(tmp) / "data", "demo")
                    screenshots(browser, hub.url, args.screenshots)
                    hub.stop()
            browser.close()
    finally:
        hub.stop()

    print(f"\nHistory view, {args.days} days of the demo house in the store, median of {args.runs} cold loads, "
          f"{os.cpu_count()} CPUs, load average {load_before[0]:.1f} before and {load_after[0]:.1f} after")
    print(f"{'view':<5} {'lines drawn':>12} {'target':>8} {'bands drawn':>12} {'bytes':>9} {'target':>9} {'requests':>9}")
    for view, lines, band, size, requests in rows:
        band_text = "-" if band is None else f"{band:.0f} ms"
        print(f"{view:<5} {lines:>9.0f} ms {TARGETS[view]:>5.0f} ms {band_text:>12} "
              f"{size / 1000:>6.0f} kB {BYTES_TARGET / 1000:>6.0f} kB {requests:>9}")


if __name__ == "__main__":
    main()
