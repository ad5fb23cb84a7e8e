"""Evaluate a PromQL subset over a whole range at once, with numpy over each series' raw samples.

An instant vector over a range query is a `Vector`: one row per output series, one column per step, and a
presence mask (a series can be absent at some steps). Every operator works on those 2-D arrays, and selectors
and range functions on up to 64 series' samples laid end to end (`Evaluator._batches`), so the cost per query is
a few numpy calls per batch of series, never a Python loop over samples or steps.

Semantics are Prometheus 2.42's (the version Debian 12 ships, which the tests compare against sample by
sample): range windows `[t - range, t]` closed at both ends, instant selectors take the newest sample in
`[t - 5m, t]` (no staleness markers: roost does not write them), `rate`/`increase`/`delta` extrapolate as
Prometheus' `extrapolatedRate` does, including counter resets and the zero-point clamp, and functions and
arithmetic drop `__name__` except `last_over_time` and filtering comparisons. Prometheus 3 and VictoriaMetrics
open windows on the left; see docs/prometheus.md.

When the steps, the window and the offset are whole multiples of a summary width (an hour, 5 minutes: what
Grafana sends for a month at step 1h or a week at step 10m), selectors and range functions other than `irate`
are answered from per-bucket summaries (roost.store.summaries) instead of raw samples: a window is its whole
buckets plus the sample exactly on its end, which gives the raw answer from a few values per bucket.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np

from roost.model import Series
from roost.promql import ast
from roost.promql.errors import BadData, ExecutionError
from roost.selector import Selector
from roost.store import WIDTHS_MS, Samples, Summary
from roost.store.codec import unscale

LOOKBACK_MS = 5 * 60_000
MAX_STEPS = 11_000  # Prometheus' limit of points per series in one range query
# Summary buckets evaluated at once: 10 fields of float64, 1.6 MB, which stays in the CPU's cache through the
# rate functions' ~30 passes. Measured on 31 counters over 9 days of 5-minute buckets: sum(increase(x[1d])) 12.1 ms
# in batches of 20 MB, 4.6-4.9 ms in batches of 0.8-1.6 MB (and 5.7-7.2 with one series a batch).
_BATCH_BUCKETS = 20_000
_JOIN_SERIES = 64  # raw samples: series evaluated at once (`Evaluator._batches`)
_JOIN_COPIED = 1 << 20  # ... and at most this many samples copied to join them (16 MB)

Labels = tuple[tuple[str, str], ...]  # sorted, with ("__name__", metric) while the name is kept


class Source(Protocol):
    """What a query reads: `roost.store.ReadView`."""

    def samples(self, selector: Selector, start_ms: int, end_ms: int) -> Iterable[tuple[Series, Samples]]:
        """Raw samples with start_ms <= ts < end_ms of every matching series, each valid only until the next
        series is asked for."""

    def summaries(
        self, selector: Selector, start_ms: int, end_ms: int, width_ms: int, *, resets: bool = True
    ) -> Iterable[tuple[Series, Summary]]:
        """Summaries of the buckets of `width_ms` in [start_ms, end_ms) of every matching series (`resets`: whether
        the caller reads their counter resets)."""

    def summaries_fit(self, selector: Selector, start_ms: int, end_ms: int, width_ms: int) -> bool:
        """Whether reading summaries is the cheaper way: false where they would be made again from the samples
        on every read (more of them than the store keeps)."""


@dataclass(slots=True)
class Vector:
    """An instant vector at every step of a query: `values[i, j]` counts only where `present[i, j]`."""

    labels: list[Labels]
    values: np.ndarray  # (series, steps) float64
    present: np.ndarray  # (series, steps) bool

    @classmethod
    def empty(cls, steps: int) -> Vector:
        return cls([], np.empty((0, steps)), np.empty((0, steps), bool))


@dataclass(slots=True)
class RawMatrix:
    """The answer to an instant query for a bare range selector (`x[5m]`): raw samples per series."""

    series: list[tuple[Labels, np.ndarray, np.ndarray]]


Value = Vector | np.ndarray | RawMatrix  # a scalar is a 1-D array, one value per step


def series_labels(series: Series) -> Labels:
    return tuple(sorted((("__name__", series.metric), *series.labels)))


def selections(node: ast.Node) -> Iterator[tuple[ast.VectorSelector, int]]:
    """Every selector of a query with how far before each step it reads (the range, or the lookback)."""
    if isinstance(node, ast.VectorSelector):
        yield node, LOOKBACK_MS
    elif isinstance(node, ast.MatrixSelector):
        yield node.vector, node.range_ms
    elif isinstance(node, ast.RangeCall):
        yield from selections(node.arg)
    elif isinstance(node, (ast.Aggregate, ast.Negation)):
        yield from selections(node.expr)
    elif isinstance(node, ast.Binary):
        yield from selections(node.lhs)
        yield from selections(node.rhs)


def _drop_name(labels: Labels) -> Labels:
    return tuple(kv for kv in labels if kv[0] != "__name__")


def _label_text(labels: Labels) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels) + "}"


class Evaluator:
    """Evaluates one parsed query at the steps `start_ms, start_ms + step_ms, ... <= end_ms`."""

    def __init__(self, source: Source, start_ms: int, end_ms: int, step_ms: int):
        if step_ms <= 0:
            raise BadData("zero or negative query resolution step widths are not accepted. Try a positive integer")
        if end_ms < start_ms:
            raise BadData("end timestamp must not be before start time")
        if (end_ms - start_ms) // step_ms + 1 > MAX_STEPS:
            raise BadData(
                f"exceeded maximum resolution of {MAX_STEPS:,} points per timeseries. "
                "Try decreasing the query resolution (?step=XX)"
            )
        self.source = source
        self.steps = np.arange(start_ms, end_ms + 1, step_ms, dtype=np.int64)
        self.step_ms = step_ms

    def eval(self, node: ast.Node) -> Value:
        if isinstance(node, ast.Number):
            return np.full(len(self.steps), node.value)
        if isinstance(node, ast.VectorSelector):
            return self._vector_selector(node)
        if isinstance(node, ast.MatrixSelector):
            return self._raw_matrix(node)
        if isinstance(node, ast.RangeCall):
            return self._range_call(node)
        if isinstance(node, ast.Aggregate):
            return self._aggregate(node)
        if isinstance(node, ast.Binary):
            return self._binary(node)
        if isinstance(node, ast.Negation):
            inner = self.eval(node.expr)
            if isinstance(inner, np.ndarray):
                return -inner
            return _merge_same_labels(Vector([_drop_name(lb) for lb in inner.labels], -inner.values, inner.present))
        raise BadData(f"unsupported expression {node}")

    # ------------------------------------------------------------------ selectors

    def _samples(self, vs: ast.VectorSelector, back_ms: int) -> Iterable[tuple[Series, Samples]]:
        lo = int(self.steps[0]) - vs.offset_ms - back_ms
        hi = int(self.steps[-1]) - vs.offset_ms
        return self.source.samples(vs.selector, lo, hi + 1)  # every caller copies what it keeps

    def _batches(self, vs: ast.VectorSelector, back_ms: int) -> Iterator[tuple[list[Series], Samples, np.ndarray]]:
        """The matching series in batches, each batch's samples laid end to end as one `Samples` with series i's
        times moved `shifts[i]` later, so that a function finds the windows of every series and step in one call
        (a call per series cost more than the arithmetic: ~0.1 ms each). A series whose samples outside steady
        days are many is evaluated alone, where it was read, not copied."""
        lo = int(self.steps[0]) - vs.offset_ms - back_ms
        gap = int(self.steps[-1]) - vs.offset_ms - lo + 1  # a series' samples and windows lie in [lo, lo + gap)
        series: list[Series] = []
        pieces: list[Samples] = []
        copied = 0

        def batch():
            return series, Samples.joined(pieces), np.arange(len(pieces), dtype=np.int64) * gap

        for found, samples in self._samples(vs, back_ms):
            size = samples.array_samples
            if size > _JOIN_COPIED:
                if pieces:
                    yield batch()
                    series, pieces, copied = [], [], 0
                yield [found], samples, np.zeros(1, np.int64)
                continue
            pieces.append(samples.shifted(len(pieces) * gap))
            series.append(found)
            copied += size
            if len(pieces) == _JOIN_SERIES or copied > _JOIN_COPIED:
                yield batch()
                series, pieces, copied = [], [], 0
        if pieces:
            yield batch()

    def _width(self, vs: ast.VectorSelector, range_ms: int) -> int | None:
        """The widest summary width that the steps, `range_ms` and the offset are whole multiples of, if any, and
        if the store can keep the summaries this reads (else reading the samples costs less)."""
        ref0 = int(self.steps[0]) - vs.offset_ms
        for width in WIDTHS_MS:
            if range_ms % width == 0 and ref0 % width == 0 and (len(self.steps) == 1 or self.step_ms % width == 0):
                lo, hi = ref0 - range_ms, int(self.steps[-1]) - vs.offset_ms + width
                return width if self.source.summaries_fit(vs.selector, lo, hi, width) else None
        return None

    def _bucketed(
        self, vs: ast.VectorSelector, range_ms: int, width: int, fn, resets: bool = False
    ) -> tuple[list[Series], np.ndarray, np.ndarray]:
        """`fn(buckets)` -> (values, present) over the matching series' summaries, on one bucket grid from the first
        window's start to the last step, in batches of series that keep the grid at ~20 MB."""
        lo = int(self.steps[0]) - vs.offset_ms - range_ms
        hi = int(self.steps[-1]) - vs.offset_ms + width  # the bucket starting at the last step holds its edge sample
        per_batch = max(1, _BATCH_BUCKETS // ((hi - lo) // width))
        series, values, present, batch = [], [], [], []
        for found in itertools.chain(self.source.summaries(vs.selector, lo, hi, width, resets=resets), [None]):
            if found is not None:
                series.append(found[0])
                batch.append(found[1])
            if batch and (found is None or len(batch) == per_batch):
                v, p = fn(_Buckets(batch, lo, hi, width))
                values.append(v)
                present.append(p)
                batch = []
        if not series:
            return [], np.empty((0, len(self.steps))), np.empty((0, len(self.steps)), bool)
        return series, np.concatenate(values), np.concatenate(present)

    def _vector_selector(self, vs: ast.VectorSelector) -> Vector:
        ref = self.steps - vs.offset_ms
        width = self._width(vs, 0)
        if width is not None:  # the newest sample in [t - 5m, t]: the one on t, else the last of the bucket before t

            def newest(b: _Buckets) -> tuple[np.ndarray, np.ndarray]:
                e = b.at(ref)
                edge_ok, edge_v = b.edge(e, ref)
                ok = edge_ok | ((b.count[e - 1] > 0) & (b.last_ts[e - 1] >= ref - LOOKBACK_MS))
                return np.where(edge_ok, edge_v, b.last[e - 1]), ok

            series, values, ok = self._bucketed(vs, width, width, newest)
            return _compact(Vector([series_labels(x) for x in series], values, ok))
        labels, rows, masks = [], [], []
        for series, samples, shifts in self._batches(vs, LOOKBACK_MS):
            refs = _shifted(ref, shifts)
            # each step's newest sample, if it is in [t - 5m, t]; one that `index` finds in the series before
            # (this one has none at or before t) is older than t - 5m
            k = samples.index(refs, "right") - 1
            t, values = samples.at(np.maximum(k, 0))
            labels += [series_labels(x) for x in series]
            rows.append(values.reshape(len(series), -1))
            masks.append(((k >= 0) & (t >= refs - LOOKBACK_MS)).reshape(len(series), -1))
        return _compact(_stack(labels, rows, masks, len(self.steps)))

    def _raw_matrix(self, ms: ast.MatrixSelector) -> RawMatrix:
        t = int(self.steps[-1]) - ms.vector.offset_ms
        out = []
        for series, samples in self._samples(ms.vector, ms.range_ms):
            (lo,), (hi,) = _windows(samples, np.array([t]), ms.range_ms)
            if hi > lo:
                out.append((series_labels(series), *samples.at(np.arange(lo, hi))))
        return RawMatrix(out)

    # ------------------------------------------------------------------ range functions

    def _range_call(self, call: ast.RangeCall) -> Vector:
        ms = call.arg
        ref = self.steps - ms.vector.offset_ms
        width = self._width(ms.vector, ms.range_ms) if call.func in _BUCKETED else None
        keep_name = call.func == "last_over_time"
        if width is not None:
            series, values, ok = self._bucketed(
                ms.vector, ms.range_ms, width, lambda b: _BUCKETED[call.func](b, ref, ms.range_ms),
                resets=call.func in ("rate", "increase"),
            )
            labels = [series_labels(x) if keep_name else _drop_name(series_labels(x)) for x in series]
            vec = _compact(Vector(labels, values, ok))
        else:
            labels, rows, masks = [], [], []
            for series, samples, shifts in self._batches(ms.vector, ms.range_ms):
                refs = _shifted(ref, shifts)
                values, ok = _RANGE[call.func](samples, *_windows(samples, refs, ms.range_ms), refs, ms.range_ms)
                labels += [series_labels(x) if keep_name else _drop_name(series_labels(x)) for x in series]
                rows.append(values.reshape(len(series), len(ref)))
                masks.append(ok.reshape(len(series), len(ref)))
            vec = _compact(_stack(labels, rows, masks, len(self.steps)))
        if len(set(vec.labels)) != len(vec.labels):
            raise ExecutionError("vector cannot contain metrics with the same labelset")
        return vec

    # ------------------------------------------------------------------ aggregation

    def _aggregate(self, agg: ast.Aggregate) -> Vector:
        vec = self.eval(agg.expr)
        if not isinstance(vec, Vector):
            raise BadData(f"{agg.op}() expects an instant vector, got a scalar")
        if not vec.labels:
            return vec
        wanted = set(agg.labels)
        groups: dict[Labels, list[int]] = defaultdict(list)
        for i, lb in enumerate(vec.labels):
            if agg.without:
                key = tuple(kv for kv in lb if kv[0] not in wanted and kv[0] != "__name__")
            else:
                key = tuple(kv for kv in lb if kv[0] in wanted)
            groups[key].append(i)
        order = np.concatenate([np.asarray(rows, np.intp) for rows in groups.values()])
        starts = np.cumsum([0] + [len(rows) for rows in groups.values()])[:-1]
        v, p = vec.values[order], vec.present[order]
        count = np.add.reduceat(p.astype(np.int64), starts, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            if agg.op == "count":
                out = count.astype(np.float64)
            elif agg.op in ("sum", "avg"):
                out = np.add.reduceat(np.where(p, v, 0.0), starts, axis=0)
                if agg.op == "avg":
                    out = out / count
            elif agg.op == "min":
                out = np.fmin.reduceat(np.where(p, v, np.inf), starts, axis=0)
            else:
                out = np.fmax.reduceat(np.where(p, v, -np.inf), starts, axis=0)
        return Vector(list(groups), out, count > 0)

    # ------------------------------------------------------------------ binary operators

    def _binary(self, b: ast.Binary) -> Value:
        lhs, rhs = self.eval(b.lhs), self.eval(b.rhs)
        comparison = b.op in ast.COMPARISONS
        if isinstance(lhs, np.ndarray) and isinstance(rhs, np.ndarray):
            out = _OPS[b.op](lhs, rhs)
            return out.astype(np.float64) if comparison else out
        if isinstance(lhs, np.ndarray) or isinstance(rhs, np.ndarray):
            return _vector_scalar(b, lhs, rhs)
        return _vector_vector(b, lhs, rhs)


def _vector_scalar(b: ast.Binary, lhs: Value, rhs: Value) -> Vector:
    vec, scalar_left = (rhs, True) if isinstance(lhs, np.ndarray) else (lhs, False)
    scalar = (lhs if scalar_left else rhs)[None, :]
    with np.errstate(all="ignore"):
        result = _OPS[b.op](scalar, vec.values) if scalar_left else _OPS[b.op](vec.values, scalar)
    if b.op in ast.ARITHMETIC:
        return _merge_same_labels(Vector([_drop_name(lb) for lb in vec.labels], result, vec.present))
    if b.return_bool:
        return _merge_same_labels(Vector([_drop_name(lb) for lb in vec.labels], result.astype(np.float64), vec.present))
    # A filter keeps the vector's own value, also when the scalar is on the left.
    return _compact(Vector(list(vec.labels), vec.values, vec.present & result))


def _signature(labels: Labels, b: ast.Binary) -> Labels:
    if b.on is not None:
        return tuple(kv for kv in labels if kv[0] in b.on)
    return tuple(kv for kv in labels if kv[0] != "__name__" and kv[0] not in b.ignoring)


def _vector_vector(b: ast.Binary, lhs: Vector, rhs: Vector) -> Vector:
    steps = lhs.values.shape[1]
    right: dict[Labels, list[int]] = defaultdict(list)
    for j, lb in enumerate(rhs.labels):
        right[_signature(lb, b)].append(j)
    rv = np.zeros((len(right), steps))
    rp = np.zeros((len(right), steps), bool)
    row_of: dict[Labels, int] = {}
    for r, (sig, rows) in enumerate(right.items()):
        row_of[sig] = r
        if len(rows) > 1 and (rhs.present[rows].sum(axis=0) > 1).any():
            raise ExecutionError(
                f"found duplicate series for the match group {_label_text(sig)} on the right hand-side of the "
                "operation; many-to-many matching not allowed: matching labels must be unique on one side"
            )
        for j in rows:
            rv[r] = np.where(rhs.present[j], rhs.values[j], rv[r])
            rp[r] |= rhs.present[j]
    matched = [(i, row_of[sig]) for i, lb in enumerate(lhs.labels) if (sig := _signature(lb, b)) in row_of]
    if not matched:
        return Vector.empty(steps)
    li = np.array([i for i, _r in matched], np.intp)
    ri = np.array([r for _i, r in matched], np.intp)
    lv, rvals = lhs.values[li], rv[ri]
    present = lhs.present[li] & rp[ri]
    per_match = defaultdict(list)
    for k, (_i, r) in enumerate(matched):
        per_match[r].append(k)
    for rows in per_match.values():
        if len(rows) > 1 and (present[rows].sum(axis=0) > 1).any():
            raise ExecutionError("multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)")
    with np.errstate(all="ignore"):
        result = _OPS[b.op](lv, rvals)
    comparison = b.op in ast.COMPARISONS
    if comparison and not b.return_bool:
        values, present = lv, present & result
    else:
        values = result.astype(np.float64)
    drop_name = not comparison or b.return_bool
    labels = []
    for i, _r in matched:
        lb = lhs.labels[i]
        if b.on is not None:
            lb = tuple(kv for kv in lb if kv[0] in b.on)
        else:
            lb = tuple(kv for kv in lb if kv[0] not in b.ignoring)
        labels.append(_drop_name(lb) if drop_name else lb)
    return _merge_same_labels(_compact(Vector(labels, values, present)))


# ---------------------------------------------------------------------- helpers


def _stack(labels: list[Labels], rows: list[np.ndarray], masks: list[np.ndarray], steps: int) -> Vector:
    """One vector of the (series, steps) values and masks of each batch of series."""
    if not rows:
        return Vector.empty(steps)
    if len(rows) == 1:
        return Vector(labels, rows[0], masks[0])
    return Vector(labels, np.vstack(rows), np.vstack(masks))


def _shifted(ref: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """The steps of every series of a batch (`Evaluator._batches`) on its shifted times, series after series."""
    if len(shifts) == 1 and not shifts[0]:
        return ref
    return (shifts[:, None] + ref[None, :]).ravel()


def _compact(vec: Vector) -> Vector:
    """Drop series that are absent at every step."""
    keep = vec.present.any(axis=1)
    if keep.all():
        return vec
    idx = np.flatnonzero(keep)
    return Vector([vec.labels[i] for i in idx], vec.values[idx], vec.present[idx])


def _merge_same_labels(vec: Vector) -> Vector:
    """Series that became equal (a dropped name) merge; present at the same step they are an error, as in Prometheus."""
    if len(set(vec.labels)) == len(vec.labels):
        return vec
    groups: dict[Labels, list[int]] = defaultdict(list)
    for i, lb in enumerate(vec.labels):
        groups[lb].append(i)
    values = np.zeros((len(groups), vec.values.shape[1]))
    present = np.zeros(values.shape, bool)
    for g, rows in enumerate(groups.values()):
        if len(rows) > 1 and (vec.present[rows].sum(axis=0) > 1).any():
            raise ExecutionError("vector cannot contain metrics with the same labelset")
        for i in rows:
            values[g] = np.where(vec.present[i], vec.values[i], values[g])
            present[g] |= vec.present[i]
    return Vector(list(groups), values, present)


def _window_reduce(ufunc: np.ufunc, a: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """`ufunc.reduce(a[lo[i]:hi[i]])` for every i (in C, one pass); garbage where the window is empty."""
    if not len(a) or not len(lo):
        return np.zeros(len(lo), a.dtype)
    if ufunc is np.add:  # sums keep numpy's summation order: one copy of `a` with a spare element at the end
        ext = np.append(a, a[-1:])
        idx = np.empty(2 * len(lo), np.intp)
        idx[0::2], idx[1::2] = lo, hi
        return ufunc.reduceat(ext, idx)[0::2]
    # reduceat takes no index equal to len(a): windows that end there (the last ones) are cut one short, and
    # their last element put back (exact for min and max), without copying `a`.
    ends = np.minimum(hi, len(a) - 1)
    idx = np.empty(2 * len(lo), np.intp)
    idx[0::2], idx[1::2] = np.minimum(lo, len(a) - 1), ends
    out = ufunc.reduceat(a, idx)[0::2]
    cut = hi == len(a)
    if cut.any():
        whole = lo[cut] < ends[cut]  # else the window is just a[-1] (or empty: garbage either way)
        out[cut] = np.where(whole, ufunc(out[cut], a[-1]), a[-1])
    return out


def _sparse_window_sum(a: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """`a[lo[i]:hi[i]].sum()` for every i, 0 for empty windows, in time proportional to a's non-zero values."""
    nonzero = np.flatnonzero(a)
    return _window_sums(nonzero, a[nonzero], lo, hi)


def _window_sums(at: np.ndarray, values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """For every i, the sum of the `values` whose position in `at` (sorted) lies in [lo[i], hi[i]); 0 if none."""
    if not len(at):
        return np.zeros(len(lo))
    n_lo, n_hi = np.searchsorted(at, lo), np.searchsorted(at, hi)
    return np.where(n_hi > n_lo, _window_reduce(np.add, values, n_lo, n_hi), 0.0)


def _windows(samples: Samples, ref: np.ndarray, range_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample index bounds [lo, hi) of every window [t - range, t], closed on the left as in Prometheus 2.x."""
    return samples.index(ref - range_ms, "left"), samples.index(ref, "right")


def _over_time(kind: str):
    def fn(s: Samples, lo, hi, _ref, _range):
        n = hi - lo
        ok = n > 0
        if not s.n:
            return np.zeros(len(lo)), ok
        if kind == "count":
            return n.astype(np.float64), ok
        if kind == "last":
            return s.at(np.maximum(hi - 1, 0))[1], ok
        if kind in ("min", "max"):
            ufunc = np.minimum if kind == "min" else np.maximum
            scaled = s.scaled()  # on a decimal meter's integers: the same answer for a quarter of the memory
            if scaled is not None:
                return unscale(_window_reduce(ufunc, scaled[0], lo, hi), scaled[1]), ok
            return _window_reduce(ufunc, s.values(), lo, hi), ok
        v = s.values()
        total = _window_reduce(np.add, v, lo, hi)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (total / n if kind == "avg" else total), ok

    return fn


def _extrapolate(result, first_t, last_t, first_v, n, ref, range_ms: int, is_counter: bool, is_rate: bool):
    """The end of Prometheus' extrapolatedRate (promql/functions.go): stretch `result` towards the window's edges
    (the same operations in the same order, on fresh arrays in place)."""
    to_start = np.subtract(first_t, ref - range_ms, dtype=np.float64)  # ms: exact in float64
    to_start /= 1000
    to_end = np.subtract(ref, last_t, dtype=np.float64)
    to_end /= 1000
    sampled = np.subtract(last_t, first_t, dtype=np.float64)
    sampled /= 1000
    average = sampled / (n - 1)
    if is_counter:
        with np.errstate(invalid="ignore", divide="ignore"):
            to_zero = first_v / result
            to_zero *= sampled
        np.copyto(to_start, to_zero, where=(result > 0) & (first_v >= 0) & (to_zero < to_start))
    threshold = average * 1.1
    average /= 2
    interval = sampled + np.where(to_start < threshold, to_start, average)
    interval += np.where(to_end < threshold, to_end, average)
    interval /= sampled
    if is_rate:
        interval /= range_ms / 1000
    interval *= result
    return interval


def _rate(is_counter: bool, is_rate: bool):
    """Prometheus' extrapolatedRate over each window of raw samples, counter resets added back (the times may be
    a batch's shifted ones: only their differences count)."""

    def fn(s: Samples, lo, hi, ref, range_ms):
        n = hi - lo
        first_t, first_v = s.at(np.minimum(lo, s.n - 1))  # each in order: `at` is fastest so
        last_t, last_v = s.at(np.maximum(hi - 1, 0))
        result = last_v - first_v
        if is_counter:
            # a drop between consecutive samples is a reset: the counter restarted from zero, so the value
            # before it is added back (those at k with lo < k < hi: sample k - 1 is in the window too)
            at, lost = s.drops()
            if len(at):
                result += _window_sums(at[lost != 0], lost[lost != 0], lo + 1, hi)
        ok = n >= 2
        with np.errstate(all="ignore"):  # windows with fewer than two samples give garbage, dropped here
            out = _extrapolate(result, first_t, last_t, first_v, n, ref, range_ms, is_counter, is_rate)
        return np.where(ok, out, 0.0), ok

    return fn


def _irate(s: Samples, lo, hi, _ref, _range):
    ok = hi - lo >= 2
    out = np.zeros(len(lo))
    if not ok.any():
        return out, ok
    last_t, last = s.at(hi[ok] - 1)
    prev_t, prev = s.at(hi[ok] - 2)
    result = np.where(last < prev, last, last - prev)
    interval = last_t - prev_t
    good = interval != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        out[ok] = result / (interval / 1000)
    ok[ok] = good
    return out, ok


_RANGE = {
    "rate": _rate(True, True),
    "increase": _rate(True, False),
    "delta": _rate(False, False),
    "irate": _irate,
    "avg_over_time": _over_time("avg"),
    "min_over_time": _over_time("min"),
    "max_over_time": _over_time("max"),
    "sum_over_time": _over_time("sum"),
    "count_over_time": _over_time("count"),
    "last_over_time": _over_time("last"),
}


# ---------------------------------------------------------------------- range functions over summaries


_EMPTY_BUCKET = np.array([0.0, 0.0, 0.0, np.inf, -np.inf, -1.0, 0.0, -1.0, 0.0, 0.0])[:, None]  # summaries.FIELDS


class _Buckets:
    """Several series' summary rows on one dense grid of buckets `lo + j * width` < hi (an empty bucket has
    count 0), series after series in flat arrays: bucket j of series i is at `i * n + j`. Every function below
    works on all series and steps at once, with (series, steps) arrays of flat indices."""

    def __init__(self, summaries: list[Summary], lo: int, hi: int, width: int):
        n = (hi - lo) // width
        self.lo, self.width, self.n = lo, width, n
        if len(summaries) == 1 and len(summaries[0]) == n:  # one series with samples in every bucket: the grid already
            rows = summaries[0].rows
        else:
            rows = np.empty((len(_EMPTY_BUCKET), len(summaries) * n))
            for i, s in enumerate(summaries):
                grid = rows[:, i * n : (i + 1) * n]
                if len(s) == n:
                    grid[:] = s.rows
                    continue
                first = int(s.ts[0] - lo) // width if len(s) else 0
                if len(s) and int(s.ts[-1] - s.ts[0]) == (len(s) - 1) * width:  # one run of buckets (data starting
                    grid[:, :first] = _EMPTY_BUCKET                                # or ending inside the range)
                    grid[:, first : first + len(s)] = s.rows
                    grid[:, first + len(s) :] = _EMPTY_BUCKET
                else:
                    grid[:] = _EMPTY_BUCKET
                    grid[:, ((s.ts - lo) // width).astype(np.intp)] = s.rows
        (_ts, self.count, self.sum, self.min, self.max, self.first_ts, self.first, self.last_ts, self.last,
         self.resets) = rows
        self.series_start = np.arange(0, rows.shape[1], n)[:, None]  # the flat index of each series' first bucket

    @cached_property
    def _flat(self) -> tuple[np.ndarray, np.ndarray]:
        """Every flat index, and the flat index of its series' first bucket."""
        idx = np.arange(len(self.count))
        return idx, idx - idx % self.n

    @cached_property
    def full(self) -> bool:
        """No bucket is empty: each is its own newest and oldest non-empty bucket (`prev`, `next`)."""
        return bool(self.count.all())

    @cached_property
    def prev(self) -> np.ndarray:
        """The newest non-empty bucket <= j of the same series, or -1 (only some functions need it)."""
        if self.full:
            return np.arange(len(self.count))
        idx, start = self._flat
        newest = np.maximum.accumulate(np.where(self.count > 0, idx, start - 1))
        return np.where(newest >= start, newest, -1)

    @cached_property
    def next(self) -> np.ndarray:
        """The oldest non-empty bucket >= j of the same series, or its series' end."""
        if self.full:
            return np.arange(len(self.count))
        idx, start = self._flat
        oldest = np.minimum.accumulate(np.where(self.count > 0, idx, start + self.n)[::-1])[::-1]
        return np.minimum(oldest, start + self.n)

    def at(self, t: np.ndarray) -> np.ndarray:
        """(series, steps) flat indices of the buckets that start at each t."""
        return self.series_start + (t - self.lo) // self.width

    def edge(self, e: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whether bucket e, starting at ref, has a sample exactly on ref; and that sample's value."""
        return (self.count[e] > 0) & (self.first_ts[e] == ref), self.first[e]

    def window(self, ref: np.ndarray, range_ms: int):
        """For every series and step: the window's first bucket a, its end bucket e (from ref on), whether a
        sample sits exactly on ref and its value, and the number of samples in [ref - range, ref]."""
        e = self.at(ref)
        a = e - range_ms // self.width
        edge_ok, edge_v = self.edge(e, ref)
        counted = np.concatenate(([0.0], np.cumsum(self.count)))  # whole numbers: exact
        return a, e, edge_ok, edge_v, counted[e] - counted[a] + edge_ok


def _windows_reduce(ufunc: np.ufunc, values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """`_window_reduce` for (series, steps) arrays of flat window bounds."""
    return _window_reduce(ufunc, values, lo.ravel(), hi.ravel()).reshape(lo.shape)


def _sparse_windows_sum(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """`_sparse_window_sum` for (series, steps) arrays of flat window bounds."""
    return _sparse_window_sum(values, lo.ravel(), hi.ravel()).reshape(lo.shape)


def _bucketed_over_time(kind: str):
    def fn(b: _Buckets, ref: np.ndarray, range_ms: int):
        a, e, edge_ok, edge_v, n = b.window(ref, range_ms)
        ok = n > 0
        if kind == "count":
            return n, ok
        if kind == "last":  # with no sample on the end, the window's last non-empty bucket has the newest
            return np.where(edge_ok, edge_v, b.last[b.prev[e - 1]]), ok
        if kind in ("min", "max"):
            ufunc = np.minimum if kind == "min" else np.maximum
            inside = _windows_reduce(ufunc, b.min if kind == "min" else b.max, a, e)
            return np.where(edge_ok, ufunc(inside, edge_v), inside), ok
        total = _windows_reduce(np.add, b.sum, a, e) + np.where(edge_ok, edge_v, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (total / n if kind == "avg" else total), ok

    return fn


def _bucketed_rate(is_counter: bool, is_rate: bool):
    """extrapolatedRate from summaries. The window's first sample is the first of its first non-empty bucket;
    its last is the one exactly on the end, or else the last of its last non-empty bucket. Counter resets are
    the ones inside each bucket plus those between consecutive non-empty buckets and up to the end sample."""

    def fn(b: _Buckets, ref: np.ndarray, range_ms: int):
        a, e, edge_ok, edge_v, n = b.window(ref, range_ms)
        ok = n >= 2  # then a sample lies before the end: fi < e and li >= a
        fi = np.minimum(b.next[a], e)
        li = b.prev[e - 1]
        first_v = b.first[fi]
        last_t = np.where(edge_ok, ref, b.last_ts[li])
        result = np.where(edge_ok, edge_v, b.last[li]) - first_v
        if is_counter:
            before = np.concatenate(([-1], b.prev[:-1]))
            before[b.series_start.ravel()] = -1  # the newest non-empty bucket before each bucket, in its series
            across = np.where((b.count > 0) & (before >= 0) & (b.first < b.last[before]), b.last[before], 0.0)
            inner = _sparse_windows_sum(b.resets, a, e)
            between = _sparse_windows_sum(across, np.minimum(fi + 1, e), e)
            to_end = np.where(edge_ok & (edge_v < b.last[li]), b.last[li], 0.0)
            result = result + inner + between + to_end
        with np.errstate(invalid="ignore", divide="ignore"):
            out = _extrapolate(result, b.first_ts[fi], last_t, first_v, n, ref, range_ms, is_counter, is_rate)
        return np.where(ok, out, 0.0), ok

    return fn


_BUCKETED = {
    "rate": _bucketed_rate(True, True),
    "increase": _bucketed_rate(True, False),
    "delta": _bucketed_rate(False, False),
    "avg_over_time": _bucketed_over_time("avg"),
    "min_over_time": _bucketed_over_time("min"),
    "max_over_time": _bucketed_over_time("max"),
    "sum_over_time": _bucketed_over_time("sum"),
    "count_over_time": _bucketed_over_time("count"),
    "last_over_time": _bucketed_over_time("last"),
}

_OPS = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.divide,
    "%": np.fmod,  # Go's math.Mod: the sign of the dividend
    "^": np.power,
    "==": np.equal,
    "!=": np.not_equal,
    ">": np.greater,
    "<": np.less,
    ">=": np.greater_equal,
    "<=": np.less_equal,
}
