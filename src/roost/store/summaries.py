"""Summaries of raw samples per time bucket that keep what PromQL's windows need at their edges.

A PromQL window `[t - range, t]` is closed at both ends, and `rate` needs the first and last sample of the
window with their timestamps. The stored rollups (count, sum, min, max, last per hour) cannot say whether a
sample sits exactly on `t`, nor when the first and last samples were taken, so they cannot answer a window
exactly. A summary row also keeps the first and last sample of its bucket with their timestamps and the
counter resets inside it; with those, a window made of whole buckets plus the sample exactly on its end gets
the same answer as the raw samples (`roost.promql` does that arithmetic).
"""

from __future__ import annotations

import numpy as np

# Bucket widths summaries are made at: a query whose steps, ranges and offsets are multiples of one is answered
# from them. Both divide a day, so a day chunk's summary never straddles days.
WIDTHS_MS = (3_600_000, 300_000)

FIELDS = ("ts", "count", "sum", "min", "max", "first_ts", "first", "last_ts", "last", "resets")
TS, COUNT, SUM, MIN, MAX, FIRST_TS, FIRST, LAST_TS, LAST, RESETS = range(len(FIELDS))


class Summary:
    """One row per non-empty bucket, sorted by bucket start: `rows[FIELD]` is that field of every bucket.

    All fields are float64, timestamps too (ms are exact in a float64 until the year 287,000), so a summary is
    one array that concatenates and slices in one call. `resets` is the sum of v[i-1] over the samples i of a
    bucket (not its first) where v[i] < v[i-1]: what Prometheus adds back for counter resets.
    """

    __slots__ = ("rows",)

    def __init__(self, rows: np.ndarray):
        self.rows = rows

    def __len__(self) -> int:
        return self.rows.shape[1]

    @property
    def ts(self) -> np.ndarray:
        return self.rows[TS]

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes

    @classmethod
    def empty(cls) -> Summary:
        return cls(np.empty((len(FIELDS), 0)))

    @classmethod
    def concat(cls, parts: list[Summary]) -> Summary:
        """Summaries of disjoint bucket sets, in any order, as one sorted summary."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        rows = np.concatenate([p.rows for p in parts], axis=1)
        if any(a.rows[TS, -1] >= b.rows[TS, 0] for a, b in zip(parts, parts[1:])):  # each part is sorted
            rows = rows[:, np.argsort(rows[TS], kind="stable")]
        return cls(rows)

    def between(self, start_ms: int, end_ms: int) -> Summary:
        """Rows whose bucket starts in [start_ms, end_ms)."""
        lo, hi = np.searchsorted(self.rows[TS], [start_ms, end_ms])
        return self if lo == 0 and hi == len(self) else Summary(self.rows[:, lo:hi])


def summarize(ts: np.ndarray, values: np.ndarray, width_ms: int) -> Summary:
    """The summary of sorted, unique samples in buckets aligned to multiples of `width_ms` since the epoch."""
    if not len(ts):
        return Summary.empty()
    edges = np.arange(ts[0] - ts[0] % width_ms, ts[-1] + 1, width_ms)  # every bucket from the first sample's on
    bounds = np.searchsorted(ts, edges)
    ends = np.append(bounds[1:], len(ts))
    full = ends > bounds
    keys, starts, ends = edges[full], bounds[full], ends[full]
    rows = np.empty((len(FIELDS), len(starts)))
    fell = values[1:] < values[:-1]
    if fell.any():
        drop = np.zeros(len(values))
        drop[1:] = np.where(fell, values[:-1], 0.0)
        drop[starts] = 0.0  # a drop from the previous bucket's last sample belongs to no single bucket
        rows[RESETS] = np.add.reduceat(drop, starts)
    else:
        rows[RESETS] = 0.0
    rows[TS] = keys
    rows[COUNT] = ends - starts
    rows[SUM] = np.add.reduceat(values, starts)
    rows[MIN] = np.minimum.reduceat(values, starts)
    rows[MAX] = np.maximum.reduceat(values, starts)
    rows[FIRST_TS] = ts[starts]
    rows[FIRST] = values[starts]
    rows[LAST_TS] = ts[ends - 1]
    rows[LAST] = values[ends - 1]
    rows.setflags(write=False)  # cached and shared by queries
    return Summary(rows)
