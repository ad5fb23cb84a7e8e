"""The onewire source (being built: settings only so far)."""

from __future__ import annotations

from dataclasses import dataclass

from roost.sources.base import Source


@dataclass(frozen=True, slots=True)
class OneWireSettings:
    """`[[source.onewire]]`."""

    name: str = ""


class OneWireSource(Source):
    kind = "onewire"

    async def run(self) -> None:
        raise NotImplementedError("the onewire source is not built yet")
