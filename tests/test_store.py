"""The embedded store: durability, compaction, rollups, late data, retention, concurrent readers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from roost.errors import StoreError
from roost.model import Reading, Series, now_ms
from roost.selector import Selector
from roost.store import DAY_MS, RetentionRule, Samples, Store, StoreOptions
from roost.store.codec import unscale
from roost.store.summaries import COUNT, LAST, summarize
from roost.store.wal import segment_path

T0 = 1_700_006_400_000  # 2023-11-15T00:00:00Z, a day boundary
LOUNGE = Series.of("temperature_celsius", room="lounge")
BEDROOM = Series.of("temperature_celsius", room="bedroom")
ALL_TEMPS = Selector.parse("temperature_celsius")


def _raw(store: Store, series: Series, start: int = 0, end: int = 2**62) -> tuple[list[int], list[float]]:
    sel = Selector.parse(str(series))
    found = list(store.read(sel, start, end))
    if not found:
        return [], []
    return found[0].ts.tolist(), found[0].values.tolist()


def _reference_buckets(ts: np.ndarray, values: np.ndarray, step: int, agg: str) -> dict[int, float]:
    out: dict[int, list[float]] = {}
    for t, v in zip(ts.tolist(), values.tolist()):
        out.setdefault(t - t % step, []).append(v)
    fn = {"mean": np.mean, "min": min, "max": max, "sum": sum, "count": len, "last": lambda xs: xs[-1]}[agg]
    return {k: float(fn(v)) for k, v in out.items()}


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "data", writer=True)
    yield s
    s.close()


def test_readings_are_readable_before_and_after_compaction(store):
    readings = [Reading(LOUNGE, T0 + i * 15_000, 20 + i / 100) for i in range(100)]
    assert store.write(readings).accepted == 100
    before = _raw(store, LOUNGE)
    assert before[0] == [r.ts_ms for r in readings]
    store.compact(now=T0 + 2 * DAY_MS)
    assert store.head_samples == 0
    assert _raw(store, LOUNGE) == before


def test_duplicate_timestamp_keeps_the_last_value_also_in_compacted_days(store):
    store.write([Reading(LOUNGE, T0, 1.0), Reading(LOUNGE, T0, 2.0)])
    assert _raw(store, LOUNGE) == ([T0], [2.0])
    store.compact(now=T0 + 2 * DAY_MS)
    store.write([Reading(LOUNGE, T0, 3.0)])
    assert _raw(store, LOUNGE) == ([T0], [3.0])
    store.compact(now=T0 + 2 * DAY_MS)
    assert _raw(store, LOUNGE) == ([T0], [3.0])


def test_late_and_out_of_order_samples_land_in_already_compacted_days(store):
    store.write([Reading(LOUNGE, T0 + i * 60_000, float(i)) for i in range(0, 100, 2)])
    store.compact(now=T0 + 5 * DAY_MS)
    store.write([Reading(LOUNGE, T0 + i * 60_000, float(i)) for i in range(99, 0, -2)])  # odd minutes, reversed
    ts, values = _raw(store, LOUNGE)
    assert ts == [T0 + i * 60_000 for i in range(100)] and values == [float(i) for i in range(100)]
    store.compact(now=T0 + 5 * DAY_MS)
    assert _raw(store, LOUNGE) == (ts, values)


@pytest.mark.parametrize("agg", ["mean", "min", "max", "last", "sum", "count"])
@pytest.mark.parametrize("step", [600_000, 3_600_000, 3 * 3_600_000, DAY_MS])
def test_bucketed_queries_match_a_reference_whether_from_rollups_or_raw(tmp_path, agg, step):
    rng = np.random.default_rng(3)
    ts = T0 + np.cumsum(rng.integers(5_000, 30_000, 40_000))  # irregular, about 9 days
    values = np.round(20 + rng.normal(0, 2, len(ts)), 2)
    with Store.open(tmp_path / "d", writer=True) as s:
        s.write_bulk(LOUNGE, ts, values, now=int(ts[-1]) + DAY_MS)  # all days finished: hourly rollups exist
        s.write([Reading(LOUNGE, int(ts[-1]) + 1000, 99.0)])  # plus a head sample
        start, end = int(ts[100]), int(ts[-1]) + 1000
        got = s.query(Selector.parse(str(LOUNGE)), start, end, step, agg)[0]
    lo, hi = start - start % step, end - end % step + step
    sel = (ts >= lo) & (ts < hi)
    want = _reference_buckets(np.append(ts[sel], end), np.append(values[sel], 99.0), step, agg)
    assert got.ts.tolist() == sorted(want)
    assert np.allclose(got.values, [want[k] for k in sorted(want)], rtol=1e-12, atol=1e-9)


def test_hourly_rollups_are_used_for_coarse_steps(store, monkeypatch):
    ts = T0 + np.arange(0, 3 * DAY_MS, 15_000)
    store.write_bulk(LOUNGE, ts, np.full(len(ts), 21.5), now=T0 + 10 * DAY_MS)
    decoded = []
    import roost.store.engine as engine

    real = engine.decode_chunk
    monkeypatch.setattr(engine, "decode_chunk", lambda blob: decoded.append(1) or real(blob))

    class Decoded(engine.Decoded):  # how sealed chunks are decoded for reads
        def __init__(self, blob):
            decoded.append(1)
            super().__init__(blob)

    monkeypatch.setattr(engine, "Decoded", Decoded)
    res = store.query(ALL_TEMPS, T0, T0 + 3 * DAY_MS - 1, DAY_MS, "mean")[0]
    assert res.values.tolist() == [21.5, 21.5, 21.5]
    assert decoded == []  # no raw chunk was touched
    store.query(ALL_TEMPS, T0, T0 + 3 * DAY_MS - 1, 600_000, "mean")
    assert len(decoded) == 3  # a fine step reads the raw day chunks


def test_nan_inf_and_the_cardinality_cap_are_rejected_and_counted(tmp_path):
    with Store.open(tmp_path / "d", StoreOptions(max_series=2), writer=True) as s:
        result = s.write(
            [
                Reading(LOUNGE, T0, float("nan")),
                Reading(LOUNGE, T0 + 1, float("inf")),
                Reading(LOUNGE, T0 + 2, 1.0),
                Reading(BEDROOM, T0, 2.0),
                Reading(Series.of("temperature_celsius", room="attic"), T0, 3.0),
            ]
        )
        assert result.accepted == 2
        assert result.rejected == {"nan": 1, "inf": 1, "cardinality_limit": 1}
        assert [(r.reason, r.reading.ts_ms, str(r)) for r in result.refused] == [
            ("nan", T0, f"{LOUNGE}: value is NaN"),
            ("inf", T0 + 1, f"{LOUNGE}: value is infinite"),
            ("cardinality_limit", T0, 'temperature_celsius{room="attic"}: new series refused: store.max_series reached'),
        ]
        assert [str(s) for _i, s in s.series()] == [str(LOUNGE), str(BEDROOM)]


def test_timestamps_before_1970_or_far_ahead_are_refused_and_long_reads_stay_cheap(tmp_path):
    now = now_ms()
    wild = [-1, now + 3 * DAY_MS, 2**53, 2**63 - 1]  # a device with a dead clock battery, or garbage
    with Store.open(tmp_path / "d", writer=True) as s:
        result = s.write([Reading(LOUNGE, ts, 1.0) for ts in wild] + [Reading(LOUNGE, now, 2.0)])
        assert result.accepted == 1 and result.rejected == {"bad_timestamp": 4}
        assert str(result.refused[0]) == f"{LOUNGE}: timestamp -1 ms is before 1970"
        assert str(result.refused[1]).endswith("ms is more than 2 days ahead of this hub's clock (check the device's clock)")
        assert s.write_bulk(BEDROOM, np.array([*wild, now - DAY_MS]), np.array([1.0] * 5)) == 1
        assert s.rejected["bad_timestamp"] == 8
        s.compact()
        # a read over every possible millisecond walks the days that hold data, not 10**11 of them
        assert _raw(s, LOUNGE, -(2**63), 2**63 - 1) == ([now], [2.0])
        assert _raw(s, BEDROOM, -(2**63), 2**63 - 1) == ([now - DAY_MS], [1.0])


def test_a_second_hub_on_the_same_store_is_refused(store, tmp_path):
    with pytest.raises(StoreError, match="another roost hub"):
        Store.open(tmp_path / "data", writer=True)


def test_a_reader_process_sees_the_hubs_uncompacted_and_compacted_data(store, tmp_path):
    store.write([Reading(LOUNGE, T0 + i, float(i)) for i in range(10)])
    store.sync()
    with Store.open(tmp_path / "data") as reader:
        assert _raw(reader, LOUNGE)[1] == [float(i) for i in range(10)]
        store.compact(now=T0 + DAY_MS)
        store.write([Reading(LOUNGE, T0 + 10, 10.0)])
        assert _raw(reader, LOUNGE)[1] == [float(i) for i in range(11)]
        assert reader.latest()[LOUNGE] == (T0 + 10, 10.0)


def test_a_torn_batch_at_the_tail_of_the_wal_is_cut_and_the_rest_kept(tmp_path):
    with Store.open(tmp_path / "d", writer=True) as s:
        s.write([Reading(LOUNGE, T0, 1.0)])
        seg = s._segment.path
    with open(seg, "ab") as f:
        f.write(b"\x40\x00\x00\x00garbage")  # a batch header promising 64 bytes, then a crash
    with Store.open(tmp_path / "d", writer=True) as s:
        assert _raw(s, LOUNGE) == ([T0], [1.0])
        s.write([Reading(LOUNGE, T0 + 1, 2.0)])
    with Store.open(tmp_path / "d", writer=True) as s:
        assert _raw(s, LOUNGE) == ([T0, T0 + 1], [1.0, 2.0])


def test_retention_deletes_old_days_and_downsamples_to_five_minute_rollups(tmp_path):
    ts = T0 + np.arange(0, 10 * DAY_MS, 15_000)
    values = np.round(np.sin(np.arange(len(ts)) / 500) * 5 + 20, 2)
    rules = (
        RetentionRule(Selector.parse('temperature_celsius{room="bedroom"}'), keep_ms=3 * DAY_MS),
        RetentionRule(ALL_TEMPS, raw_ms=5 * DAY_MS),
    )
    now = T0 + 10 * DAY_MS
    with Store.open(tmp_path / "d", StoreOptions(retention=rules), writer=True) as s:
        s.write_bulk(LOUNGE, ts, values, now=now)
        s.write_bulk(BEDROOM, ts, values, now=now)
        before = s.query(Selector.parse(str(LOUNGE)), T0, now - 1, 600_000, "mean")[0]
        stats = s.apply_retention(now=now)
        assert stats == {"chunks_deleted": 7, "chunks_downsampled": 5}
        bedroom_ts, _ = _raw(s, BEDROOM)
        assert min(bedroom_ts) >= now - 3 * DAY_MS
        after = s.query(Selector.parse(str(LOUNGE)), T0, now - 1, 600_000, "mean")[0]
        assert after.ts.tolist() == before.ts.tolist()
        assert np.allclose(after.values, before.values)  # 10-minute means survive on 5-minute rollups
        lounge_ts, _ = _raw(s, LOUNGE)
        assert np.diff(lounge_ts[: 10]).tolist() == [300_000] * 9  # raw is gone: one point per 5 minutes


_CRASH_WRITER = textwrap.dedent(
    """
    import sys
    from roost.model import Reading, Series
    from roost.store import Store
    s = Store.open(sys.argv[1], writer=True)
    series = [Series.of("power_watts", meter=f"m{i}") for i in range(5)]
    i = 0
    while True:
        s.write([Reading(se, 1_700_000_000_000 + i * 1000, float(i)) for se in series])
        s.sync()
        print(i, flush=True)  # acknowledged
        i += 1
        if i % 500 == 0:
            s.compact(now=1_700_000_000_000)
    """
)


def test_every_acknowledged_reading_survives_kill_9(tmp_path):
    data = tmp_path / "d"
    proc = subprocess.Popen([sys.executable, "-c", _CRASH_WRITER, str(data)], stdout=subprocess.PIPE, text=True)
    acked = -1
    deadline = time.monotonic() + 60
    while acked < 1300 and time.monotonic() < deadline:
        acked = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acked_more = [int(line) for line in proc.stdout.read().split()]  # acknowledged before the kill, still buffered
    acked = max([acked, *acked_more])
    assert acked >= 1300
    with Store.open(data, writer=True) as s:
        for i in range(5):
            ts, values = _raw(s, Series.of("power_watts", meter=f"m{i}"))
            assert values[: acked + 1] == [float(k) for k in range(acked + 1)]
    assert not segment_path(data / "wal", 0).exists()


def test_garbage_collection_reclaims_rewritten_and_expired_chunks_and_keeps_the_rest(tmp_path, monkeypatch):
    import roost.store.segments as segments

    monkeypatch.setattr(segments, "FILE_LIMIT", 20_000)  # small data files, so there are several to collect
    ts = T0 + np.arange(0, 20 * DAY_MS, 60_000)
    values = np.round(np.random.default_rng(1).normal(20, 1, len(ts)), 2)
    rules = (RetentionRule(Selector.parse('temperature_celsius{room="bedroom"}'), keep_ms=5 * DAY_MS),)
    now = T0 + 20 * DAY_MS
    with Store.open(tmp_path / "d", StoreOptions(retention=rules), writer=True) as s:
        s.write_bulk(LOUNGE, ts, values, now=now)
        s.write_bulk(BEDROOM, ts, values, now=now)
        s.write_bulk(LOUNGE, ts[:5000], values[:5000] + 1, now=now)  # rewrites the first days: old bytes are garbage
        s.apply_retention(now=now)
        files_before = sorted((tmp_path / "d" / "chunks").iterdir())
        removed = s.collect_garbage()
        assert removed >= 1
        assert len(sorted((tmp_path / "d" / "chunks").iterdir())) == len(files_before) - removed
        got_ts, got_values = _raw(s, LOUNGE)
        assert got_ts == ts.tolist()
        assert got_values == (values[:5000] + 1).tolist() + values[5000:].tolist()
        assert min(_raw(s, BEDROOM)[0]) >= now - 5 * DAY_MS


def test_a_read_view_reads_in_a_worker_thread_what_was_stored_when_it_was_taken(store):
    store.write_bulk(LOUNGE, T0 + np.arange(0, DAY_MS, 60_000), np.arange(1440.0), now=T0 + 5 * DAY_MS)  # sealed day
    late = [Reading(LOUNGE, T0 + 30_000 + i * 60_000, -1.0) for i in range(60)]  # late data for the sealed day
    store.write(late + [Reading(LOUNGE, T0 + DAY_MS + i * 60_000, 5.0) for i in range(10)])
    view = store.read_view()
    store.write([Reading(LOUNGE, T0 + DAY_MS + 3_600_000, 9.0)])  # after the view was taken: not in it

    def both(v):
        (raw,) = v.read(Selector.parse(str(LOUNGE)), T0, T0 + 2 * DAY_MS)
        ((_series, hourly),) = v.summaries(Selector.parse(str(LOUNGE)), T0, T0 + 2 * DAY_MS, 3_600_000)
        return raw, hourly

    with ThreadPoolExecutor(1) as pool:
        raw, hourly = pool.submit(view.run, both).result()
    assert len(raw.ts) == 1440 + 60 + 10 and raw.values[1] == -1.0 and raw.ts[-1] == T0 + DAY_MS + 9 * 60_000
    np.testing.assert_array_equal(hourly.rows, summarize(raw.ts, raw.values, 3_600_000).rows)
    assert hourly.rows[COUNT, 0] == 120 and hourly.rows[LAST, -1] == 5.0
    with pytest.raises(StoreError, match="inside run"):
        list(view.read(ALL_TEMPS, T0, T0 + DAY_MS))


def test_selectors_match_the_series_a_view_was_taken_with_and_new_series_in_later_views(store):
    power = Series.of("power_watts", room="lounge")
    store.write([Reading(LOUNGE, T0, 1.0), Reading(power, T0, 2.0)])
    lounge = Selector.parse('{room="lounge"}')
    view = store.read_view()
    assert view.count(lounge) == 2 and view.count(ALL_TEMPS) == 1
    assert store.series(Selector.parse('temperature_celsius{room=~"lounge|bedroom"}')) == [(1, LOUNGE)]
    store.write([Reading(BEDROOM, T0, 3.0)])
    assert view.count(ALL_TEMPS) == 1  # taken before the bedroom's series was
    assert store.read_view().count(ALL_TEMPS) == 2 and store.read_view().count(lounge) == 2
    assert [s for _sid, s in store.series(Selector.parse('temperature_celsius{room=~"lounge|bedroom"}'))] == [LOUNGE, BEDROOM]
    assert store.series(Selector.parse("pressure_hpa")) == []
    assert [s for _sid, s in store.series()] == [LOUNGE, power, BEDROOM]
    # A view for a query's selectors copies only their series' head samples, and reads nothing else.
    view = store.read_view([ALL_TEMPS])
    assert sorted(view._heads) == [1, 3]
    found = view.run(lambda v: [(d.series, d.values.tolist()) for d in v.read(ALL_TEMPS, T0, T0 + 1)])
    assert found == [(LOUNGE, [1.0]), (BEDROOM, [3.0])]
    with pytest.raises(StoreError, match="other selectors"):
        view.run(lambda v: list(v.read(lounge, T0, T0 + 1)))


def test_reads_in_a_query_thread_stay_right_while_garbage_collection_rewrites_and_deletes_data_files(tmp_path, monkeypatch):
    import threading

    import roost.store.segments as segments

    monkeypatch.setattr(segments, "FILE_LIMIT", 8_000)  # a data file per few chunks: every pass deletes several
    pread = os.pread

    def descheduled_pread(fd: int, length: int, offset: int) -> bytes:
        time.sleep(0.0002)  # a reader may lose the CPU between taking a descriptor and reading through it
        return pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", descheduled_pread)
    ts = T0 + np.arange(0, 6 * DAY_MS, 60_000)
    rooms = [Series.of("temperature_celsius", room=f"r{i}") for i in range(3)]
    expected = {s: np.round(np.random.default_rng(i).normal(20, 1, len(ts)), 2) for i, s in enumerate(rooms)}
    now = T0 + 10 * DAY_MS
    failures: list[BaseException] = []
    stop = threading.Event()
    reads = 0
    with Store.open(tmp_path / "d", StoreOptions(cache_bytes=0), writer=True) as s:
        for series, values in expected.items():
            s.write_bulk(series, ts, values, now=now)
        view = s.read_view()

        def reader() -> None:
            nonlocal reads
            try:
                while not stop.is_set():
                    got = view.run(lambda v: {d.series: (d.ts, d.values) for d in v.read(ALL_TEMPS, T0, now)})
                    for series, values in expected.items():
                        assert got[series][0].tolist() == ts.tolist()
                        assert got[series][1].tolist() == values.tolist()
                    reads += 1
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failures.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        removed = 0
        for _ in range(25):
            if failures:
                break
            for series, values in expected.items():
                s.write_bulk(series, ts, values, now=now)  # the same samples appended anew: the old bytes are garbage
            removed += s.collect_garbage()
        while not failures and reads < 20 and all(t.is_alive() for t in threads):
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join()
    if failures:
        raise failures[0]
    assert removed >= 25 and reads >= 20


def test_hourly_summaries_of_sealed_days_come_from_the_rollups_without_decoding_a_chunk(tmp_path, monkeypatch):
    import roost.store.engine as engine
    from roost.store.blocks import decode_block, encode_rows
    from roost.store.summaries import RESETS, SUM

    ts = T0 + 7_000 + np.arange(0, 40 * DAY_MS, 15_000)  # two rollup blocks, off the hour by 7 s
    rng = np.random.default_rng(4)
    temps = np.round(21 + np.cumsum(rng.normal(0, 0.05, len(ts))), 2)
    energy = np.round(np.cumsum(rng.uniform(0, 0.01, len(ts))), 3)
    energy[len(ts) // 3 + 17 :] -= energy[len(ts) // 3 + 17]  # the meter restarted from zero once, mid-hour
    meter = Series.of("energy_kwh_total", meter="main")
    decoded: list[int] = []

    class Decoded(engine.Decoded):
        def __init__(self, blob):
            decoded.append(1)
            super().__init__(blob)

    def summaries(store: Store, series: Series, resets: bool):
        view = store.read_view()
        selector = Selector.parse(str(series))
        found = view.run(lambda v: list(v.summaries(selector, T0, T0 + 40 * DAY_MS, 3_600_000, resets=resets)))
        return found[0][1].rows

    with Store.open(tmp_path / "d", writer=True) as s:
        s.write_bulk(LOUNGE, ts, temps, now=T0 + 50 * DAY_MS)
        s.write_bulk(meter, ts, energy, now=T0 + 50 * DAY_MS)
        real = engine.decode_chunk
        monkeypatch.setattr(engine, "decode_chunk", lambda blob: decoded.append(1) or real(blob))
        monkeypatch.setattr(engine, "Decoded", Decoded)
        for series, values, resets in ((LOUNGE, temps, False), (meter, energy, True)):
            rows = summaries(s, series, resets)
            expected = summarize(ts, values, 3_600_000).rows
            assert decoded == []  # nothing decoded: every day came from its rollup block
            fields = [f for f in range(len(expected)) if f != SUM and (resets or f != RESETS)]
            np.testing.assert_array_equal(rows[fields], expected[fields])
            np.testing.assert_allclose(rows[SUM], expected[SUM], rtol=1e-12)  # the rollups' sums are rounded exactly
        assert summaries(s, meter, True)[RESETS].sum() > 0
        # A gauge falls in most hours: its resets are not stored, so a caller that needs them gets them decoded.
        rows = summaries(s, LOUNGE, True)
        assert decoded and rows[RESETS].sum() == summarize(ts, temps, 3_600_000).rows[RESETS].sum()
        # Blocks written before the extras existed (version 1) are summarized from the chunks, as before.
        for rid, blob in s.conn.execute("SELECT id, data FROM rollup_1h").fetchall():
            old_rows, mask, _extras = decode_block(blob)
            s.conn.execute("UPDATE rollup_1h SET data = ? WHERE id = ?", (encode_rows(old_rows, mask), rid))
        decoded.clear()
        rows = summaries(s, meter, True)
        assert len(decoded) == 40
        np.testing.assert_array_equal(rows, summarize(ts, energy, 3_600_000).rows)


def _five_minute_summaries(store: Store, series: Series, start: int, end: int) -> np.ndarray:
    selector = Selector.parse(str(series))
    found = store.read_view().run(lambda v: list(v.summaries(selector, start, end, 300_000)))
    return found[0][1].rows


def _count_decodes(monkeypatch) -> list[int]:
    import roost.store.engine as engine

    decoded: list[int] = []
    real_decode, real_decoded = engine.decode_chunk, engine.Decoded

    class Decoded(real_decoded):
        def __init__(self, blob):
            decoded.append(1)
            super().__init__(blob)

    monkeypatch.setattr(engine, "decode_chunk", lambda blob: decoded.append(1) or real_decode(blob))
    monkeypatch.setattr(engine, "Decoded", Decoded)
    return decoded


def test_warming_summarizes_the_newest_week_of_every_series_so_a_week_long_query_decodes_nothing(tmp_path, monkeypatch):
    ts = T0 + 7_000 + np.arange(0, 12 * DAY_MS, 15_000)
    temps = np.round(21 + np.cumsum(np.random.default_rng(5).normal(0, 0.05, len(ts))), 2)
    with Store.open(tmp_path / "d", writer=True) as s:
        s.write_bulk(LOUNGE, ts, temps, now=T0 + 20 * DAY_MS)
        s.write_bulk(BEDROOM, ts, temps + 1, now=T0 + 20 * DAY_MS)
        assert s.warm_summaries(days=1) == 2
        assert s.warm_summaries() == 2 * 8  # the newest 8 days of both series
        decoded = _count_decodes(monkeypatch)
        start, end = T0 + 5 * DAY_MS, T0 + 12 * DAY_MS  # 7 days, all among the newest 8
        rows = _five_minute_summaries(s, BEDROOM, start, end)
        assert decoded == []
        inside = (ts >= start) & (ts < end)
        np.testing.assert_array_equal(rows, summarize(ts[inside], temps[inside] + 1, 300_000).rows)
        _five_minute_summaries(s, BEDROOM, T0 + 3 * DAY_MS, T0 + 4 * DAY_MS)  # older than the newest 8 days
        assert len(decoded) == 1


def test_days_sealed_by_compaction_keep_their_five_minute_summaries(tmp_path, monkeypatch):
    day = T0 + 30 * DAY_MS
    with Store.open(tmp_path / "d", writer=True) as s:
        kitchen = Series.of("temperature_celsius", room="kitchen")
        early = [Reading(LOUNGE, day + i * 60_000, float(i % 7)) for i in range(720)]
        quiet = [Reading(kitchen, day + i * 60_000, 20.0 - i % 3) for i in range(720)]  # nothing after midday
        s.write(early + quiet)
        s.compact(now=day + 13 * 3_600_000)  # the day is still open
        late = [Reading(LOUNGE, day + i * 60_000, float(i % 5)) for i in range(720, 1440)]
        late += [Reading(BEDROOM, day + i * 60_000, 2.0) for i in range(1440)]
        s.write(late)
        # sealed: the lounge's open chunk with new samples, the bedroom's from the head, the kitchen's open chunk alone
        s.compact(now=day + DAY_MS + 60_000)
        decoded = _count_decodes(monkeypatch)
        for series, readings in ((LOUNGE, early + late[:720]), (BEDROOM, late[720:]), (kitchen, quiet)):
            rows = _five_minute_summaries(s, series, day, day + DAY_MS)
            expected = summarize(np.array([r.ts_ms for r in readings]), np.array([r.value for r in readings]), 300_000)
            np.testing.assert_array_equal(rows, expected.rows)
        assert decoded == []


def test_a_query_reads_samples_instead_of_summaries_the_store_could_not_keep(tmp_path, monkeypatch):
    """Summaries of more series-days than the summary cache (a quarter of `cache_bytes`) holds would be made again
    from the chunks on every read: the query reads the samples instead, and answers the same."""
    from roost import promql
    from roost.api.prometheus import _range_body
    from roost.store import engine

    rng = np.random.default_rng(5)
    ts = np.arange(T0, T0 + 3 * DAY_MS, 15_000)
    with Store.open(tmp_path / "d", StoreOptions(fsync=False), writer=True) as s:
        for room in range(12):
            s.write_bulk(Series.of("humidity_percent", room=f"r{room}"), ts, np.round(rng.uniform(40, 60, len(ts)), 1),
                         now=T0 + 4 * DAY_MS)
    asked: list[int] = []
    summaries = engine.ReadView.summaries

    def spy(self, *args, **kw):
        asked.append(1)
        return summaries(self, *args, **kw)

    monkeypatch.setattr(engine.ReadView, "summaries", spy)
    queries = ["avg(humidity_percent)", "max by (room) (max_over_time(humidity_percent[1h]))"]

    def answers(cache_bytes: int) -> list[bytes]:
        with Store.open(tmp_path / "d", StoreOptions(fsync=False, cache_bytes=cache_bytes), writer=False) as s:
            out = []
            for query in queries:
                node = promql.parse(query)
                start, end, step = T0 + DAY_MS, T0 + 3 * DAY_MS - 600_000, 600_000  # on the 5-minute grid
                view = s.read_view()
                out.append(view.run(lambda v: _range_body(promql.Evaluator(v, start, end, step).eval(node), start, end, step)))
            return out

    from_summaries = answers(128 * 1024 * 1024)
    assert len(asked) == 2
    # 12 series x 2 or 3 days of 5-minute summaries are 553 or 829 kB: more than 3/4 of a 512 kB summary cache
    asked.clear()
    assert answers(2 * 1024 * 1024) == from_summaries
    assert asked == []


def test_samples_answer_as_the_expanded_read_does(tmp_path):
    """`ReadView.samples` leaves steady days compact and finds windows, values and counter resets by arithmetic;
    every answer must be what the arrays `read` returns give: for regular days, days stamped on arrival (offsets
    under and over the interval), irregular days, head samples written into a sealed day, -0.0, whole-float and
    undecimal values, a counter with resets inside days and across a day's edge, and ranges that start and end
    inside days."""
    rng = np.random.default_rng(11)
    day = DAY_MS
    regular = np.arange(T0, T0 + 3 * day, 15_000)
    irregular = np.sort(rng.choice(np.arange(T0 + 3 * day, T0 + 4 * day, 1_000), 3_000, replace=False))
    counter = np.cumsum(rng.integers(0, 5, len(regular))) / 1000
    counter[len(counter) // 3 + 17 :] -= counter[len(counter) // 3 + 17]  # a reset inside day 2
    counter[5760:] += 0.5  # ... and values that step up at day 2's start, then
    counter[2 * 5760] = 0.0  # one that drops to zero just as day 3 begins
    arrived = regular + rng.integers(0, 1_000, len(regular))
    shuffled = np.unique(regular + rng.integers(0, 25_000, len(regular)))  # offsets wider than the interval
    cases = {
        Series.of("t", room="regular"): (regular, np.round(rng.normal(20, 2, len(regular)), 2)),
        Series.of("t", room="arrived"): (arrived, np.round(rng.normal(20, 2, len(regular)), 2)),
        Series.of("t", room="shuffled"): (shuffled, np.round(rng.normal(50, 9, len(shuffled)), 1)),
        Series.of("t", room="floats"): (regular, rng.normal(0, 1, len(regular))),  # no decimal scale
        Series.of("t", room="zeros"): (regular, np.where(rng.random(len(regular)) < 0.3, -0.0, 1.5)),
        Series.of("t", room="mixed"): (np.concatenate([regular, irregular]), np.round(rng.uniform(0, 9, len(regular) + len(irregular)), 1)),
        Series.of("t", room="counter"): (regular, np.round(counter, 3)),
    }
    with Store.open(tmp_path / "d", StoreOptions(fsync=False), writer=True) as s:
        for series, (ts, values) in cases.items():
            s.write_bulk(series, ts, values, now=T0 + 5 * day)
        # late readings into a sealed day stay in the head; and a few after the bulk data
        late = Series.of("t", room="regular")
        s.write([Reading(late, T0 + day + 7_000, 99.0), Reading(late, T0 + 4 * day + 60_000, 5.0)])
        selector = Selector.parse("t")
        for lo, hi in ((T0 - 600_000, T0 + 5 * day), (T0 + 200_001, T0 + 2 * day + 7), (T0 + day - 30_000, T0 + 3 * day + 99_999)):
            view = s.read_view([selector])

            def check(v):
                expected = {data.series: (data.ts.copy(), data.values.copy()) for data in v.read(selector, lo, hi)}
                checked = 0
                gap = hi - lo + 120_000  # joined, each series after the one before (promql's batches)
                pieces, joined_ts, joined_values = [], [], []
                for series, samples in v.samples(selector, lo, hi):
                    ts, values = expected.pop(series)
                    pieces.append(samples.shifted(len(pieces) * gap))
                    joined_ts.append(ts + (len(pieces) - 1) * gap)
                    joined_values.append(values)
                    got_ts, got_values = samples.arrays()
                    np.testing.assert_array_equal(got_ts, ts)
                    assert got_values.tobytes() == values.tobytes(), series  # bit for bit, -0.0 included
                    assert samples.values().tobytes() == values.tobytes(), series
                    times = np.sort(rng.integers(lo - 60_000, hi + 60_000, 2_000))
                    times[::50] = ts[rng.integers(0, len(ts), len(times[::50]))]  # on samples, too
                    times.sort()
                    for side in ("left", "right"):
                        np.testing.assert_array_equal(samples.index(times, side), np.searchsorted(ts, times, side))
                    for k in (np.sort(rng.integers(0, len(ts), 500)), rng.integers(0, len(ts), 500)):
                        at_ts, at_values = samples.at(k)
                        np.testing.assert_array_equal(at_ts, ts[k])
                        assert at_values.tobytes() == values[k].tobytes()
                    if samples.scaled() is not None:
                        assert unscale(*samples.scaled()).tobytes() == values.tobytes()
                        scaled.add(series)
                    where, lost = samples.drops()
                    fell = np.flatnonzero(values[1:] < values[:-1]) + 1
                    np.testing.assert_array_equal(where, fell)
                    np.testing.assert_array_equal(lost, values[fell - 1])
                    checked += 1
                assert not expected and checked == len(cases)
                joined = Samples.joined(pieces)  # read after every series: the copies outlive the scratch arrays
                ts, values = np.concatenate(joined_ts), np.concatenate(joined_values)
                got_ts, got_values = joined.arrays()
                np.testing.assert_array_equal(got_ts, ts)
                assert got_values.tobytes() == values.tobytes()
                times = np.sort(np.concatenate([rng.integers(lo - 60_000, hi + 60_000, 300) + i * gap for i in range(len(pieces))]))
                for side in ("left", "right"):
                    np.testing.assert_array_equal(joined.index(times, side), np.searchsorted(ts, times, side))
                k = rng.integers(0, len(ts), 2_000)
                np.testing.assert_array_equal(joined.at(k)[0], ts[k])
                where, lost = joined.drops()
                starts = np.cumsum([len(t) for t in joined_ts])[:-1]
                fell = np.setdiff1d(np.flatnonzero(values[1:] < values[:-1]) + 1, starts)  # not across series
                np.testing.assert_array_equal(where, fell)
                np.testing.assert_array_equal(lost, values[fell - 1])

            scaled: set[Series] = set()
            view.run(check)
            assert {Series.of("t", room=r) for r in ("counter", "arrived", "shuffled")} <= scaled  # kept compact
            assert Series.of("t", room="floats") not in scaled
