"""The reference workload of roost's benchmarks: a deterministic house of sensors.

Rooms report temperature (0.01 °C), humidity (0.1 %) and pressure (0.01 hPa);
every tenth room adds an electricity meter with power (0.1 W) and an energy
counter (0.001 kWh). Samples arrive every `interval` seconds from T0 on, and
values are rounded to the resolution the real devices report, which is what
makes decimal scaling in the chunk codec pay off.

The distributions, the order of random draws and the seed semantics match the
shared reference generator, so figures from both are comparable sample for
sample: one `numpy.random.default_rng(seed)` feeds all series in spec order.
"""
from collections.abc import Iterator

import numpy as np

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z, seconds
_DAY = 86_400
_ROOM_METRICS = ("temperature_celsius", "humidity_percent", "pressure_hpa")
_METER_METRICS = ("power_watts", "energy_kwh_total")


def series_specs(n_series: int = 100) -> list[tuple[str, dict[str, str]]]:
    """The first `n_series` series as (metric, labels): rooms, a meter after every tenth room."""
    specs: list[tuple[str, dict[str, str]]] = []
    room = 0
    while len(specs) < n_series:
        specs.extend((metric, {"room": f"room_{room:02d}"}) for metric in _ROOM_METRICS)
        room += 1
        # A meter needs both of its series to fit, otherwise it is left out.
        if room % 10 == 0 and len(specs) + 2 <= n_series:
            specs.extend((metric, {"meter": f"meter_{room:02d}"}) for metric in _METER_METRICS)
    return specs[:n_series]


def _daily_phase(ts: np.ndarray, period: float = _DAY) -> np.ndarray:
    return 2 * np.pi * (ts - T0).astype(np.float64) / period


def _household_load(ts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Watts: 300 W at night, 500 W for the busy part of the day, 5 W of noise."""
    return 300 + 200 * (np.sin(_daily_phase(ts)) > 0.3) + rng.normal(0, 5, len(ts))


def _temperature(index: int, ts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(ts)
    daily = 1.5 * np.sin(_daily_phase(ts) + index)
    drift = 0.3 * np.cumsum(rng.normal(0, 0.01, n))
    noise = rng.normal(0, 0.03, n)
    return np.round(21 + (index % 7) * 0.4 + daily + drift + noise, 2)


def _humidity(index: int, ts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    walk = 0.5 * np.cumsum(rng.normal(0, 0.05, len(ts)))
    return np.round(np.clip(50 + walk, 5, 95), 1)


def _pressure(index: int, ts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    weather = 4 * np.sin(_daily_phase(ts, period=5 * _DAY))
    return np.round(1013 + weather + rng.normal(0, 0.02, len(ts)), 2)


def _power(index: int, ts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(ts)
    base = 300 + 200 * (np.sin(_daily_phase(ts)) > 0.3)
    kettle = (rng.random(n) < 0.02) * rng.uniform(500, 2500, n)
    return np.round(base + kettle + rng.normal(0, 5, n), 1)


def _energy(index: int, ts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """kWh: the meter integrates its own noisy load, sample by sample."""
    interval = float(ts[1] - ts[0]) if len(ts) > 1 else 15.0
    watt_samples = np.cumsum(np.clip(_household_load(ts, rng), 0, None))
    return np.round(1000 + watt_samples * interval / 3.6e6, 3)


_VALUES = {
    "temperature_celsius": _temperature,
    "humidity_percent": _humidity,
    "pressure_hpa": _pressure,
    "power_watts": _power,
    "energy_kwh_total": _energy,
}


def generate(
    n_series: int = 100, days: float = 30, interval: int = 15, seed: int = 1
) -> Iterator[tuple[str, dict[str, str], np.ndarray, np.ndarray]]:
    """Yield (metric, labels, ts_seconds int64, values float64) for each series in spec order."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.arange(int(days * _DAY / interval), dtype=np.int64) * interval
    for index, (metric, labels) in enumerate(series_specs(n_series)):
        yield metric, labels, ts, _VALUES[metric](index, ts, rng)
