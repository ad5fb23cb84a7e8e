"""Streams every stored reading to one target: the bus feeds the target's disk buffer, a sender drains it.

Two tasks per target. The spooler appends each batch of readings taken from the hub's bus to the disk buffer
at once, so a reading is on disk moments after it is stored, whatever state the target is in. The sender
reads up to `batch` readings from the acknowledged offset (or fewer once `flush_interval` has passed), posts
them, and records the new offset only after a 2xx. Network errors, 5xx and 429 are retried with exponential
backoff up to `max_backoff`; any other 4xx means the target will never take that batch, so it is dropped and
counted (reason "rejected") instead of blocking everything behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from roost.bus import Subscription
from roost.export.buffer import DiskBuffer
from roost.export.prompb import HEADERS, encode_write_request
from roost.export.settings import InfluxTarget, RemoteWriteTarget
from roost.model import Reading

if TYPE_CHECKING:
    from roost.hub import Hub

log = logging.getLogger("roost.export")

_SPOOL_MAX = 10_000  # readings per buffer frame
_RETRY_AFTER_CRASH_S = 10.0


class ExportMetrics:
    """The export families of one hub's registry, shared by its targets."""

    def __init__(self, registry: CollectorRegistry):
        self.sent = Counter("roost_export_sent", "Readings delivered to an export target.", ["target"], registry=registry)
        self.dropped = Counter(
            "roost_export_dropped",
            "Readings an export target will never get: buffer_full (oldest dropped at max_buffer), "
            "rejected (the target answered 4xx).",
            ["target", "reason"],
            registry=registry,
        )
        self.failures = Counter(
            "roost_export_failures", "Failed deliveries (retried) to an export target.", ["target"], registry=registry
        )
        self.pending = Gauge(
            "roost_export_pending_readings", "Readings buffered on disk, not yet delivered.", ["target"], registry=registry
        )
        self.buffer_bytes = Gauge(
            "roost_export_buffer_bytes", "Bytes of an export target's on-disk buffer.", ["target"], registry=registry
        )


def start_exporters(hub: Hub) -> None:
    """Start one supervised exporter per configured target, for the hub's lifetime."""
    targets = hub.settings.export.targets()
    if not targets:
        return
    metrics = ExportMetrics(hub.metrics.registry)
    for _kind, name, target in targets:
        directory = hub.settings.hub.data / "export" / re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        extra = {"site": hub.settings.hub.site} if hub.settings.hub.site else {}
        extra.update(target.extra_labels)
        # Subscribed now, not when the task first runs: readings stored in between must not be missed.
        sub = hub.bus.subscribe(f"export:{name}", maxsize=200_000)
        hub.spawn(_supervise(name, target, directory, hub.bus, sub, metrics, extra), f"export-{name}")
        log.info("export %s → %s started", name, _redacted(target.url))


async def _supervise(name, target, directory, bus, sub, metrics, extra) -> None:
    try:
        while True:
            try:
                async with Exporter(name, target, directory, sub, metrics, extra) as exporter:
                    await exporter.run()
            except (OSError, ValueError) as err:  # the buffer's disk: full, unwritable; keep the hub running
                log.error("export %s: %s — retrying in %.0f s", name, err, _RETRY_AFTER_CRASH_S)
                await asyncio.sleep(_RETRY_AFTER_CRASH_S)
    finally:
        bus.unsubscribe(sub)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""), query=""))


class Exporter:
    """`async with Exporter(...) as e: await e.run()` — one target, its buffer and its HTTP session."""

    def __init__(
        self,
        name: str,
        target: RemoteWriteTarget | InfluxTarget,
        directory: Path,
        sub: Subscription[Reading],
        metrics: ExportMetrics,
        extra_labels: dict[str, str],
    ):
        self.name = name
        self.target = target
        self.directory = directory
        self.metrics = metrics
        self.extra = extra_labels
        self.buffer: DiskBuffer | None = None
        self._sub = sub
        self._session: aiohttp.ClientSession | None = None
        self._more = asyncio.Event()
        self._url, self._headers = self._endpoint()

    def _endpoint(self) -> tuple[str, dict[str, str]]:
        t = self.target
        if isinstance(t, RemoteWriteTarget):
            headers = dict(HEADERS)
            if t.bearer_token is not None:
                headers["Authorization"] = f"Bearer {t.bearer_token.reveal()}"
            return t.url, headers
        parts = urlsplit(t.url)
        query = dict(parse_qsl(parts.query))
        query["precision"] = "ms"
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if t.token is not None:
            headers["Authorization"] = f"Token {t.token.reveal()}"
        return urlunsplit(parts._replace(query=urlencode(query))), headers

    async def __aenter__(self) -> Exporter:
        self.buffer = await asyncio.to_thread(DiskBuffer, self.directory, self.target.max_buffer_bytes)
        timeout = aiohttp.ClientTimeout(total=self.target.timeout_ms / 1000)
        self._session = aiohttp.ClientSession(timeout=timeout)
        self._update_gauges()
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Whatever the bus still holds for us goes to disk: it is sent after the restart.
        rest = self._sub.get_nowait_many(self._sub.queue.qsize())
        if self.buffer is not None and rest:
            self._append(rest)
        if self.buffer is not None:
            self.buffer.close()
        if self._session is not None:
            await self._session.close()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._spool())
            tg.create_task(self._send_loop())

    # ------------------------------------------------------------------ bus → disk

    async def _spool(self) -> None:
        while True:
            first = await self._sub.get()
            self._append([first, *self._sub.get_nowait_many(_SPOOL_MAX - 1)])
            await asyncio.sleep(0)  # let the sender and others in between long floods

    def _append(self, readings: list[Reading]) -> None:
        self.buffer.append(readings)
        if self.buffer.dropped:
            self.metrics.dropped.labels(target=self.name, reason="buffer_full").inc(self.buffer.dropped)
            log.warning(
                "export %s: buffer over max_buffer (%s): dropped the oldest %d unsent readings",
                self.name, self.target.max_buffer, self.buffer.dropped,
            )
            self.buffer.dropped = 0
        self._more.set()

    def _update_gauges(self) -> None:
        self.metrics.pending.labels(target=self.name).set(self.buffer.pending)
        self.metrics.buffer_bytes.labels(target=self.name).set(self.buffer.size_bytes)

    # ------------------------------------------------------------------ disk → target

    async def _send_loop(self) -> None:
        flush_s = self.target.flush_interval_ms / 1000
        backoff = min(0.5, self.target.max_backoff_ms / 1000)
        last_send = time.monotonic()
        while True:
            await self._wait_for_batch(last_send + flush_s)
            self.buffer.sync()
            batch = self.buffer.read(self.target.batch)
            if not batch.readings:
                self.buffer.ack(batch.end)  # empty frames only
                self._more.clear()
                continue
            delivered = await self._post(batch.readings)
            if delivered is None:  # retry the same batch later
                self.metrics.failures.labels(target=self.name).inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.target.max_backoff_ms / 1000)
                continue
            backoff = min(0.5, self.target.max_backoff_ms / 1000)
            self.buffer.ack(batch.end)
            last_send = time.monotonic()
            if delivered:
                self.metrics.sent.labels(target=self.name).inc(len(batch.readings))
            else:
                self.metrics.dropped.labels(target=self.name, reason="rejected").inc(len(batch.readings))
            self._update_gauges()

    async def _wait_for_batch(self, deadline: float) -> None:
        """Until a full batch is buffered, or the flush interval is over and something is."""
        while True:
            pending = self.buffer.end > self.buffer.acked
            if pending and (self.buffer.pending >= self.target.batch or time.monotonic() >= deadline):
                return
            self._more.clear()
            timeout = max(0.0, deadline - time.monotonic()) if pending else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._more.wait(), timeout)

    async def _post(self, readings: list[Reading]) -> bool | None:
        """True: delivered; False: refused for good (4xx); None: try again."""
        if isinstance(self.target, RemoteWriteTarget):
            body = encode_write_request(readings, self.extra)
        else:
            body = line_protocol(readings, self.extra)
        try:
            async with self._session.post(self._url, data=body, headers=self._headers) as resp:
                text = (await resp.text(errors="replace"))[:300]
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as err:
            log.warning("export %s: %s unreachable (%s) — %d readings stay buffered", self.name,
                        _redacted(self._url), err.__class__.__name__ if not str(err) else err, self.buffer.pending)
            return None
        if 200 <= status < 300:
            return True
        if status == 429 or status >= 500:
            log.warning("export %s: %s answered %d (%s) — will retry", self.name, _redacted(self._url), status, text)
            return None
        log.error("export %s: %s refused %d readings with %d (%s) — dropped", self.name, _redacted(self._url),
                  len(readings), status, text)
        return False


# ---------------------------------------------------------------------- Influx line protocol


def _escape_key(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def line_protocol(readings: list[Reading], extra_labels: dict[str, str] | None = None) -> bytes:
    """`metric,label=value value=<v> <ms>` per reading: what roost's own /write maps back to the same series."""
    prefixes: dict = {}
    lines = []
    for r in readings:
        prefix = prefixes.get(r.series)
        if prefix is None:
            labels = dict(r.series.labels)
            labels.update(extra_labels or {})
            tags = "".join(f",{_escape_key(k)}={_escape_key(v)}" for k, v in sorted(labels.items()) if v)
            prefix = prefixes[r.series] = f"{_escape_key(r.series.metric)}{tags} value="
        v = r.value
        text = repr(v) if not math.isinf(v) else ("1.7976931348623157e308" if v > 0 else "-1.7976931348623157e308")
        lines.append(f"{prefix}{text} {r.ts_ms}")
    return ("\n".join(lines) + "\n").encode()
