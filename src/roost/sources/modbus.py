"""Modbus meters and gateways: `[[source.modbus]]`.

One source is one connection — a Modbus TCP meter or gateway (`tcp://host:502`) or one RS-485 bus (`/dev/ttyUSB0`,
or ser2net's `socket://host:port` / `rfc2217://host:port`) — with its devices (unit ids) listed under it. Every
device is polled on a fixed grid of its own; registers of a device that lie close together are read with one
request; requests on one connection take turns (an RS-485 bus carries one frame at a time, and a TCP gateway gets
one request at a time). Each poll stores the values plus `up` and `modbus_poll_duration_seconds` for the device,
so a dead meter shows as `up 0` rather than as silence, and never holds up devices of other sources.

pymodbus and pyserial are imported only when a source runs: this module is imported whenever a config is loaded.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import math
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from roost.durations import Duration
from roost.errors import InvalidReading, SourceError
from roost.model import METRIC_NAME, Reading, Series, now_ms
from roost.sources.base import Source, SourceContext, label_problems
from roost.sources.modbus_profiles import PROFILES

if TYPE_CHECKING:
    from pymodbus.pdu import ModbusPDU

RegisterType = Literal["holding", "input", "coil", "discrete"]
DataType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool"]
ByteOrder = Literal["ABCD", "BADC", "CDAB", "DCBA"]

# struct code and width in registers of each data type
_FORMATS: dict[str, tuple[str, int]] = {
    "int16": ("h", 1), "uint16": ("H", 1), "int32": ("i", 2), "uint32": ("I", 2), "int64": ("q", 4),
    "uint64": ("Q", 4), "float32": ("f", 2), "float64": ("d", 4), "bool": ("?", 1),
}
_BIT_TYPES = ("coil", "discrete")
_MAX_READ = {"holding": 125, "input": 125, "coil": 2000, "discrete": 2000}  # per request, by the Modbus spec
_RESERVED_LABELS = ("source", "device")
_URL_EXAMPLES = '"tcp://192.168.1.50:502", "/dev/ttyUSB0", "socket://router:4001" or "rfc2217://router:4002"'

# Exception codes that mean "nobody is answering for this unit": a meter's own failure, or a gateway that cannot
# reach it. pymodbus' server answers 4 for a unit id it does not have; a real RS-485 bus answers nothing at all.
_DOWN_CODES = {4: "device failure", 10: "gateway path unavailable", 11: "gateway target did not respond"}
_EXCEPTION_REASONS = {1: "illegal_function", 2: "illegal_address", 3: "illegal_value", 6: "device_busy"}


# ---------------------------------------------------------------- values in registers


def decode_registers(registers: Sequence[int], data_type: DataType, order: ByteOrder = "ABCD") -> float:
    """The value held by the first registers of `registers`.

    `order` names the bytes of a 32-bit value as they arrive: ABCD is big-endian (the Modbus norm), CDAB swaps the
    words, BADC swaps the bytes within each word, DCBA is little-endian. 16- and 64-bit values follow the same two
    swaps (BADC/DCBA swap bytes, CDAB/DCBA reverse the word order). `bool` is any non-zero register.
    """
    if data_type == "bool":
        return 1.0 if registers[0] else 0.0
    code, width = _FORMATS[data_type]
    words = registers[:width]
    if order in ("CDAB", "DCBA"):
        words = words[::-1]
    raw = struct.pack(f"{'<' if order in ('BADC', 'DCBA') else '>'}{width}H", *words)
    return struct.unpack(f">{code}", raw)[0]


def encode_registers(value: float, data_type: DataType, order: ByteOrder = "ABCD") -> list[int]:
    """The registers that hold `value` (the inverse of `decode_registers`); ValueError if it does not fit."""
    if data_type == "bool":
        return [1 if value else 0]
    code, width = _FORMATS[data_type]
    if code not in "fd":
        if value != int(value):
            raise ValueError(f"{data_type} holds whole numbers, got {value!r}")
        value = int(value)
    try:
        raw = struct.pack(f">{code}", value)
    except (struct.error, OverflowError):
        raise ValueError(f"{value!r} does not fit in {data_type}") from None
    words = list(struct.unpack(f"{'<' if order in ('BADC', 'DCBA') else '>'}{width}H", raw))
    if order in ("CDAB", "DCBA"):
        words.reverse()
    return words


# ---------------------------------------------------------------- settings


def _check_url(url: str) -> None:
    _endpoint(url)


def _endpoint(url: str) -> tuple[str, str, int]:
    """("tcp", host, port) or ("serial", pyserial URL or device path, 0); ValueError says what was expected."""
    wrong = ValueError(f"expected a Modbus URL like {_URL_EXAMPLES}, got {url!r}")
    if url.startswith("/") and len(url) > 1:
        return "serial", url, 0
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise wrong from None
    if parts.scheme == "tcp" and host and parts.path in ("", "/") and not parts.query:
        return "tcp", host, port or 502
    if parts.scheme in ("socket", "rfc2217") and host and port:
        return "serial", url, 0
    raise wrong


def _check_metric(metric: str) -> None:
    if not METRIC_NAME.match(metric):
        raise ValueError(f"expected a metric name like power_watts (letters, digits, '_' and ':'), got {metric!r}")


def _check_profile(name: str) -> None:
    if name not in PROFILES:
        close = difflib.get_close_matches(name.lower(), PROFILES, n=1, cutoff=0.5)
        hint = f' — did you mean "{close[0]}"?' if close else ""
        raise ValueError(f"expected one of {', '.join(map(repr, PROFILES))}, got {name!r}{hint}")


def _label_problems(labels: dict[str, str]) -> list[str]:
    return label_problems(labels, dict.fromkeys(_RESERVED_LABELS, ""), quote=repr)


@dataclass(frozen=True, slots=True)
class ModbusRegister:
    """`[[source.modbus.devices.registers]]`: one value of a device, stored as `metric`, times `scale` plus `offset`."""

    metric: str = field(metadata={"check": _check_metric})
    address: int = field(metadata={"min": 0, "max": 65535})
    type: RegisterType = "holding"
    data_type: DataType | None = None  # bool for coils and discrete inputs, else uint16
    order: ByteOrder = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    writable: bool = False  # coils and holding registers only: the device's thing may set it (docs/things.md)

    @property
    def kind(self) -> DataType:
        """The data type, its default resolved."""
        return self.data_type or ("bool" if self.type in _BIT_TYPES else "uint16")

    @property
    def width(self) -> int:
        """Registers (or bits) it occupies."""
        return _FORMATS[self.kind][1]

    def _validate(self) -> list[str]:
        problems = _label_problems(self.labels)
        if self.writable and self.type not in ("coil", "holding"):
            problems.append(f"writable: a {self.type} register is read-only on every Modbus device; only coils and holding registers can be written")
        if self.type in _BIT_TYPES and self.kind != "bool":
            problems.append(f'data_type: a {self.type} is a single bit: use "bool" (or leave data_type out), not {self.kind!r}')
        if self.address + self.width - 1 > 65535:
            problems.append(f"address: a {self.kind} at {self.address} runs past the last register (65535)")
        return problems


@dataclass(frozen=True, slots=True)
class ModbusDevice:
    """`[[source.modbus.devices]]`: one meter (unit id) on the source's connection: a profile and/or registers."""

    name: str
    unit: int = field(metadata={"min": 0, "max": 255})
    interval_ms: Duration | None = field(default=None, metadata={"min": 100})
    profile: str | None = field(default=None, metadata={"check": _check_profile})
    labels: dict[str, str] = field(default_factory=dict)
    registers: list[ModbusRegister] = field(default_factory=list)

    def _validate(self) -> list[str]:
        problems = _label_problems(self.labels)
        if not self.name.strip():
            problems.append("name: expected a device name (it becomes the `device` label)")
        if self.profile is None and not self.registers:
            problems.append(f'registers: give the device a profile ({", ".join(PROFILES)}) or [[...registers]] to read')
        seen: dict[tuple, str] = {}
        for where, metric, labels in self._series_keys():
            key = (metric, tuple(sorted({**self.labels, **labels}.items())))
            if key in seen:
                problems.append(f"registers: {where} stores {metric}{_labels_text(key[1])} like {seen[key]}: "
                                "give one of them a label to tell them apart")
            seen.setdefault(key, where)
        return problems

    def _series_keys(self):
        if self.profile in PROFILES:
            for r in PROFILES[self.profile].registers:
                yield f'profile "{self.profile}"', r.metric, dict(r.labels)
        for i, r in enumerate(self.registers):
            yield f"registers[{i}]", r.metric, r.labels


def _labels_text(labels: tuple) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else ""


@dataclass(frozen=True, slots=True)
class ModbusSettings:
    """`[[source.modbus]]`: one connection (TCP gateway or serial bus) and the devices polled through it."""

    url: str = field(metadata={"check": _check_url})
    name: str = ""
    baudrate: int = field(default=9600, metadata={"min": 50, "max": 4_000_000})
    parity: Literal["none", "even", "odd"] = "none"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_ms: Duration = field(default=Duration(1000), metadata={"min": 10, "max": 60_000})
    retries: int = field(default=2, metadata={"min": 0, "max": 10})
    interval_ms: Duration = field(default=Duration(15_000), metadata={"min": 100})
    max_gap: int = field(default=16, metadata={"min": 0, "max": 124})
    devices: list[ModbusDevice] = field(default_factory=list)

    def _validate(self) -> list[str]:
        if not self.devices:
            return ["devices: add at least one [[source.modbus.devices]] with a name and a unit"]
        names = [d.name for d in self.devices]
        return [f"devices: two devices are named {n!r}: names must be unique" for n in sorted({n for n in names if names.count(n) > 1})]


# ---------------------------------------------------------------- what to read


@dataclass(frozen=True, slots=True)
class _Field:
    """One configured value: where it sits and how it becomes a reading."""

    series: Series
    address: int
    width: int
    data_type: DataType
    order: ByteOrder
    scale: float
    offset: float

    def decode(self, raw: bytes, at: int) -> float:
        """The value at byte `at` of a read's registers (as sent: big-endian words)."""
        whole = _WHOLE.get((self.data_type, self.order))
        if whole is not None:
            return whole.unpack_from(raw, at)[0]
        return decode_registers(struct.unpack_from(f">{self.width}H", raw, at), self.data_type, self.order)


# Orders that read the bytes as sent in one go: ABCD is big-endian, DCBA little-endian (and a single register has
# no word order, so CDAB and BADC are those two again). The others shuffle words or bytes in decode_registers.
_WHOLE = {
    (data_type, order): struct.Struct(f"{endian}{code}")
    for data_type, (code, width) in _FORMATS.items() if data_type != "bool"
    for order, endian in (("ABCD", ">"), ("DCBA", "<"), ("CDAB", ">"), ("BADC", "<"))
    if width == 1 or order in ("ABCD", "DCBA")
}


@dataclass(frozen=True, slots=True)
class _Read:
    """One read request of a device: `count` registers (or bits) of one type from `address`, feeding `fields`."""

    type: RegisterType
    address: int
    count: int
    fields: tuple[_Field, ...]

    @property
    def gapped(self) -> bool:
        return len(plan_reads(self.type, self.fields, max_gap=0)) > 1

    def parts(self) -> list[_Read]:
        return plan_reads(self.type, self.fields, max_gap=0)


def plan_reads(register_type: RegisterType, fields: Sequence[_Field], max_gap: int) -> list[_Read]:
    """Coalesce fields into as few reads as the request size allows, bridging gaps of at most `max_gap` registers."""
    reads: list[_Read] = []
    start = end = 0
    group: list[_Field] = []
    for f in sorted(fields, key=lambda f: (f.address, f.width)):
        if group and f.address <= end + max_gap and max(end, f.address + f.width) - start <= _MAX_READ[register_type]:
            group.append(f)
            end = max(end, f.address + f.width)
            continue
        if group:
            reads.append(_Read(register_type, start, end - start, tuple(group)))
        group, start, end = [f], f.address, f.address + f.width
    if group:
        reads.append(_Read(register_type, start, end - start, tuple(group)))
    return reads


def tick_phase_s(source: str, device: str, interval_s: float) -> float:
    """Where in each interval a device's polls fall: stable per device, spread so meters do not all ask at once."""
    return zlib.crc32(f"{source}/{device}".encode()) / 2**32 * interval_s


@dataclass(eq=False, slots=True)
class _Device:
    settings: ModbusDevice
    unit: int
    interval_s: float
    phase_s: float
    reads: list[_Read]
    up_series: Series
    duration_series: Series
    down: bool | None = None  # None until the first poll

    @property
    def name(self) -> str:
        return self.settings.name

    @classmethod
    def build(cls, d: ModbusDevice, source: ModbusSettings, source_name: str) -> _Device:
        target = {"source": source_name, "device": d.name}
        fields: dict[str, list[_Field]] = {}
        registers = [(r.metric, r.address, r.type, r.kind, r.order, r.scale, r.offset, r.labels) for r in d.registers]
        if d.profile is not None:
            p = PROFILES[d.profile]
            registers[:0] = [(r.metric, r.address, p.type, p.data_type, p.order, 1.0, 0.0, dict(r.labels)) for r in p.registers]
        for metric, address, type_, kind, order, scale, offset, labels in registers:
            series = Series.of(metric, {**d.labels, **labels}, **target)
            fields.setdefault(type_, []).append(_Field(series, address, _FORMATS[kind][1], kind, order, scale, offset))
        interval_s = (d.interval_ms or source.interval_ms) / 1000
        return cls(
            settings=d,
            unit=d.unit,
            interval_s=interval_s,
            phase_s=tick_phase_s(source_name, d.name, interval_s),
            reads=[r for t, fs in fields.items() for r in plan_reads(t, fs, source.max_gap)],
            up_series=Series.of("up", **target),
            duration_series=Series.of("modbus_poll_duration_seconds", **target),
        )


# ---------------------------------------------------------------- connections


class LinkLost(Exception):
    """The connection itself is gone (socket closed, serial adapter unplugged): every device on it is unreachable."""


class NoResponse(Exception):
    """Nothing came back within the timeout."""


class BadFrame(Exception):
    """Something came back that is not the answer (CRC mismatch, truncated frame, another unit's answer)."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


class _TcpLink:
    """Modbus TCP through pymodbus' asyncio client, which keeps one request in flight per connection."""

    def __init__(self, host: str, port: int, settings: ModbusSettings):
        from pymodbus.client import AsyncModbusTcpClient
        from pymodbus.exceptions import ConnectionException, ModbusIOException

        self._closed, self._unanswered = ConnectionException, ModbusIOException
        self.where = f"tcp://{host}:{port}"
        self.timeout_s = settings.timeout_ms / 1000
        # Reconnecting is supervise()'s job (with back-off), retrying is ours (fewer attempts for a meter known down).
        self._client = AsyncModbusTcpClient(host, port=port, timeout=self.timeout_s, retries=0, reconnect_delay=0)
        # pymodbus drops the connection after this many unanswered requests in a row (any answer resets the count):
        # a gateway that has gone silent for every unit gets a fresh connection.
        self._client.set_max_no_responses(3 * (settings.retries + 1))

    async def connect(self) -> None:
        if not await self._client.connect():
            raise SourceError(
                f"{self.where}: cannot connect within {self.timeout_s:g} s — is the meter or gateway on, and is the port right?"
            )

    async def execute(self, request: ModbusPDU) -> ModbusPDU:
        if not self._client.connected:
            raise LinkLost("the connection was closed")
        try:
            return await self._client.execute(False, request)
        except self._closed:
            raise LinkLost("the connection was closed") from None
        except self._unanswered:
            if not self._client.connected:
                raise LinkLost("the connection was closed or stopped answering") from None
            raise NoResponse() from None

    async def close(self) -> None:
        self._client.close()


def _open_link(settings: ModbusSettings):
    kind, where, port = _endpoint(settings.url)
    if kind == "tcp":
        return _TcpLink(where, port, settings)
    from roost.sources.serial_link import SerialRtuLink

    return SerialRtuLink(
        where,
        baudrate=settings.baudrate,
        bytesize=settings.bytesize,
        parity=settings.parity,
        stopbits=settings.stopbits,
        timeout_s=settings.timeout_ms / 1000,
    )


def _quiet_pymodbus() -> None:
    # pymodbus logs every unanswered request at ERROR (and its server a traceback for an unknown unit id); roost counts
    # those by reason and logs them at most once a minute, so pymodbus speaks only when roost runs with debug logging.
    if logging.getLogger("roost").getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


# ---------------------------------------------------------------- the source


class _DeviceDown(Exception):
    pass


class ModbusSource(Source):
    kind = "modbus"
    settings: ModbusSettings

    def __init__(self, settings: ModbusSettings, ctx: SourceContext):
        super().__init__(settings, ctx)
        self._devices = {d.name: _Device.build(d, settings, ctx.name) for d in settings.devices}
        self._attempts = settings.retries + 1
        self._link = None

    async def __aenter__(self) -> ModbusSource:
        _quiet_pymodbus()
        link = _open_link(self.settings)
        try:
            await link.connect()
        except SourceError:
            self._all_down()  # so that a gateway dead since start-up shows as `up 0`, not as silence
            raise
        self._link = link
        self.ctx.up(True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                for device in self._devices.values():
                    tasks.create_task(self._poll_forever(device), name=f"modbus-{self.ctx.name}-{device.name}")
                if not self._devices:
                    await asyncio.Event().wait()
        except* LinkLost as lost:
            self._all_down()
            raise SourceError(f"{self.settings.url}: {lost.exceptions[0]}") from None

    def _all_down(self) -> None:
        ts = now_ms()
        self.ctx.emit(Reading(d.up_series, ts, 0.0) for d in self._devices.values())
        for device in self._devices.values():
            device.down = True

    # ------------------------------------------------------------ polling

    async def _poll_forever(self, device: _Device) -> None:
        interval = device.interval_s
        # A fixed grid (next = previous + interval), not sleep(interval) after each poll, which drifts by the poll time.
        tick = math.ceil((time.time() - device.phase_s) / interval) * interval + device.phase_s
        while True:
            _raise_if_cancelled()
            await asyncio.sleep(max(0.0, tick - time.time()))
            await self.poll(device.name)
            tick += interval
            behind = time.time() - tick
            if behind >= 0:
                skipped = int(behind // interval) + 1
                tick += skipped * interval
                self.ctx.error(
                    "overrun",
                    f"{device.name}: a poll took longer than its interval ({interval:g} s); skipped {skipped} tick(s) "
                    "— raise the interval, or lower timeout/retries if a meter is down",
                )

    async def poll(self, device_name: str) -> bool:
        """Read a device once and store its values, `up` and the poll's duration; True if the device answered."""
        device = self._devices[device_name]
        started = time.monotonic()
        readings: list[Reading] = []
        answered = True
        try:
            await self._read_device(device, readings)
        except _DeviceDown as down:
            answered = False
            self.ctx.error("device_down", f"{device.name} (unit {device.unit}): {down}")
            if not device.down:
                self.ctx.log.warning("%s (unit %d) is down: %s", device.name, device.unit, down)
        else:
            if device.down:
                self.ctx.log.info("%s (unit %d) answers again", device.name, device.unit)
        device.down = not answered
        ts = now_ms()
        readings.append(Reading(device.up_series, ts, 1.0 if answered else 0.0))
        readings.append(Reading(device.duration_series, ts, time.monotonic() - started))
        self.ctx.emit(readings)
        return answered

    async def _read_device(self, device: _Device, readings: list[Reading]) -> None:
        pending = list(device.reads)
        while pending:
            read = pending.pop(0)
            response = await self._execute(device, lambda: _read_request(read, device.unit))
            ts = now_ms()
            if response.isError():
                code = response.exception_code
                if code == 2 and read.gapped:
                    # Some meters refuse a read that spans registers they do not have: read the parts from now on.
                    parts = read.parts()
                    device.reads[device.reads.index(read):device.reads.index(read) + 1] = parts
                    pending[:0] = parts
                    self.ctx.error(
                        "illegal_address",
                        f"{device.name} (unit {device.unit}) refused reading {read.count} {read.type} registers from "
                        f"{read.address} across unmapped ones; reading the {len(parts)} parts separately from now on",
                    )
                    continue
                reason = _EXCEPTION_REASONS.get(code, f"exception_{code}")
                self.ctx.error(reason, f"{device.name} (unit {device.unit}): {_describe(read)} answered exception {code}")
                continue
            values = response.bits if read.type in _BIT_TYPES else response.registers
            if response.function_code != _READ_CODES[read.type] or len(values) < read.count or (
                read.type not in _BIT_TYPES and len(values) != read.count
            ):
                self.ctx.error(
                    "wrong_length",
                    f"{device.name} (unit {device.unit}): {_describe(read)} got {len(values)} values "
                    f"(function {response.function_code})",
                )
                continue
            raw = struct.pack(f">{len(values)}H", *values) if read.type not in _BIT_TYPES else b""
            for f in read.fields:
                at = f.address - read.address
                value = (float(values[at]) if raw == b"" else f.decode(raw, 2 * at)) * f.scale + f.offset
                if math.isfinite(value):
                    readings.append(Reading(f.series, ts, value))
                else:
                    try:
                        Reading.checked(f.series, ts, value)
                    except InvalidReading as err:
                        self.ctx.reject(err.reason, str(f.series), str(err))

    async def _execute(self, device: _Device, make_request: Callable[[], ModbusPDU]) -> ModbusPDU:
        """Send a request, retrying unanswered ones; raise _DeviceDown when the unit does not answer for itself.

        A device already known to be down gets one attempt per poll, so it costs the bus one timeout, not several.
        """
        if self._link is None:
            raise LinkLost("the source is not connected")
        attempts = 1 if device.down else self._attempts
        failures = []
        for _ in range(attempts):
            try:
                response = await self._link.execute(make_request())
                _raise_if_cancelled()
            except NoResponse:
                failures.append(f"no answer within {self.settings.timeout_ms / 1000:g} s")
                continue
            except BadFrame as bad:
                self.ctx.error(bad.reason, f"{device.name} (unit {device.unit}): {bad}")
                failures.append(str(bad))
                continue
            if response.isError() and response.exception_code in _DOWN_CODES:
                code = response.exception_code
                raise _DeviceDown(f"answered exception {code} ({_DOWN_CODES[code]})")
            return response
        raise _DeviceDown(f"{failures[-1]} ({attempts} attempt{'s' if attempts > 1 else ''})")

    # ------------------------------------------------------------ writes (for actuators)

    async def write_coil(self, device: str, address: int, value: bool) -> None:
        """Switch a coil of a device; raises SourceError if the device refuses or does not answer."""
        from pymodbus.pdu.bit_message import WriteSingleCoilRequest

        unit = self._device(device).unit
        await self._write(device, address, lambda: WriteSingleCoilRequest(address=address, bits=[bool(value)], dev_id=unit))

    async def write_register(
        self, device: str, address: int, value: float, data_type: DataType = "uint16", order: ByteOrder = "ABCD"
    ) -> None:
        """Write a value to holding registers (one or several, by data type); raises SourceError on failure."""
        from pymodbus.pdu.register_message import WriteMultipleRegistersRequest, WriteSingleRegisterRequest

        unit = self._device(device).unit
        try:
            words = encode_registers(value, data_type, order)
        except ValueError as err:
            raise SourceError(f"{self.ctx.name}: {device}: cannot write register {address}: {err}") from None
        request = WriteSingleRegisterRequest if len(words) == 1 else WriteMultipleRegistersRequest
        await self._write(device, address, lambda: request(address=address, registers=words, dev_id=unit))

    async def _write(self, name: str, address: int, make_request: Callable[[], ModbusPDU]) -> None:
        device = self._device(name)
        where = f"{self.ctx.name}: {name} (unit {device.unit}): writing {address}"
        try:
            response = await self._execute(device, make_request)
        except _DeviceDown as down:
            raise SourceError(f"{where}: {down}") from None
        except LinkLost as lost:
            raise SourceError(f"{where}: {lost}") from None
        if response.isError():
            code = response.exception_code
            reason = _EXCEPTION_REASONS.get(code, "exception").replace("_", " ")
            raise SourceError(f"{where}: refused with exception {code} ({reason})")

    def _device(self, name: str) -> _Device:
        try:
            return self._devices[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._devices, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise SourceError(f"{self.ctx.name}: no device named {name!r}{hint}") from None


_READ_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}


def _raise_if_cancelled() -> None:
    # Python 3.11's asyncio.wait_for (inside pymodbus' execute) returns the answer instead of raising when the
    # cancellation lands just as the answer arrives; the request to cancel is still on record, so honour it here,
    # or a poller would outlive the TaskGroup that is waiting for it to stop (the hub would hang on shutdown).
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


_REQUESTS: dict[str, type] = {}


def _read_request(read: _Read, unit: int) -> ModbusPDU:
    if not _REQUESTS:
        from pymodbus.pdu import bit_message, register_message

        _REQUESTS.update(
            coil=bit_message.ReadCoilsRequest,
            discrete=bit_message.ReadDiscreteInputsRequest,
            holding=register_message.ReadHoldingRegistersRequest,
            input=register_message.ReadInputRegistersRequest,
        )
    return _REQUESTS[read.type](address=read.address, count=read.count, dev_id=unit)


def _describe(read: _Read) -> str:
    return f"reading {read.count} {read.type} {'bits' if read.type in _BIT_TYPES else 'registers'} from {read.address}"


__all__ = [
    "ModbusDevice", "ModbusRegister", "ModbusSettings", "ModbusSource", "decode_registers", "encode_registers",
    "plan_reads", "tick_phase_s",
]
