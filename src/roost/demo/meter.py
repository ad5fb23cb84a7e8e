"""The demo's energy meter: an Eastron SDM120 simulated by a pymodbus TCP server on 127.0.0.1, for roost to poll.

The registers follow roost's own `sdm120` profile (input registers, float32 ABCD), so the demo polls it exactly as
it polls a real meter: roost's Modbus source with `profile = "sdm120"`.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from roost.durations import Duration
from roost.model import Series
from roost.sources.modbus import ModbusDevice, ModbusSettings, encode_registers
from roost.sources.modbus_profiles import SDM120

SOURCE = "demo-modbus"
DEVICE = "main"
UNIT = 1
LABELS = {"meter": "main"}  # the dashboard's energy tile groups readings by `meter`

_INPUT_REGISTERS = 0x0160  # up to the last SDM120 register (0x0156, two words)
_READ_INPUT_REGISTERS = 4


def series(metric: str) -> Series:
    """A metric of the meter as roost's Modbus source stores it."""
    return Series.of(metric, LABELS, source=SOURCE, device=DEVICE)


class SimulatedMeter:
    """`async with SimulatedMeter() as meter:` listens on a free port of 127.0.0.1; `show()` sets what it measures."""

    def __init__(self, seed: int = 7):
        self._rng = np.random.default_rng(seed)
        self._server = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    async def __aenter__(self) -> SimulatedMeter:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        if logging.getLogger("roost").getEffectiveLevel() > logging.DEBUG:
            logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # it logs every connection at INFO

        def block(count: int, datatype: DataType, value) -> list:
            return [SimData(0, count=count, values=value, datatype=datatype)]

        device = SimDevice(UNIT, simdata=(block(1, DataType.BITS, False), block(1, DataType.BITS, False),
                                          block(1, DataType.REGISTERS, 0), block(_INPUT_REGISTERS, DataType.REGISTERS, 0)))
        self._server = ModbusTcpServer([device], address=("127.0.0.1", 0))
        await self._server.serve_forever(background=True)
        self.port = self._server.transport.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()

    def settings(self, interval_ms: int) -> ModbusSettings:
        """roost's Modbus source for this meter, polling it every `interval_ms`."""
        device = ModbusDevice(name=DEVICE, unit=UNIT, profile=SDM120.name, labels=dict(LABELS))
        return ModbusSettings(url=self.url, name=SOURCE, interval_ms=Duration(interval_ms), devices=[device])

    async def show(self, power_w: float, energy_kwh: float) -> None:
        """Set the registers to a household drawing `power_w` with its counter at `energy_kwh`."""
        volts = 230 + float(self._rng.normal(0, 1.2))
        power_factor = 0.96 + float(self._rng.normal(0, 0.005))
        amperes = power_w / (volts * power_factor)
        apparent = volts * amperes
        values = {
            "voltage_volts": volts, "current_amperes": amperes, "power_watts": power_w, "apparent_power_va": apparent,
            "reactive_power_var": math.sqrt(max(apparent**2 - power_w**2, 0.0)), "power_factor": power_factor,
            "frequency_hertz": 50 + float(self._rng.normal(0, 0.02)), "energy_import_kwh_total": energy_kwh,
            "energy_export_kwh_total": 0.0, "energy_kwh_total": energy_kwh,
        }
        for register in SDM120.registers:
            words = encode_registers(values[register.metric], SDM120.data_type, SDM120.order)
            await self._server.async_setValues(UNIT, _READ_INPUT_REGISTERS, register.address, words)
