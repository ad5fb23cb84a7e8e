"""The web dashboard: its page, its static assets and the live stream of readings (docs/dashboard.md).

Routes:
  GET /                        the dashboard (src/roost/web/index.html)
  GET /assets/{name}           the dashboard's own scripts and styles (src/roost/web/)
  GET /assets/uplot/{name}     uPlot, served from src/roost/web/node_modules (installed by `make venv`)
  GET /api/live                Server-Sent Events: a `snapshot` of every latest value, then `readings`
                               as the hub stores them                       ?match=SELECTOR

Assets are revalidated on every load (`Cache-Control: no-cache` with an ETag, so an unchanged file costs a
304) and sent gzipped to browsers that accept it; both are computed once per file version and kept in memory.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from dataclasses import dataclass
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
_GZIP_FROM = 1024  # bytes; smaller files gain less than the header costs

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
    sections = [name for name, path in _OPTIONAL_SECTIONS.items() if path in paths]
    if "rules" not in sections and "things" in sections and _has_rules(app[_HUB]):
        sections.append("rules")  # rules are things of @type Rule (docs/rules.md): the Thing API serves them
    return sections


def _has_rules(hub: Hub) -> bool:
    if getattr(hub, "rules", None) is not None:  # a rules directory is configured, even if it is empty so far
        return True
    return any("Rule" in thing.types for thing in getattr(hub, "things", ()))


async def index(request: web.Request) -> web.Response:
    page = (_WEB / "index.html").read_text().replace("{{sections}}", " ".join(_sections(request.app)))
    response = web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-cache"})
    if len(page) >= _GZIP_FROM:
        response.enable_compression(web.ContentCoding.gzip)
    return response


@dataclass(frozen=True, slots=True)
class _Asset:
    version: tuple[int, int]  # the file's mtime_ns and size when it was read
    etag: str
    body: bytes
    gzipped: bytes | None


_asset_cache: dict[Path, _Asset] = {}


def _load_asset(path: Path) -> _Asset:
    stat = path.stat()
    version = (stat.st_mtime_ns, stat.st_size)
    cached = _asset_cache.get(path)
    if cached is not None and cached.version == version:
        return cached
    body = path.read_bytes()
    gzipped = gzip.compress(body, compresslevel=9, mtime=0) if len(body) >= _GZIP_FROM else None
    etag = f'W/"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'  # weak: the gzipped bytes differ
    _asset_cache[path] = asset = _Asset(version, etag, body, gzipped)
    return asset


def _send_asset(request: web.Request, path: Path) -> web.Response:
    asset = _load_asset(path)
    headers = {"Cache-Control": "no-cache", "ETag": asset.etag, "Vary": "Accept-Encoding"}
    if asset.etag in (tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = _ASSET_TYPES[path.suffix]
    if asset.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=asset.gzipped, headers=headers)
    return web.Response(body=asset.body, headers=headers)


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = _WEB / name
    if "/" in name or path.suffix not in _ASSET_TYPES or not path.is_file():
        raise web.HTTPNotFound(text=f"no dashboard asset {name!r}")
    return _send_asset(request, path)


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
    return _send_asset(request, path)


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
