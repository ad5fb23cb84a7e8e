"""The HTTP app of the hub (aiohttp). The JSON API is documented in docs/api.md.

Routes:
  GET  /                       status page: every series with its latest value
  GET  /api/series             series list with latest values            ?match=SELECTOR
  GET  /api/query              bucketed range query                      ?match=&start=&end=&since=&step=&agg=
  POST /write, /api/v2/write   Influx line protocol push (v1 and v2)     ?precision=ns|us|ms|s
  GET  /metrics                Prometheus exposition of roost's own health
  GET  /healthz                liveness
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from roost.durations import parse_duration_ms, parse_time_ms
from roost.errors import QueryError, RoostError, StoreError, StoreFullError
from roost.model import now_ms
from roost.selector import Selector
from roost.store import AGGREGATIONS

if TYPE_CHECKING:
    from roost.hub import Hub

HUB = web.AppKey("hub", object)
MAX_POINTS = 20_000  # per series and query; more is a mistake in the step, not a graph


def _json(data: object, status: int = 200) -> web.Response:
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    return web.Response(body=body, status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def create_app(hub: Hub) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[HUB] = hub
    app.router.add_get("/", index)
    app.router.add_get("/api/series", api_series)
    app.router.add_get("/api/query", api_query)
    app.router.add_post("/write", write_line_protocol)
    app.router.add_post("/api/v2/write", write_line_protocol)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


def _hub(request: web.Request) -> Hub:
    return request.app[HUB]  # type: ignore[return-value]


async def index(request: web.Request) -> web.Response:
    page = resources.files("roost.web").joinpath("status.html").read_text()
    return web.Response(text=page, content_type="text/html")


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok", "series": _hub(request).store.series_count})


def _selector(request: web.Request, required: bool) -> Selector | None:
    text = request.query.get("match", "")
    if not text:
        if required:
            raise QueryError('missing ?match=: give a series selector such as temperature_celsius{room="lounge"}')
        return None
    return Selector.parse(text)


async def api_series(request: web.Request) -> web.Response:
    hub = _hub(request)
    try:
        selector = _selector(request, required=False)
    except QueryError as err:
        return _error(400, str(err))
    latest = hub.store.latest()
    out = []
    for _sid, series in hub.store.series(selector):
        entry = {"series": str(series), "metric": series.metric, "labels": series.label_dict}
        if series in latest:
            ts, value = latest[series]
            entry["latest"] = {"ts": ts, "value": value}
        out.append(entry)
    return _json({"series": out})


def query_params(params, now: int) -> tuple[int, int, int, str]:
    """(start_ms, end_ms, step_ms, agg) from query parameters, with defaults: the last 24 h, ~300 points, mean."""
    try:
        end = parse_time_ms(params.get("end", "now"), now)
        if "since" in params:
            start = end - parse_duration_ms(params["since"])
        else:
            start = parse_time_ms(params.get("start", "now-24h"), now)
        step = parse_duration_ms(params["step"]) if "step" in params else max(1000, (end - start) // 300)
    except ValueError as err:
        raise QueryError(str(err)) from None
    agg = params.get("agg", "mean")
    if agg not in AGGREGATIONS:
        raise QueryError(f"agg: expected one of {', '.join(AGGREGATIONS)}, got {agg!r}")
    if end < start:
        raise QueryError("end is before start")
    if step <= 0:
        raise QueryError("step must be positive")
    if (end - start) // step > MAX_POINTS:
        raise QueryError(f"{(end - start) // step} points per series is too many (max {MAX_POINTS}): use a larger step")
    return start, end, step, agg


async def api_query(request: web.Request) -> web.Response:
    hub = _hub(request)
    try:
        selector = _selector(request, required=True)
        start, end, step, agg = query_params(request.query, now_ms())
        results = hub.store.query(selector, start, end, step, agg)
    except (QueryError, StoreError) as err:
        return _error(400, str(err))
    return _json(
        {
            "start": start,
            "end": end,
            "step": step,
            "agg": agg,
            "series": [
                {"series": str(r.series), "metric": r.series.metric, "labels": r.series.label_dict, "ts": r.ts, "values": r.values}
                for r in results
            ],
        }
    )


async def write_line_protocol(request: web.Request) -> web.Response:
    """Influx line protocol; valid lines are stored even when others are malformed (then 400 names them)."""
    from roost.transfer.lineprotocol import parse_lines

    hub = _hub(request)
    precision = request.query.get("precision", "ns")
    if precision not in ("ns", "us", "u", "ms", "s", "m", "h"):
        return _error(400, f"precision: expected ns, us, ms, s, m or h, got {precision!r}")
    body = await request.text()
    parsed = parse_lines(body, precision=precision, default_ts_ms=now_ms())
    for err in parsed.errors:
        hub.metrics.reject(err.reason, f"{request.remote}:{err.line}", f"line {err.line}: {err.message}")
    try:
        result = await hub.ingest(parsed.readings)
    except StoreFullError as err:
        return _error(507, str(err))
    except RoostError as err:
        return _error(500, str(err))
    if parsed.errors:
        shown = "; ".join(f"line {e.line}: {e.message}" for e in parsed.errors[:20])
        more = f" (and {len(parsed.errors) - 20} more)" if len(parsed.errors) > 20 else ""
        return _json(
            {"error": f"{len(parsed.errors)} malformed line(s), {result.accepted} reading(s) stored: {shown}{more}"},
            400,
        )
    return web.Response(status=204)


async def metrics(request: web.Request) -> web.Response:
    hub = _hub(request)
    hub.refresh_gauges()
    return web.Response(body=generate_latest(hub.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
