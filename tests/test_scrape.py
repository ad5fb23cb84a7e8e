"""The scrape source against a real prometheus_client exporter process, scraped by an in-process hub."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
import urllib.request
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from roost.config import load_config
from roost.errors import ConfigError
from roost.hub import Hub
from roost.model import Series, now_ms
from roost.selector import Selector

from conftest import free_port

EXPORTER = textwrap.dedent("""\
    import sys, time
    from prometheus_client import Counter, Gauge, Histogram, Summary, start_http_server

    port = int(sys.argv[1])
    pumped = Counter("pump_cycles", "Pump cycles.")
    temperature = Gauge("boiler_temperature_celsius", "Boiler temperature.", ["circuit", "job"])
    latency = Histogram("valve_seconds", "Valve travel time.", buckets=(0.5, 1, 5))
    Summary("idle_seconds", "Never observed: its quantiles... and sum are what they are.")
    pumped.inc(7)
    temperature.labels(circuit="floor", job="heating").set(41.5)
    temperature.labels(circuit="radiators", job="heating").set(63.25)
    for seconds in (0.3, 0.7, 4):
        latency.observe(seconds)
    start_http_server(port, addr="127.0.0.1")
    print("ready", flush=True)
    while True:
        time.sleep(1)
""")


class Exporter:
    """A prometheus_client exporter as a real process on a fixed port, stopped and started by handle."""

    def __init__(self, tmp_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.script = tmp_path / "exporter.py"
        self.script.write_text(EXPORTER)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(self.script), str(self.port)], stdout=subprocess.PIPE)
        assert self.proc.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url, timeout=1).read()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the exporter did not answer in 10 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def exporter(tmp_path):
    exp = Exporter(tmp_path)
    exp.start()
    yield exp
    exp.stop()


@asynccontextmanager
async def scraping(tmp_path: Path, url: str, extra: str = ""):
    config = tmp_path / "roost.toml"
    config.write_text(
        textwrap.dedent(f"""\
            [[source.scrape]]
            name = "boiler"
            url = "{url}"
            interval = "1s"
            timeout = "500ms"
            labels = {{ site = "cabin" }}
            """)
        + textwrap.dedent(extra)
    )
    settings = load_config(config, data_dir=str(tmp_path / "data"))
    async with Hub(replace(settings, hub=replace(settings.hub, listen="127.0.0.1:0"))) as hub:
        yield hub


def target(port: int, job: str = "boiler") -> dict[str, str]:
    return {"job": job, "instance": f"127.0.0.1:{port}", "site": "cabin"}


async def value_of(hub: Hub, metric: str, labels: dict[str, str], expected: float | None = None, timeout: float = 6.0) -> float:
    """The latest value of a series, once it exists (and equals `expected`, if given)."""
    series = Series.of(metric, labels)
    deadline = asyncio.get_running_loop().time() + timeout
    found = None
    while asyncio.get_running_loop().time() < deadline:
        found = hub.store.latest().get(series)
        if found is not None and (expected is None or found[1] == expected):
            return found[1]
        await asyncio.sleep(0.05)
    have = sorted(str(s) for s in hub.store.latest() if s.metric == metric)
    raise AssertionError(f"{series} is {found} after {timeout} s, expected {expected}; {metric} series: {have}")


async def test_counters_gauges_and_histograms_are_stored_under_their_exposed_names(tmp_path, exporter):
    t = target(exporter.port)
    async with scraping(tmp_path, exporter.url) as hub:
        assert await value_of(hub, "pump_cycles_total", t) == 7
        assert await value_of(hub, "boiler_temperature_celsius", {**t, "circuit": "floor", "exported_job": "heating"}) == 41.5
        assert await value_of(hub, "boiler_temperature_celsius", {**t, "circuit": "radiators", "exported_job": "heating"}) == 63.25
        for le, count in (("0.5", 1), ("1.0", 2), ("5.0", 3), ("+Inf", 3)):
            assert await value_of(hub, "valve_seconds_bucket", {**t, "le": le}) == count
        assert await value_of(hub, "valve_seconds_count", t) == 3
        assert await value_of(hub, "valve_seconds_sum", t) == pytest.approx(5.0)
        assert await value_of(hub, "up", t) == 1
        samples = await value_of(hub, "scrape_samples_scraped", t)
        assert samples >= 12  # counter, 2 gauges, 4 buckets, sum, count, summary count and sum, _created
        assert 0 < await value_of(hub, "scrape_duration_seconds", t) < 0.5
        assert not hub.metrics.registry.get_sample_value("roost_rejected_readings_total", {"reason": "nan"})


async def test_a_dead_exporter_is_up_0_and_counted_and_up_1_again_once_it_is_back(tmp_path, exporter):
    t = target(exporter.port)
    async with scraping(tmp_path, exporter.url) as hub:
        assert await value_of(hub, "up", t) == 1
        exporter.stop()
        assert await value_of(hub, "up", t, expected=0) == 0
        assert await value_of(hub, "scrape_samples_scraped", t, expected=0) == 0
        errors = hub.metrics.registry.get_sample_value("roost_source_errors_total", {"source": "boiler", "reason": "unreachable"})
        assert errors >= 1
        assert hub.metrics.registry.get_sample_value("roost_source_up", {"source": "boiler"}) == 0
        exporter.start()
        assert await value_of(hub, "up", t, expected=1) == 1
        assert hub.metrics.registry.get_sample_value("roost_source_up", {"source": "boiler"}) == 1


async def test_the_metrics_regex_keeps_only_matching_names_and_up_always(tmp_path, exporter):
    t = target(exporter.port, job="house")
    async with scraping(tmp_path, exporter.url, 'job = "house"\nmetrics = "pump_.*|valve_seconds_count"\n') as hub:
        assert await value_of(hub, "pump_cycles_total", t) == 7
        assert await value_of(hub, "valve_seconds_count", t) == 3
        assert await value_of(hub, "up", t) == 1
        names = {s.metric for s in hub.store.latest()}
        assert names == {"pump_cycles_total", "pump_cycles_created", "valve_seconds_count", "up",
                         "scrape_duration_seconds", "scrape_samples_scraped"}


async def test_scrapes_follow_the_interval_grid(tmp_path, exporter):
    t = target(exporter.port)
    async with scraping(tmp_path, exporter.url) as hub:
        await value_of(hub, "up", t)
        await asyncio.sleep(3.2)
        [data] = list(hub.store.read(Selector.parse("up"), 0, now_ms() + 1000))
    stamps = data.ts.tolist()
    assert len(stamps) >= 3
    assert all(ts % 1000 < 100 for ts in stamps[1:]), stamps  # after the first, on whole seconds


@pytest.fixture
def odd_exporter(tmp_path):
    """An HTTP server answering with what the test puts in `exposition`, to feed edge cases."""
    port = free_port()
    exposition = tmp_path / "exposition.txt"
    script = tmp_path / "odd.py"
    script.write_text(textwrap.dedent(f"""\
        from http.server import BaseHTTPRequestHandler, HTTPServer
        from pathlib import Path

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                token = Path({str(exposition)!r}).with_name("token.txt")
                if token.exists() and self.headers.get("Authorization") != "Bearer " + token.read_text():
                    self.send_error(401)
                    return
                body = Path({str(exposition)!r}).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        HTTPServer(("127.0.0.1", {port}), Handler).serve_forever()
        """))
    exposition.write_text("")
    proc = subprocess.Popen([sys.executable, str(script)])
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            break
        except OSError:
            assert time.monotonic() < deadline, "the test server did not come up"
            time.sleep(0.05)
    yield url, port, exposition
    proc.kill()
    proc.wait(timeout=10)


async def test_nan_samples_are_skipped_and_exposed_timestamps_kept(tmp_path, odd_exporter):
    url, port, exposition = odd_exporter
    exposition.write_text(textwrap.dedent("""\
        # TYPE rpc_seconds summary
        rpc_seconds{quantile="0.5"} NaN
        rpc_seconds_sum 0
        rpc_seconds_count 0
        # TYPE meter_kwh gauge
        meter_kwh 1234.5 1700000000123
        """))
    t = target(port)
    async with scraping(tmp_path, url) as hub:
        assert await value_of(hub, "rpc_seconds_count", t) == 0
        assert await value_of(hub, "scrape_samples_scraped", t) == 4
        assert hub.store.latest()[Series.of("meter_kwh", t)] == (1700000000123, 1234.5)
        assert Series.of("rpc_seconds", {**t, "quantile": "0.5"}) not in hub.store.latest()
        assert not hub.metrics.registry.get_sample_value("roost_source_errors_total", {"source": "boiler", "reason": "nan"})


async def test_a_broken_exposition_fails_the_scrape_whole(tmp_path, odd_exporter):
    url, port, exposition = odd_exporter
    exposition.write_text("good_metric 1\nthis is { not an exposition\n")
    t = target(port)
    async with scraping(tmp_path, url) as hub:
        assert await value_of(hub, "up", t) == 0
        assert Series.of("good_metric", t) not in hub.store.latest()
        assert hub.metrics.registry.get_sample_value("roost_source_errors_total", {"source": "boiler", "reason": "parse"}) >= 1
        exposition.write_text("good_metric 1\n")
        assert await value_of(hub, "up", t, expected=1) == 1
        assert await value_of(hub, "good_metric", t) == 1


async def test_the_bearer_token_is_sent_when_configured(tmp_path, odd_exporter):
    url, port, exposition = odd_exporter
    exposition.write_text("boiler_on 1\n")
    exposition.with_name("token.txt").write_text("s3cret")
    (tmp_path / "token").write_text("s3cret\n")
    t = target(port)
    async with scraping(tmp_path, url) as hub:
        assert await value_of(hub, "up", t) == 0
        assert hub.metrics.registry.get_sample_value("roost_source_errors_total", {"source": "boiler", "reason": "http_status"}) >= 1
    async with scraping(tmp_path, url, 'bearer_token_file = "token"\n') as hub:
        assert await value_of(hub, "up", t, expected=1) == 1
        assert await value_of(hub, "boiler_on", t) == 1


def test_a_timeout_not_shorter_than_the_interval_is_a_config_error(tmp_path):
    config = tmp_path / "roost.toml"
    config.write_text('[[source.scrape]]\nurl = "http://127.0.0.1:9100/metrics"\ninterval = "5s"\ntimeout = "5s"\n')
    with pytest.raises(ConfigError, match=r"roost.toml:4: source.scrape\[0\].timeout: must be shorter than interval"):
        load_config(config)
    config.write_text('[[source.scrape]]\nurl = "127.0.0.1:9100"\nmetrics = "("\n')
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert 'source.scrape[0].url: expected an exporter URL like "http://127.0.0.1:9100/metrics"' in str(err.value)
    assert "source.scrape[0].metrics: expected a regular expression" in str(err.value)
