"""The write-ahead log: append-only segment files that make a reading durable before it is acknowledged.

Layout: `wal/<seq:012d>.log`, each a sequence of batches `[u32 length][u32 crc32][length bytes]`, the body
being packed `(u32 series_id, i64 ts_ms, f64 value)` records. A batch is one write() call, so a crash leaves at
most one torn batch at the tail; its CRC fails and it is cut off (writer) or ignored (reader). Segments at or
below the compacted sequence recorded in the store's meta table are already in chunks and get deleted.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

RECORD = np.dtype([("sid", "<u4"), ("ts", "<i8"), ("value", "<f8")])
_HEADER = struct.Struct("<II")


def segment_path(wal_dir: Path, seq: int) -> Path:
    return wal_dir / f"{seq:012d}.log"


def list_segments(wal_dir: Path) -> list[int]:
    if not wal_dir.is_dir():
        return []
    return sorted(int(p.stem) for p in wal_dir.glob("*.log") if p.stem.isdigit())


def read_segment(path: Path) -> tuple[np.ndarray, int]:
    """All intact records of a segment and the byte length of its intact prefix (a torn tail is left out)."""
    data = path.read_bytes()
    bodies, pos = [], 0
    while pos + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, pos)
        body = data[pos + _HEADER.size : pos + _HEADER.size + length]
        if len(body) != length or zlib.crc32(body) != crc or length % RECORD.itemsize:
            break
        bodies.append(body)
        pos += _HEADER.size + length
    if not bodies:
        return np.empty(0, RECORD), pos
    return np.frombuffer(b"".join(bodies), RECORD), pos


class SegmentWriter:
    """Appends batches to one segment; `fsync` makes each batch survive a power cut, not only a crash."""

    def __init__(self, wal_dir: Path, seq: int, *, fsync: bool):
        self.seq = seq
        self.path = segment_path(wal_dir, seq)
        self._fsync = fsync
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self._fd).st_size

    def append(self, records: np.ndarray) -> None:
        body = records.tobytes()
        frame = _HEADER.pack(len(body), zlib.crc32(body)) + body
        written = os.write(self._fd, frame)
        if written != len(frame):  # a short write means the disk filled mid-batch: cut it so the log stays clean
            os.ftruncate(self._fd, self.size)
            raise OSError(28, "short write to the write-ahead log (disk full?)")
        if self._fsync:
            os.fdatasync(self._fd)
        self.size += len(frame)

    def truncate_to(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        self.size = size

    def close(self) -> None:
        os.close(self._fd)
