"""The compressed chunk codec: one series' samples for one UTC day in a few hundred bytes.

Layout of a chunk blob (varint: LEB128; svarint: zigzag varint; x: the values
as integers, see below)::

    u8       format version (1)
    varint   n, the number of samples; the blob ends here when n == 0
    svarint  ts[0] in milliseconds
    svarint  ts[1] - ts[0]                             (only when n >= 2)
    u8       value scheme, then its parameters:
               RAW, RAW_XOR    nothing
               DELTA1          i8 exponent d, varint z, svarint x[0]
               SPARSE          i8 exponent d, varint z, varint m, svarint x[0]
               DELTA2          i8 exponent d, varint z, svarint x[0], svarint x[1] - x[0]
               TREND           i8 exponent d, varint z, u8 b, svarint knot[0],
                               svarint knot[1] - knot[0]
    u8       byte width of each stream below, in order: 1, 2, 4 or 8, or 0
             for a stream of zeros, which then takes no bytes
    ...      one magicless zstd frame holding the streams back to back:
               timestamps      delta-of-delta of ts                   n - 2
               DELTA1          delta of x                             n - 1
               SPARSE          zero deltas before each non-zero one   m
                               the non-zero deltas of x               m
               DELTA2          delta-of-delta of x                    n - 2
               TREND           delta-of-delta of the knots            K - 1
                               x minus the knot interpolation         n
               RAW             float64 bit patterns                   n
               RAW_XOR         bit patterns XOR the previous one      n
               decimal schemes deltas of the indices of -0.0          z (if z > 0)

Decimal schemes code x = round(v * 10**d) for the smallest d in -9..9 with
which `unscale` gives every value back bit for bit; -0.0 scales to 0 and is
restored from its index list. Anything else (0.1 + 0.2, NaN) goes RAW or
RAW_XOR. Signed streams are zigzagged, cut to the narrowest width and stored as
byte planes, which zstd's Huffman stage codes well. TREND knots sit every 2**b
samples (knot k at sample k * 2**b, K = ((n - 1) >> b) + 1 segments); each x
is predicted by exact integer interpolation between the two knots around it,
which the encoder fits as hat-weighted means. On noise around a slow signal
TREND is 11-13 % smaller than DELTA1, whose differences double the noise
variance; on readings that mostly repeat (humidity) SPARSE is 12 % smaller,
because Huffman coding spends at least a bit on every zero delta. Every decode
step is a vector operation (cumsum, broadcasting, scatter, XOR accumulate,
table lookup); nothing loops per sample, and regular timestamps are an arange.

Measured with bench/codec.py on bench/workload.py (100 series, 30 days):
0.358 bytes/sample in all (0.003 of it header and timestamps) against 0.400 for
the values alone with DELTA1 and zstd-19. Picking the smallest scheme per chunk
beats any one scheme; the block size of TREND (32, 64 or 128) matters by only
0.1 %. On residual noise zstd level 1 is as small as 19 and 50x faster, while
on sparse streams level 17 is up to 20 % smaller, so the encoder tries both.
One frame for all streams beats a frame per stream (frame and Huffman table
overhead is per frame).
"""
from functools import lru_cache

import numpy as np
import zstandard

from roost.errors import StoreError

FORMAT_VERSION = 1

RAW, RAW_XOR, DELTA1, DELTA2, TREND, SPARSE = range(6)
_SCHEME_NAMES = {RAW: "raw", RAW_XOR: "raw-xor", DELTA1: "delta", DELTA2: "delta2", TREND: "trend", SPARSE: "sparse"}

_MAX_EXPONENT = 9
# Past 2**53 a float64 no longer holds every integer, so the scaled value
# would not be exact.
_MAX_SCALED = 2.0**53
# Rounding makes -0.0 (an outdoor sensor's round(-0.04, 1)), which would
# otherwise push a whole day of readings to RAW.
_NEGATIVE_ZERO = np.int64(-(2**63))
_TREND_BLOCK_BITS = (6,)  # 64 samples, 16 minutes at 15 s: 32 and 128 were within 0.1 % and cost encode time
_MAX_SAMPLES = 86_400_000  # one UTC day of unique millisecond timestamps


# zstd contexts must not be used by two threads at once (the hub compacts in a worker thread while queries
# decode on the event loop), and each keeps a workspace sized for the largest input it has seen (up to ~2 MB
# at level 17). They are lent from shared free lists (list.pop and list.append are atomic), so there are only
# as many as were ever in use at once. Kept per thread instead, every worker thread a compaction ever ran on
# grew a set of its own: a hub's resident memory climbed for hours.
_free_compressors: dict[tuple[int, int], list[zstandard.ZstdCompressor]] = {}
_free_decompressors: list[zstandard.ZstdDecompressor] = []


def _compress_with(level: int, size_class: int, body: bytes) -> bytes:
    free = _free_compressors.setdefault((level, size_class), [])
    try:
        compressor = free.pop()
    except IndexError:
        compressor = _new_compressor(level, size_class)
    try:
        return compressor.compress(body)
    finally:
        free.append(compressor)


def _decompress_with(frame: bytes, size: int) -> bytes:
    try:
        decompressor = _free_decompressors.pop()
    except IndexError:
        decompressor = zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS)
    try:
        return decompressor.decompress(frame, max_output_size=size)
    finally:
        _free_decompressors.append(decompressor)


def _new_compressor(level: int, size_class: int) -> zstandard.ZstdCompressor:
    # zstd tunes each level for inputs up to 16 KB, 128 KB, 256 KB and beyond; told the size, level 17
    # needs ~1 ms on a 2 KB stream instead of ~10 ms spent setting up tables sized for megabytes.
    return zstandard.ZstdCompressor(
        compression_params=zstandard.ZstdCompressionParameters.from_level(
            level,
            source_size=size_class,
            # No magic, size, checksum or dictionary id: the container has all that.
            format=zstandard.FORMAT_ZSTD1_MAGICLESS,
            write_content_size=False,
            write_checksum=False,
            write_dict_id=False,
        )
    )


def _size_class(n: int) -> int:
    for limit in (16 << 10, 128 << 10, 256 << 10):
        if n <= limit:
            return limit
    return 0  # unknown size: zstd's defaults for large inputs




# --- public API -------------------------------------------------------------

def encode_chunk(ts: np.ndarray, values: np.ndarray) -> bytes:
    """Compress one chunk with the smallest of the schemes that fit it.

    `decode_chunk` gives back exactly these timestamps and value bits.
    """
    ts = np.ascontiguousarray(ts, dtype=np.int64)
    values = np.ascontiguousarray(values, dtype=np.float64)
    if ts.shape != values.shape or ts.ndim != 1:
        raise ValueError(f"encode_chunk: ts {ts.shape} and values {values.shape} must be equal 1-d shapes")
    n = len(ts)
    head = bytearray([FORMAT_VERSION])
    _put_varint(head, n)
    if n == 0:
        return bytes(head)
    ts_seeds, ts_stream = _encode_timestamps(ts)
    for seed in ts_seeds:
        _put_svarint(head, seed)
    best = min(_value_candidates(values), key=_Encoded.cost)
    head.append(best.scheme)
    head += best.params
    for seed in best.seeds:
        _put_svarint(head, seed)
    packed = [_pack(ts_stream), *best.packed]
    head += bytes(width for width, _ in packed)
    return bytes(head) + _compress(b"".join(planes for _, planes in packed), thorough=True)


def decode_chunk(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The (int64 ms timestamps, float64 values) that `encode_chunk` was given."""
    chunk = _parse(blob)
    return chunk.timestamps(), chunk.values()


_NARROW = [(t, int(np.iinfo(t).min), int(np.iinfo(t).max)) for t in (np.int8, np.int16, np.int32)]


class Decoded:
    """A decoded chunk held compactly for a cache; `arrays()` gives exactly what `decode_chunk` gives.

    Regular timestamps are kept as (first, interval); timestamps a little off a steady interval (stamped on
    arrival) as that and each one's int16 offset from first + k * interval; others as int32 offsets from the
    first (a day of milliseconds fits). Decimal values are kept as their scaled integers in the narrowest type
    that holds them (a day of temperatures in centidegrees is int16: 2 bytes a sample instead of 16), expanded
    by the same `unscale` the decoder uses, so the floats are bit for bit the same.
    """

    __slots__ = (
        "n", "first", "interval", "offsets", "spread", "x", "exponent", "negative_zeros", "values", "nbytes", "_drops",
    )

    def __init__(self, blob: bytes):
        chunk = _parse(blob)
        self.n = chunk.n
        self.first, self.interval, self.offsets, self.spread = 0, 0, None, (0, 0)
        if chunk.n >= 2 and chunk.layout[0][2] == 0:
            self.first, self.interval = chunk.ts_seeds
        else:
            ts = chunk.timestamps()
            if len(ts) and int(ts.max()) - int(ts.min()) < 2**31:
                self.first = int(ts[0])
                if chunk.n >= 2:  # times stamped on arrival: each a little off a steady interval, kept as int16
                    interval = round((int(ts[-1]) - self.first) / (chunk.n - 1))
                    off = ts - self.first - _counting(chunk.n) * interval
                    least, most = int(off.min()), int(off.max())
                    if interval > 0 and least >= -(2**15) and most < 2**15:
                        self.interval, self.offsets, self.spread = interval, off.astype(np.int16), (least, most)
                if self.offsets is None:
                    self.offsets = (ts - self.first).astype(np.int32)
            else:  # not one day's span (the codec takes any int64 timestamps)
                self.offsets = ts
        self.x = self.values = self.negative_zeros = self._drops = None
        self.exponent = chunk.exponent
        if chunk.exponent is None or chunk.n == 0:
            self.values = chunk.values()
            self.values.setflags(write=False)  # shared by every caller of arrays()
        else:
            x = _scaled(chunk)
            lo, hi = (int(x.min()), int(x.max())) if len(x) else (0, 0)
            for narrow, least, most in _NARROW:
                if least <= lo and hi <= most:
                    x = x.astype(narrow)
                    break
            self.x = x
            if chunk.negative_zeros:
                self.negative_zeros = chunk._negative_zero_indices()
        self.nbytes = 64 + sum(a.nbytes for a in (self.offsets, self.x, self.values, self.negative_zeros) if a is not None)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        ts, values = np.empty(self.n, np.int64), np.empty(self.n, np.float64)
        self.into(ts, values)
        return ts, values

    def into(self, ts: np.ndarray, values: np.ndarray) -> None:
        """Write the samples into `ts` (int64) and `values` (float64) of length n: a range read fills one array."""
        if self.offsets is not None and self.interval:  # first + k * interval + offset k
            np.multiply(_counting(self.n), np.int64(self.interval), out=ts)
            ts += self.first
            ts += self.offsets
        elif self.offsets is not None:
            np.add(self.offsets, np.int64(self.first), out=ts)
        else:
            np.multiply(_counting(self.n), np.int64(self.interval), out=ts)
            ts += self.first
        self.values_into(values)

    def values_into(self, values: np.ndarray, start: int = 0) -> None:
        """Only the values of samples start, start + 1, ... (as many as `values` holds), as `into` writes them."""
        end = start + len(values)
        if self.x is None:
            values[:] = self.values[start:end]
            return
        d = self.exponent
        # As `unscale`: exact integers in float64, then one correctly rounded division (or multiplication).
        if d >= 0:
            np.divide(self.x[start:end], 10.0**d, out=values)
        else:
            np.multiply(self.x[start:end], 10.0**-d, out=values)
        if self.negative_zeros is not None:
            zeros = self.negative_zeros
            if start or end < self.n:
                zeros = zeros[(zeros >= start) & (zeros < end)] - start
            values[zeros] = -0.0

    @property
    def steady(self) -> bool:
        """Timestamps first + k * interval, exactly or give or take an int16 offset (`spread`: the least and most
        of those): which samples lie before a time is known from a few of them, without expanding the day."""
        return self.interval > 0 and self.n >= 2

    def before(self, t: int) -> int:
        """How many samples lie before time `t` (`np.searchsorted(ts, t)`) in a `steady` chunk, found from the few
        whose offsets could put them on either side."""
        if self.offsets is None:  # exact
            return min(max(-((self.first - t) // self.interval), 0), self.n)
        least, most = self.spread
        lo = min(max(-((self.first + most - t) // self.interval), 0), self.n)  # samples before lo are before t
        hi = min(max(-((self.first + least - t) // self.interval), 0), self.n)  # those from hi on are not
        if lo == hi:
            return lo
        ts = self.first + _counting(hi)[lo:] * self.interval + self.offsets[lo:hi]
        return lo + int(np.searchsorted(ts, t))

    def drops(self) -> np.ndarray:
        """Indices k where sample k's value is below sample k-1's (a counter's resets), made once per chunk: a
        counter's day usually has none, so a rate over it needs no pass over its values."""
        drops = self._drops
        if drops is None:
            x = self.x if self.x is not None else self.values
            drops = np.flatnonzero(x[1:] < x[:-1]) + 1  # scaled integers compare as their values do
            drops.setflags(write=False)
            self._drops = drops
        return drops


_count_up = np.arange(0, dtype=np.int64)


def _counting(n: int) -> np.ndarray:
    """0, 1, ..., n - 1 (int64) from one array kept for every decode."""
    global _count_up
    counts = _count_up
    if len(counts) < n:
        counts = _count_up = np.arange(max(n, 8192), dtype=np.int64)
        counts.setflags(write=False)
    return counts[:n]


def _scaled(chunk: "_Chunk") -> np.ndarray:
    """The scaled integers x of a chunk with a decimal scheme (what `_Chunk.values` unscales)."""
    if chunk.scheme == DELTA1:
        return _integrate1(chunk.seeds[0], chunk._stream(1))
    if chunk.scheme == SPARSE:
        return _integrate1(chunk.seeds[0], chunk._sparse_deltas())
    if chunk.scheme == DELTA2:
        return _integrate2(chunk.seeds[0], chunk.seeds[1], chunk._stream(1))
    knots = _integrate2(chunk.seeds[0], chunk.seeds[1], chunk._stream(1))
    x = _interpolate(knots, chunk.block_bits, chunk.n)
    x += chunk._stream(2)
    return x


def decode_timestamps(blob: bytes) -> np.ndarray:
    """Only the int64 ms timestamps of a chunk, skipping value reconstruction."""
    return _parse(blob).timestamps()


def describe_chunk(blob: bytes) -> str:
    """A one-line summary of a chunk's header for debugging: count, scheme, exponent."""
    chunk = _parse(blob)
    exponent = "" if chunk.exponent is None else f" d={chunk.exponent}"
    return f"v{FORMAT_VERSION} n={chunk.n} {_SCHEME_NAMES.get(chunk.scheme, '?')}{exponent} {len(blob)} B"


# --- encoding ---------------------------------------------------------------

class _Encoded:
    """One candidate coding of the values: header parameters, seeds and signed streams."""

    __slots__ = ("scheme", "params", "seeds", "packed")

    def __init__(self, scheme: int, params: bytes, seeds: list[int], streams: list[np.ndarray]):
        self.scheme, self.params, self.seeds = scheme, bytes(params), seeds
        # Float bit patterns are unsigned already; zigzag would smear the sign and
        # exponent bits across byte planes.
        zigzag = scheme not in (RAW, RAW_XOR)
        self.packed = [_pack(stream, zigzag) for stream in streams]

    def cost(self) -> int:
        return len(_compress(b"".join(planes for _, planes in self.packed))) + 3 * len(self.seeds)


def _encode_timestamps(ts: np.ndarray) -> tuple[list[int], np.ndarray]:
    if len(ts) == 1:
        return [int(ts[0])], _EMPTY
    deltas = np.diff(ts)
    return [int(ts[0]), int(deltas[0])], np.diff(deltas)


def _value_candidates(values: np.ndarray) -> list[_Encoded]:
    scaled = _decimal_scale(values)
    if scaled is None:
        bits = values.view(np.int64)
        return [
            _Encoded(RAW, b"", [], [bits]),
            _Encoded(RAW_XOR, b"", [], [bits ^ np.concatenate(([0], bits[:-1]))]),
        ]
    exponent, x, negative_zeros = scaled
    params = bytearray(exponent.to_bytes(1, "little", signed=True))
    _put_varint(params, len(negative_zeros))
    zeros = [np.diff(negative_zeros, prepend=0)] if len(negative_zeros) else []
    n = len(x)
    dx = np.diff(x)
    candidates = [_Encoded(DELTA1, params, [int(x[0])], [dx, *zeros]), _sparse(params, x, dx, zeros)]
    if n >= 3:
        candidates.append(_Encoded(DELTA2, params, [int(x[0]), int(dx[0])], [np.diff(dx), *zeros]))
    for block_bits in _TREND_BLOCK_BITS:
        if n >= 2 << block_bits:
            knots = _fit_knots(x, block_bits)
            kd = np.diff(knots)
            residuals = x - _interpolate(knots, block_bits, n)
            seeds = [int(knots[0]), int(kd[0])]
            candidates.append(_Encoded(TREND, params + bytes([block_bits]), seeds, [np.diff(kd), residuals, *zeros]))
    return candidates


def _sparse(params: bytearray, x: np.ndarray, dx: np.ndarray, zeros: list[np.ndarray]) -> "_Encoded":
    """DELTA1 as (gap, value) pairs for the non-zero deltas of slow readings such as humidity."""
    changes = np.flatnonzero(dx)
    gaps = np.diff(changes, prepend=-1) - 1
    counted = bytearray(params)
    _put_varint(counted, len(changes))
    return _Encoded(SPARSE, counted, [int(x[0])], [gaps, dx[changes], *zeros])


def _decimal_scale(values: np.ndarray) -> tuple[int, np.ndarray, np.ndarray] | None:
    """The smallest exponent d and integers x with `unscale(x, d)` bit-identical to values,
    and the indices of the -0.0 among them (which scale to 0 and come back as +0.0)."""
    negative_zeros = np.flatnonzero(values.view(np.int64) == _NEGATIVE_ZERO)
    values = values + 0.0  # -0.0 + 0.0 is +0.0; everything else is unchanged
    bits = values.view(np.int64)
    with np.errstate(over="ignore", invalid="ignore"):  # huge values and NaN simply do not scale
        for d in range(_MAX_EXPONENT + 1):
            x = _scaled_exactly(values, bits, d)
            if x is not None:
                break
        else:
            return None
        # Whole numbers that are multiples of ten (1500 W) shrink further with d < 0.
        while d > -_MAX_EXPONENT and np.any(x) and not np.any(x % 10):
            smaller = _scaled_exactly(values, bits, d - 1)
            if smaller is None:
                break
            d, x = d - 1, smaller
    return d, x, negative_zeros


def _scaled_exactly(values: np.ndarray, bits: np.ndarray, d: int) -> np.ndarray | None:
    scaled = np.round(values * 10.0**d) if d >= 0 else np.round(values / 10.0**-d)
    if not np.all(np.abs(scaled) < _MAX_SCALED):  # also false for NaN and inf
        return None
    x = scaled.astype(np.int64)
    if not np.array_equal(unscale(x, d).view(np.int64), bits):
        return None
    return x


def unscale(x: np.ndarray, d: int) -> np.ndarray:
    # Division, not multiplication by 10**-d: 2127 / 100 is the double nearest to
    # 21.27 (IEEE division rounds correctly), 2127 * 0.01 is not always.
    floats = x.astype(np.float64)
    return np.divide(floats, 10.0**d, out=floats) if d >= 0 else np.multiply(floats, 10.0**-d, out=floats)


def _fit_knots(x: np.ndarray, block_bits: int) -> np.ndarray:
    """Knots every 2**b samples: means of the samples around each, weighted by the hat function."""
    block = 1 << block_bits
    n = len(x)
    rows = _segments(n, block_bits)  # knot k sits at sample k * block, the last one past the end
    padded = np.zeros(rows * block)
    padded[:n] = x
    present = np.zeros(rows * block)
    present[:n] = 1
    towards_next = np.arange(block) / block
    segments, counts = padded.reshape(rows, block), present.reshape(rows, block)
    num = np.zeros(rows + 1)
    den = np.zeros(rows + 1)
    num[:-1] += segments @ (1 - towards_next)
    num[1:] += segments @ towards_next
    den[:-1] += counts @ (1 - towards_next)
    den[1:] += counts @ towards_next
    if den[-1] == 0:  # no sample beyond the last full block: continue flat
        num[-1], den[-1] = num[-2], den[-2]
    return np.round(num / den).astype(np.int64)


def _segments(n: int, block_bits: int) -> int:
    return ((n - 1) >> block_bits) + 1


def _interpolate(knots: np.ndarray, block_bits: int, n: int) -> np.ndarray:
    """Integer linear interpolation between knots: exact, so identical on every platform."""
    # knot + floor((next - knot) * offset / block + 1/2), one block per row.
    pred = (knots[1:] - knots[:-1])[:, None] * _offsets(block_bits)
    pred += 1 << block_bits >> 1
    pred >>= block_bits
    pred += knots[:-1, None]
    return pred.ravel()[:n]


@lru_cache(maxsize=8)
def _offsets(block_bits: int) -> np.ndarray:
    return np.arange(1 << block_bits, dtype=np.int64)


def _pack(stream: np.ndarray, zigzag: bool = True) -> tuple[int, bytes]:
    """Zigzag to unsigned, cut to the narrowest width (0: all zero), and lay out as byte planes."""
    unsigned = ((stream << 1) ^ (stream >> 63) if zigzag else stream).view(np.uint64)
    top = int(unsigned.max()) if len(unsigned) else 0
    if top == 0:
        return 0, b""
    width = 1 if top < 1 << 8 else 2 if top < 1 << 16 else 4 if top < 1 << 32 else 8
    narrow = unsigned.astype(f"<u{width}")
    if width == 1:
        return width, narrow.tobytes()
    # Byte planes: high bytes are mostly zero and compress apart from the noisy low ones.
    columns = narrow.view(np.uint8).reshape(-1, width)
    return width, b"".join(columns[:, byte].tobytes() for byte in range(width))


def _compress(body: bytes, thorough: bool = False) -> bytes:
    """The smaller of a fast and, if `thorough`, a slow frame; nothing for an empty body."""
    if not body:
        return b""
    size_class = _size_class(len(body))
    frame = _compress_with(1, size_class, body)
    # Level 17 finds the repeats in sparse streams (humidity deltas -20 %, the
    # high byte plane of power -5 %) for ~1 ms; on plain noise level 1 wins.
    if thorough:
        frame = min(frame, _compress_with(17, size_class, body), key=len)
    return frame


_EMPTY = np.zeros(0, dtype=np.int64)


# --- decoding ---------------------------------------------------------------

class _Chunk:
    """A parsed blob: header fields and the decompressed streams, unpacked on demand."""

    def __init__(self, n: int, ts_seeds: list[int], scheme: int):
        self.n, self.ts_seeds, self.scheme = n, ts_seeds, scheme
        self.exponent: int | None = None
        self.block_bits = 0
        self.seeds: list[int] = []
        self.negative_zeros = 0
        self.changes = 0
        self.frame = b""
        self.body_size = 0
        self.body: bytes | None = None  # decompressed on first use: regular timestamps never need it
        self.layout: list[tuple[int, int, int, bool]] = []  # (offset, length, width, zigzag)

    def timestamps(self) -> np.ndarray:
        if self.n <= 1:
            return np.array(self.ts_seeds, dtype=np.int64)
        first, delta = self.ts_seeds
        if self.layout[0][2] == 0:  # the usual case: a perfectly regular interval
            # Not arange(first, stop, delta): it sizes the result in float64.
            ts = np.arange(self.n, dtype=np.int64)
            ts *= delta
            ts += first
            return ts
        return _integrate2(first, delta, self._stream(0))

    def values(self) -> np.ndarray:
        if self.n == 0:
            return np.zeros(0, dtype=np.float64)
        if self.scheme == RAW:
            return self._stream(1).view(np.float64)
        if self.scheme == RAW_XOR:
            return np.bitwise_xor.accumulate(self._stream(1)).view(np.float64)
        values = unscale(_scaled(self), self.exponent)
        if self.negative_zeros:
            values[self._negative_zero_indices()] = -0.0
        return values

    def _sparse_deltas(self) -> np.ndarray:
        deltas = np.zeros(self.n - 1, dtype=np.int64)
        if self.changes:
            positions = np.cumsum(self._stream(1) + 1) - 1
            if positions.min() < 0 or positions.max() >= self.n - 1:
                raise StoreError(f"chunk blob is corrupt: changes fall outside the {self.n} samples")
            deltas[positions] = self._stream(2)
        return deltas

    def _negative_zero_indices(self) -> np.ndarray:
        indices = np.cumsum(self._stream(len(self.layout) - 1))
        if indices[0] < 0 or indices[-1] >= self.n or np.any(np.diff(indices) <= 0):
            raise StoreError(f"chunk blob is corrupt: -0.0 indices fall outside the {self.n} samples")
        return indices

    def _stream(self, index: int) -> np.ndarray:
        offset, length, width, zigzag = self.layout[index]
        if width == 0:
            return np.zeros(length, dtype=np.int64)
        if self.body is None:
            self.body = _decompress(self.frame, self.body_size)
        planes = np.frombuffer(self.body, dtype=np.uint8, count=length * width, offset=offset)
        if width == 1:
            return (_UNZIGZAG8 if zigzag else _WIDEN8).take(planes)
        # Column by column: numpy's transposing copy is five times slower on this shape.
        interleaved = np.empty((length, width), dtype=np.uint8)
        for byte, plane in enumerate(planes.reshape(width, length)):
            interleaved[:, byte] = plane
        narrow = interleaved.view(f"<u{width}").ravel()
        if zigzag:
            # In the narrow type, then sign-extend: a quarter of the work of doing it in 64 bits.
            narrow = ((narrow >> 1) ^ -(narrow & 1)).view(f"<i{width}")
        return narrow.astype(np.int64)


_WIDEN8 = np.arange(256, dtype=np.int64)
_UNZIGZAG8 = (_WIDEN8 >> 1) ^ -(_WIDEN8 & 1)


def _integrate1(first: int, deltas: np.ndarray) -> np.ndarray:
    out = np.empty(len(deltas) + 1, dtype=np.int64)
    out[0] = first
    out[1:] = deltas
    return np.cumsum(out, out=out)


def _integrate2(first: int, first_delta: int, delta_deltas: np.ndarray) -> np.ndarray:
    out = np.empty(len(delta_deltas) + 2, dtype=np.int64)
    out[0], out[1] = first, first_delta
    out[2:] = delta_deltas
    np.cumsum(out[1:], out=out[1:])
    return np.cumsum(out, out=out)


def _parse(blob: bytes) -> _Chunk:
    reader = _Reader(blob)
    version = reader.byte("format version")
    if version != FORMAT_VERSION:
        raise StoreError(
            f"chunk blob: format version {version} is not one this roost reads ({FORMAT_VERSION})"
            " — was the data directory written by a newer roost?"
        )
    n = reader.varint("sample count")
    if n > _MAX_SAMPLES:
        raise StoreError(f"chunk blob is corrupt: its header claims {n} samples, a day holds at most {_MAX_SAMPLES}")
    if n == 0:
        return _Chunk(0, [], RAW)
    ts_seeds = [reader.svarint("first timestamp")]
    if n >= 2:
        ts_seeds.append(reader.svarint("first timestamp delta"))
    chunk = _Chunk(n, ts_seeds, reader.byte("value scheme"))
    lengths = [max(n - 2, 0), *_read_value_params(reader, chunk)]
    widths = [reader.width() for _ in lengths]
    zigzag = chunk.scheme not in (RAW, RAW_XOR)
    offset = 0
    for index, (length, width) in enumerate(zip(lengths, widths)):
        chunk.layout.append((offset, length, width, zigzag or index == 0))
        offset += length * width
    chunk.frame, chunk.body_size = reader.rest(), offset
    if offset == 0 and chunk.frame:
        raise StoreError(f"chunk blob is corrupt: {len(chunk.frame)} bytes follow a header that needs none")
    return chunk


def _read_value_params(reader: "_Reader", chunk: _Chunk) -> list[int]:
    """Read the scheme's parameters into `chunk`; return the lengths of its streams."""
    n, scheme = chunk.n, chunk.scheme
    if scheme in (RAW, RAW_XOR):
        return [n]
    if scheme not in (DELTA1, DELTA2, TREND, SPARSE):
        raise StoreError(f"chunk blob is corrupt: unknown value scheme {scheme} — written by a newer roost?")
    if scheme in (DELTA2, TREND) and n < 2:
        raise StoreError(f"chunk blob is corrupt: scheme {_SCHEME_NAMES[scheme]} needs 2 samples, the header has {n}")
    chunk.exponent = reader.int8("decimal exponent")
    chunk.negative_zeros = reader.varint("count of -0.0")
    if chunk.negative_zeros > n:
        raise StoreError(f"chunk blob is corrupt: {chunk.negative_zeros} of {n} samples are -0.0")
    zeros = [chunk.negative_zeros] if chunk.negative_zeros else []
    if scheme == SPARSE:
        chunk.changes = reader.varint("count of changes")
        if chunk.changes > max(n - 1, 0):
            raise StoreError(f"chunk blob is corrupt: {chunk.changes} changes between {n} samples")
    if scheme == TREND:
        chunk.block_bits = reader.byte("trend block size")
        if not 0 < chunk.block_bits < 16:
            raise StoreError(f"chunk blob is corrupt: a trend block of 2**{chunk.block_bits} samples")
    chunk.seeds = [reader.svarint("first value")]
    if scheme in (DELTA2, TREND):
        chunk.seeds.append(reader.svarint("first value delta"))
    if scheme == DELTA1:
        return [n - 1, *zeros]
    if scheme == SPARSE:
        return [chunk.changes, chunk.changes, *zeros]
    if scheme == DELTA2:
        return [n - 2, *zeros]
    return [_segments(n, chunk.block_bits) - 1, n, *zeros]


def _decompress(frame: bytes, size: int) -> bytes:
    if size == 0 and not frame:
        return b""
    # A zstd block holds at most 128 KiB in at least 4 bytes; more means a
    # corrupt header, and asking zstd for it would allocate the claimed size.
    if size > len(frame) << 15:
        raise StoreError(
            f"chunk blob is corrupt: {len(frame)} compressed bytes cannot hold the {size} the header promises"
        )
    try:
        body = _decompress_with(frame, size)
    except zstandard.ZstdError as error:
        raise StoreError(f"chunk blob is corrupt: its zstd frame does not decompress ({error})") from None
    if len(body) != size:
        raise StoreError(f"chunk blob is corrupt: its payload is {len(body)} bytes, the header promises {size}")
    return body


def _truncated(pos: int, field: str) -> StoreError:
    return StoreError(f"chunk blob is truncated: it ends at byte {pos}, before the {field}")


class _Reader:
    """Reads header fields; running out of bytes is a StoreError naming the field."""

    def __init__(self, blob: bytes):
        self.blob, self.pos = bytes(blob), 0

    def byte(self, field: str) -> int:
        if self.pos >= len(self.blob):
            raise _truncated(self.pos, field)
        self.pos += 1
        return self.blob[self.pos - 1]

    def int8(self, field: str) -> int:
        value = self.byte(field)
        return value - 256 if value > 127 else value

    def width(self) -> int:
        width = self.byte("stream width")
        if width not in (0, 1, 2, 4, 8):
            raise StoreError(f"chunk blob is corrupt: stream width {width} is not 0, 1, 2, 4 or 8 bytes")
        return width

    def varint(self, field: str) -> int:
        blob, pos = self.blob, self.pos  # a header holds several: read without a call per byte
        value = shift = 0
        while True:
            if pos >= len(blob):
                raise _truncated(pos, field)
            byte = blob[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if value >> 64:
                raise StoreError(f"chunk blob is corrupt: the {field} varint is longer than 64 bits")
            if byte < 0x80:
                self.pos = pos
                return value
            shift += 7

    def svarint(self, field: str) -> int:
        value = self.varint(field)
        return (value >> 1) ^ -(value & 1)

    def rest(self) -> bytes:
        return self.blob[self.pos:]


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def _put_svarint(out: bytearray, value: int) -> None:
    _put_varint(out, value << 1 if value >= 0 else (-value << 1) - 1)
