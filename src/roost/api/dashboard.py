"""The web dashboard: its page, its static assets and the live stream of readings (docs/dashboard.md).

Routes:
  GET /                        the dashboard (src/roost/web/index.html)
  GET /assets/{name}           the dashboard's own scripts and styles (src/roost/web/)
  GET /assets/uplot/{name}     uPlot, served from src/roost/web/node_modules (installed by `make venv`)
  GET /api/live                Server-Sent Events: a `snapshot` of every latest value, then `readings`
                               as the hub stores them                       ?match=SELECTOR
"""

from __future__ import annotations

import asyncio
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from roost.errors import QueryError
from roost.model import Reading, Series
from roost.selector import Selector

if TYPE_CHECKING:
    from roost.hub import Hub

_WEB = Path(str(resources.files("roost.web")))
_ASSET_TYPES = {".js": "text/javascript", ".css": "text/css"}
_UPLOT_DIR = _WEB / "node_modules" / "uplot" / "dist"
_UPLOT_FILES = ("uPlot.iife.min.js", "uPlot.min.css")

# Sections whose API may or may not be part of this hub: the page shows a section only when its route exists,
# so a hub without things never shows an empty "Things" tab (see docs/dashboard.md, "Adding a section").
_OPTIONAL_SECTIONS = {"things": "/things", "rules": "/rules", "backups": "/backups"}

LIVE_QUEUE = 1_000  # readings per client; the bus drops the oldest beyond that, and the page only needs the latest
_HEARTBEAT_S = 20.0  # a comment line this often lets the hub notice a client that went away without closing
_HUB = web.AppKey("dashboard_hub", object)
_LIVE_TASKS = web.AppKey("live_tasks", set)


def add_dashboard_routes(app: web.Application, hub: Hub) -> None:
    """Serve the dashboard at `/` with its assets and the `/api/live` stream of `hub`."""
    app[_HUB] = hub
    app[_LIVE_TASKS] = set()
    app.router.add_get("/", index)
    app.router.add_get("/assets/uplot/{name}", uplot_asset)
    app.router.add_get("/assets/{name}", asset)
    app.router.add_get("/api/live", live)
    app.on_shutdown.append(_end_live_streams)


def _sections(app: web.Application) -> list[str]:
    paths = {resource.canonical for resource in app.router.resources()}
    return [name for name, path in _OPTIONAL_SECTIONS.items() if path in paths]


async def index(request: web.Request) -> web.Response:
    page = (_WEB / "index.html").read_text().replace("{{sections}}", " ".join(_sections(request.app)))
    return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-cache"})


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = _WEB / name
    if "/" in name or path.suffix not in _ASSET_TYPES or not path.is_file():
        raise web.HTTPNotFound(text=f"no dashboard asset {name!r}")
    return web.FileResponse(path, headers={"Cache-Control": "no-cache", "Content-Type": _ASSET_TYPES[path.suffix]})


async def uplot_asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in _UPLOT_FILES:
        raise web.HTTPNotFound(text=f"no uPlot file {name!r}")
    path = _UPLOT_DIR / name
    if not path.is_file():
        # Served as a script comment too, so the page can say what is missing instead of failing silently.
        raise web.HTTPServiceUnavailable(
            text=f"{path} is missing: the dashboard's charts need uPlot from npm — run `make venv` "
            f"(or `npm ci --prefix {_WEB}`)"
        )
    return web.FileResponse(path, headers={"Cache-Control": "no-cache", "Content-Type": _ASSET_TYPES[path.suffix]})


def _reading_json(series: Series, ts: int, value: float) -> dict:
    return {"series": str(series), "metric": series.metric, "labels": series.label_dict, "ts": ts, "value": value}


def _event(name: str, data: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def live(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: one bus subscription per client, coalesced to the newest reading per series."""
    hub: Hub = request.app[_HUB]  # type: ignore[assignment]
    text = request.query.get("match", "")
    try:
        selector = Selector.parse(text) if text else None
    except QueryError as err:
        return web.json_response({"error": str(err)}, status=400)

    # Subscribe before reading the snapshot: a reading stored in between is then sent twice, never lost.
    sub = hub.bus.subscribe("live", LIVE_QUEUE)  # drops of every browser count under one label
    task = asyncio.current_task()
    request.app[_LIVE_TASKS].add(task)
    try:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        snapshot = [
            _reading_json(series, ts, value)
            for series, (ts, value) in hub.store.latest().items()
            if selector is None or selector.matches(series)
        ]
        await response.write(b"retry: 3000\n" + _event("snapshot", snapshot))
        while True:
            try:
                first: Reading = await asyncio.wait_for(sub.get(), _HEARTBEAT_S)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            newest: dict[Series, Reading] = {}
            for reading in [first, *sub.get_nowait_many(LIVE_QUEUE)]:
                if selector is None or selector.matches(reading.series):
                    held = newest.get(reading.series)
                    if held is None or reading.ts_ms >= held.ts_ms:
                        newest[reading.series] = reading
            if newest:
                batch = [_reading_json(r.series, r.ts_ms, r.value) for r in newest.values()]
                await response.write(_event("readings", batch))
    except ConnectionError:
        return response  # the browser went away
    finally:
        hub.bus.unsubscribe(sub)
        request.app[_LIVE_TASKS].discard(task)


async def _end_live_streams(app: web.Application) -> None:
    # Open streams never finish by themselves; without this the hub would wait out aiohttp's shutdown timeout.
    tasks = list(app[_LIVE_TASKS])
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=1.0)
