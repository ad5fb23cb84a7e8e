"""The mqtt source (being built: settings only so far)."""

from __future__ import annotations

from dataclasses import dataclass

from roost.sources.base import Source


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """`[[source.mqtt]]`."""

    name: str = ""


class MqttSource(Source):
    kind = "mqtt"

    async def run(self) -> None:
        raise NotImplementedError("the mqtt source is not built yet")
