"""A PromQL subset evaluated over roost's store: `parse` a query, then `evaluate` it over a range of steps."""

from roost.promql.ast import AGGREGATIONS, RANGE_FUNCTIONS, parse
from roost.promql.engine import LOOKBACK_MS, MAX_STEPS, Evaluator, RawMatrix, Source, Vector, selections
from roost.promql.errors import BadData, ExecutionError, PromQLError

__all__ = [
    "AGGREGATIONS", "LOOKBACK_MS", "MAX_STEPS", "RANGE_FUNCTIONS", "BadData", "Evaluator", "ExecutionError",
    "PromQLError", "RawMatrix", "Source", "Vector", "evaluate", "parse", "selections",
]


def evaluate(source: Source, query: str, start_ms: int, end_ms: int, step_ms: int):
    """Parse and evaluate `query` at every step; returns a Vector, a scalar array or (for `x[5m]`) a RawMatrix."""
    node = parse(query)
    return Evaluator(source, start_ms, end_ms, step_ms).eval(node)
