"""roost speaks Prometheus: /metrics passes promtool and is scraped by a real Prometheus, the /api/v1 query API
answers promtool, and remote write comes in from a real Prometheus."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time

import aiohttp
import numpy as np
import orjson

from peers import Prometheus, need
from roost.api.prometheus import _instant_body, _range_body, format_value, format_values
from roost.export import encode_write_request
from roost.model import Reading, Series, now_ms
from roost.promql import Vector


async def _demo_like(hub) -> int:
    """A week-long house like `roost demo`'s, plus a stored series that collides with roost's own metric name."""
    now = now_ms()
    ts = np.arange(now - 3_600_000, now, 15_000)
    rng = np.random.default_rng(3)
    for room in ("lounge", "bedroom", "entry"):
        hub.store.write_bulk(Series.of("temperature_celsius", room=room), ts, (21 + rng.normal(0, 0.2, len(ts))).round(2))
        hub.store.write_bulk(Series.of("humidity_percent", room=room), ts, (50 + rng.normal(0, 1, len(ts))).round(1))
        hub.store.write_bulk(Series.of("pressure_hpa", room=room), ts, (1013 + rng.normal(0, 1, len(ts))).round(2))
    hub.store.write_bulk(Series.of("power_watts", meter="main"), ts, rng.uniform(200, 900, len(ts)).round(1))
    hub.store.write_bulk(Series.of("energy_kwh_total", meter="main"), ts, np.cumsum(rng.uniform(0, 0.01, len(ts))).round(3))
    # Someone scraped another roost into this one: its self-metrics must not break ours.
    hub.store.write_bulk(Series.of("roost_readings_total", instance="other"), ts, np.arange(len(ts), dtype=float))
    await hub.ingest([Reading(Series.of("label_escaping", room='a "quoted"\\ room\n'), now, 1.0)])
    return now


def test_sample_values_are_written_as_prometheus_writes_them():
    # Go's strconv.FormatFloat(v, 'f', -1, 64), with Prometheus' NaN and ±Inf
    expected = {
        21.0: "21", 21.37: "21.37", -0.0: "-0", 0.1 + 0.2: "0.30000000000000004", 1e16: "10000000000000000",
        123456789012345680.0: "123456789012345680", 1e-4: "0.0001", 1.5e-7: "0.00000015", 1e-5: "0.00001",
        float("nan"): "NaN", float("inf"): "+Inf", float("-inf"): "-Inf", 1234.5678: "1234.5678",
    }
    assert format_values(np.array(list(expected))) == list(expected.values())


def test_range_answers_have_every_present_point_with_its_value_written_as_prometheus_writes_it():
    rng = np.random.default_rng(5)
    for trial in range(200):
        n, k = int(rng.integers(1, 40)), int(rng.integers(1, 5))
        values = [
            np.round(rng.normal(20, 5, (k, n)), 2),  # some whole numbers among them
            rng.normal(0, 1e-3, (k, n)),  # exponents in repr
            rng.choice([0.0, -0.0, 100.0, 1e16, 1e-5, np.nan, np.inf, -np.inf, 0.1 + 0.2, 5e-5, 1e-4], (k, n)),
            rng.normal(0, 1e9, (k, n)),
        ][trial % 4]
        present = rng.random((k, n)) > 0.3
        start, step = 1_702_000_000_123, int(rng.choice([1000, 1500, 600_000]))
        body = orjson.loads(_range_body(Vector([(("room", f"r{i}"),) for i in range(k)], values, present), start,
                                        start + (n - 1) * step, step))
        seconds = ((start + np.arange(n) * step) / 1000).tolist()
        expected = [
            {"metric": {"room": f"r{i}"},
             "values": [[seconds[j], format_value(float(values[i, j]))] for j in np.flatnonzero(present[i]).tolist()]}
            for i in range(k) if present[i].any()
        ]
        assert body == {"status": "success", "data": {"resultType": "matrix", "result": expected}}


def test_range_answers_write_whole_second_steps_as_integers_as_prometheus_does():
    values, present = np.array([[21.5, 22.0, 22.25]]), np.ones((1, 3), bool)
    labels = [(("room", "lounge"),)]
    body = _range_body(Vector(labels, values, present), 1_702_591_800_000, 1_702_593_000_000, 600_000)
    assert b'"values":[[1702591800,"21.5"],[1702592400,"22"],[1702593000,"22.25"]]' in body
    body = _range_body(Vector(labels, values, present), 1_702_591_800_500, 1_702_593_000_500, 600_000)
    assert b'"values":[[1702591800.5,"21.5"],[1702592400.5,"22"],[1702593000.5,"22.25"]]' in body
    one = Vector(labels, np.array([[21.5]]), np.ones((1, 1), bool))
    assert b'"value":[1702591800,"21.5"]' in _instant_body(one, 1_702_591_800_000)
    assert b'"value":[1702591800.25,"21.5"]' in _instant_body(one, 1_702_591_800_250)


def _promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    need("promtool")
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True, timeout=60)


async def test_metrics_pass_promtool_check_metrics(hub, http):
    await _demo_like(hub)
    body = await (await http.get("/metrics")).text()
    check = _promtool("check", "metrics", stdin=body)
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
    assert 'temperature_celsius{room="lounge"}' in body
    assert "# TYPE energy_kwh_total counter" in body
    assert "roost_readings_per_second" in body
    assert 'instance="other"' not in body  # the colliding stored series is left out, roost's own family stays
    assert "roost_readings_total " in body


async def test_real_prometheus_scrapes_the_hub_and_remote_writes_into_it(hub, http, tmp_path):
    await _demo_like(hub)
    host = hub.url.removeprefix("http://")
    config = f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: roost
    static_configs: [{{targets: ["{host}"]}}]
remote_write:
  - url: {hub.url}/api/v1/write
    queue_config: {{batch_send_deadline: 1s, min_backoff: 100ms}}
"""
    prometheus = Prometheus(tmp_path / "prom", config)
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            up = series = None
            while time.monotonic() < deadline:
                async with session.get(prometheus.url + "/api/v1/query", params={"query": 'up{job="roost"}'}) as r:
                    up = (await r.json())["data"]["result"]
                async with session.get(
                    prometheus.url + "/api/v1/query", params={"query": 'temperature_celsius{job="roost",room="lounge"}'}
                ) as r:
                    series = (await r.json())["data"]["result"]
                if up and up[0]["value"][1] == "1" and series:
                    break
                await asyncio.sleep(0.5)
            assert up and up[0]["value"][1] == "1", up
            assert series and 20 < float(series[0]["value"][1]) < 22
            # Prometheus remote-writes what it scraped back into roost: `up` arrives as a stored series.
            while time.monotonic() < deadline:
                async with http.get("/api/v1/query", params={"query": 'up{job="roost"}'}) as r:
                    body = await r.json()
                if body["data"]["result"]:
                    break
                await asyncio.sleep(0.5)
            assert body["data"]["result"][0]["value"][1] == "1"
    finally:
        prometheus.stop()


async def test_remote_write_stores_an_encoded_request_once_durable(hub, http):
    now = now_ms()
    readings = [Reading(Series.of("power_watts", meter=f"m{i}"), now - k * 1000, 100.0 * i + k) for i in range(3) for k in range(5)]
    async with http.post("/api/v1/write", data=encode_write_request(readings, {"site": "cabin"})) as r:
        assert r.status == 204, await r.text()
    async with http.get("/api/v1/query", params={"query": 'count_over_time(power_watts{site="cabin"}[1m])'}) as r:
        result = (await r.json())["data"]["result"]
    assert sorted((x["metric"]["meter"], x["value"][1]) for x in result) == [("m0", "5"), ("m1", "5"), ("m2", "5")]
    async with http.post("/api/v1/write", data=b"not snappy at all") as r:
        assert r.status == 400
        assert "snappy" in await r.text()


async def test_query_errors_have_prometheus_shapes(hub, http):
    now = await _demo_like(hub)
    cases = [
        ({"query": "histogram_quantile(0.9, rate(x[5m]))"}, 400, "bad_data", 'unsupported function "histogram_quantile"'),
        ({"query": "topk(3, power_watts)"}, 400, "bad_data", 'unsupported aggregation "topk"'),
        ({"query": "sum(power_watts"}, 400, "bad_data", "query"),
        ({"query": "a and b"}, 400, "bad_data", 'unsupported operator "and"'),
        ({"query": "power_watts", "time": "yesterday"}, 400, "bad_data", 'invalid parameter "time"'),
        # many-to-many: several rooms on the right for one signature
        ({"query": "power_watts + on() temperature_celsius"}, 422, "execution", "many-to-many"),
    ]
    for params, status, kind, message in cases:
        async with http.get("/api/v1/query", params={"time": str(now / 1000), **params}) as r:
            body = await r.json()
        assert (r.status, body["status"], body["errorType"]) == (status, "error", kind), (params, body)
        assert message in body["error"], (params, body)
    async with http.get("/api/v1/query_range", params={"query": "x", "start": "1", "end": "0", "step": "1"}) as r:
        assert r.status == 400 and "end timestamp must not be before start time" in (await r.json())["error"]
    async with http.get("/api/v1/query_range", params={"query": "x", "start": "0", "end": "100000", "step": "1"}) as r:
        assert r.status == 400 and "11,000 points" in (await r.json())["error"]


async def test_a_query_runs_in_its_own_thread_while_the_event_loop_serves_others(hub, http, monkeypatch):
    now = await _demo_like(hub)
    handed_over = asyncio.Event()
    take_view = hub.store.read_view

    def read_view(selectors=None):
        handed_over.set()  # the handler is about to give the query to the query thread
        return take_view(selectors)

    monkeypatch.setattr(hub.store, "read_view", read_view)
    held, release = threading.Event(), threading.Event()

    def hold_the_store():  # as a month of raw chunks would keep the query thread busy
        with hub.store._view_lock:
            held.set()
            release.wait(10)  # a query on the event loop would wait here too: let it go in the end, to fail below

    holder = threading.Thread(target=hold_the_store)
    holder.start()
    held.wait()

    async def query() -> dict:
        async with http.get("/api/v1/query", params={"query": "avg(temperature_celsius)", "time": str(now / 1000)}) as r:
            return await r.json()

    pending = asyncio.create_task(query())
    await handed_over.wait()
    async with http.get("/api/v1/labels") as r:  # answered on the event loop while the query waits
        assert "room" in (await r.json())["data"]
    answered_first = not pending.done()
    release.set()
    holder.join()
    body = await pending
    assert answered_first, "the query held up the event loop"
    assert body["status"] == "success" and len(body["data"]["result"]) == 1


async def test_a_query_reading_a_few_day_chunks_is_answered_on_the_event_loop_and_a_larger_one_in_the_query_thread(
    hub, http, monkeypatch
):
    now = await _demo_like(hub)
    take_view = hub.store.read_view
    threads: list[str] = []

    def read_view(selectors=None):
        view = take_view(selectors)
        run = view.run

        def recording_run(fn, **kw):
            return run(lambda v: (threads.append(threading.current_thread().name), fn(v))[1], **kw)

        view.run = recording_run
        return view

    monkeypatch.setattr(hub.store, "read_view", read_view)
    day_s = 86_400
    for query, days in (
        ('temperature_celsius{room="lounge"}', 7),  # 1 series x 8 days: on the loop
        ("avg(temperature_celsius)", 7),  # 3 x 8: on the loop
        ("avg(temperature_celsius)", 30),  # 3 x 31: in the thread
        ("max(rate(energy_kwh_total[1d]) + on() group_left sum(humidity_percent))", 7),  # unsupported: nothing read
    ):
        params = {"query": query, "start": str(now // 1000 - days * day_s), "end": str(now // 1000), "step": "3600"}
        async with http.get("/api/v1/query_range", params=params) as r:
            await r.read()
    assert threads == ["MainThread", "MainThread", "roost-promql_0"]


async def test_promtool_queries_the_hub(hub):
    now = await _demo_like(hub)
    loop = asyncio.get_running_loop()

    async def promtool(*args):  # in a thread: the hub serves on this loop
        return await loop.run_in_executor(None, lambda: _promtool("query", *args))

    p = await promtool("instant", hub.url, 'max by (room) (temperature_celsius)')
    assert p.returncode == 0, p.stderr
    assert sorted(line.split(" => ")[0] for line in p.stdout.splitlines()) == [
        '{room="bedroom"}', '{room="entry"}', '{room="lounge"}']
    p = await promtool("range", f"--start={(now - 1_800_000) // 1000}", f"--end={now // 1000}", "--step=5m", hub.url,
                       "rate(energy_kwh_total[10m])")
    assert p.returncode == 0, p.stderr
    assert '{meter="main"} =>' in p.stdout and p.stdout.count("@[") == 7
    p = await promtool("series", "--match=humidity_percent", hub.url)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 3, (p.stdout, p.stderr)
    p = await promtool("labels", hub.url, "room")
    assert p.returncode == 0 and {"bedroom", "entry", "lounge"} <= set(p.stdout.splitlines()), p.stdout
    p = await promtool("instant", hub.url, "histogram_quantile(0.9, x)")
    assert p.returncode == 1 and "bad_data" in p.stderr, p.stderr
