"""Thing changes kept for rule previews: what the store's series do not hold (a lamp switched, a door opened).

A hub that runs rules appends every change of a thing's property to `thing-changes/YYYY-MM-DD.jsonl` in the
data directory (UTC days), one JSON array per line: `[ts_ms, thing_id, property, value, origin]`, and keeps
`keep_days` days. Numbers of read-only properties are left out: they are sensor values fed from stored series
(the store has them, and they change every few seconds). Lines are buffered and appended every few seconds by
a worker thread, without fsync: losing the last seconds in a power cut costs a preview little.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from roost.things import ThingRegistry
from roost.things.model import PropertyChange

log = logging.getLogger("roost.rules")

__all__ = ["ThingLog"]


class ThingLog:
    def __init__(self, directory: Path, *, keep_days: int = 31):
        self.directory = directory
        self.keep_days = keep_days
        self._lines: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()

    def record(self, change: PropertyChange, registry: ThingRegistry, ts_ms: int) -> None:
        """Keep one change, at `ts_ms` on the rules' clock (on the event loop: a list append)."""
        value = change.new
        if isinstance(value, (int, float)) and not isinstance(value, bool) and change.thing_id in registry:
            spec = registry.get(change.thing_id).properties.get(change.name)
            if spec is None or spec.read_only:
                return
        try:
            line = orjson.dumps([ts_ms, change.thing_id, change.name, value, change.origin])
        except TypeError:
            return
        with self._lock:
            self._lines.append((ts_ms, line))

    def flush(self) -> None:
        """Append the kept lines to their days' files and forget days older than `keep_days` (a worker thread)."""
        with self._lock:
            lines, self._lines = self._lines, []
        if not lines:
            return
        by_day: dict[str, list[bytes]] = {}
        for ts, line in lines:
            by_day.setdefault(_day(ts), []).append(line)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for day, day_lines in by_day.items():
                with open(self.directory / f"{day}.jsonl", "ab") as f:
                    f.write(b"\n".join(day_lines) + b"\n")
            newest = max(ts for ts, _ in lines)  # the rules' clock, not the machine's (a test's clock is years back)
            oldest = _day(newest - self.keep_days * 86_400_000)
            for path in self.directory.glob("*.jsonl"):
                if path.stem < oldest:
                    path.unlink(missing_ok=True)
        except OSError as err:
            log.warning("%s: cannot keep the thing changes for rule previews: %s", self.directory, err)

    def read(self, start_ms: int, end_ms: int) -> Iterator[tuple[int, str, str, Any, str]]:
        """The changes with start_ms <= ts < end_ms, in time order."""
        changes = []
        day = datetime.fromtimestamp(start_ms / 1000, timezone.utc).date()
        last = datetime.fromtimestamp(end_ms / 1000, timezone.utc).date()
        while day <= last:
            path = self.directory / f"{day.isoformat()}.jsonl"
            if path.exists():
                for line in path.read_bytes().splitlines():
                    try:
                        ts, thing_id, name, value, origin = orjson.loads(line)
                    except ValueError:
                        continue  # a line cut short by a crash
                    if start_ms <= ts < end_ms:
                        changes.append((int(ts), thing_id, name, value, origin))
            day += timedelta(days=1)
        changes.sort(key=lambda c: c[0])
        return iter(changes)


def _day(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, timezone.utc).date().isoformat()
