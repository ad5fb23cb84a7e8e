"""Device sources, one module per protocol; `[[source.<kind>]]` tables in the config configure them."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from roost.sources.base import Source, SourceContext, supervise
from roost.sources.modbus import ModbusSettings
from roost.sources.mqtt import MqttSettings
from roost.sources.onewire import OneWireSettings
from roost.sources.scrape import ScrapeSettings

# kind → class name in roost.sources.<kind>; imported only when a hub runs such a source.
_CLASSES = {"mqtt": "MqttSource", "modbus": "ModbusSource", "onewire": "OneWireSource", "scrape": "ScrapeSource"}


@dataclass(frozen=True, slots=True)
class SourceSettings:
    """`[[source.mqtt]]`, `[[source.modbus]]`, `[[source.onewire]]`, `[[source.scrape]]` tables."""

    mqtt: list[MqttSettings] = field(default_factory=list)
    modbus: list[ModbusSettings] = field(default_factory=list)
    onewire: list[OneWireSettings] = field(default_factory=list)
    scrape: list[ScrapeSettings] = field(default_factory=list)

    def configured(self) -> list[tuple[str, str, object]]:
        """(kind, name, settings) of every configured source; a source without a name is named `<kind>[i]`."""
        out = []
        for kind in _CLASSES:
            for i, s in enumerate(getattr(self, kind)):
                out.append((kind, s.name or f"{kind}[{i}]", s))
        return out

    def _validate(self) -> list[str]:
        seen: dict[str, str] = {}
        problems = []
        for kind, name, _s in self.configured():
            if name in seen:
                problems.append(f"{kind}: two sources are named {name!r} ({seen[name]} and {kind}): names must be unique")
            seen[name] = kind
        urls: dict[str, str] = {}
        for i, m in enumerate(self.modbus):
            name = m.name or f"modbus[{i}]"
            if m.url in urls:
                problems.append(
                    f"modbus[{i}].url: {m.url} is also the url of {urls[m.url]}: one connection per bus — "
                    "list both sets of devices under one [[source.modbus]]"
                )
            urls[m.url] = name
        return problems


def source_class(kind: str) -> type[Source]:
    module = importlib.import_module(f"roost.sources.{kind}")
    return getattr(module, _CLASSES[kind])


__all__ = ["Source", "SourceContext", "SourceSettings", "source_class", "supervise"]
