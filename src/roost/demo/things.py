"""The demo house's things (docs/things.md): what a user switches, and a read-only thing per room.

Lights "Lounge Lamp" (on, brightness, a `fade` action) and "Porch Light" (on), and a "Kettle Plug" (on, read-only
power), whose actuators simply take the value; one thing per room written straight to the hub, its properties
following the room's series. The meter and the study's sensor need none here: roost's Modbus source and
zigbee2mqtt mapping make their things, as they do for real devices.
"""

from __future__ import annotations

import asyncio

from roost.demo.house import ROOMS
from roost.model import Series
from roost.things import ActionRequest, ActionSpec, PropertySpec, Thing

KETTLE_WATTS = 2000.0
_SENSORS = {  # series metric → (property, unit, @type)
    "temperature_celsius": ("temperature", "degree celsius", "TemperatureProperty"),
    "humidity_percent": ("humidity", "percent", "HumidityProperty"),
    "pressure_hpa": ("pressure", "hectopascal", "BarometricPressureProperty"),
}


def add_things(hub) -> None:
    """Register the simulated house's things, their sensor values bound to the demo's series.

    Called before the hub starts (it needs only the registry and the feed), so the demo's rules find the lights
    when they start; the rooms' values come with `show_latest` once the history is written.
    """
    things = hub.things

    async def accept(name, value) -> None:  # a simulated device does what it is told
        return None

    on = PropertySpec("on", "boolean", title="On", at_type="OnOffProperty")
    brightness = PropertySpec("brightness", "integer", title="Brightness", unit="percent", minimum=0, maximum=100,
                              at_type="BrightnessProperty")
    lamp = Thing("lounge-lamp", "Lounge Lamp", ("Light", "OnOffSwitch"), "A dimmable lamp (simulated)",
                 {"on": on, "brightness": brightness}, actuator=accept, origin="demo",
                 actions={"fade": ActionSpec("fade", "Fade", {
                     "type": "object", "required": ["brightness", "duration"],
                     "properties": {"brightness": {"type": "integer", "minimum": 0, "maximum": 100, "unit": "percent"},
                                    "duration": {"type": "number", "minimum": 0, "maximum": 600_000, "unit": "milliseconds"}},
                 }, "FadeAction")})

    async def fade(request: ActionRequest) -> None:
        start, target = lamp.values.get("brightness", 0), request.input["brightness"]
        steps = max(1, min(20, int(request.input["duration"] // 100)))
        for i in range(1, steps + 1):
            await asyncio.sleep(request.input["duration"] / 1000 / steps)
            things.report(lamp.id, "brightness", round(start + (target - start) * i / steps), origin=f"action:{request.name}")

    lamp.performer = fade
    porch = Thing("porch-light", "Porch Light", ("Light", "OnOffSwitch"), "A porch light (simulated)",
                  {"on": on}, actuator=accept, origin="demo")

    async def kettle_switch(name, value) -> None:
        things.report("kettle-plug", "power", KETTLE_WATTS if value else 0.0)

    kettle = Thing("kettle-plug", "Kettle Plug", ("SmartPlug", "OnOffSwitch", "EnergyMonitor"), "A metering plug (simulated)",
                   {"on": on, "power": PropertySpec("power", "number", title="Power", unit="watt", read_only=True,
                                                    at_type="InstantaneousPowerProperty")},
                   actuator=kettle_switch, origin="demo")
    for thing, values in ((lamp, {"on": False, "brightness": 60}), (porch, {"on": False}), (kettle, {"on": False, "power": 0.0})):
        things.add(thing)
        for name, value in values.items():
            things.report(thing.id, name, value)

    for room in ROOMS:
        bound = {Series.of(metric, room=room): spec for metric, spec in _SENSORS.items()}
        props = {p: PropertySpec(p, "number", title=p.title(), unit=unit, read_only=True, at_type=t) for p, unit, t in bound.values()}
        things.add(Thing(room, room.title(), ("TemperatureSensor", "MultiLevelSensor"),
                         f"Simulated sensors ({', '.join(props)})", props, origin="demo"))
        for series, (prop, _unit, _t) in bound.items():
            hub.thing_service.feed.bind(series, room, prop)


def show_latest(hub) -> None:
    """Give the rooms' things the latest stored values (the end of the history) before live readings come."""
    latest = hub.store.latest()
    for room in ROOMS:
        for metric, (prop, _unit, _t) in _SENSORS.items():
            series = Series.of(metric, room=room)
            if series in latest:
                hub.things.report(room, prop, latest[series][1], ts_ms=latest[series][0])
