"""Consistent online snapshots of a store, their manifest, and `verify`.

A snapshot is taken beside a running hub, which keeps appending to the write-ahead log, compacting it into
chunks and (rarely) rewriting data files. The order of the copy is what makes it consistent:

1. **Hold the data files** (`hold_data_files`): garbage collection, the only thing that deletes a data file,
   waits until the snapshot is done. Compaction and ingest carry on.
2. **Cut the write-ahead log first**: copy every segment's intact prefix (whole CRC-checked batches). A segment
   that vanishes meanwhile was compacted, and step 3 will see that compaction.
3. **Then copy store.db** with SQLite's online backup API in one step (one read snapshot). Its `meta` row says
   which segments are compacted (their readings are in its chunks) and its `files` table the committed size
   of every data file.
4. **Copy each data file up to its committed size** (bytes past it belong to transactions the copy does not
   know; bytes before it never change), and drop copied segments the database copy says are compacted.

Every reading acknowledged before step 2 is either in a copied segment or, if a compaction raced the copy, in
the chunks of the database copy — never lost. A reading can be in both only if a compaction finished between
steps 2 and 3, and then its segment is dropped in step 4, so nothing is counted twice; readings compacted
after the log cut but before the database copy are in (the snapshot is then a little newer, still a prefix of
the ingest order, never a store with holes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from roost import __version__
from roost.errors import RoostError, StoreError
from roost.selector import Selector
from roost.store import wal
from roost.store.engine import hold_data_files
from roost.durability._walbytes import intact_frames

MANIFEST = "manifest.json"
FORMAT = 1
_COPY_BLOCK = 1 << 20
ALL_SERIES = Selector.parse('{__name__=~".+"}')
_FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01
_COUNT_STEP_MS = 3_600_000 * 24 * 4096  # a whole number of hours: counts come from hourly rollups


class SnapshotError(RoostError):
    """A snapshot cannot be taken, or one on disk is damaged; the message names the file."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str  # relative to the snapshot directory, with "/" separators
    size: int
    sha256: str


@dataclass(slots=True)
class Manifest:
    """What a snapshot holds and when it was cut; written last, so a snapshot without one is incomplete."""

    created_at: str  # RFC 3339, UTC: the moment the write-ahead log was cut
    created_ms: int
    source: str
    series: int
    samples: int | None  # None: not counted (a standby's base copy, checked by its files' sha256 alone)
    wal_compacted: int
    files: list[FileEntry] = field(default_factory=list)
    roost_version: str = __version__
    format: int = FORMAT
    seconds: float = 0.0

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = Path(directory) / MANIFEST
        try:
            doc = json.loads(path.read_text())
            files = [FileEntry(**f) for f in doc.pop("files")]
            return cls(files=files, **doc)
        except FileNotFoundError:
            raise SnapshotError(f"{path}: no manifest — not a roost snapshot, or one that was never finished") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise SnapshotError(f"{path}: the manifest is damaged ({exc})") from None


@dataclass(slots=True)
class Cut:
    """A consistent cut of a live store (steps 1-3): the log and database already copied into a directory, and
    the data files to take from the live store up to their committed sizes, held until the cut is closed."""

    cut_ms: int
    wal_compacted: int
    series: int
    copied: dict[str, FileEntry]  # wal/*.log and store.db, in the cut's directory
    data_files: list[tuple[str, Path, int]]  # (path in the snapshot, live file, committed size)


@contextlib.contextmanager
def cut_store(data_dir: Path, into: Path) -> Iterator[Cut]:
    """Cut the store under `data_dir` into `into` (steps 1-3); garbage collection waits while this is open."""
    (into / "wal").mkdir(parents=True, exist_ok=True)
    entries: dict[str, FileEntry] = {}
    with hold_data_files(data_dir):
        cut_ms = int(time.time() * 1000)
        segments = _copy_wal(data_dir / "wal", into / "wal", entries)
        _backup_db(data_dir / "store.db", into / "store.db")
        db = sqlite3.connect(into / "store.db", isolation_level=None)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'wal_compacted'").fetchone()
            compacted = int(row[0]) if row else 0
            files = db.execute("SELECT id, size FROM files ORDER BY id").fetchall()
            series = db.execute("SELECT count(*) FROM series").fetchone()[0]
        finally:
            db.close()
        for seq in segments:
            if seq <= compacted:
                name = wal.segment_path(into / "wal", seq)
                name.unlink()
                entries.pop(f"wal/{name.name}")
        entries["store.db"] = _entry(into, "store.db")
        data_files = [(f"chunks/{i:08d}.dat", data_dir / f"chunks/{i:08d}.dat", size) for i, size in files]
        yield Cut(cut_ms, compacted, series, entries, data_files)


def take_snapshot(data_dir: Path | str, target: Path | str) -> Manifest:
    """Copy the store under `data_dir` (a hub may be running on it) into the new directory `target`."""
    data_dir, target = Path(data_dir), Path(target)
    if not (data_dir / "store.db").exists():
        raise SnapshotError(f"{data_dir}: no roost store here (no store.db) — pass the hub's --data directory")
    if target.exists() and any(target.iterdir()):
        raise SnapshotError(f"{target}: exists and is not empty — snapshot into a new directory")
    started = time.monotonic()
    (target / "chunks").mkdir(parents=True, exist_ok=True)
    try:
        with cut_store(data_dir, target) as cut:
            entries = dict(cut.copied)
            for name, src, size in cut.data_files:
                entries[name] = _copy_prefix(src, target / name, size)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    manifest = cut_manifest(cut, data_dir, list(entries.values()), count_samples(target))
    manifest.seconds = round(time.monotonic() - started, 3)
    tmp = target / (MANIFEST + ".tmp")
    tmp.write_text(manifest.to_json())
    os.replace(tmp, target / MANIFEST)
    return manifest


def cut_manifest(cut: Cut, data_dir: Path, files: list[FileEntry], samples: int | None) -> Manifest:
    return Manifest(
        created_at=datetime.fromtimestamp(cut.cut_ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        created_ms=cut.cut_ms,
        source=str(data_dir.absolute()),
        series=cut.series,
        samples=samples,
        wal_compacted=cut.wal_compacted,
        files=sorted(files, key=lambda e: e.path),
    )


def _copy_wal(src_dir: Path, dst_dir: Path, entries: dict[str, FileEntry]) -> list[int]:
    copied = []
    for seq in wal.list_segments(src_dir):
        try:
            fin = open(wal.segment_path(src_dir, seq), "rb")
        except FileNotFoundError:  # compacted meanwhile: the database copy, taken next, has its readings
            continue
        dst = wal.segment_path(dst_dir, seq)
        digest, good = hashlib.sha256(), 0
        with fin, open(dst, "wb") as fout:  # batch by batch: a segment can hold a whole compaction interval
            for frame in intact_frames(fin):
                fout.write(frame)
                digest.update(frame)
                good += len(frame)
        entries[f"wal/{dst.name}"] = FileEntry(f"wal/{dst.name}", good, digest.hexdigest())
        copied.append(seq)
    return copied


def _backup_db(src: Path, dst: Path) -> None:
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)  # one step: the whole database from one read snapshot
        target.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file
    except sqlite3.DatabaseError as exc:
        raise SnapshotError(f"{src}: cannot copy the database ({exc})") from None
    finally:
        target.close()
        source.close()


def _copy_prefix(src: Path, dst: Path, size: int) -> FileEntry:
    digest = hashlib.sha256()
    with open(dst, "wb") as fout:
        for block in read_prefix(src, size):
            digest.update(block)
            fout.write(block)
    return FileEntry(f"chunks/{dst.name}", size, digest.hexdigest())


def read_prefix(src: Path, size: int, block_size: int = _COPY_BLOCK) -> Iterator[bytes]:
    """The first `size` bytes of a live data file (its committed part), in blocks."""
    try:
        fin = open(src, "rb")
    except FileNotFoundError:
        raise SnapshotError(f"{src}: a data file the store lists is missing — the store is damaged") from None
    with fin:
        left = size
        while left:
            block = fin.read(min(block_size, left))
            if not block:
                raise SnapshotError(
                    f"{src}: {size} committed bytes expected, the file has only {size - left} — the store is damaged"
                )
            left -= len(block)
            yield block


def _entry(root: Path, rel: str) -> FileEntry:
    path = root / rel
    return FileEntry(rel, path.stat().st_size, _sha256(path))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_COPY_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def count_samples(directory: Path) -> int:
    """Samples a store (or snapshot) answers for, over all time and series, by one count query."""
    from roost.store import Store

    with Store.open_readonly(directory) as store:
        return _count(store)


def _count(store) -> int:
    results = store.query(ALL_SERIES, 0, _FAR_FUTURE_MS, _COUNT_STEP_MS, "count") if store.series_count else []
    return int(sum(float(r.values.sum()) for r in results))


@dataclass(slots=True)
class Verification:
    manifest: Manifest
    problems: list[str]
    samples: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_snapshot(directory: Path | str) -> Verification:
    """Check every file against the manifest, then open the snapshot read-only and count its samples."""
    directory = Path(directory)
    manifest = Manifest.load(directory)
    problems = []
    listed = {f.path for f in manifest.files}
    for entry in manifest.files:
        path = directory / entry.path
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        size = path.stat().st_size
        if size != entry.size:
            problems.append(f"{path}: {size} bytes, the manifest says {entry.size}")
        elif _sha256(path) != entry.sha256:
            problems.append(f"{path}: sha256 differs from the manifest (the file is damaged)")
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel not in listed and rel != MANIFEST:
            problems.append(f"{path}: not in the manifest")
    result = Verification(manifest, problems)
    if problems:
        return result
    try:
        result.samples = count_samples(directory)
    except (StoreError, sqlite3.DatabaseError) as exc:
        problems.append(f"{directory / 'store.db'}: does not answer a query ({exc})")
        return result
    if manifest.samples is not None and result.samples != manifest.samples:
        problems.append(f"{directory}: answers {result.samples} samples, the manifest says {manifest.samples}")
    return result


def restore_snapshot(snapshot: Path | str, data_dir: Path | str) -> Manifest:
    """Verify a snapshot and copy it into `data_dir` (which must be new or empty) as a store a hub can run on."""
    snapshot, data_dir = Path(snapshot), Path(data_dir)
    result = verify_snapshot(snapshot)
    if not result.ok:
        raise SnapshotError("; ".join(result.problems))
    if data_dir.exists() and any(data_dir.iterdir()):
        raise SnapshotError(f"{data_dir}: exists and is not empty — restore into a new directory")
    for entry in result.manifest.files:
        dst = data_dir / entry.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(snapshot / entry.path, dst)
    (data_dir / "wal").mkdir(exist_ok=True)
    shutil.copyfile(snapshot / MANIFEST, data_dir / "restored-from.json")
    return result.manifest
