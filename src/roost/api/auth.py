"""Who may do what over HTTP: tokens, the dashboard's login cookie, scopes and a limit on failed attempts.

Policy (docs/security.md): while any token exists, or the hub listens beyond loopback, every request must
present a token, except `/healthz`, `/api/replication/status` (the split-brain guard of another hub asks it)
and the login page. With no token on loopback the hub is open, so `roost demo` needs no setup; it still answers
only to loopback names and refuses changes and WebSockets from other sites' pages (`_refuse_foreign_pages`).
No page of the hub may be framed by another site.

Routes:
  GET  /login    a form for a token; POST it to get the `roost_token` cookie (HttpOnly, SameSite=Strict,
                 Secure over TLS), then back to the page asked for
  POST /logout   forget the cookie

A token comes as `Authorization: Bearer T` (also `Token T`, as Influx v2 clients send it, and HTTP Basic with
the token as the password, as Telegraf's v1 output and Prometheus' `basic_auth` send it), or as the cookie.
A request with the cookie that changes state must carry `X-Roost-Request: 1` (a header a cross-site form
cannot send) and, when it names one, the hub's own Origin; a WebSocket opened with the cookie must come from
the hub's own Origin.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import html
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from aiohttp import web

from roost.access import Scope, Token, TokenError, TokenStore, is_loopback
from roost.api.responses import is_websocket, json_response

if TYPE_CHECKING:
    from roost.hub import Hub

__all__ = ["COOKIE", "CSRF_HEADER", "GRANT", "FailureLimiter", "add_access_control", "may", "required_scope", "sees"]

log = logging.getLogger("roost.api.auth")

GRANT = web.RequestKey("grant", Token)  # the token a request came with, set when access control is on
COOKIE = "roost_token"
CSRF_HEADER = "X-Roost-Request"
COOKIE_MAX_AGE_S = 30 * 86400
REVOCATION_CHECK_S = 2.0  # how soon a revoked token's open WebSockets and live streams are closed

_PUBLIC = frozenset({"/healthz", "/api/replication/status", "/login", "/logout"})
_ADMIN_PREFIXES = ("/api/replication/", "/backups", "/api/backups")
_READ_POSTS = frozenset({"/api/v1/query", "/api/v1/query_range", "/api/v1/series", "/api/v1/labels"})
_WRITE_POSTS = frozenset({"/write", "/api/v2/write", "/api/v1/write"})
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_STATE = web.AppKey("access_control", object)


def required_scope(request: web.Request) -> Scope:
    """The scope a request needs: admin for replication and backups, write for changes, read for the rest.

    A state-changing route this table does not know needs admin, so a new endpoint is closed until placed here.
    """
    path = request.path
    if path.startswith(_ADMIN_PREFIXES):
        return "admin"
    if request.method in _SAFE or path in _READ_POSTS:
        return "read"
    if path in _WRITE_POSTS or path.startswith("/things/"):
        return "write"
    return "admin"


def may(request: web.Request, scope: Scope) -> bool:
    """Whether the request's token has `scope` (always, on an open hub)."""
    grant = request.get(GRANT)
    return grant is None or grant.allows(scope)


def sees(request: web.Request, thing_id: str) -> bool:
    """Whether the request's token covers the thing (always, on an open hub or for a token without --things)."""
    grant = request.get(GRANT)
    return grant is None or grant.sees(thing_id)


class FailureLimiter:
    """Failed attempts per client address: a bucket of `burst`, refilled one per `refill_s`; empty = refused."""

    def __init__(self, burst: int = 10, refill_s: float = 6.0, *, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 10_000):
        self.burst, self.refill_s, self.clock, self.max_clients = burst, refill_s, clock, max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client → (attempts left, when counted)

    def _left(self, client: str, now: float) -> float:
        left, then = self._buckets.get(client, (self.burst, now))
        return min(self.burst, left + (now - then) / self.refill_s)

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may try again; 0 when it may now."""
        left = self._left(client, self.clock())
        return 0.0 if left >= 1 else (1 - left) * self.refill_s

    def failed(self, client: str) -> bool:
        """Count a failed attempt; True when it used the client's last one."""
        now = self.clock()
        left = self._left(client, now) - 1
        self._buckets.pop(client, None)  # re-inserted last: the dict's order is least recently failed first
        self._buckets[client] = (left, now)
        while len(self._buckets) > self.max_clients:
            del self._buckets[next(iter(self._buckets))]
        return left < 1


class _AccessControl:
    def __init__(self, store: TokenStore, listen_host: str):
        self.store = store
        self.listen_host = listen_host.lower()
        self.loopback_only = is_loopback(listen_host)
        self.limiter = FailureLimiter()
        self.streams: dict[asyncio.Task, Token] = {}  # open WebSockets and live streams, by the token they came with

    async def end_revoked_streams(self, _app: web.Application):
        """While the app runs: close a stream whose token was revoked (a request checks its token only once)."""

        async def watch() -> None:
            while True:
                await asyncio.sleep(REVOCATION_CHECK_S)
                if not self.streams:
                    continue
                try:
                    valid = {t.sha256 for t in self.store.tokens()}
                except TokenError:
                    valid = set()
                for task, token in list(self.streams.items()):
                    if token.sha256 not in valid:
                        log.info("token %r is gone: closing its open stream", token.name)
                        task.cancel()

        watcher = asyncio.create_task(watch(), name="access-revocations")
        yield
        watcher.cancel()

    def required(self) -> bool:
        """Raises TokenError when the tokens file is unreadable (the middleware then refuses everything)."""
        return bool(self.store.tokens()) or not self.loopback_only

    def fail(self, request: web.Request, why: str) -> None:
        client = request.remote or "?"
        log.warning("refused %s %s from %s: %s", request.method, request.path, client, why)
        if self.limiter.failed(client):
            log.warning("too many failed attempts from %s: refusing it for %.0f s", client, self.limiter.retry_after(client))

    def too_many(self, request: web.Request) -> web.Response | None:
        wait = self.limiter.retry_after(request.remote or "?")
        if not wait:
            return None
        seconds = math.ceil(wait)
        response = json_response({"error": f"too many failed attempts from {request.remote}: try again in {seconds} s"}, 429)
        response.headers["Retry-After"] = str(seconds)
        return response


def credential(request: web.Request) -> tuple[str | None, bool]:
    """(token, came as the cookie) from a request; (None, False) when it names none."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "basic":
            try:
                user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return "", False
            return password or user, False
        return (value if scheme in ("bearer", "token") else ""), False
    cookie = request.cookies.get(COOKIE)
    return (cookie, True) if cookie else (None, False)


def _same_origin(request: web.Request) -> bool | None:
    """Whether the Origin header names this hub's host; None when there is no Origin header."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    return urlsplit(origin).netloc.lower() == request.host.lower()


def _host_name(host_header: str) -> str:
    """The name in a Host header ("127.0.0.1:8080", "[::1]:8080", "localhost"), lower case, without the port
    (cheaper than `request.url.host`, which builds the whole URL)."""
    host = host_header.lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _refuse_foreign_pages(request: web.Request) -> web.Response | None:
    """Keep other web pages in a browser on this machine away from an open hub (loopback, no tokens).

    A page from anywhere may send a plain POST to 127.0.0.1 without asking (a "simple" cross-origin request),
    open a WebSocket to it, or rebind its own name to 127.0.0.1 to read answers as if same-origin. So an open
    hub answers only to loopback names and its listen host, and refuses changes and WebSockets from another
    Origin. Programs (curl, Telegraf, Prometheus) send no Origin and are not affected.
    """
    ac: _AccessControl = request.app[_STATE]  # type: ignore[assignment]
    host = _host_name(request.host)
    if not (is_loopback(host) or host == ac.listen_host):
        return _refuse(403, f"this hub has no access tokens, so it answers only to loopback names, not {request.host!r}: "
                            "create a token (`roost token create`) to reach it under another name (docs/security.md)")
    if (is_websocket(request) or request.method not in _SAFE) and _same_origin(request) is False:
        return _refuse(403, f"cross-origin request from {request.headers['Origin']} refused (docs/security.md)")
    return None


def _refuse(status: int, message: str, *, challenge: bool = False) -> web.Response:
    response = json_response({"error": message}, status)
    if challenge:
        response.headers["WWW-Authenticate"] = 'Bearer realm="roost"'
    return response


def _thing_of(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    if resource is not None and resource.canonical.startswith("/things/{id}"):
        return request.match_info.get("id")
    return None


@web.middleware
async def _middleware(request: web.Request, handler) -> web.StreamResponse:
    ac: _AccessControl = request.app[_STATE]  # type: ignore[assignment]
    if request.path in _PUBLIC:
        return await handler(request)
    try:
        if not ac.required():
            return _refuse_foreign_pages(request) or await handler(request)
    except TokenError as err:
        log.error("%s — refusing every request until it is fixed", err)
        return _refuse(503, "the hub cannot read its tokens file: see its log")
    if (limited := ac.too_many(request)) is not None:
        return limited
    secret, via_cookie = credential(request)
    grant = ac.store.find(secret) if secret else None
    if grant is None:
        if secret and request.path.startswith("/api/replication/"):  # a standby with the [replication] token
            response = await handler(request)
            if response.status == 401:
                ac.fail(request, "wrong replication token")
            return response
        if secret is None:
            if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
                raise web.HTTPSeeOther(f"/login?next={quote(request.rel_url.path_qs, safe='/')}")
            log.info("refused %s %s from %s: no token", request.method, request.path, request.remote)
            return _refuse(401, "this hub needs a token: send `Authorization: Bearer TOKEN` "
                                "(`roost token create` makes one), or log in at /login", challenge=True)
        ac.fail(request, "unknown or revoked token" + (" (cookie)" if via_cookie else ""))
        response = _refuse(401, "unknown or revoked token", challenge=True)
        if via_cookie:
            response.del_cookie(COOKIE, path="/")
        return response
    websocket = is_websocket(request)
    if via_cookie and (websocket or request.method not in _SAFE):
        same = _same_origin(request)
        if same is False or (websocket and same is None):
            return _refuse(403, "cross-origin request refused: the login cookie works only on this hub's own pages")
        if not websocket and request.headers.get(CSRF_HEADER) != "1":
            return _refuse(403, f"a change made with the login cookie needs the header {CSRF_HEADER}: 1 "
                                "(scripts and other programs: send Authorization: Bearer TOKEN instead)")
    need = required_scope(request)
    if not grant.allows(need):
        return _refuse(403, f"token {grant.name!r} has scope {grant.scope}; {request.method} {request.path} needs {need}")
    if grant.things:
        thing = _thing_of(request)
        if request.path != "/things" and (thing is None or not grant.sees(thing)):
            return _refuse(403, f"token {grant.name!r} is limited to the things {', '.join(grant.things)}: "
                                f"it may use /things and /things/ID/... of those only")
    request[GRANT] = grant
    if not (websocket or request.path == "/api/live"):
        return await handler(request)
    task = asyncio.current_task()
    ac.streams[task] = grant
    try:
        return await handler(request)
    finally:
        ac.streams.pop(task, None)


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>roost — log in</title><link rel="icon" href="data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'%3E%3Crect width='32' height='32' rx='7' fill='%231f5f8b'/%3E%3Cpath d='M7 16.5 16 9l9 7.5V25a1 1 0 0 1-1 1h-5v-6h-6v6H8a1 1 0 0 1-1-1z' fill='%23fff'/%3E%3C/svg%3E">
<style>body{{font:16px system-ui,sans-serif;max-width:26rem;margin:12vh auto;padding:0 1rem}}
input{{font:inherit;width:100%;box-sizing:border-box;padding:.5rem;margin:.4rem 0 1rem}}
button{{font:inherit;padding:.5rem 1.2rem}}.error{{color:#b00020}}</style></head>
<body><h1>roost</h1>
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label for="token">Access token</label>
<input id="token" name="token" type="password" autocomplete="off" required autofocus>
{error}<button type="submit">Log in</button></form>
<p>Make a token on the hub's machine with <code>roost token create --name NAME --scope read</code>.</p>
</body></html>
"""


def _next(value: str) -> str:
    """A local path to go back to; anything else (another site, `//host`) becomes `/`."""
    return value if value.startswith("/") and not value.startswith(("//", "/\\")) else "/"


def _login_page(next_path: str, error: str = "", status: int = 200) -> web.Response:
    error_html = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    page = _LOGIN_PAGE.format(next=html.escape(_next(next_path), quote=True), error=error_html)
    return web.Response(text=page, content_type="text/html", status=status,
                        headers={"Cache-Control": "no-store"})


async def login_form(request: web.Request) -> web.Response:
    return _login_page(request.query.get("next", "/"))


async def login(request: web.Request) -> web.Response:
    ac: _AccessControl = request.app[_STATE]  # type: ignore[assignment]
    form = await request.post()
    next_path = _next(str(form.get("next", "/")))
    if _same_origin(request) is False:
        return _refuse(403, "cross-origin login refused")
    if (limited := ac.too_many(request)) is not None:
        return limited
    try:
        grant = ac.store.find(str(form.get("token", "")).strip())
        required = ac.required()
    except TokenError as err:
        log.error("%s", err)
        return _login_page(next_path, "The hub cannot read its tokens file: see its log.", 503)
    if not required:
        raise web.HTTPSeeOther(next_path)
    if grant is None:
        ac.fail(request, "login with an unknown or revoked token")
        return _login_page(next_path, "Unknown or revoked token.", 401)
    log.info("login from %s with token %r", request.remote, grant.name)
    response = web.HTTPSeeOther(next_path)
    response.set_cookie(COOKIE, str(form["token"]).strip(), max_age=COOKIE_MAX_AGE_S, path="/", httponly=True,
                        samesite="Strict", secure=request.secure)
    raise response


async def logout(_request: web.Request) -> web.Response:
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


async def _protective_headers(_request: web.Request, response: web.StreamResponse) -> None:
    # No page of the hub may be framed by another site (clickjacking a switch); no answer is content-sniffed.
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def add_access_control(app: web.Application, hub: Hub) -> None:
    """Check every request of `app` against the tokens in the hub's data directory; serve /login and /logout."""
    app[_STATE] = _AccessControl(TokenStore(hub.settings.hub.data), hub.settings.hub.listen_host)
    app.middlewares.append(_middleware)
    app.on_response_prepare.append(_protective_headers)
    app.cleanup_ctx.append(app[_STATE].end_revoked_streams)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
