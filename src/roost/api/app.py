"""The HTTP app of the hub (aiohttp). The JSON API is documented in docs/api.md.

Routes:
  GET  /                       the dashboard, its assets and /api/live (roost.api.dashboard, docs/dashboard.md)
  GET  /api/series             series list with latest values            ?match=SELECTOR
  GET  /api/query              bucketed range query                      ?match=&start=&end=&since=&step=&agg=
  POST /write, /api/v2/write   Influx line protocol push (v1 and v2)     see sources/http_push.py
  GET  /metrics, /api/v1/...   Prometheus exposition, query API and remote write (roost.api.prometheus)
  GET  /api/rules/NAME/preview  what a rule would have done over history   ?since=7d (roost.api.rules)
  POST /api/rules/reload       reload the rule files that changed, now
  GET  /healthz                liveness
  GET  /login, POST /logout    the dashboard's login with a token (roost.api.auth, docs/security.md)

Every route is behind roost.api.auth: while any token exists, or the hub listens beyond loopback, a request
needs a token with the route's scope.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from roost.api.auth import add_access_control
from roost.api.backups import add_backup_routes
from roost.api.dashboard import add_dashboard_routes
from roost.api.limits import Limits
from roost.api.prometheus import add_prometheus_routes
from roost.api.responses import json_response
from roost.api.rules import add_rule_routes
from roost.api.things import add_thing_routes
from roost.durability.replication import add_replication_routes
from roost.durations import parse_duration_ms, parse_time_ms
from roost.errors import QueryError, StoreError
from roost.model import now_ms
from roost.selector import Selector
from roost.sources.http_push import add_routes
from roost.store import AGGREGATIONS

if TYPE_CHECKING:
    from roost.hub import Hub

HUB = web.AppKey("hub", object)
LIMITS = web.AppKey("limits", Limits)
MAX_POINTS = 20_000  # per series and query; more is a mistake in the step, not a graph


def _error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


def create_app(hub: Hub) -> web.Application:
    # Pushed bodies are decompressed by the push handler, which also rejects a gzip stream cut short (aiohttp's
    # own decompression would store a truncated last line as a wrong reading).
    app = web.Application(client_max_size=16 * 1024 * 1024, handler_args={"auto_decompress": False})
    app[HUB] = hub
    add_access_control(app, hub)  # tokens, scopes, the login cookie: docs/security.md
    app[LIMITS] = Limits(hub.metrics.registry)  # connections and streams per client: docs/security.md
    app.middlewares.append(app[LIMITS].middleware)
    add_dashboard_routes(app, hub)
    app.router.add_get("/api/series", api_series)
    app.router.add_get("/api/query", api_query)
    add_routes(app, hub)  # POST /write, /api/v2/write
    add_thing_routes(app, hub)  # the Web Thing API: /things..., docs/things.md
    add_prometheus_routes(app, hub)  # /metrics, /api/v1/query..., /api/v1/write
    add_rule_routes(app, hub)  # /api/rules/NAME/preview, docs/rules.md
    app.router.add_get("/healthz", healthz)
    add_replication_routes(app, hub)  # /api/replication/{status,base,stream}, docs/durability.md
    add_backup_routes(app, hub)  # /backups: status and "back up now" for the dashboard, docs/durability.md
    return app


def _hub(request: web.Request) -> Hub:
    return request.app[HUB]  # type: ignore[return-value]


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "series": _hub(request).store.series_count})


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
    return json_response({"series": out})


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
    return json_response(
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
