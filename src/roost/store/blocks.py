"""Rollup rows on disk: hourly rows in per-series blocks of 32 days, 5-minute rows per series-day.

A blob is `[u8 version][u32 day mask][u32 n]` then, for each of ts-and-count, sum, min, max, last, `[u32 len]`
and a codec chunk. The day mask says which days of the block the rows cover, so a query knows when it must
fall back to raw samples (a day still being written, or never rolled up).
"""

from __future__ import annotations

import struct

import numpy as np

from roost.errors import StoreError
from roost.store.codec import decode_chunk, encode_chunk
from roost.store.rollups import Rows

BLOCK_DAYS = 32
_HEAD = struct.Struct("<BII")
_LEN = struct.Struct("<I")
_VERSION = 1


def encode_rows(rows: Rows, day_mask: int = 0) -> bytes:
    parts = [_HEAD.pack(_VERSION, day_mask, len(rows))]
    for field in Rows.FIELDS:
        blob = encode_chunk(rows.ts, np.asarray(getattr(rows, field), np.float64))
        parts += [_LEN.pack(len(blob)), blob]
    return b"".join(parts)


def decode_rows(blob: bytes) -> tuple[Rows, int]:
    try:
        version, mask, n = _HEAD.unpack_from(blob, 0)
        if version != _VERSION:
            raise StoreError(f"rollup block has format version {version}, this roost reads {_VERSION}: upgrade roost")
        pos, fields = _HEAD.size, []
        ts = np.empty(0, np.int64)
        for _ in Rows.FIELDS:
            (length,) = _LEN.unpack_from(blob, pos)
            ts, values = decode_chunk(blob[pos + _LEN.size : pos + _LEN.size + length])
            fields.append(values)
            pos += _LEN.size + length
    except struct.error as exc:
        raise StoreError(f"rollup block is truncated ({exc}): restore the store from a snapshot") from None
    if len(ts) != n:
        raise StoreError(f"rollup block holds {len(ts)} rows, header says {n}: restore the store from a snapshot")
    return Rows(ts, *fields), mask
