"""The modbus source, against real pymodbus servers: TCP, RTU on a socat pty pair, and ser2net in front of it."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import struct
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from textwrap import dedent

import pytest
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from roost.config import load_config
from roost.errors import ConfigError, SourceError
from roost.hub import Hub
from roost.model import Series
from roost.sources import SourceContext
from roost.sources.modbus import (
    LinkLost,
    ModbusSettings,
    ModbusSource,
    _Field,
    decode_registers,
    encode_registers,
    plan_reads,
    tick_phase_s,
)
from roost.sources.serial_link import serial_url
from roost.telemetry import SelfMetrics

from conftest import ROOT, free_port

# pyserial 3.5's RFC 2217 client uses threading APIs that Python 3.11 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:set(Daemon|Name)\\(\\) is deprecated:DeprecationWarning")

# ---------------------------------------------------------------- simulated meters

_FC_FOR_SET = {"holding": 16, "input": 4, "coil": 15, "discrete": 2}


def f32(value: float) -> list[int]:
    """A float32 as two registers, high word first (how the Eastron meters send it)."""
    return list(struct.unpack(">HH", struct.pack(">f", value)))


class Meters:
    """A pymodbus server with a SimDevice per unit id; it counts requests and can fall silent for chosen units.

    `holding`/`input` are the valid register ranges of every unit (reads touching others get exception 2).
    """

    def __init__(self, units, *, holding=((0, 300),), input=((0, 400),), framer=FramerType.SOCKET):
        self.units = list(units)
        self.ranges = {"holding": holding, "input": input}
        self.framer = framer
        self.requests: list[tuple[int, int, int, int]] = []  # unit, function code, address, count
        self.arrivals: list[float] = []  # time.time() of each request
        self.silent: set[int] = set()
        self.values: list[tuple[int, str, int, list]] = []
        self.mangle = None  # called with each response PDU before it is sent
        self.server = None

    def _devices(self) -> list[SimDevice]:
        def regs(ranges):
            return [SimData(a, count=n, values=0, datatype=SimType.REGISTERS) for a, n in ranges]

        bits = [SimData(0, count=64, values=False, datatype=SimType.BITS)]
        return [
            SimDevice(u, simdata=(list(bits), list(bits), regs(self.ranges["holding"]), regs(self.ranges["input"])))
            for u in self.units
        ]

    def _trace_pdu(self, sending: bool, pdu):
        if not sending:
            self.requests.append((pdu.dev_id, pdu.function_code, pdu.address, pdu.count))
            self.arrivals.append(time.time())
        elif self.mangle is not None:
            self.mangle(pdu)
        return pdu

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending:  # a silent unit's answer never leaves: the client times out, as on a real bus
            unit = data[6] if self.framer == FramerType.SOCKET else data[0]
            if unit in self.silent:
                return b""
        return data

    async def start(self, **where) -> None:
        self.where = where or self.where
        cls = ModbusTcpServer if "address" in self.where else ModbusSerialServer
        self.server = cls(
            self._devices(), framer=self.framer, trace_pdu=self._trace_pdu, trace_packet=self._trace_packet, **self.where
        )
        await self.server.serve_forever(background=True)
        for unit, kind, address, values in self.values:
            await self._apply(unit, kind, address, values)

    async def stop(self) -> None:
        await self.server.shutdown()

    async def set(self, unit: int, kind: str, address: int, values: list) -> None:
        self.values.append((unit, kind, address, list(values)))
        await self._apply(unit, kind, address, values)

    async def _apply(self, unit, kind, address, values):
        assert await self.server.context.async_setValues(unit, _FC_FOR_SET[kind], address, list(values)) is None

    def reads_of(self, unit: int) -> list[tuple[int, int, int]]:
        return [(fc, a, n) for u, fc, a, n in self.requests if u == unit and fc in (1, 2, 3, 4)]


@pytest.fixture
async def tcp_meters():
    """Units 1–3 behind one Modbus TCP server on a free port."""
    meters = Meters([1, 2, 3])
    await meters.start(address=("127.0.0.1", free_port()))
    meters.url = f"tcp://127.0.0.1:{meters.where['address'][1]}"
    yield meters
    await meters.stop()


def _wait_for_path(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{proc.args[0]} did not create {path}")
        time.sleep(0.02)


@pytest.fixture
async def rtu_bus(tmp_path):
    """A socat pty pair: a pymodbus RTU server (units 1 and 2) on ttyA, the client's end is ttyB."""
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    socat = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"], stderr=subprocess.DEVNULL
    )
    _wait_for_path(a, socat)
    _wait_for_path(b, socat)
    meters = Meters([1, 2], framer=FramerType.RTU)
    await meters.start(port=str(a), baudrate=9600)
    meters.client_end = b
    yield meters
    await meters.stop()
    socat.terminate()
    socat.wait(timeout=10)


def _listening(port: int) -> bool:
    """Whether something listens on the port; asked without connecting (a connection would open the serial port)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.fixture
def ser2net(rtu_bus, tmp_path):
    """ser2net 4 in front of the bus's client end: raw TCP (`socket://`) and RFC 2217 (`rfc2217://`) on 127.0.0.1."""
    raw, rfc = free_port(), free_port()
    config = tmp_path / "ser2net.yaml"
    config.write_text(dedent(f"""\
        connection: &raw
          accepter: tcp,127.0.0.1,{raw}
          connector: serialdev,{rtu_bus.client_end},9600n81,local
          options: {{kickolduser: true, mdns: false}}
        connection: &rfc
          accepter: telnet(rfc2217),tcp,127.0.0.1,{rfc}
          connector: serialdev,{rtu_bus.client_end},9600n81,local
          options: {{kickolduser: true, mdns: false}}
        """))
    proc = subprocess.Popen(
        ["/usr/sbin/ser2net", "-n", "-c", str(config), "-P", str(tmp_path / "ser2net.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not all(_listening(port) for port in (raw, rfc)):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError("ser2net did not start listening")
        time.sleep(0.05)
    yield {"socket": f"socket://127.0.0.1:{raw}", "rfc2217": f"rfc2217://127.0.0.1:{rfc}", "process": proc}
    proc.terminate()
    proc.wait(timeout=10)


# ---------------------------------------------------------------- helpers


def modbus_config(tmp_path: Path, text: str):
    path = tmp_path / "roost.toml"
    path.write_text(dedent(text))
    settings = load_config(path, data_dir=str(tmp_path / "data"))
    return replace(settings, hub=replace(settings.hub, listen="127.0.0.1:0"))


class Direct:
    """A source run by hand, as the hub runs it, with what it emitted and counted."""

    def __init__(self, settings: ModbusSettings, name: str = "meters"):
        self.metrics = SelfMetrics()
        self.readings = []
        self.ctx = SourceContext(name, self.metrics, self.readings.extend)
        self.source = ModbusSource(settings, self.ctx)

    def latest(self, metric: str, **labels) -> float | None:
        for r in reversed(self.readings):
            if r.series.metric == metric and labels.items() <= r.series.label_dict.items():
                return r.value
        return None

    def errors(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "roost_source_errors_total", {"source": self.ctx.name, "reason": reason}
        )
        return value or 0.0


def direct(tmp_path: Path, text: str) -> Direct:
    return Direct(modbus_config(tmp_path, text).source.modbus[0])


def latest(hub: Hub, metric: str, **labels) -> float | None:
    for series, (_ts, value) in hub.store.latest().items():
        if series.metric == metric and labels.items() <= series.label_dict.items():
            return value
    return None


async def eventually(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check.__doc__ or check}")
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- values in registers


@pytest.mark.parametrize(
    "registers, data_type, order, expected",
    [
        ([0x4366, 0x8000], "float32", "ABCD", 230.5),
        ([0x8000, 0x4366], "float32", "CDAB", 230.5),
        ([0x6643, 0x0080], "float32", "BADC", 230.5),
        ([0x0080, 0x6643], "float32", "DCBA", 230.5),
        ([0xFFFE], "int16", "ABCD", -2),
        ([0xFEFF], "int16", "BADC", -2),
        ([0xFFFE], "uint16", "ABCD", 65534),
        ([0xFFFE, 0x1DC0], "int32", "ABCD", -123456),
        ([0x1DC0, 0xFFFE], "int32", "CDAB", -123456),
        ([0x0001, 0x0000], "uint32", "ABCD", 65536),
        ([0x0000, 0x0001], "uint32", "CDAB", 65536),
        ([0x0000, 0x0000, 0x0001, 0x0000], "uint64", "ABCD", 65536),
        ([0x0000, 0x0001, 0x0000, 0x0000], "uint64", "CDAB", 65536),
        ([0x0000, 0x0100, 0x0000, 0x0000], "uint64", "DCBA", 65536),
        ([0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], "int64", "ABCD", -1),
        ([0x4009, 0x21FB, 0x5444, 0x2D18], "float64", "ABCD", 3.141592653589793),
        ([0x2D18, 0x5444, 0x21FB, 0x4009], "float64", "CDAB", 3.141592653589793),
        ([0x0000], "bool", "ABCD", 0.0),
        ([0x0100], "bool", "ABCD", 1.0),
    ],
)
def test_registers_decode_to_the_documented_values(registers, data_type, order, expected):
    assert decode_registers(registers, data_type, order) == expected
    if data_type != "bool":
        assert encode_registers(expected, data_type, order) == registers


def test_a_value_that_does_not_fit_its_type_is_refused():
    with pytest.raises(ValueError, match="does not fit in int16"):
        encode_registers(40000, "int16")
    with pytest.raises(ValueError, match="whole numbers"):
        encode_registers(1.5, "uint16")


def _fields(*spans):
    return [_Field(Series.of("m", i=str(i)), a, w, "uint16", "ABCD", 1.0, 0.0) for i, (a, w) in enumerate(spans)]


def test_adjacent_and_nearby_registers_are_planned_as_one_read():
    reads = plan_reads("input", _fields((0, 2), (2, 2), (6, 2), (30, 2)), max_gap=4)
    assert [(r.address, r.count, len(r.fields)) for r in reads] == [(0, 8, 3), (30, 2, 1)]
    assert reads[0].gapped and [(p.address, p.count) for p in reads[0].parts()] == [(0, 4), (6, 2)]
    assert [(r.address, r.count) for r in plan_reads("input", _fields((0, 2), (6, 2)), max_gap=0)] == [(0, 2), (6, 2)]


def test_a_read_never_exceeds_125_registers():
    reads = plan_reads("holding", _fields(*[(a, 2) for a in range(0, 300, 2)]), max_gap=16)
    assert [(r.address, r.count) for r in reads] == [(0, 124), (124, 124), (248, 52)]


# ---------------------------------------------------------------- configuration

GOOD = """\
[[source.modbus]]
name = "cellar"
url = "/dev/ttyUSB0"
baudrate = 19200
parity = "even"
timeout = "300ms"
interval = "5s"

[[source.modbus.devices]]
name = "heat pump"
unit = 3
profile = "sdm630"
labels = { circuit = "heat" }

[[source.modbus.devices]]
name = "boiler"
unit = 4
interval = "1m"

[[source.modbus.devices.registers]]
metric = "temperature_celsius"
type = "input"
address = 10
data_type = "int16"
scale = 0.1
labels = { sensor = "flow" }
"""


def test_a_modbus_table_becomes_typed_settings(tmp_path):
    (bus,) = modbus_config(tmp_path, GOOD).source.modbus
    assert (bus.name, bus.url, bus.baudrate, bus.parity, bus.timeout_ms, bus.retries, bus.interval_ms) == (
        "cellar", "/dev/ttyUSB0", 19200, "even", 300, 2, 5000
    )
    pump, boiler = bus.devices
    assert (pump.unit, pump.profile, pump.labels, pump.interval_ms) == (3, "sdm630", {"circuit": "heat"}, None)
    (temp,) = boiler.registers
    assert (temp.type, temp.kind, temp.order, temp.scale, temp.offset, boiler.interval_ms) == (
        "input", "int16", "ABCD", 0.1, 0.0, 60_000
    )


def config_problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        modbus_config(tmp_path, text)
    return [p.split(": ", 1)[1] for p in caught.value.problems]


def test_config_mistakes_are_named_with_a_fix(tmp_path):
    assert config_problems(tmp_path, """\
        [[source.modbus]]
        url = "modbus://meter"

        [[source.modbus.devices]]
        name = "a"
        unit = 1
        profile = "sdm12"

        [[source.modbus.devices]]
        name = "b"
        unit = 300
        labels = { device = "x" }

        [[source.modbus.devices.registers]]
        metric = "relay"
        type = "coil"
        address = 1
        data_type = "float32"

        [[source.modbus.devices.registers]]
        metric = "energy_total"
        address = 65534
        data_type = "float64"

        [[source.modbus.devices.registers]]
        metric = "x"
        address = 1
        data_type = "float"
        """) == [
        'source.modbus[0].url: expected a Modbus URL like "tcp://192.168.1.50:502", "/dev/ttyUSB0", '
        '"socket://router:4001" or "rfc2217://router:4002", got \'modbus://meter\'',
        "source.modbus[0].devices[0].profile: expected one of 'sdm120', 'sdm630', got 'sdm12' — did you mean \"sdm120\"?",
        "source.modbus[0].devices[1].unit: expected at most 255, got 300",
        'source.modbus[0].devices[1].registers[0].data_type: a coil is a single bit: use "bool" (or leave data_type '
        "out), not 'float32'",
        "source.modbus[0].devices[1].registers[1].address: a float64 at 65534 runs past the last register (65535)",
        'source.modbus[0].devices[1].registers[2].data_type: expected one of "int16", "uint16", "int32", "uint32", '
        '"int64", "uint64", "float32", "float64", "bool", got "float"',
    ]


def test_devices_need_something_to_read_and_distinct_series(tmp_path):
    assert config_problems(tmp_path, """\
        [[source.modbus]]
        url = "tcp://127.0.0.1"

        [[source.modbus.devices]]
        name = "a"
        unit = 1
        labels = { source = "x" }

        [[source.modbus.devices]]
        name = "b"
        unit = 2
        profile = "sdm120"

        [[source.modbus.devices.registers]]
        metric = "power_watts"
        type = "input"
        address = 12
        data_type = "float32"
        """) == [
        "source.modbus[0].devices[0].registers: give the device a profile (sdm120, sdm630) or [[...registers]] to read",
        "source.modbus[0].devices[0].labels: 'source' is set by the source itself",
        'source.modbus[0].devices[1].registers: registers[0] stores power_watts like profile "sdm120": '
        "give one of them a label to tell them apart",
    ]


def test_rfc2217_urls_get_ign_set_control_added():
    assert serial_url("rfc2217://router:4002") == "rfc2217://router:4002?ign_set_control"
    assert serial_url("rfc2217://router:4002?logging=debug") == "rfc2217://router:4002?logging=debug&ign_set_control"
    assert serial_url("rfc2217://router:4002?ign_set_control") == "rfc2217://router:4002?ign_set_control"
    assert serial_url("socket://router:4001") == "socket://router:4001"


def test_loading_a_config_does_not_import_pymodbus_or_pyserial():
    code = "import sys, roost.config, roost.sources.modbus; print(sorted(m for m in ('pymodbus', 'serial') if m in sys.modules))"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- polling a TCP server

SDM_VALUES = {0x0000: 230.5, 0x0006: 4.25, 0x000C: 975.0, 0x0012: 980.0, 0x0018: -12.5, 0x001E: 0.99,
              0x0046: 50.0, 0x0048: 1234.5, 0x004A: 2.5, 0x0156: 1237.0}


async def set_sdm(meters: Meters, unit: int, values: dict[int, float]) -> None:
    for address, value in values.items():
        await meters.set(unit, "input", address, f32(value))


async def test_profile_readings_reach_the_store_through_the_hub(tmp_path, tcp_meters):
    await set_sdm(tcp_meters, 1, SDM_VALUES)
    await set_sdm(tcp_meters, 2, {0x0000: 231.0, 0x0002: 232.0, 0x0004: 233.0, 0x000E: 400.0, 0x0034: 1200.0})
    settings = modbus_config(tmp_path, f"""\
        [[source.modbus]]
        name = "house"
        url = "{tcp_meters.url}"
        interval = "200ms"

        [[source.modbus.devices]]
        name = "kitchen"
        unit = 1
        profile = "sdm120"

        [[source.modbus.devices]]
        name = "mains"
        unit = 2
        profile = "sdm630"
        labels = {{ site = "cabin" }}
        """)
    async with Hub(settings, serve_http=False) as hub:
        await eventually(lambda: latest(hub, "energy_kwh_total", device="kitchen") and latest(hub, "power_watts", device="mains", phase="L2"))
        expected = {
            "voltage_volts": 230.5, "current_amperes": 4.25, "power_watts": 975.0, "apparent_power_va": 980.0,
            "reactive_power_var": -12.5, "power_factor": pytest.approx(0.99), "frequency_hertz": 50.0,
            "energy_import_kwh_total": 1234.5, "energy_export_kwh_total": 2.5, "energy_kwh_total": 1237.0,
        }
        assert {m: latest(hub, m, device="kitchen", source="house") for m in expected} == expected
        assert [latest(hub, "voltage_volts", device="mains", phase=p) for p in ("L1", "L2", "L3")] == [231.0, 232.0, 233.0]
        mains = {str(s) for s in hub.store.latest() if s.label_dict.get("device") == "mains" and s.metric == "power_watts"}
        assert mains == {
            f'power_watts{{device="mains",{phase}site="cabin",source="house"}}'
            for phase in ("", 'phase="L1",', 'phase="L2",', 'phase="L3",')
        }
        assert latest(hub, "power_watts", device="mains", site="cabin") is not None
        assert latest(hub, "up", source="house", device="kitchen") == 1.0
        assert 0 < latest(hub, "modbus_poll_duration_seconds", device="kitchen") < 1


async def test_sdm_profiles_read_with_few_requests(tmp_path, tcp_meters):
    run = direct(tmp_path, f"""\
        [[source.modbus]]
        url = "{tcp_meters.url}"
        [[source.modbus.devices]]
        name = "one"
        unit = 1
        profile = "sdm120"
        [[source.modbus.devices]]
        name = "three"
        unit = 2
        profile = "sdm630"
        """)
    async with run.source as source:
        await source.poll("one")
        await source.poll("three")
    # 0x0000–0x001F in one read, 0x0046–0x004B in another (the gap between is 38 registers), 0x0156 alone
    assert tcp_meters.reads_of(1) == [(4, 0x0000, 32), (4, 0x0046, 6), (4, 0x0156, 2)]
    assert tcp_meters.reads_of(2) == [(4, 0x0000, 18), (4, 0x0034, 24), (4, 0x0156, 2)]


async def test_custom_registers_decode_every_type_and_order_with_scale_and_offset(tmp_path, tcp_meters):
    await tcp_meters.set(1, "holding", 0, [0xFFFE, 0x8000, 0x4366, 0x1DC0, 0xFFFE, 0x4009, 0x21FB, 0x5444, 0x2D18])
    await tcp_meters.set(1, "holding", 20, [0x0000, 0x0000, 0x0001, 0x0000, 0x0000, 0x0000, 0x0000, 0x0001, 7])
    await tcp_meters.set(1, "coil", 3, [True])
    await tcp_meters.set(1, "discrete", 5, [True])
    registers = [
        ("a_int16", 0, "int16", "ABCD", 1, 0),
        ("a_float32_cdab", 1, "float32", "CDAB", 1, 0),
        ("a_int32_cdab", 3, "int32", "CDAB", 1, 0),
        ("a_float64", 5, "float64", "ABCD", 1, 0),
        ("a_uint64", 20, "uint64", "ABCD", 1, 0),
        ("a_int64_dcba", 24, "int64", "DCBA", 1, 0),
        ("a_scaled", 28, "uint16", "ABCD", 0.5, -1),
        ("a_bool", 28, "bool", "ABCD", 1, 0),
    ]
    text = f'[[source.modbus]]\nurl = "{tcp_meters.url}"\n[[source.modbus.devices]]\nname = "d"\nunit = 1\n'
    for metric, address, data_type, order, scale, offset in registers:
        text += (f'[[source.modbus.devices.registers]]\nmetric = "{metric}"\naddress = {address}\n'
                 f'data_type = "{data_type}"\norder = "{order}"\nscale = {scale}\noffset = {offset}\n')
    text += '[[source.modbus.devices.registers]]\nmetric = "relay"\ntype = "coil"\naddress = 3\n'
    text += '[[source.modbus.devices.registers]]\nmetric = "door"\ntype = "discrete"\naddress = 4\n'
    run = direct(tmp_path, text)
    async with run.source as source:
        assert await source.poll("d")
    assert {m: run.latest(m) for m, *_ in registers} == {
        "a_int16": -2, "a_float32_cdab": 230.5, "a_int32_cdab": -123456, "a_float64": 3.141592653589793,
        "a_uint64": 65536, "a_int64_dcba": 2**56, "a_scaled": 2.5, "a_bool": 1.0,
    }
    assert (run.latest("relay"), run.latest("door")) == (1.0, 0.0)
    assert sorted(tcp_meters.reads_of(1)) == [(1, 3, 1), (2, 4, 1), (3, 0, 29)]


async def test_a_read_across_registers_the_meter_lacks_is_split_once(tmp_path):
    meters = Meters([1], holding=((0, 4), (8, 4)))
    await meters.start(address=("127.0.0.1", free_port()))
    try:
        await meters.set(1, "holding", 0, [11, 0, 0, 0])
        await meters.set(1, "holding", 8, [0, 0, 0, 22])
        run = direct(tmp_path, f"""\
            [[source.modbus]]
            url = "tcp://127.0.0.1:{meters.where['address'][1]}"
            [[source.modbus.devices]]
            name = "d"
            unit = 1
            [[source.modbus.devices.registers]]
            metric = "first"
            address = 0
            [[source.modbus.devices.registers]]
            metric = "last"
            address = 11
            """)
        async with run.source as source:
            assert await source.poll("d")
            assert await source.poll("d")
    finally:
        await meters.stop()
    assert (run.latest("first"), run.latest("last")) == (11, 22)
    assert meters.reads_of(1) == [(3, 0, 12), (3, 0, 1), (3, 11, 1), (3, 0, 1), (3, 11, 1)]
    assert run.errors("illegal_address") == 1


async def test_exception_and_wrong_length_answers_are_counted_by_reason(tmp_path, tcp_meters):
    run = direct(tmp_path, f"""\
        [[source.modbus]]
        url = "{tcp_meters.url}"
        [[source.modbus.devices]]
        name = "d"
        unit = 1
        [[source.modbus.devices.registers]]
        metric = "beyond"
        address = 350
        [[source.modbus.devices.registers]]
        metric = "fine"
        type = "input"
        address = 0
        data_type = "float32"
        """)

    def drop_a_register(pdu):
        if pdu.function_code == 4:
            pdu.registers = pdu.registers[:1]

    async with run.source as source:
        assert await source.poll("d")  # the device answers, so it is up, but holding 350 does not exist
        tcp_meters.mangle = drop_a_register
        assert await source.poll("d")
    assert run.errors("illegal_address") == 2
    assert run.errors("wrong_length") == 1
    assert run.latest("fine") == 0.0 and run.latest("beyond") is None
    assert run.latest("up") == 1.0


async def test_nan_values_are_rejected_and_counted(tmp_path, tcp_meters):
    await tcp_meters.set(1, "input", 0, [0x7FC0, 0x0000])
    run = direct(tmp_path, f"""\
        [[source.modbus]]
        url = "{tcp_meters.url}"
        [[source.modbus.devices]]
        name = "d"
        unit = 1
        profile = "sdm120"
        """)
    async with run.source as source:
        await source.poll("d")
    assert run.latest("voltage_volts") is None and run.latest("frequency_hertz") == 0.0
    assert run.errors("nan") == 1


# ---------------------------------------------------------------- dead and slow meters


async def test_an_unknown_unit_is_down_and_the_others_keep_answering(tmp_path, tcp_meters):
    await set_sdm(tcp_meters, 1, {0x0000: 230.0})
    run = direct(tmp_path, f"""\
        [[source.modbus]]
        url = "{tcp_meters.url}"
        [[source.modbus.devices]]
        name = "ghost"
        unit = 9
        profile = "sdm120"
        [[source.modbus.devices]]
        name = "real"
        unit = 1
        profile = "sdm120"
        """)
    async with run.source as source:
        assert not await source.poll("ghost")  # pymodbus answers exception 4 for a unit it does not have
        assert await source.poll("real")
    assert run.latest("up", device="ghost") == 0.0 and run.latest("up", device="real") == 1.0
    assert run.latest("voltage_volts", device="real") == 230.0
    assert run.errors("device_down") == 1
    assert len(tcp_meters.reads_of(9)) == 1  # an exception is an answer: no retries


async def test_a_silent_meter_goes_down_costs_one_timeout_per_poll_and_comes_back(tmp_path, tcp_meters):
    run = direct(tmp_path, f"""\
        [[source.modbus]]
        url = "{tcp_meters.url}"
        timeout = "100ms"
        retries = 2
        [[source.modbus.devices]]
        name = "d"
        unit = 1
        profile = "sdm120"
        """)
    tcp_meters.silent.add(1)
    async with run.source as source:
        started = time.monotonic()
        assert not await source.poll("d")
        assert 0.3 <= time.monotonic() - started < 1.0  # three attempts of 100 ms
        assert len(tcp_meters.reads_of(1)) == 3
        assert not await source.poll("d")
        assert len(tcp_meters.reads_of(1)) == 4  # known down: one attempt only
        assert run.latest("up") == 0.0 and run.errors("device_down") == 2
        tcp_meters.silent.clear()
        assert await source.poll("d")
    assert run.latest("up") == 1.0


async def test_a_dead_meter_never_delays_meters_on_other_connections(tmp_path, tcp_meters):
    other = Meters([1])
    await other.start(address=("127.0.0.1", free_port()))
    tcp_meters.silent.add(1)
    settings = modbus_config(tmp_path, f"""\
        [[source.modbus]]
        name = "dead"
        url = "{tcp_meters.url}"
        timeout = "1s"
        interval = "200ms"
        [[source.modbus.devices]]
        name = "silent"
        unit = 1
        profile = "sdm120"

        [[source.modbus]]
        name = "alive"
        url = "tcp://127.0.0.1:{other.where['address'][1]}"
        interval = "200ms"
        [[source.modbus.devices]]
        name = "fine"
        unit = 1
        [[source.modbus.devices.registers]]
        metric = "x"
        address = 0
        """)
    try:
        async with Hub(settings, serve_http=False):
            await asyncio.sleep(0.5)
            before = len(other.reads_of(1))
            await asyncio.sleep(3.0)
            polls = len(other.reads_of(1)) - before
    finally:
        await other.stop()
    assert 14 <= polls <= 16  # every 200 ms, while the silent meter takes 3 s per poll


async def test_polls_follow_a_fixed_grid_that_does_not_drift(tmp_path, tcp_meters):
    settings = modbus_config(tmp_path, f"""\
        [[source.modbus]]
        name = "grid"
        url = "{tcp_meters.url}"
        interval = "100ms"
        [[source.modbus.devices]]
        name = "d"
        unit = 1
        [[source.modbus.devices.registers]]
        metric = "x"
        address = 0
        """)
    async with Hub(settings, serve_http=False):
        await asyncio.sleep(2.0)
    phase = tick_phase_s("grid", "d", 0.1)
    lateness = [((t - phase) % 0.1) for t in tcp_meters.arrivals]
    assert len(lateness) >= 18
    # Sleeping the interval after each poll would add the poll's time to every cycle: lateness would grow.
    assert sorted(lateness)[len(lateness) // 2] < 0.01 and max(lateness) < 0.06, lateness


async def test_a_gateway_that_cannot_be_reached_shows_its_devices_down(tmp_path):
    run = direct(tmp_path, f"""\
        [[source.modbus]]
        url = "tcp://127.0.0.1:{free_port()}"
        timeout = "200ms"
        [[source.modbus.devices]]
        name = "kitchen"
        unit = 1
        profile = "sdm120"
        """)
    with pytest.raises(SourceError, match=r"tcp://127.0.0.1:\d+: cannot connect within 0.2 s — is the meter or gateway on"):
        async with run.source:
            pass
    assert run.latest("up", device="kitchen") == 0.0


async def test_devices_go_down_when_the_server_stops_and_return_with_it(tmp_path, tcp_meters):
    await set_sdm(tcp_meters, 1, {0x0000: 230.0})
    settings = modbus_config(tmp_path, f"""\
        [[source.modbus]]
        name = "house"
        url = "{tcp_meters.url}"
        interval = "200ms"
        timeout = "300ms"
        [[source.modbus.devices]]
        name = "kitchen"
        unit = 1
        profile = "sdm120"
        """)
    async with Hub(settings, serve_http=False) as hub:
        await eventually(lambda: latest(hub, "up", device="kitchen") == 1.0)
        await tcp_meters.stop()
        await eventually(lambda: latest(hub, "up", device="kitchen") == 0.0)
        await asyncio.sleep(0.5)
        await tcp_meters.start()
        await tcp_meters.set(1, "input", 0, f32(231.0))
        await eventually(lambda: latest(hub, "voltage_volts", device="kitchen") == 231.0)
        assert latest(hub, "up", device="kitchen") == 1.0
        failed = hub.metrics.registry.get_sample_value("roost_source_errors_total", {"source": "house", "reason": "failed"})
        assert failed >= 1


# ---------------------------------------------------------------- writes


async def test_coils_and_registers_can_be_written(tmp_path, tcp_meters):
    run = direct(tmp_path, f"""\
        [[source.modbus]]
        url = "{tcp_meters.url}"
        [[source.modbus.devices]]
        name = "relay board"
        unit = 2
        [[source.modbus.devices.registers]]
        metric = "relay"
        type = "coil"
        address = 7
        """)
    async with run.source as source:
        await source.write_coil("relay board", 7, True)
        await source.write_register("relay board", 10, 1234)
        await source.write_register("relay board", 20, -2.5, "float32", "CDAB")
        await source.poll("relay board")
        with pytest.raises(SourceError, match=r"writing 399: refused with exception 2 \(illegal address\)"):
            await source.write_register("relay board", 399, 1)
        with pytest.raises(SourceError, match='no device named .relay bord. \\(did you mean "relay board"\\?\\)'):
            await source.write_coil("relay bord", 7, False)
    assert run.latest("relay") == 1.0
    context = tcp_meters.server.context
    assert await context.async_getValues(2, 3, 10, 1) == [1234]
    assert await context.async_getValues(2, 3, 20, 2) == f32(-2.5)[::-1]


# ---------------------------------------------------------------- RTU: serial device, ser2net


async def test_rtu_meters_on_a_serial_device(tmp_path, rtu_bus):
    await set_sdm(rtu_bus, 1, {0x0000: 229.5, 0x0156: 10.0})
    run = direct(tmp_path, f"""\
        [[source.modbus]]
        url = "{rtu_bus.client_end}"
        baudrate = 9600
        timeout = "300ms"
        [[source.modbus.devices]]
        name = "a"
        unit = 1
        profile = "sdm120"
        [[source.modbus.devices]]
        name = "missing"
        unit = 7
        profile = "sdm120"
        [[source.modbus.devices.registers]]
        metric = "relay"
        type = "coil"
        address = 2
        """)
    async with run.source as source:
        assert await source.poll("a")
        assert not await source.poll("missing")
        await source.write_coil("a", 2, True)
        assert await source.poll("a")
    assert (run.latest("voltage_volts", device="a"), run.latest("energy_kwh_total", device="a")) == (229.5, 10.0)
    assert run.latest("up", device="missing") == 0.0
    assert await rtu_bus.server.context.async_getValues(1, 1, 2, 1) == [True]


@pytest.mark.parametrize("kind", ["socket", "rfc2217"])
async def test_rtu_meters_behind_ser2net(tmp_path, rtu_bus, ser2net, kind):
    await set_sdm(rtu_bus, 1, {0x0000: 228.0})
    await set_sdm(rtu_bus, 2, {0x0000: 233.0})
    settings = modbus_config(tmp_path, f"""\
        [[source.modbus]]
        name = "router"
        url = "{ser2net[kind]}"
        interval = "500ms"
        timeout = "500ms"
        [[source.modbus.devices]]
        name = "one"
        unit = 1
        profile = "sdm120"
        [[source.modbus.devices]]
        name = "two"
        unit = 2
        profile = "sdm630"
        """)
    async with Hub(settings, serve_http=False) as hub:
        await eventually(lambda: latest(hub, "voltage_volts", device="one") and latest(hub, "voltage_volts", device="two"))
        assert (latest(hub, "voltage_volts", device="one"), latest(hub, "voltage_volts", device="two", phase="L1")) == (228.0, 233.0)
        await rtu_bus.set(1, "input", 0, f32(229.0))
        await eventually(lambda: latest(hub, "voltage_volts", device="one") == 229.0)
        assert latest(hub, "up", device="two") == 1.0


async def test_a_serial_link_that_goes_away_is_reported_lost(tmp_path, rtu_bus, ser2net):
    run = direct(tmp_path, f"""\
        [[source.modbus]]
        url = "{ser2net['socket']}"
        timeout = "300ms"
        [[source.modbus.devices]]
        name = "one"
        unit = 1
        profile = "sdm120"
        """)
    async with run.source as source:
        assert await source.poll("one")
        ser2net["process"].terminate()
        ser2net["process"].wait(timeout=10)
        with pytest.raises(LinkLost, match="the port failed"):
            await source.poll("one")


# ---------------------------------------------------------------- things: writes through the API and rules

BOILER = """\
    [[source.modbus]]
    name = "heating"
    url = "{url}"
    interval = "200ms"
    timeout = "200ms"
    retries = 0

    [[source.modbus.devices]]
    name = "boiler board"
    unit = 2

    [[source.modbus.devices.registers]]
    metric = "flow_temperature_celsius"
    type = "input"
    address = 0

    [[source.modbus.devices.registers]]
    metric = "pump"
    type = "coil"
    address = 3
    writable = true

    [[source.modbus.devices.registers]]
    metric = "setpoint_celsius"
    address = 10
    data_type = "int16"
    scale = 0.1
    writable = true

    [[source.modbus.devices.registers]]
    metric = "mode"
    address = 11
    writable = true
    """


async def _put(session, hub: Hub, thing: str, name: str, value) -> tuple[int, dict]:
    async with session.put(f"{hub.url}/things/{thing}/properties/{name}", json={name: value}) as response:
        return response.status, await response.json()


async def test_a_put_writes_the_devices_coils_and_registers_and_wrong_values_are_refused(tmp_path, tcp_meters):
    import aiohttp

    settings = modbus_config(tmp_path, BOILER.format(url=tcp_meters.url))
    context = tcp_meters.server.context
    async with Hub(settings) as hub, aiohttp.ClientSession() as session:
        async with session.get(f"{hub.url}/things/boiler-board") as response:
            described = (await response.json())["properties"]
        assert described["setpoint"]["title"] == "Setpoint" and described["setpoint"]["unit"] == "degree celsius"
        assert (described["setpoint"]["minimum"], described["setpoint"]["maximum"]) == (-3276.8, 3276.7)
        assert described["mode"]["type"] == "integer" and described["mode"]["maximum"] == 65535
        assert described["flow_temperature"]["readOnly"] is True and described["pump"]["type"] == "boolean"

        assert await _put(session, hub, "boiler-board", "pump", True) == (200, {"pump": True})
        assert await _put(session, hub, "boiler-board", "setpoint", 21.5) == (200, {"setpoint": 21.5})
        assert await _put(session, hub, "boiler-board", "mode", 3) == (200, {"mode": 3})
        assert await context.async_getValues(2, 1, 3, 1) == [True]
        assert await context.async_getValues(2, 3, 10, 2) == [215, 3]
        assert await _put(session, hub, "boiler-board", "setpoint", -2.5) == (200, {"setpoint": -2.5})
        assert await context.async_getValues(2, 3, 10, 1) == [0x10000 - 25]  # int16, two's complement

        refused = {
            "flow_temperature": (30, "thing 'boiler-board' property 'flow_temperature' is read-only"),
            "setpoint": (4000, "thing 'boiler-board' property 'setpoint': 4000 is above the maximum 3276.7"),
            "mode": (2.5, "thing 'boiler-board' property 'mode': expected an integer, got 2.5"),
            "pump": ("on", "thing 'boiler-board' property 'pump': expected true or false, got 'on'"),
        }
        for name, (value, message) in refused.items():
            assert await _put(session, hub, "boiler-board", name, value) == (400, {"error": message}), name
        status, body = await _put(session, hub, "boiler-board", "setpoint", 21.55)
        assert (status, body["error"]) == (400, "thing 'boiler-board' property 'setpoint': 21.55 is not a whole number "
                                                "of the register's steps of 0.1")
        assert await context.async_getValues(2, 3, 10, 2) == [0x10000 - 25, 3]  # nothing refused reached the device
        assert await context.async_getValues(2, 1, 3, 1) == [True]


async def test_a_dead_device_tells_the_api_caller_what_failed(tmp_path, tcp_meters):
    import aiohttp

    settings = modbus_config(tmp_path, BOILER.format(url=tcp_meters.url))
    tcp_meters.silent.add(2)
    async with Hub(settings) as hub, aiohttp.ClientSession() as session:
        status, body = await _put(session, hub, "boiler-board", "pump", True)
        assert (status, body) == (502, {"error": "heating: boiler board (unit 2): writing 3: no answer within 0.2 s (1 attempt)"})
        async with session.get(f"{hub.url}/things/boiler-board/properties/pump") as response:
            assert await response.json() == {"pump": None}  # not known: the device never said it took the value
        await tcp_meters.stop()  # the gateway itself gone
        status, body = await _put(session, hub, "boiler-board", "pump", True)
        assert status == 502
        assert re.fullmatch(r"heating: boiler board \(unit 2\): writing 3: (the connection was closed|.*refused.*)", body["error"])


async def test_a_rule_switches_a_coil_when_a_register_crosses_a_threshold(tmp_path, tcp_meters):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "pump.py").write_text(dedent('''\
        from roost.rules import Rule, Threshold


        class PumpOnWhenHot(Rule):
            """The pump runs once the flow is over 60 degrees."""

            def register_triggers(self):
                return (Threshold('flow_temperature_celsius{device="boiler board"} > 60'),)

            def action(self, *args):
                self.boiler_board.pump = True
                self.boiler_board.setpoint = 55.5
        '''))
    settings = modbus_config(tmp_path, BOILER.format(url=tcp_meters.url) + f'\n[rules]\ndirectory = "{rules}"\n')
    context = tcp_meters.server.context
    await tcp_meters.set(2, "input", 0, [45])
    async with Hub(settings, serve_http=False) as hub:
        assert hub.rules.runtimes["PumpOnWhenHot"].armed  # its thing is there when the rules start
        await eventually(lambda: latest(hub, "flow_temperature_celsius") == 45.0)
        assert await context.async_getValues(2, 1, 3, 1) == [False]
        await tcp_meters.set(2, "input", 0, [65])
        await eventually(lambda: hub.things.get("boiler-board").values.get("pump") is True)
        assert await context.async_getValues(2, 1, 3, 1) == [True]
        assert await context.async_getValues(2, 3, 10, 1) == [555]
        assert hub.things.get("boiler-board").values["setpoint"] == 55.5
