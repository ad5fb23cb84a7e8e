"""roost's Prometheus API beside VictoriaMetrics' on the same data, and remote-write throughput into VictoriaMetrics.

    .venv/bin/python bench/interop.py [--series 100] [--days 30] [--runs 15] [--jitter-ms 0]

Loads `workload.generate` (the reference house: 15 s samples) into a roost store (write_bulk) and into
VictoriaMetrics (CSV import), starts `roost run` and `victoria-metrics` on free 127.0.0.1 ports, and times five
dashboard queries through `/api/v1/query_range` over the last 7 and 30 days twice: the engines alone (roost with
`query_cache_mb = 0`, VictoriaMetrics with `-search.disableCache`: every request computed), then both as installed
(roost's answer cache and VictoriaMetrics' rollup result cache on: what a refreshing dashboard gets). Each on one
keep-alive connection per server as Grafana keeps them (median of --runs after one warm-up, whose time is
printed too; the two servers are asked in turns, who goes first swapping each turn, so a spike of the machine's
load lands on both; the answers are checked to have the same series). Each range is asked twice: with start
and end rounded down to a multiple of the step, as Grafana's Prometheus data source sends them, and 200 s off
that grid (a hand-made query). Then it streams the 7 newest days of every
series through roost's export path (disk buffer → WriteRequest → snappy → HTTP) into a fresh VictoriaMetrics
and prints samples per second.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from peers import Peer, VictoriaMetrics, free_port  # noqa: E402
from workload import T0, generate  # noqa: E402

from roost.export import DiskBuffer  # noqa: E402
from roost.export.prompb import HEADERS, encode_write_request  # noqa: E402
from roost.model import Reading, Series  # noqa: E402
from roost.store import Store, StoreOptions  # noqa: E402

QUERIES = [
    ('avg_over_time(temperature_celsius{room="room_00"}[10m])', "one room, smoothed"),
    ("max by (room) (max_over_time(temperature_celsius[1h]))", "every room's hourly max"),
    ("rate(energy_kwh_total[1h]) * 3600", "power from the energy counters"),
    ("avg(humidity_percent)", "house average"),
    ("sum(increase(energy_kwh_total[1d]))", "daily energy of the house"),
]
WINDOWS = [("7d", 7, 600), ("30d", 30, 3600)]  # (name, days, step seconds): ~1000 and ~720 points


def load(days: int, n_series: int, work: Path, vm: VictoriaMetrics, jitter_ms: int = 0) -> int:
    store = Store.open(work / "roost", StoreOptions(fsync=False), writer=True)
    total = 0
    rng = np.random.default_rng(7)
    try:
        for metric, labels, ts, values in generate(n_series=n_series, days=days):
            ms = ts * 1000
            if jitter_ms:  # stamped on arrival, as a hub stamps MQTT readings: not exactly every 15 s
                ms = ms + rng.integers(0, jitter_ms, len(ms))
            store.write_bulk(Series.of(metric, labels), ms, values)
            (key, value), = labels.items()
            fmt = f"1:metric:{metric},2:time:unix_ms,3:label:{key}"
            rows = "\n".join(f"{v!r},{t},{value}" for v, t in zip(values.tolist(), ms.tolist()))
            req = urllib.request.Request(vm.url + "/api/v1/import/csv?" + urllib.parse.urlencode({"format": fmt}),
                                         data=rows.encode())
            urllib.request.urlopen(req, timeout=300).read()
            total += len(ts)
        store.compact()
    finally:
        store.close()
    vm.flush()
    return total


_connections: dict[str, http.client.HTTPConnection] = {}


def query_range(url: str, query: str, start: float, end: float, step: int) -> tuple[float, list]:
    params = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": step})
    for _attempt in range(2):  # a server may close an idle keep-alive connection: open a new one once
        conn = _connections.get(url)
        if conn is None:
            conn = _connections[url] = http.client.HTTPConnection(urllib.parse.urlsplit(url).netloc, timeout=300)
        t = time.perf_counter()
        try:
            conn.request("GET", f"/api/v1/query_range?{params}")
            response = conn.getresponse()
            raw = response.read()
            break
        except (http.client.HTTPException, OSError):
            conn.close()
            del _connections[url]
    else:
        raise RuntimeError(f"{url}: the connection failed twice")
    elapsed = time.perf_counter() - t
    body = json.loads(raw)
    assert response.status == 200 and body["status"] == "success", body
    return elapsed, body["data"]["result"]


def time_queries(roost_url: str, vm_url: str, days_loaded: int, runs: int) -> list[tuple]:
    """(range, grid, query, roost first, roost median, VM first, VM median) in seconds."""
    rows = []
    for grid in ("grafana", "off-grid"):
        for name, days, step in WINDOWS:
            if days > days_loaded:
                continue
            end = T0 + days_loaded * 86_400
            end -= end % step  # as Grafana aligns range queries to the step
            if grid == "off-grid":
                end -= 200
            start = end - days * 86_400
            for query, _what in QUERIES:
                timings = {}
                peers = [("roost", roost_url), ("vm", vm_url)]
                for peer, url in peers:
                    timings[peer + "_first"], result = query_range(url, query, start, end, step)  # warm-up
                    timings[peer + "_series"] = len(result)
                # Interleaved, in turns that swap who goes first: a spike of the machine's load lands on both.
                samples: dict[str, list[float]] = {"roost": [], "vm": []}
                for i in range(runs):
                    for peer, url in peers if i % 2 == 0 else peers[::-1]:
                        samples[peer].append(query_range(url, query, start, end, step)[0])
                for peer, times in samples.items():
                    timings[peer] = statistics.median(times)
                assert timings["roost_series"] == timings["vm_series"], (query, timings)
                rows.append((name, grid, query, timings["roost_first"], timings["roost"], timings["vm_first"], timings["vm"]))
    return rows


async def remote_write_throughput(readings: list[Reading], url: str, work: Path, batch: int = 2000) -> float:
    import aiohttp

    buf = DiskBuffer(work / "export-bench", 1024**3)
    for i in range(0, len(readings), 10_000):
        buf.append(readings[i : i + 10_000])
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        while (b := buf.read(batch)).readings:
            async with session.post(url, data=encode_write_request(b.readings, {"site": "bench"}), headers=HEADERS) as r:
                assert r.status // 100 == 2, await r.text()
            buf.ack(b.end)
    elapsed = time.perf_counter() - started
    buf.close()
    return len(readings) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=int, default=100)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--runs", type=int, default=15, help="timed requests per query and server (15)")
    ap.add_argument("--jitter-ms", type=int, default=0, metavar="MS",
                    help="add 0..MS ms to every timestamp, as arrival times have (0: exactly every 15 s, the default)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="roost-interop-") as tmp:
        work = Path(tmp)
        vm = VictoriaMetrics(work / "vm")
        hub = None
        try:
            t = time.perf_counter()
            samples = load(args.days, args.series, work, vm, args.jitter_ms)
            jitter = f", timestamps +0..{args.jitter_ms} ms" if args.jitter_ms else ""
            print(f"loaded {samples:,} samples ({args.series} series, {args.days} d{jitter}) into both in {time.perf_counter() - t:.0f} s")
            passes = {}
            for setting, cached in (("engines alone: both query caches off", False), ("as installed: both caches on", True)):
                if cached:  # the same data, served by VictoriaMetrics with its rollup result cache
                    vm.stop()
                    vm = VictoriaMetrics(work / "vm", cache=True)
                config = work / "roost.toml"
                config.write_text("" if cached else "[hub]\nquery_cache_mb = 0\n")
                port = free_port()
                hub = Peer([str(ROOT / ".venv/bin/roost"), "run", "-c", str(config), "--data", str(work / "roost"),
                            "--listen", f"127.0.0.1:{port}"], port, work / "hub.log", "/healthz")
                passes[setting] = time_queries(hub.url, vm.url, args.days, args.runs)
                hub.stop()
                hub = None
        finally:
            if hub is not None:
                hub.stop()
            vm.stop()
        for setting, rows in passes.items():
            print(f"\n{setting}")
            print(f"{'range':5} {'grid':8} {'query':58} {'roost ms':>9} {'VM ms':>8} {'roost/VM':>8} {'first: roost':>13} {'VM':>6}")
            for name, grid, query, r_first, r, v_first, v in rows:
                print(f"{name:5} {grid:8} {query:58} {r * 1000:9.1f} {v * 1000:8.1f} {r / v:8.2f} {r_first * 1000:13.1f} {v_first * 1000:6.1f}")
        # remote write: the newest 7 days of every series through the export path
        readings = []
        for metric, labels, ts, values in generate(n_series=args.series, days=7):
            series = Series.of(metric, labels)
            readings += [Reading(series, t * 1000, v) for t, v in zip(ts.tolist(), values.tolist())]
        vm2 = VictoriaMetrics(work / "vm2")
        try:
            rate = asyncio.run(remote_write_throughput(readings, vm2.url + "/api/v1/write", work))
            vm2.flush()
            got = json.loads(urllib.request.urlopen(vm2.url + "/api/v1/series/count").read())["data"]
        finally:
            vm2.stop()
        print(f"\nremote write into VictoriaMetrics: {len(readings):,} samples at {rate:,.0f} samples/s "
              f"({got} series there); the reference workload needs {args.series / 15:.1f} samples/s")


if __name__ == "__main__":
    main()
