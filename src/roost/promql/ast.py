"""The PromQL subset roost evaluates, as small typed nodes built from `promql_parser`'s AST.

Parsing is `promql_parser.parse`; this module checks the tree against the subset once, up front, so a query
that uses anything else fails with `bad_data` naming the unsupported part before any data is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import promql_parser

from roost.promql.errors import BadData
from roost.selector import Selector, matchers_of, parse_expr

RANGE_FUNCTIONS = (
    "rate", "irate", "increase", "delta",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
)
AGGREGATIONS = ("sum", "avg", "min", "max", "count")
ARITHMETIC = ("+", "-", "*", "/", "%", "^")
COMPARISONS = ("==", "!=", ">", "<", ">=", "<=")



@dataclass(frozen=True, slots=True)
class Number:
    value: float


@dataclass(frozen=True, slots=True)
class VectorSelector:
    selector: Selector
    offset_ms: int = 0


@dataclass(frozen=True, slots=True)
class MatrixSelector:
    vector: VectorSelector
    range_ms: int


@dataclass(frozen=True, slots=True)
class RangeCall:
    func: str  # one of RANGE_FUNCTIONS
    arg: MatrixSelector


@dataclass(frozen=True, slots=True)
class Aggregate:
    op: str  # one of AGGREGATIONS
    expr: Node
    labels: tuple[str, ...] = ()
    without: bool = False  # False: `by (labels)` (no clause is `by ()`)


@dataclass(frozen=True, slots=True)
class Binary:
    op: str  # one of ARITHMETIC or COMPARISONS
    lhs: Node
    rhs: Node
    return_bool: bool = False
    on: tuple[str, ...] | None = None  # `on (...)` labels
    ignoring: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Negation:
    expr: Node


Node = Number | VectorSelector | MatrixSelector | RangeCall | Aggregate | Binary | Negation


def is_scalar(node: Node) -> bool:
    if isinstance(node, Number):
        return True
    if isinstance(node, Negation):
        return is_scalar(node.expr)
    if isinstance(node, Binary):
        return is_scalar(node.lhs) and is_scalar(node.rhs)
    return False


def parse(text: str) -> Node:
    """Parse a PromQL expression; raise BadData for syntax errors and for anything outside the subset.

    Nodes are immutable, so the trees of the queries seen last are kept: a dashboard asks the same ones again.
    """
    return _parse(text)


@lru_cache(maxsize=512)
def _parse(text: str) -> Node:
    if not text.strip():
        raise BadData("empty query: give a PromQL expression such as temperature_celsius")
    try:
        expr = parse_expr(text)
    except (ValueError, RuntimeError) as exc:
        raise BadData(f"invalid parameter \"query\": {exc}") from None
    try:
        return _convert(expr, top=True)
    except OverflowError as exc:  # a range, offset or step beyond Python's timedelta, read from the tree: x[5e15]
        raise BadData(f"invalid parameter \"query\": a duration is out of range ({exc})") from None


def _ms(delta) -> int:
    return int(round(delta.total_seconds() * 1000))


def _convert(e, top: bool = False) -> Node:
    if isinstance(e, promql_parser.ParenExpr):
        return _convert(e.expr, top)
    if isinstance(e, promql_parser.NumberLiteral):
        return Number(float(e.val))
    if isinstance(e, promql_parser.VectorSelector):
        return _vector_selector(e)
    if isinstance(e, promql_parser.MatrixSelector):
        if not top:
            raise BadData(f"a range selector ({e}) is only supported as the argument of a range function")
        return MatrixSelector(_vector_selector(e.vector_selector), _ms(e.range))
    if isinstance(e, promql_parser.UnaryExpr):
        return Negation(_convert(e.expr))
    if isinstance(e, promql_parser.Call):
        name = e.func.name
        if name not in RANGE_FUNCTIONS:
            raise BadData(f'unsupported function "{name}": roost supports {", ".join(RANGE_FUNCTIONS)}')
        (arg,) = e.args
        if isinstance(arg, promql_parser.SubqueryExpr):
            raise BadData(f"unsupported subquery {arg}")
        if not isinstance(arg, promql_parser.MatrixSelector):
            raise BadData(f"{name}() expects a range selector such as x[5m], got {arg}")
        return RangeCall(name, MatrixSelector(_vector_selector(arg.vector_selector), _ms(arg.range)))
    if isinstance(e, promql_parser.AggregateExpr):
        op = str(e.op)
        if op not in AGGREGATIONS:
            raise BadData(f'unsupported aggregation "{op}": roost supports {", ".join(AGGREGATIONS)}')
        m = e.modifier
        without = m is not None and str(m.type).endswith("Without")
        labels = tuple(m.labels) if m is not None else ()
        return Aggregate(op, _convert(e.expr), labels, without)
    if isinstance(e, promql_parser.BinaryExpr):
        op = str(e.op)
        if op not in ARITHMETIC + COMPARISONS:
            raise BadData(f'unsupported operator "{op}": roost supports {" ".join(ARITHMETIC + COMPARISONS)}')
        m = e.modifier
        on, ignoring, return_bool = None, (), False
        if m is not None:
            return_bool = bool(m.return_bool)
            if not str(m.card).endswith("OneToOne"):
                raise BadData(f"unsupported vector matching {m.card} in {e}: roost matches one-to-one only")
            if m.matching is not None:
                if str(m.matching.type).endswith("Include"):
                    on = tuple(m.matching.labels)
                else:
                    ignoring = tuple(m.matching.labels)
        return Binary(op, _convert(e.lhs), _convert(e.rhs), return_bool, on, ignoring)
    if isinstance(e, promql_parser.SubqueryExpr):
        raise BadData(f"unsupported subquery {e}")
    if isinstance(e, promql_parser.StringLiteral):
        raise BadData(f"unsupported string literal {e}")
    raise BadData(f"unsupported expression {e}")


def _vector_selector(vs) -> VectorSelector:
    if vs.at is not None:
        raise BadData(f"unsupported @ modifier in {vs}")
    if vs.matchers.or_matchers:
        raise BadData(f"unsupported 'or' inside a selector: {vs}")
    try:
        matchers = matchers_of(vs)
    except ValueError as exc:
        raise BadData(f"{exc} (in {vs})") from None
    offset = _ms(vs.offset) if vs.offset is not None else 0
    text = str(vs).split(" offset ")[0]
    return VectorSelector(Selector(text, matchers), offset)
