"""Things whose properties are series: stored readings on the hub's bus become property reports.

A binding names one exact series and the (thing, property) it feeds, so a reading costs one dict lookup.
Bindings are made by whoever makes the thing (the demo, the Modbus mapping), because they know both sides.
"""

from __future__ import annotations

from roost.bus import Subscription
from roost.model import Reading, Series
from roost.things.registry import ThingRegistry


class SeriesFeed:
    def __init__(self, registry: ThingRegistry):
        self.registry = registry
        self._bindings: dict[Series, tuple[str, str, str]] = {}  # series → (thing id, property, JSON type)

    def bind(self, series: Series, thing_id: str, name: str) -> None:
        """Report every stored reading of `series` as property `name` of the thing (a number, or a boolean)."""
        spec = self.registry.get(thing_id).spec(name)
        self._bindings[series] = (thing_id, name, spec.type)

    def apply(self, reading: Reading) -> None:
        bound = self._bindings.get(reading.series)
        if bound is None:
            return
        thing_id, name, kind = bound
        value: float | int | bool = reading.value
        if kind == "boolean":
            value = reading.value != 0
        elif kind == "integer":
            value = int(reading.value)
        if thing_id in self.registry:
            self.registry.report(thing_id, name, value, ts_ms=reading.ts_ms)

    async def run(self, readings: Subscription[Reading]) -> None:
        async for reading in readings:
            self.apply(reading)
