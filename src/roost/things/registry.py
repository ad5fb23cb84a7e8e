"""The registry of every thing roost knows, and the one way to change a property.

Changes flow in two directions, and both end as a PropertyChange on `registry.changes`:
- `report()` — a device (or a source reading) says a property has a value;
- `set()` — someone (the API, a rule) asks a device to take a value: it is checked against the property
  description, written through the thing's actuator, then recorded.
Setting a property to the value it already has does nothing (no write, no change event), which is what lets
bonded bulbs settle after one change instead of echoing forever.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from roost.bus import Bus
from roost.model import now_ms
from roost.things.model import PropertyChange, Thing, ThingError, attribute_name

log = logging.getLogger("roost.things")


class ThingRegistry:
    def __init__(self) -> None:
        self._things: dict[str, Thing] = {}
        self.changes: Bus[PropertyChange] = Bus()

    def add(self, thing: Thing) -> Thing:
        if thing.id in self._things and self._things[thing.id] is not thing:
            raise ThingError(f"a thing with id {thing.id!r} exists already (from {self._things[thing.id].origin})")
        self._things[thing.id] = thing
        return thing

    def remove(self, thing_id: str) -> None:
        self._things.pop(thing_id, None)

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
        """Things by their sanitized titles, as rules see them (`self.Philips_HUE_01`)."""
        return {attribute_name(t.title): t for t in self._things.values()}

    def report(self, thing_id: str, name: str, value: Any, *, origin: str = "device", ts_ms: int | None = None) -> bool:
        """Record a value a device reported; publishes a change and returns True when it differs."""
        thing = self.get(thing_id)
        old = thing.values.get(name)
        if name in thing.values and old == value and type(old) is type(value):
            return False
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
        await thing.actuator(name, value)
        return self.report(thing_id, name, value, origin=origin)
