"""roost as Prometheus sees it: `/metrics`, the HTTP query API (`/api/v1/...`) and remote write in.

Routes (docs/prometheus.md, docs/remote-write.md):
  GET       /metrics                        latest value of every series, and roost's own health
  GET|POST  /api/v1/query                   instant query             query=, time=
  GET|POST  /api/v1/query_range             range query               query=, start=, end=, step=
  GET|POST  /api/v1/series                  series of match[] selectors
  GET|POST  /api/v1/labels                  label names               match[] optional
  GET       /api/v1/label/{name}/values     values of one label       match[] optional
  GET       /api/v1/status/buildinfo        what Grafana asks to tell Prometheus flavours apart
  POST      /api/v1/write                   Prometheus remote write (snappy protobuf), acknowledged once durable

Responses have Prometheus' shapes: `{"status": "success", "data": ...}`, sample values as strings, timestamps
as float seconds, and errors `{"status": "error", "errorType": "bad_data"|"execution", "error": ...}` with 400
or 422, so Grafana's Prometheus data source and `promtool query` work unchanged.

Queries are evaluated, and their answers encoded, in a thread of their own on a `ReadView` of the store, one at
a time, so a month-long query does not hold up live streams, MQTT or ingest on the event loop. A query that reads
a handful of day chunks (`INLINE_SERIES_DAYS`) is answered on the event loop itself when no other query is
reading: the hand-over to the thread and back cost more than such a query.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import orjson
from aiohttp import web
from prometheus_client import Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from roost import __version__, promql
from roost.api.answers import AnswerCache, Kept, pack, worth_packing
from roost.durations import parse_duration_ms
from roost.errors import RoostError, StoreFullError
from roost.export.prompb import TooLarge, WireError, decode_write_request
from roost.model import now_ms
from roost.promql import BadData, PromQLError, RawMatrix, Vector
from roost.selector import Selector
from roost.store import DAY_MS, ReadView, ViewBusy

if TYPE_CHECKING:
    from roost.hub import Hub

__all__ = ["add_prometheus_routes", "exposition", "format_value", "format_values"]

log = logging.getLogger("roost.api")

MAX_WRITE_BYTES = 32 * 1024 * 1024  # decoded; Prometheus sends a few hundred KB per request
# A query reading at most this many day chunks (series x days) is answered on the event loop, without the hand-over
# to the query thread: a week of three series. Uncached, that is ~3 ms of decoding on this loop; cached, under 1 ms.
INLINE_SERIES_DAYS = 32
_RATE_WINDOW_S = 60.0


def add_prometheus_routes(app: web.Application, hub: Hub) -> None:
    """Serve /metrics, the /api/v1 query endpoints and remote write for `hub` on `app`."""
    api = _PrometheusApi(hub)
    app.router.add_get("/metrics", api.metrics)
    for path, handler in (
        ("/api/v1/query", api.query),
        ("/api/v1/query_range", api.query_range),
        ("/api/v1/series", api.series),
        ("/api/v1/labels", api.labels),
    ):
        app.router.add_get(path, handler)
        app.router.add_post(path, handler)
    app.router.add_get("/api/v1/label/{name}/values", api.label_values)
    app.router.add_get("/api/v1/status/buildinfo", api.buildinfo)
    app.router.add_post("/api/v1/write", api.remote_write)
    app.on_startup.append(api.warm)
    app.on_cleanup.append(api.close)


# ---------------------------------------------------------------------- values and responses


def format_value(v: float) -> str:
    """A sample value as Prometheus writes it (Go's FormatFloat 'f', -1): shortest exact digits, no exponent."""
    if v != v:
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    text = repr(v)
    if "e" in text:
        return np.format_float_positional(v, trim="-")
    return text[:-2] if text.endswith(".0") else text


def format_values(values: np.ndarray) -> list[str]:
    """`format_value` of every value. orjson writes the same shortest digits as repr, ten times faster; what
    Go writes differently (whole numbers, exponents, NaN and infinities) is fixed up."""
    if not len(values):
        return []
    out = orjson.dumps(values.tolist()).decode().strip("[]").split(",")
    magnitude = np.abs(values)
    with np.errstate(invalid="ignore"):
        whole = (values == np.trunc(values)) & (magnitude < 1e16)  # repr "21.0" -> "21"
        special = ~np.isfinite(values) | (magnitude >= 1e16) | ((magnitude < 1e-4) & (values != 0))  # nan, inf, exponents
    for i in np.flatnonzero(whole).tolist():
        out[i] = out[i][:-2]
    for i in np.flatnonzero(special).tolist():
        out[i] = format_value(float(values[i]))
    return out


def _series_days(view: ReadView, node: promql.ast.Node, start: int, end: int) -> int:
    """At most how many day chunks a query reads: matching series times days, summed over its selectors."""
    total = 0
    for vs, back_ms in promql.selections(node):
        days = (end - vs.offset_ms) // DAY_MS - (start - vs.offset_ms - back_ms) // DAY_MS + 1
        total += view.count(vs.selector) * days
    return total


def _success(data: object) -> web.Response:
    return _json(_success_body(data))


def _success_body(data: object) -> bytes:
    return orjson.dumps({"status": "success", "data": data})


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


async def _send_kept(request: web.Request, kept: Kept) -> web.Response:
    """A kept answer: as kept, or unpacked (off the event loop) for a client that does not accept gzip."""
    if not kept.gzipped:
        return _json(kept.body)
    headers = {"Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=kept.body, content_type="application/json", headers=headers)
    body = await asyncio.to_thread(gzip.decompress, kept.body)
    return web.Response(body=body, content_type="application/json", headers=headers)


def _failure(err: PromQLError) -> web.Response:
    body = {"status": "error", "errorType": err.error_type, "error": str(err)}
    return web.Response(body=orjson.dumps(body), status=err.status, content_type="application/json")


def _metric(labels) -> dict[str, str]:
    return dict(labels)


def _parse_time(name: str, text: str) -> int:
    """Epoch seconds (with a fraction) or RFC 3339, as Prometheus accepts them; ms."""
    try:
        return int(round(float(text) * 1000))
    except ValueError:
        pass
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        raise BadData(f'invalid parameter "{name}": cannot parse "{text}" to a valid timestamp') from None


def _parse_step(text: str) -> int:
    try:
        return int(round(float(text) * 1000))
    except ValueError:
        pass
    try:
        return parse_duration_ms(text)
    except ValueError:
        raise BadData(f'invalid parameter "step": cannot parse "{text}" to a valid duration') from None


async def _params(request: web.Request):
    """Query string and form body together, as Prometheus reads them (promtool and Grafana POST forms)."""
    params = request.query.copy()
    if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
        params.extend(await request.post())
    return params


# ---------------------------------------------------------------------- the API


class _PrometheusApi:
    def __init__(self, hub: Hub):
        self.hub = hub
        self._rate = Gauge(
            "roost_readings_per_second",
            "Readings stored per second over about the last minute (between scrapes).",
            registry=hub.metrics.registry,
        )
        self._published: deque[tuple[float, int]] = deque()
        self._queries = ThreadPoolExecutor(1, thread_name_prefix="roost-promql")
        self._answers = AnswerCache(hub.settings.hub.query_cache_mb * 1024 * 1024)
        self._packing: dict[tuple, asyncio.Task] = {}  # answers being gzipped for the cache, by request key
        answered = Counter(
            "roost_query_answers", "Range-query answers, by where they came from (cache: an identical request's, still valid).",
            ["origin"], registry=hub.metrics.registry,
        )
        self._from_cache, self._from_store = answered.labels(origin="cache"), answered.labels(origin="store")

    async def warm(self, _app: web.Application) -> None:
        """Before the hub serves: the newest week's 5-minute summaries into the store's cache, in the query thread
        (`Store.warm_summaries`: ~0.1 s here, bounded by its cache budget). Queries answered during it on the
        event loop would share the interpreter with it, which costs them more than the wait."""
        started = time.perf_counter()
        try:
            days = await asyncio.get_running_loop().run_in_executor(self._queries, self.hub.store.warm_summaries)
        except (RoostError, OSError) as err:
            log.warning("summaries of the newest days not prepared: %s (queries make them when asked)", err)
            return
        log.info("summaries of %d sealed days prepared in %.0f ms", days, (time.perf_counter() - started) * 1000)

    async def close(self, _app: web.Application) -> None:
        for task in list(self._packing.values()):
            task.cancel()
        self._queries.shutdown(wait=False, cancel_futures=True)

    async def _answer(self, node: promql.ast.Node, start: int, end: int, answer: Callable[[ReadView], bytes]) -> bytes:
        """`answer(view)` on a view of the store taken here on the event loop: right here when the query reads
        little (`INLINE_SERIES_DAYS`) and no other query is reading, else in the query thread."""
        view = self.hub.store.read_view(vs.selector for vs, _back_ms in promql.selections(node))
        if _series_days(view, node, start, end) <= INLINE_SERIES_DAYS:
            try:
                return view.run(answer, wait=False)
            except ViewBusy:
                pass
        return await asyncio.get_running_loop().run_in_executor(self._queries, view.run, answer)

    # ------------------------------------------------------------------ queries

    async def query(self, request: web.Request) -> web.Response:
        try:
            params = await _params(request)
            node = promql.parse(params.get("query", ""))
            t = _parse_time("time", params["time"]) if params.get("time") else now_ms()

            def answer(view: ReadView) -> bytes:
                return _instant_body(promql.Evaluator(view, t, t, 1000).eval(node), t)

            return _json(await self._answer(node, t, t, answer))
        except PromQLError as err:
            return _failure(err)

    async def query_range(self, request: web.Request) -> web.Response:
        try:
            params = await _params(request)
            for name in ("start", "end", "step"):
                if not params.get(name):
                    raise BadData(f'invalid parameter "{name}": missing')
            start = _parse_time("start", params["start"])
            end = _parse_time("end", params["end"])
            step = _parse_step(params["step"])
            query = params.get("query", "")
            node = promql.parse(query)
            selections = list(promql.selections(node))
            key = (query, start, end, step)
            caching = self._answers.max_bytes > 0
            mark = self.hub.store.history_mark(vs.selector for vs, _back_ms in selections) if caching else None
            kept = self._answers.get(key, mark) if caching else None
            if kept is not None:
                self._from_cache.inc()
                return await _send_kept(request, kept)

            def answer(view: ReadView) -> bytes:
                return _range_body(promql.Evaluator(view, start, end, step).eval(node), start, end, step)

            body = await self._answer(node, start, end, answer)
            self._from_store.inc()
            if caching and self._answers.offer(key) and key not in self._packing:
                # what it read reaches `end` (later with a negative offset)
                horizon = max((end - vs.offset_ms for vs, _back in selections), default=end)
                if not worth_packing(body):
                    self._answers.put(key, mark, horizon, Kept(body))
                else:  # gzipped beside the next requests, not before this one is sent
                    self._packing[key] = asyncio.create_task(self._keep_packed(key, mark, horizon, body))
            return _json(body)
        except PromQLError as err:
            return _failure(err)

    async def _keep_packed(self, key: tuple, mark, horizon: int, body: bytes) -> None:
        try:
            self._answers.put(key, mark, horizon, await asyncio.to_thread(pack, body))
        finally:
            del self._packing[key]

    # ------------------------------------------------------------------ metadata

    def _selectors(self, params, required: bool) -> list[Selector] | None:
        texts = params.getall("match[]", [])
        if not texts:
            if required:
                raise BadData("no match[] parameter provided")
            return None
        out = []
        for text in texts:
            try:
                out.append(Selector.parse(text))
            except RoostError as err:
                raise BadData(f'invalid parameter "match[]": {err}') from None
        return out

    def _matching(self, selectors: list[Selector] | None):
        seen = {}
        for selector in selectors or [None]:
            for sid, series in self.hub.store.series(selector):
                seen[sid] = series
        return list(seen.values())

    async def series(self, request: web.Request) -> web.Response:
        try:
            selectors = self._selectors(await _params(request), required=True)
        except PromQLError as err:
            return _failure(err)
        return _success([{"__name__": s.metric, **s.label_dict} for s in self._matching(selectors)])

    async def labels(self, request: web.Request) -> web.Response:
        try:
            selectors = self._selectors(await _params(request), required=False)
        except PromQLError as err:
            return _failure(err)
        names = {"__name__"}
        for s in self._matching(selectors):
            names.update(k for k, _v in s.labels)
        return _success(sorted(names))

    async def label_values(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            selectors = self._selectors(request.query, required=False)
        except PromQLError as err:
            return _failure(err)
        values = set()
        for s in self._matching(selectors):
            value = s.metric if name == "__name__" else s.label_dict.get(name)
            if value:
                values.add(value)
        return _success(sorted(values))

    async def buildinfo(self, request: web.Request) -> web.Response:
        return _success({"version": "2.42.0", "revision": f"roost-{__version__}", "branch": "", "buildUser": "",
                         "buildDate": "", "goVersion": ""})

    # ------------------------------------------------------------------ /metrics

    async def metrics(self, request: web.Request) -> web.Response:
        hub = self.hub
        hub.refresh_gauges()
        self._rate.set(self._readings_per_second())
        own = generate_latest(hub.metrics.registry)
        body = own + exposition(hub.store.latest(), _family_names(own)).encode()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _readings_per_second(self) -> float:
        now, published = time.monotonic(), self.hub.bus.published
        history = self._published
        history.append((now, published))
        while len(history) > 2 and now - history[1][0] >= _RATE_WINDOW_S:
            history.popleft()
        if len(history) < 2:  # the first scrape: the average since the hub started
            elapsed = max(time.time() - self.hub.started_at, 1e-3)
            return published / elapsed
        (t0, n0) = history[0]
        return (published - n0) / max(now - t0, 1e-3)

    # ------------------------------------------------------------------ remote write in

    async def remote_write(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_WRITE_BYTES:
            return web.Response(status=413, text=f"body over {MAX_WRITE_BYTES} bytes: lower max_samples_per_send")
        body = await request.read()
        try:
            decoded = await asyncio.to_thread(decode_write_request, body, MAX_WRITE_BYTES)
        except TooLarge as err:
            return web.Response(status=413, text=f"{err}: lower max_samples_per_send")
        except WireError as err:
            return web.Response(status=400, text=f"{err}: send remote-write 1.0 (snappy-compressed protobuf)")
        for problem in decoded.invalid:
            self.hub.metrics.reject(problem.reason, f"{request.remote}:remote_write", f"{request.remote}: {problem}")
        try:
            result = await self.hub.ingest(decoded.readings)
        except StoreFullError as err:
            # 5xx: Prometheus keeps the samples and retries
            return web.Response(status=507, text=f"{err} — nothing of this request was stored", headers={"Retry-After": "30"})
        refused = [*decoded.invalid, *result.refused]
        if refused:
            shown = "; ".join(str(e) for e in refused[:10])
            return web.Response(
                status=400, text=f"{len(refused)} sample(s) refused, {result.accepted} stored (do not resend): {shown}"
            )
        return web.Response(status=204)


def _instant_body(result, t: int) -> bytes:
    seconds = _seconds(t, t % 1000 == 0)
    if isinstance(result, np.ndarray):
        return _success_body({"resultType": "scalar", "result": [seconds, format_value(float(result[0]))]})
    if isinstance(result, RawMatrix):
        out = [
            {"metric": _metric(lb), "values": list(zip((ts / 1000).tolist(), format_values(vs)))}
            for lb, ts, vs in result.series
        ]
        return _success_body({"resultType": "matrix", "result": out})
    present = np.flatnonzero(result.present[:, 0]).tolist()
    texts = format_values(result.values[present, 0])
    out = [{"metric": _metric(result.labels[i]), "value": [seconds, text]} for i, text in zip(present, texts)]
    return _success_body({"resultType": "vector", "result": out})


def _range_body(result, start: int, end: int, step: int) -> bytes:
    if isinstance(result, RawMatrix):
        raise BadData("invalid expression type \"range vector\" for range query, must be Scalar or instant Vector")
    heads = _step_heads(start, end, step)
    if isinstance(result, np.ndarray):
        result = Vector([()], result[None, :], np.ones((1, len(heads)), bool))
    parts = []
    for i, lb in enumerate(result.labels):
        idx = np.flatnonzero(result.present[i])
        if len(idx):
            if len(idx) == len(heads):
                own = heads
            elif idx[-1] - idx[0] + 1 == len(idx):  # one run of steps, as where a series starts or ends in the range
                own = heads[idx[0] : idx[-1] + 1]
            else:
                own = list(map(heads.__getitem__, idx.tolist()))
            points = _points(own, result.values[i, idx])
            parts.append(b'{"metric":%s,"values":%s}' % (orjson.dumps(_metric(lb)), points))
    return b'{"status":"success","data":{"resultType":"matrix","result":[%s]}}' % b",".join(parts)


def _seconds(ms, whole: bool):
    """Times in ms as Prometheus writes them in answers: whole seconds as integers (1702591800, not
    1702591800.0), others as floats (1702591800.5)."""
    return ms // 1000 if whole else ms / 1000


@lru_cache(maxsize=8)
def _step_heads(start: int, end: int, step: int) -> tuple[bytes, ...]:
    """`"],[t,"` for every step t of a range: what goes before each point's value. Kept for a few ranges, since
    Grafana rounds ranges to the step, so its panels and their refreshes ask for the same range over and over."""
    seconds = _seconds(np.arange(start, end + 1, step, dtype=np.int64), start % 1000 == 0 and step % 1000 == 0)
    stamps = orjson.dumps(seconds.tolist())[1:-1]
    return tuple((b'"],[' + stamps.replace(b",", b',"\0"],[') + b',"').split(b"\0"))


def _points(heads: Sequence[bytes], values: np.ndarray) -> bytes:
    """`[[t, "v"], ...]` as Prometheus writes a series' points, from the steps' heads (`_step_heads`) and the values.

    orjson writes the values in one call on the array; the trailing `.0` of whole numbers is cut as Go does, and
    the pieces are interleaved with the heads by list slicing and joined once. A series with values that Go writes
    differently from orjson beyond the `.0` (NaN, infinities, exponents) takes `format_values`.
    """
    magnitude = np.abs(values)
    with np.errstate(invalid="ignore"):
        special = ~np.isfinite(values) | (magnitude >= 1e16) | ((magnitude < 1e-4) & (values != 0))
    if special.any():
        texts = [t.encode() for t in format_values(values)]
    else:
        written = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1] + b","
        if (values == np.trunc(values)).any():  # only whole numbers end in ".0" (a search of the text costs more)
            written = written.replace(b".0,", b",")
        texts = written.split(b",")
        del texts[-1]
    n = len(values)
    out = [_CLOSE] * (2 * n + 1)
    out[0 : 2 * n : 2] = heads
    out[1 : 2 * n : 2] = texts
    out[0] = b"[[" + heads[0][4:]
    return b"".join(out)


_CLOSE = b'"]]'


# ---------------------------------------------------------------------- text exposition of stored series


def _family_names(own: bytes) -> set[str]:
    """Metric names roost's own families use (HELP/TYPE names and sample names such as *_created)."""
    names = set()
    for line in own.decode().splitlines():
        if line.startswith("# "):
            names.add(line.split(" ", 3)[2])
        elif line:
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def exposition(latest: dict, reserved: set[str]) -> str:
    """The latest value of every stored series in the text format, one family per metric name.

    Names ending in `_total` are typed counter, all others gauge (what promtool expects of those names). A
    stored series whose name roost's own metrics use (`roost_readings_total`, ...) is left out: two families
    of one name would make the whole scrape fail. No timestamps: the scrape time is the sample time, as for
    any exporter, so Prometheus applies its usual staleness.
    """
    families: dict[str, list[str]] = {}
    for series, (_ts, value) in latest.items():
        name = series.metric
        if name in reserved:
            continue
        labels = ",".join(f'{k}="{_escape(v)}"' for k, v in series.labels)
        families.setdefault(name, []).append(f"{name}{{{labels}}} {format_value(value)}" if labels else f"{name} {format_value(value)}")
    out = []
    for name in sorted(families):
        kind = "counter" if name.endswith("_total") else "gauge"
        out.append(f"# HELP {name} Latest value stored by roost.\n# TYPE {name} {kind}\n")
        out.append("\n".join(sorted(families[name])) + "\n")
    return "".join(out)
