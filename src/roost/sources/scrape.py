"""Prometheus exporters, scraped like Prometheus does: `[[source.scrape]]`.

Every `interval` (on a grid of wall-clock multiples) the source GETs the text exposition, parses it with
prometheus_client's parser and stores each sample under its exposed name (`_total`, `_bucket{le=...}`, `_sum`,
`_count`) with the exporter's labels plus `job`, `instance` and the configured labels. Like Prometheus it also
stores `up`, `scrape_duration_seconds` and `scrape_samples_scraped` for the target, so a dead exporter shows as
`up 0` rather than as silence.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from roost import __version__
from roost.durations import Duration
from roost.errors import InvalidReading, SourceError
from roost.model import Reading, Series, now_ms
from roost.secret import Secret
from roost.sources.base import Source, label_problems

# Larger than any sane exposition (node_exporter sends ~100 kB); beyond it a misconfigured URL is streaming a file.
_MAX_BODY_BYTES = 32 * 1024 * 1024
_ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
_STATUS_HINTS = {
    401: " — does it need a bearer_token?",
    403: " — is the bearer_token right?",
    404: " — is the URL the exporter's metrics path?",
}


def _check_url(url: str) -> None:
    try:
        parsed = URL(url)
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f'expected an exporter URL like "http://127.0.0.1:9100/metrics", got {url!r}')


def _check_regex(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"expected a regular expression, got {pattern!r} ({err})") from None


@dataclass(frozen=True, slots=True)
class ScrapeSettings:
    """`[[source.scrape]]`: one exporter URL; `metrics` (a regex matching whole names) keeps only some metrics."""

    url: str = field(metadata={"check": _check_url})
    name: str = ""
    interval_ms: Duration = field(default=Duration(15_000), metadata={"min": 1000})
    timeout_ms: Duration = field(default=Duration(10_000), metadata={"min": 100})
    job: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    metrics: str | None = field(default=None, metadata={"check": _check_regex})
    bearer_token: Secret | None = None

    def _validate(self) -> list[str]:
        problems = []
        if self.timeout_ms >= self.interval_ms:
            problems.append(
                f"timeout: must be shorter than interval ({self.timeout_ms} ms >= {self.interval_ms} ms), "
                "or scrapes would overlap"
            )
        hint = " (set job with the `job` key)"
        return problems + label_problems(self.labels, {"job": hint, "instance": hint})

    @property
    def instance(self) -> str:
        """`host:port` of the URL, the port defaulted from the scheme, as Prometheus labels the target."""
        url = URL(self.url)
        host = f"[{url.host}]" if url.host and ":" in url.host else url.host
        return f"{host}:{url.port}"


@dataclass(frozen=True, slots=True)
class _Scraped:
    """What one scrape produced: readings of the exposition, how many samples it had, NaNs skipped."""

    readings: list[Reading]
    samples: int
    nan: int
    rejected: list[InvalidReading]


class ScrapeSource(Source):
    kind = "scrape"
    settings: ScrapeSettings

    def __init__(self, settings: ScrapeSettings, ctx):
        super().__init__(settings, ctx)
        self.target = {"job": settings.job or ctx.name, "instance": settings.instance, **settings.labels}
        self._allowed = re.compile(settings.metrics) if settings.metrics is not None else None
        self._session: aiohttp.ClientSession | None = None
        self._series: dict[tuple, Series | InvalidReading] = {}

    async def __aenter__(self) -> ScrapeSource:
        headers = {
            "Accept": _ACCEPT,
            "User-Agent": f"roost/{__version__}",
            "X-Prometheus-Scrape-Timeout-Seconds": f"{self.settings.timeout_ms / 1000:g}",
        }
        if self.settings.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self.settings.bearer_token.reveal()}"
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=self.settings.timeout_ms / 1000)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def run(self) -> None:
        interval = self.settings.interval_ms
        while True:
            await self.scrape()
            wall = now_ms()
            await asyncio.sleep(((wall // interval + 1) * interval - wall) / 1000)

    async def scrape(self) -> bool:
        """Scrape once, store the samples and `up`; a failure is counted and stored as `up 0`, never raised."""
        ts = now_ms()
        started = time.monotonic()
        scraped: _Scraped | None = None
        try:
            text = await self._fetch()
            scraped = await asyncio.to_thread(self._parse, text, ts)
        except _ScrapeFailed as err:
            self.ctx.error(err.reason, f"{self.settings.url}: {err}")
        duration = time.monotonic() - started
        readings = scraped.readings if scraped is not None else []
        if scraped is not None:
            for problem in scraped.rejected:
                self.ctx.reject(problem.reason, f"{self.target['job']}/{self.target['instance']}", str(problem))
            if scraped.nan:
                self.ctx.log.debug("%s: skipped %d NaN sample(s)", self.settings.url, scraped.nan)
        health = {
            "up": 1.0 if scraped is not None else 0.0,
            "scrape_duration_seconds": duration,
            "scrape_samples_scraped": float(scraped.samples if scraped is not None else 0),
        }
        readings += [Reading(Series.of(name, self.target), ts, value) for name, value in health.items()]
        self.ctx.emit(readings, success=scraped is not None)
        self.ctx.up(scraped is not None)
        return scraped is not None

    async def _fetch(self) -> str:
        assert self._session is not None, "use `async with ScrapeSource(...)`"
        try:
            async with self._session.get(self.settings.url) as resp:
                if resp.status != 200:
                    hint = _STATUS_HINTS.get(resp.status, "")
                    raise _ScrapeFailed("http_status", f"HTTP {resp.status} {resp.reason}{hint}")
                if resp.content_length is not None and resp.content_length > _MAX_BODY_BYTES:
                    raise _ScrapeFailed("too_large", f"{resp.content_length} bytes is more than {_MAX_BODY_BYTES}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > _MAX_BODY_BYTES:
                        raise _ScrapeFailed("too_large", f"the exposition is larger than {_MAX_BODY_BYTES} bytes")
                return body.decode("utf-8", errors="replace")  # the text format is UTF-8 by definition
        except TimeoutError:
            raise _ScrapeFailed(
                "timeout", f"no complete answer within {self.settings.timeout_ms} ms (raise `timeout`?)"
            ) from None
        except aiohttp.ClientError as err:
            raise _ScrapeFailed("unreachable", f"{err} — is the exporter running?") from None

    def _parse(self, text: str, ts: int) -> _Scraped:
        """Readings from the exposition text (runs in a worker thread: big expositions take a while)."""
        from prometheus_client.parser import text_string_to_metric_families

        readings: list[Reading] = []
        rejected: list[InvalidReading] = []
        samples = nan = 0
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    samples += 1
                    if self._allowed is not None and not self._allowed.fullmatch(sample.name):
                        continue
                    value = sample.value
                    if math.isnan(value):  # legit in expositions (a summary with no observations yet)
                        nan += 1
                        continue
                    series = self._series_of(sample.name, sample.labels)
                    if isinstance(series, InvalidReading):
                        rejected.append(series)
                        continue
                    if math.isinf(value):
                        rejected.append(InvalidReading("inf", f"{series}: value is infinite"))
                        continue
                    readings.append(Reading(series, _sample_ms(sample.timestamp, ts), value))
        except ValueError as err:  # the parser's only complaint; like Prometheus, a broken exposition fails whole
            raise _ScrapeFailed("parse", f"not a Prometheus text exposition ({err})") from None
        return _Scraped(readings, samples, nan, rejected)

    def _series_of(self, name: str, labels: dict[str, str]) -> Series | InvalidReading:
        key = (name, tuple(labels.items()))
        series = self._series.get(key)
        if series is None:
            if len(self._series) > 100_000:  # an exporter churning label values must not grow this forever
                self._series.clear()
            # As Prometheus without honor_labels: the target's labels win, the exporter's move to exported_<name>.
            merged = {(f"exported_{k}" if k in self.target else k): v for k, v in labels.items()}
            try:
                series = Series.of(name, merged, **self.target)
            except InvalidReading as err:
                series = err
            self._series[key] = series
        return series


class _ScrapeFailed(SourceError):
    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def _sample_ms(timestamp: object, default: int) -> int:
    if timestamp is None:
        return default
    if isinstance(timestamp, (int, float)):
        return round(timestamp * 1000)
    return timestamp.sec * 1000 + timestamp.nsec // 1_000_000  # prometheus_client's Timestamp (OpenMetrics)
