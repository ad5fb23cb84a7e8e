"""Durations as people write them in configs and on the command line: 500ms, 15s, 5m, 1h, 1d, 2w, 1y."""

import math
import re
from typing import NewType

Duration = NewType("Duration", int)
"""A length of time in milliseconds; config files spell it as text like "15s"."""

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000, "y": 365 * 86_400_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def parse_duration_ms(text: str) -> int:
    """Parse `1h30m`-style text into milliseconds; raise ValueError with the accepted forms."""
    s = str(text).strip()
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS_MS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s) or not math.isfinite(total):
        raise ValueError(f'expected a duration like "500ms", "15s", "5m", "1h" or "1d", got {text!r:.100}')
    return int(round(total))


def format_duration_ms(ms: int) -> str:
    """The shortest exact spelling of a duration (`300000` → `5m`)."""
    if ms == 0:
        return "0s"
    for unit in ("y", "w", "d", "h", "m", "s", "ms"):
        size = _UNITS_MS[unit]
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def parse_time_ms(text: str, now_ms: int) -> int:
    """A point in time: epoch milliseconds, epoch seconds with a fraction, RFC 3339, `now`, or `now-7d` / `-7d`."""
    from datetime import datetime, timezone

    s = str(text).strip()
    if s == "now":
        return now_ms
    if s.startswith("now-") or s.startswith("-"):
        return now_ms - parse_duration_ms(s.split("-", 1)[1])
    try:
        number = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise ValueError(f"expected a time, got {text!r:.100} (not a finite number)")
        # Ten-digit numbers are seconds (Prometheus and Grafana send those), longer ones milliseconds.
        return int(number * 1000) if abs(number) < 1e11 else int(number)
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"expected a time like 1700000000000 (ms), 2024-01-01T00:00:00Z, now or now-7d, got {text!r:.100}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)
