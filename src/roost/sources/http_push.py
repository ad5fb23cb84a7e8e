"""Readings pushed over HTTP in Influx line protocol: `POST /write` (v1) and `POST /api/v2/write` (v2).

ESP8266 sketches, Telegraf's `outputs.influxdb` / `outputs.influxdb_v2` and the influxdb-client libraries all
speak it. A push is acknowledged (204) only once `hub.ingest` has made it durable. The valid lines of a body
are stored even when other lines are malformed; the 400 then names each bad line, and the client must not resend.
Credentials, database, retention policy, org and bucket are accepted and ignored: roost has one store.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import TYPE_CHECKING

from aiohttp import web

from roost.api.responses import json_response
from roost.errors import RoostError, StoreFullError
from roost.model import now_ms
from roost.transfer.lineprotocol import ParseResult, parse_lines

if TYPE_CHECKING:
    from roost.hub import Hub

__all__ = ["MAX_BODY_BYTES", "add_routes"]

MAX_BODY_BYTES = 16 * 1024 * 1024  # after gzip decoding, so a small bomb cannot fill memory either
_GZIP_MAGIC = b"\x1f\x8b"
_V1_PRECISIONS = ("ns", "u", "us", "ms", "s", "m", "h")
_V2_PRECISIONS = ("ns", "us", "ms", "s")
_SHOWN_ERRORS = 20
# Influx v2 clients (influxdb-client, Telegraf) read `message` of a JSON error with an Influx error code.
_V2_CODES = {400: "invalid", 413: "request too large", 500: "internal error", 507: "unavailable"}


def add_routes(app: web.Application, hub: Hub) -> None:
    """Serve both write endpoints for `hub` on `app`."""
    push = _Push(hub)
    app.router.add_post("/write", push.write_v1)
    app.router.add_post("/api/v2/write", push.write_v2)


class _TooLarge(Exception):
    pass


class _Undecodable(Exception):
    pass


class _Push:
    def __init__(self, hub: Hub):
        self.hub = hub

    async def write_v1(self, request: web.Request) -> web.Response:
        return await self._write(request, _V1_PRECISIONS, _v1_error)

    async def write_v2(self, request: web.Request) -> web.Response:
        return await self._write(request, _V2_PRECISIONS, _v2_error)

    async def _write(self, request: web.Request, precisions: tuple[str, ...], error) -> web.Response:
        precision = request.query.get("precision", "ns")
        if precision not in precisions:
            return error(400, f"precision: expected one of {', '.join(precisions)}, got {precision!r}")
        try:
            body = await _read_body(request)
            # aiohttp decodes gzip by itself, unless the app turns auto_decompress off, but takes a stream cut
            # short for a shorter body (a line cut mid-number is a wrong reading); a body still compressed when
            # it gets here is decoded with its end and CRC checked.
            if request.headers.get("Content-Encoding", "").lower() == "gzip" and body[:2] == _GZIP_MAGIC:
                body = await asyncio.to_thread(_gunzip, body)
        except _TooLarge:
            return error(
                413,
                f"the body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB (after decompression): "
                "send smaller batches (Telegraf: lower metric_batch_size)",
            )
        except (web.RequestPayloadError, _Undecodable) as err:
            encoding = request.headers.get("Content-Encoding", "identity")
            return error(400, f"cannot read the body (Content-Encoding: {encoding}): {str(err).strip()}")
        # A big body takes a while to parse: in a worker thread, so the loop keeps serving sources and requests.
        parsed = await asyncio.to_thread(_parse, body, precision, now_ms())
        for problem in parsed.errors:
            self.hub.metrics.reject(problem.reason, f"{request.remote}:{problem.line}", f"{request.remote}: {problem}")
        try:
            result = await self.hub.ingest(parsed.readings)
        except StoreFullError as err:
            response = error(507, f"{err} — nothing of this body was stored: send it again later")
            response.headers["Retry-After"] = "30"
            return response
        except RoostError as err:
            return error(500, str(err))
        problems = [*parsed.errors, *result.refused]  # the store refuses new series over store.max_series
        if problems:
            counts = [f"{len(parsed.errors)} malformed line(s)"] if parsed.errors else []
            if result.refused:
                counts.append(f"{len(result.refused)} reading(s) refused")
            shown = "; ".join(str(e) for e in problems[:_SHOWN_ERRORS])
            more = f" (and {len(problems) - _SHOWN_ERRORS} more)" if len(problems) > _SHOWN_ERRORS else ""
            return error(
                400,
                f"{', '.join(counts)}, {result.accepted} reading(s) stored (do not resend them): {shown}{more}",
            )
        return web.Response(status=204)


async def _read_body(request: web.Request) -> bytes:
    """The body (gzip-decoded if aiohttp decoded it); raises _TooLarge as soon as it passes MAX_BODY_BYTES."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _TooLarge
    body = bytearray()
    async for chunk in request.content.iter_chunked(256 * 1024):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _TooLarge
    return bytes(body)


def _gunzip(data: bytes) -> bytes:
    """Decode a gzip body (all its members), checking that each ends and its CRC matches; at most MAX_BODY_BYTES."""
    out = bytearray()
    while data:
        member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += member.decompress(data, MAX_BODY_BYTES + 1 - len(out))
        except zlib.error as err:
            raise _Undecodable(f"not valid gzip ({err})") from None
        if len(out) > MAX_BODY_BYTES or member.unconsumed_tail:
            raise _TooLarge
        if not member.eof:
            raise _Undecodable("the gzip stream ends early: the body was cut short")
        data = member.unused_data
    return bytes(out)


def _parse(body: bytes, precision: str, default_ts_ms: int) -> ParseResult:
    # Invalid UTF-8 becomes lone surrogates, which the parser rejects for their line only.
    return parse_lines(body.decode("utf-8", errors="surrogateescape"), precision=precision, default_ts_ms=default_ts_ms)


def _v1_error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


def _v2_error(status: int, message: str) -> web.Response:
    return json_response({"code": _V2_CODES.get(status, "invalid"), "message": message}, status)


