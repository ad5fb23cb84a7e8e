"""Modbus meters as things, made from the source's settings; values come from its stored readings.

One thing per `[[source.modbus.devices]]`. Every register (and profile register) becomes a property named after
its metric without the unit suffix, plus the values of its own labels when they tell registers apart
(`voltage_volts{phase="L1"}` → `voltage_L1`), titled as the profile names it ("Apparent power") or else in words
("Flow temperature" for `flow_temperature_celsius`). Coils and discrete inputs are booleans, registers numbers.
Properties are read-only unless the register is configured `writable = true` (coils and holding registers only):
a write goes through the live source's `write_coil` / `write_register`, scaled back to the raw value. A writable
register of a whole-number data type has the range its type holds (after scale and offset) as minimum and maximum,
and is an integer property when it is not scaled; a value off its scale's steps is refused before any write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from roost.errors import SourceError
from roost.model import Series
from roost.things.model import PropertySpec, Thing, ThingError
from roost.things.units import PROPERTY_TYPES, capabilities, split_metric, thing_id

_WRITABLE_TYPES = ("coil", "holding")
_WHOLE_RANGES = {  # whole-number data types → the raw values they hold
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1), "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}


@dataclass(frozen=True, slots=True)
class _Register:
    series: Series
    property: str
    title: str
    type: str
    address: int
    data_type: str
    order: str
    scale: float
    offset: float
    writable: bool

    def spec(self) -> PropertySpec:
        _name, unit = split_metric(self.series.metric)
        at_type = PROPERTY_TYPES.get(self.property.split("_")[0], (None, None))[0]
        if self.type in ("coil", "discrete"):
            return PropertySpec(self.property, "boolean", title=self.title, read_only=not self.writable, at_type=at_type)
        kind, low, high = "number", None, None
        if self.writable and self.data_type in _WHOLE_RANGES:
            low, high = sorted(float(f"{self.offset + raw * self.scale:.15g}") for raw in _WHOLE_RANGES[self.data_type])
            if self.scale == 1 and self.offset == 0:
                kind = "integer"
        return PropertySpec(self.property, kind, title=self.title, unit=unit, read_only=not self.writable,
                            minimum=low, maximum=high, at_type=at_type)

    def raw(self, thing_id: str, value: float) -> float:
        """The value as the register holds it; ThingError when a whole-number register cannot hold it exactly."""
        raw = (float(value) - self.offset) / self.scale
        if self.data_type in _WHOLE_RANGES:
            whole = round(raw)
            if abs(raw - whole) > 1e-6 * max(1.0, abs(raw)):  # 21.5 / 0.1 is 214.99999999999997, and that is fine
                raise ThingError(f"thing {thing_id!r} property {self.property!r}: {value!r} is not a whole number of the "
                                 f"register's steps of {self.scale:g}" + (f" from {self.offset:g}" if self.offset else ""))
            return whole
        return raw


def _title(name: str) -> str:
    """A property name in words: `flow_temperature` → "Flow temperature", `voltage_L1` → "Voltage L1"."""
    text = name.replace("_", " ")
    return text[:1].upper() + text[1:]


def _registers(source_name: str, device) -> list[_Register]:
    from roost.sources.modbus_profiles import PROFILES

    rows = []
    if device.profile is not None:
        p = PROFILES[device.profile]
        rows += [(r.metric, dict(r.labels), r.title, p.type, r.address, p.data_type, p.order, 1.0, 0.0, False)
                 for r in p.registers]
    for r in device.registers:
        writable = r.writable and r.type in _WRITABLE_TYPES
        rows.append((r.metric, dict(r.labels), "", r.type, r.address, r.kind, r.order, r.scale, r.offset, writable))
    names: dict[str, int] = {}
    for metric, *_ in rows:
        names[metric] = names.get(metric, 0) + 1
    out = []
    for metric, labels, title, type_, address, data_type, order, scale, offset, writable in rows:
        name, _unit = split_metric(metric)
        if names[metric] > 1 and labels:
            name = "_".join([name, *(labels[k] for k in sorted(labels))])
        series = Series.of(metric, {**device.labels, **labels}, source=source_name, device=device.name)
        out.append(_Register(series, name, title or _title(name), type_, address, data_type, order, scale, offset, writable))
    return out


def modbus_things(source_name: str, settings, live_source: Callable[[], Any]) -> list[tuple[Thing, dict[Series, str]]]:
    """Each device's thing and the series that feed its properties; `live_source()` is the connected source or None."""
    out = []
    for device in settings.devices:
        registers = _registers(source_name, device)
        props = {r.property: r.spec() for r in registers}
        by_name = {r.property: r for r in registers}
        tid = thing_id(device.name)

        async def actuate(name: str, value: Any, device_name=device.name, by_name=by_name, tid=tid) -> None:
            r = by_name[name]
            raw = bool(value) if r.type == "coil" else r.raw(tid, value)
            source = live_source()
            if source is None:
                raise SourceError(f"{source_name}: not connected — cannot write {name} of {device_name}")
            if r.type == "coil":
                await source.write_coil(device_name, r.address, raw)
            else:
                await source.write_register(device_name, r.address, raw, r.data_type, r.order)

        thing = Thing(
            id=tid, title=device.name, types=capabilities(props),
            description=f"Modbus device {device.name!r} (unit {device.unit}) on source {source_name}",
            properties=props, actuator=actuate if any(r.writable for r in registers) else None,
            origin=f"{source_name}:modbus",
        )
        out.append((thing, {r.series: r.property for r in registers}))
    return out
