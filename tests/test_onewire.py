"""The 1-Wire source against a fake sysfs tree in the kernel's own file formats (a bus cannot run here)."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from roost.config import load_config
from roost.errors import ConfigError
from roost.hub import Hub
from roost.model import Series

LOUNGE = "28-000004b926f1"
CELLAR = "28-0316a2797cff"
ATTIC = "28-3c01d607e4a1"


def _crc8(data: bytes) -> int:
    """Dallas/Maxim CRC-8 (x^8 + x^5 + x^4 + 1), as the DS18B20 appends to its scratchpad."""
    crc = 0
    for byte in data:
        for _ in range(8):
            mix = (crc ^ byte) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            byte >>= 1
    return crc


def w1_slave(millicelsius: int, *, crc_ok: bool = True) -> str:
    """The two lines w1-therm writes: the scratchpad with the CRC verdict, then the scratchpad and t=."""
    raw = round(millicelsius * 16 / 1000) & 0xFFFF
    pad = bytes([raw & 0xFF, raw >> 8, 0x4B, 0x46, 0x7F, 0xFF, 0x0E, 0x10])
    crc = _crc8(pad)
    scratch = " ".join(f"{b:02x}" for b in pad + bytes([crc if crc_ok else crc ^ 0x5A]))
    return f"{scratch} : crc={crc if crc_ok else crc ^ 0x5A:02x} {'YES' if crc_ok else 'NO'}\n{scratch} t={millicelsius}\n"


def test_the_fake_scratchpad_matches_a_real_one():
    assert w1_slave(23125) == "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"


def add_sensor(root: Path, sensor_id: str, w1_slave_text: str | None = None, temperature: str | None = None) -> Path:
    device = root / sensor_id
    device.mkdir(parents=True, exist_ok=True)
    if w1_slave_text is not None:
        (device / "w1_slave").write_text(w1_slave_text)
    if temperature is not None:
        (device / "temperature").write_text(temperature)
    return device


@pytest.fixture
def bus(tmp_path) -> Path:
    root = tmp_path / "sys" / "bus" / "w1" / "devices"
    root.mkdir(parents=True)
    (root / "w1_bus_master1").mkdir()  # the kernel lists the master next to the sensors
    return root


@asynccontextmanager
async def hub_with(tmp_path: Path, root: Path, extra: str = "", interval: str = "1s", rescan: str = "1h"):
    config = tmp_path / "roost.toml"
    config.write_text(
        textwrap.dedent(f"""\
            [[source.onewire]]
            name = "w1"
            root = "{root}"
            interval = "{interval}"
            rescan = "{rescan}"
            sensors = {{ "{LOUNGE}" = "lounge" }}
            """)
        + textwrap.dedent(extra)
    )
    settings = load_config(config, data_dir=str(tmp_path / "data"))
    settings = replace(settings, hub=replace(settings.hub, listen="127.0.0.1:0"))
    async with Hub(settings) as hub:
        yield hub


def temperature(sensor_id: str, room: str = "", **labels: str) -> Series:
    return Series.of("temperature_celsius", labels, sensor=sensor_id, room=room)


async def latest(hub: Hub, series: Series, timeout: float = 5.0) -> float:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        found = hub.store.latest().get(series)
        if found is not None:
            return found[1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no reading of {series} within {timeout} s; have {[str(s) for s in hub.store.latest()]}")


async def counted(hub: Hub, reason: str, at_least: int = 1, timeout: float = 5.0) -> float:
    """Wait until the source has counted `at_least` errors of `reason`."""
    deadline = asyncio.get_running_loop().time() + timeout
    value = 0.0
    while asyncio.get_running_loop().time() < deadline:
        value = hub.metrics.registry.get_sample_value("roost_source_errors_total", {"source": "w1", "reason": reason}) or 0
        if value >= at_least:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{value} errors of reason {reason!r} within {timeout} s, expected {at_least}")


async def test_each_sensor_becomes_a_series_with_its_room_and_the_labels(tmp_path, bus):
    add_sensor(bus, LOUNGE, w1_slave(23125))
    add_sensor(bus, CELLAR, w1_slave(11500))
    async with hub_with(tmp_path, bus, 'labels = { site = "cabin" }\n') as hub:
        assert await latest(hub, temperature(LOUNGE, "lounge", site="cabin")) == 23.125
        assert await latest(hub, temperature(CELLAR, site="cabin")) == 11.5
        assert hub.metrics.registry.get_sample_value("roost_source_up", {"source": "w1"}) == 1


async def test_temperatures_below_zero_are_read(tmp_path, bus):
    add_sensor(bus, LOUNGE, w1_slave(-1250))
    add_sensor(bus, CELLAR, w1_slave(-55000))
    async with hub_with(tmp_path, bus) as hub:
        assert await latest(hub, temperature(LOUNGE, "lounge")) == -1.25
        assert await latest(hub, temperature(CELLAR)) == -55.0


async def test_the_temperature_file_of_newer_kernels_is_preferred(tmp_path, bus):
    add_sensor(bus, LOUNGE, w1_slave(20000), temperature="21437\n")
    add_sensor(bus, CELLAR, temperature="-312\n")
    async with hub_with(tmp_path, bus) as hub:
        assert await latest(hub, temperature(LOUNGE, "lounge")) == 21.437
        assert await latest(hub, temperature(CELLAR)) == -0.312


@pytest.mark.parametrize(
    "content, reason",
    [
        (w1_slave(23125, crc_ok=False), "crc"),
        (w1_slave(85000), "power_on_reset"),
        ("72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n", "malformed"),  # cut short
        ("\x00\xff garbage \n", "malformed"),
        ("", "malformed"),
    ],
)
async def test_unusable_readings_are_rejected_by_reason_and_the_others_still_stored(tmp_path, bus, content, reason):
    add_sensor(bus, LOUNGE, content)
    add_sensor(bus, CELLAR, w1_slave(9000))
    async with hub_with(tmp_path, bus) as hub:
        assert await latest(hub, temperature(CELLAR)) == 9.0
        await counted(hub, reason)
        assert hub.metrics.registry.get_sample_value("roost_rejected_readings_total", {"reason": reason}) >= 1
        assert temperature(LOUNGE, "lounge") not in hub.store.latest()


async def test_85_degrees_from_the_temperature_file_is_a_power_on_reset_too(tmp_path, bus):
    add_sensor(bus, LOUNGE, temperature="85000\n")
    async with hub_with(tmp_path, bus) as hub:
        await counted(hub, "power_on_reset")


async def test_a_sensor_that_vanishes_between_scan_and_read_is_counted_unreadable(tmp_path, bus):
    lounge = add_sensor(bus, LOUNGE, w1_slave(23125))
    add_sensor(bus, CELLAR, w1_slave(9000))
    async with hub_with(tmp_path, bus) as hub:
        await latest(hub, temperature(LOUNGE, "lounge"))
        (lounge / "w1_slave").unlink()  # the kernel drops the directory when a sensor leaves the bus
        lounge.rmdir()
        await counted(hub, "unreadable")
        (bus / CELLAR / "w1_slave").write_text(w1_slave(9500))
        assert await wait_value(hub, temperature(CELLAR), 9.5)


async def wait_value(hub: Hub, series: Series, value: float, timeout: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await latest(hub, series) == value:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_sensor_plugged_in_later_is_found_by_the_periodic_rescan(tmp_path, bus):
    add_sensor(bus, LOUNGE, w1_slave(23125))
    async with hub_with(tmp_path, bus, rescan="1s") as hub:
        await latest(hub, temperature(LOUNGE, "lounge"))
        add_sensor(bus, ATTIC, w1_slave(31062))
        assert await latest(hub, temperature(ATTIC)) == 31.062


async def test_a_sensor_plugged_in_later_is_found_at_once_on_sighup(tmp_path, bus):
    hups = []
    before = signal.signal(signal.SIGHUP, lambda *_: hups.append(1))  # if the source's handler is missing: no kill
    try:
        add_sensor(bus, LOUNGE, w1_slave(23125))
        async with hub_with(tmp_path, bus, interval="1h", rescan="1h") as hub:
            await latest(hub, temperature(LOUNGE, "lounge"))  # the source runs, so its handler is in place
            add_sensor(bus, ATTIC, w1_slave(31062))
            os.kill(os.getpid(), signal.SIGHUP)
            assert await latest(hub, temperature(ATTIC), timeout=3) == 31.062
            assert hups == []
        handler = signal.getsignal(signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.1)
        assert hups == [1], f"the handler before the hub was not restored: {handler}"
    finally:
        signal.signal(signal.SIGHUP, before)


async def test_a_read_that_hangs_does_not_hold_up_the_other_sensors(tmp_path, bus):
    stuck = add_sensor(bus, LOUNGE) / "w1_slave"
    os.mkfifo(stuck)  # opening it blocks, like a read on a bus that never answers
    add_sensor(bus, CELLAR, w1_slave(9000))
    try:
        async with hub_with(tmp_path, bus) as hub:
            assert await latest(hub, temperature(CELLAR)) == 9.0
            await counted(hub, "timeout")
            (bus / CELLAR / "w1_slave").write_text(w1_slave(9500))
            assert await wait_value(hub, temperature(CELLAR), 9.5)
            assert await counted(hub, "timeout") == 1  # not read again while the first read still blocks
    finally:
        fd = os.open(stuck, os.O_WRONLY | os.O_NONBLOCK)  # let the blocked thread finish
        os.write(fd, w1_slave(20000).encode())
        os.close(fd)


async def test_a_missing_bus_directory_is_reported_and_retried_until_it_appears(tmp_path):
    root = tmp_path / "devices"
    async with hub_with(tmp_path, root) as hub:
        await counted(hub, "failed")
        add_sensor(root, LOUNGE, w1_slave(23125))
        assert await latest(hub, temperature(LOUNGE, "lounge"), timeout=8) == 23.125


def test_sensor_ids_and_labels_are_checked_in_the_config(tmp_path):
    config = tmp_path / "roost.toml"
    config.write_text(
        textwrap.dedent("""\
            [[source.onewire]]
            sensors = { "000004b926f1" = "lounge" }
            labels = { room = "x" }
            """)
    )
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert str(err.value).splitlines() == [
        f'{config}:2: source.onewire[0].sensors: expected DS18B20 ids like "28-000004b926f1" '
        '(ls /sys/bus/w1/devices), got "000004b926f1"',
        f'{config}:3: source.onewire[0].labels: "room" is set by the source itself (room comes from `sensors`)',
    ]
    config.write_text('[[source.onewire]]\ninterval = "10ms"\n')
    with pytest.raises(ConfigError, match='source.onewire\\[0\\].interval: expected at least "1s", got "10ms"'):
        load_config(config)
