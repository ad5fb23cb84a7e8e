"""The on-disk buffer of one export target: stored readings waiting to be sent, kept across restarts and outages.

Layout under `<data>/export/<target>/`:
  <offset>.seg   append-only segments named by the byte offset (in the whole log) of their first frame
  acked          the log offset up to which the target has acknowledged everything (written atomically)

A frame is one append: header `<III` (payload length, CRC-32 of the payload, readings in it), then a JSON list of
the frame's series `[metric, [[label, value], ...]]` and a packed array of (series index, ms, value). A process
killed mid-append leaves a torn last frame, which fails its length or CRC and is cut off when the buffer opens.
When the segments exceed the size bound, the oldest segments go first; unsent readings in them are counted as
dropped. Delivery is at least once: a send acknowledged by the target but not yet recorded in `acked` (a crash
in between) is sent again after a restart.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from roost.model import Reading, Series

_HEADER = struct.Struct("<III")
_RECORD = np.dtype([("series", "<u4"), ("ts", "<i8"), ("value", "<f8")])
_JSON_LEN = struct.Struct("<I")


@dataclass(slots=True)
class _Segment:
    start: int  # log offset of the first byte
    size: int
    readings: int


@dataclass(slots=True)
class Batch:
    """Readings read from the buffer, and the log offset to acknowledge once they are delivered."""

    readings: list[Reading]
    end: int


class DiskBuffer:
    """Append readings, read the oldest unacknowledged ones, acknowledge; bounded by `max_bytes`."""

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int | None = None):
        self.dir = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(64 * 1024, min(16 * 1024 * 1024, max_bytes // 16))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dropped = 0  # unsent readings removed by the size bound since open (the caller counts them)
        self._segments: list[_Segment] = []
        self._file = None
        self.acked = self._read_acked()
        self._open()

    # ------------------------------------------------------------------ state

    def _read_acked(self) -> int:
        try:
            return int((self.dir / "acked").read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    def _open(self) -> None:
        paths = sorted(self.dir.glob("*.seg"), key=lambda p: int(p.stem))
        for i, path in enumerate(paths):
            start = int(path.stem)
            size, readings = self._scan(path, last=i == len(paths) - 1)
            self._segments.append(_Segment(start, size, readings))
        if self._segments:
            last = self._segments[-1]
            self.acked = max(self.acked, self._segments[0].start)
            self.acked = min(self.acked, last.start + last.size)
            self._file = open(self._path(last), "ab")

    def _path(self, seg: _Segment) -> Path:
        return self.dir / f"{seg.start:020d}.seg"

    def _scan(self, path: Path, last: bool) -> tuple[int, int]:
        """(valid size, readings) of a segment; the last one is checked frame by frame and cut after a torn frame."""
        data = path.read_bytes()
        pos = readings = 0
        while pos + _HEADER.size <= len(data):
            length, crc, n = _HEADER.unpack_from(data, pos)
            end = pos + _HEADER.size + length
            if end > len(data) or (last and zlib.crc32(data[pos + _HEADER.size : end]) != crc):
                break
            pos, readings = end, readings + n
        if pos != len(data):
            with open(path, "r+b") as f:
                f.truncate(pos)
        return pos, readings

    @property
    def end(self) -> int:
        """The log offset after the last frame."""
        if not self._segments:
            return self.acked
        last = self._segments[-1]
        return last.start + last.size

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def pending(self) -> int:
        """Readings not yet acknowledged (whole segments counted exactly, the partly sent one in proportion)."""
        total = 0
        for seg in self._segments:
            seg_end = seg.start + seg.size
            if seg_end <= self.acked or not seg.size:
                continue
            if seg.start >= self.acked:
                total += seg.readings
            else:
                total += round(seg.readings * (seg_end - self.acked) / seg.size)
        return total

    # ------------------------------------------------------------------ writing

    def append(self, readings: list[Reading]) -> None:
        """Append readings as one frame (not synced: `sync()` does that, a killed process loses nothing written)."""
        if not readings:
            return
        index: dict[Series, int] = {}
        records = np.empty(len(readings), _RECORD)
        sids = records["series"]
        for i, r in enumerate(readings):
            sids[i] = index.setdefault(r.series, len(index))
        records["ts"] = [r.ts_ms for r in readings]
        records["value"] = [r.value for r in readings]
        names = orjson.dumps([[s.metric, s.labels] for s in index])
        payload = _JSON_LEN.pack(len(names)) + names + records.tobytes()
        frame = _HEADER.pack(len(payload), zlib.crc32(payload), len(readings)) + payload
        if self._file is None or self._segments[-1].size + len(frame) > self.segment_bytes:
            self._roll()
        self._file.write(frame)
        self._file.flush()
        seg = self._segments[-1]
        seg.size += len(frame)
        seg.readings += len(readings)
        self._enforce_bound()

    def _roll(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())
            self._file.close()
        seg = _Segment(self.end, 0, 0)
        self._segments.append(seg)
        self._file = open(self._path(seg), "ab")

    def _enforce_bound(self) -> None:
        while len(self._segments) > 1 and self.size_bytes > self.max_bytes:
            seg = self._segments.pop(0)
            seg_end = seg.start + seg.size
            if seg_end > self.acked:
                unsent = seg.readings if seg.start >= self.acked else self._count_from(seg, self.acked)
                self.dropped += unsent
                self.acked = seg_end
                self._write_acked()
            self._path(seg).unlink(missing_ok=True)

    def _count_from(self, seg: _Segment, offset: int) -> int:
        data = self._path(seg).read_bytes()
        pos, n = offset - seg.start, 0
        while pos + _HEADER.size <= len(data):
            length, _crc, k = _HEADER.unpack_from(data, pos)
            pos, n = pos + _HEADER.size + length, n + k
        return n

    def sync(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    # ------------------------------------------------------------------ reading and acknowledging

    def read(self, max_readings: int) -> Batch:
        """Whole frames from the acknowledged offset on, until at least `max_readings` (at least one frame)."""
        out: list[Reading] = []
        pos = self.acked
        for seg in self._segments:
            seg_end = seg.start + seg.size
            if seg_end <= pos:
                continue
            if self._file is not None:
                self._file.flush()
            with open(self._path(seg), "rb") as f:
                f.seek(pos - seg.start)
                data = f.read(seg.size - (pos - seg.start))
            off = 0
            while off + _HEADER.size <= len(data) and len(out) < max_readings:
                length, _crc, _n = _HEADER.unpack_from(data, off)
                payload = data[off + _HEADER.size : off + _HEADER.size + length]
                out.extend(_decode(payload))
                off += _HEADER.size + length
            pos += off
            if len(out) >= max_readings:
                break
        return Batch(out, pos)

    def ack(self, end: int) -> None:
        """Everything before log offset `end` was delivered: record it and delete fully delivered segments."""
        self.acked = max(self.acked, end)
        self._write_acked()
        while len(self._segments) > 1 and self._segments[0].start + self._segments[0].size <= self.acked:
            self._path(self._segments.pop(0)).unlink(missing_ok=True)

    def _write_acked(self) -> None:
        tmp = self.dir / "acked.tmp"
        with open(tmp, "w") as f:
            f.write(str(self.acked))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / "acked")

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None


def _decode(payload: bytes) -> list[Reading]:
    (names_len,) = _JSON_LEN.unpack_from(payload)
    names = orjson.loads(payload[_JSON_LEN.size : _JSON_LEN.size + names_len])
    series = [Series(metric, tuple(tuple(kv) for kv in labels)) for metric, labels in names]
    records = np.frombuffer(payload, _RECORD, offset=_JSON_LEN.size + names_len)
    return [
        Reading(series[i], ts, v)
        for i, ts, v in zip(records["series"].tolist(), records["ts"].tolist(), records["value"].tolist())
    ]
