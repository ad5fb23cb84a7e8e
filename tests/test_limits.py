"""The hub's HTTP limits against real clients: slow ("slowloris") connections, connection floods, stream floods."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from conftest import hub_settings
from test_things import desk_lamp

from roost.api import limits
from roost.api.app import LIMITS
from roost.hub import Hub


@pytest.fixture
async def quick_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "IDLE_TIMEOUT_S", 1.0)
    async with Hub(hub_settings(tmp_path / "data")) as hub:
        hub.things.add(desk_lamp([]))
        yield hub


LAMP = "/things/desk-lamp"


def _limits(hub: Hub) -> limits.Limits:
    return hub._runner.app[LIMITS]


def _refused(hub: Hub, reason: str) -> float:
    return hub.metrics.registry.get_sample_value("roost_http_refused_total", {"reason": reason}) or 0.0


async def _open(hub: Hub) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = hub.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closes the connection (EOF), failing after `seconds`."""
    started = time.monotonic()
    while await asyncio.wait_for(reader.read(1024), seconds):
        pass
    return time.monotonic() - started


async def test_a_client_trickling_its_headers_is_cut_off_and_others_are_served(quick_hub):
    reader, writer = await _open(quick_hub)

    async def trickle():
        for byte in b"GET /api/series HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.1)

    trickling = asyncio.create_task(trickle())
    async with aiohttp.ClientSession(base_url=quick_hub.url) as http:
        async with http.get("/healthz") as r:
            assert r.status == 200  # served while the slow client holds its connection
    assert await _closed_within(reader, 5) < 4  # 1 s idle limit in this test, 15 s by default
    trickling.cancel()
    writer.close()


async def test_a_connection_that_never_sends_a_request_is_closed(quick_hub):
    reader, writer = await _open(quick_hub)
    assert await _closed_within(reader, 5) < 4
    writer.close()


async def test_connections_beyond_the_per_client_limit_are_closed_and_counted(quick_hub):
    _limits(quick_hub).max_per_client = 5
    held = [await _open(quick_hub) for _ in range(5)]
    reader, writer = await _open(quick_hub)
    assert await _closed_within(reader, 2) < 1  # the sixth is closed at once
    assert _refused(quick_hub, "client_connections") == 1
    for _r, w in held:
        w.close()
    writer.close()
    await asyncio.sleep(0.2)
    async with aiohttp.ClientSession(base_url=quick_hub.url) as http, http.get("/healthz") as r:
        assert r.status == 200  # the count went down with the closed connections


async def test_websockets_beyond_the_per_client_limit_get_429_and_the_total_limit_503(quick_hub):
    lim = _limits(quick_hub)
    lim.max_streams_per_client, lim.max_streams = 4, 6
    async with aiohttp.ClientSession(base_url=quick_hub.url) as http:
        open_ = [await http.ws_connect(LAMP) for _ in range(4)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(LAMP)
        assert info.value.status == 429
        async with http.get("/api/live") as r:  # a live stream counts as a stream too
            assert r.status == 429
            assert "close one" in await r.text()
        await open_.pop().close()
        await asyncio.sleep(0.1)
        open_.append(await http.ws_connect(LAMP))  # a slot came back
        lim.max_streams_per_client = 100
        open_ += [await http.ws_connect(LAMP) for _ in range(2)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(LAMP)
        assert info.value.status == 503 and info.value.headers["Retry-After"] == "30"
        for ws in open_:
            await ws.close()
    assert _refused(quick_hub, "client_streams") == 2 and _refused(quick_hub, "streams") == 1


async def test_a_thousand_websockets_at_once_from_one_client_cost_the_hub_32_streams(quick_hub):
    accepted, outcomes = [], []
    async with aiohttp.ClientSession(base_url=quick_hub.url, connector=aiohttp.TCPConnector(limit=0)) as http:
        async def one():
            try:
                accepted.append(await http.ws_connect(LAMP))
            except aiohttp.WSServerHandshakeError as err:
                outcomes.append(err.status)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                outcomes.append("closed")  # beyond the 128 connections one client may hold

        await asyncio.gather(*(one() for _ in range(1000)))
        assert len(accepted) == limits.MAX_STREAMS_PER_CLIENT
        assert set(outcomes) <= {429, "closed"} and len(outcomes) == 1000 - limits.MAX_STREAMS_PER_CLIENT
        assert sum(_limits(quick_hub).connections.values()) <= limits.MAX_PER_CLIENT
        for ws in accepted:
            await ws.close()
        async with http.get("/healthz") as r:
            assert r.status == 200
    assert _refused(quick_hub, "client_connections") > 0 and _refused(quick_hub, "client_streams") > 0
