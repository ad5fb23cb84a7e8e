"""The embedded time-series store (see engine.py for the layout on disk)."""

from roost.store.engine import (
    AGGREGATIONS,
    DAY_MS,
    ReadView,
    RetentionRule,
    SeriesData,
    Store,
    StoreOptions,
    WriteResult,
    merge_samples,
)
from roost.store.summaries import WIDTHS_MS, Summary

__all__ = [
    "AGGREGATIONS",
    "DAY_MS",
    "ReadView",
    "RetentionRule",
    "SeriesData",
    "Store",
    "StoreOptions",
    "Summary",
    "WIDTHS_MS",
    "WriteResult",
    "merge_samples",
]
