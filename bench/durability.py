"""The durability benchmark: snapshot, restic backup and restore of the reference store, replication lag and the
ingest cost of sync replication.

    .venv/bin/python bench/durability.py                       # 100 series x 30 days x 15 s (17.28 M samples)
    .venv/bin/python bench/durability.py --series 20 --days 3  # a quick look

1. Snapshot of the reference store (bench/workload.py `generate` + `Store.write_bulk`): time and size of
   `take_snapshot`, and of `verify_snapshot` (sha256 of every file + a count query over all series).
2. restic 0.14 to a local repository: `run_backup` (snapshot + `restic backup` + `forget --prune`), then a
   restore of that backup into a new store (`restic restore` + verify + copy).
3. Replication lag at 10,000 samples/s: a primary hub and a standby in this process (one event loop, so they
   share a core), 100 readings every 10 ms for `--lag-seconds`; the lag of a batch is the time from its
   acknowledgement by the primary to the standby having it durably. p50/p99/max.
4. Ingest cost of replication: 8 concurrent `hub.ingest` callers of 100 readings each, as fast as they go for
   `--ingest-seconds`, with no standby, an async standby and a sync standby. fsync is on everywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import generate  # noqa: E402

from roost.config import load_config  # noqa: E402
from roost.durability.backup import restore, run_backup  # noqa: E402
from roost.durability.replication import Standby  # noqa: E402
from roost.durability.restic import Restic  # noqa: E402
from roost.durability.retention import KeepPolicy  # noqa: E402
from roost.durability.settings import BackupSettings, ReplicationSettings  # noqa: E402
from roost.durability.snapshot import take_snapshot, verify_snapshot  # noqa: E402
from roost.hub import Hub  # noqa: E402
from roost.model import Reading, Series  # noqa: E402
from roost.secret import Secret  # noqa: E402
from roost.store import Store  # noqa: E402

TOKEN = Secret("bench-token")


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def build_store(data: Path, n_series: int, days: float) -> int:
    samples = 0
    with Store.open(data, writer=True) as store:
        for metric, labels, ts, values in generate(n_series, days):
            samples += store.write_bulk(Series.of(metric, labels), ts * 1000, values)
        store.checkpoint()
    return samples


def settings_for(data: Path, **replication):
    s = load_config(None, data_dir=str(data))
    return replace(s, hub=replace(s.hub, listen="127.0.0.1:0"),
                   replication=ReplicationSettings(token=TOKEN, **replication) if replication else ReplicationSettings())


async def with_standby(primary_data: Path, standby_data: Path, mode: str, body):
    async with Hub(settings_for(primary_data, mode=mode)) as hub, aiohttp.ClientSession() as session:
        standby = Standby(settings_for(standby_data), hub.url, TOKEN.reveal())
        await standby.prepare(session, resync=False)
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
