"""Modbus meters as things, made from the source's settings; values come from its stored readings.

One thing per `[[source.modbus.devices]]`. Every register (and profile register) becomes a property named after
its metric without the unit suffix, plus the values of its own labels when they tell registers apart
(`voltage_volts{phase="L1"}` → `voltage_L1`). Coils and discrete inputs are booleans, registers numbers.
Properties are read-only unless the register is configured `writable = true` (coils and holding registers only):
a write goes through the live source's `write_coil` / `write_register`, scaled back to the raw value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from roost.errors import SourceError
from roost.model import Series
from roost.things.model import PropertySpec, Thing
from roost.things.units import PROPERTY_TYPES, capabilities, split_metric, thing_id

_WRITABLE_TYPES = ("coil", "holding")


@dataclass(frozen=True, slots=True)
class _Register:
    series: Series
    property: str
    type: str
    address: int
    data_type: str
    order: str
    scale: float
    offset: float
    writable: bool


def _registers(source_name: str, device) -> list[_Register]:
    from roost.sources.modbus_profiles import PROFILES

    rows = []
    if device.profile is not None:
        p = PROFILES[device.profile]
        rows += [(r.metric, dict(r.labels), p.type, r.address, p.data_type, p.order, 1.0, 0.0, False) for r in p.registers]
    for r in device.registers:
        writable = r.writable and r.type in _WRITABLE_TYPES
        rows.append((r.metric, dict(r.labels), r.type, r.address, r.kind, r.order, r.scale, r.offset, writable))
    names: dict[str, int] = {}
    for metric, *_ in rows:
        names[metric] = names.get(metric, 0) + 1
    out = []
    for metric, labels, type_, address, data_type, order, scale, offset, writable in rows:
        name, _unit = split_metric(metric)
        if names[metric] > 1 and labels:
            name = "_".join([name, *(labels[k] for k in sorted(labels))])
        series = Series.of(metric, {**device.labels, **labels}, source=source_name, device=device.name)
        out.append(_Register(series, name, type_, address, data_type, order, scale, offset, writable))
    return out


def modbus_things(source_name: str, settings, live_source: Callable[[], Any]) -> list[tuple[Thing, dict[Series, str]]]:
    """Each device's thing and the series that feed its properties; `live_source()` is the connected source or None."""
    out = []
    for device in settings.devices:
        registers = _registers(source_name, device)
        props: dict[str, PropertySpec] = {}
        for r in registers:
            _name, unit = split_metric(r.series.metric)
            boolean = r.type in ("coil", "discrete")
            props[r.property] = PropertySpec(
                r.property, "boolean" if boolean else "number", unit=None if boolean else unit,
                read_only=not r.writable, at_type=PROPERTY_TYPES.get(r.property.split("_")[0], (None, None))[0],
            )
        by_name = {r.property: r for r in registers}

        async def actuate(name: str, value: Any, device_name=device.name, by_name=by_name) -> None:
            r = by_name[name]
            source = live_source()
            if source is None:
                raise SourceError(f"{source_name}: not connected — cannot write {name} of {device_name}")
            if r.type == "coil":
                await source.write_coil(device_name, r.address, bool(value))
            else:
                raw = (float(value) - r.offset) / r.scale
                await source.write_register(device_name, r.address, raw, r.data_type, r.order)

        thing = Thing(
            id=thing_id(device.name), title=device.name, types=capabilities(props),
            description=f"Modbus device {device.name!r} (unit {device.unit}) on source {source_name}",
            properties=props, actuator=actuate if any(r.writable for r in registers) else None,
            origin=f"{source_name}:modbus",
        )
        out.append((thing, {r.series: r.property for r in registers}))
    return out
