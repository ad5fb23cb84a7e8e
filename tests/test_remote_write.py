"""Every stored reading reaches the export targets once: through target outages, hub restarts and a full buffer."""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import ROOT, HubProcess, hub_settings
from peers import VictoriaMetrics, free_port, get_json
from roost.export import DiskBuffer, InfluxTarget, RemoteWriteTarget, decode_write_request
from roost.export.exporter import line_protocol
from roost.export.prompb import encode_write_request
from roost.hub import Hub
from roost.model import Reading, Series
from roost.selector import Selector

T0 = 1_700_000_000_000


def _readings(n: int, start: int = 0, series: int = 10) -> list[Reading]:
    return [Reading(Series.of("rw_test", sensor=f"s{i % series}"), T0 + i * 1000, float(i)) for i in range(start, start + n)]


# ---------------------------------------------------------------------- the buffer and the wire format


def test_write_request_round_trips_with_extra_labels():
    readings = _readings(50, series=5)
    decoded = decode_write_request(encode_write_request(readings, {"site": "home"}))
    expected = {(r.series.metric, r.series.labels + (("site", "home"),), r.ts_ms, r.value) for r in readings}
    assert {(r.series.metric, r.series.labels, r.ts_ms, r.value) for r in decoded.readings} == expected


def test_buffer_keeps_unacknowledged_readings_across_reopen_and_cuts_a_torn_frame(tmp_path):
    buf = DiskBuffer(tmp_path, 64 * 1024 * 1024)
    buf.append(_readings(100))
    buf.append(_readings(100, start=100))
    batch = buf.read(100)
    assert [r.value for r in batch.readings] == [float(i) for i in range(100)]
    buf.ack(batch.end)
    buf.close()
    segment = next(tmp_path.glob("*.seg"))
    with open(segment, "ab") as f:
        f.write(b"\x40\x00\x00\x00torn")  # a crash in the middle of the next append
    buf = DiskBuffer(tmp_path, 64 * 1024 * 1024)
    assert buf.pending == 100
    assert [r.value for r in buf.read(1000).readings] == [float(i) for i in range(100, 200)]
    buf.append(_readings(1, start=200))  # appends after the cut, not after the garbage
    assert buf.read(1000).readings[-1].value == 200.0


def test_full_buffer_drops_the_oldest_unsent_readings_and_counts_them(tmp_path):
    buf = DiskBuffer(tmp_path, 1024 * 1024, segment_bytes=64 * 1024)
    for k in range(100):
        buf.append(_readings(1000, start=k * 1000))
    assert buf.size_bytes <= 1024 * 1024
    assert buf.dropped > 0
    assert buf.pending + buf.dropped == 100_000
    rest = []
    while (batch := buf.read(10_000)).readings:
        rest += batch.readings
        buf.ack(batch.end)
    assert [r.value for r in rest] == [float(i) for i in range(buf.dropped, 100_000)]  # the newest are kept


def test_influx_export_lands_in_another_hub_as_the_same_series(tmp_path):
    async def run():
        async with Hub(hub_settings(tmp_path / "central")) as central:
            target = InfluxTarget(url=central.url + "/write?db=home", name="central", flush_interval_ms=50)
            settings = hub_settings(tmp_path / "edge")
            settings = replace(settings, export=replace(settings.export, influx=[target]))
            async with Hub(settings) as edge:
                await edge.ingest(_readings(300))
                for _ in range(100):
                    got = central.store.latest()
                    if sum(1 for s in got if s.metric == "rw_test") == 10 and max(v for _t, v in got.values()) == 299:
                        break
                    await asyncio.sleep(0.1)
            data = list(central.store.read(Selector.parse("rw_test"), T0, T0 + 10**6))
            assert sum(len(d.ts) for d in data) == 300
            assert {d.series.label_dict["sensor"] for d in data} == {f"s{i}" for i in range(10)}

    asyncio.run(run())


def test_line_protocol_escapes_labels():
    body = line_protocol([Reading(Series.of("m", room="a b,c=d"), 5, 1.5)], {"site": "x"})
    assert body == b"m,room=a\\ b\\,c\\=d,site=x value=1.5 5\n"


# ---------------------------------------------------------------------- against VictoriaMetrics


def _config(path: Path, url: str, site: str, **extra: str) -> Path:
    lines = [f'[hub]\nsite = "{site}"\n', "[[export.remote_write]]", 'name = "vm"', f'url = "{url}"',
             "batch = 500", 'flush_interval = "200ms"', 'max_backoff = "1s"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class _Pusher:
    """Pushes distinct readings (value = sequence number) into a hub over /write, in a thread, until stopped."""

    def __init__(self, series: int = 20):
        self.series = series
        self.sent = 0
        self.url = ""
        self._stop = threading.Event()
        self._pause = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _post(self, start: int, n: int) -> None:
        body = "\n".join(
            f"rw_test,sensor=s{i % self.series} value={i} {T0 + i * 1000}" for i in range(start, start + n)
        ).encode()
        req = urllib.request.Request(self.url + "/write?precision=ms", data=body, method="POST")
        urllib.request.urlopen(req, timeout=30).read()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._pause.is_set():
                time.sleep(0.01)
                continue
            self._post(self.sent, 50)
            self.sent += 50
            time.sleep(0.02)

    def start(self, url: str) -> None:
        self.url = url
        self._thread.start()

    def pause(self) -> None:
        self._pause.set()
        time.sleep(0.2)  # a post in flight finishes

    def resume(self, url: str) -> None:
        self.url = url
        self._pause.clear()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _vm_samples(vm: VictoriaMetrics) -> list[tuple[str, int, float]]:
    out = []
    for line in vm.export('{__name__="rw_test"}'):
        for ts, v in zip(line["timestamps"], line["values"]):
            out.append((line["metric"]["sensor"], ts, v))
    return out


def _wait_for(vm: VictoriaMetrics, n: int, timeout: float = 90) -> list:
    deadline = time.monotonic() + timeout
    while True:
        got = _vm_samples(vm)
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def test_every_reading_reaches_victoria_metrics_once_through_an_outage_and_a_hub_restart(tmp_path):
    """At-least-once delivery (disk buffer, acknowledged offset) + VictoriaMetrics' dedup on (series, timestamp)
    = each reading once. VictoriaMetrics is stopped with SIGTERM: it acknowledges a write before flushing it
    from memory, so a SIGKILL can lose what it acknowledged, which no sender can detect."""
    vm_port = free_port()
    vm_args = ("-dedup.minScrapeInterval=1ms",)
    vm = VictoriaMetrics(tmp_path / "vm", *vm_args, port=vm_port)
    config = _config(tmp_path / "roost.toml", f"http://127.0.0.1:{vm_port}/api/v1/write", "home")
    hub = HubProcess(tmp_path / "data", "-c", str(config))
    pusher = _Pusher()
    try:
        pusher.start(hub.url)
        time.sleep(2)
        vm.stop()  # mid-stream: the pusher keeps going, the hub buffers
        time.sleep(3)
        pusher.pause()
        hub.kill(signal.SIGTERM)
        hub = HubProcess(tmp_path / "data", "-c", str(config))
        pusher.resume(hub.url)
        time.sleep(2)
        metrics = urllib.request.urlopen(hub.url + "/metrics").read().decode()
        pending = re.search(r'roost_export_pending_readings\{target="vm"\} (\S+)', metrics)
        assert pending and float(pending[1]) > 0, "the outage should have left readings in the buffer"
        vm.start()
        time.sleep(2)
        pusher.stop()
        sent = pusher.sent
        got = _wait_for(vm, sent)
    finally:
        pusher.stop() if pusher._thread.is_alive() else None
        hub.kill(signal.SIGTERM)
        vm.stop()
    expected = sorted((f"s{i % pusher.series}", T0 + i * 1000, float(i)) for i in range(sent))
    assert len(got) == len(set(got)), "a reading arrived twice"
    assert sorted(got) == expected, f"{len(expected)} sent, {len(got)} in VictoriaMetrics"
    assert sent > 1000


def test_two_sites_push_into_one_victoria_metrics(tmp_path):
    vm = VictoriaMetrics(tmp_path / "vm", "-dedup.minScrapeInterval=1ms")
    hubs = []
    try:
        for name in ("home", "cabin"):
            text = (ROOT / "examples" / "multi-site" / f"{name}.toml").read_text()
            text = text.replace("http://127.0.0.1:8428", vm.url).replace('flush_interval = "5s"', 'flush_interval = "200ms"')
            (tmp_path / f"{name}.toml").write_text(text)
            hubs.append(HubProcess(tmp_path / name, "-c", str(tmp_path / f"{name}.toml")))
        for k, hub in enumerate(hubs):
            body = "\n".join(f"temperature_celsius,room=lounge value={20 + k}.5 {T0 + i * 15_000}" for i in range(40))
            urllib.request.urlopen(urllib.request.Request(hub.url + "/write?precision=ms", data=body.encode()), timeout=30)
        deadline = time.monotonic() + 60
        while True:
            vm.flush()
            res = get_json(vm.url + "/api/v1/query", {
                "query": "count_over_time(temperature_celsius[1h])", "time": (T0 + 40 * 15_000) / 1000})
            by_site = {r["metric"]["site"]: (r["metric"], r["value"][1]) for r in res["data"]["result"]}
            if len(by_site) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert by_site["home"][1] == "40" and by_site["cabin"][1] == "40"
        assert by_site["cabin"][0] == {"room": "lounge", "site": "cabin", "uplink": "lte"}
        avg = get_json(vm.url + "/api/v1/query", {
            "query": "avg by (site) (temperature_celsius)", "time": (T0 + 39 * 15_000) / 1000})
        assert {r["metric"]["site"]: r["value"][1] for r in avg["data"]["result"]} == {"home": "20.5", "cabin": "21.5"}
    finally:
        for hub in hubs:
            hub.kill(signal.SIGTERM)
        vm.stop()


def test_export_config_is_checked(tmp_path):
    from roost.config import load_config
    from roost.errors import ConfigError

    path = tmp_path / "bad.toml"
    path.write_text('[[export.remote_write]]\nurl = "ftp://x"\nmax_buffer = "lots"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "bad.toml:2: export.remote_write[0].url: expected an http(s) URL" in str(err.value)
    assert "bad.toml:3: export.remote_write[0].max_buffer: expected a size" in str(err.value)
    path.write_text('[[export.influx]]\nurl = "http://x/write"\nextra_labels = { "__x" = "y" }\n')
    with pytest.raises(ConfigError, match="extra_labels: expected label names"):
        load_config(path)
    assert isinstance(RemoteWriteTarget(url="http://x").max_buffer_bytes, int)
