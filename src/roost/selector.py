"""Series selectors as Prometheus writes them: `temperature_celsius{room=~"lounge|bedroom", source!="demo"}`."""

from __future__ import annotations

import re
from dataclasses import dataclass

import promql_parser

from roost.errors import QueryError
from roost.model import Series

# MatchOp values are not hashable, so they are looked up by name.
_OPS = {"MatchOp.Equal": "=", "MatchOp.NotEqual": "!=", "MatchOp.Re": "=~", "MatchOp.NotRe": "!~"}


def parse_expr(text: str):
    """`promql_parser.parse(text)`; raises ValueError or RuntimeError with the parser's message.

    The parser (Rust) panics on some input, e.g. a range of 10^38 seconds; pyo3's PanicException derives from
    BaseException, so it would pass every handler (an HTTP request's connection was dropped): it is a ValueError here,
    as is an OverflowError for a duration beyond Python's timedelta. Such a duration can also be read lazily, as an
    attribute of the tree (`x offset 5e15`): an OverflowError then, which callers turn into their own error.
    """
    try:
        return promql_parser.parse(text)
    except (ValueError, RuntimeError):
        raise
    except OverflowError as exc:  # a duration beyond what Python's timedelta holds
        raise ValueError(f"a duration is out of range ({exc})") from None
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        raise ValueError(f"cannot parse it, a duration or number may be out of range ({exc})") from None


def has_offset_or_at(expr) -> bool:
    """Whether a parsed selector has an `offset` or `@` (an offset beyond Python's timedelta counts as one)."""
    try:
        return expr.offset is not None or expr.at is not None
    except OverflowError:  # an offset beyond Python's timedelta
        return True


@dataclass(frozen=True, slots=True)
class Matcher:
    name: str  # "__name__" for the metric name
    op: str  # one of = != =~ !~
    value: str

    def matches(self, actual: str) -> bool:
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = re.fullmatch(self.value, actual) is not None
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True, slots=True)
class Selector:
    """A parsed vector selector; `matches(series)` applies every matcher, missing labels read as ""."""

    text: str
    matchers: tuple[Matcher, ...]

    @classmethod
    def parse(cls, text: str) -> Selector:
        try:
            expr = parse_expr(text)
        except Exception as exc:  # the parser raises plain ValueError/RuntimeError with its own message
            raise QueryError(f"cannot parse selector {text!r}: {exc}") from None
        if not isinstance(expr, promql_parser.VectorSelector) or has_offset_or_at(expr):
            raise QueryError(f"{text!r} is not a plain series selector such as temperature_celsius{{room=\"lounge\"}}")
        try:
            matchers = matchers_of(expr)
        except ValueError as exc:
            raise QueryError(f"selector {text!r}: {exc}") from None
        if not any(m.op in ("=", "=~") and not m.matches("") for m in matchers):
            raise QueryError(f"selector {text!r} must have a metric name or a label matcher that excludes empty values")
        return cls(text, matchers)

    def matches(self, series: Series) -> bool:
        labels = series.label_dict
        for m in self.matchers:
            actual = series.metric if m.name == "__name__" else labels.get(m.name, "")
            if not m.matches(actual):
                return False
        return True


def matchers_of(node: promql_parser.VectorSelector) -> tuple[Matcher, ...]:
    """The matchers of a parsed vector selector; ValueError names a regular expression that does not compile."""
    matchers = []
    if node.name:
        matchers.append(Matcher("__name__", "=", node.name))
    for m in node.matchers.matchers:
        op = _OPS[str(m.op)]
        if op in ("=~", "!~"):
            try:
                re.compile(m.value)
            except re.error as exc:
                raise ValueError(f"bad regular expression {m.value!r}: {exc}") from None
        matchers.append(Matcher(m.name, op, m.value))
    return tuple(matchers)
