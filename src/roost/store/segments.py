"""Append-only data files for sealed chunks: the blobs live in files, their index in SQLite.

Measured on the reference workload: day chunks are ~2 KB, so SQLite's 4 KB pages hold one or two of them
and waste 40 % of the file (16 KB pages: 12 %, 32 KB: 7 %). Appending blobs back to back to a data file
wastes nothing and writes sequentially, which is also what an SD card wants.

Rules that keep it crash-safe and safe beside other processes:
- appends happen only inside a SQLite write transaction (BEGIN IMMEDIATE), so one process appends at a time;
- a file's committed size lives in the `files` table; before appending, the file is cut back to it, so bytes
  of a transaction that crashed or rolled back vanish;
- bytes once committed never change: a rewritten chunk is appended anew and the old bytes counted as garbage;
- a file is deleted only after a committed transaction moved its live chunks; readers that still hold an
  older index get FileNotFoundError and retry with a newer snapshot (`ChunkMoved`).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from roost.errors import StoreError

FILE_LIMIT = 64 * 1024 * 1024


class ChunkMoved(Exception):
    """A data file vanished under a reader (moved by garbage collection): read again from a newer snapshot."""


class DataFiles:
    """The `chunks/` directory of a store: append inside a write transaction, read at any time."""

    def __init__(self, directory: Path):
        self.dir = directory
        self._read_fds: dict[int, int] = {}

    def path(self, file_id: int) -> Path:
        return self.dir / f"{file_id:08d}.dat"

    def append(self, conn: sqlite3.Connection, blobs: list[bytes], *, fsync: bool) -> list[tuple[int, int, int]]:
        """Append blobs to the current file; returns (file, offset, length) each. Caller holds the write txn."""
        if not blobs:
            return []
        self.dir.mkdir(parents=True, exist_ok=True)
        row = conn.execute("SELECT id, size FROM files ORDER BY id DESC LIMIT 1").fetchone()
        if row is None or row[1] >= FILE_LIMIT:
            file_id = (row[0] + 1) if row else 1
            conn.execute("INSERT INTO files (id, size, garbage) VALUES (?, 0, 0)", (file_id,))
            size = 0
        else:
            file_id, size = row
        out, pos = [], size
        data = bytearray()
        for blob in blobs:
            out.append((file_id, pos, len(blob)))
            data += blob
            pos += len(blob)
        fd = os.open(self.path(file_id), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, size)
            written = os.pwrite(fd, data, size)
            if written != len(data):
                os.ftruncate(fd, size)
                raise OSError(28, "short write to a data file (disk full?)")
            if fsync:
                os.fdatasync(fd)
        except OSError:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise
        finally:
            os.close(fd)
        conn.execute("UPDATE files SET size = ? WHERE id = ?", (pos, file_id))
        return out

    def read(self, file_id: int, offset: int, length: int) -> bytes:
        fd = self._read_fds.get(file_id)
        if fd is None:
            try:
                fd = os.open(self.path(file_id), os.O_RDONLY)
            except FileNotFoundError:
                raise ChunkMoved(file_id) from None
            kept = self._read_fds.setdefault(file_id, fd)  # a query thread may have opened it meanwhile
            if kept != fd:
                os.close(fd)
                fd = kept
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise StoreError(
                f"{self.path(file_id)}: {length} bytes expected at offset {offset}, found {len(data)}: "
                "the data file is damaged — restore the store from a snapshot"
            )
        return data

    def forget(self, file_id: int) -> None:
        fd = self._read_fds.pop(file_id, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for fd in self._read_fds.values():
            os.close(fd)
        self._read_fds.clear()
