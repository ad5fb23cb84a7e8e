"""How roost's words become Web Thing words: series metrics → property names, units and capability types.

A metric's unit suffix (roost names series Prometheus-style, `temperature_celsius`) becomes the property's
`unit`, and the rest its name: `temperature_celsius` → property `temperature`, unit `degree celsius`.
"""

from __future__ import annotations

import re

# suffix → Web Thing unit; longest suffixes first so `_kwh_total` wins over `_total`
_SUFFIX_UNITS = (
    ("_kwh_total", "kilowatt hour"),
    ("_wh_total", "watt hour"),
    ("_celsius", "degree celsius"),
    ("_percent", "percent"),
    ("_hpa", "hectopascal"),
    ("_watts", "watt"),
    ("_va", "volt ampere"),
    ("_var", "volt ampere reactive"),
    ("_volts", "volt"),
    ("_millivolts", "millivolt"),
    ("_amperes", "ampere"),
    ("_hertz", "hertz"),
    ("_lux", "lux"),
    ("_ppm", "ppm"),
    ("_seconds", "second"),
    ("_kwh", "kilowatt hour"),
)

# property name → (Web Thing property @type, capability @type it implies)
PROPERTY_TYPES: dict[str, tuple[str | None, str | None]] = {
    "temperature": ("TemperatureProperty", "TemperatureSensor"),
    "humidity": ("HumidityProperty", "MultiLevelSensor"),
    "pressure": ("BarometricPressureProperty", "MultiLevelSensor"),
    "illuminance": ("LevelProperty", "MultiLevelSensor"),
    "co2": ("ConcentrationProperty", "MultiLevelSensor"),
    "power": ("InstantaneousPowerProperty", "EnergyMonitor"),
    "energy": (None, "EnergyMonitor"),
    "voltage": ("VoltageProperty", "EnergyMonitor"),
    "current": ("CurrentProperty", "EnergyMonitor"),
    "frequency": ("FrequencyProperty", "EnergyMonitor"),
    "occupancy": ("MotionProperty", "MotionSensor"),
    "contact": ("OpenProperty", "DoorSensor"),
    "on": ("OnOffProperty", "OnOffSwitch"),
}


def split_metric(metric: str) -> tuple[str, str | None]:
    """`temperature_celsius` → ("temperature", "degree celsius"); a metric without a known unit suffix stays whole."""
    for suffix, unit in _SUFFIX_UNITS:
        if metric.endswith(suffix) and len(metric) > len(suffix):
            return metric[: -len(suffix)], unit
    return metric, None


def capabilities(property_names: list[str] | set[str] | dict) -> tuple[str, ...]:
    """The capability @types the properties imply: `Light` when `on` comes with `brightness` or `color`."""
    names = set(property_names)
    found: list[str] = []
    if "on" in names and names & {"brightness", "color"}:
        found.append("Light")
    for name in sorted(names):
        base = name.split("_")[0]
        capability = PROPERTY_TYPES.get(name, PROPERTY_TYPES.get(base, (None, None)))[1]
        if capability and capability not in found:
            found.append(capability)
    return tuple(found)


_NOT_ID = re.compile(r"[^a-z0-9]+")


def thing_id(name: str) -> str:
    """A device or room name as a URL-safe thing id: "Kitchen/Plug 2" → "kitchen-plug-2"."""
    return _NOT_ID.sub("-", name.lower()).strip("-") or "thing"
