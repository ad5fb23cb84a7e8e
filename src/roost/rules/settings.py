"""`[rules]` in roost.toml: where rule files live and where the house is."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def _check_timezone(name: str) -> None:
    if name == "":
        return
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f'expected a time zone name like "Europe/Berlin", got "{name}"') from None


@dataclass(frozen=True, slots=True)
class RulesSettings:
    """`[rules]`: the rules directory (none: no rules), the place for sun events and local times, and how many
    failures in a row disable a rule. An empty timezone means the machine's."""

    directory: Path | None = None
    latitude: float = field(default=51.4769, metadata={"min": -90, "max": 90})
    longitude: float = field(default=0.0, metadata={"min": -180, "max": 180})
    timezone: str = field(default="", metadata={"check": _check_timezone})
    max_failures: int = field(default=3, metadata={"min": 1})

    def place(self):
        from roost.rules.clock import Place, system_timezone

        return Place(self.latitude, self.longitude, self.timezone or system_timezone())
