"""What a rule has promised, kept in the data directory so a restart or a reload does not forget it.

One small JSON file per rule, `rules-state/<RuleName>.json`, replaced atomically (written beside, fsynced,
renamed over) whenever a promise changes: a timer started, fired or cancelled, a threshold that fired or was
broken, a While rule coming into effect or ending, the next time of a time trigger, a setting, `enabled`.
One file per rule keeps a write small (a few hundred bytes: the hub runs on SD cards) however many rules
there are. The former single `rules-state.json` (enabled, last run, settings) is read once as a fallback.

The hub saves through `save_soon`: the files are written by a worker thread, in order, the latest state of
each rule once. On the event loop the writes held every rule's reaction for the disk (open, fsync and rename
on an SD card take milliseconds, at times tens of them), once per event in bench/rules.py. `save_now` goes
through the same thread and says when the state is on disk: the engine awaits it before an action that fires
from a saved promise (a timer, a hold, a schedule), so that promise is kept once across a crash.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("roost.rules")

_SAFE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RuleStateStore:
    """`rules-state/` in the data directory: `load()` every rule's saved state, `save(name, state)` one rule's."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.bytes_written = 0  # for bench/rules_restart.py
        self.writes = 0
        self._pending: dict[str, dict[str, Any]] = {}  # rule name → the latest state not yet written
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="rules-state")

    def load(self) -> dict[str, dict[str, Any]]:
        """Every rule's saved state by rule name (unreadable files are logged and skipped)."""
        saved: dict[str, dict[str, Any]] = {}
        legacy = self.directory.parent / "rules-state.json"
        if legacy.exists():
            try:
                saved.update(json.loads(legacy.read_text()))
            except (OSError, ValueError) as err:
                log.warning("%s: cannot read the former rule state (%s)", legacy, err)
        try:
            paths = sorted(self.directory.glob("*.json"))
        except OSError:
            paths = []
        for path in paths:
            try:
                state = orjson.loads(path.read_bytes())
            except (OSError, ValueError) as err:
                log.warning("%s: cannot read the rule's saved state (%s); it starts afresh", path, err)
                continue
            if isinstance(state, dict):
                saved[path.stem] = state
        return saved

    def save(self, name: str, state: dict[str, Any]) -> None:
        """Replace one rule's file atomically: a crash leaves the old state or the new, never half of one."""
        if not _SAFE.fullmatch(name):
            raise ValueError(f"not a rule name: {name!r}")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{name}.json"
        tmp = self.directory / f".{name}.tmp"
        body = orjson.dumps(state)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)  # the data before the rename, so a power cut cannot leave an empty file behind
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self.bytes_written += len(body)
        self.writes += 1

    def save_soon(self, name: str, state: dict[str, Any]) -> None:
        """`save` in the worker thread (at once if it is idle); a newer state of the rule replaces a waiting one."""
        with self._lock:
            idle = not self._pending
            self._pending[name] = state
        if idle:
            self._writer.submit(self._save_pending)

    def save_now(self, name: str, state: dict[str, Any]) -> Future[None]:
        """`save` in the worker thread, after every state handed over before; done once this one is on disk
        (or failed to be written, which is logged)."""
        with self._lock:
            self._pending[name] = state
        return self._writer.submit(self._save_pending)

    def _save_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for name, state in pending.items():
            try:
                self.save(name, state)
            except (OSError, ValueError) as err:
                log.warning("%s: cannot save the state of rule %s: %s", self.directory, name, err)

    def drain(self) -> None:
        """Wait until every state handed to `save_soon` so far is written (the worker keeps running)."""
        self._writer.submit(lambda: None).result()

    def close(self) -> None:
        """Wait until every state handed to `save_soon` is written."""
        self._writer.shutdown(wait=True)


def read_saved(data: Path) -> dict[str, dict[str, Any]]:
    """The saved state of the rules in a data directory (for `roost rules list` without a running hub)."""
    return RuleStateStore(data / "rules-state").load()
