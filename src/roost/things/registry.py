"""The registry of every thing roost knows, and the one way to change a property.

Changes flow in two directions, and both end as a PropertyChange on `registry.changes`:
- `report()` — a device (or a source reading) says a property has a value;
- `set()` — someone (the API, a rule) asks a device to take a value: it is checked against the property
  description, written through the thing's actuator, then recorded.
Setting a property to the value it already has does nothing (no write, no change event), which is what lets
bonded bulbs settle after one change instead of echoing forever.

Actions and events follow the Web Thing API: `request_action()` checks the input, runs the thing's performer in
a task and publishes each status on `registry.action_status`; `emit_event()` records an event (the last
`EVENTS_KEPT` per thing) and publishes it on `registry.events`.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import uuid
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from roost.bus import Bus
from roost.errors import RoostError
from roost.model import now_ms
from roost.things.model import (
    ActionRequest,
    PropertyChange,
    Thing,
    ThingError,
    ThingEvent,
    attribute_name,
)

log = logging.getLogger("roost.things")

ACTIONS_KEPT = 100  # finished action requests remembered per thing (for GET .../actions)
EVENTS_KEPT = 100


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ThingRegistry:
    def __init__(self) -> None:
        self._things: dict[str, Thing] = {}
        self.changes: Bus[PropertyChange] = Bus()
        self.action_status: Bus[ActionRequest] = Bus()
        self.events: Bus[ThingEvent] = Bus()
        self._requests: dict[str, dict[str, ActionRequest]] = {}
        self._event_log: dict[str, deque[ThingEvent]] = {}
        self._running: dict[str, asyncio.Task] = {}
        # Writes in flight: a device may echo the new value (a gateway's propertyStatus, a z2m state) before its
        # actuator returns; the echo is then recorded as the writer's change, not as a device's.
        self._writing: dict[tuple[str, str], list] = {}  # (thing, property) → [value, origin, echoed]
        self._by_attribute: dict[str, Thing] | None = None  # made on demand, grown by add, dropped by remove

    def add(self, thing: Thing) -> Thing:
        if thing.id in self._things and self._things[thing.id] is not thing:
            raise ThingError(f"a thing with id {thing.id!r} exists already (from {self._things[thing.id].origin})")
        self._things[thing.id] = thing
        if self._by_attribute is not None:
            name = attribute_name(thing.title)
            if not _is_rule(thing) or name not in self._by_attribute:
                self._by_attribute[name] = thing
        return thing

    def remove(self, thing_id: str) -> None:
        self._things.pop(thing_id, None)
        self._by_attribute = None
        for request in list(self._requests.pop(thing_id, {}).values()):
            self.cancel_action(request)
        self._event_log.pop(thing_id, None)

    def get(self, thing_id: str) -> Thing:
        try:
            return self._things[thing_id]
        except KeyError:
            raise ThingError(f"no thing with id {thing_id!r}", status=404) from None

    def __iter__(self) -> Iterator[Thing]:
        return iter(list(self._things.values()))

    def __len__(self) -> int:
        return len(self._things)

    def __contains__(self, thing_id: object) -> bool:
        return thing_id in self._things

    def by_attribute(self) -> dict[str, Thing]:
        """Things by their sanitized titles, as rules see them (`self.Philips_HUE_01`); do not change the dict.
        A device shadows a rule's own thing of the same name (rule `Coffee`, thing "Coffee"): rules reach the
        rule as `self.rules.Coffee`.

        Made once per set of things: 500 rules each looking up their things among 1500 must not sanitize every
        title every time (that was a millisecond per lookup on the rules' first actions and reloads).
        """
        if self._by_attribute is None:
            things = sorted(self._things.values(), key=lambda t: not _is_rule(t))  # devices last: they win
            self._by_attribute = {attribute_name(t.title): t for t in things}
        return self._by_attribute

    def report(self, thing_id: str, name: str, value: Any, *, origin: str = "device", ts_ms: int | None = None) -> bool:
        """Record a value a device reported; publishes a change and returns True when it differs."""
        thing = self.get(thing_id)
        old = thing.values.get(name)
        if name in thing.values and old == value and type(old) is type(value):
            return False
        writing = self._writing.get((thing_id, name))
        if writing is not None and writing[0] == value and type(writing[0]) is type(value):
            origin, writing[2] = writing[1], True
        thing.values[name] = value
        self.changes.publish(PropertyChange(thing_id, name, old, value, ts_ms or now_ms(), origin))
        return True

    async def set(self, thing_id: str, name: str, value: Any, *, origin: str = "api") -> bool:
        """Ask the device to take a value; ThingError if the request is wrong. Returns False when nothing changed."""
        thing = self.get(thing_id)
        spec = thing.spec(name)
        if spec.read_only:
            raise ThingError(f"thing {thing_id!r} property {name!r} is read-only")
        value = spec.check(thing_id, value)
        if name in thing.values and thing.values[name] == value:
            return False
        if thing.actuator is None:
            raise ThingError(f"thing {thing_id!r} cannot be controlled (it has no actuator)")
        writing = self._writing[(thing_id, name)] = [value, origin, False]
        try:
            await thing.actuator(name, value)
        finally:
            if self._writing.get((thing_id, name)) is writing:
                del self._writing[(thing_id, name)]
        return self.report(thing_id, name, value, origin=origin) or writing[2]

    # ------------------------------------------------------------ actions

    def request_action(self, thing_id: str, name: str, input: Any = None, *, origin: str = "api") -> ActionRequest:
        """Start an action (ThingError if the thing has no such action or the input does not fit); returns at once."""
        thing = self.get(thing_id)
        try:
            spec = thing.actions[name]
        except KeyError:
            known = ", ".join(sorted(thing.actions)) or "none"
            raise ThingError(f"thing {thing_id!r} has no action {name!r} (it has: {known})", status=404) from None
        if thing.performer is None:
            raise ThingError(f"thing {thing_id!r} cannot perform actions (it has no performer)")
        value = spec.check_input(thing_id, input)
        request = ActionRequest(uuid.uuid4().hex, thing_id, name, value, origin, _iso_now())
        kept = self._requests.setdefault(thing_id, {})
        if len(kept) >= ACTIONS_KEPT:
            for old_id in [i for i, r in kept.items() if r.finished][: len(kept) - ACTIONS_KEPT + 1]:
                del kept[old_id]
        kept[request.id] = request
        self.action_status.publish(copy.copy(request))
        self._running[request.id] = asyncio.get_running_loop().create_task(
            self._perform(thing, request), name=f"action-{thing_id}-{name}"
        )
        return request

    async def _perform(self, thing: Thing, request: ActionRequest) -> None:
        request.status = "pending"
        self.action_status.publish(copy.copy(request))
        try:
            await thing.performer(request)  # type: ignore[misc]
        except asyncio.CancelledError:
            if not request.finished:
                self._finish(request, "cancelled")
            raise
        except RoostError as err:  # the device refused: reported to whoever asked, not raised into the hub
            log.warning("thing %s action %s failed: %s", thing.id, request.name, err)
            self._finish(request, "failed", str(err))
        except Exception as err:  # a bug in a performer: the same, with its traceback in the log
            log.exception("thing %s action %s crashed", thing.id, request.name)
            self._finish(request, "failed", f"{type(err).__name__}: {err}")
        else:
            self._finish(request, "completed")
        finally:
            self._running.pop(request.id, None)

    def _finish(self, request: ActionRequest, status: str, error: str | None = None) -> None:
        request.status, request.error, request.time_completed = status, error, _iso_now()
        # Snapshots: the request object moves on before subscribers read the earlier statuses.
        self.action_status.publish(copy.copy(request))

    def actions(self, thing_id: str, name: str | None = None) -> list[ActionRequest]:
        """The thing's action requests, oldest first (of one action when `name` is given)."""
        self.get(thing_id)
        return [r for r in self._requests.get(thing_id, {}).values() if name is None or r.name == name]

    def action(self, thing_id: str, name: str, request_id: str) -> ActionRequest:
        request = self._requests.get(thing_id, {}).get(request_id)
        if request is None or request.name != name:
            self.get(thing_id)
            raise ThingError(f"thing {thing_id!r} has no {name!r} action request {request_id!r}", status=404)
        return request

    def cancel_action(self, request: ActionRequest) -> None:
        """Stop a running action (its status becomes `cancelled`) and forget it."""
        task = self._running.pop(request.id, None)
        if task is not None:
            task.cancel()
        if not request.finished:
            self._finish(request, "cancelled")
        self._requests.get(request.thing_id, {}).pop(request.id, None)

    def cancel_all_actions(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        self._running.clear()

    # ------------------------------------------------------------ events

    def emit_event(self, thing_id: str, name: str, data: Any = None) -> ThingEvent:
        """Record that something happened on a thing and tell every subscriber."""
        thing = self.get(thing_id)
        if name not in thing.events:
            known = ", ".join(sorted(thing.events)) or "none"
            raise ThingError(f"thing {thing_id!r} has no event {name!r} (it has: {known})", status=404)
        event = ThingEvent(thing_id, name, data, _iso_now())
        self._event_log.setdefault(thing_id, deque(maxlen=EVENTS_KEPT)).append(event)
        self.events.publish(event)
        return event

    def event_log(self, thing_id: str, name: str | None = None) -> list[ThingEvent]:
        """The thing's recent events, oldest first (of one event when `name` is given)."""
        self.get(thing_id)
        return [e for e in self._event_log.get(thing_id, ()) if name is None or e.name == name]


def _is_rule(thing: Thing) -> bool:
    return "Rule" in thing.types
