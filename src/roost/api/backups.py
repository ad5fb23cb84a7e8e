"""The backup status and "back up now" for the dashboard's Backups section (docs/durability.md, docs/api.md).

Routes (only on a hub with `[backup]` configured):
  GET  /backups      the repository, schedule and next run, the last attempt's outcome, whether one runs now,
                     and the repository's snapshots of this hub (restic, listed at most once a minute)
  POST /backups      start a backup now (scope admin); 202 with the status, 409 while one runs
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING

from aiohttp import web

from roost.api.responses import json_response
from roost.durability.backup import TAG, BackupStatus, next_run, restic_for
from roost.errors import RoostError

if TYPE_CHECKING:
    from roost.durability.backup import BackupScheduler
    from roost.hub import Hub

_SNAPSHOTS_TTL_S = 60.0
_SHOWN_SNAPSHOTS = 50


class _Backups:
    def __init__(self, hub: Hub):
        self.hub = hub
        self._snapshots: tuple[float, list[dict] | str] = (0.0, [])
        self._task: asyncio.Task | None = None

    @property
    def scheduler(self) -> BackupScheduler:
        scheduler = self.hub.backup  # made once the store is open, after the routes
        if scheduler is None:
            raise web.HTTPServiceUnavailable(text="the hub is still starting", headers={"Retry-After": "1"})
        return scheduler

    async def _list_snapshots(self) -> list[dict] | str:
        """This hub's snapshots, newest first (or why they cannot be listed), cached for a minute."""
        at, cached = self._snapshots
        if time.monotonic() - at < _SNAPSHOTS_TTL_S:
            return cached
        settings = self.scheduler.settings
        try:
            found = await restic_for(self.scheduler.data_dir, settings).snapshots(host=settings.host, tags=(TAG,))
            listed: list[dict] | str = [
                {"id": s.short_id, "time": s.time.isoformat(), "tags": [t for t in s.tags if t != TAG]}
                for s in sorted(found, key=lambda s: s.time, reverse=True)[:_SHOWN_SNAPSHOTS]
            ]
        except (RoostError, OSError) as err:
            listed = str(err)
        self._snapshots = (time.monotonic(), listed)
        return listed

    async def status(self, request: web.Request) -> web.Response:
        settings = self.scheduler.settings
        status = BackupStatus.load(self.scheduler.data_dir)
        snapshots = await self._list_snapshots()
        upcoming = next_run(datetime.now(), settings.schedule).astimezone().isoformat() if settings.schedule else None
        return json_response({
            "repository": str(settings.repository),
            "schedule": settings.schedule or None,
            "next_run": upcoming,
            "running": self.scheduler.running.locked(),
            "status": asdict(status),
            "snapshots": snapshots if isinstance(snapshots, list) else [],
            "snapshots_error": snapshots if isinstance(snapshots, str) else None,
        })

    async def start(self, request: web.Request) -> web.Response:
        if self.scheduler.running.locked():
            return json_response({"error": "a backup is running; wait for it to finish"}, 409)
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)  # let it take the lock, so the answer says it runs
        return json_response({"running": True, "status": asdict(BackupStatus.load(self.scheduler.data_dir))}, 202)

    async def _run(self) -> None:
        await self.scheduler.run_now()  # never raises: the outcome is the status, the thing and the series
        self._snapshots = (0.0, [])


def add_backup_routes(app: web.Application, hub: Hub) -> None:
    """Serve /backups when the hub has `[backup]` configured (the dashboard shows its section only then)."""
    if not hub.settings.backup.configured:
        return
    api = _Backups(hub)
    app.router.add_get("/backups", api.status)
    app.router.add_post("/backups", api.start)
