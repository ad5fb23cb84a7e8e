"""The Web Thing API over the things registry (https://webthings.io/api/), served by the hub's aiohttp app.

Routes (docs/things.md):
  GET        /things                                   Thing Descriptions of every thing
  GET        /things/{id}                              one Thing Description; with `Upgrade: websocket` the
                                                       thing's WebSocket (setProperty, requestAction,
                                                       addEventSubscription in; propertyStatus, actionStatus,
                                                       event, error out)
  GET        /things/{id}/properties                   every property value
  GET|PUT    /things/{id}/properties/{name}            one value; PUT `{"name": value}`
  GET|POST   /things/{id}/actions[/{name}]             action requests; POST `{"name": {"input": ...}}` → 201
  GET|DELETE /things/{id}/actions/{name}/{request id}  one request's status; DELETE cancels it
  GET        /things/{id}/events[/{name}]              recent events

Errors are `{"error": message}` with 400 (wrong type, out of range, read-only, malformed body), 404 (unknown
thing, property, action) or 502 (the device refused or is unreachable). Each WebSocket client has a bounded
send queue: when a client reads slower than things change, its oldest queued messages are dropped and counted
in `roost_things_websocket_dropped_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import Counter

from roost.api.auth import may, sees
from roost.api.responses import json_response
from roost.errors import RoostError
from roost.things import (
    ActionRequest,
    PropertyChange,
    Thing,
    ThingError,
    ThingEvent,
    ThingRegistry,
)

if TYPE_CHECKING:
    from roost.hub import Hub

log = logging.getLogger("roost.api.things")

CONTEXT = "https://webthings.io/schemas/"
SEND_QUEUE = 256  # messages per WebSocket client
_REASONS = {400: "400 Bad Request", 403: "403 Forbidden", 404: "404 Not Found", 502: "502 Bad Gateway"}
FANOUT = web.AppKey("things_fanout", object)


def add_thing_routes(app: web.Application, hub: Hub) -> None:
    """Register the Web Thing API on the hub's app (`/things...`)."""
    api = _ThingApi(hub.things, _Fanout(hub.things, hub.metrics.registry))
    app[FANOUT] = api.fanout
    app.cleanup_ctx.append(api.fanout.running)
    app.on_shutdown.append(api.fanout.close_all)
    r = app.router
    r.add_get("/things", api.things)
    r.add_get("/things/{id}", api.thing)
    r.add_get("/things/{id}/properties", api.properties)
    r.add_get("/things/{id}/properties/{name}", api.get_property)
    r.add_put("/things/{id}/properties/{name}", api.put_property)
    r.add_get("/things/{id}/actions", api.get_actions)
    r.add_post("/things/{id}/actions", api.post_action)
    r.add_get("/things/{id}/actions/{name}", api.get_actions)
    r.add_post("/things/{id}/actions/{name}", api.post_action)
    r.add_get("/things/{id}/actions/{name}/{request}", api.get_action)
    r.add_delete("/things/{id}/actions/{name}/{request}", api.delete_action)
    r.add_get("/things/{id}/events", api.get_events)
    r.add_get("/things/{id}/events/{name}", api.get_events)


def _status(err: RoostError) -> int:
    return err.status if isinstance(err, ThingError) else 502


def thing_description(thing: Thing, origin: str, ws_origin: str) -> dict[str, Any]:
    """The thing as a Web Thing Description; `origin` is `http://host:port`, `ws_origin` `ws://host:port`."""
    href = f"/things/{thing.id}"
    d: dict[str, Any] = {
        "id": origin + href,
        "title": thing.title,
        "@context": CONTEXT,
        "@type": list(thing.types),
        "href": href,
    }
    if thing.description:
        d["description"] = thing.description
    d["properties"] = {n: s.description(f"{href}/properties/{n}") for n, s in thing.properties.items()}
    d["actions"] = {n: s.description(f"{href}/actions/{n}") for n, s in thing.actions.items()}
    d["events"] = {n: s.description(f"{href}/events/{n}") for n, s in thing.events.items()}
    d["links"] = [
        {"rel": "properties", "href": f"{href}/properties"},
        {"rel": "actions", "href": f"{href}/actions"},
        {"rel": "events", "href": f"{href}/events"},
        {"rel": "alternate", "href": ws_origin + href},
    ]
    return d


def _origins(request: web.Request) -> tuple[str, str]:
    host = request.host
    return f"{request.scheme}://{host}", f"{'wss' if request.secure else 'ws'}://{host}"


class _ThingApi:
    def __init__(self, registry: ThingRegistry, fanout: _Fanout):
        self.registry = registry
        self.fanout = fanout

    async def things(self, request: web.Request) -> web.Response:
        origin, ws_origin = _origins(request)
        # A token limited to some things (roost token create --things) sees only those.
        return json_response([thing_description(t, origin, ws_origin) for t in self.registry if sees(request, t.id)])

    async def thing(self, request: web.Request) -> web.StreamResponse:
        try:
            thing = self.registry.get(request.match_info["id"])
        except ThingError as err:
            return json_response({"error": str(err)}, err.status)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, thing)
        return json_response(thing_description(thing, *_origins(request)))

    async def properties(self, request: web.Request) -> web.Response:
        try:
            thing = self.registry.get(request.match_info["id"])
        except ThingError as err:
            return json_response({"error": str(err)}, err.status)
        return json_response({name: thing.values.get(name) for name in thing.properties})

    async def get_property(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            thing = self.registry.get(request.match_info["id"])
            thing.spec(name)
        except ThingError as err:
            return json_response({"error": str(err)}, err.status)
        return json_response({name: thing.values.get(name)})

    async def put_property(self, request: web.Request) -> web.Response:
        thing_id, name = request.match_info["id"], request.match_info["name"]
        try:
            thing = self.registry.get(thing_id)
            thing.spec(name)
            body = await _body(request)
            if not isinstance(body, dict) or name not in body:
                raise ThingError(f'thing {thing_id!r} property {name!r}: expected a body like {{"{name}": value}}, got {body!r:.100}')
            await self.registry.set(thing_id, name, body[name], origin="api")
        except RoostError as err:
            return json_response({"error": str(err)}, _status(err))
        return json_response({name: thing.values.get(name)})

    async def post_action(self, request: web.Request) -> web.Response:
        thing_id, only = request.match_info["id"], request.match_info.get("name")
        try:
            self.registry.get(thing_id)
            body = await _body(request)
            if not isinstance(body, dict) or len(body) != 1:
                raise ThingError(f'thing {thing_id!r}: expected a body like {{"{only or "action"}": {{"input": ...}}}}, got {body!r:.100}')
            (name, params), = body.items()
            if only is not None and name != only:
                raise ThingError(f"thing {thing_id!r}: the body asks for action {name!r} at the URL of action {only!r}")
            if params is not None and not isinstance(params, dict):
                raise ThingError(f'thing {thing_id!r} action {name!r}: expected {{"input": ...}}, got {params!r:.100}')
            action = self.registry.request_action(thing_id, name, (params or {}).get("input"), origin="api")
        except RoostError as err:
            return json_response({"error": str(err)}, _status(err))
        return json_response({action.name: action.description()}, 201)

    async def get_actions(self, request: web.Request) -> web.Response:
        try:
            actions = self.registry.actions(request.match_info["id"], request.match_info.get("name"))
        except ThingError as err:
            return json_response({"error": str(err)}, err.status)
        return json_response([{a.name: a.description()} for a in actions])

    async def get_action(self, request: web.Request) -> web.Response:
        m = request.match_info
        try:
            action = self.registry.action(m["id"], m["name"], m["request"])
        except ThingError as err:
            return json_response({"error": str(err)}, err.status)
        return json_response({action.name: action.description()})

    async def delete_action(self, request: web.Request) -> web.Response:
        m = request.match_info
        try:
            self.registry.cancel_action(self.registry.action(m["id"], m["name"], m["request"]))
        except ThingError as err:
            return json_response({"error": str(err)}, err.status)
        return web.Response(status=204)

    async def get_events(self, request: web.Request) -> web.Response:
        try:
            events = self.registry.event_log(request.match_info["id"], request.match_info.get("name"))
        except ThingError as err:
            return json_response({"error": str(err)}, err.status)
        return json_response([{e.name: e.description()} for e in events])

    # ------------------------------------------------------------ WebSocket

    async def _websocket(self, request: web.Request, thing: Thing) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        client = _Client(thing.id, ws, may_write=may(request, "write"))
        self.fanout.add(client)
        sender = asyncio.create_task(client.send_all(), name=f"things-ws-{thing.id}")
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await self._on_message(client, message.data)
                elif message.type == WSMsgType.ERROR:
                    break
        finally:
            self.fanout.remove(client)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        return ws

    async def _on_message(self, client: _Client, text: str) -> None:
        try:
            message = orjson.loads(text)
            kind, data = message["messageType"], message["data"]
            if not isinstance(data, dict):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            client.error(400, f'expected {{"messageType": ..., "data": {{...}}}}, got {text[:100]!r}', text)
            return
        if kind in ("setProperty", "requestAction") and not client.may_write:
            client.error(403, f"{kind}: this connection's token has scope read; writes need scope write", message)
        elif kind == "setProperty":
            for name, value in data.items():
                try:
                    await self.registry.set(client.thing_id, name, value, origin="api")
                except RoostError as err:
                    client.error(_status(err), str(err), message)
        elif kind == "requestAction":
            for name, params in data.items():
                try:
                    if params is not None and not isinstance(params, dict):
                        raise ThingError(f'thing {client.thing_id!r} action {name!r}: expected {{"input": ...}}, got {params!r:.100}')
                    self.registry.request_action(client.thing_id, name, (params or {}).get("input"), origin="api")
                except RoostError as err:
                    client.error(_status(err), str(err), message)
        elif kind == "addEventSubscription":
            events = self.registry.get(client.thing_id).events
            for name in data:
                if name in events:
                    client.events.add(name)
                else:
                    client.error(404, f"thing {client.thing_id!r} has no event {name!r} (it has: {', '.join(sorted(events)) or 'none'})", message)
        else:
            client.error(400, f"unknown messageType {kind!r}: expected setProperty, requestAction or addEventSubscription", message)


async def _body(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError as err:
        raise ThingError(f"{request.path}: the body is not JSON ({err})") from None


class _Client:
    """One WebSocket client of one thing: what it subscribed to and its bounded send queue (oldest dropped)."""

    def __init__(self, thing_id: str, ws: web.WebSocketResponse, *, may_write: bool = True):
        self.thing_id = thing_id
        self.ws = ws
        self.may_write = may_write  # setProperty and requestAction need a token of scope write
        self.events: set[str] = set()
        self.queue: deque[str] = deque(maxlen=SEND_QUEUE)
        self.dropped = 0
        self._ready = asyncio.Event()
        self.on_drop = lambda n: None

    def send(self, message_type: str, data: Any) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
            self.on_drop(1)
        self.queue.append(orjson.dumps({"messageType": message_type, "data": data}).decode())
        self._ready.set()

    def error(self, status: int, text: str, request: Any = None) -> None:
        data: dict[str, Any] = {"status": _REASONS.get(status, str(status)), "message": text}
        if request is not None:
            data["request"] = request
        self.send("error", data)

    async def send_all(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self.queue:
                await self.ws.send_str(self.queue.popleft())


class _Fanout:
    """Routes the registry's changes, action statuses and events to the WebSocket clients of each thing."""

    def __init__(self, registry: ThingRegistry, metrics_registry):
        self.registry = registry
        self.clients: dict[str, set[_Client]] = {}
        self.dropped = Counter("roost_things_websocket_dropped", "Messages dropped from a slow WebSocket client's full send queue.",
                               registry=metrics_registry)

    def add(self, client: _Client) -> None:
        client.on_drop = self.dropped.inc
        self.clients.setdefault(client.thing_id, set()).add(client)

    def remove(self, client: _Client) -> None:
        clients = self.clients.get(client.thing_id)
        if clients is not None:
            clients.discard(client)
            if not clients:
                del self.clients[client.thing_id]

    async def close_all(self, app: web.Application) -> None:
        """On hub shutdown: close every WebSocket (1001 going away) so no handler holds the server open."""
        for clients in list(self.clients.values()):
            for client in list(clients):
                await client.ws.close(code=WSCloseCode.GOING_AWAY, message=b"roost is stopping")

    async def running(self, app: web.Application):
        """aiohttp cleanup context: route while the app runs."""
        subs = (self.registry.changes.subscribe("websockets"), self.registry.action_status.subscribe("websockets"),
                self.registry.events.subscribe("websockets"))
        tasks = [asyncio.create_task(self._route(sub), name="things-fanout") for sub in subs]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.registry.changes.unsubscribe(subs[0])
            self.registry.action_status.unsubscribe(subs[1])
            self.registry.events.unsubscribe(subs[2])

    async def _route(self, sub) -> None:
        async for item in sub:
            clients = self.clients.get(item.thing_id)
            if not clients:
                continue
            if isinstance(item, PropertyChange):
                for client in list(clients):
                    client.send("propertyStatus", {item.name: item.new})
            elif isinstance(item, ActionRequest):
                for client in list(clients):
                    client.send("actionStatus", {item.name: item.description()})
            elif isinstance(item, ThingEvent):
                for client in list(clients):
                    if item.name in client.events:
                        client.send("event", {item.name: item.description()})
