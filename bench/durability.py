"""The durability benchmark: snapshot, restic backup and restore of the reference store, replication lag and the
ingest cost of sync replication.

    .venv/bin/python bench/durability.py                       # 100 series x 30 days x 15 s (17.28 M samples)
    .venv/bin/python bench/durability.py --series 20 --days 3  # a quick look

1. Snapshot of the reference store (bench/workload.py `generate` + `Store.write_bulk`): time and size of
   `take_snapshot`, and of `verify_snapshot` (sha256 of every file + a count query over all series).
2. restic 0.14 to a local repository: `run_backup` (snapshot + `restic backup` + `forget --prune`), then a
   restore of that backup into a new store (`restic restore` + verify + copy).
3. Warm standby: the base copy (`/api/replication/base`, streamed file by file) of the reference store and of
   one `--base-days` long, between a `roost run` and a `roost standby` process: time, and how much each
   process's peak resident memory grew during the copy (VmHWM, reset through /proc/PID/clear_refs just
   before) — it must not grow with the store. Then the bulk-change shipping of an import: the reference store
   written with `write_bulk` by a second writer into a running primary, until the following standby (in this
   process) has merged every changed day chunk.
4. Replication lag at 10,000 samples/s: a primary hub and a standby in this process (one event loop, so they
   share a core), 100 readings every 10 ms for `--lag-seconds`; the lag of a batch is the time from its
   acknowledgement by the primary to the standby having it durably. p50/p99/max.
5. Ingest cost of replication: 8 concurrent `hub.ingest` callers of 100 readings each, as fast as they go for
   `--ingest-seconds`, with no standby, an async standby and a sync standby. fsync is on everywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from peers import Peer, free_port  # noqa: E402
from workload import generate  # noqa: E402

from roost.config import load_config  # noqa: E402
from roost.durability.backup import restore, run_backup  # noqa: E402
from roost.durability.replication import Standby  # noqa: E402
from roost.durability.restic import Restic  # noqa: E402
from roost.durability.retention import KeepPolicy  # noqa: E402
from roost.durability.settings import BackupSettings, ReplicationSettings  # noqa: E402
from roost.durability.snapshot import count_samples, take_snapshot, verify_snapshot  # noqa: E402
from roost.hub import Hub  # noqa: E402
from roost.model import Reading, Series  # noqa: E402
from roost.secret import Secret  # noqa: E402
from roost.store import Store  # noqa: E402

TOKEN = Secret("bench-token")


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def build_store(data: Path, n_series: int, days: float, *, writer: bool = True) -> int:
    samples = 0
    with Store.open(data, writer=writer) as store:
        for metric, labels, ts, values in generate(n_series, days):
            samples += store.write_bulk(Series.of(metric, labels), ts * 1000, values)
        store.checkpoint()
    return samples


def settings_for(data: Path, **replication):
    s = load_config(None, data_dir=str(data))
    return replace(s, hub=replace(s.hub, listen="127.0.0.1:0"),
                   replication=ReplicationSettings(token=TOKEN, **replication) if replication else ReplicationSettings())


async def with_standby(primary_data: Path, standby_data: Path, mode: str, body, standby_of: list | None = None):
    async with Hub(settings_for(primary_data, mode=mode)) as hub, aiohttp.ClientSession() as session:
        standby = Standby(settings_for(standby_data), hub.url, TOKEN.reveal(), report=lambda _line: None)
        await standby.prepare(session, resync=False)
        if standby_of is not None:
            standby_of.append(standby)
        progress: list[tuple[float, tuple[int, int]]] = []
        orig = standby.step

        async def step(session, wait=10.0):
            n = await orig(session, wait)
            progress.append((time.monotonic(), standby.pos))
            return n

        standby.step = step
        follower = asyncio.create_task(standby.follow(session))
        await asyncio.sleep(0.5)
        try:
            return await body(hub, progress)
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            standby.close()


def _vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _get(url: str) -> dict | None:
    try:
        return json.loads(urllib.request.urlopen(url, timeout=5).read())
    except OSError:
        return None


def base_copy(data: Path, work: Path) -> tuple[float, float, int, int, int]:
    """A `roost standby` process copying the store a `roost run` process serves: seconds of the transfer and
    from the standby's start to caught up, the primary's peak RSS growth during the copy, the standby's peak
    RSS over its whole life, and the store's bytes."""
    (work / "token").write_text(TOKEN.reveal())
    cfg = work / "primary.toml"
    cfg.write_text('[replication]\ntoken_file = "token"\n')
    env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    port, sport = free_port(), free_port()
    cmd = [sys.executable, "-m", "roost"]
    status = "/api/replication/status"
    primary = Peer([*cmd, "run", "-c", str(cfg), "--data", str(data), "--listen", f"127.0.0.1:{port}"], port,
                   work / "primary.log", status, name="roost run", env=env, timeout=300)
    standby = None
    try:
        time.sleep(1.0)  # let the hub settle after start
        Path(f"/proc/{primary.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = _vm(primary.proc.pid, "VmRSS")
        t = time.perf_counter()
        standby = Peer([*cmd, "standby", "--primary", primary.url, "--token-file", str(work / "token"),
                        "--data", str(work / "base-standby"), "--listen", f"127.0.0.1:{sport}"], sport,
                       work / "standby.log", status, name="roost standby", env=env, timeout=600)
        while not ((st := _get(standby.url + status)) and st["caught_up"]):
            assert standby.proc.poll() is None, (work / "standby.log").read_text()
            time.sleep(0.05)
        seconds = time.perf_counter() - t
        grown, standby_peak = _vm(primary.proc.pid, "VmHWM") - before, _vm(standby.proc.pid, "VmHWM")
        copy = float((work / "standby.log").read_text().rsplit(" received in ", 1)[1].split(" s")[0])
    finally:
        for peer in (standby, primary):
            if peer is not None:
                peer.stop()
    size = sum(p.stat().st_size for p in (work / "base-standby").rglob("*") if p.is_file())
    shutil.rmtree(work / "base-standby")
    return copy, seconds, grown, standby_peak, size


async def bulk_shipping(work: Path, n_series: int, days: float) -> tuple[float, float, int, int]:
    """Import the reference store into a running primary a standby follows: import seconds, seconds until the
    standby has merged all of it, day chunks shipped, and whether both answer the same sample count."""

    async def body(hub, _progress):
        t = time.perf_counter()
        await asyncio.to_thread(build_store, hub.store.data_dir, n_series, days, writer=False)
        imported = time.perf_counter() - t
        target = hub.store.bulk_change_seq()
        while standby_of[0].changes < target:
            await asyncio.sleep(0.05)
        return imported, time.perf_counter() - t - imported, int(standby_of[0].applied_chunks._value.get())

    standby_of: list[Standby] = []
    imported, shipped, chunks = await with_standby(work / "bulk-primary", work / "bulk-standby", "async", body, standby_of)
    same = count_samples(work / "bulk-primary") == count_samples(work / "bulk-standby")
    return imported, shipped, chunks, same


def readings(series: list[Series], ts: int) -> list[Reading]:
    return [Reading(s, ts, 20.0 + i / 100) for i, s in enumerate(series)]


async def replication_lag(work: Path, seconds: float) -> np.ndarray:
    series = [Series.of("bench_value", n=str(i)) for i in range(100)]

    async def body(hub, progress):
        acks = []
        t = int(time.time() * 1000)
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < seconds:
            await hub.ingest(readings(series, t + i))
            acks.append((time.monotonic(), hub.store.wal_position()))
            i += 1
            await asyncio.sleep(max(0.0, start + i * 0.01 - time.monotonic()))
        await asyncio.sleep(1.0)
        lags, j = [], 0
        for acked_at, pos in acks:
            while j < len(progress) and progress[j][1] < pos:
                j += 1
            if j < len(progress):
                lags.append(max(0.0, progress[j][0] - acked_at))
        return np.array(lags), i * len(series) / (time.monotonic() - 1.0 - start)

    return await with_standby(work / "lag-primary", work / "lag-standby", "async", body)


async def ingest_rate(work: Path, mode: str | None, seconds: float) -> float:
    series = [Series.of("bench_value", n=str(i)) for i in range(100)]

    async def body(hub, _progress=None):
        count = 0
        t = int(time.time() * 1000)
        stop = time.monotonic() + seconds

        async def client(k: int):
            nonlocal count
            i = 0
            while time.monotonic() < stop:
                await hub.ingest(readings(series, t + k * 10_000_000 + i))
                count += len(series)
                i += 1

        start = time.monotonic()
        await asyncio.gather(*(client(k) for k in range(8)))
        return count / (time.monotonic() - start)

    if mode is None:
        async with Hub(settings_for(work / "ingest-alone")) as hub:
            return await body(hub)
    return await with_standby(work / f"ingest-{mode}", work / f"ingest-{mode}-standby", mode, body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=100)
    ap.add_argument("--days", type=float, default=30)
    ap.add_argument("--base-days", type=float, default=365, help="a larger store for the base copy (0: none)")
    ap.add_argument("--lag-seconds", type=float, default=10)
    ap.add_argument("--ingest-seconds", type=float, default=5)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="roost-bench-durability-") as tmp:
        work = Path(tmp)
        data = work / "data"
        t = time.perf_counter()
        samples = build_store(data, args.series, args.days)
        print(f"reference store: {args.series} series x {args.days:g} days, {samples:,} samples, "
              f"{mib(sum(p.stat().st_size for p in data.rglob('*') if p.is_file()))} (built in {time.perf_counter() - t:.1f} s)")

        t = time.perf_counter()
        m = take_snapshot(data, work / "snap")
        rows.append(("snapshot (take_snapshot)", f"{time.perf_counter() - t:.2f} s", f"{mib(m.size)}, {len(m.files)} files"))
        t = time.perf_counter()
        v = verify_snapshot(work / "snap")
        assert v.ok, v.problems
        rows.append(("verify (sha256 + count query)", f"{time.perf_counter() - t:.2f} s", f"{v.samples:,} samples"))

        if shutil.which("restic"):
            settings = BackupSettings(repository=str(work / "repo"), password=Secret("bench"), keep=KeepPolicy(last=3))
            asyncio.run(Restic(settings.repository, settings.password, work / "cache").init())
            t = time.perf_counter()
            status = asyncio.run(run_backup(data, settings))
            assert not status.last_error, status.error
            rows.append(("restic backup (snapshot+backup+forget)", f"{time.perf_counter() - t:.2f} s",
                         f"{mib(status.size)} snapshot"))
            t = time.perf_counter()
            asyncio.run(restore("restic", settings, data, work / "restored"))
            rows.append(("restic restore (+verify+copy)", f"{time.perf_counter() - t:.2f} s", "latest backup"))

        stores = [(data, f"{args.days:g} days")]
        if args.base_days:
            t = time.perf_counter()
            build_store(work / "big", args.series, args.base_days)
            print(f"larger store for the base copy: {args.series} series x {args.base_days:g} days "
                  f"(built in {time.perf_counter() - t:.1f} s)")
            stores.append((work / "big", f"{args.base_days:g} days"))
        for store_dir, label in stores:
            copy, seconds, grown, standby_peak, size = base_copy(store_dir, work)
            rows.append((f"standby base copy, {label}", f"{copy:.2f} s",
                         f"{mib(size)}, {seconds:.1f} s from start to caught up; peak RSS: "
                         f"primary +{mib(grown)}, standby {mib(standby_peak)}"))
        imported, shipped, chunks, same = asyncio.run(bulk_shipping(work, args.series, args.days))
        assert same, "the standby answers another sample count than the primary after the import"
        rows.append(("bulk import into a followed primary", f"{imported:.2f} s", f"{samples:,} samples by write_bulk"))
        rows.append(("  standby in step after it", f"+{shipped:.2f} s", f"{chunks:,} day chunks merged, same count"))

        lags, rate = asyncio.run(replication_lag(work, args.lag_seconds))
        rows.append(("replication lag, async, p50 / p99 / max",
                     f"{np.percentile(lags, 50) * 1000:.1f} / {np.percentile(lags, 99) * 1000:.1f} / {lags.max() * 1000:.1f} ms",
                     f"{rate:,.0f} samples/s offered, {len(lags)} batches"))
        rates = {mode: asyncio.run(ingest_rate(work, mode, args.ingest_seconds)) for mode in (None, "async", "sync")}
        for mode, r in rates.items():
            rows.append((f"ingest, {mode or 'no standby'}", f"{r:,.0f} samples/s", "8 callers x 100 readings, fsync on"))
        rows.append(("ingest cost sync vs async (ratio)", f"{rates['async'] / rates['sync']:.2f}x",
                     "async rate / sync rate"))

    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'figure':<{width}}  {'value':<28}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:<28}  {note}")


if __name__ == "__main__":
    main()
