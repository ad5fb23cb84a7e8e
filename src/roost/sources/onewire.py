"""1-Wire DS18B20 thermometers through Linux sysfs (the w1-therm driver): `[[source.onewire]]`.

The kernel lists each sensor as `<root>/28-<serial>/`. Its `temperature` file (newer kernels) holds millidegrees;
the older `w1_slave` file holds two lines, the scratchpad with the driver's CRC verdict and the value::

    72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
    72 01 4b 46 7f ff 0e 10 57 t=23125

Every read starts a conversion that blocks for ~750 ms, so reads run in worker threads, all sensors at once.
Sensors are found again every `rescan` and on SIGHUP, so plugging one in needs no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from roost.durations import Duration
from roost.errors import SourceError
from roost.model import Reading, Series, now_ms
from roost.sources.base import Source, label_problems

METRIC = "temperature_celsius"
_SENSOR_ID = re.compile(r"28-[0-9a-f]{12}")
# A DS18B20 powers up with 85 °C in its scratchpad: reading that means the conversion never ran
# (a brown-out on parasite power, or a read racing the power-on), not that the room is on fire.
_POWER_ON_RESET = 85_000
_RANGE = (-55_000, 125_000)  # what a DS18B20 can measure, m°C; anything else is a corrupted read
_W1_SLAVE = re.compile(r"(?:[0-9a-f]{2} ){9}: crc=[0-9a-f]{2} (YES|NO)\n(?:[0-9a-f]{2} ){9}t=(-?\d+)\n?")


@dataclass(frozen=True, slots=True)
class OneWireSettings:
    """`[[source.onewire]]`: read every DS18B20 under `root`; `sensors` names the room of some."""

    name: str = ""
    root: Path = Path("/sys/bus/w1/devices")
    interval_ms: Duration = field(default=Duration(30_000), metadata={"min": 1000})
    rescan_ms: Duration = field(default=Duration(300_000), metadata={"min": 1000})
    sensors: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def _validate(self) -> list[str]:
        problems = []
        for sensor_id, room in self.sensors.items():
            if not _SENSOR_ID.fullmatch(sensor_id):
                problems.append(
                    f'sensors: expected DS18B20 ids like "28-000004b926f1" (ls {self.root}), got "{sensor_id}"'
                )
            elif not room:
                problems.append(f"sensors: the room of {sensor_id} is empty")
        hint = " (room comes from `sensors`)"
        return problems + label_problems(self.labels, {"sensor": hint, "room": hint})


class _Unusable(Exception):
    """A sensor's reading cannot be used; `reason` is the counted label value."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def read_millicelsius(device: Path) -> int:
    """The temperature of one sensor directory in m°C, from `temperature` if present, else `w1_slave`.

    Blocks for a conversion. Raises _Unusable (reasons `crc`, `power_on_reset`, `out_of_range`, `unreadable`, `malformed`).
    """
    try:
        try:
            text = (device / "temperature").read_text()
            plain = True
        except FileNotFoundError:
            text = (device / "w1_slave").read_text()
            plain = False
    except (OSError, UnicodeDecodeError) as err:
        raise _Unusable("unreadable", f"{device.name}: cannot read ({getattr(err, 'strerror', None) or err})") from None
    if plain:
        if not re.fullmatch(r"-?\d+\n?", text):
            raise _Unusable("malformed", f"{device.name}/temperature: expected millidegrees, got {text[:40]!r}")
        value = int(text)
    else:
        m = _W1_SLAVE.fullmatch(text)
        if not m:
            raise _Unusable("malformed", f"{device.name}/w1_slave: expected the two-line scratchpad, got {text[:100]!r}")
        if m[1] == "NO":
            raise _Unusable("crc", f"{device.name}: CRC mismatch on the bus (noise, a long cable or a weak pull-up)")
        value = int(m[2])
    if value == _POWER_ON_RESET:
        raise _Unusable("power_on_reset", f"{device.name}: 85 °C power-on value, the conversion did not run (power?)")
    if not _RANGE[0] <= value <= _RANGE[1]:
        raise _Unusable("out_of_range", f"{device.name}: {value / 1000:g} °C is outside the DS18B20's -55 to 125 °C")
    return value


class _Sighup:
    """Fan SIGHUP out to every running onewire source of a loop; the loop's handler exists while any runs."""

    _listeners: dict[asyncio.AbstractEventLoop, set[Callable[[], None]]] = {}
    _previous: dict[asyncio.AbstractEventLoop, object] = {}

    @classmethod
    @contextlib.contextmanager
    def listen(cls, callback: Callable[[], None]) -> Iterator[bool]:
        """Call `callback` on SIGHUP while inside; yields False where signals cannot be caught (not the main thread)."""
        loop = asyncio.get_running_loop()
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
            yield False
            return
        listeners = cls._listeners.setdefault(loop, set())
        if not listeners:
            cls._previous[loop] = signal.getsignal(signal.SIGHUP)
            loop.add_signal_handler(signal.SIGHUP, cls._fire, loop)
        listeners.add(callback)
        try:
            yield True
        finally:
            listeners.discard(callback)
            if not listeners:
                del cls._listeners[loop]
                previous = cls._previous.pop(loop)
                if not loop.is_closed():
                    loop.remove_signal_handler(signal.SIGHUP)
                if previous is not None:  # remove_signal_handler leaves SIG_DFL, not what was there before
                    signal.signal(signal.SIGHUP, previous)

    @classmethod
    def _fire(cls, loop: asyncio.AbstractEventLoop) -> None:
        for callback in list(cls._listeners.get(loop, ())):
            callback()


class OneWireSource(Source):
    """Reads every sensor each `interval` (on a grid of wall-clock multiples), rescans each `rescan` and on SIGHUP."""

    kind = "onewire"
    settings: OneWireSettings

    def __init__(self, settings: OneWireSettings, ctx):
        super().__init__(settings, ctx)
        self._sensors: dict[str, Series] = {}
        self._busy: set[str] = set()  # sensors whose read from an earlier round still blocks a thread
        self._rescan_now = asyncio.Event()

    async def __aenter__(self) -> OneWireSource:
        root = self.settings.root
        if not await asyncio.to_thread(root.is_dir):
            raise SourceError(
                f"source.onewire {self.ctx.name}: {root} is not a directory — is the 1-Wire bus enabled "
                "(dtoverlay=w1-gpio on a Raspberry Pi) and the w1-therm module loaded?"
            )
        return self

    async def run(self) -> None:
        with _Sighup.listen(self._rescan_now.set):
            await self._rescan()
            interval = self.settings.interval_ms
            next_rescan = time.monotonic() + self.settings.rescan_ms / 1000
            await self._read(list(self._sensors))
            while True:
                wall = now_ms()
                tick = (wall // interval + 1) * interval
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout((tick - wall) / 1000):
                        await self._rescan_now.wait()
                if self._rescan_now.is_set():  # SIGHUP: look now, read the new ones now, keep the grid
                    self._rescan_now.clear()
                    self.ctx.log.info("SIGHUP: rescanning %s", self.settings.root)
                    await self._read(await self._rescan())
                    next_rescan = time.monotonic() + self.settings.rescan_ms / 1000
                    continue
                if time.monotonic() >= next_rescan:
                    await self._rescan()
                    next_rescan = time.monotonic() + self.settings.rescan_ms / 1000
                await self._read(list(self._sensors))

    async def _rescan(self) -> list[str]:
        """Look for sensors again; returns the ids that are new."""
        root = self.settings.root
        try:
            found = await asyncio.to_thread(lambda: sorted(p.name for p in root.glob("28-*") if _SENSOR_ID.fullmatch(p.name)))
        except OSError as err:
            self.ctx.error("unreadable", f"cannot list {root} ({err.strerror or err})")
            return []
        new = [s for s in found if s not in self._sensors]
        gone = [s for s in self._sensors if s not in found]
        for sensor_id in gone:
            del self._sensors[sensor_id]
        for sensor_id in new:
            room = self.settings.sensors.get(sensor_id, "")
            self._sensors[sensor_id] = Series.of(METRIC, self.settings.labels, sensor=sensor_id, room=room)
        if new or gone:
            self.ctx.log.info(
                "%d sensor(s) under %s%s%s", len(found), root,
                f"; new: {', '.join(new)}" if new else "", f"; gone: {', '.join(gone)}" if gone else "",
            )
        for sensor_id in self.settings.sensors.keys() - set(found):
            self.ctx.error("missing", f"{sensor_id} ({self.settings.sensors[sensor_id]}) is configured but not under {root}")
        self.ctx.up(bool(found))
        return new

    async def _read(self, sensor_ids: list[str]) -> None:
        """Read sensors concurrently and emit what is usable; a read still blocking after one interval is skipped."""
        todo = [s for s in sensor_ids if s not in self._busy and s in self._sensors]
        if not todo:
            return
        ts = now_ms()
        tasks = {asyncio.ensure_future(asyncio.to_thread(read_millicelsius, self.settings.root / s)): s for s in todo}
        self._busy.update(todo)
        for task, sensor_id in tasks.items():
            task.add_done_callback(lambda t, s=sensor_id: (self._busy.discard(s), t.cancelled() or t.exception()))
        done, pending = await asyncio.wait(tasks, timeout=self.settings.interval_ms / 1000)
        readings = []
        for task in done:
            sensor_id = tasks[task]
            series = self._sensors.get(sensor_id)
            err = task.exception()
            if series is None:
                continue
            if isinstance(err, _Unusable):
                self.ctx.reject(err.reason, str(series), str(err))
            elif err is not None:
                raise err
            else:
                readings.append(Reading(series, ts, task.result() / 1000))
        for task in pending:
            self.ctx.error("timeout", f"{tasks[task]}: no answer within {self.settings.interval_ms} ms; skipped until it answers")
        self.ctx.emit(readings)
