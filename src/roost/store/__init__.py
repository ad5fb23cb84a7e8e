"""The embedded time-series store (see engine.py for the layout on disk)."""

from roost.store.engine import (
    AGGREGATIONS,
    DAY_MS,
    RetentionRule,
    SeriesData,
    Store,
    StoreOptions,
    WriteResult,
    merge_samples,
)

__all__ = [
    "AGGREGATIONS",
    "DAY_MS",
    "RetentionRule",
    "SeriesData",
    "Store",
    "StoreOptions",
    "WriteResult",
    "merge_samples",
]
