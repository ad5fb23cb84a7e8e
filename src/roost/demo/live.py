"""The demo running: its simulated devices around the hub, roost's real sources polling them, and the clock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math

import numpy as np

from roost.demo import meter as meter_module
from roost.demo import sensor as sensor_module
from roost.demo.house import INTERVAL_MS, METER_SERIES, ROOMS, SENSOR_SERIES, House, backfill
from roost.demo.meter import SimulatedMeter
from roost.demo.sensor import Zigbee2MqttSensor
from roost.demo.things import add_things, show_latest
from roost.errors import RoostError
from roost.model import Reading, now_ms

log = logging.getLogger("roost.demo")


class Demo:
    """`async with Demo(...) as demo:` around the hub starts the simulated devices; `demo.add_things(hub)` before the
    hub starts (so the demo's rules find their things at once), `await demo.start(hub, ...)` the rest.

    `mqtt` is the broker for the study's sensor, or None for none; a broker that cannot be reached is skipped (with
    the reason in `summary()`) unless `mqtt_required`, when it is an error.
    """

    def __init__(self, seed: int = 7, *, interval_ms: int = INTERVAL_MS, mqtt: str | None = sensor_module.DEFAULT_BROKER,
                 mqtt_required: bool = False):
        self.interval_ms = interval_ms
        self.seed = seed
        self.meter = SimulatedMeter(seed)
        self.sensor: Zigbee2MqttSensor | None = None
        self.house = House(seed)
        self._mqtt, self._mqtt_required = mqtt, mqtt_required
        self.mqtt_skipped = ""  # why the broker was skipped
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Demo:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.meter)
            if self._mqtt is not None:
                try:
                    self.sensor = await stack.enter_async_context(Zigbee2MqttSensor(self._mqtt))
                except RoostError as err:
                    if self._mqtt_required:
                        raise RoostError(f"--mqtt: {err} — is the broker running? (or pass --no-mqtt)") from None
                    self.mqtt_skipped = str(err)
            self.house = House(self.seed, study=self.sensor is not None)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def summary(self) -> list[str]:
        """What the demo runs, a line per part."""
        interval = f"{self.interval_ms / 1000:g} s"
        lines = [
            f"rooms {', '.join(ROOMS)}: simulated, written to the hub every {interval}",
            (f'energy meter "{meter_module.DEVICE}": a simulated SDM120 at {self.meter.url} (unit {meter_module.UNIT}), '
             f"polled by roost's Modbus source {meter_module.SOURCE!r} every {interval}"),
        ]
        if self.sensor is not None:
            lines.append(f"room {sensor_module.ROOM}: a simulated zigbee2mqtt sensor {sensor_module.NAME!r} publishing to "
                         f"{self.sensor.url} every {interval}, read by roost's MQTT source {sensor_module.SOURCE!r}")
        elif self._mqtt is None:
            lines.append("MQTT skipped (--no-mqtt): no study sensor")
        else:
            lines.append(f"MQTT skipped: {self.mqtt_skipped} — no study sensor (start a broker there, or pass --mqtt URL)")
        return lines

    def add_things(self, hub) -> None:
        """Register the house's lights, plug and rooms as things (on a hub not started yet: before its rules)."""
        add_things(hub)

    async def start(self, hub, backfill_ms: int) -> None:
        """Write the history, show the meter's current reading, then start the sources and the live readings."""
        written = await asyncio.to_thread(backfill, hub.store, self.house, backfill_ms, now_ms())
        if written:
            log.info("backfilled %s of history: %d readings", describe(backfill_ms), written)
        show_latest(hub)
        # The meter shows where the history ends before roost's Modbus source first polls it.
        latest = hub.store.latest()
        power = latest.get(METER_SERIES["power_watts"])
        await self.meter.show(power[1] if power else 0.0, self.house.energy_kwh)
        hub.start_source("modbus", meter_module.SOURCE, self.meter.settings(self.interval_ms))
        if self.sensor is not None:
            hub.start_source("mqtt", sensor_module.SOURCE, self.sensor.settings(hub.settings.hub.data))
        hub.spawn(run_live(hub, self), "demo-house")


async def run_live(hub, demo: Demo) -> None:
    """Every interval (aligned to its grid) move the house on a step.

    The rooms' readings go straight to the hub, the meter's into its registers, the study's out as MQTT messages.
    """
    house, interval_ms = demo.house, demo.interval_ms
    while True:
        now = now_ms()
        next_tick = now - now % interval_ms + interval_ms
        await asyncio.sleep((next_tick - now) / 1000)
        values = {s: float(v[0]) for s, v in house.samples(np.array([next_tick], dtype=np.int64), interval_ms).items()}
        await demo.meter.show(values.pop(METER_SERIES["power_watts"]), values.pop(METER_SERIES["energy_kwh_total"]))
        state = {field: values.pop(s) for field, s in SENSOR_SERIES.items() if s in values}
        if demo.sensor is not None:
            await demo.sensor.publish(state)
        await hub.ingest(Reading(s, next_tick, v) for s, v in values.items())


def describe(span_ms: int) -> str:
    days = span_ms / 86_400_000
    return f"{days:g} day{'s' if not math.isclose(days, 1) else ''}"
