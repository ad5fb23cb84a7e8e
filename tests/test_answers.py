"""Range-query answers kept for identical requests: served again only while they still hold, and every answer,
kept or not, equal to one computed afresh from the store."""

from __future__ import annotations

import gzip
from dataclasses import replace

import aiohttp
import numpy as np

from conftest import hub_settings
from roost import promql
from roost.api.answers import ASKED_KEYS, GZIP_FROM, AnswerCache, Kept, pack, worth_packing
from roost.api.prometheus import _range_body
from roost.hub import Hub
from roost.model import Reading, Series, now_ms
from roost.selector import Selector
from roost.store import RetentionRule, Store, StoreOptions

MINUTE = 60_000


def _origin(hub, origin: str) -> float:
    return hub.metrics.registry.get_sample_value("roost_query_answers_total", {"origin": origin}) or 0.0


def _fresh(hub, query: str, start_s: int, end_s: int, step_s: int) -> bytes:
    """The answer computed from the store now, without the cache."""
    node = promql.parse(query)
    start, end, step = start_s * 1000, end_s * 1000, step_s * 1000
    view = hub.store.read_view(vs.selector for vs, _back in promql.selections(node))
    return view.run(lambda v: _range_body(promql.Evaluator(v, start, end, step).eval(node), start, end, step))


async def test_an_identical_range_query_is_answered_again_only_while_its_answer_holds(hub, http):
    now = now_ms() // MINUTE * MINUTE
    ts = np.arange(now - 60 * MINUTE, now - 10 * MINUTE + 1, 15_000)
    hub.store.write_bulk(Series.of("temperature_celsius", room="lounge"), ts, np.linspace(20, 22, len(ts)).round(2))
    query = "avg_over_time(temperature_celsius[5m])"
    # up to 20 minutes ago: the lounge's newest sample (10 minutes ago) is past the end
    past = (query, (now - 50 * MINUTE) // 1000, (now - 20 * MINUTE) // 1000, 60)
    # up to now: the newest sample is before the end
    recent = (query, (now - 50 * MINUTE) // 1000, now // 1000, 60)

    async def ask(query: str, start: int, end: int, step: int) -> bytes:
        params = {"query": query, "start": str(start), "end": str(end), "step": str(step)}
        async with http.get("/api/v1/query_range", params=params) as r:
            assert r.status == 200, await r.text()
            body = await r.read()
        assert body == _fresh(hub, query, start, end, step)  # kept or not, as computed afresh
        return body

    async def origin_of(ask_for: tuple) -> tuple[str, bytes]:
        cached = _origin(hub, "cache")
        body = await ask(*ask_for)
        return ("cache" if _origin(hub, "cache") > cached else "store"), body

    assert (await origin_of(past))[0] == "store"
    assert (await origin_of(past))[0] == "store"  # kept from the second time it is asked
    first = await origin_of(past)
    assert first[0] == "cache"
    for _ in range(2):
        assert (await origin_of(recent))[0] == "store"
    assert (await origin_of(recent))[0] == "cache"

    # a new sample in time order, after the past range's end: that answer holds, the recent one does not
    await hub.ingest([Reading(Series.of("temperature_celsius", room="lounge"), now - 5 * MINUTE, 30.0)])
    assert await origin_of(past) == first
    changed = await origin_of(recent)
    assert changed[0] == "store" and b',"30"]' in changed[1]
    assert (await origin_of(recent))[0] == "cache"

    # a sample written into the past range (history changed): computed again, with it
    await hub.ingest([Reading(Series.of("temperature_celsius", room="lounge"), now - 40 * MINUTE + 7_000, 99.0)])
    rewritten = await origin_of(past)
    assert rewritten[0] == "store" and rewritten[1] != first[1]
    # a value replaced at an existing timestamp changes history too
    await hub.ingest([Reading(Series.of("temperature_celsius", room="lounge"), now - 40 * MINUTE + 7_000, 50.0)])
    replaced = await origin_of(past)
    assert replaced[0] == "store" and replaced[1] != rewritten[1]

    # a new series that the query matches, even with samples only after the range: computed again
    await hub.ingest([Reading(Series.of("temperature_celsius", room="bedroom"), now - MINUTE, 18.0)])
    assert (await origin_of(past))[0] == "store"
    assert (await origin_of(past))[0] == "cache"
    # a series the query does not match changes nothing
    await hub.ingest([Reading(Series.of("humidity_percent", room="lounge"), now - 30 * MINUTE, 50.0)])
    assert (await origin_of(past))[0] == "cache"


async def test_a_negative_offset_reads_past_the_end_and_new_samples_there_are_seen(hub, http):
    now = now_ms() // MINUTE * MINUTE
    series = Series.of("power_watts", meter="main")
    ts = np.arange(now - 60 * MINUTE, now - 30 * MINUTE + 1, 15_000)
    hub.store.write_bulk(series, ts, np.full(len(ts), 100.0))
    # steps up to 40 minutes ago, reading 20 minutes later: up to 20 minutes ago, past the newest sample
    params = {"query": "power_watts offset -20m", "start": str((now - 50 * MINUTE) // 1000),
              "end": str((now - 40 * MINUTE) // 1000), "step": "60"}

    async def ask() -> bytes:
        async with http.get("/api/v1/query_range", params=params) as r:
            return await r.read()

    before = await ask()
    await hub.ingest([Reading(series, now - 25 * MINUTE, 200.0)])
    after = await ask()
    assert b'"200"' in after and b'"200"' not in before
    assert after == _fresh(hub, params["query"], int(params["start"]), int(params["end"]), 60)


async def test_with_query_cache_mb_0_every_answer_is_computed(tmp_path):
    settings = hub_settings(tmp_path / "data")
    async with Hub(replace(settings, hub=replace(settings.hub, query_cache_mb=0))) as hub:
        now = now_ms()
        hub.store.write_bulk(Series.of("x"), np.arange(now - 3_600_000, now, 15_000), np.ones(240))
        params = {"query": "x", "start": str(now // 1000 - 3000), "end": str(now // 1000 - 600), "step": "60"}
        async with aiohttp.ClientSession(base_url=hub.url) as http:
            for _ in range(3):
                async with http.get("/api/v1/query_range", params=params) as r:
                    assert r.status == 200
        assert (_origin(hub, "cache"), _origin(hub, "store")) == (0, 3)


def test_an_answer_is_kept_from_the_second_time_its_request_comes():
    cache = AnswerCache(max_bytes=1000)
    assert not cache.offer(("q",))
    assert cache.offer(("q",))
    for i in range(ASKED_KEYS + 1):  # one-off requests are forgotten, the oldest first
        assert not cache.offer(("once", i))
    assert not cache.offer(("once", 0)) and not cache.offer(("q",))
    assert cache.offer(("once", ASKED_KEYS))
    assert not AnswerCache(max_bytes=0).offer(("q",)) and not AnswerCache(max_bytes=0).offer(("q",))


def test_the_cache_keeps_the_most_recently_used_answers_within_its_budget():
    cache = AnswerCache(max_bytes=1000)
    mark = (0, {1: 100})

    def put(key, body):
        cache.put(key, mark, horizon=50, kept=Kept(body))

    for i in range(5):
        put(("q", i), bytes(240))
    assert len(cache) == 4 and cache.nbytes == 960  # the first went to make room
    assert cache.get(("q", 0), mark) is None
    assert cache.get(("q", 1), mark) == Kept(bytes(240))  # now the most recently used
    put(("q", 5), bytes(240))
    assert cache.get(("q", 2), mark) is None and cache.get(("q", 1), mark) is not None
    put(("big",), bytes(251))  # over a quarter of the budget: not kept
    assert cache.get(("big",), mark) is None
    assert cache.get(("q", 1), (1, {1: 100})) is None  # history rewritten: dropped
    assert ("q", 1) not in cache._answers


def test_big_answers_are_kept_gzipped():
    small, big = b"[1]" * 10, b'[[1702591800,"21.5"],' * (GZIP_FROM // 20)
    assert not worth_packing(small) and worth_packing(big)
    packed = pack(big)
    assert packed.gzipped and len(packed.body) < len(big) // 10 and gzip.decompress(packed.body) == big


async def test_a_big_answer_is_sent_gzipped_to_clients_that_accept_it_and_unpacked_to_the_others(hub, http):
    now = now_ms() // MINUTE * MINUTE
    ts = np.arange(now - 70 * MINUTE, now - 10 * MINUTE + 1, 15_000)
    for room in range(40):
        hub.store.write_bulk(Series.of("temperature_celsius", room=f"r{room}"), ts, 20 + np.sin(ts / 1e6 + room).round(2))
    start, end = (now - 60 * MINUTE) // 1000, (now - 20 * MINUTE) // 1000
    params = {"query": "temperature_celsius", "start": str(start), "end": str(end), "step": "5"}
    fresh = _fresh(hub, "temperature_celsius", start, end, 5)
    assert len(fresh) >= GZIP_FROM

    async def ask(encoding: str) -> tuple[str | None, bytes]:
        async with http.get("/api/v1/query_range", params=params, headers={"Accept-Encoding": encoding}) as r:
            assert r.status == 200
            return r.headers.get("Content-Encoding"), await r.read()  # aiohttp unpacks gzip

    assert await ask("gzip") == (None, fresh)  # computed, not kept yet
    assert await ask("gzip") == (None, fresh)  # computed, then gzipped for the cache beside the next requests
    for _ in range(100):
        if hub.metrics.registry.get_sample_value("roost_query_answers_total", {"origin": "cache"}):
            break
        assert await ask("identity") == (None, fresh)
    assert _origin(hub, "cache") == 1
    assert await ask("gzip, deflate") == ("gzip", fresh)
    assert await ask("identity") == (None, fresh)
    assert _origin(hub, "cache") == 3


def test_history_mark_counts_writes_that_change_stored_history(tmp_path):
    s = Series.of("t", room="a")
    with Store.open(tmp_path / "store", StoreOptions(fsync=False), writer=True) as store:
        sel = [promql.parse("t").selector]
        assert store.history_mark(sel) == (0, {})
        store.write([Reading(s, 1_000, 1.0), Reading(s, 2_000, 2.0)])
        (sid,) = store.history_mark(sel)[1]
        assert store.history_mark(sel) == (0, {sid: 2_000})
        store.write([Reading(s, 3_000, 3.0)])  # in time order
        assert store.history_mark(sel) == (0, {sid: 3_000})
        store.write([Reading(s, 3_000, 3.0)])  # the newest reading again, as a broker redelivers it
        assert store.history_mark(sel) == (0, {sid: 3_000})
        store.write([Reading(s, 3_000, 4.0)])  # the newest value replaced
        assert store.history_mark(sel) == (1, {sid: 3_000})
        store.write([Reading(s, 1_500, 4.0)])  # into the past
        assert store.history_mark(sel)[0] == 2
        store.write_bulk(s, np.array([500]), np.array([0.5]))  # a backfill
        assert store.history_mark(sel)[0] == 3
        store.write_bulk(s, np.array([9_000]), np.array([9.0]))  # a bulk write after the newest
        assert store.history_mark(sel) == (3, {sid: 9_000})


def test_a_retention_run_that_deletes_counts_as_a_rewrite_and_one_that_deletes_nothing_does_not(tmp_path):
    day = 86_400_000
    keep = RetentionRule(Selector.parse("t"), keep_ms=10 * day)
    with Store.open(tmp_path / "store", StoreOptions(fsync=False, retention=[keep]), writer=True) as store:
        store.write_bulk(Series.of("t"), np.array([1 * day, 20 * day]), np.array([1.0, 2.0]), now=21 * day)
        assert store.rewrites == 0
        store.apply_retention(now=21 * day)  # day 1 is older than 10 days
        assert store.rewrites == 1
        store.apply_retention(now=21 * day)
        assert store.rewrites == 1
