"""The two kinds of query failure Prometheus' API tells apart."""

from roost.errors import QueryError


class PromQLError(QueryError):
    """A query that cannot be answered; `error_type` and `status` are what the HTTP API reports."""

    error_type = "bad_data"
    status = 400


class BadData(PromQLError):
    """The query or a parameter is malformed or outside roost's PromQL subset (HTTP 400)."""


class ExecutionError(PromQLError):
    """The query is valid but its evaluation failed, e.g. many-to-many matching (HTTP 422)."""

    error_type = "execution"
    status = 422
