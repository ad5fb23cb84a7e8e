"""Influx line protocol to readings and back, with VictoriaMetrics' naming: field `value` of measurement `m`
is metric `m`, any other field `f` is metric `m_f`; tags become labels.

Syntax is left to the C parser of `line-protocol-parser`; this module maps its dicts onto roost's words and
turns every problem into a `LineError` so one bad line (or one bad field) never costs the rest of a body.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from line_protocol_parser import parse_line

from roost.errors import InvalidReading
from roost.model import Reading, Series, now_ms, timestamp_problem

if TYPE_CHECKING:
    from roost.store.engine import SeriesData

__all__ = ["PRECISIONS", "LineError", "ParseResult", "format_lines", "parse_lines"]

# Nanoseconds per unit; Influx's `precision` query parameter, `u` being its old spelling of `us`.
PRECISIONS = {"ns": 1, "us": 1_000, "u": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_NS_PER_MS = 1_000_000

# Influx has no NaN or infinity literal, so the C parser rejects `x=NaN` as a syntax error; this finds such
# fields so the line can be re-parsed without them and the reading reported with the reason the store counts.
_NONFINITE_FIELD = re.compile(r"(?<=[ ,])((?:[^,= \\]|\\.)+)=([+-]?(?:nan|inf(?:inity)?))(?=[, ]|$)", re.IGNORECASE)
_UNESCAPE = re.compile(r"\\(.)")
_NO_FIELDS: dict[str, str] = {}  # never written to: lines the C parser took whole have no NaN fields


@dataclass(frozen=True, slots=True)
class LineError:
    """One rejected line (or one rejected field of a line): its 1-based number, the counted reason and why."""

    line: int
    reason: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(slots=True)
class ParseResult:
    readings: list[Reading] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)


def parse_lines(text: str, *, precision: str = "ns", default_ts_ms: int) -> ParseResult:
    """Readings of every good line and field of a line-protocol body, and a LineError for each bad one.

    Timestamps are read in `precision` units and stored in ms; lines without one get `default_ts_ms`.
    Never raises for bad input (only for an unknown `precision`, which is the caller's parameter).
    """
    result = ParseResult()
    readings = result.readings
    _Parser(precision, default_ts_ms).parse(
        text, lambda series, ts_ms, value, _line: readings.append(Reading(series, ts_ms, value)), result.errors
    )
    return result


def format_lines(data: Iterable[SeriesData]) -> Iterator[str]:
    """One line per sample, `metric,label=value value=<float> <timestamp>`, newline-terminated.

    Timestamps are written in nanoseconds (ms * 1e6), Influx's default precision, so the output can be posted to
    any Influx-compatible endpoint without a `precision` parameter. Label values cannot hold a newline in line
    protocol; one is written as the two characters `\\n`.
    """
    for sd in data:
        head = _escape_measurement(sd.series.metric) + "".join(
            f",{_escape_tag(k)}={_escape_tag(v)}" for k, v in sd.series.labels if v != ""
        )
        for ts_ms, value in zip(sd.ts.tolist(), sd.values.tolist()):
            yield f"{head} value={value!r} {ts_ms * _NS_PER_MS}\n"


def _escape_measurement(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def _escape_tag(text: str) -> str:
    return (
        text.replace("\\", "\\\\")
        .replace(",", "\\,")
        .replace("=", "\\=")
        .replace(" ", "\\ ")
        .replace("\n", "\\n")
    )


# Called once per accepted sample with (series, ts_ms, value, line number).
Sink = Callable[[Series, int, float, int], None]


class _Parser:
    """The shared core of `parse_lines` and the line-protocol import: one C parse per line, series cached."""

    def __init__(self, precision: str, default_ts_ms: int):
        if precision not in PRECISIONS:
            raise InvalidReading(
                "bad_precision", f"precision {precision!r} is not one of {', '.join(PRECISIONS)} (Influx's units)"
            )
        self.ns_per_unit = PRECISIONS[precision]
        self.default_ts_ms = int(default_ts_ms)
        self.now_ms = now_ms()
        # (measurement, tags as parsed, field) -> Series, or the InvalidReading that naming it raised
        self._series: dict[tuple, Series | InvalidReading] = {}

    def parse(self, text: str, sink: Sink, errors: list[LineError], first_line: int = 1) -> int:
        """Feed every sample of `text` to `sink`, append problems to `errors`; returns lines that gave nothing."""
        skipped = 0
        number = first_line - 1
        for line in text.split("\n"):
            number += 1
            line = line.strip()
            if not line or line[0] == "#":
                continue
            if not self._parse_line(line, number, sink, errors):
                skipped += 1
        return skipped

    def _parse_line(self, line: str, number: int, sink: Sink, errors: list[LineError]) -> bool:
        nonfinite: dict[str, str] = _NO_FIELDS
        try:
            point = parse_line(line)
        except Exception as exc:  # LineFormatError, or a UnicodeError for lone surrogates
            nonfinite = {}
            point = self._parse_without_nonfinite(line, nonfinite)
            if point is None:
                errors.append(
                    LineError(
                        number,
                        "syntax",
                        f"cannot parse {_clip(line)} ({exc}); expected "
                        "measurement[,tag=value...] field=value[,field=value...] [timestamp]",
                    )
                )
                return False
        measurement, tags, fields, ts = point["measurement"], point["tags"], point["fields"], point["time"]
        if ts is None:
            ts_ms = self.default_ts_ms
        else:
            ts_ms = ts * self.ns_per_unit // _NS_PER_MS
            problem = timestamp_problem(ts_ms, self.now_ms)
            if problem:
                errors.append(LineError(number, "bad_timestamp", f"{problem}: {_clip(line)}"))
                return False
        tag_key = tuple(tags.items())
        known = self._series
        kept = False
        for name, value in fields.items():
            series = known.get((measurement, tag_key, name))
            if series is None:
                series = known[(measurement, tag_key, name)] = self._name(measurement, tags, name)
            # the common case first: the parser's floats are always finite (it refuses 1e400, NaN and inf)
            if type(value) is float and type(series) is Series and not nonfinite:
                sink(series, ts_ms, value, number)
                kept = True
            elif self._check(series, name, value, nonfinite, number, errors):
                sink(series, ts_ms, float(value), number)  # bools and integers (`2i`, `2u`) as floats
                kept = True
        return kept

    @staticmethod
    def _check(
        series: Series | InvalidReading, name: str, value: object, nonfinite: dict[str, str], number: int,
        errors: list[LineError],
    ) -> bool:
        if isinstance(series, InvalidReading):
            errors.append(LineError(number, series.reason, str(series)))
        elif name in nonfinite:
            problem = "NaN" if nonfinite[name] == "nan" else "infinite"
            errors.append(LineError(number, nonfinite[name], f"{series}: value is {problem}"))
        elif isinstance(value, str):
            errors.append(LineError(number, "non_numeric", f"{series}: string value {_clip(value)} is not a number"))
        elif math.isinf(float(value)):
            errors.append(LineError(number, "inf", f"{series}: value is infinite"))
        else:
            return True
        return False

    @staticmethod
    def _parse_without_nonfinite(line: str, nonfinite: dict[str, str]) -> dict | None:
        """Re-parse a rejected line with NaN/inf fields set to 0, noting those fields; None if still bad."""
        found = {}

        def zero(match: re.Match) -> str:
            literal = match.group(2).lower().lstrip("+-")
            found[_UNESCAPE.sub(r"\1", match.group(1))] = "nan" if literal == "nan" else "inf"
            return f"{match.group(1)}=0"

        patched = _NONFINITE_FIELD.sub(zero, line)
        if not found:
            return None
        try:
            point = parse_line(patched)
        except Exception:
            return None
        nonfinite.update(found)
        return point

    @staticmethod
    def _name(measurement: str, tags: dict[str, str], field_name: str) -> Series | InvalidReading:
        metric = measurement if field_name == "value" else f"{measurement}_{field_name}"
        # The C parser only unescapes `\,`, `\=` and `\ `; Influx also reads `\\` as one backslash.
        if "\\\\" in metric or any("\\\\" in k or "\\\\" in v for k, v in tags.items()):
            metric = metric.replace("\\\\", "\\")
            tags = {k.replace("\\\\", "\\"): v.replace("\\\\", "\\") for k, v in tags.items()}
        try:
            return Series.of(metric, tags)
        except InvalidReading as exc:
            return exc


def _clip(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
