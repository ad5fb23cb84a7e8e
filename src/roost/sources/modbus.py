"""The modbus source (being built: settings only so far)."""

from __future__ import annotations

from dataclasses import dataclass

from roost.sources.base import Source


@dataclass(frozen=True, slots=True)
class ModbusSettings:
    """`[[source.modbus]]`."""

    name: str = ""


class ModbusSource(Source):
    kind = "modbus"

    async def run(self) -> None:
        raise NotImplementedError("the modbus source is not built yet")
