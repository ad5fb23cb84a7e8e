"""roost's PromQL answers equal Prometheus 2.42's, point by point, on the same data.

The data set is written into roost's store and backfilled into a real Prometheus (`promtool tsdb
create-blocks-from openmetrics`); every query runs as `/api/v1/query_range` against both over the same
start/end/step and the answers are compared series by series and step by step (relative tolerance 1e-9).
It has counters with resets (one reset right after a gap), gauges with several label sets, irregular sample
spacing, gaps longer than the 5-minute lookback, and samples exactly on window edges (15 s samples, 60 s steps).
Two days of water and outdoor series, some sampled exactly on the hour with a reset exactly on one, are queried
on hour- and 5-minute-aligned grids too, where roost answers from bucket summaries instead of raw samples.
"""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest

from conftest import HubProcess
from peers import Prometheus, get_json, need
from roost.model import Series
from roost.store import Store, StoreOptions

T0 = 1_700_000_000_000  # ms, 2023-11-14T22:13:20Z
SPAN = 3 * 3_600_000
START = T0 + 10 * 60_000  # a range whose first windows reach back before the data starts is covered too
END = T0 + SPAN + 10 * 60_000
HOUR = 3_600_000
DAY = 24 * HOUR
H0 = T0 - T0 % HOUR  # 22:00, the hour the short series start in


def _dataset() -> dict[Series, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(42)
    data = {}
    regular = T0 + np.arange(0, SPAN, 15_000)

    def counter(ts, rate, resets_at=()):
        inc = rng.uniform(0, 2 * rate, len(ts)).round(3)
        v = np.cumsum(inc)
        for r in resets_at:  # the device restarts: its counter starts again near zero
            i = int(np.searchsorted(ts, T0 + r))
            v[i:] -= v[i] - inc[i]
        return ts, v.round(3)

    # energy meter m1: regular 15 s, two resets
    data[Series.of("energy_kwh_total", meter="m1")] = counter(regular, 0.01, resets_at=(3_600_000, 7_800_000))
    # energy meter m2: irregular 5-40 s, a 20-minute gap, a reset right after it
    irregular = T0 + np.cumsum(rng.integers(5_000, 40_000, 600))
    irregular = irregular[irregular < T0 + SPAN]
    irregular = irregular[(irregular < T0 + 4_000_000) | (irregular > T0 + 5_200_000)]
    data[Series.of("energy_kwh_total", meter="m2")] = counter(irregular, 0.02, resets_at=(5_200_001,))
    for job, code, rate, resets in (("api", "200", 5, (1_800_000,)), ("api", "500", 0.3, ()), ("web", "200", 2, (9_000_000,))):
        ts = regular if job == "api" else T0 + np.arange(7_000, SPAN, 30_000)
        data[Series.of("requests_total", job=job, code=code)] = counter(ts, rate, resets)
    for i, (room, floor) in enumerate((("lounge", "0"), ("bedroom", "1"), ("entry", "0"))):
        ts = regular.copy()
        if room == "bedroom":  # a 12-minute gap: instant selectors go stale after 5 minutes
            ts = ts[(ts < T0 + 6_000_000) | (ts > T0 + 6_720_000)]
        walk = 20 + i + np.cumsum(rng.normal(0, 0.05, len(ts)))
        data[Series.of("temperature_celsius", room=room, floor=floor)] = (ts, walk.round(2))
    for room in ("lounge", "bedroom"):
        ts = T0 + np.sort(rng.choice(np.arange(0, SPAN, 1000), 900, replace=False))
        data[Series.of("humidity_percent", room=room)] = (ts, np.clip(50 + np.cumsum(rng.normal(0, 0.3, len(ts))), 5, 95).round(1))
    # Two days around H0. w1: every minute on the minute (a sample on every hour), a reset exactly on an hour,
    # one inside an hour, a 2-hour gap. w2: irregular, whole seconds, resets.
    minutes = H0 - DAY + np.arange(0, 2 * DAY, 60_000)
    minutes = minutes[(minutes <= H0 - 6 * HOUR) | (minutes >= H0 - 4 * HOUR)]
    data[Series.of("water_liters_total", meter="w1")] = counter(minutes, 0.5, resets_at=(-10 * HOUR - T0 % HOUR, -3 * HOUR + 30_000))
    seconds = H0 - DAY + np.cumsum(rng.integers(20, 400, 900) * 1000)
    data[Series.of("water_liters_total", meter="w2")] = counter(seconds[seconds < H0 + DAY], 2.0, resets_at=(-HOUR,))
    # outdoor: garden every 5 minutes on the mark with a 90-minute gap; roof at odd milliseconds
    marks = H0 - DAY + np.arange(0, 2 * DAY, 300_000)
    marks = marks[(marks < H0 + 2 * HOUR) | (marks > H0 + 3 * HOUR + 1_800_000)]
    data[Series.of("outdoor_celsius", site="garden")] = (marks, (8 + np.cumsum(rng.normal(0, 0.2, len(marks)))).round(2))
    odd = H0 - DAY + np.cumsum(rng.integers(30_000, 200_000, 1500))
    odd = odd[odd < H0 + DAY]
    data[Series.of("outdoor_celsius", site="roof")] = (odd, (6 + np.cumsum(rng.normal(0, 0.2, len(odd)))).round(2))
    return data


# Each query names what it covers.
QUERIES = [
    ("temperature_celsius", "instant selector, lookback, staleness after a gap"),
    ('temperature_celsius{room="lounge"}', "= matcher"),
    ('temperature_celsius{room!="lounge"}', "!= matcher"),
    ('temperature_celsius{room=~"lo.*|entry"}', "=~ matcher, alternation, anchoring"),
    ('temperature_celsius{room!~"bed.*"}', "!~ matcher"),
    ('{__name__=~"humidity_percent|temperature_celsius", room="lounge"}', "__name__ regex across metrics"),
    ("rate(energy_kwh_total[5m])", "rate: extrapolation, counter resets, irregular spacing, gap"),
    ("rate(energy_kwh_total[1m])", "rate with 1-4 samples per window (edges exactly on samples)"),
    ("increase(energy_kwh_total[10m])", "increase: extrapolation, zero-point clamp"),
    ("delta(temperature_celsius[15m])", "delta on a gauge"),
    ("delta(energy_kwh_total[5m])", "delta ignores counter resets"),
    ("irate(requests_total[5m])", "irate: last two samples, resets"),
    ("rate(requests_total[2m])", "rate on 30 s and 15 s counters"),
    ("increase(requests_total[1h])", "increase over a long window with resets"),
    ("avg_over_time(temperature_celsius[10m])", "avg_over_time"),
    ("min_over_time(temperature_celsius[7m])", "min_over_time, window not a multiple of the step"),
    ("max_over_time(humidity_percent[30m])", "max_over_time on irregular samples"),
    ("sum_over_time(humidity_percent[5m])", "sum_over_time"),
    ("count_over_time(energy_kwh_total[5m])", "count_over_time, closed window edges"),
    ("last_over_time(temperature_celsius[20m])", "last_over_time keeps __name__, bridges the gap"),
    ("avg_over_time(temperature_celsius[10m] offset 30m)", "offset"),
    ("sum(temperature_celsius)", "sum without grouping"),
    ("avg by (floor) (temperature_celsius)", "avg by"),
    ("max without (room) (temperature_celsius)", "max without"),
    ("min by (job) (rate(requests_total[5m]))", "min by over a range function"),
    ("count(requests_total)", "count"),
    ("sum by (job) (increase(requests_total[15m]))", "sum by over increase"),
    ("sum(rate(energy_kwh_total[5m])) * 3600", "aggregation times a scalar"),
    ("temperature_celsius * 1.8 + 32", "vector-scalar arithmetic drops __name__"),
    ("humidity_percent % 7", "% (Go's math.Mod)"),
    ("temperature_celsius ^ 2", "^"),
    ("-temperature_celsius", "unary minus"),
    ("2 ^ 3 * 4 - 1", "scalar arithmetic"),
    ("temperature_celsius > 21", "comparison filter keeps __name__"),
    ("temperature_celsius > bool 21", "bool comparison"),
    ("21.5 >= temperature_celsius", "scalar on the left of a filter keeps the vector's value"),
    ("humidity_percent != 50", "!= filter"),
    ("temperature_celsius - on(room) humidity_percent", "vector-vector with on()"),
    ("temperature_celsius / ignoring(floor) humidity_percent", "vector-vector with ignoring()"),
    ('rate(requests_total{code="500"}[5m]) / ignoring(code) rate(requests_total{code="200"}[5m])', "ratio of rates"),
    ("temperature_celsius < bool on(room) humidity_percent", "vector-vector bool comparison"),
    ("max(max_over_time(temperature_celsius[1h])) - min(min_over_time(temperature_celsius[1h]))", "scalar-free vector-vector on empty labels"),
    # whole-hour windows: from summaries on the hour grid
    ("outdoor_celsius", "instant selector: a sample on the step, the last one before it, staleness in a gap"),
    ("max_over_time(outdoor_celsius[1h])", "max_over_time with a sample on both window edges"),
    ("min_over_time(outdoor_celsius[2h])", "min_over_time over two buckets"),
    ("avg_over_time(outdoor_celsius[1d])", "avg_over_time over a day"),
    ("last_over_time(outdoor_celsius[1h])", "last_over_time across a gap"),
    ("delta(outdoor_celsius[1h])", "delta from bucket edges"),
    ("sum_over_time(water_liters_total[1h])", "sum_over_time"),
    ("count_over_time(water_liters_total[1h])", "count_over_time, closed window edges"),
    ("rate(water_liters_total[1h])", "rate: a reset exactly on a bucket edge, one inside a bucket, a gap"),
    ("increase(water_liters_total[1d])", "increase over a day of buckets"),
    ("increase(water_liters_total[1h] offset 1h)", "increase with an offset"),
    ("sum(increase(water_liters_total[1d]))", "daily total"),
    ("max by (site) (max_over_time(outdoor_celsius[1h]))", "max by over max_over_time"),
]

GRIDS = [
    (START, END, 60_000),  # steps on samples of the 15 s series
    (START + 7_000, END - 3_000, 113_000),  # steps between samples
    (H0 - DAY, H0 + DAY, HOUR),  # whole hours: hourly summaries
    (START - START % 300_000, END - END % 300_000, 300_000),  # whole 5 minutes: 5-minute summaries
]


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    need("promtool")
    work = tmp_path_factory.mktemp("promql")
    data = _dataset()
    store = Store.open(work / "roost", StoreOptions(fsync=False), writer=True)
    try:
        for series, (ts, values) in data.items():
            store.write_bulk(series, ts, values)
    finally:
        store.close()
    lines = []
    for series, (ts, values) in data.items():
        labels = ",".join(f'{k}="{v}"' for k, v in series.labels)
        lines += [f"{series.metric}{{{labels}}} {v!r} {t / 1000:.3f}" for t, v in zip(ts.tolist(), values.tolist())]
    (work / "data.om").write_text("\n".join(lines) + "\n# EOF\n")
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(work / "data.om"), str(work / "tsdb")],
        check=True, capture_output=True,
    )
    prometheus = Prometheus(work / "prom", tsdb=work / "tsdb")
    hub = HubProcess(work / "roost")
    try:
        yield prometheus.url, hub.url
    finally:
        hub.kill(15)
        prometheus.stop()


def _answer(url: str, query: str, grid) -> dict:
    start, end, step = grid
    body = get_json(url + "/api/v1/query_range", {"query": query, "start": start / 1000, "end": end / 1000, "step": step / 1000})
    assert body["status"] == "success", f"{url}: {body}"
    assert body["data"]["resultType"] == "matrix"
    return {
        tuple(sorted(r["metric"].items())): {float(t): float(v) for t, v in r["values"]} for r in body["data"]["result"]
    }


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b)) + 1e-12


@pytest.mark.parametrize("grid", GRIDS, ids=["step60s", "step113s-offset", "step1h-hours", "step5m-5minutes"])
@pytest.mark.parametrize("query,covers", QUERIES, ids=[q for q, _c in QUERIES])
def test_query_range_matches_prometheus(peers, query, covers, grid):
    prometheus_url, roost_url = peers
    expected = _answer(prometheus_url, query, grid)
    actual = _answer(roost_url, query, grid)
    assert expected, f"the reference answered nothing for {query!r}: the data set does not cover it"
    assert sorted(actual) == sorted(expected), f"{covers}: series differ"
    for metric, points in expected.items():
        got = actual[metric]
        assert sorted(got) == sorted(points), f"{covers}: {metric}: steps differ: {sorted(set(got) ^ set(points))[:5]}"
        wrong = [(t, got[t], v) for t, v in points.items() if not _close(got[t], v)]
        assert not wrong, f"{covers}: {metric}: {len(wrong)} values differ, first (t, roost, prometheus): {wrong[:3]}"


def test_buckets_place_each_series_summary_on_the_grid_whatever_its_gaps():
    """A series whose buckets are one run inside the range (data starting or ending in it) is copied as a block;
    one with gaps is scattered; both give the grid of `summarize`'s rows with empty buckets around them."""
    from roost.promql.engine import _EMPTY_BUCKET, _Buckets
    from roost.store.summaries import summarize

    width, lo = 300_000, 1_700_006_400_000
    ts = np.arange(lo + 10 * width, lo + 20 * width, 15_000)
    run = summarize(ts, np.arange(len(ts), dtype=float), width)  # buckets 10..19 of 30
    gappy = summarize(np.delete(ts, np.s_[40:100]), np.delete(np.arange(len(ts), dtype=float), np.s_[40:100]), width)
    b = _Buckets([run, gappy], lo, lo + 30 * width, width)
    for i, summary in enumerate((run, gappy)):
        expected = np.repeat(_EMPTY_BUCKET, 30, axis=1)
        expected[:, ((summary.ts - lo) // width).astype(int)] = summary.rows
        got = np.stack([b.count, b.sum, b.min, b.max, b.first_ts, b.first, b.last_ts, b.last, b.resets])[:, i * 30 : (i + 1) * 30]
        np.testing.assert_array_equal(got, expected[1:])


@pytest.mark.parametrize("grid", GRIDS[2:], ids=["step1h-hours", "step5m-5minutes"])
def test_summary_batches_do_not_change_answers(tmp_path, monkeypatch, grid):
    """Series are evaluated from summaries in batches that fit the CPU's cache: one series a batch gives every
    query the same answer, bit for bit, as all of them in one."""
    from roost import promql
    from roost.promql import engine

    store = Store.open(tmp_path / "roost", StoreOptions(fsync=False), writer=True)
    try:
        for series, (ts, values) in _dataset().items():
            store.write_bulk(series, ts, values)

        def answers() -> dict:
            out = {}
            for query, _covers in QUERIES:
                node = promql.parse(query)
                view = store.read_view(vs.selector for vs, _back in promql.selections(node))
                out[query] = view.run(lambda v, node=node: promql.Evaluator(v, *grid).eval(node))
            return out

        whole = answers()
        monkeypatch.setattr(engine, "_BATCH_BUCKETS", 1)
        for query, got in answers().items():
            if isinstance(got, np.ndarray):
                np.testing.assert_array_equal(got, whole[query])
                continue
            assert got.labels == whole[query].labels, query
            np.testing.assert_array_equal(got.present, whole[query].present, err_msg=query)
            np.testing.assert_array_equal(got.values, whole[query].values, err_msg=query)
    finally:
        store.close()
