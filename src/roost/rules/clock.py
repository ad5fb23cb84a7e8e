"""Time as rules see it: a clock to read and to sleep on, and the place whose sun and time zone rules follow.

The engine never calls `asyncio.sleep` or `datetime.now` itself: it asks its `Clock`. The hub gives it the
wall clock; `roost.testing` gives it a clock that jumps, so the same engine runs a 20-minute fade in a test
without waiting.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from roost.rules.errors import RuleError


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""

    async def sleep_until(self, when: datetime) -> None:
        """Return once `now() >= when` (at once if it already is); cancellable."""


# A long sleep is cut into pieces so a wall clock set forward (NTP after boot, a suspended laptop) is noticed.
_MAX_NAP_S = 30.0


class WallClock:
    """The real time."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    async def sleep_until(self, when: datetime) -> None:
        while True:
            remaining = (when - self.now()).total_seconds()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, _MAX_NAP_S))


@dataclass(frozen=True, slots=True)
class Place:
    """Where the house is: for sun events, and the time zone that "06:30" and cron schedules mean."""

    latitude: float = 51.4769  # Greenwich, until configured
    longitude: float = 0.0
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if not -90 <= self.latitude <= 90:
            raise RuleError(f"rules.latitude: expected -90..90, got {self.latitude}")
        if not -180 <= self.longitude <= 180:
            raise RuleError(f"rules.longitude: expected -180..180, got {self.longitude}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise RuleError(f'rules.timezone: unknown time zone {self.timezone!r} (use a name like "Europe/Berlin")') from None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def local(self, when: datetime) -> datetime:
        return when.astimezone(self.tz)


def seconds(duration: str | float | int | timedelta) -> float:
    """A duration given as "12s"/"1h30m", a number of seconds, or a timedelta, in seconds."""
    from roost.durations import parse_duration_ms

    if isinstance(duration, timedelta):
        return duration.total_seconds()
    if isinstance(duration, (int, float)) and not isinstance(duration, bool):
        return float(duration)
    try:
        return parse_duration_ms(duration) / 1000
    except ValueError as err:
        raise RuleError(str(err)) from None


def system_timezone() -> str:
    """The machine's time zone name (from $TZ, /etc/timezone or the /etc/localtime link), else "UTC"."""
    import os
    from pathlib import Path

    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        candidates.append(Path("/etc/timezone").read_text().strip())
    except OSError:
        pass
    try:
        target = str(Path("/etc/localtime").resolve())
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    for name in candidates:
        if name:
            try:
                ZoneInfo(name)
                return name
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return "UTC"
