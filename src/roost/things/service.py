"""The things side of a running hub: sources' devices become things, readings feed them, gateways are mirrored.

`attach(name, source)` is called for every source instance the hub makes (a supervised source is made anew
after each failure): the MQTT source's zigbee2mqtt devices report into the registry and its client carries their
commands; a Modbus source's devices become things at once and their writes go to the live source.
`run()` (one hub task) feeds property values from stored readings and runs the `[[things.gateway]]` clients.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from roost.sources.base import Source, SourceContext, supervise
from roost.things.client import GatewayClient, ThingsSettings
from roost.things.feed import SeriesFeed
from roost.things.modbus import modbus_things
from roost.things.model import ThingError
from roost.things.zigbee2mqtt import Zigbee2MqttThings

if TYPE_CHECKING:
    from roost.hub import Hub

log = logging.getLogger("roost.things")


class ThingService:
    def __init__(self, hub: Hub):
        self.hub = hub
        self.registry = hub.things
        self.feed = SeriesFeed(hub.things)
        self.live: dict[str, Any] = {}  # source name → the source instance the hub made last
        self._zigbee2mqtt: dict[str, Zigbee2MqttThings] = {}

    def attach(self, name: str, source: Source) -> Source:
        """Connect a freshly made source's devices to the registry; returns the source (for the hub's factory)."""
        self.live[name] = source
        if source.kind == "mqtt" and source.parser.zigbee2mqtt is not None:
            z2m = self._zigbee2mqtt.get(name)
            if z2m is None:
                z2m = self._zigbee2mqtt[name] = Zigbee2MqttThings(self.registry, name, source.parser.zigbee2mqtt.base)
            z2m.publish = source.publish
            source.device_states = z2m.state
        elif source.kind == "modbus" and not any(t.origin == f"{name}:modbus" for t in self.registry):
            for thing, series in modbus_things(name, source.settings, lambda name=name: self.live.get(name)):
                try:
                    self.registry.add(thing)
                except ThingError as err:
                    log.warning("source %s: %s — its thing is left out", name, err)
                    continue
                for s, prop in series.items():
                    self.feed.bind(s, thing.id, prop)
        return source

    async def run(self) -> None:
        readings = self.hub.bus.subscribe("things", maxsize=10_000)
        settings: ThingsSettings = getattr(self.hub.settings, "things", None) or ThingsSettings()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.feed.run(readings), name="things-feed")
                for gateway in settings.gateway:
                    ctx = SourceContext(f"gateway-{gateway.name}", self.hub.metrics, self.hub.submit)
                    make = lambda g=gateway, ctx=ctx: GatewayClient(g, ctx, self.registry)
                    tasks.create_task(supervise(make, ctx), name=f"gateway-{gateway.name}")
                    log.info("gateway %s (%s) started", gateway.name, gateway.url)
        finally:
            self.hub.bus.unsubscribe(readings)
            self.registry.cancel_all_actions()
