"""The words every module uses: Series and Reading (things and rules come later)."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

from roost.errors import InvalidReading

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass(frozen=True, slots=True)
class Series:
    """A metric name plus labels, Prometheus style; labels are sorted so equal series hash equal."""

    metric: str
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, metric: str, labels: dict[str, str] | None = None, /, **more: str) -> Series:
        """Build and validate a series; raises InvalidReading naming the bad part."""
        merged = dict(labels or {}, **more)
        if not METRIC_NAME.match(metric or ""):
            raise InvalidReading(
                "invalid_metric_name",
                f"metric name {metric!r} is not valid: use letters, digits, '_' and ':', not starting with a digit",
            )
        for name, value in merged.items():
            if not LABEL_NAME.match(name) or name.startswith("__"):
                raise InvalidReading(
                    "invalid_label_name",
                    f"label name {name!r} of {metric} is not valid: use letters, digits and '_', "
                    "not starting with a digit or '__'",
                )
            if not isinstance(value, str):
                raise InvalidReading("invalid_label_value", f"label {name} of {metric} must be a string, got {value!r}")
        return cls(metric, tuple(sorted((k, v) for k, v in merged.items() if v != "")))

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)

    def __str__(self) -> str:
        if not self.labels:
            return self.metric
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in self.labels)
        return f"{self.metric}{{{inner}}}"


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample: a series, a UTC timestamp in milliseconds and a float value."""

    series: Series
    ts_ms: int
    value: float

    @classmethod
    def checked(cls, series: Series, ts_ms: int, value: object) -> Reading:
        """Validate a value from outside (payload, file): numeric and finite, else InvalidReading."""
        if isinstance(value, bool):
            number = float(value)
        else:
            try:
                number = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise InvalidReading("non_numeric", f"{series}: value {value!r} is not a number") from None
        if math.isnan(number):
            raise InvalidReading("nan", f"{series}: value is NaN")
        if math.isinf(number):
            raise InvalidReading("inf", f"{series}: value is infinite")
        return cls(series, int(ts_ms), number)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# Readings from before 1970 or more than this far ahead of the hub's clock are refused (reason `bad_timestamp`):
# a device with a wrong clock must not scatter chunks across centuries that every long read then walks.
MAX_FUTURE_MS = 2 * 86_400_000


def timestamp_problem(ts_ms: int, now: int | None = None) -> str | None:
    """Why a reading's timestamp cannot be stored, or None when it can."""
    if ts_ms < 0:
        return f"timestamp {ts_ms} ms is before 1970"
    if ts_ms > (now if now is not None else now_ms()) + MAX_FUTURE_MS:
        return f"timestamp {ts_ms} ms is more than 2 days ahead of this hub's clock (check the device's clock)"
    return None
