"""Write-ahead log bytes: the intact prefix of a segment (in memory or read from its file) and the records of
shipped batches."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from roost.store.wal import RECORD

_HEADER = struct.Struct("<II")  # the frame of wal.py: [u32 length][u32 crc32][body]


def intact_length(data: bytes) -> int:
    """Bytes of whole, CRC-checked batches at the start of `data` (a torn tail is left out)."""
    pos = 0
    while pos + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + length
        if end > len(data) or length % RECORD.itemsize or zlib.crc32(data[pos + _HEADER.size : end]) != crc:
            break
        pos = end
    return pos


def intact_frames(f: BinaryIO) -> Iterator[bytes]:
    """Whole, CRC-checked batches (with their frame header) read one by one from a segment file, up to a torn tail."""
    while len(header := f.read(_HEADER.size)) == _HEADER.size:
        length, crc = _HEADER.unpack(header)
        if length % RECORD.itemsize:
            return
        body = f.read(length)
        if len(body) != length or zlib.crc32(body) != crc:
            return
        yield header + body


def records(data: bytes) -> np.ndarray:
    """The records of whole batches; ValueError when `data` is not all whole, intact batches."""
    good = intact_length(data)
    if good != len(data):
        raise ValueError(f"damaged batch at byte {good} of {len(data)}")
    bodies, pos = [], 0
    while pos < len(data):
        length, _crc = _HEADER.unpack_from(data, pos)
        bodies.append(data[pos + _HEADER.size : pos + _HEADER.size + length])
        pos += _HEADER.size + length
    return np.frombuffer(b"".join(bodies), RECORD) if bodies else np.empty(0, RECORD)
