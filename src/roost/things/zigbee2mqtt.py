"""zigbee2mqtt devices as things, made from the state objects they publish; writes go to `<base>/<name>/set`.

Mapping of a state field to a property (the thing grows as new fields appear):
- `state` "ON"/"OFF" → `on`, writable boolean (sent as `{"state": "ON"}`);
- `brightness` → writable integer 0–254, zigbee2mqtt's own scale (sent as `{"brightness": 128}`);
- `color` → writable object (`{"x":..,"y":..}`, `{"hue":..,"saturation":..}`) or string (`"#ff8800"`);
- other numbers → read-only numbers with z2m's units; booleans (`occupancy`, `contact`) → read-only booleans;
- `last_seen`, `elapsed`, `linkquality` and other strings or objects are not properties.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from roost.errors import SourceError
from roost.things.model import PropertySpec, Thing, ThingError
from roost.things.registry import ThingRegistry
from roost.things.units import PROPERTY_TYPES, capabilities, thing_id

log = logging.getLogger("roost.things.zigbee2mqtt")

# field → (unit, minimum, maximum); z2m's units (battery devices report voltage in mV, plugs in V: see mqtt.py)
_NUMBERS: dict[str, tuple[str | None, float | None, float | None]] = {
    "temperature": ("degree celsius", None, None),
    "device_temperature": ("degree celsius", None, None),
    "local_temperature": ("degree celsius", None, None),
    "humidity": ("percent", 0, 100),
    "soil_moisture": ("percent", 0, 100),
    "pressure": ("hectopascal", None, None),
    "battery": ("percent", 0, 100),
    "power": ("watt", None, None),
    "energy": ("kilowatt hour", None, None),
    "current": ("ampere", None, None),
    "voltage": ("volt", None, None),
    "illuminance_lux": ("lux", 0, None),
    "illuminance": ("lux", 0, None),
    "co2": ("ppm", 0, None),
}
_NOT_PROPERTIES = frozenset({"last_seen", "elapsed", "linkquality"})

Publish = Callable[[str, bytes], Awaitable[None]]


def _spec(name: str, value: Any) -> PropertySpec | None:
    if name in _NOT_PROPERTIES:
        return None
    if name == "state" and value in ("ON", "OFF"):
        return PropertySpec("on", "boolean", title="On", at_type="OnOffProperty")
    if name == "brightness" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return PropertySpec("brightness", "integer", title="Brightness", minimum=0, maximum=254)
    if name == "color" and isinstance(value, (dict, str)):
        return PropertySpec("color", "object" if isinstance(value, dict) else "string", title="Color",
                            at_type="ColorProperty" if isinstance(value, str) else None)
    if isinstance(value, bool):
        return PropertySpec(name, "boolean", read_only=True, at_type=PROPERTY_TYPES.get(name, (None, None))[0])
    if isinstance(value, (int, float)):
        unit, lo, hi = _NUMBERS.get(name, (None, None, None))
        return PropertySpec(name, "number", read_only=True, unit=unit, minimum=lo, maximum=hi,
                            at_type=PROPERTY_TYPES.get(name.split("_")[0], (None, None))[0])
    return None


def _value(name: str, spec: PropertySpec, value: Any) -> Any:
    if spec.name == "on":
        return value == "ON"
    if spec.type == "integer":
        return int(value)
    if spec.type == "number" and isinstance(value, int):
        return float(value)
    return value


def _command(name: str, value: Any) -> dict[str, Any]:
    if name == "on":
        return {"state": "ON" if value else "OFF"}
    return {name: value}


class Zigbee2MqttThings:
    """The things of one MQTT source's zigbee2mqtt devices; `publish` is the live source's (it changes on reconnect)."""

    def __init__(self, registry: ThingRegistry, source_name: str, base_topic: str):
        self.registry = registry
        self.source_name = source_name
        self.base_topic = base_topic
        self.publish: Publish | None = None
        self._ids: dict[str, str] = {}  # friendly name → thing id

    def state(self, device: str, obj: dict[str, Any], ts_ms: int) -> None:
        """A device published its state: grow its thing by any new fields, then report the values."""
        try:
            thing = self._thing(device)
        except ThingError as err:  # an id taken twice over: leave the device out of things, keep its readings
            log.warning("%s: %s", device, err)
            return
        grown = False
        for name, value in obj.items():
            key = "on" if name == "state" else name
            if key not in thing.properties:
                spec = _spec(name, value)
                if spec is None:
                    continue
                thing.properties[spec.name] = spec
                grown = True
        if grown:
            thing.types = capabilities(thing.properties)
        for name, value in obj.items():
            spec = thing.properties.get("on" if name == "state" else name)
            if spec is None or value is None:
                continue
            try:
                value = spec.check(thing.id, _value(name, spec, value))
            except (ThingError, ValueError, TypeError) as err:
                log.debug("%s: %s", device, err)
                continue
            self.registry.report(thing.id, spec.name, value, ts_ms=ts_ms)

    def _thing(self, device: str) -> Thing:
        tid = self._ids.get(device)
        if tid is not None and tid in self.registry:
            return self.registry.get(tid)
        tid = thing_id(device)
        if tid in self.registry:
            tid = f"{thing_id(self.source_name)}-{tid}"
        origin = f"{self.source_name}:zigbee2mqtt"

        async def actuate(name: str, value: Any) -> None:
            await self._send(device, name, value)

        thing = Thing(id=tid, title=device, description=f"zigbee2mqtt device {device!r} on source {self.source_name}",
                      actuator=actuate, origin=origin)
        self._ids[device] = tid
        return self.registry.add(thing)

    async def _send(self, device: str, name: str, value: Any) -> None:
        topic = f"{self.base_topic}/{device}/set"
        if self.publish is None:
            raise SourceError(f"{self.source_name}: not connected to the broker — cannot send {topic}")
        await self.publish(topic, json.dumps(_command(name, value)).encode())
