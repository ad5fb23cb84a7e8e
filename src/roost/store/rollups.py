"""Rollups: (count, sum, min, max, last) per time bucket, and how buckets combine into coarser ones.

Raw samples are rollup rows of count 1, so one `combine` serves raw data, 5-minute and hourly rollups alike:
a range query with a coarse step reads hourly rows instead of samples and gets the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIVE_MINUTES_MS = 300_000
HOUR_MS = 3_600_000


@dataclass(slots=True)
class Rows:
    """Rollup rows sorted by bucket start `ts`; each field an array of the same length."""

    ts: np.ndarray
    count: np.ndarray
    sum: np.ndarray
    min: np.ndarray
    max: np.ndarray
    last: np.ndarray

    FIELDS = ("count", "sum", "min", "max", "last")

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def empty(cls) -> Rows:
        f = np.empty(0, np.float64)
        return cls(np.empty(0, np.int64), f, f, f, f, f)

    @classmethod
    def from_samples(cls, ts: np.ndarray, values: np.ndarray) -> Rows:
        return cls(ts, np.ones(len(ts)), values, values, values, values)

    @classmethod
    def concat(cls, parts: list[Rows]) -> Rows:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("ts", *cls.FIELDS)))

    def between(self, start_ms: int, end_ms: int) -> Rows:
        """Rows whose bucket start lies in [start_ms, end_ms)."""
        lo, hi = np.searchsorted(self.ts, [start_ms, end_ms])
        return Rows(*(getattr(self, f)[lo:hi] for f in ("ts", *self.FIELDS)))

    def value(self, agg: str) -> np.ndarray:
        if agg == "mean":
            return self.sum / self.count
        return getattr(self, agg)


def combine(rows: Rows, width_ms: int) -> Rows:
    """Merge rows into buckets aligned to multiples of `width_ms` since the epoch."""
    if not len(rows):
        return rows
    keys = rows.ts - np.mod(rows.ts, width_ms)
    starts = np.concatenate(([0], np.flatnonzero(keys[1:] != keys[:-1]) + 1))
    ends = np.append(starts[1:], len(keys)) - 1
    if len(starts) == len(keys):
        return Rows(keys, rows.count, rows.sum, rows.min, rows.max, rows.last)
    return Rows(
        keys[starts],
        np.add.reduceat(rows.count, starts),
        np.add.reduceat(rows.sum, starts),
        np.minimum.reduceat(rows.min, starts),
        np.maximum.reduceat(rows.max, starts),
        rows.last[ends],
    )


def decimals(values: np.ndarray) -> int | None:
    """The fewest decimals (0..9) that hold every value exactly, or None for non-decimal data."""
    for d in range(10):
        if np.array_equal(np.round(values, d), values):
            return d
    return None


def rollup_samples(ts: np.ndarray, values: np.ndarray, width_ms: int) -> Rows:
    """Rollup rows of raw samples; sums of decimal data are rounded to their decimals so they stay exact."""
    rows = combine(Rows.from_samples(ts, values), width_ms)
    d = decimals(values) if len(values) else None
    if d is not None:
        rows.sum = np.round(rows.sum, d)
    return rows


def bucketize(rows: Rows, lo: int, hi: int, step: int, agg: str, *, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(bucket starts, values) of the non-empty buckets [lo + k*step, lo + (k+1)*step) of `rows` for one aggregation.

    Only the asked-for aggregation is computed, by binary search for the bucket edges and one reduceat, so a
    week of raw samples costs two passes over the values. `raw` says every row is one sample (count 1).
    """
    edges = np.arange(lo, hi + step, step, dtype=np.int64)
    bounds = np.searchsorted(rows.ts, edges)
    starts, ends = bounds[:-1], bounds[1:]
    full = ends > starts
    starts, ends, keys = starts[full], ends[full], edges[:-1][full]
    if not len(starts):
        return keys, np.empty(0, np.float64)
    if agg == "last":
        return keys, rows.last[ends - 1]
    if agg in ("min", "max"):
        ufunc = np.minimum if agg == "min" else np.maximum
        return keys, ufunc.reduceat(getattr(rows, agg), starts)
    count = (ends - starts).astype(np.float64) if raw else np.add.reduceat(rows.count, starts)
    if agg == "count":
        return keys, count
    total = np.add.reduceat(rows.sum, starts)
    return keys, total if agg == "sum" else total / count
