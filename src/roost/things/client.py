"""A remote Web Things gateway (WebThings Gateway, a `webthing` server) whose things roost mirrors.

`[[things.gateway]]` names a gateway; its things join the registry as `<gateway name>-<remote id>` (the last
segment of the remote href: `lab-0`, `hall-zb-0017880103`). Roost reads them over REST once, then follows each
thing's WebSocket: a `propertyStatus` becomes a registry change (origin `device`) and, for numbers and booleans,
a reading of series `<property>{gateway="<name>",thing="<roost id>"}` (booleans as 0/1). `ThingRegistry.set` on
a mirrored thing PUTs the property to the gateway; what the gateway refuses comes back as a ThingError.
WebSockets reconnect with back-off (0.5 s doubling to 30 s) and re-read the properties after each reconnect.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import orjson

from roost.errors import InvalidReading, SourceError
from roost.model import Reading, Series, now_ms
from roost.secret import Secret
from roost.sources.base import Source, SourceContext
from roost.things.model import (
    ActionRequest,
    ActionSpec,
    EventSpec,
    PropertySpec,
    Thing,
    ThingError,
)
from roost.things.registry import ThingRegistry
from roost.things.units import thing_id

_FIRST_RETRY_S = 0.5
_MAX_RETRY_S = 30.0
_TIMEOUT = aiohttp.ClientTimeout(total=10)


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f'expected the gateway\'s base URL like "http://gateway.local:8080", got {url!r}')


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """`[[things.gateway]]`: a Web Things gateway at `url` (things listed at `<url>/things`), read with `token`."""

    name: str
    url: str = field(metadata={"check": _check_url})
    token: Secret | None = None

    def _validate(self) -> list[str]:
        if thing_id(self.name) != self.name:
            return [f'name: expected a short id like "{thing_id(self.name)}" (it prefixes thing ids), got {self.name!r}']
        return []


@dataclass(frozen=True, slots=True)
class ThingsSettings:
    """`[things]`: where things come from besides roost's own sources."""

    gateway: list[GatewaySettings] = field(default_factory=list)

    def _validate(self) -> list[str]:
        names = [g.name for g in self.gateway]
        return [f"gateway: two gateways are named {n!r}" for n in sorted({n for n in names if names.count(n) > 1})]


@dataclass(eq=False)
class _Remote:
    thing: Thing
    href: str  # the remote thing's path, /things/0
    ws_url: str


def _spec(name: str, d: dict[str, Any]) -> PropertySpec:
    enum = d.get("enum")
    return PropertySpec(
        name, d.get("type", "number"), title=d.get("title", ""), unit=d.get("unit"), read_only=bool(d.get("readOnly")),
        minimum=d.get("minimum"), maximum=d.get("maximum"), enum=tuple(enum) if enum is not None else None,
        at_type=d.get("@type"),
    )


class GatewayClient(Source):
    """Mirrors one gateway's things into the registry while running; supervised like a device source."""

    kind = "webthing"

    def __init__(self, settings: GatewaySettings, ctx: SourceContext, registry: ThingRegistry):
        super().__init__(settings, ctx)
        self.registry = registry
        self.base = settings.url.rstrip("/")
        headers = {"Accept": "application/json"}
        if settings.token is not None:
            headers["Authorization"] = f"Bearer {settings.token.reveal()}"
        self._headers = headers
        self._session: aiohttp.ClientSession | None = None
        self.remotes: dict[str, _Remote] = {}  # roost thing id → remote

    async def __aenter__(self) -> GatewayClient:
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=_TIMEOUT)
        try:
            descriptions = await self._get("/things")
            if not isinstance(descriptions, list):
                raise SourceError(f"{self.base}/things: expected a list of thing descriptions, got {type(descriptions).__name__}")
            for td in descriptions:
                self._mirror(td)
        except BaseException:
            await self._session.close()
            raise
        self.ctx.up(True)
        self.ctx.log.info("gateway %s: mirroring %d things", self.base, len(self.remotes))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        self.ctx.up(False)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for remote in self.remotes.values():
                tasks.create_task(self._follow(remote), name=f"gateway-{self.settings.name}-{remote.thing.id}")
            if not self.remotes:
                await asyncio.Event().wait()

    # ------------------------------------------------------------ REST

    async def _request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        assert self._session is not None
        url = urljoin(self.base + "/", path.lstrip("/"))
        try:
            async with self._session.request(method, url, data=None if body is None else orjson.dumps(body),
                                             headers={"Content-Type": "application/json"}) as response:
                text = await response.read()
                try:
                    data = orjson.loads(text) if text else None
                except orjson.JSONDecodeError:
                    data = text.decode(errors="replace")
                return response.status, data
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise SourceError(f"{url}: cannot reach the gateway ({err or type(err).__name__}) — is it running?") from None

    async def _get(self, path: str) -> Any:
        status, data = await self._request("GET", path)
        if status in (401, 403):
            raise SourceError(f"{self.base}{path}: the gateway refused the token ({status}) — check things.gateway.token")
        if status != 200:
            raise SourceError(f"{self.base}{path}: HTTP {status}: {data!r:.200}")
        return data

    # ------------------------------------------------------------ mirroring

    def _mirror(self, td: dict[str, Any]) -> None:
        href = td.get("href") or urlsplit(str(td.get("id", ""))).path
        links = td.get("links", [])
        if not href:
            href = next((link["href"] for link in links if link.get("rel") == "properties"), "").rsplit("/properties", 1)[0]
        if not href:
            self.ctx.error("invalid_description", f"{self.base}: a thing description without href or id: {td!r:.200}")
            return
        ws_url = next((link["href"] for link in links if link.get("rel") == "alternate"
                       and str(link.get("href", "")).startswith(("ws://", "wss://"))), None)
        if ws_url is None:
            ws_url = self.base.replace("http", "ws", 1) + href
        tid = f"{self.settings.name}-{thing_id(href.rstrip('/').rsplit('/', 1)[-1])}"
        props = {name: _spec(name, d) for name, d in td.get("properties", {}).items()}
        actions = {name: ActionSpec(name, d.get("title", ""), d.get("input"), d.get("@type"))
                   for name, d in td.get("actions", {}).items()}
        events = {name: EventSpec(name, d.get("title", ""), d.get("type"), d.get("unit"), d.get("@type"))
                  for name, d in td.get("events", {}).items()}
        types = td.get("@type", ())
        fields = {
            "title": td.get("title") or td.get("name") or tid,
            "types": tuple([types] if isinstance(types, str) else types),
            "description": td.get("description", ""),
            "properties": props,
            "actions": actions,
            "events": events,
            "actuator": lambda name, value, href=href: self._put(href, name, value),
            "performer": lambda request, href=href: self._perform(href, request),
            "origin": f"webthing:{self.base}",
        }
        if tid in self.registry and self.registry.get(tid).origin == fields["origin"]:
            thing = self.registry.get(tid)  # mirrored before a reconnect: keep the object rules hold
            for key, value in fields.items():
                setattr(thing, key, value)
        else:
            thing = self.registry.add(Thing(id=tid, **fields))
        self.remotes[tid] = _Remote(thing, href, ws_url)

    async def _put(self, href: str, name: str, value: Any) -> None:
        status, data = await self._request("PUT", f"{href}/properties/{name}", {name: value})
        if status >= 400:
            message = data.get("message", data) if isinstance(data, dict) else data
            raise ThingError(f"gateway {self.settings.name} refused {href} {name}={value!r}: HTTP {status} {message or ''}".rstrip(),
                             status=400 if status < 500 else 502)

    async def _perform(self, href: str, request: ActionRequest) -> None:
        body = {request.name: {"input": request.input} if request.input is not None else {}}
        status, data = await self._request("POST", f"{href}/actions", body)
        if status >= 400:
            raise SourceError(f"gateway {self.settings.name} refused action {request.name} on {href}: HTTP {status} {data!r:.200}")

    async def _follow(self, remote: _Remote) -> None:
        """Follow one thing's WebSocket for as long as the client runs, reconnecting with back-off."""
        assert self._session is not None
        delay = _FIRST_RETRY_S
        while True:
            try:
                async with self._session.ws_connect(remote.ws_url, heartbeat=30) as ws:
                    delay = _FIRST_RETRY_S
                    # After the socket is open, so a change between the read and the subscription is not lost.
                    self._report(remote, await self._get(f"{remote.href}/properties"))
                    async for message in ws:
                        if message.type == aiohttp.WSMsgType.TEXT:
                            self._on_message(remote, message.data)
                        elif message.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                            break
                self.ctx.error("websocket", f"{remote.ws_url}: closed by the gateway — reconnecting in {delay:g} s")
            except (TimeoutError, aiohttp.ClientError, OSError, SourceError) as err:
                self.ctx.error("websocket", f"{remote.ws_url}: {err or type(err).__name__} — reconnecting in {delay:g} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_S)

    def _on_message(self, remote: _Remote, text: str) -> None:
        try:
            message = orjson.loads(text)
            kind, data = message["messageType"], message.get("data") or {}
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.ctx.error("invalid_message", f"{remote.ws_url}: not a Web Thing message: {text[:120]!r}")
            return
        if kind == "propertyStatus":
            self._report(remote, data)
        elif kind == "event":
            for name, event in data.items():
                if name in remote.thing.events:
                    self.registry.emit_event(remote.thing.id, name, event.get("data") if isinstance(event, dict) else event)

    def _report(self, remote: _Remote, values: Any) -> None:
        if not isinstance(values, dict):
            return
        thing, ts = remote.thing, now_ms()
        readings = []
        for name, value in values.items():
            if name not in thing.properties:
                continue
            self.registry.report(thing.id, name, value, ts_ms=ts)
            if isinstance(value, (bool, int, float)) and (isinstance(value, bool) or math.isfinite(value)):
                try:
                    series = Series.of(_metric(name), gateway=self.settings.name, thing=thing.id)
                    readings.append(Reading.checked(series, ts, value))
                except InvalidReading as err:
                    self.ctx.reject(err.reason, name, str(err))
        self.ctx.emit(readings)


def _metric(name: str) -> str:
    from roost.sources.mqtt import metric_name

    return metric_name(name)
