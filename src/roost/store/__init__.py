"""The embedded time-series store (see engine.py for the layout on disk)."""

from roost.store.engine import (
    AGGREGATIONS,
    DAY_MS,
    ReadView,
    Refusal,
    RetentionRule,
    SeriesData,
    Store,
    StoreOptions,
    ViewBusy,
    WriteResult,
    merge_samples,
)
from roost.store.samples import Samples
from roost.store.summaries import WIDTHS_MS, Summary

__all__ = [
    "AGGREGATIONS",
    "DAY_MS",
    "ReadView",
    "Refusal",
    "RetentionRule",
    "Samples",
    "SeriesData",
    "Store",
    "StoreOptions",
    "Summary",
    "ViewBusy",
    "WIDTHS_MS",
    "WriteResult",
    "merge_samples",
]
