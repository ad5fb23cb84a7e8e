"""Rollup rows on disk: hourly rows in per-series blocks of 32 days, 5-minute rows per series-day.

A blob is `[u8 version][u32 day mask][u32 n]` then, for each of ts-and-count, sum, min, max, last, `[u32 len]`
and a codec chunk. The day mask says which days of the block the rows cover, so a query knows when it must
fall back to raw samples (a day still being written, or never rolled up).

Version 2 adds what PromQL summaries need beyond the rollup (summaries.py), so an hourly query answers sealed days
without decoding their chunks: `[u8 flags]`, then the same `[u32 len]` + codec chunk for the first sample of each
hour, its offset from the hour's start, the last sample's offset, and (flag bit 0) the hour's counter resets.
Offsets compress to nearly nothing on regular readings; resets are kept only where few hours have any (counters:
a gauge falls in most hours, and its resets would cost 0.02 bytes a sample), so `rate` over a gauge's sealed
days still decodes them. Version 1 blocks (older stores) read as rollups without those.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from roost.errors import StoreError
from roost.store.codec import decode_chunk, encode_chunk
from roost.store.rollups import Rows

BLOCK_DAYS = 32
_HEAD = struct.Struct("<BII")
_LEN = struct.Struct("<I")
_VERSION = 2
_RESETS_KEPT = 1
EXTRA_FIELDS = ("first", "first_offset", "last_offset", "resets")


@dataclass(slots=True)
class Extras:
    """Per rollup row: the first sample's value, its and the last sample's offsets from the bucket start (ms),
    and the counter resets (None when not kept)."""

    first: np.ndarray
    first_offset: np.ndarray
    last_offset: np.ndarray
    resets: np.ndarray | None

    def select(self, keep: np.ndarray) -> Extras:
        return Extras(self.first[keep], self.first_offset[keep], self.last_offset[keep],
                      None if self.resets is None else self.resets[keep])

    @classmethod
    def concat(cls, parts: list[Extras]) -> Extras:
        resets = None if any(p.resets is None for p in parts) else np.concatenate([p.resets for p in parts])
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in EXTRA_FIELDS[:3]), resets)


def keep_resets(resets: np.ndarray) -> bool:
    """Whether a block's resets are worth storing: hours with any are rare (a counter's restarts)."""
    return int(np.count_nonzero(resets)) <= max(1, len(resets) // 100)


def encode_rows(rows: Rows, day_mask: int = 0, extras: Extras | None = None) -> bytes:
    parts = [_HEAD.pack(_VERSION if extras is not None else 1, day_mask, len(rows))]
    for field in Rows.FIELDS:
        parts += _field(rows.ts, getattr(rows, field))
    if extras is not None:
        parts.append(bytes([_RESETS_KEPT if extras.resets is not None else 0]))
        for field in EXTRA_FIELDS:
            values = getattr(extras, field)
            if values is not None:
                parts += _field(rows.ts, values)
    return b"".join(parts)


def _field(ts: np.ndarray, values: np.ndarray) -> list[bytes]:
    blob = encode_chunk(ts, np.asarray(values, np.float64))
    return [_LEN.pack(len(blob)), blob]


def decode_rows(blob: bytes) -> tuple[Rows, int]:
    rows, mask, _extras = decode_block(blob)
    return rows, mask


def decode_block(blob: bytes) -> tuple[Rows, int, Extras | None]:
    """Rows, day mask and (version 2) the extras of a block."""
    try:
        version, mask, n = _HEAD.unpack_from(blob, 0)
        if version not in (1, _VERSION):
            raise StoreError(f"rollup block has format version {version}, this roost reads 1 and {_VERSION}: upgrade roost")
        pos = _HEAD.size
        fields = []
        ts = np.empty(0, np.int64)
        for _ in Rows.FIELDS:
            ts, values, pos = _read_field(blob, pos, n)
            fields.append(values)
        extras = None
        if version == 2:
            flags = blob[pos]
            pos += 1
            more = []
            for field in EXTRA_FIELDS:
                if field == "resets" and not flags & _RESETS_KEPT:
                    more.append(None)
                    continue
                _ts, values, pos = _read_field(blob, pos, n)
                more.append(values)
            extras = Extras(*more)
    except (struct.error, IndexError) as exc:
        raise StoreError(f"rollup block is truncated ({exc}): restore the store from a snapshot") from None
    return Rows(ts, *fields), mask, extras


def _read_field(blob: bytes, pos: int, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    (length,) = _LEN.unpack_from(blob, pos)
    ts, values = decode_chunk(blob[pos + _LEN.size : pos + _LEN.size + length])
    if len(ts) != n:
        raise StoreError(f"rollup block holds {len(ts)} rows, header says {n}: restore the store from a snapshot")
    return ts, values, pos + _LEN.size + length
