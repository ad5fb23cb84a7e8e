"""The running hub: HTTP push and query, acknowledgement survives kill -9, full disk, bus policy, self-metrics."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from roost.bus import Bus
from roost.hub import Hub
from roost.model import Reading, Series, now_ms
from roost.selector import Selector
from roost.store import Store

from conftest import HubProcess, hub_settings


async def test_pushed_readings_can_be_queried_and_listed(http):
    t = now_ms() - 60_000
    body = "\n".join(f"temperature,room=lounge value={20 + i / 10} {t + i * 1000}" for i in range(10))
    async with http.post("/write?precision=ms", data=body) as resp:
        assert resp.status == 204
    async with http.get("/api/query", params={"match": "temperature{room='lounge'}", "since": "5m", "step": "1m", "agg": "max"}) as resp:
        data = await resp.json()
    assert resp.status == 200
    [series] = data["series"]
    assert series["labels"] == {"room": "lounge"} and max(series["values"]) == pytest.approx(20.9)
    async with http.get("/api/series") as resp:
        listed = (await resp.json())["series"]
    assert listed[0]["latest"] == {"ts": t + 9000, "value": 20.9}


async def test_malformed_lines_get_400_naming_them_and_valid_lines_are_stored(http, hub):
    t = now_ms()
    body = f"temp,room=a value=1 {t}\ntemp,room=a value=oops {t + 1}\ntemp,room=a value=3 {t + 2}\n"
    async with http.post("/write?precision=ms", data=body) as resp:
        text = await resp.text()
    assert resp.status == 400
    assert "line 2" in text and "2 reading(s) stored" in text
    [data] = list(hub.store.read(Selector.parse("temp"), t, t + 10))
    assert data.values.tolist() == [1.0, 3.0]


async def test_bad_queries_get_400_that_says_what_is_wrong(http):
    async with http.get("/api/query", params={"match": "temp{", "since": "1h"}) as resp:
        assert resp.status == 400
        assert "cannot parse selector" in (await resp.json())["error"]
    async with http.get("/api/query", params={"match": "temp", "since": "1y", "step": "1s"}) as resp:
        assert resp.status == 400
        assert "use a larger step" in (await resp.json())["error"]
    async with http.get("/api/query", params={"match": "temp", "agg": "median"}) as resp:
        assert resp.status == 400
        assert "agg: expected one of mean" in (await resp.json())["error"]


async def test_rejected_readings_are_counted_in_self_metrics(http, hub):
    await hub.ingest([Reading(Series.of("x_total"), now_ms(), float("nan"))])
    async with http.post("/write", data="temp,room=a value=\"text\"") as resp:
        assert resp.status == 400
    async with http.get("/metrics") as resp:
        text = await resp.text()
    assert 'roost_rejected_readings_total{reason="nan"} 1.0' in text
    assert 'roost_rejected_readings_total{reason="non_numeric"} 1.0' in text


def test_a_slow_subscriber_never_stalls_publishing_and_drops_are_counted():
    async def scenario():
        bus: Bus[int] = Bus()
        slow = bus.subscribe("slow", maxsize=10)
        fast = bus.subscribe("fast", maxsize=1000)
        for i in range(100):
            bus.publish(i)  # never awaits: a full queue drops its oldest item
        assert slow.dropped == 90 and fast.dropped == 0
        assert slow.get_nowait_many(100) == list(range(90, 100))  # the newest are kept
        assert len(fast.get_nowait_many(1000)) == 100

    asyncio.run(scenario())


def _push(url: str, body: str) -> int:
    req = urllib.request.Request(url + "/write?precision=ms", data=body.encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_every_acknowledged_push_survives_kill_9_of_the_hub(tmp_path):
    data = tmp_path / "data"
    hub = HubProcess(data)
    t0 = 1_700_000_000_000
    acked: list[int] = []
    stop = threading.Event()

    def pusher() -> None:
        i = 0
        while not stop.is_set():
            body = "\n".join(f"power,meter=m{m} value={i} {t0 + i * 1000}" for m in range(20))
            try:
                if _push(hub.url, body) == 204:
                    acked.append(i)
            except OSError:
                return
            i += 1

    thread = threading.Thread(target=pusher)
    thread.start()
    deadline = time.monotonic() + 30
    while len(acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    hub.kill(9)
    stop.set()
    thread.join()
    assert len(acked) >= 300
    with Store.open(data, writer=True) as store:  # as the restarted hub opens it
        for m in range(20):
            [got] = list(store.read(Selector.parse(f'power{{meter="m{m}"}}'), t0, t0 + 10**9))
            stored = set(got.values.astype(int).tolist())
            assert set(acked) <= stored, f"meter m{m} lost acknowledged readings {sorted(set(acked) - stored)[:5]}"


@contextmanager
def _tiny_filesystem(path: Path, size: str = "4m"):
    path.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small filesystem to fill")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(path: Path) -> Path:
    filler = path / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


async def test_a_full_disk_fails_writes_loudly_keeps_reads_and_loses_nothing_acknowledged(tmp_path, caplog):
    import aiohttp

    with _tiny_filesystem(tmp_path / "fs") as fs:
        async with Hub(hub_settings(fs / "data")) as hub, aiohttp.ClientSession(base_url=hub.url) as http:
            t = now_ms() - 3_600_000
            async with http.post("/write?precision=ms", data=f"temp,room=a value=1 {t}") as resp:
                assert resp.status == 204
            filler = _fill(fs)
            big = "\n".join(f"temp,room=a value=2 {t + 1000 + i}" for i in range(1000))  # more than a free page
            async with http.post("/write?precision=ms", data=big) as resp:
                assert resp.status == 507
                assert "disk is full" in await resp.text()
            held = [Reading(Series.of("temp", room="a"), t + 2000 + i, 3.0) for i in range(1000)]
            hub.submit(held)  # a device source: held in memory while the disk is full
            await asyncio.sleep(0.2)
            async with http.get("/api/query", params={"match": "temp", "since": "2h", "step": "1m", "agg": "count"}) as resp:
                assert resp.status == 200  # reads keep working
                assert sum((await resp.json())["series"][0]["values"]) == 1
            assert "disk is full" in caplog.text
            filler.unlink()
            await asyncio.sleep(5.5)  # the writer retries every 5 s
            async with http.post("/write?precision=ms", data=f"temp,room=a value=4 {t + 4000}") as resp:
                assert resp.status == 204
            assert await hub.compact() >= 1
            [got] = list(hub.store.read(Selector.parse("temp"), t, t + 10_000))
            assert got.values.tolist() == [1.0] + [3.0] * 1000 + [4.0]  # the 2s were refused (507), never acknowledged


async def test_compactions_run_on_one_thread_of_their_own_and_give_freed_memory_back(hub, monkeypatch):
    # glibc keeps a malloc arena's high-water mark for every thread that used it; compaction's temporaries grow
    # through the day with the open chunks, so spread over the shared worker pool they made every pool thread
    # hold its own share (the slow RSS climb of bench/soak.py).
    import roost.hub as hub_module

    threads, trims = set(), []
    compact_frozen = hub.store.compact_frozen

    def spy(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return compact_frozen(*args, **kwargs)

    monkeypatch.setattr(hub.store, "compact_frozen", spy)
    monkeypatch.setattr(hub_module, "_give_back_free_memory", lambda: trims.append(threading.current_thread().name))
    for i in range(6):
        await hub.ingest([Reading(Series.of("temp", room="a"), now_ms() - 60_000 + i, float(i))])
        assert await hub.compact() == 1
        await asyncio.gather(*(asyncio.to_thread(time.sleep, 0.01) for _ in range(4)))  # the shared pool in use
    assert len(threads) == 1 and next(iter(threads)).startswith("roost-compaction")
    assert trims == [next(iter(threads))] * 6
