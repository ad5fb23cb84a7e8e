"""The simulated house: its rooms' climate and its electricity use as a deterministic model, and its history.

Every series is stored under the labels of the path its live readings take (see `roost.demo`): the rooms lounge,
bedroom and entry as written straight to the hub, the study as roost's zigbee2mqtt mapping stores its sensor, the
meter as roost's Modbus source stores the SDM120 — so history and live readings are one series each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from roost.demo import meter, sensor
from roost.model import Series

INTERVAL_MS = 15_000
ROOMS = {"lounge": 0.8, "bedroom": -1.2, "entry": -2.5}  # written straight to the hub; temperature offset from 20 °C
_STUDY_OFFSET = 0.3
_CLIMATE = ("temperature_celsius", "humidity_percent", "pressure_hpa")

METER_SERIES = {metric: meter.series(metric) for metric in ("power_watts", "energy_kwh_total")}
# zigbee2mqtt state field → the series roost's zigbee2mqtt mapping stores it as
SENSOR_SERIES = {
    field: sensor.series(metric)
    for field, metric in (("temperature", "temperature_celsius"), ("humidity", "humidity_percent"),
                          ("pressure", "pressure_hpa"), ("battery", "battery_percent"), ("linkquality", "linkquality"))
}


@dataclass
class House:
    """Deterministic for a seed; `samples()` continues the same random walks call after call.

    `study` adds the study, whose sensor reports over MQTT: only when the demo has a broker to publish to.
    """

    seed: int = 7
    study: bool = False
    rng: np.random.Generator = field(init=False)
    humidity: dict[str, float] = field(init=False)
    energy_kwh: float = 1234.567

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.humidity = {room: 45.0 + 5 * i for i, room in enumerate(self._offsets())}

    def _offsets(self) -> dict[str, float]:
        return {**ROOMS, sensor.ROOM: _STUDY_OFFSET} if self.study else ROOMS

    def series(self) -> list[Series]:
        out = [Series.of(metric, room=room) for room in ROOMS for metric in _CLIMATE]
        out += METER_SERIES.values()
        if self.study:
            out += SENSOR_SERIES.values()
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

    def samples(self, ts: np.ndarray, step_ms: int = INTERVAL_MS) -> dict[Series, np.ndarray]:
        """Values of every series at the given timestamps (ms, `step_ms` apart), continuing the walks."""
        out: dict[Series, np.ndarray] = {}
        pressure = self._pressure_base(ts)
        for room, offset in self._offsets().items():
            steps = self.rng.normal(0, 0.04, len(ts))
            walk = np.clip(self.humidity[room] + np.cumsum(steps), 25, 75)
            self.humidity[room] = float(walk[-1])
            climate = (self._temperature(ts, offset), np.round(walk, 1),
                       np.round(pressure + self.rng.normal(0, 0.03, len(ts)), 2))
            for metric, values in zip(_CLIMATE, climate):
                out[Series.of(metric, room=room) if room in ROOMS else sensor.series(metric)] = values
        if self.study:
            days = ts / 86_400_000.0
            out[SENSOR_SERIES["battery"]] = np.floor(100 - (days % 400) / 8)  # a CR2032 lasts about a year
            out[SENSOR_SERIES["linkquality"]] = self.rng.integers(90, 160, len(ts)).astype(np.float64)
        power = self._power(ts)
        energy = self.energy_kwh + np.cumsum(power) * (step_ms / 3_600_000) / 1000
        self.energy_kwh = float(energy[-1])
        # As the meter's float32 registers hold them: the counter's history and its live readings are one
        # non-decreasing sequence (rounding it otherwise could put a live reading below the last stored one).
        out[METER_SERIES["power_watts"]] = power.astype(np.float32).astype(np.float64)
        out[METER_SERIES["energy_kwh_total"]] = energy.astype(np.float32).astype(np.float64)
        return out


def backfill(store, house: House, span_ms: int, end_ms: int) -> int:
    """Write history up to `end_ms` straight into chunks, starting after what the store already has."""
    latest = store.latest()
    last_energy = latest.get(METER_SERIES["energy_kwh_total"])
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
