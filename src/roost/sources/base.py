"""What every device source shares: the small protocol, its self-metrics, and how the hub supervises it.

A source is an async context manager: `__aenter__` connects (or raises SourceError saying what is wrong),
`run()` produces readings until cancelled, `__aexit__` always cleans up. It hands readings to the hub through
`SourceContext.emit` and reports through `SourceContext` what went wrong (counted by reason, logged at most
once per minute per reason), so one malformed payload or one dead device never stops it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import ClassVar

from roost.errors import SourceError
from roost.model import LABEL_NAME, Reading
from roost.telemetry import SelfMetrics

log = logging.getLogger("roost.sources")

_LOG_INTERVAL_S = 60.0


def label_problems(labels, reserved: dict[str, str], *, quote=lambda name: f'"{name}"') -> list[str]:
    """Config problems of a source's extra `labels`: invalid names, and names the source sets itself.

    `reserved` maps each label the source sets to a hint appended to the message ("" for none).
    """
    problems = []
    for label in labels:
        if not LABEL_NAME.fullmatch(label) or label.startswith("__"):
            problems.append(f"labels: {quote(label)} is not a label name (letters, digits and _, not starting with a digit)")
        elif label in reserved:
            problems.append(f"labels: {quote(label)} is set by the source itself{reserved[label]}")
    return problems


class SourceContext:
    """A source's handle on the hub: emit readings, report health. Metrics carry `source=<name>`."""

    def __init__(self, name: str, metrics: SelfMetrics, emit: Callable[[list[Reading]], None]):
        self.name = name
        self._metrics = metrics
        self._emit = emit
        self._logged: dict[str, float] = {}
        self.log = logging.getLogger(f"roost.sources.{name}")
        metrics.source_up.labels(source=name).set(0)

    def emit(self, readings: Iterable[Reading], *, success: bool = True) -> int:
        """Hand readings to the store; `success=False` for health readings of a failed poll (`up 0`)."""
        batch = list(readings)
        if batch:
            self._emit(batch)
            self._metrics.source_readings.labels(source=self.name).inc(len(batch))
            if success:
                self.success()
        return len(batch)

    def success(self) -> None:
        self._metrics.source_last_success.labels(source=self.name).set(time.time())

    def up(self, is_up: bool) -> None:
        self._metrics.source_up.labels(source=self.name).set(1 if is_up else 0)

    def error(self, reason: str, message: str) -> None:
        """Count an error by reason and log it, at most once per reason per minute."""
        self._metrics.source_errors.labels(source=self.name, reason=reason).inc()
        now = time.monotonic()
        if now - self._logged.get(reason, -_LOG_INTERVAL_S) >= _LOG_INTERVAL_S:
            self._logged[reason] = now
            self.log.warning("%s: %s", reason, message)

    def reject(self, reason: str, series: str, message: str) -> None:
        """A reading refused at the boundary (bad payload value): counted as rejected and as a source error."""
        self._metrics.reject(reason, series, f"{self.name}: {message}")
        self._metrics.source_errors.labels(source=self.name, reason=reason).inc()


class Source(ABC):
    """Base of every source module; `kind` is its config table name (`[[source.<kind>]]`)."""

    kind: ClassVar[str]

    def __init__(self, settings, ctx: SourceContext):
        self.settings = settings
        self.ctx = ctx

    async def __aenter__(self) -> Source:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    @abstractmethod
    async def run(self) -> None:
        """Produce readings until cancelled."""


async def supervise(make: Callable[[], Source], ctx: SourceContext, *, max_backoff_s: float = 60.0) -> None:
    """Run a source forever: when it fails (cannot connect, connection lost), log, mark it down, back off, retry."""
    backoff = 1.0
    while True:
        try:
            async with make() as source:
                backoff = 1.0  # connected: the next failure starts the back-off afresh
                await source.run()
        except asyncio.CancelledError:
            raise
        except SourceError as err:
            ctx.error("failed", f"{err} — retrying in {backoff:.0f} s")
        except Exception:  # a bug in a source must not take the hub down: log it whole and retry
            log.exception("source %s crashed; retrying in %.0f s", ctx.name, backoff)
            ctx._metrics.source_errors.labels(source=ctx.name, reason="crash").inc()
        ctx.up(False)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff_s)
