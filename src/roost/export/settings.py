"""`[[export.remote_write]]` and `[[export.influx]]`: where roost streams every stored reading."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from roost.durations import Duration
from roost.model import LABEL_NAME
from roost.secret import Secret

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_size(text: str) -> int:
    """`512MB`, `1GiB`, `64KB` → bytes; ValueError says what was expected."""
    m = _SIZE.fullmatch(str(text).strip())
    if not m:
        raise ValueError(f'expected a size like "256MB" or "1GiB", got {text!r}')
    return int(float(m[1]) * _UNITS[m[2].lower()])


def _check_size(text: str) -> None:
    if parse_size(text) < 1024 * 1024:
        raise ValueError(f"expected at least 1MB, got {text!r}")


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f'expected an http(s) URL like "http://127.0.0.1:8428/api/v1/write", got {url!r}')




@dataclass(frozen=True, slots=True)
class _Target:
    url: str = field(metadata={"check": _check_url})
    name: str = ""
    batch: int = field(default=2000, metadata={"min": 1, "max": 100_000})  # readings per request
    flush_interval_ms: Duration = field(default=Duration(5000), metadata={"min": 10})
    max_buffer: str = field(default="256MB", metadata={"check": _check_size})
    extra_labels: dict[str, str] = field(default_factory=dict)
    timeout_ms: Duration = field(default=Duration(30_000), metadata={"min": 100})
    max_backoff_ms: Duration = field(default=Duration(60_000), metadata={"min": 10})

    @property
    def max_buffer_bytes(self) -> int:
        return parse_size(self.max_buffer)

    def _validate(self) -> list[str]:
        return [
            f"extra_labels: expected label names of letters, digits and '_' (not starting with '__'), got {name!r}"
            for name in self.extra_labels
            if not LABEL_NAME.match(name) or name.startswith("__")
        ]


@dataclass(frozen=True, slots=True)
class RemoteWriteTarget(_Target):
    """A Prometheus remote-write endpoint (Prometheus, VictoriaMetrics, Mimir, Thanos receive, Grafana Cloud)."""

    bearer_token: Secret | None = None


@dataclass(frozen=True, slots=True)
class InfluxTarget(_Target):
    """An InfluxDB line-protocol write URL (`.../write?db=home` for 1.x, `.../api/v2/write?org=&bucket=` for 2.x)."""

    token: Secret | None = None  # sent as `Authorization: Token ...`


@dataclass(frozen=True, slots=True)
class ExportSettings:
    """`[export]`: the targets every stored reading is streamed to."""

    remote_write: list[RemoteWriteTarget] = field(default_factory=list)
    influx: list[InfluxTarget] = field(default_factory=list)

    def targets(self) -> list[tuple[str, str, _Target]]:
        """(kind, name, settings) of every target; an unnamed target is `<kind>[i]`."""
        out = []
        for kind in ("remote_write", "influx"):
            for i, t in enumerate(getattr(self, kind)):
                out.append((kind, t.name or f"{kind}[{i}]", t))
        return out

    def _validate(self) -> list[str]:
        seen: set[str] = set()
        problems = []
        for kind, name, _t in self.targets():
            if name in seen:
                problems.append(f"{kind}: two export targets are named {name!r}: names must be unique")
            seen.add(name)
        return problems
