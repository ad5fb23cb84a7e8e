"""roost's own health as Prometheus metrics, and the rate-limited log of rejected input."""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("roost")

_REJECT_LOG_INTERVAL_S = 60.0
# At most this many rejection lines per interval in all: a publisher sending a flood of distinct bad topics is
# counted in full, but fills the log with a line a minute saying how many went unlogged.
_REJECT_LOG_LINES = 50
_REJECT_MESSAGE_CHARS = 500  # a 64 KB MQTT topic is cut in the log line


class SelfMetrics:
    """Counters and gauges of one hub, in a registry of its own (so tests can run several hubs)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.readings = Counter("roost_readings", "Readings stored.", registry=r)
        self.rejected = Counter(
            "roost_rejected_readings", "Readings refused at the boundary, by reason.", ["reason"], registry=r
        )
        self.bus_dropped = Counter(
            "roost_bus_dropped", "Items dropped from a slow bus subscriber's full queue.", ["subscriber"], registry=r
        )
        self.store_errors = Counter("roost_store_write_errors", "Failed store writes, by reason.", ["reason"], registry=r)
        self.series = Gauge("roost_store_series", "Series in the store.", registry=r)
        self.head_samples = Gauge("roost_store_head_samples", "Samples not yet compacted into chunks.", registry=r)
        self.buffered = Gauge(
            "roost_store_buffered_readings", "Readings waiting in memory for the store (disk full).", registry=r
        )
        self.disk_bytes = Gauge("roost_store_disk_bytes", "Bytes of the data directory on disk.", registry=r)
        self.compactions = Counter("roost_store_compactions", "Compactions of recent data into chunks.", registry=r)
        self.source_up = Gauge("roost_source_up", "1 while a source is connected and working.", ["source"], registry=r)
        self.source_readings = Counter("roost_source_readings", "Readings a source produced.", ["source"], registry=r)
        self.source_errors = Counter(
            "roost_source_errors", "Errors of a source, by reason.", ["source", "reason"], registry=r
        )
        self.source_last_success = Gauge(
            "roost_source_last_success_timestamp_seconds", "When a source last produced a reading.", ["source"], registry=r
        )
        self._last_logged: dict[tuple[str, str], float] = {}
        self._log_window = (-_REJECT_LOG_INTERVAL_S, 0, 0)  # (start, lines logged, rejections not logged) of this minute

    def reject(self, reason: str, series: str, message: str, count: int = 1) -> None:
        """Count a rejected reading and log it: at most once per series and reason per minute, and at most
        `_REJECT_LOG_LINES` lines a minute in all (then one line with how many more there were)."""
        self.rejected.labels(reason=reason).inc(count)
        key = (series, reason)
        now = time.monotonic()
        if now - self._last_logged.get(key, -_REJECT_LOG_INTERVAL_S) < _REJECT_LOG_INTERVAL_S:
            return
        start, lines, unlogged = self._log_window
        if now - start >= _REJECT_LOG_INTERVAL_S:
            if unlogged:
                log.warning("%d more rejected readings were not logged (over %d lines a minute; all are counted in "
                            "roost_rejected_readings_total)", unlogged, _REJECT_LOG_LINES)
            start, lines, unlogged = now, 0, 0
        if lines >= _REJECT_LOG_LINES:
            self._log_window = (start, lines, unlogged + count)
            return
        self._log_window = (start, lines + 1, unlogged)
        self._last_logged[key] = now
        if len(self._last_logged) > 50_000:
            self._last_logged.clear()
        if len(message) > _REJECT_MESSAGE_CHARS:
            message = message[: _REJECT_MESSAGE_CHARS - 1] + "…"
        log.warning("rejected reading (%s): %s", reason, message)


class RuleCollector:
    """`roost_rule_runs_total`, `roost_rule_errors_total` and `roost_rule_enabled` per rule, read at scrape time
    from a rules engine (anything with `runtimes` of objects with `name`, `runs_total`, `errors_total`, `enabled`)."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def collect(self):
        runs = CounterMetricFamily("roost_rule_runs", "Rule actions started since the hub started.", labels=["rule"])
        errors = CounterMetricFamily("roost_rule_errors", "Rule actions that raised since the hub started.", labels=["rule"])
        enabled = GaugeMetricFamily("roost_rule_enabled", "1 while a rule is enabled.", labels=["rule"])
        for rt in list(self.engine.runtimes.values()):
            runs.add_metric([rt.name], rt.runs_total)
            errors.add_metric([rt.name], rt.errors_total)
            enabled.add_metric([rt.name], 1.0 if rt.enabled else 0.0)
        return [runs, errors, enabled]

