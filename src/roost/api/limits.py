"""Bounds on what clients can hold of the hub's HTTP server (docs/security.md, "Limits").

- **Connections:** at most `MAX_CONNECTIONS` open at once, `MAX_PER_CLIENT` from one address; one more is
  closed at once (counted in `roost_http_refused_total{reason}`, logged at most once a minute per reason).
- **Slow clients:** a connection that has not sent a whole request within `IDLE_TIMEOUT_S` of opening (or of
  its last answer) is closed, so a client trickling headers byte by byte ("slowloris") holds a connection for
  seconds, not forever.
- **Streams:** WebSockets and live streams (SSE) stay open by design, so they are counted apart: at most
  `MAX_STREAMS` at once, `MAX_STREAMS_PER_CLIENT` from one address; beyond, `503` with `Retry-After`.
- **Bodies:** 16 MiB for a request (after gzip for pushes), 32 MiB declared by a remote-write body; see the
  handlers.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter as PromCounter

from roost.api.responses import is_websocket

__all__ = ["IDLE_TIMEOUT_S", "MAX_CONNECTIONS", "MAX_STREAMS", "Limits"]

log = logging.getLogger("roost.api")

MAX_CONNECTIONS = 1024
MAX_PER_CLIENT = 128
IDLE_TIMEOUT_S = 15.0
MAX_STREAMS = 256
MAX_STREAMS_PER_CLIENT = 32
_STREAM_PATHS = ("/api/live",)


def _is_stream(request: web.Request) -> bool:
    return is_websocket(request) or request.path in _STREAM_PATHS


class Limits:
    """The counters behind the bounds; `guard(server)` after the runner's setup, `middleware` in the app."""

    def __init__(self, registry: CollectorRegistry, *, max_connections: int = MAX_CONNECTIONS,
                 max_per_client: int = MAX_PER_CLIENT, max_streams: int = MAX_STREAMS,
                 max_streams_per_client: int = MAX_STREAMS_PER_CLIENT):
        self.max_connections, self.max_per_client = max_connections, max_per_client
        self.max_streams, self.max_streams_per_client = max_streams, max_streams_per_client
        self.connections: Counter[str] = Counter()
        self.streams: Counter[str] = Counter()
        self.refused = PromCounter("roost_http_refused", "Connections and streams refused by the hub's limits.",
                                   ["reason"], registry=registry)
        self._logged: dict[str, float] = {}

    def _refuse(self, reason: str, message: str) -> None:
        self.refused.labels(reason=reason).inc()
        now = time.monotonic()
        if now - self._logged.get(reason, -60.0) >= 60.0:
            self._logged[reason] = now
            log.warning("%s (roost_http_refused_total{reason=%r} counts them)", message, reason)

    def guard(self, server: web.Server) -> None:
        """Count the connections of `server` (an AppRunner's, after setup) and close those beyond the limits."""
        made, lost = server.connection_made, server.connection_lost
        peers: dict[object, str] = {}

        def connection_made(handler, transport) -> None:
            made(handler, transport)
            peer = transport.get_extra_info("peername")
            client = str(peer[0]) if isinstance(peer, tuple) else "local"
            peers[handler] = client
            self.connections[client] += 1
            if sum(self.connections.values()) > self.max_connections:
                self._refuse("connections", f"{self.max_connections} connections are open: closing a new one from {client}")
                transport.close()
            elif self.connections[client] > self.max_per_client:
                self._refuse("client_connections",
                             f"{client} has {self.max_per_client} connections open: closing its newest")
                transport.close()

        def connection_lost(handler, exc=None) -> None:
            client = peers.pop(handler, None)
            if client is not None:
                self.connections[client] -= 1
                if self.connections[client] <= 0:
                    del self.connections[client]
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if not _is_stream(request):
            return await handler(request)
        client = request.remote or "local"
        if sum(self.streams.values()) >= self.max_streams:
            self._refuse("streams", f"{self.max_streams} WebSockets and live streams are open: refusing one from {client}")
            raise web.HTTPServiceUnavailable(text=f"{self.max_streams} streams are open; try again later",
                                             headers={"Retry-After": "30"})
        if self.streams[client] >= self.max_streams_per_client:
            self._refuse("client_streams", f"{client} has {self.max_streams_per_client} streams open: refusing one more")
            raise web.HTTPTooManyRequests(
                text=f"this client has {self.max_streams_per_client} WebSockets or live streams open; close one",
                headers={"Retry-After": "30"})
        self.streams[client] += 1
        try:
            return await handler(request)
        finally:
            self.streams[client] -= 1
            if self.streams[client] <= 0:
                del self.streams[client]
