"""One series' samples over a range, with the days stored at a regular interval left compact.

A day chunk whose timestamps are `first + k * interval` (a sensor that reports on a clock: most of them) needs no
timestamp array: which samples a PromQL window holds, and when the first and last of them were taken, is
arithmetic. Its values stay the chunk's scaled integers (`Decoded`) until a function needs them all, and its
counter resets are found once per chunk. A range function over a week of such days reads a few values per step
instead of expanding 40,000 samples twice (`roost.promql` works on `Samples` only).

Every answer is what the same question asked of the expanded arrays (`arrays()`) gives: `index` is
`np.searchsorted`, `at` is indexing, and values come out bit for bit as `Decoded.into` writes them.
"""

from __future__ import annotations

import numpy as np

from roost.store.codec import Decoded, unscale

__all__ = ["Samples"]


class Samples:
    """Sorted, unique samples made of parts in time order that do not overlap: regular runs `(chunk, k0, k1)`
    (samples k0 <= k < k1 of a regular `Decoded`) and `(ts, values)` arrays."""

    __slots__ = ("n", "_parts", "_firsts", "_intervals", "_sizes", "_offsets", "_regular", "_all_regular", "_flat", "_scaled")

    def __init__(self, parts: list[tuple[Decoded, int, int] | tuple[np.ndarray, np.ndarray]]):
        self._parts = [p for p in parts if (p[2] > p[1] if len(p) == 3 else len(p[0]))]
        firsts, intervals, offsets = [], [], [0]
        for part in self._parts:
            if len(part) == 3:
                chunk, k0, k1 = part
                firsts.append(chunk.first + k0 * chunk.interval)
                intervals.append(chunk.interval)
                offsets.append(offsets[-1] + k1 - k0)
            else:
                firsts.append(int(part[0][0]))
                intervals.append(0)  # an array part
                offsets.append(offsets[-1] + len(part[0]))
        self._firsts = np.array(firsts, np.int64)
        self._intervals = np.array(intervals, np.int64)
        self._offsets = np.array(offsets, np.int64)
        self._sizes = np.diff(self._offsets)
        self._regular = self._intervals > 0
        self._all_regular = 0 not in intervals
        self.n = offsets[-1]
        self._flat: np.ndarray | tuple[np.ndarray, int] | None = None
        self._scaled: tuple[np.ndarray, int] | None | bool = False  # False: not looked at yet

    # ------------------------------------------------------------------ positions

    def index(self, t: np.ndarray, side: str = "left") -> np.ndarray:
        """`np.searchsorted(ts, t, side)` over all the samples, for sorted times `t`."""
        part = np.searchsorted(self._firsts, t, "right") - 1  # the last part starting at or before each time
        out = np.zeros(len(t), np.int64)
        inside = part >= 0
        p = part[inside]
        tt = t[inside]
        first, interval, size = self._firsts[p], self._intervals[p], self._sizes[p]
        if self._all_regular:
            gap = tt - first
            local = -((-gap) // interval) if side == "left" else gap // interval + 1
        else:
            regular = interval > 0
            local = np.zeros(len(p), np.int64)
            gap = tt[regular] - first[regular]
            step = interval[regular]
            local[regular] = -((-gap) // step) if side == "left" else gap // step + 1
            runs = np.searchsorted(p, np.arange(len(self._parts) + 1))
            for i in np.flatnonzero(~self._regular):
                a, b = runs[i], runs[i + 1]
                if a < b:
                    local[a:b] = np.searchsorted(self._parts[i][0], tt[a:b], side)
        out[inside] = self._offsets[p] + np.minimum(local, size)
        return out

    def at(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The timestamps and values of samples `k` (indices < n, in any order)."""
        part = np.searchsorted(self._offsets, k, "right") - 1
        local = k - self._offsets[part]
        ts = self._firsts[part] + local * self._intervals[part]
        if not self._all_regular:
            for i in np.flatnonzero(~self._regular).tolist():
                mine = part == i
                ts[mine] = self._parts[i][0][local[mine]]
        flat = self._flat_values()
        if isinstance(flat, np.ndarray):
            return ts, flat[k]
        x, exponent = flat
        return ts, unscale(x[k], exponent)

    def _flat_values(self) -> np.ndarray | tuple[np.ndarray, int]:
        """Every value in one array, made once: `scaled()` where it is, else the floats."""
        flat = self._flat
        if flat is None:
            flat = self._flat = self.scaled() or self.values()
        return flat

    # ------------------------------------------------------------------ values

    def scaled(self) -> tuple[np.ndarray, int] | None:
        """Every value as (x, d) with values `unscale(x, d)`, if the parts are all chunks that share one decimal
        exponent (a week of a meter is 80 kB of int16 instead of 320 kB of floats); `unscale` is monotonic, so
        the min and max of x are those of the values."""
        if self._scaled is False:
            self._scaled = None
            chunks = [p[0] for p in self._parts] if self._all_regular else []
            if chunks and all(c.x is not None and c.negative_zeros is None and c.exponent == chunks[0].exponent for c in chunks):
                self._scaled = (np.concatenate([c.x[k0:k1] for c, k0, k1 in self._parts]), chunks[0].exponent)
        return self._scaled

    def values(self) -> np.ndarray:
        """Every value, in order (the timestamps left unexpanded)."""
        scaled = self.scaled()
        if scaled is not None:
            return unscale(*scaled)
        out = np.empty(self.n)
        for piece, a, b in zip(self._parts, self._offsets[:-1].tolist(), self._offsets[1:].tolist()):
            if len(piece) == 3:
                piece[0].values_into(out[a:b], piece[1])
            else:
                out[a:b] = piece[1]
        return out

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Every timestamp and value, in order."""
        return self.at(np.arange(self.n)) if self.n else (np.empty(0, np.int64), np.empty(0))

    def drops(self) -> tuple[np.ndarray, np.ndarray]:
        """The indices k whose value is below sample k-1's, and those values of k-1 (what a counter's reset adds
        back), in order."""
        where, before = [], []
        for piece, a in zip(self._parts, self._offsets[:-1].tolist()):
            if len(piece) == 3:
                chunk, k0, k1 = piece
                d = chunk.drops()
                if len(d) and (d[0] <= k0 or d[-1] >= k1):
                    d = d[(d > k0) & (d < k1)]
                if len(d):
                    where.append(d - k0 + a)
                    before.append(chunk.values_at(d - 1))
            else:
                v = piece[1]
                d = np.flatnonzero(v[1:] < v[:-1]) + 1
                if len(d):
                    where.append(d + a)
                    before.append(v[d - 1])
        if len(self._parts) > 1:  # between parts: the last sample of one and the first of the next
            seams = self._offsets[1:-1]
            _t, v = self.at(np.concatenate([seams - 1, seams]))
            last, first = v[: len(seams)], v[len(seams) :]
            fell = first < last
            if fell.any():
                where.append(seams[fell])
                before.append(last[fell])
        if not where:
            return np.empty(0, np.int64), np.empty(0)
        k, lost = np.concatenate(where), np.concatenate(before)
        order = np.argsort(k, kind="stable")
        return k[order], lost[order]
