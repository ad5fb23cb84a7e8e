"""HTTP push in Influx line protocol: influxdb-client as the v2 writer, plain v1 posts, gzip, partial bodies, limits."""

from __future__ import annotations

import asyncio
import gzip
from datetime import datetime, timezone

import aiohttp
import pytest
from conftest import hub_settings
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.write_api import SYNCHRONOUS

from roost.hub import Hub
from roost.model import Series, now_ms
from roost.selector import Selector
from roost.sources.http_push import MAX_BODY_BYTES

T_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a whole hour so every precision can express it


def stored(hub, selector: str) -> dict[str, list[tuple[int, float]]]:
    """Every stored sample of matching series, by series text."""
    return {
        str(d.series): list(zip(d.ts.tolist(), d.values.tolist()))
        for d in hub.store.read(Selector.parse(selector), 0, now_ms() + 3_600_000)
    }


def write_with_influxdb_client(url: str, records, *, gzip: bool = False, precision=WritePrecision.NS) -> None:
    with InfluxDBClient(url=url, token="any-token", org="home", enable_gzip=gzip) as client:
        client.write_api(write_options=SYNCHRONOUS).write(bucket="sensors", record=records, write_precision=precision)


@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
async def test_influxdb_client_writes_points_through_the_v2_api(hub, use_gzip):
    when = datetime.fromtimestamp(T_MS / 1000, tz=timezone.utc)
    points = [
        Point("climate").tag("room", "lounge").field("temperature", 21.5).field("humidity", 48).time(when),
        Point("power_watts").tag("meter", "m1").field("value", 230.0).time(when),
    ]
    await asyncio.to_thread(write_with_influxdb_client, hub.url, points, gzip=use_gzip)
    assert stored(hub, '{__name__=~"climate_.*|power_watts"}') == {
        'climate_humidity{room="lounge"}': [(T_MS, 48.0)],
        'climate_temperature{room="lounge"}': [(T_MS, 21.5)],
        'power_watts{meter="m1"}': [(T_MS, 230.0)],
    }


async def test_influxdb_client_raises_with_the_bad_line_named_and_the_good_lines_are_stored(hub):
    lines = [f"temp,room=a value=1 {T_MS}", f"temp,room=a value=oops {T_MS + 1000}", f"temp,room=a value=3 {T_MS + 2000}"]
    with pytest.raises(InfluxDBError) as err:
        await asyncio.to_thread(write_with_influxdb_client, hub.url, lines, precision=WritePrecision.MS)
    assert err.value.response.status == 400
    assert err.value.message.startswith("1 malformed line(s), 2 reading(s) stored")
    assert "line 2:" in err.value.message
    assert stored(hub, "temp") == {'temp{room="a"}': [(T_MS, 1.0), (T_MS + 2000, 3.0)]}


@pytest.mark.parametrize(
    "precision, timestamp",
    [
        ("ns", T_MS * 1_000_000),
        ("u", T_MS * 1_000),
        ("us", T_MS * 1_000),
        ("ms", T_MS),
        ("s", T_MS // 1_000),
        ("m", T_MS // 60_000),
        ("h", T_MS // 3_600_000),
    ],
)
async def test_v1_posts_are_read_in_every_precision(http, hub, precision, timestamp):
    body = f"temperature_celsius,room=lounge value=21.5 {timestamp}\n"
    params = {"precision": precision, "db": "home", "rp": "autogen", "u": "esp", "p": "secret"}
    async with http.post("/write", params=params, data=body) as resp:
        assert resp.status == 204, await resp.text()
    assert stored(hub, "temperature_celsius") == {'temperature_celsius{room="lounge"}': [(T_MS, 21.5)]}


async def test_a_line_without_timestamp_is_stored_at_arrival(http, hub):
    before = now_ms()
    async with http.post("/write", data="temperature_celsius,room=lounge value=21.5") as resp:
        assert resp.status == 204
    [(ts, value)] = stored(hub, "temperature_celsius")['temperature_celsius{room="lounge"}']
    assert before <= ts <= now_ms() and value == 21.5


@pytest.mark.parametrize("endpoint, precision", [("/api/v2/write", "m"), ("/api/v2/write", "u"), ("/write", "d")])
async def test_a_precision_the_endpoint_does_not_know_is_refused_whole(http, hub, endpoint, precision):
    async with http.post(endpoint, params={"precision": precision}, data=f"temp value=1 {T_MS}") as resp:
        assert resp.status == 400
        assert "precision: expected one of" in await resp.text()
    assert stored(hub, "temp") == {}


async def test_malformed_lines_are_named_by_number_and_reason_and_the_rest_is_stored(http, hub):
    body = "\n".join([
        f"temp,room=a value=1 {T_MS}",
        "temp,room=a",                                     # line 2: no field
        "",
        f'temp,room=a value="warm" {T_MS + 1000}',         # line 4: a string
        f"temp,room=a value=4 {T_MS + 3000}",
    ])
    async with http.post("/api/v2/write", params={"org": "home", "bucket": "b", "precision": "ms"}, data=body) as resp:
        error = await resp.json()
    assert resp.status == 400
    assert error["code"] == "invalid"
    assert error["message"].startswith("2 malformed line(s), 2 reading(s) stored (do not resend them): line 2: ")
    assert "line 4: temp{room=\"a\"}: string value 'warm' is not a number" in error["message"]
    assert stored(hub, "temp") == {'temp{room="a"}': [(T_MS, 1.0), (T_MS + 3000, 4.0)]}
    rejected = hub.metrics.registry.get_sample_value
    assert rejected("roost_rejected_readings_total", {"reason": "syntax"}) == 1
    assert rejected("roost_rejected_readings_total", {"reason": "non_numeric"}) == 1


async def test_readings_the_store_refuses_are_named_in_the_answer_and_the_rest_is_stored(tmp_path):
    async with Hub(hub_settings(tmp_path / "data", max_series=2)) as hub, aiohttp.ClientSession(hub.url) as http:
        body = f"temp,room=a value=1 {T_MS}\ntemp,room=b value=2 {T_MS}\ntemp,room=c value=3 {T_MS}\n"
        async with http.post("/write", params={"precision": "ms"}, data=body) as resp:
            error = await resp.json()
        assert resp.status == 400
        assert error["error"] == (
            '1 reading(s) refused, 2 reading(s) stored (do not resend them): '
            'temp{room="c"}: new series refused: store.max_series reached'
        )
        assert sorted(stored(hub, "temp")) == ['temp{room="a"}', 'temp{room="b"}']
        rejected = hub.metrics.registry.get_sample_value
        assert rejected("roost_rejected_readings_total", {"reason": "cardinality_limit"}) == 1


async def test_a_gzip_body_is_decoded(http, hub):
    body = "\n".join(f"power_watts,meter=m1 value={i} {T_MS + i * 1000}" for i in range(1000)).encode()
    async with http.post("/write?precision=ms", data=gzip.compress(body), headers={"Content-Encoding": "gzip"}) as resp:
        assert resp.status == 204, await resp.text()
    [samples] = stored(hub, "power_watts").values()
    assert len(samples) == 1000 and samples[-1] == (T_MS + 999_000, 999.0)


def _gzipped_lines(n: int) -> bytes:
    return gzip.compress("\n".join(f"power_watts,meter=m1 value={i} {T_MS + i}" for i in range(n)).encode())


async def test_a_corrupt_gzip_body_is_a_400_and_nothing_is_stored(http, hub):
    corrupt = bytearray(_gzipped_lines(1000))
    corrupt[len(corrupt) // 2] ^= 0xFF
    async with http.post("/write?precision=ms", data=bytes(corrupt), headers={"Content-Encoding": "gzip"}) as resp:
        assert resp.status == 400
        assert "cannot read the body (Content-Encoding: gzip)" in (await resp.json())["error"]
    assert stored(hub, "power_watts") == {}


async def test_a_gzip_body_cut_short_is_a_400_and_nothing_is_stored(http, hub):
    whole = _gzipped_lines(1000)
    async with http.post("/write?precision=ms", data=whole[: len(whole) // 2], headers={"Content-Encoding": "gzip"}) as resp:
        assert resp.status == 400
        assert "the gzip stream ends early" in (await resp.json())["error"]
    assert stored(hub, "power_watts") == {}


async def test_a_body_over_the_limit_is_413_and_nothing_is_stored(http, hub):
    line = f"temp,room=a value=1 {T_MS}\n".encode()
    big = line * (MAX_BODY_BYTES // len(line) + 1)
    async with http.post("/write?precision=ms", data=big) as resp:
        assert resp.status == 413
        assert "larger than 16 MiB" in (await resp.json())["error"]
    bomb = gzip.compress(big)  # small on the wire, over the limit once decoded
    assert len(bomb) < MAX_BODY_BYTES // 100
    async with http.post("/api/v2/write", data=bomb, headers={"Content-Encoding": "gzip"}) as resp:
        assert resp.status == 413
        assert (await resp.json())["code"] == "request too large"
    assert stored(hub, "temp") == {}


async def test_invalid_utf8_costs_only_its_own_line(http, hub):
    body = f"temp,room=a value=1 {T_MS}\n".encode() + b"temp,room=\xff\xfe value=2\n" + f"temp,room=b value=3 {T_MS}\n".encode()
    async with http.post("/write?precision=ms", data=body) as resp:
        assert resp.status == 400
        assert "line 2:" in (await resp.json())["error"]
    assert set(stored(hub, "temp")) == {'temp{room="a"}', 'temp{room="b"}'}


async def test_pushed_series_are_ordinary_series(http, hub):
    async with http.post("/write?precision=s", data=f"temperature_celsius,room=lounge value=21.5 {T_MS // 1000}") as resp:
        assert resp.status == 204
    assert hub.store.latest()[Series.of("temperature_celsius", room="lounge")] == (T_MS, 21.5)
