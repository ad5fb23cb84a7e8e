"""Backups through restic: take a snapshot, `restic backup` it, apply the keep policy; the schedule in the hub;
restores and the restore drill.

A backup's outcome is recorded three ways: `backup/status.json` under the data directory, the series
`roost_backup_last_success_timestamp_seconds`, `roost_backup_duration_seconds`, `roost_backup_size_bytes` and
`roost_backup_last_error` (stored like any reading and exported on /metrics), and, in the hub, the read-only
properties of the thing `backup`. Each failure also publishes a `backup_failed` change on the thing registry's
change bus, which is what rules react to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from roost.durability.restic import Restic, ResticError
from roost.durability.settings import BackupSettings, parse_time_of_day
from roost.durability.snapshot import MANIFEST, Manifest, SnapshotError, restore_snapshot, take_snapshot
from roost.errors import RoostError
from roost.model import Reading, Series
from roost.selector import Selector

if TYPE_CHECKING:
    from roost.hub import Hub
    from roost.store import Store

log = logging.getLogger("roost.backup")

TAG = "roost"  # every backup roost makes carries it; retention only ever touches these
HOUR_MS = 3_600_000


class BackupError(RoostError):
    """A backup or restore could not be done; says which step and why."""


@dataclass(slots=True)
class BackupStatus:
    """The last backup attempt as `backup/status.json` keeps it (times in Unix seconds)."""

    last_attempt: float = 0.0
    last_success: float = 0.0
    duration: float = 0.0
    size: int = 0
    last_error: int = 0
    error: str = ""
    snapshot_id: str = ""

    @classmethod
    def load(cls, data_dir: Path) -> BackupStatus:
        try:
            return cls(**json.loads((data_dir / "backup" / "status.json").read_text()))
        except (OSError, ValueError, TypeError):
            return cls()

    def save(self, data_dir: Path) -> None:
        path = data_dir / "backup" / "status.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    def readings(self) -> list[Reading]:
        ts = int(self.last_attempt * 1000)
        values = {
            "roost_backup_last_error": float(self.last_error),
            "roost_backup_duration_seconds": self.duration,
            "roost_backup_size_bytes": float(self.size),
        }
        if not self.last_error:
            values["roost_backup_last_success_timestamp_seconds"] = self.last_success
        return [Reading(Series.of(name), ts, value) for name, value in values.items()]


def restic_for(data_dir: Path, settings: BackupSettings) -> Restic:
    if not settings.configured:
        raise BackupError("no [backup] repository configured: add `[backup] repository = ...` and a password to the config")
    if settings.password is None:
        raise BackupError("backup.password: missing (or password_file / password_env)")
    return Restic(settings.repository, settings.password, Path(data_dir) / "backup" / "restic-cache")


async def run_backup(
    data_dir: Path, settings: BackupSettings, *, progress: Callable[[dict], None] | None = None
) -> BackupStatus:
    """Snapshot the store, back the snapshot up with restic, forget what the keep policy drops; never raises.

    The snapshot is staged at a fixed path (`backup/snapshot`) so restic sees one path per hub and groups its
    backups together for retention.
    """
    data_dir = Path(data_dir)
    status = BackupStatus.load(data_dir)
    status.last_attempt = time.time()
    started = time.monotonic()
    staging = data_dir / "backup" / "snapshot"
    try:
        restic = restic_for(data_dir, settings)
        if not await restic.exists():
            raise BackupError(f"{settings.repository}: no restic repository there — run `roost backup init` first")
        shutil.rmtree(staging, ignore_errors=True)
        manifest = await asyncio.to_thread(take_snapshot, data_dir, staging)
        summary = await restic.backup(staging, host=settings.host, tags=(TAG, *settings.tags), progress=progress)
        if not settings.keep.empty:
            await restic.forget(settings.keep.restic_flags(), host=settings.host, tags=(TAG,), prune=settings.prune)
    except (RoostError, OSError) as err:
        status.last_error, status.error = 1, str(err)
        log.error("backup failed: %s", err)
    else:
        status.last_error, status.error = 0, ""
        status.last_success, status.size, status.snapshot_id = time.time(), manifest.size, summary.snapshot_id
        log.info("backup %s: %d bytes (%d new) of %d samples", summary.snapshot_id[:8], manifest.size,
                 summary.data_added, manifest.samples)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    status.duration = round(time.monotonic() - started, 3)
    status.save(data_dir)
    return status


def record_in_store(store: Store, status: BackupStatus) -> None:
    """Store the status readings beside a running hub (bulk path: SQLite transactions, safe for a reader)."""
    for r in status.readings():
        store.write_bulk(r.series, np.array([r.ts_ms]), np.array([r.value]))


# ---------------------------------------------------------------- restore


def _parse_source(source: str) -> tuple[str, str]:
    """`restic` / `restic:ID` → ("restic", ID or "latest"); anything else is a snapshot directory."""
    if source == "restic" or source.startswith("restic:"):
        return "restic", source.partition(":")[2] or "latest"
    return "dir", source


async def fetch_snapshot(source: str, settings: BackupSettings, data_dir: Path, work: Path) -> Path:
    """A local snapshot directory for `source`: restic snapshots are restored under `work` first."""
    kind, what = _parse_source(source)
    if kind == "dir":
        return Path(what)
    restic = restic_for(data_dir, settings)
    target = work / "restic-restore"
    args = ["restore", what, "--target", str(target)]
    if what == "latest":
        args += ["--host", settings.host, "--tag", TAG]
    await restic.run(*args)
    manifests = sorted(target.rglob(MANIFEST), key=lambda p: len(p.parts))
    if not manifests:
        raise BackupError(f"restic snapshot {what} of {settings.repository} holds no roost snapshot (no {MANIFEST})")
    return manifests[0].parent


async def restore(source: str, settings: BackupSettings, data_dir: Path, target: Path) -> Manifest:
    """Restore `source` (a snapshot directory, `restic` or `restic:ID`) into the new store directory `target`."""
    with tempfile.TemporaryDirectory(prefix="roost-restore-", dir=Path(target).absolute().parent) as work:
        snapshot = await fetch_snapshot(source, settings, data_dir, Path(work))
        return await asyncio.to_thread(restore_snapshot, snapshot, target)


@dataclass(slots=True)
class DrillReport:
    manifest: Manifest
    series: int
    buckets: int
    raw_samples: int
    mismatches: list[str]
    restore_seconds: float
    compare_seconds: float

    @property
    def ok(self) -> bool:
        return not self.mismatches


def compare_stores(restored: Store, live: Store, *, limit: int = 20) -> tuple[int, int, int, list[str]]:
    """Range queries over every series of `restored` against `live`, up to each series' newest restored sample.

    Whole hours compare as count/mean/min/max buckets (hourly rollups where the days are finished; means to 1e-9,
    as a sum taken from rollups and one taken from raw samples may round differently), the last,
    unfinished hour as raw samples — so readings the live store received after the snapshot never count.
    Returns (series, buckets, raw samples compared, mismatches).
    """
    latest = restored.latest()
    live_names = {str(s) for _sid, s in live.series()}
    mismatches: list[str] = []
    buckets = raw = 0
    for _sid, series in restored.series():
        if series not in latest:
            continue
        name = str(series)
        if name not in live_names:
            mismatches.append(f"{name}: in the backup, not in the live store")
            continue
        selector = Selector.parse(name)
        end = latest[series][0]
        hour_end = end - end % HOUR_MS
        if hour_end > 0:
            for agg in ("count", "mean", "min", "max"):
                a = restored.query(selector, 0, hour_end - 1, HOUR_MS, agg)
                b = live.query(selector, 0, hour_end - 1, HOUR_MS, agg)
                a_ts, a_v = (a[0].ts, a[0].values) if a else (np.empty(0), np.empty(0))
                b_ts, b_v = (b[0].ts, b[0].values) if b else (np.empty(0), np.empty(0))
                buckets += len(a_ts)
                same = np.array_equal(a_v, b_v) if agg != "mean" else np.allclose(a_v, b_v, rtol=1e-9, atol=0)
                if not (np.array_equal(a_ts, b_ts) and len(a_v) == len(b_v) and same):
                    mismatches.append(f"{name}: {agg} per hour before {_iso(hour_end)} differs")
        a = list(restored.read(selector, hour_end, end + 1))
        b = list(live.read(selector, hour_end, end + 1))
        a_ts, a_v = (a[0].ts, a[0].values) if a else (np.empty(0), np.empty(0))
        b_ts, b_v = (b[0].ts, b[0].values) if b else (np.empty(0), np.empty(0))
        raw += len(a_ts)
        if not (np.array_equal(a_ts, b_ts) and np.array_equal(a_v, b_v)):
            mismatches.append(f"{name}: raw samples {_iso(hour_end)}..{_iso(end)} differ ({len(a_ts)} vs {len(b_ts)})")
        if len(mismatches) >= limit:
            break
    return len(latest), buckets, raw, mismatches


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def restore_drill(source: str, settings: BackupSettings, data_dir: Path, live_options=None) -> DrillReport:
    """Restore `source` into a temporary directory and compare its answers with the live store (a hub may run)."""
    from roost.store import Store

    data_dir = Path(data_dir)
    if not (data_dir / "store.db").exists():
        raise BackupError(f"{data_dir}: no live store to compare with — pass the hub's --data directory")
    with tempfile.TemporaryDirectory(prefix="roost-drill-") as work:
        started = time.monotonic()
        target = Path(work) / "store"
        snapshot = await fetch_snapshot(source, settings, data_dir, Path(work))
        manifest = await asyncio.to_thread(restore_snapshot, snapshot, target)
        restored_s = time.monotonic() - started
        started = time.monotonic()

        def compare():
            with Store.open(target, writer=False) as restored, Store.open(data_dir, live_options, writer=False) as live:
                return compare_stores(restored, live)

        series, buckets, raw, mismatches = await asyncio.to_thread(compare)
        return DrillReport(manifest, series, buckets, raw, mismatches, restored_s, time.monotonic() - started)


# ---------------------------------------------------------------- the schedule inside the hub


def next_run(now: datetime, schedule: str) -> datetime:
    """The next local time of day `schedule` ("03:30") strictly after `now` (a naive local datetime)."""
    hour, minute = parse_time_of_day(schedule)
    at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return at if at > now else at + timedelta(days=1)


class BackupScheduler:
    """Runs a backup every day at `[backup] schedule` and makes its outcome visible (series, /metrics, thing)."""

    def __init__(self, hub: Hub):
        from prometheus_client import Gauge

        self.hub = hub
        self.settings: BackupSettings = hub.settings.backup
        self.data_dir = Path(hub.settings.hub.data)
        registry = hub.metrics.registry
        self.gauges = {
            "last_success": Gauge("roost_backup_last_success_timestamp_seconds", "When the last backup succeeded.", registry=registry),
            "duration": Gauge("roost_backup_duration_seconds", "How long the last backup took.", registry=registry),
            "size": Gauge("roost_backup_size_bytes", "Bytes of the snapshot the last backup saved.", registry=registry),
            "last_error": Gauge("roost_backup_last_error", "1 when the last backup failed.", registry=registry),
        }
        self.running: asyncio.Lock = asyncio.Lock()
        self._add_thing()
        self._show(BackupStatus.load(self.data_dir))

    def _add_thing(self) -> None:
        things = getattr(self.hub, "things", None)
        if things is None or "backup" in things:
            return
        from roost.things import EventSpec, PropertySpec, Thing

        props = [
            PropertySpec("last_success", "number", "Last successful backup", unit="s", read_only=True),
            PropertySpec("duration", "number", "Duration of the last backup", unit="s", read_only=True),
            PropertySpec("size", "integer", "Size of the last backup", unit="B", read_only=True),
            PropertySpec("last_error", "integer", "Last backup failed", read_only=True, enum=(0, 1)),
            PropertySpec("error", "string", "Why the last backup failed", read_only=True),
        ]
        things.add(Thing(
            id="backup", title="Backup", description=f"restic backups to {self.settings.repository}",
            properties={p.name: p for p in props},
            events={"backup_failed": EventSpec("backup_failed", "Backup failed", type="string")},
            origin="backup",
        ))

    def _show(self, status: BackupStatus) -> None:
        for name, gauge in self.gauges.items():
            gauge.set(getattr(status, name))
        things = getattr(self.hub, "things", None)
        if things is not None and "backup" in things:
            for name in ("last_success", "duration", "size", "last_error", "error"):
                things.report("backup", name, getattr(status, name), origin="backup")

    async def run_now(self) -> BackupStatus:
        async with self.running:
            status = await run_backup(self.data_dir, self.settings)
        self._show(status)
        self.hub.submit(status.readings())
        if status.last_error:
            things = getattr(self.hub, "things", None)
            if things is not None:
                from roost.things import PropertyChange

                things.changes.publish(PropertyChange(
                    "backup", "backup_failed", None, status.error, int(status.last_attempt * 1000), "backup"
                ))
        return status

    async def run(self) -> None:
        while True:
            now = datetime.now()
            at = next_run(now, self.settings.schedule)
            log.info("next backup at %s", at.strftime("%Y-%m-%d %H:%M"))
            await asyncio.sleep((at - now).total_seconds())
            await self.run_now()


__all__ = [
    "BackupError", "BackupScheduler", "BackupStatus", "DrillReport", "ResticError", "SnapshotError",
    "compare_stores", "fetch_snapshot", "next_run", "record_in_store", "restore", "restore_drill", "run_backup",
]
