"""`roost demo`: a simulated house so a new user sees roost working with nothing to install.

Rooms lounge, bedroom and entry each report temperature (a diurnal cycle with a per-room offset), humidity (a
random walk) and pressure (one slow variation shared by the house); an energy meter reports power in W and a
kWh counter. History is backfilled straight into the store, then live readings flow every 15 s.

The house is also a set of things (docs/things.md): lights "Lounge Lamp" (on, brightness, a `fade` action) and
"Porch Light" (on), a "Kettle Plug" (on, read-only power) whose actuators simply take the value, and one read-only
thing per room and for the meter whose properties follow the simulated series.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from roost.model import Reading, Series, now_ms
from roost.things import ActionRequest, ActionSpec, PropertySpec, Thing

log = logging.getLogger("roost.demo")

INTERVAL_MS = 15_000
ROOMS = {"lounge": 0.8, "bedroom": -1.2, "entry": -2.5}  # temperature offset from 20 °C


@dataclass
class House:
    """Deterministic for a seed; `history()` and `tick()` continue the same random walks."""

    seed: int = 7
    rng: np.random.Generator = field(init=False)
    humidity: dict[str, float] = field(init=False)
    energy_kwh: float = 1234.567

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.humidity = {room: 45.0 + 5 * i for i, room in enumerate(ROOMS)}

    @staticmethod
    def series() -> list[Series]:
        out = []
        for room in ROOMS:
            for metric in ("temperature_celsius", "humidity_percent", "pressure_hpa"):
                out.append(Series.of(metric, room=room))
        out += [Series.of("power_watts", meter="main"), Series.of("energy_kwh_total", meter="main")]
        return out

    def _temperature(self, ts: np.ndarray, offset: float) -> np.ndarray:
        hours = (ts / 3_600_000.0) % 24
        daily = 1.8 * np.sin(2 * np.pi * (hours - 9) / 24)  # warmest mid-afternoon
        return np.round(20 + offset + daily + self.rng.normal(0, 0.04, len(ts)), 2)

    @staticmethod
    def _pressure_base(ts: np.ndarray) -> np.ndarray:
        days = ts / 86_400_000.0
        return 1013 + 6 * np.sin(2 * np.pi * days / 5.3) + 2 * np.sin(2 * np.pi * days / 1.7)

    def _power(self, ts: np.ndarray) -> np.ndarray:
        hours = (ts / 3_600_000.0) % 24
        base = 180 + 250 * ((hours > 6.5) & (hours < 8.5)) + 600 * ((hours > 17.5) & (hours < 21.5))
        kettle = (self.rng.random(len(ts)) < 0.01) * 2000
        return np.round(base + kettle + self.rng.normal(0, 8, len(ts)).clip(-40, 40), 1)

    def samples(self, ts: np.ndarray) -> dict[Series, np.ndarray]:
        """Values of every series at the given timestamps (ms), continuing the walks."""
        out: dict[Series, np.ndarray] = {}
        pressure = self._pressure_base(ts)
        for room, offset in ROOMS.items():
            out[Series.of("temperature_celsius", room=room)] = self._temperature(ts, offset)
            steps = self.rng.normal(0, 0.04, len(ts))
            walk = np.clip(self.humidity[room] + np.cumsum(steps), 25, 75)
            self.humidity[room] = float(walk[-1])
            out[Series.of("humidity_percent", room=room)] = np.round(walk, 1)
            out[Series.of("pressure_hpa", room=room)] = np.round(pressure + self.rng.normal(0, 0.03, len(ts)), 2)
        power = self._power(ts)
        out[Series.of("power_watts", meter="main")] = power
        energy = self.energy_kwh + np.cumsum(power) * (INTERVAL_MS / 3_600_000) / 1000
        self.energy_kwh = float(energy[-1])
        out[Series.of("energy_kwh_total", meter="main")] = np.round(energy, 3)
        return out


def backfill(store, house: House, span_ms: int, end_ms: int) -> int:
    """Write history up to `end_ms` straight into chunks, starting after what the store already has."""
    latest = store.latest()
    last_energy = latest.get(Series.of("energy_kwh_total", meter="main"))
    if last_energy:
        house.energy_kwh = last_energy[1]  # a meter never runs backwards, also across demo restarts
    have = [latest[s][0] for s in house.series() if s in latest]
    start = max(end_ms - span_ms, max(have) + INTERVAL_MS if have else 0)
    start -= start % INTERVAL_MS
    if start >= end_ms:
        return 0
    ts = np.arange(start, end_ms, INTERVAL_MS, dtype=np.int64)
    written = 0
    for series, values in house.samples(ts).items():
        written += store.write_bulk(series, ts, values, now=end_ms)
    return written


KETTLE_WATTS = 2000.0
_SENSORS = {  # series metric → (property, unit, @type)
    "temperature_celsius": ("temperature", "degree celsius", "TemperatureProperty"),
    "humidity_percent": ("humidity", "percent", "HumidityProperty"),
    "pressure_hpa": ("pressure", "hectopascal", "BarometricPressureProperty"),
    "power_watts": ("power", "watt", "InstantaneousPowerProperty"),
    "energy_kwh_total": ("energy", "kilowatt hour", None),
}


def add_things(hub) -> None:
    """Register the simulated house's things on the hub, their sensor values bound to the demo's series."""
    things, latest = hub.things, hub.store.latest()

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

    views = {room: (room.title(), {"room": room}, ("TemperatureSensor", "MultiLevelSensor")) for room in ROOMS}
    views["energy-meter"] = ("Energy Meter", {"meter": "main"}, ("EnergyMonitor",))
    for tid, (title, labels, types) in views.items():
        bound = {s: _SENSORS[s.metric] for s in House.series() if s.label_dict == labels}
        props = {p: PropertySpec(p, "number", title=p.title(), unit=unit, read_only=True, at_type=t) for p, unit, t in bound.values()}
        things.add(Thing(tid, title, types, f"Simulated sensors ({', '.join(props)})", props, origin="demo"))
        for series, (prop, _unit, _t) in bound.items():
            hub.thing_service.feed.bind(series, tid, prop)
            if series in latest:
                things.report(tid, prop, latest[series][1], ts_ms=latest[series][0])


async def run_live(hub, house: House, interval_ms: int = INTERVAL_MS) -> None:
    """Register the house's things, then publish one reading per series every interval, aligned to the interval grid."""
    add_things(hub)
    while True:
        now = now_ms()
        next_tick = now - now % interval_ms + interval_ms
        await asyncio.sleep((next_tick - now) / 1000)
        ts = np.array([next_tick], dtype=np.int64)
        readings = [Reading(s, next_tick, float(v[0])) for s, v in house.samples(ts).items()]
        await hub.ingest(readings)


def describe(span_ms: int) -> str:
    days = span_ms / 86_400_000
    return f"{days:g} day{'s' if not math.isclose(days, 1) else ''}"
