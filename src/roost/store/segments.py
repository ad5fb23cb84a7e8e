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
  older index get FileNotFoundError and retry with a newer snapshot (`ChunkMoved`);
- a read holds a reference to the descriptor it reads through, so garbage collection in another thread
  (`forget`) never closes a descriptor mid-read: the last reader closes it. A descriptor number closed under a
  reader could be reused by the next file opened, and the read would return another file's bytes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from roost.errors import StoreError

FILE_LIMIT = 64 * 1024 * 1024


class ChunkMoved(Exception):
    """A data file vanished under a reader (moved by garbage collection): read again from a newer snapshot."""


class DataFiles:
    """The `chunks/` directory of a store: append inside a write transaction, read at any time."""

    def __init__(self, directory: Path):
        self.dir = directory
        self._read_fds: dict[int, int] = {}  # file id -> descriptor, shared by the threads that read
        self._readers: dict[int, int] = {}  # descriptor -> reads under way through it
        self._closing: set[int] = set()  # descriptors forgotten while read: the last reader closes them
        self._gone: set[int] = set()  # files forgotten (ids are never reused): no descriptor is kept for them
        self._fd_lock = threading.Lock()

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
        fd = self._acquire(file_id)
        try:
            data = os.pread(fd, length, offset)
        finally:
            self._release(fd)
        if len(data) != length:
            raise StoreError(
                f"{self.path(file_id)}: {length} bytes expected at offset {offset}, found {len(data)}: "
                "the data file is damaged — restore the store from a snapshot"
            )
        return data

    def _acquire(self, file_id: int) -> int:
        """A descriptor of the file, counted as read through until `_release`."""
        with self._fd_lock:
            fd = self._read_fds.get(file_id)
            if fd is None:
                if file_id in self._gone:  # collected: only an older index names it
                    raise ChunkMoved(file_id)
                try:
                    fd = os.open(self.path(file_id), os.O_RDONLY)
                except FileNotFoundError:
                    raise ChunkMoved(file_id) from None
                self._read_fds[file_id] = fd
            self._readers[fd] = self._readers.get(fd, 0) + 1
            return fd

    def _release(self, fd: int) -> None:
        with self._fd_lock:
            left = self._readers.pop(fd) - 1
            if left:
                self._readers[fd] = left
            elif fd in self._closing:
                self._closing.discard(fd)
                os.close(fd)

    def forget(self, file_id: int) -> None:
        """Close the file's descriptor (once no read is under way through it); it is about to be deleted."""
        with self._fd_lock:
            self._gone.add(file_id)
            fd = self._read_fds.pop(file_id, None)
            if fd is None:
                return
            if fd in self._readers:
                self._closing.add(fd)
            else:
                os.close(fd)

    def close(self) -> None:
        with self._fd_lock:
            for fd in self._read_fds.values():
                if fd in self._readers:
                    self._closing.add(fd)
                else:
                    os.close(fd)
            self._read_fds.clear()
