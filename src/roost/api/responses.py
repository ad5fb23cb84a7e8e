"""The one way roost's HTTP handlers answer with JSON."""

from __future__ import annotations

import orjson
from aiohttp import web

_COMPRESS_ABOVE = 4096  # a week of four charts is ~100 kB of JSON, ~14 kB gzipped (when the client accepts it)


def json_response(data: object, status: int = 200) -> web.Response:
    """JSON via orjson (numpy arrays included), gzipped for clients that accept it when the body is large."""
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    response = web.Response(body=body, status=status, content_type="application/json")
    if len(body) > _COMPRESS_ABOVE:
        response.enable_compression()
    return response


def is_websocket(request: web.Request) -> bool:
    """Whether the request asks to be upgraded to a WebSocket."""
    return request.headers.get("Upgrade", "").lower() == "websocket"

