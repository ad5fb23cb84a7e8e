"""The web dashboard in headless Chromium (Playwright) against a real `roost demo`, and its live stream."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import time
import urllib.error
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


async def test_assets_are_gzipped_and_an_unchanged_one_costs_a_304(http):
    source = (ROOT / "src/roost/web/history.js").read_bytes()
    async with http.get("/assets/history.js", headers={"Accept-Encoding": "gzip"}, auto_decompress=False) as resp:
        assert resp.status == 200 and resp.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(await resp.read()) == source
        etag = resp.headers["ETag"]
        assert resp.headers["Cache-Control"] == "no-cache"
    async with http.get("/assets/history.js", headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304 and await resp.read() == b""
    async with http.get("/assets/history.js", headers={"Accept-Encoding": "identity"}) as resp:
        assert "Content-Encoding" not in resp.headers and await resp.read() == source


async def test_the_page_offers_things_and_rules_only_when_the_hub_has_them(http):
    async with http.get("/") as resp:
        page = await resp.text()
    assert 'data-sections="things"' in page  # the Thing API is always there; this hub runs no rules


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


def _rooms(demo, metric: str = "") -> list[str]:
    """The rooms the demo house has (three, and the study when an MQTT broker answered), as the hub stores them."""
    with urllib.request.urlopen(f"{demo.url}/api/series", timeout=5) as resp:
        series = json.loads(resp.read())["series"]
    return sorted({s["labels"]["room"] for s in series if "room" in s["labels"] and s["metric"].startswith(metric)})


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
def test_overview_has_a_tile_per_room_and_one_for_energy_with_units(page, demo):
    p = page.open()
    p.wait_for_selector('#tiles [data-meter] dd[data-today][data-value]:not([data-value=""])', timeout=30_000)
    rooms = p.eval_on_selector_all("#tiles article[data-room]", "els => els.map(e => e.dataset.room)")
    assert rooms == _rooms(demo) and {"bedroom", "entry", "lounge"} <= set(rooms)
    for room in rooms:
        for metric, unit in (("temperature_celsius", "°C"), ("humidity_percent", "%"), ("pressure_hpa", "hPa")):
            cell = p.locator(f'article[data-room="{room}"] dd[data-series^="{metric}{{"]')
            assert cell.text_content().endswith(unit) and cell.get_attribute("data-value")
    power = p.locator('article[data-meter] dd[data-series^="power_watts{"]').text_content()
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
def test_the_7_day_temperature_chart_has_a_line_per_room(page, demo):
    p = page.history("#history?range=7d")
    chart = _chart(p, "temperature_celsius")
    assert chart["labels"] == [room.title() for room in _rooms(demo, "temperature_celsius")]
    assert chart["step"] == 30 * 60_000 and 300 <= chart["points"] <= 1000
    assert all(n >= 330 for n in chart["values"])  # 7 days of 30-minute buckets, no gaps
    assert chart["bands"] == 0
    assert p.eval_on_selector_all("figure.chart", "fs => fs.map(f => f.dataset.metric)") == [
        "temperature_celsius", "humidity_percent", "pressure_hpa", "power_watts",
    ]
    assert _chart(p, "power_watts")["labels"] == ["Main"]
    page.screenshot("history-7d")


@browser_only
def test_range_presets_redraw_at_their_steps_and_a_year_comes_with_min_max_bands(page, demo):
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
    assert year["bands"] == len(_rooms(demo, "temperature_celsius"))  # one per line
    page.screenshot("history-1y")


@browser_only
def test_dragging_across_a_chart_zooms_in_at_a_finer_step_and_reset_goes_back(page, demo):
    p = page.history("#history?range=7d")
    box = p.locator('figure[data-metric="temperature_celsius"] .u-over').bounding_box()
    y = box["y"] + box["height"] / 2
    p.mouse.move(box["x"] + box["width"] * 0.4, y)
    p.mouse.down()
    p.mouse.move(box["x"] + box["width"] * 0.55, y, steps=5)
    p.mouse.up()
    p.wait_for_function("() => location.hash.includes('zoom=1') && document.querySelector('#history').dataset.state === 'drawn'")
    zoomed = _chart(p, "temperature_celsius")
    assert zoomed["step"] < 30 * 60_000 and zoomed["labels"] == [room.title() for room in _rooms(demo, "temperature_celsius")]
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
    assert len(set(lefts)) == 1 and len(lefts) == len(_rooms(demo)) + 1  # and the meter
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


# ------------------------------------------------------------------ things and rules, in Chromium


def _api(demo, path: str, body: dict | None = None):
    """GET (or PUT `body` to) the hub's Web Thing API; (status, JSON answer)."""
    request = urllib.request.Request(f"{demo.url}{path}", method="PUT" if body is not None else "GET",
                                     data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _things(page):
    p = page.open("#things")
    p.wait_for_selector("#things-list[data-state=ready] [data-thing=lounge-lamp]", timeout=30_000)
    return p


def _prop(thing: str, name: str) -> str:
    return f'#things-list [data-thing="{thing}"] [data-property="{name}"]'


@browser_only
def test_things_show_their_types_and_values_with_units_lights_and_plugs_first(page, demo):
    p = _things(page)
    ids = p.eval_on_selector_all("#things-list article", "els => els.map(e => e.dataset.thing)")
    assert ids[:3] == ["kettle-plug", "lounge-lamp", "porch-light"]  # the ones with controls, by title
    assert {"lounge", "bedroom", "entry"} <= set(ids[3:])
    lamp = p.locator('[data-thing="lounge-lamp"]')
    assert lamp.locator("h2").text_content() == "Lounge Lamp"
    assert lamp.locator(".types").text_content() == "Light · On/off switch"
    p.wait_for_selector(f'{_prop("lounge", "temperature")}[data-value]:not([data-value=""])')
    temperature = p.locator(f'{_prop("lounge", "temperature")} .prop-value').text_content()
    assert temperature.endswith("\u00a0°C")
    status, values = _api(demo, "/things/lounge/properties")
    assert float(temperature.split("\u00a0")[0]) == pytest.approx(values["temperature"], abs=0.06)
    assert p.locator(f'{_prop("lounge", "humidity")} .prop-value').text_content().endswith("%")
    page.screenshot("things")


@browser_only
def test_a_read_only_property_is_text_without_a_control(page):
    p = _things(page)
    power = p.locator(_prop("kettle-plug", "power"))
    assert power.locator("button, input, select").count() == 0
    assert power.locator(".prop-value").text_content().endswith("\u00a0W")
    assert p.locator(_prop("lounge", "temperature")).locator("button, input, select").count() == 0


@browser_only
def test_switching_a_light_changes_its_state_as_the_api_reports_it(page, demo):
    assert _api(demo, "/things/lounge-lamp/properties/on", {"on": False})[0] == 200
    p = _things(page)
    switch = p.get_by_role("switch", name="Lounge Lamp On")
    p.wait_for_function(f"() => document.querySelector('{_prop('lounge-lamp', 'on')}').dataset.value === 'false'")
    assert switch.get_attribute("aria-checked") == "false"
    p.evaluate("window.notReloaded = true")

    switch.click()
    p.wait_for_function(f"() => !document.querySelector('{_prop('lounge-lamp', 'on')}').hasAttribute('aria-busy')")
    assert _api(demo, "/things/lounge-lamp/properties/on") == (200, {"on": True})
    assert switch.get_attribute("aria-checked") == "true"

    # Someone else (a rule, another phone, curl) switches it off: the page follows over the thing's WebSocket.
    assert _api(demo, "/things/lounge-lamp/properties/on", {"on": False}) == (200, {"on": False})
    p.wait_for_function(f"() => document.querySelector('{_prop('lounge-lamp', 'on')} [role=switch]').getAttribute('aria-checked') === 'false'",
                        timeout=10_000)
    assert p.evaluate("window.notReloaded") is True
    page.screenshot("things-switched")


@browser_only
def test_the_keyboard_switches_with_space_and_dims_with_the_arrow_keys(page, demo):
    assert _api(demo, "/things/porch-light/properties/on", {"on": False})[0] == 200
    assert _api(demo, "/things/lounge-lamp/properties/brightness", {"brightness": 50})[0] == 200
    p = _things(page)
    porch = p.get_by_role("switch", name="Porch Light On")
    p.wait_for_function(f"() => document.querySelector('{_prop('porch-light', 'on')}').dataset.value === 'false'")
    porch.focus()
    p.keyboard.press("Space")
    p.wait_for_function(f"() => document.querySelector('{_prop('porch-light', 'on')}').dataset.value === 'true'")
    assert _api(demo, "/things/porch-light/properties/on") == (200, {"on": True})
    assert p.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"

    slider = p.get_by_role("slider", name="Lounge Lamp Brightness")
    p.wait_for_function(f"() => document.querySelector('{_prop('lounge-lamp', 'brightness')}').dataset.value === '50'")
    slider.focus()
    p.keyboard.press("ArrowRight")
    p.keyboard.press("ArrowRight")
    p.wait_for_function(f"() => document.querySelector('{_prop('lounge-lamp', 'brightness')}').dataset.value === '52'")
    assert _api(demo, "/things/lounge-lamp/properties/brightness") == (200, {"brightness": 52})
    assert slider.get_attribute("aria-valuetext") == "52\u00a0%"


@browser_only
def test_dimming_with_the_slider_changes_brightness_in_the_api(page, demo):
    assert _api(demo, "/things/lounge-lamp/properties/brightness", {"brightness": 60})[0] == 200
    p = _things(page)
    slider = p.locator(f"{_prop('lounge-lamp', 'brightness')} input[type=range]")
    assert (slider.get_attribute("min"), slider.get_attribute("max")) == ("0", "100")  # from the Thing Description
    p.wait_for_function(f"() => document.querySelector('{_prop('lounge-lamp', 'brightness')}').dataset.value === '60'")
    box = slider.bounding_box()
    y = box["y"] + box["height"] / 2
    p.mouse.move(box["x"] + box["width"] * 0.6, y)
    p.mouse.down()
    p.mouse.move(box["x"] + box["width"] * 0.5, y, steps=4)
    p.mouse.move(box["x"] + 2, y, steps=4)  # all the way down: 0 %
    p.mouse.up()
    p.wait_for_function(f"() => document.querySelector('{_prop('lounge-lamp', 'brightness')}').dataset.value === '0'")
    assert _api(demo, "/things/lounge-lamp/properties/brightness") == (200, {"brightness": 0})
    assert p.locator(f"{_prop('lounge-lamp', 'brightness')} output").text_content() == "0\u00a0%"

    # ... and a fade run over the API moves the slider as the lamp reports each step.
    request = urllib.request.Request(f"{demo.url}/things/lounge-lamp/actions", method="POST",
                                     data=b'{"fade": {"input": {"brightness": 80, "duration": 300}}}')
    assert urllib.request.urlopen(request, timeout=5).status == 201
    p.wait_for_function(f"() => document.querySelector('{_prop('lounge-lamp', 'brightness')} input').value === '80'", timeout=10_000)


@browser_only
def test_a_write_the_hub_refuses_shows_its_message_next_to_the_control(page, demo):
    assert _api(demo, "/things/lounge-lamp/properties/brightness", {"brightness": 40})[0] == 200
    p = _things(page)
    row = _prop("lounge-lamp", "brightness")
    p.wait_for_function(f"() => document.querySelector('{row}').dataset.value === '40'")
    # A Thing Description the page read before the device changed: the slider offers more than the lamp takes.
    slider = p.locator(f"{row} input[type=range]")
    slider.evaluate("e => e.max = 150")
    slider.focus()
    p.keyboard.press("End")
    message = p.locator(f"{row} .msg")
    message.wait_for(state="visible")
    assert "150 is above the maximum 100" in message.text_content()
    assert message.get_attribute("aria-live") == "polite"
    assert slider.get_attribute("aria-invalid") == "true"
    assert message.get_attribute("id") in slider.get_attribute("aria-describedby")
    p.wait_for_function(f"() => document.querySelector('{row} input').value === '40'")  # what the lamp really has
    assert _api(demo, "/things/lounge-lamp/properties/brightness") == (200, {"brightness": 40})
    page.screenshot("things-refused")
    p.keyboard.press("Home")
    p.wait_for_function(f"() => document.querySelector('{row}').dataset.value === '0'")
    assert message.text_content() == "" and slider.get_attribute("aria-invalid") is None
    # Chromium logs every 4xx answer to the console; this one was asked for, any other still fails the test.
    refused = [e for e in page.errors if "status of 400 (Bad Request)" in e]
    assert len(refused) == 1
    page.errors.remove(refused[0])


@browser_only
def test_things_fit_a_phone(browser, demo):
    phone = Page(browser, demo.url, width=390, height=844)
    p = _things(phone)
    lefts = p.eval_on_selector_all("#things-list article", "els => els.map(e => Math.round(e.getBoundingClientRect().left))")
    assert len(set(lefts)) == 1 and len(lefts) >= 7
    assert p.evaluate("document.documentElement.scrollWidth") <= 390
    assert p.get_by_role("switch", name="Lounge Lamp On").bounding_box()["height"] >= 24  # a finger can hit it
    phone.screenshot("things-phone")
    phone.close()


# A rule of the demo (src/roost/demo/rules); rules are things of @type Rule (docs/rules.md).
RULES_CONFIG = """\
[rules]
directory = "rules"
"""


@pytest.fixture(scope="module")
def demo_with_rules(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard-rules")
    (root / "rules").mkdir()
    shutil.copy(ROOT / "src/roost/demo/rules/bonded.py", root / "rules")
    (root / "roost.toml").write_text(RULES_CONFIG)

    def missing(log: str) -> None:
        pytest.skip(f"the hub serves no rule things (is the rules engine there yet?): {log}")

    yield from _rules_demo(
        root, "1h", 20, missing,
        lambda things: any("Rule" in t["@type"] for t in things) and any(t["href"] == "/things/lounge-lamp" for t in things),
    )


def _rules_demo(root: Path, backfill: str, timeout: float, missing, ready):
    """`roost demo` on root's roost.toml and rules/, yielded once `ready(things)`; else `missing(the log's tail)`."""
    hub = HubProcess(root / "data", "-c", str(root / "roost.toml"), "--backfill", backfill, command="demo")
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _status, things = _api(hub, "/things")
            if ready(things):
                break
            time.sleep(0.2)
        else:
            missing(Path(hub.log.name).read_text()[-2000:])
        yield hub
    finally:
        hub.kill(15)


@browser_only
def test_rules_show_their_sentence_and_can_be_disabled_and_enabled(browser, demo_with_rules):
    demo = demo_with_rules
    page = Page(browser, demo.url)
    p = page.open("#rules")
    assert p.get_attribute("html", "data-sections") == "things rules"
    p.wait_for_selector("#rules-list[data-state=ready] [data-thing=rule-BondedLights]", timeout=30_000)
    rule = p.locator("[data-thing=rule-BondedLights]")
    assert rule.locator(".sentence").text_content() == "Lounge Lamp and Porch Light switch on and off together."
    last_run = rule.locator("[data-property=last_run] .prop-value")
    assert last_run.text_content() == "never"  # a fresh hub; nothing has switched a light yet
    enabled = p.get_by_role("switch", name="BondedLights Enabled")
    assert enabled.get_attribute("aria-checked") == "true"
    assert p.locator("#rules-list [data-thing=lounge-lamp]").count() == 0  # things are under Things
    page.screenshot("rules")

    enabled.click()
    p.wait_for_function("() => document.querySelector('[data-thing=rule-BondedLights] [data-property=enabled]').dataset.value === 'false'")
    assert _api(demo, "/things/rule-BondedLights/properties/enabled") == (200, {"enabled": False})
    enabled.click()
    p.wait_for_function("() => document.querySelector('[data-thing=rule-BondedLights] [data-property=enabled]').dataset.value === 'true'")
    assert _api(demo, "/things/rule-BondedLights/properties/enabled") == (200, {"enabled": True})

    # The rule at work, seen from the Things page: switch the lamp and the porch light follows.
    assert _api(demo, "/things/porch-light/properties/on", {"on": False})[0] == 200
    assert _api(demo, "/things/lounge-lamp/properties/on", {"on": False})[0] == 200
    p.click("nav a[data-section=things]")
    p.wait_for_selector("#things-list[data-state=ready] [data-thing=lounge-lamp]")
    assert p.locator("#things-list [data-thing=rule-BondedLights]").count() == 0  # rules are under Rules
    p.wait_for_function(f"() => document.querySelector('{_prop('porch-light', 'on')}').dataset.value === 'false'")
    p.get_by_role("switch", name="Lounge Lamp On").click()
    p.wait_for_function(f"() => document.querySelector('{_prop('porch-light', 'on')}').dataset.value === 'true'", timeout=10_000)
    assert _api(demo, "/things/porch-light/properties/on") == (200, {"on": True})
    p.click("nav a[data-section=rules]")
    p.wait_for_function("() => document.querySelector('[data-thing=rule-BondedLights] [data-property=last_run]').dataset.value.length > 4")
    assert last_run.text_content() != "never" and any(c.isdigit() for c in last_run.text_content())
    page.close()


# ------------------------------------------------------------------ backups (a hub with [backup], real restic)


@pytest.fixture
def backed_up_hub(tmp_path):
    if shutil.which("restic") is None:
        pytest.skip("restic is not installed (apt-get install restic; make peers)")
    from conftest import run_roost

    (tmp_path / "pw").write_text("correct horse battery staple\n")
    cfg = tmp_path / "roost.toml"
    cfg.write_text(f'[backup]\nrepository = "{tmp_path / "repo"}"\npassword_file = "pw"\nschedule = "03:30"\n'
                   "keep = { last = 5 }\n")
    run_roost("backup", "init", "-c", str(cfg), "--data", str(tmp_path / "data"))
    hub = HubProcess(tmp_path / "data", "-c", str(cfg))
    yield hub
    hub.kill(15)


def test_the_backups_section_shows_the_status_and_backs_up_now_through_restic(browser, backed_up_hub):
    p = Page(browser, backed_up_hub.url)
    page = p.open("#backups")
    page.wait_for_selector("#backups-list .backup")
    outcome = page.locator('[data-outcome] .prop-value')
    assert outcome.inner_text() == "no backup yet"
    assert "Snapshots (0)" in page.locator("#snapshots-title").inner_text()
    assert "3:30" in page.locator("#backups-list").inner_text()  # the next scheduled run (03:30 or 3:30 AM)
    page.get_by_role("button", name="Back up now").click()
    page.wait_for_selector('[data-outcome="ok"]', timeout=60_000)
    assert page.locator("#snapshots-title").inner_text() == "Snapshots (1)"
    assert page.locator(".snapshot-list li").count() == 1
    status = json.loads(urllib.request.urlopen(backed_up_hub.url + "/backups").read())
    assert status["status"]["last_error"] == 0 and status["status"]["size"] > 0
    assert status["snapshots"][0]["id"] in page.locator(".snapshot-list").inner_text()
    p.screenshot("backups")
    p.close()


# ------------------------------------------------------------------ rule previews (a hub with rules and stored readings)


PREVIEW_RULES = {
    "warm.py": '''
from roost.rules import Rule, Threshold


class WarmLounge(Rule):
    """When the lounge is above 21.5 °C for 30 minutes, turn on the Lounge Lamp for 20 minutes."""

    def register_triggers(self):
        return (Threshold('temperature_celsius{room="lounge"} > 21.5 for 30m'),)

    def action(self, trigger, series, value):
        self.Lounge_Lamp.on = True
        self.after("20m", self.off)

    def off(self):
        self.Lounge_Lamp.on = False
''',
    "broken.py": '''
from roost.rules import Rule, Threshold


class ColdEntry(Rule):
    """When the entry is below 30 °C, fail."""

    def register_triggers(self):
        return (Threshold('temperature_celsius{room="entry"} < 30'),)

    def action(self, trigger, series, value):
        raise RuntimeError(f"the entry is at {value}")
''',
}


@pytest.fixture(scope="module")
def previewed_hub(tmp_path_factory):
    """`roost demo` with two days of stored readings and two rules on them: one that acts, one that raises."""
    root = tmp_path_factory.mktemp("dashboard-preview")
    (root / "rules").mkdir()
    for name, source in PREVIEW_RULES.items():
        (root / "rules" / name).write_text(source)
    (root / "roost.toml").write_text(RULES_CONFIG)

    def missing(log: str) -> None:
        raise AssertionError(f"the hub serves no rule things: {log}")

    yield from _rules_demo(
        root, "2d", 30, missing,
        lambda things: {"/things/rule-WarmLounge", "/things/rule-ColdEntry"} <= {t["href"] for t in things},
    )


def _preview_rows(p) -> list[dict]:
    return p.eval_on_selector_all(
        "#rule-preview table.steps tbody tr",
        "rows => rows.map(r => ({kind: r.dataset.kind, at: r.dataset.at, cells: [...r.cells].map(c => c.textContent)}))")


def _open_preview(p, title: str, since: str | None = None) -> dict:
    """Click the rule's Preview (then a window), and return the JSON the page got from the hub for it."""
    button = p.get_by_role("button", name=f"Preview {title}") if since is None else \
        p.locator(f'#rule-preview button[data-since="{since}"]')
    with p.expect_response(lambda r: "/preview?since=" in r.url) as answer:
        button.click()
    p.wait_for_selector("#rule-preview[data-state=ready], #rule-preview[data-state=error]", timeout=60_000)
    return answer.value.json()


@browser_only
def test_a_rule_preview_lists_the_firings_the_api_answers_and_marks_them_on_its_input(browser, previewed_hub):
    hub = previewed_hub
    page = Page(browser, hub.url, height=1100)
    p = page.open("#rules")
    p.wait_for_selector("#rules-list[data-state=ready] [data-thing=rule-WarmLounge]", timeout=30_000)
    answer = _open_preview(p, "WarmLounge")
    assert p.get_attribute('#rule-preview button[data-since="7d"]', "aria-pressed") == "true"
    assert answer["steps"], f"the demo's lounge passes 21.5 °C every afternoon; the preview found nothing: {answer}"
    assert answer["inputs"] == [{"trigger": 'temperature_celsius{room="lounge"} > 21.5 for 30m',
                                 "selector": 'temperature_celsius{room="lounge"}', "op": ">", "limit": 21.5}]
    rows = _preview_rows(p)
    assert [(r["kind"], r["at"], r["cells"][1]) for r in rows] == [("step", s["at"], s["trigger"]) for s in answer["steps"]]
    assert all(s["sentence"].endswith(f": {r['cells'][2]}") for r, s in zip(rows, answer["steps"]))  # the cause is beside it
    assert p.locator("#rule-preview .sentence").text_content() == answer["sentence"]
    assert str(len(answer["steps"])) in p.locator("#rule-preview .status").text_content()

    # The input's chart: the lounge's readings, the limit, a mark per step (solid where the threshold caused it).
    figure = p.locator('#rule-preview figure[data-trigger]')
    assert figure.get_attribute("data-trigger") == answer["inputs"][0]["trigger"]
    assert figure.get_attribute("data-lines") == "1"
    assert int(figure.get_attribute("data-marks")) == len(answer["steps"])
    assert int(figure.get_attribute("data-caused")) == sum(s["trigger"] == answer["inputs"][0]["trigger"] for s in answer["steps"]) > 0
    assert p.locator("#rule-preview figure canvas").count() == 1
    page.screenshot("rules-preview")

    # Another window asks the hub again: 24 h has at most the 7-day firings of its last day.
    day = _open_preview(p, "WarmLounge", since="24h")
    assert p.get_attribute('#rule-preview button[data-since="24h"]', "aria-pressed") == "true"
    assert [r["at"] for r in _preview_rows(p)] == [s["at"] for s in day["steps"]]
    assert len(day["steps"]) <= len(answer["steps"])
    p.click("#rule-preview .preview-close")
    p.wait_for_selector("#rule-preview", state="hidden")
    page.close()


@browser_only
def test_an_open_rule_preview_is_in_the_page_address(browser, previewed_hub):
    page = Page(browser, previewed_hub.url)
    with page.page.expect_response(lambda r: "/api/rules/WarmLounge/preview?since=24h" in r.url) as asked:
        p = page.open("#rules?preview=WarmLounge&since=24h")  # a bookmark: the preview opens with the page
    p.wait_for_selector("#rule-preview[data-state=ready]", timeout=60_000)
    assert p.locator("#rule-preview-title").text_content() == "Preview: WarmLounge"
    assert p.get_attribute('#rule-preview button[data-since="24h"]', "aria-pressed") == "true"
    assert [r["at"] for r in _preview_rows(p)] == [s["at"] for s in asked.value.json()["steps"]]

    _open_preview(p, "WarmLounge", since="30d")  # a window button changes the address, and the preview follows it
    assert p.evaluate("location.hash") == "#rules?preview=WarmLounge&since=30d"
    p.reload()
    p.wait_for_selector("#rule-preview[data-state=ready]", timeout=60_000)
    assert p.get_attribute('#rule-preview button[data-since="30d"]', "aria-pressed") == "true"

    p.click("#rule-preview .preview-close")
    p.wait_for_selector("#rule-preview", state="hidden")
    assert p.evaluate("location.hash") == "#rules"
    with p.expect_response(lambda r: "/preview?since=30d" in r.url):
        p.go_back()  # Back opens what was open
    p.wait_for_selector("#rule-preview[data-state=ready]", timeout=60_000)
    p.go_back()  # and before it, the 24-hour window
    p.wait_for_selector('#rule-preview[data-state=ready] button[data-since="24h"][aria-pressed=true]', timeout=60_000)
    page.close()


@browser_only
def test_a_rule_preview_shows_the_rule_failing_and_the_hub_refusing(browser, previewed_hub):
    page = Page(browser, previewed_hub.url)
    p = page.open("#rules")
    p.wait_for_selector("#rules-list[data-state=ready] [data-thing=rule-ColdEntry]", timeout=30_000)
    answer = _open_preview(p, "ColdEntry")
    assert answer["failures"] and answer["steps"] == []
    rows = _preview_rows(p)
    assert [(r["kind"], r["at"]) for r in rows] == [("failure", f["at"]) for f in answer["failures"]]
    assert rows[0]["cells"][2].startswith(f"Error: {answer['failures'][0]['error']}")
    assert "ColdEntry.action failed: RuntimeError: the entry is at" in rows[0]["cells"][2]
    page.screenshot("rules-preview-failure")

    # A rule the hub no longer has (a bookmark to a rule whose file was removed): the hub's message, as an alert.
    with p.expect_response(lambda r: "/api/rules/Gone/preview" in r.url) as refused:
        p.evaluate("location.hash = '#rules?preview=Gone'")
    p.wait_for_selector("#rule-preview[data-state=error]")
    alert = p.locator("#rule-preview [role=alert]")
    assert refused.value.status == 404
    assert alert.text_content() == f"Cannot preview Gone: {refused.value.json()['error']}"
    assert "no rule named 'Gone'" in alert.text_content() and _preview_rows(p) == []
    # Chromium logs every 4xx answer to the console; this one was asked for, any other still fails the test.
    refused_logs = [e for e in page.errors if "status of 404 (Not Found)" in e]
    assert len(refused_logs) == 1
    page.errors.remove(refused_logs[0])
    page.close()


@browser_only
def test_a_rule_preview_fits_a_phone(browser, previewed_hub):
    phone = Page(browser, previewed_hub.url, width=390, height=844)
    p = phone.open("#rules")
    p.wait_for_selector("#rules-list[data-state=ready] [data-thing=rule-WarmLounge]", timeout=30_000)
    _open_preview(p, "WarmLounge")
    assert p.evaluate("document.documentElement.scrollWidth") <= 390
    assert p.locator("#rule-preview canvas").bounding_box()["width"] <= 390
    phone.screenshot("rules-preview-phone")
    phone.close()
