"""The `[backup]` and `[replication]` config tables (read by roost.config; nothing here imports it)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from roost.durability.retention import KeepPolicy
from roost.durations import Duration
from roost.secret import Secret


def parse_time_of_day(text: str) -> tuple[int, int]:
    """`03:30` → (3, 30); ValueError says what was expected."""
    m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f'expected a time of day like "03:30" (24-hour, local time), got {text!r}')
    return int(m[1]), int(m[2])


def _check_schedule(text: str) -> None:
    if text:
        parse_time_of_day(text)


@dataclass(frozen=True, slots=True)
class BackupSettings:
    """`[backup]`: a restic repository, when to back up (inside the hub, no cron) and which backups to keep."""

    repository: str = ""
    password: Secret | None = None
    schedule: str = field(default="", metadata={"check": _check_schedule})  # "" = only `roost backup now`
    tags: list[str] = field(default_factory=list)
    host: str = "roost"  # restic --host: backups of one hub group together for retention
    keep: KeepPolicy = field(default_factory=KeepPolicy)
    prune: bool = True

    @property
    def configured(self) -> bool:
        return bool(self.repository)

    def _validate(self) -> list[str]:
        problems = []
        if self.repository and self.password is None:
            problems.append("password: missing (or password_file / password_env): restic repositories are encrypted")
        if self.schedule and not self.repository:
            problems.append("schedule: needs repository too")
        return problems


def _check_url(text: str) -> None:
    if text and not re.fullmatch(r"https?://[^/\s]+/?", text):
        raise ValueError(f'expected the base URL of the other hub like "http://10.0.0.2:8080", got {text!r}')


@dataclass(frozen=True, slots=True)
class ReplicationSettings:
    """`[replication]` on a primary: the token a standby must present, the peer to check at start, the mode."""

    token: Secret | None = None
    peer: str = field(default="", metadata={"check": _check_url})  # the standby's URL: its epoch is checked at start
    mode: Literal["async", "sync"] = "async"
    # sync: how long a write waits for the standby before the primary carries on alone (like DRBD, degraded)
    sync_timeout_ms: Duration = field(default=Duration(10_000), metadata={"min": 100})
    # async: the loss window — writes wait when the oldest reading the standby has not confirmed is older
    max_lag_ms: Duration = field(default=Duration(5_000), metadata={"min": 100})

    @property
    def enabled(self) -> bool:
        return self.token is not None


__all__ = ["BackupSettings", "KeepPolicy", "ReplicationSettings", "parse_time_of_day"]
