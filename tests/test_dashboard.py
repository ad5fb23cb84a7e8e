"""The web dashboard in headless Chromium (Playwright) against a real `roost demo`, and its live stream."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from conftest import ROOT, HubProcess, hub_settings

from roost.hub import Hub
from roost.model import Reading, Series, now_ms

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
UPLOT = ROOT / "src/roost/web/node_modules/uplot/dist/uPlot.iife.min.js"

browser_only = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing: apt-get install chromium (make peers)")


# ------------------------------------------------------------------ the live stream, in process


async def _events(response: aiohttp.ClientResponse):
    """(event, data) pairs of a Server-Sent Events response."""
    import orjson

    name, data = "message", b""
    async for line in response.content:
        line = line.rstrip(b"\n")
        if not line:
            if data:
                yield name, orjson.loads(data)
            name, data = "message", b""
        elif line.startswith(b"event: "):
            name = line[7:].decode()
        elif line.startswith(b"data: "):
            data += line[6:]


async def test_live_stream_sends_a_snapshot_then_each_stored_reading(tmp_path):
    lounge = Series.of("temperature_celsius", room="lounge")
    async with Hub(hub_settings(tmp_path / "data")) as hub:
        await hub.ingest([Reading(lounge, now_ms() - 1000, 20.5)])
        async with aiohttp.ClientSession() as http, http.get(f"{hub.url}/api/live?match=temperature_celsius") as resp:
            assert resp.headers["Content-Type"] == "text/event-stream"
            events = _events(resp)
            name, snapshot = await anext(events)
            assert name == "snapshot" and [r["value"] for r in snapshot] == [20.5]
            await hub.ingest([Reading(lounge, now_ms(), 21.25), Reading(Series.of("power_watts", meter="main"), now_ms(), 300.0)])
            name, readings = await asyncio.wait_for(anext(events), 5)
            assert name == "readings"
            assert readings == [{"series": str(lounge), "metric": "temperature_celsius", "labels": {"room": "lounge"},
                                 "ts": readings[0]["ts"], "value": 21.25}]  # power_watts is not matched


async def test_an_open_live_stream_does_not_hold_up_the_hub_stopping(tmp_path):
    async with aiohttp.ClientSession() as http:
        hub = Hub(hub_settings(tmp_path / "data"))
        await hub.__aenter__()
        resp = await http.get(f"{hub.url}/api/live")
        await anext(_events(resp))
        assert len([s for s in hub.bus.subscribers if s.name == "live"]) == 1
        started = time.monotonic()
        await hub.__aexit__(None, None, None)
        assert time.monotonic() - started < 5
        resp.close()


async def test_assets_are_limited_to_the_dashboard_files(http):
    async with http.get("/assets/dashboard.js") as resp:
        assert resp.status == 200 and resp.content_type == "text/javascript"
    for path in ("/assets/__init__.py", "/assets/package.json", "/assets/uplot/package.json", "/assets/..%2F..%2Fhub.py"):
        async with http.get(path) as resp:
            assert resp.status == 404, path


# ------------------------------------------------------------------ the page, in Chromium


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    hub = HubProcess(tmp_path_factory.mktemp("dashboard") / "data", "--backfill", "7d", command="demo")
    yield hub
    hub.kill(15)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing: apt-get install chromium (make peers)")
    assert UPLOT.exists(), f"{UPLOT} is missing: run `make venv` (npm ci --prefix src/roost/web)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """A fresh page that records console errors and uncaught exceptions, and requests leaving the hub."""

    def __init__(self, browser, base: str, width: int = 1280, height: int = 900):
        self.base = base
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: r.url.startswith(base) or r.url.startswith("data:") or self.foreign.append(r.url))

    def open(self, fragment: str = ""):
        self.page.goto(f"{self.base}/{fragment}")
        return self.page

    def history(self, fragment: str):
        page = self.open(fragment) if fragment else self.page
        page.wait_for_selector("#history[data-state=drawn]", timeout=30_000)
        return page

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.page.close()
        assert self.errors == [], f"console errors: {self.errors}"
        assert self.foreign == [], f"requests beyond the hub: {self.foreign}"


@pytest.fixture
def page(browser, demo):
    p = Page(browser, demo.url)
    yield p
    p.close()


def _chart(page, metric: str) -> dict:
    """What the uPlot instance of a chart draws: its line labels and how many values each line has."""
    return page.evaluate(
        """metric => {
            const u = window.roost.history.charts.get(metric);
            const fig = document.querySelector(`figure[data-metric="${metric}"]`);
            const lines = Number(fig.dataset.lines);
            return {
                labels: u.series.slice(1, lines + 1).map(s => s.label),
                values: u.data.slice(1, lines + 1).map(ys => ys.filter(y => y != null).length),
                points: u.data[0].length, step: Number(fig.dataset.step), bands: u.bands.length,
            };
        }""",
        metric,
    )


@browser_only
def test_overview_has_a_tile_per_room_and_one_for_energy_with_units(page):
    p = page.open()
    p.wait_for_selector('#tiles [data-meter] dd[data-today][data-value]:not([data-value=""])', timeout=30_000)
    rooms = p.eval_on_selector_all("#tiles article[data-room]", "els => els.map(e => e.dataset.room)")
    assert rooms == ["bedroom", "entry", "lounge"]
    for room in rooms:
        for metric, unit in (("temperature_celsius", "°C"), ("humidity_percent", "%"), ("pressure_hpa", "hPa")):
            cell = p.locator(f'dd[data-series=\'{metric}{{room="{room}"}}\']')
            assert cell.text_content().endswith(unit) and cell.get_attribute("data-value")
    power = p.locator('dd[data-series=\'power_watts{meter="main"}\']').text_content()
    today = float(p.locator("dd[data-today]").get_attribute("data-value"))
    assert power.endswith("W") and 0 < today < 50  # the demo house uses ~10 kWh a day
    page.screenshot("overview")


@browser_only
def test_a_tile_shows_a_new_reading_without_reloading(page, demo):
    p = page.open()
    cell = p.locator('dd[data-series=\'temperature_celsius{room="lounge"}\']')
    cell.wait_for()
    p.evaluate("window.notReloaded = true")
    body = b"temperature_celsius,room=lounge value=31.5"
    urllib.request.urlopen(urllib.request.Request(f"{demo.url}/write", data=body, method="POST"), timeout=5)
    p.wait_for_function(
        """() => document.querySelector('dd[data-series=\\'temperature_celsius{room="lounge"}\\']').dataset.value === "31.5" """,
        timeout=10_000,
    )
    assert cell.text_content() == "31.5\u00a0°C"
    assert p.evaluate("window.notReloaded") is True
    assert p.get_attribute("#tiles", "aria-live") is None and cell.evaluate("e => e.closest('[aria-live]').getAttribute('aria-live')") == "polite"


@browser_only
def test_the_7_day_temperature_chart_has_a_line_per_room(page):
    p = page.history("#history?range=7d")
    chart = _chart(p, "temperature_celsius")
    assert chart["labels"] == ["Bedroom", "Entry", "Lounge"]
    assert chart["step"] == 30 * 60_000 and 300 <= chart["points"] <= 1000
    assert all(n >= 330 for n in chart["values"])  # 7 days of 30-minute buckets, no gaps
    assert chart["bands"] == 0
    assert p.eval_on_selector_all("figure.chart", "fs => fs.map(f => f.dataset.metric)") == [
        "temperature_celsius", "humidity_percent", "pressure_hpa", "power_watts",
    ]
    assert _chart(p, "power_watts")["labels"] == ["Main"]
    page.screenshot("history-7d")


@browser_only
def test_range_presets_redraw_at_their_steps_and_a_year_comes_with_min_max_bands(page):
    p = page.history("#history?range=7d")
    expected = {"24h": 5 * 60_000, "30d": 2 * 3600_000, "1y": 86_400_000}
    for preset, step in expected.items():
        p.click(f'button[data-preset="{preset}"]')
        p.wait_for_function(
            "step => document.querySelector('figure[data-metric=temperature_celsius]').dataset.step == step "
            "&& document.querySelector('#history').dataset.state === 'drawn'",
            arg=step,
        )
        assert p.get_attribute(f'button[data-preset="{preset}"]', "aria-pressed") == "true"
        chart = _chart(p, "temperature_celsius")
        assert 280 <= chart["points"] <= 1000, (preset, chart["points"])
    year = _chart(p, "temperature_celsius")
    assert all(n >= 7 for n in year["values"])  # 7–8 daily buckets, from the hourly rollups
    assert year["bands"] == 3
    page.screenshot("history-1y")


@browser_only
def test_dragging_across_a_chart_zooms_in_at_a_finer_step_and_reset_goes_back(page):
    p = page.history("#history?range=7d")
    box = p.locator('figure[data-metric="temperature_celsius"] .u-over').bounding_box()
    y = box["y"] + box["height"] / 2
    p.mouse.move(box["x"] + box["width"] * 0.4, y)
    p.mouse.down()
    p.mouse.move(box["x"] + box["width"] * 0.55, y, steps=5)
    p.mouse.up()
    p.wait_for_function("() => location.hash.includes('zoom=1') && document.querySelector('#history').dataset.state === 'drawn'")
    zoomed = _chart(p, "temperature_celsius")
    assert zoomed["step"] < 30 * 60_000 and zoomed["labels"] == ["Bedroom", "Entry", "Lounge"]
    assert all(n > 100 for n in zoomed["values"])
    p.click("#reset-zoom")
    p.wait_for_function("() => location.hash === '#history?range=7d' && document.querySelector('#history').dataset.state === 'drawn'")
    assert _chart(p, "temperature_celsius")["step"] == 30 * 60_000


@browser_only
def test_a_custom_range_from_the_date_inputs(page):
    p = page.history("#history?range=7d")
    p.fill("#range-from", p.evaluate("new Date(Date.now() - 3 * 86400000).toLocaleDateString('sv')"))
    p.fill("#range-to", p.evaluate("new Date(Date.now() - 2 * 86400000).toLocaleDateString('sv')"))
    p.get_by_role("button", name="Show").click()
    p.wait_for_function("() => location.hash.includes('start=') && document.querySelector('#history').dataset.state === 'drawn'")
    chart = _chart(p, "humidity_percent")
    assert chart["step"] == 5 * 60_000 and all(n >= 500 for n in chart["values"])  # two whole days of 5-minute buckets


@browser_only
def test_at_phone_width_tiles_stack_and_charts_fit(browser, demo):
    phone = Page(browser, demo.url, width=390, height=844)
    p = phone.open()
    p.wait_for_selector("#tiles article dd[data-value]")
    lefts = p.eval_on_selector_all("#tiles article", "els => els.map(e => Math.round(e.getBoundingClientRect().left))")
    assert len(set(lefts)) == 1 and len(lefts) == 4
    phone.screenshot("overview-phone")
    phone.history("#history?range=7d")
    widths = p.eval_on_selector_all(".chart canvas", "cs => cs.map(c => c.getBoundingClientRect().right)")
    assert widths and max(widths) <= 390
    assert p.evaluate("document.documentElement.scrollWidth") <= 390
    phone.screenshot("history-7d-phone")
    phone.close()


@browser_only
def test_keyboard_users_reach_every_control_with_a_visible_focus(page):
    p = page.history("#history?range=7d")
    p.keyboard.press("Tab")
    assert p.evaluate("document.activeElement.textContent") == "Skip to content"
    names = []
    while "Show" not in names and len(names) < 30:  # a date input takes a Tab per field
        p.keyboard.press("Tab")
        names.append(p.evaluate("(document.activeElement.getAttribute('aria-label') || document.activeElement.textContent || '').trim()"))
        focused = p.evaluate("document.activeElement.outerHTML.slice(0, 120)")
        assert p.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none", focused
    assert {"Overview", "History", "Last 24 hours", "Last year", "Show"} <= set(names)
    for landmark in ("banner", "navigation", "main"):
        assert p.get_by_role(landmark).count() >= 1
    assert p.get_by_label("From", exact=True).count() == 1 and p.get_by_label("To", exact=True).count() == 1
