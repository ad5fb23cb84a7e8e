"""One series' samples over a range, with the days whose timestamps keep a steady interval left compact.

A day chunk whose timestamps are `first + k * interval` — exactly (imported, backfilled or simulated data) or
give or take a small offset each (a sensor that reports every 15 s, stamped on arrival: `Decoded` keeps the
offsets as int16) — needs no timestamp array: which samples a PromQL window holds is arithmetic, checked
against the few samples the offsets leave in doubt, and when the first and last of them were taken is one
lookup each. Its values stay the chunk's scaled integers until a function needs them all, and its counter
resets are found once per chunk. A range function over a week of such days reads a few values per step
instead of expanding 40,000 samples twice (`roost.promql` works on `Samples` only). A query lays up to 64
series' `Samples` end to end, each moved in time past the one before (`shifted`, `joined`), and looks their
windows up in one call each: per series, the calls cost more than the arithmetic.

Every answer is what the same question asked of the expanded arrays (`arrays()`) gives: `index` is
`np.searchsorted`, `at` is indexing, and values come out bit for bit as `Decoded.into` writes them.
"""

from __future__ import annotations

import numpy as np

from roost.store.codec import Decoded, unscale

__all__ = ["Samples"]


class Samples:
    """Sorted, unique samples made of parts in time order that do not overlap: steady runs `(chunk, k0, k1)`
    (samples k0 <= k < k1 of a `Decoded` whose timestamps are first + k * interval, exactly or give or take an
    int16 offset: `Decoded.steady`) and `(ts, values)` arrays."""

    __slots__ = (
        "n", "_parts", "_firsts", "_starts", "_intervals", "_least", "_most", "_sizes", "_edges", "_arrays",
        "_jittered", "_jitter", "_flat", "_scaled", "_joins",
    )

    def __init__(self, parts: list[tuple[Decoded, int, int] | tuple[np.ndarray, np.ndarray]]):
        kept, firsts, intervals, sizes, offsets = [], [], [], [], []
        for p in parts:  # one pass: a query makes one of these per series
            if len(p) == 3:
                chunk, k0, k1 = p
                if k1 > k0:
                    kept.append(p)
                    firsts.append(chunk.first + k0 * chunk.interval)  # sample k0's time, without its offset
                    intervals.append(chunk.interval)
                    sizes.append(k1 - k0)
                    offsets.append(chunk.offsets)  # None where exact
            elif len(p[0]):
                kept.append(p)
                firsts.append(int(p[0][0]))
                intervals.append(1)  # array parts are searched
                sizes.append(len(p[0]))
                offsets.append(None)
        starts = firsts = np.array(firsts, np.int64)  # each part's first sample's time
        least = most = None  # each part's least and most offset, if any run has offsets
        if any(o is not None for o in offsets):
            starts = firsts + [0 if o is None else int(o[p[1]]) for o, p in zip(offsets, kept)]
            least = np.array([0 if o is None else p[0].spread[0] for o, p in zip(offsets, kept)], np.int64)
            most = np.array([0 if o is None else p[0].spread[1] for o, p in zip(offsets, kept)], np.int64)
        self._set(kept, firsts, np.array(intervals, np.int64), np.array(sizes, np.int64), starts, least, most)

    def _set(self, parts, firsts, intervals, sizes, starts, least, most) -> None:
        self._parts = parts
        self._arrays = [i for i, p in enumerate(parts) if len(p) == 2]  # the array parts' positions
        self._firsts, self._intervals, self._sizes, self._starts = firsts, intervals, sizes, starts
        self._jittered = least is not None
        self._least, self._most = least, most
        self._edges = np.zeros(len(parts) + 1, np.int64)  # part i holds samples edges[i] <= k < edges[i + 1]
        np.cumsum(sizes, out=self._edges[1:])
        self.n = int(self._edges[-1])
        self._jitter: np.ndarray | None = None  # `_jitter_of`
        self._flat: np.ndarray | tuple[np.ndarray, int] | None = None
        self._scaled: tuple[np.ndarray, int] | None | bool = False  # False: not looked at yet
        self._joins: np.ndarray | None = None  # `joined`: the parts where a piece begins, after the first

    @property
    def array_samples(self) -> int:
        """How many samples are held in arrays (not steady runs): what `shifted` copies."""
        return int(self._sizes[self._arrays].sum()) if self._arrays else 0

    def shifted(self, shift: int) -> Samples:
        """The same samples `shift` ms later, with copies of the array parts (a `ReadView.samples` series reads
        them into scratch arrays that the next series reuses): a piece for `joined`."""
        if not shift and not self._arrays:  # nothing to move or copy
            return self
        parts = [p if len(p) == 3 else (p[0] + shift, p[1].copy()) for p in self._parts]
        out = Samples.__new__(Samples)
        out._set(parts, self._firsts + shift, self._intervals, self._sizes, self._starts + shift, self._least, self._most)
        return out

    @classmethod
    def joined(cls, pieces: list[Samples]) -> Samples:
        """Samples laid end to end, each piece's times after the one before's (`shifted` makes them so): several
        series looked up in one call each instead of one per series."""
        if len(pieces) == 1:
            return pieces[0]
        jittered = any(p._jittered for p in pieces)

        def spread(p: Samples, which: str) -> np.ndarray:
            got = getattr(p, which)
            return got if got is not None else np.zeros(len(p._parts), np.int64)

        out = cls.__new__(cls)
        out._set(
            [part for p in pieces for part in p._parts],
            *(np.concatenate([getattr(p, name) for p in pieces]) for name in ("_firsts", "_intervals", "_sizes", "_starts")),
            np.concatenate([spread(p, "_least") for p in pieces]) if jittered else None,
            np.concatenate([spread(p, "_most") for p in pieces]) if jittered else None,
        )
        out._joins = np.cumsum([len(p._parts) for p in pieces[:-1]])
        return out

    # ------------------------------------------------------------------ positions

    def index(self, t: np.ndarray, side: str = "left") -> np.ndarray:
        """`np.searchsorted(ts, t, side)` over all the samples, for sorted times `t`."""
        out = np.zeros(len(t), np.int64)
        cut = int(np.searchsorted(t, self._starts[0], "left")) if len(self._starts) else len(t)
        if cut == len(t):
            return out
        # times before `cut` come before every sample (0); each other falls in the last part starting at or before it
        p = _ordered_part(self._starts, t)[cut:]
        tt = t[cut:]
        first, interval, size = self._firsts[p], self._intervals[p], self._sizes[p]
        if not self._jittered:  # exact runs: the index itself (>= 0: the run starts at or before t)
            gap = tt - first
            local = -((-gap) // interval) if side == "left" else gap // interval + 1
        else:  # a run's samples before lo are all on the near side of t, those from hi on all on the far side
            if side == "left":
                lo, hi = -((first + self._most[p] - tt) // interval), -((first + self._least[p] - tt) // interval)
            else:
                lo, hi = (tt - first - self._most[p]) // interval + 1, (tt - first - self._least[p]) // interval + 1
            local = np.clip(lo, 0, size)
            hi = np.minimum(hi, size)
            base = self._edges[p]
            for _ in range(int((hi - local).max(initial=0))):  # one step per sample the offsets leave in doubt
                doubt = local < hi
                if not doubt.any():
                    break
                k = base + np.minimum(local, size - 1)
                ts = self._run_times(k, self._part(k)[0])
                local += doubt & (ts < tt if side == "left" else ts <= tt)
        if self._arrays:
            runs = np.searchsorted(p, np.arange(len(self._parts) + 1))
            for i in self._arrays:
                a, b = runs[i], runs[i + 1]
                if a < b:
                    local[a:b] = np.searchsorted(self._parts[i][0], tt[a:b], side)
        out[cut:] = self._edges[p] + np.minimum(local, size)
        return out

    def _part(self, k: np.ndarray) -> tuple[np.ndarray, bool]:
        """The part that holds each of samples `k`, and whether `k` is in order."""
        if len(k) > 1 and not (k[1:] >= k[:-1]).all():
            return np.searchsorted(self._edges, k, "right") - 1, False
        return _ordered_part(self._edges, k), True

    def _run_times(self, k: np.ndarray, part: np.ndarray) -> np.ndarray:
        """The times of samples `k` in parts `part` as their runs give them (wrong for samples of array parts)."""
        ts = self._firsts[part] + (k - self._edges[part]) * self._intervals[part]
        if self._jittered:
            ts += self._jitter_of()[k]
        return ts

    def _jitter_of(self) -> np.ndarray | None:
        """Every sample's offset from its run's steady interval in one int16 array (0 in array parts and exact
        runs), made once; None if no run has offsets."""
        if self._jittered and self._jitter is None:
            self._jitter = np.concatenate([
                piece[0].offsets[piece[1] : piece[2]] if len(piece) == 3 and piece[0].offsets is not None
                else np.zeros(b - a, np.int16)
                for piece, a, b in zip(self._parts, self._edges[:-1].tolist(), self._edges[1:].tolist())
            ])
        return self._jitter

    def at(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The timestamps and values of samples `k` (indices < n, in any order; fastest in order)."""
        part, ordered = self._part(k)
        ts = self._run_times(k, part)
        if self._arrays:
            for i in self._arrays:
                if ordered:  # its samples are one slice of k
                    mine = slice(*np.searchsorted(part, [i, i + 1]).tolist())
                else:
                    mine = part == i
                ts[mine] = self._parts[i][0][k[mine] - self._edges[i]]
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
            chunks = [] if self._arrays else [p[0] for p in self._parts]
            if chunks and all(c.x is not None and c.negative_zeros is None and c.exponent == chunks[0].exponent for c in chunks):
                self._scaled = (np.concatenate([c.x[k0:k1] for c, k0, k1 in self._parts]), chunks[0].exponent)
        return self._scaled

    def values(self) -> np.ndarray:
        """Every value, in order (the timestamps left unexpanded)."""
        scaled = self.scaled()
        if scaled is not None:
            return unscale(*scaled)
        out = np.empty(self.n)
        for piece, a, b in zip(self._parts, self._edges[:-1].tolist(), self._edges[1:].tolist()):
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
        back), in order; in `joined` samples, not where one piece ends and the next begins."""
        where = []
        for piece, a in zip(self._parts, self._edges[:-1].tolist()):
            if len(piece) == 3:  # a chunk's drops are found once (`Decoded.drops`)
                chunk, k0, k1 = piece
                d = chunk.drops()
                if not len(d):
                    continue
                if d[0] <= k0 or d[-1] >= k1:
                    d = d[(d > k0) & (d < k1)]
                where.append(d - k0 + a)
            else:
                v = piece[1]
                where.append(np.flatnonzero(v[1:] < v[:-1]) + 1 + a)
        seams = self._edges[1:-1]  # between parts: the last sample of one and the first of the next
        if self._joins is not None:  # not between joined pieces (other series)
            seams = np.delete(seams, self._joins - 1)
        if len(seams):
            _t, v = self.at(np.concatenate([seams - 1, seams]))
            where.append(seams[v[len(seams) :] < v[: len(seams)]])
        k = np.sort(np.concatenate(where)) if where else np.empty(0, np.int64)
        if not len(k):
            return k, np.empty(0)
        return k, self.at(k - 1)[1]


def _ordered_part(bounds: np.ndarray, t: np.ndarray) -> np.ndarray:
    """`np.searchsorted(bounds, t, "right") - 1` (the last bound at or before each time, -1 before the first) for
    sorted `t`, by counting the times between consecutive bounds: one search per bound, not one per time (20 µs
    instead of 300 for a batch's 31,000 steps over 249 parts)."""
    if len(t) <= 4096:  # a series' steps: the plain search costs less than the counting's few calls
        return np.searchsorted(bounds, t, "right") - 1
    counts = np.diff(np.searchsorted(t, bounds, "left"), prepend=0, append=len(t))
    return np.repeat(np.arange(-1, len(bounds), dtype=np.int64), counts)
