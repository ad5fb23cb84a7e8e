"""Which snapshots a keep policy keeps — the same answer `restic forget` gives for the same times.

restic's rules (0.14, `ApplyPolicy`), followed exactly:
- snapshots are walked newest first; each `keep-*` count is a number of *buckets that have a snapshot*
  (hours, days, ISO weeks, months, years of the snapshot's own time), and the newest snapshot of each bucket
  is the one kept — a month without snapshots does not use up a monthly slot;
- `last` keeps the newest n snapshots whatever their times;
- `within` keeps everything strictly after (newest snapshot − y years − m months − d days − h hours), counted
  back from the newest snapshot, not from now, with calendar arithmetic (Go's AddDate, which normalizes
  e.g. 31 March − 1 month to 3 March);
- a snapshot kept for any reason is kept; an empty policy keeps everything.
Times are bucketed in the time zone they carry (roost uses UTC; run restic with TZ=UTC to compare).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

__all__ = ["Decision", "KeepPolicy", "apply_policy", "parse_within"]

_WITHIN = re.compile(r"(?:\d+[ymdh])+")


def parse_within(text: str) -> tuple[int, int, int, int]:
    """restic's `--keep-within` duration: `2y6m`, `30d`, `1y2m3d4h` → (years, months, days, hours)."""
    if not isinstance(text, str) or not _WITHIN.fullmatch(text):
        raise ValueError(f'expected a duration like "30d", "6m" or "1y2m3d4h" (y, m = months, d, h), got {text!r}')
    parts = {"y": 0, "m": 0, "d": 0, "h": 0}
    seen = set()
    for number, unit in re.findall(r"(\d+)([ymdh])", text):
        if unit in seen:
            raise ValueError(f"{text!r}: the unit {unit!r} appears twice")
        seen.add(unit)
        parts[unit] = int(number)
    return parts["y"], parts["m"], parts["d"], parts["h"]


def _check_count(n: int) -> None:
    if n < 0:
        raise ValueError(f"expected a count of 0 or more, got {n}")


@dataclass(frozen=True, slots=True)
class KeepPolicy:
    """`keep = { last, hourly, daily, weekly, monthly, yearly, within }` — counts of buckets, as restic reads them."""

    last: int = field(default=0, metadata={"check": _check_count})
    hourly: int = field(default=0, metadata={"check": _check_count})
    daily: int = field(default=0, metadata={"check": _check_count})
    weekly: int = field(default=0, metadata={"check": _check_count})
    monthly: int = field(default=0, metadata={"check": _check_count})
    yearly: int = field(default=0, metadata={"check": _check_count})
    within: str = field(default="", metadata={"check": lambda s: s == "" or parse_within(s)})

    @property
    def empty(self) -> bool:
        return not (self.last or self.hourly or self.daily or self.weekly or self.monthly or self.yearly or self.within)

    def restic_flags(self) -> list[str]:
        flags = []
        for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            if getattr(self, name):
                flags += [f"--keep-{name}", str(getattr(self, name))]
        if self.within:
            flags += ["--keep-within", self.within]
        return flags

    def __str__(self) -> str:
        parts = [f"{n}={getattr(self, n)}" for n in ("last", "hourly", "daily", "weekly", "monthly", "yearly") if getattr(self, n)]
        return ", ".join(parts + ([f"within={self.within}"] if self.within else [])) or "keep everything"


@dataclass(frozen=True, slots=True)
class Decision:
    time: datetime
    keep: bool
    reasons: tuple[str, ...]


def _add_date(t: datetime, years: int, months: int, days: int) -> datetime:
    """Go's time.AddDate: add to the fields, then normalize (month and day overflow carry over)."""
    month0 = t.month - 1 + months
    year = t.year + years + month0 // 12
    month = month0 % 12 + 1
    return t.replace(year=year, month=month, day=1) + timedelta(days=t.day - 1 + days)


_BUCKETS = (
    ("last", "last snapshot", None),
    ("hourly", "hourly snapshot", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", "daily snapshot", lambda t: (t.year, t.month, t.day)),
    ("weekly", "weekly snapshot", lambda t: tuple(t.isocalendar())[:2]),
    ("monthly", "monthly snapshot", lambda t: (t.year, t.month)),
    ("yearly", "yearly snapshot", lambda t: (t.year,)),
)


def apply_policy(times: Sequence[datetime], policy: KeepPolicy) -> list[Decision]:
    """A decision for each time, newest first (ties keep their given order, as restic's stable sort does)."""
    order = sorted(range(len(times)), key=lambda i: times[i], reverse=True)  # stable, like restic's sort
    if policy.empty:
        return [Decision(times[i], True, ()) for i in order]
    if not order:
        return []
    counts = {name: getattr(policy, name) for name, _r, _b in _BUCKETS}
    last: dict[str, object] = {name: None for name, _r, _b in _BUCKETS}
    cutoff = None
    if policy.within:
        y, m, d, h = parse_within(policy.within)
        cutoff = _add_date(times[order[0]], -y, -m, -d) - timedelta(hours=h)
    out = []
    for nr, i in enumerate(order):
        t = times[i]
        reasons = []
        if cutoff is not None and t > cutoff:
            reasons.append(f"within {policy.within}")
        for name, reason, bucket in _BUCKETS:
            if counts[name] > 0:
                value = nr if bucket is None else bucket(t)
                if value != last[name]:
                    last[name] = value
                    counts[name] -= 1
                    reasons.append(reason)
        out.append(Decision(t, bool(reasons), tuple(reasons)))
    return out
