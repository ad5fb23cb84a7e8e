"""The embedded time-series store: a write-ahead log and in-memory head for recent readings, compacted into
per-series day chunks in SQLite, with hourly rollups for long-range queries.

Files under the data directory:
  store.db   SQLite (WAL mode): series; open_chunks (day chunks of days not finished yet, rewritten as the day
             fills); chunks (the index of sealed day chunks: file, offset, length); files (data files, their
             committed size and garbage); rollup_1h (one row per series and 32-day block); rollup_5m (per
             series-day, only where raw samples were dropped by a `raw` retention rule); meta;
             bulk_changes (the day chunks each bulk write changed, in order: what a standby pulls)
  chunks/    append-only data files holding sealed day chunks back to back (segments.py)
  wal/       append-only segments of readings not yet compacted
  LOCK       held by the one process that writes the WAL (the hub)

Row ids are `day << 24 | series_id`, so new days append at the end of the B-tree (dense pages, sequential
writes) and one series' days are found by id lists. Any process may read while the hub writes: readers see
the chunks of one SQLite snapshot plus the WAL segments that snapshot has not compacted yet. Bulk writes
(import, backfill) go straight into chunks inside SQLite transactions, so they too are safe beside a hub.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import math
import os
import sqlite3
import threading
import time
import zlib
from array import array
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from roost.errors import StoreError, StoreFullError
from roost.model import MAX_FUTURE_MS, Reading, Series, now_ms, timestamp_problem
from roost.selector import Selector
from roost.store import wal
from roost.store.blocks import BLOCK_DAYS, Extras, decode_block, decode_rows, encode_rows, keep_resets
from roost.store.codec import Decoded, decode_chunk, encode_chunk
from roost.store.rollups import FIVE_MINUTES_MS, HOUR_MS, Rows, bucketize, rollup_samples
from roost.store.samples import Samples
from roost.store.segments import ChunkMoved, DataFiles
from roost.store.summaries import FIELDS as SUMMARY_FIELDS
from roost.store.summaries import COUNT, FIRST, FIRST_TS, LAST, LAST_TS, MAX, MIN, RESETS, SUM, TS, Summary, summarize

log = logging.getLogger("roost.store")

DAY_MS = 86_400_000
_SID_BITS = 24
_SID_MASK = (1 << _SID_BITS) - 1
AGGREGATIONS = ("mean", "min", "max", "last", "sum", "count")
_BLOCK_OFFSETS = np.arange(BLOCK_DAYS, dtype=np.int64)
_FULL_MASK = (1 << BLOCK_DAYS) - 1
_ROLLUP_CACHE_BLOCKS = 4096  # ~32 KB decoded each: a year of 10 series x 12 blocks is 120
# The summary cache takes this share of `StoreOptions.cache_bytes` again (32 MB at the default 128 MB): 5-minute
# day summaries ~23 KB, hourly ones of a rollup block ~61 KB, so a week and a month of 100 series fit together.
_SUMMARY_CACHE_SHARE = 4
WARM_DAYS = 8  # a week of days and the one before it (a week-long range rarely starts at midnight)
_WARM_SUMMARY_BYTES = 20 * 1024 * 1024  # what `warm_summaries` fills at most: a week of 100 series (18.4 MB)

# One statement: SQLite answers min() or max() of a rowid from the B-tree's edge, but not both in one SELECT.
_STORED_IDS = "SELECT " + ", ".join(
    f"(SELECT {f}(id) FROM {table})" for table in ("chunks", "open_chunks", "rollup_5m") for f in ("min", "max")
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, metric TEXT NOT NULL, labels TEXT NOT NULL,
    last_ts INTEGER, last_value REAL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, n INTEGER NOT NULL, file INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS open_chunks (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS files (id INTEGER PRIMARY KEY, size INTEGER NOT NULL, garbage INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rollup_1h (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS rollup_5m (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bulk_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, id INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """Series matching `selector` lose samples older than `keep_ms`, and raw samples older than `raw_ms`."""

    selector: Selector
    keep_ms: int | None = None
    raw_ms: int | None = None


@dataclass(slots=True)
class StoreOptions:
    max_series: int = 10_000
    fsync: bool = True
    cache_bytes: int = 128 * 1024 * 1024  # decoded sealed chunks kept (compactly, codec.Decoded) for repeated
    # queries; a quarter as much again for their summaries
    retention: tuple[RetentionRule, ...] = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    """A reading `Store.write` did not take: the reason counted in /metrics and a message naming the series."""

    reason: str  # nan, inf, bad_timestamp, cardinality_limit
    reading: Reading
    message: str

    def __str__(self) -> str:
        return self.message


_REFUSED_BECAUSE = {
    "nan": "value is NaN",
    "inf": "value is infinite",
    "cardinality_limit": "new series refused: store.max_series reached",
}


@dataclass(slots=True)
class WriteResult:
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    refused: list[Refusal] = field(default_factory=list)


@dataclass(slots=True)
class SeriesData:
    """One series' answer to a query: bucket (or sample) timestamps in ms and values."""

    series: Series
    ts: np.ndarray
    values: np.ndarray


@dataclass(slots=True)
class _HeadSeries:
    ts: array = field(default_factory=lambda: array("q"))
    values: array = field(default_factory=lambda: array("d"))
    ordered: bool = True

    def add(self, ts_ms: int, value: float) -> None:
        if self.ts and ts_ms <= self.ts[-1]:
            self.ordered = False
        self.ts.append(ts_ms)
        self.values.append(value)


_MATCHED_SELECTORS = 1024  # selectors whose matches a series index keeps (dashboards repeat a few dozen)


class _SeriesIndex:
    """The store's series at one moment, sorted by id and by metric name, with the selectors matched so far.

    Replaced, never changed, when series are added: a `ReadView` keeps the one it was made with. Matching a
    selector with a metric name looks only at that metric's series, and each selector is matched once.
    """

    __slots__ = ("all", "by_metric", "matched")

    def __init__(self, series: dict[int, Series]):
        self.all: list[tuple[int, Series]] = sorted(series.items())
        self.by_metric: dict[str, list[tuple[int, Series]]] = defaultdict(list)
        for sid, s in self.all:
            self.by_metric[s.metric].append((sid, s))
        self.matched: dict[Selector, list[tuple[int, Series]]] = {}

    def match(self, selector: Selector) -> list[tuple[int, Series]]:
        """(id, series) of the series `selector` matches, by id; do not change the list."""
        found = self.matched.get(selector)
        if found is None:
            name = next((m.value for m in selector.matchers if m.name == "__name__" and m.op == "="), None)
            pool = self.all if name is None else self.by_metric.get(name, ())
            found = [(sid, s) for sid, s in pool if selector.matches(s)]
            if len(self.matched) >= _MATCHED_SELECTORS:  # selectors made up on the fly must not pile up
                self.matched.clear()
            self.matched[selector] = found
        return found


def _row_id(day: int, sid: int) -> int:
    return (day << _SID_BITS) | sid


def _series_key(series: Series) -> str:
    return str(series)


def merge_samples(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, de-duplicated samples from parts given oldest write first; a later write wins at the same ts."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    ts = np.concatenate([p[0] for p in parts]).astype(np.int64, copy=False)
    values = np.concatenate([p[1] for p in parts]).astype(np.float64, copy=False)
    if len(ts) < 2 or bool(np.all(ts[1:] > ts[:-1])):  # the usual case: consecutive days, nothing to merge
        return ts, values
    order = np.argsort(ts, kind="stable")
    ts, values = ts[order], values[order]
    keep = np.append(ts[1:] != ts[:-1], True)  # the last of each run of equal timestamps
    return ts[keep], values[keep]


def _hourly(ts: np.ndarray, values: np.ndarray) -> tuple[Rows, Extras]:
    """A finished day's hourly rollup rows and the summary extras stored beside them (blocks.py)."""
    rows = rollup_samples(ts, values, HOUR_MS)
    summary = summarize(ts, values, HOUR_MS).rows
    return rows, Extras(summary[FIRST], summary[FIRST_TS] - summary[TS], summary[LAST_TS] - summary[TS], summary[RESETS])


# A sealed chunk's location (file, offset, length) and its 5-minute summary, made where the samples were at hand
_SealedSummary = tuple[tuple[int, int, int], Summary]

_LOCATION = "file, offset, length"  # where a sealed chunk's bytes are (`chunks` table)
_SERIES_PER_FETCH = 64  # `ReadView.samples`: series whose chunks are looked up together (and held at once)
_SCRATCH_SAMPLES = 1 << 20  # 16 MB of ts and values kept per query thread for transient reads


def _head_days(head: list[tuple[np.ndarray, np.ndarray]], lo: int, hi: int) -> set[int]:
    """The days that head samples in [lo, hi) fall on (their chunks alone do not hold those days' samples)."""
    days: set[int] = set()
    for t, _v in head:
        days.update(np.unique(t[(t >= lo) & (t < hi)] // DAY_MS).tolist())
    return days


def _gather(
    parts: list[Decoded | tuple[np.ndarray, np.ndarray]], scratch: threading.local | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`merge_samples` of parts each sorted and unique, decoded chunks written straight into one array: a month
    of days in a row needs no concatenation and no sort.

    With `scratch` (a thread's own) the arrays are reused from the previous call: a fresh month of one series is
    3 MB of new pages, and faulting them in cost more than decoding into them.
    """
    sizes = [p.n if isinstance(p, Decoded) else len(p[0]) for p in parts]
    total = sum(sizes)
    if scratch is not None and total <= _SCRATCH_SAMPLES:
        if getattr(scratch, "ts", None) is None or len(scratch.ts) < total:  # none yet in this thread, or too short
            scratch.ts, scratch.values = np.empty(total, np.int64), np.empty(total, np.float64)
        ts, values = scratch.ts[:total], scratch.values[:total]
    else:
        ts, values = np.empty(total, np.int64), np.empty(total, np.float64)
    pos, ordered = 0, True
    for part, size in zip(parts, sizes):
        if not size:
            continue
        if isinstance(part, Decoded):
            part.into(ts[pos : pos + size], values[pos : pos + size])
        else:
            ts[pos : pos + size], values[pos : pos + size] = part
        if pos and ts[pos] <= ts[pos - 1]:
            ordered = False
        pos += size
    return (ts, values) if ordered else merge_samples([(ts, values)])


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class Store:
    """Open with `Store.open(data_dir, writer=True)` in the hub; any other process opens it as a reader."""

    def __init__(self, data_dir: Path, options: StoreOptions, *, writer: bool):
        self.data_dir = Path(data_dir)
        self.options = options
        self.writer = writer
        self.db_path = self.data_dir / "store.db"
        self.wal_dir = self.data_dir / "wal"
        self.files = DataFiles(self.data_dir / "chunks")
        self._lock_fd: int | None = None
        self._segment: wal.SegmentWriter | None = None
        self._head: dict[int, _HeadSeries] = {}
        self._frozen: dict[int, _HeadSeries] = {}
        self._latest: dict[int, tuple[int, float]] = {}
        self._series_by_key: dict[str, int] = {}
        self._series_by_id: dict[int, Series] = {}
        self._sid_by_series: dict[Series, int] = {}  # the hot path: no str() per reading
        self._index = _SeriesIndex({})
        self._compact_lock = threading.RLock()  # held by every write transaction (re-entered by GC)
        self._cache: OrderedDict[tuple[int, int], Decoded] = OrderedDict()
        self._cache_bytes = 0
        self._rollup_cache: OrderedDict[tuple[int, int, int], tuple[Rows, int, Extras | None]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._summary_cache: OrderedDict[tuple, Summary] = OrderedDict()  # by chunk location or rollup block
        self._summary_bytes = 0
        self._summary_budget = self.options.cache_bytes // _SUMMARY_CACHE_SHARE
        self._scratch = threading.local()  # per thread: arrays for transient reads (`_gather`)
        self._view_lock = threading.Lock()  # one ReadView reads at a time, on `_view_conn`
        self._view_conn: sqlite3.Connection | None = None
        self.head_samples = 0
        # Writes that changed what was already stored (a sample at or before its series' newest one, a deletion,
        # raw days turned into rollups): an answer computed before one of these may be stale (`history_mark`).
        self.rewrites = 0
        self._rewrites_lock = threading.Lock()  # writes come from the hub's loop, compaction and retention threads
        self.rejected: dict[str, int] = defaultdict(int)
        self.conn: sqlite3.Connection

    # ----------------------------------------------------------------- open / close

    @classmethod
    def open(cls, data_dir: Path | str, options: StoreOptions | None = None, *, writer: bool = False) -> Store:
        store = cls(Path(data_dir), options or StoreOptions(), writer=writer)
        store._open()
        return store

    def _open(self) -> None:
        if self.writer:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.wal_dir.mkdir(exist_ok=True)
            self._lock_fd = os.open(self.data_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                self._lock_fd = None
                raise StoreError(
                    f"{self.data_dir}: another roost hub is writing this store (LOCK is held): "
                    "stop it, or give this one another --data directory"
                ) from None
        elif not self.db_path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = _connect(self.db_path)
            self._init_schema(self.conn)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.db_path}: cannot open the store ({exc})") from None
        self._load_series()
        if self.writer:
            self._recover_wal()

    @staticmethod
    def _init_schema(conn: sqlite3.Connection) -> None:
        if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)

    def close(self) -> None:
        if self._segment:
            self._segment.close()
            self._segment = None
        self.files.close()
        self.conn.close()
        if self._view_conn is not None:
            self._view_conn.close()
            self._view_conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- series

    def _load_series(self) -> None:
        added = False
        for sid, key, metric, labels, last_ts, last_value in self.conn.execute(
            "SELECT id, key, metric, labels, last_ts, last_value FROM series WHERE id > ?",
            (max(self._series_by_id, default=0),),
        ):
            self._series_by_key[key] = sid
            self._series_by_id[sid] = Series(metric, tuple(tuple(p) for p in json.loads(labels)))
            added = True
            if last_ts is not None and (sid not in self._latest or self._latest[sid][0] < last_ts):
                self._latest[sid] = (last_ts, last_value)
        if added:
            self._index = _SeriesIndex(self._series_by_id)

    def _load_known_series(self) -> None:
        """Series another process registered, for reads: only a reader can miss any (a writer registers every
        series of its store itself, and holds the lock that keeps other writers out)."""
        if not self.writer:
            self._load_series()

    def series_id(self, series: Series, *, create: bool = True) -> int | None:
        """The id of a series, registering it if new; None when the cardinality cap refuses it."""
        sid = self._sid_by_series.get(series)
        if sid is not None:
            return sid
        key = _series_key(series)
        sid = self._series_by_key.get(key)
        if sid is not None or not create:
            if sid is not None:
                self._sid_by_series[series] = sid
            return sid
        self._load_series()  # another process may have registered it
        sid = self._series_by_key.get(key)
        if sid is not None:
            return sid
        if len(self._series_by_key) >= self.options.max_series:
            return None
        try:
            self.conn.execute(
                "INSERT OR IGNORE INTO series (key, metric, labels) VALUES (?, ?, ?)",
                (key, series.metric, json.dumps(series.labels)),
            )
        except sqlite3.OperationalError as exc:
            raise self._write_error(exc) from None
        self._load_series()
        return self._series_by_key[key]

    def series(self, selector: Selector | None = None) -> list[tuple[int, Series]]:
        self._load_series()
        return list(self._index.all if selector is None else self._index.match(selector))

    @property
    def series_count(self) -> int:
        return len(self._series_by_id)

    # ----------------------------------------------------------------- streaming writes (hub)

    def write(self, readings: Iterable[Reading]) -> WriteResult:
        """Append readings to the WAL (durable against a crash on return; call `sync()` for power cuts)."""
        if not self.writer:
            raise StoreError("this store was opened read-only; only the hub streams readings into it")
        result = WriteResult()
        batch = []
        newest = now_ms() + MAX_FUTURE_MS
        for r in readings:
            if not math.isfinite(r.value):
                self._reject(result, "nan" if math.isnan(r.value) else "inf", r)
                continue
            if not 0 <= r.ts_ms <= newest:
                self._reject(result, "bad_timestamp", r, timestamp_problem(r.ts_ms, newest - MAX_FUTURE_MS))
                continue
            sid = self.series_id(r.series)
            if sid is None:
                self._reject(result, "cardinality_limit", r)
                self._log_cardinality(r.series)
                continue
            batch.append((sid, r.ts_ms, r.value))
        if not batch:
            return result
        records = np.array(batch, dtype=wal.RECORD)
        self._append_wal(records)
        for sid, ts_ms, value in batch:
            self._head_add(sid, ts_ms, value)
        result.accepted = len(batch)
        return result

    def write_records(self, records: np.ndarray) -> None:
        """Append already-validated `wal.RECORD` records (series ids from `series_id`)."""
        self._append_wal(records)
        for sid, ts_ms, value in records.tolist():
            self._head_add(sid, ts_ms, value)

    def _append_wal(self, records: np.ndarray) -> None:
        if self._segment is None:
            raise StoreError("the store is closed")
        try:
            self._segment.append(records)
        except OSError as exc:
            if exc.errno == 28:
                raise StoreFullError(
                    f"{self.data_dir}: the disk is full, readings cannot be stored (free space; writing resumes by itself)"
                ) from None
            raise StoreError(f"{self._segment.path}: cannot append to the write-ahead log: {exc}") from None

    def sync(self) -> None:
        """Make everything written so far survive a power cut (fdatasync of the WAL), if configured to."""
        if self._segment is not None and self.options.fsync:
            os.fdatasync(self._segment._fd)

    def _head_add(self, sid: int, ts_ms: int, value: float) -> None:
        hs = self._head.get(sid)
        if hs is None:
            hs = self._head[sid] = _HeadSeries()
        hs.add(ts_ms, value)
        self.head_samples += 1
        latest = self._latest.get(sid)
        if latest is None or ts_ms > latest[0]:
            self._latest[sid] = (ts_ms, value)
        elif (ts_ms, value) != latest:  # the newest reading again (a QoS 1 redelivery) changes nothing
            self._rewritten()
            if ts_ms == latest[0]:
                self._latest[sid] = (ts_ms, value)

    def _reject(self, result: WriteResult, reason: str, reading: Reading, problem: str | None = None) -> None:
        result.rejected[reason] = result.rejected.get(reason, 0) + 1
        result.refused.append(Refusal(reason, reading, f"{reading.series}: {problem or _REFUSED_BECAUSE[reason]}"))
        self.rejected[reason] += 1

    _cardinality_logged = 0.0

    def _log_cardinality(self, series: Series) -> None:
        if time.monotonic() - self._cardinality_logged > 60:
            self._cardinality_logged = time.monotonic()
            log.error(
                "refusing new series %s: the store already holds %d series (store.max_series); "
                "existing series keep being stored — raise the cap or drop the source of new label values",
                series, self.options.max_series,
            )

    def _recover_wal(self) -> None:
        compacted = self._compacted_seq(self.conn)
        seqs = wal.list_segments(self.wal_dir)
        self.segment_ends: dict[int, int] = {}  # final sizes of closed segments (a standby resumes past compacted ones)
        for seq in seqs:
            path = wal.segment_path(self.wal_dir, seq)
            if seq <= compacted:
                path.unlink(missing_ok=True)
                continue
            records, good = wal.read_segment(path)
            if good != path.stat().st_size:
                log.warning("%s: cut a torn batch at byte %d (left by a crash; nothing acknowledged was in it)", path, good)
                os.truncate(path, good)
            self.segment_ends[seq] = good
            for sid, ts_ms, value in records.tolist():
                self._head_add(sid, ts_ms, value)
        self._segment = wal.SegmentWriter(self.wal_dir, max([compacted, *seqs]) + 1, fsync=False)

    @staticmethod
    def _compacted_seq(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = 'wal_compacted'").fetchone()
        return int(row[0]) if row else 0

    # ----------------------------------------------------------------- compaction (hub)

    def freeze_head(self) -> int:
        """Start a new WAL segment and set the current head aside for `compact_frozen`; returns samples frozen."""
        if not self.writer or self._segment is None or self._frozen:
            return 0
        old = self._segment
        self._segment = wal.SegmentWriter(self.wal_dir, old.seq + 1, fsync=False)
        old.close()
        self._note_segment_end(old.seq, old.size)
        self._frozen, self._head = self._head, {}
        self._frozen_seq = old.seq
        n, self.head_samples = self.head_samples, 0
        return n

    def compact_frozen(self, now: int | None = None) -> int:
        """Move the frozen head into chunks (safe to run in a worker thread); returns samples compacted."""
        frozen = self._frozen
        if not frozen:
            return 0
        n = 0
        sealed: list[_SealedSummary] = []
        with self._write_transaction() as conn:
            for sid, hs in frozen.items():
                ts, values = self._head_arrays(hs)
                self._merge_into_chunks(conn, sid, ts, values, now=now, summaries=sealed)
                n += len(ts)
            self._seal_finished_days(conn, (now if now is not None else now_ms()) // DAY_MS, summaries=sealed)
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('wal_compacted', ?)", (str(self._frozen_seq),))
        for (file_id, offset, _length), summary in sealed:  # committed: the locations are theirs for good
            self._summary_put((file_id, offset, FIVE_MINUTES_MS), summary)
        return n

    def finish_compaction(self, ok: bool) -> None:
        """Drop the frozen head after a committed compaction, or put it back in front of the head after a failure."""
        if not self._frozen:
            return
        if ok:
            for seq in wal.list_segments(self.wal_dir):
                if seq <= self._frozen_seq:
                    wal.segment_path(self.wal_dir, seq).unlink(missing_ok=True)
        else:
            for sid, hs in self._head.items():
                old = self._frozen.setdefault(sid, _HeadSeries())
                for ts_ms, value in zip(hs.ts, hs.values):
                    old.add(ts_ms, value)
            self._head = self._frozen
            self.head_samples = sum(len(h.ts) for h in self._head.values())
        self._frozen = {}

    def compact(self, now: int | None = None) -> int:
        """Freeze, compact and finish in one call (tools and tests; the hub runs the middle step in a thread)."""
        self.freeze_head()
        try:
            n = self.compact_frozen(now)
        except Exception:
            self.finish_compaction(False)
            raise
        self.finish_compaction(True)
        return n

    @contextlib.contextmanager
    def _write_transaction(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT under the compaction lock; failures roll back and become StoreError.

        Without `conn` it runs on a connection of its own, so it is safe in a worker thread.
        """
        with self._compact_lock:
            c = _connect(self.db_path) if conn is None else conn
            try:
                c.execute("BEGIN IMMEDIATE")
                yield c
                c.execute("COMMIT")
            except (sqlite3.OperationalError, OSError) as exc:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise self._write_error(exc) from None
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            finally:
                if conn is None:
                    c.close()

    def _write_error(self, exc: Exception) -> StoreError:
        if "full" in str(exc) or getattr(exc, "errno", None) == 28:
            return StoreFullError(
                f"{self.db_path}: the disk is full, compaction and imports wait (free space; nothing stored is lost)"
            )
        return StoreError(f"{self.db_path}: write failed: {exc}")

    @staticmethod
    def _head_arrays(hs: _HeadSeries) -> tuple[np.ndarray, np.ndarray]:
        ts = np.array(hs.ts, dtype=np.int64)
        values = np.array(hs.values, dtype=np.float64)
        if hs.ordered:
            return ts, values
        return merge_samples([(ts, values)])

    def _merge_into_chunks(
        self, conn: sqlite3.Connection, sid: int, ts: np.ndarray, values: np.ndarray, *, now: int | None = None,
        summaries: list[_SealedSummary] | None = None,
    ) -> None:
        """Merge sorted unique samples of one series into its day chunks (new samples win).

        Days before today's (UTC) are sealed into data files and rolled up; today's stays an open chunk.
        With `summaries`, each sealed day's 5-minute summary is added to it with the chunk's location.
        Caller holds a write transaction.
        """
        if not len(ts):
            return
        today = (now if now is not None else now_ms()) // DAY_MS
        days = ts // DAY_MS
        cuts = np.flatnonzero(days[1:] != days[:-1]) + 1
        starts, ends = np.concatenate(([0], cuts)), np.append(cuts, len(ts))
        ids = [_row_id(int(days[s]), sid) for s in starts]
        existing = dict(self._load_chunks(conn, ids))
        sealed: list[tuple[int, int, bytes]] = []
        finished: dict[int, tuple[Rows, Extras]] = {}
        fresh: list[Summary] = []
        last = None
        for row_id, s, e in zip(ids, starts, ends):
            day_ts, day_values = ts[s:e], values[s:e]
            if row_id in existing:
                day_ts, day_values = merge_samples([decode_chunk(existing[row_id]), (day_ts, day_values)])
            blob = encode_chunk(day_ts, day_values)
            day = row_id >> _SID_BITS
            if day < today:
                sealed.append((row_id, len(day_ts), blob))
                finished[day] = _hourly(day_ts, day_values)
                if summaries is not None:
                    fresh.append(summarize(day_ts, day_values, FIVE_MINUTES_MS))
            else:
                self._drop_sealed(conn, [row_id])
                conn.execute("INSERT OR REPLACE INTO open_chunks (id, n, data) VALUES (?, ?, ?)", (row_id, len(day_ts), blob))
            last = (int(day_ts[-1]), float(day_values[-1]))
        locations = self._write_sealed(conn, sealed)
        if summaries is not None:
            summaries += zip(locations, fresh)
        if finished:
            self._update_hourly(conn, sid, finished)
        conn.execute(
            "UPDATE series SET last_ts = ?, last_value = ? WHERE id = ? AND (last_ts IS NULL OR last_ts <= ?)",
            (last[0], last[1], sid, last[0]),
        )

    def _write_sealed(self, conn: sqlite3.Connection, chunks: list[tuple[int, int, bytes]]) -> list[tuple[int, int, int]]:
        """Append chunks to the data files and index them, replacing older versions (open or sealed); returns their
        (file, offset, length), which are theirs once the transaction commits."""
        if not chunks:
            return []
        ids = [c[0] for c in chunks]
        self._drop_sealed(conn, ids)
        locations = self.files.append(conn, [c[2] for c in chunks], fsync=self.options.fsync)
        conn.executemany(
            "INSERT INTO chunks (id, n, file, offset, length) VALUES (?, ?, ?, ?, ?)",
            [(row_id, n, *loc) for (row_id, n, _blob), loc in zip(chunks, locations)],
        )
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            conn.execute(f"DELETE FROM open_chunks WHERE id IN ({','.join('?' * len(part))})", part)
        return locations

    @staticmethod
    def _drop_sealed(conn: sqlite3.Connection, ids: list[int], where: str = "", args: tuple = ()) -> int:
        """Remove index rows (by id list, or by a WHERE clause) and count their bytes as garbage of their files."""
        if where:
            rows = conn.execute(f"SELECT id, file, length FROM chunks WHERE {where}", args).fetchall()
        else:
            rows = Store._fetch(conn, "chunks", ids, "file, length")
        if not rows:
            return 0
        garbage: dict[int, int] = defaultdict(int)
        for _id, file_id, length in rows:
            garbage[file_id] += length
        conn.executemany("UPDATE files SET garbage = garbage + ? WHERE id = ?", [(g, f) for f, g in garbage.items()])
        conn.executemany("DELETE FROM chunks WHERE id = ?", [(r[0],) for r in rows])
        return len(rows)

    def _seal_finished_days(
        self, conn: sqlite3.Connection, today: int, *, summaries: list[_SealedSummary] | None = None
    ) -> int:
        """Move open chunks of days before `today` into the data files, with their hourly rollups (and their
        5-minute summaries into `summaries`, as `_merge_into_chunks`)."""
        rows = conn.execute("SELECT id, n, data FROM open_chunks WHERE id < ?", (_row_id(today, 0),)).fetchall()
        if not rows:
            return 0
        locations = self._write_sealed(conn, [(row_id, n, blob) for row_id, n, blob in rows])
        by_series: dict[int, dict[int, tuple[Rows, Extras]]] = defaultdict(dict)
        for (row_id, _n, blob), location in zip(rows, locations):
            ts, values = decode_chunk(blob)
            by_series[row_id & _SID_MASK][row_id >> _SID_BITS] = _hourly(ts, values)
            if summaries is not None:
                summaries.append((location, summarize(ts, values, FIVE_MINUTES_MS)))
        for sid, days in by_series.items():
            self._update_hourly(conn, sid, days)
        return len(rows)

    def _decoded_chunks(
        self, conn: sqlite3.Connection, ids: list[int]
    ) -> list[tuple[int, Decoded | tuple[np.ndarray, np.ndarray]]]:
        """(id, (ts, values)) of the open chunks among `ids` and (id, Decoded) of the sealed ones, which come from
        a bounded cache of decoded days.

        Sealed bytes never change (a rewrite is appended elsewhere), so (file, offset) identifies a version and
        the cache needs no invalidation. Dashboards ask for the same recent days over and over.
        """
        out = [(row_id, decode_chunk(blob)) for row_id, blob in self._fetch(conn, "open_chunks", ids)]
        located = self._fetch(conn, "chunks", ids, _LOCATION)
        cache = self._cache
        with self._cache_lock:  # queries also run in a worker thread (ReadView); the hits at once
            hits = [cache.get((file_id, offset)) for _row_id, file_id, offset, _length in located]
            for hit, (_row_id, file_id, offset, _length) in zip(hits, located):
                if hit is not None:
                    cache.move_to_end((file_id, offset))
        for hit, (row_id, file_id, offset, length) in zip(hits, located):
            if hit is None:  # decoded outside the lock
                hit = Decoded(self.files.read(file_id, offset, length))
                self._cache_put((file_id, offset), hit)
            out.append((row_id, hit))
        return out

    def _decoded_rollups(self, rid: int, blob: bytes) -> tuple[Rows, int, Extras | None]:
        """Decode an hourly rollup block, cached by its id and content (blocks are rewritten as days seal)."""
        key = (rid, len(blob), zlib.crc32(blob))
        hit = self._rollup_cache.get(key)
        if hit is None:
            hit = decode_block(blob)
            with self._cache_lock:
                self._rollup_cache[key] = hit
                while len(self._rollup_cache) > _ROLLUP_CACHE_BLOCKS:
                    self._rollup_cache.popitem(last=False)
        return hit

    def _cache_put(self, key: tuple[int, int], chunk: Decoded) -> None:
        with self._cache_lock:
            if key in self._cache:  # two threads decoded it at once
                return
            self._cache[key] = chunk
            self._cache_bytes += chunk.nbytes
            while self._cache_bytes > self.options.cache_bytes and self._cache:
                _key, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes

    def _load_chunks(self, conn: sqlite3.Connection, ids: list[int]) -> list[tuple[int, bytes]]:
        """(id, blob) of the chunks among `ids` that exist, open or sealed."""
        out = self._fetch(conn, "open_chunks", ids)
        for row_id, file_id, offset, length in self._fetch(conn, "chunks", ids, _LOCATION):
            out.append((row_id, self.files.read(file_id, offset, length)))
        return out

    def collect_garbage(self, min_ratio: float = 0.5) -> int:
        """Rewrite data files that are mostly garbage (after retention or late data); returns files removed."""
        with self._compact_lock, _gc_permit(self.data_dir) as allowed:
            if not allowed:
                log.info("garbage collection postponed: a snapshot is copying the data files")
                return 0
            removed: list[int] = []
            with self._write_transaction() as conn:
                newest = conn.execute("SELECT max(id) FROM files").fetchone()[0]
                for file_id, size, garbage in conn.execute(
                    "SELECT id, size, garbage FROM files WHERE id < ? AND garbage >= size * ?", (newest or 0, min_ratio)
                ).fetchall():
                    live = conn.execute("SELECT id, n, offset, length FROM chunks WHERE file = ?", (file_id,)).fetchall()
                    self._write_sealed(
                        conn, [(row_id, n, self.files.read(file_id, off, length)) for row_id, n, off, length in live]
                    )
                    conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
                    removed.append(file_id)
            for file_id in removed:  # still under the permit: a snapshot must never see a file vanish
                self.files.forget(file_id)
                self.files.path(file_id).unlink(missing_ok=True)
        return len(removed)

    def _update_hourly(self, conn: sqlite3.Connection, sid: int, days: dict[int, tuple[Rows, Extras]]) -> None:
        """Put the hourly rollups (and summary extras, blocks.py) of finished days into their 32-day blocks."""
        by_block: dict[int, dict[int, tuple[Rows, Extras]]] = defaultdict(dict)
        for day, hourly in days.items():
            by_block[day // BLOCK_DAYS][day] = hourly
        ids = [_row_id(b, sid) for b in by_block]
        existing = dict(self._fetch(conn, "rollup_1h", ids))
        for block, new_days in by_block.items():
            row_id = _row_id(block, sid)
            rows_parts: list[Rows] = []
            extras_parts: list[Extras] | None = []
            mask = 0
            if row_id in existing:
                rows, mask, extras = decode_block(existing[row_id])
                keep = ~np.isin(rows.ts // DAY_MS, list(new_days))
                if keep.any():
                    rows_parts.append(Rows(*(getattr(rows, f)[keep] for f in ("ts", *Rows.FIELDS))))
                    extras_parts = None if extras is None else [extras.select(keep)]  # a version 1 block stays one
            for day, (rows, extras) in new_days.items():
                rows_parts.append(rows)
                if extras_parts is not None:
                    extras_parts.append(extras)
                mask |= 1 << (day % BLOCK_DAYS)
            merged = Rows.concat(rows_parts)
            order = np.argsort(merged.ts, kind="stable")
            merged = Rows(*(getattr(merged, f)[order] for f in ("ts", *Rows.FIELDS)))
            more = None
            if extras_parts is not None:
                more = Extras.concat(extras_parts).select(order)
                if more.resets is not None and not keep_resets(more.resets):
                    more.resets = None
            conn.execute(
                "INSERT OR REPLACE INTO rollup_1h (id, data) VALUES (?, ?)", (row_id, encode_rows(merged, mask, more))
            )

    @staticmethod
    def _fetch(conn: sqlite3.Connection, table: str, ids: list[int], columns: str = "data") -> list[tuple]:
        """(id, *columns) of the rows of `table` among `ids`, 500 ids a statement."""
        out: list[tuple] = []
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            out += conn.execute(
                f"SELECT id, {columns} FROM {table} WHERE id IN ({','.join('?' * len(part))})", part
            ).fetchall()
        return out

    # ----------------------------------------------------------------- bulk writes (import, backfill)

    def write_bulk(self, series: Series, ts: np.ndarray, values: np.ndarray, *, now: int | None = None) -> int:
        """Write many samples of one series straight into chunks; returns samples written (cap may refuse)."""
        ts = np.asarray(ts, np.int64)
        ok = np.isfinite(values)
        if not ok.all():
            bad = values[~ok]
            self.rejected["nan"] += int(np.isnan(bad).sum())
            self.rejected["inf"] += int(np.isinf(bad).sum())
        in_range = (ts >= 0) & (ts <= (now if now is not None else now_ms()) + MAX_FUTURE_MS)
        if not in_range.all():
            self.rejected["bad_timestamp"] += int((ok & ~in_range).sum())
            ok &= in_range
        if not ok.all():
            ts, values = ts[ok], values[ok]
        sid = self.series_id(series)
        if sid is None:
            self.rejected["cardinality_limit"] += len(ts)
            self._log_cardinality(series)
            return 0
        ts, values = merge_samples([(np.asarray(ts, np.int64), np.asarray(values, np.float64))])
        with self._write_transaction(self.conn) as conn:
            self._merge_into_chunks(conn, sid, ts, values, now=now)
            self._log_bulk_change(conn, sid, ts)
        if len(ts):
            latest = self._latest.get(sid)
            if latest is not None and ts[0] <= latest[0]:
                self._rewritten()  # after the commit: an answer computed meanwhile is taken as stale
            if latest is None or ts[-1] >= latest[0]:
                self._latest[sid] = (int(ts[-1]), float(values[-1]))
        return len(ts)

    # ----------------------------------------------------------------- retention

    def apply_retention(self, now: int | None = None) -> dict[str, int]:
        """Delete what `keep` rules expire and turn raw days older than `raw` into 5-minute rollups."""
        now = now if now is not None else now_ms()
        stats = {"chunks_deleted": 0, "chunks_downsampled": 0}
        if not self.options.retention:
            return stats
        with self._write_transaction() as conn:
            before = conn.total_changes
            for sid, series in self.series():
                rule = next((r for r in self.options.retention if r.selector.matches(series)), None)
                if rule is None:
                    continue
                if rule.keep_ms is not None:
                    stats["chunks_deleted"] += self._expire(conn, sid, (now - rule.keep_ms) // DAY_MS)
                if rule.raw_ms is not None:
                    stats["chunks_downsampled"] += self._downsample(conn, sid, (now - rule.raw_ms) // DAY_MS)
            changed = conn.total_changes != before
        if changed:  # counted after the commit: an answer computed meanwhile is taken as stale
            self._rewritten()
        with contextlib.closing(_connect(self.db_path)) as conn:
            conn.execute("PRAGMA incremental_vacuum")  # give the freed pages back to the file system
        return stats

    def _expire(self, conn: sqlite3.Connection, sid: int, before_day: int) -> int:
        older = "id < ? AND (id & ?) = ?"
        args = (_row_id(before_day, 0), _SID_MASK, sid)
        deleted = self._drop_sealed(conn, [], older, args)
        deleted += conn.execute(f"DELETE FROM open_chunks WHERE {older}", args).rowcount
        conn.execute(f"DELETE FROM rollup_5m WHERE {older}", args)
        conn.execute(f"DELETE FROM rollup_1h WHERE {older}", (_row_id(before_day // BLOCK_DAYS, 0), _SID_MASK, sid))
        return deleted

    def _downsample(self, conn: sqlite3.Connection, sid: int, before_day: int) -> int:
        ids = [
            row_id
            for (row_id,) in conn.execute(
                "SELECT id FROM chunks WHERE id < ? AND (id & ?) = ?", (_row_id(before_day, 0), _SID_MASK, sid)
            )
        ]
        for row_id, blob in self._load_chunks(conn, ids):
            ts, values = decode_chunk(blob)
            conn.execute(
                "INSERT OR REPLACE INTO rollup_5m (id, data) VALUES (?, ?)",
                (row_id, encode_rows(rollup_samples(ts, values, FIVE_MINUTES_MS))),
            )
        self._drop_sealed(conn, ids)
        return len(ids)

    # ----------------------------------------------------------------- reads

    def _reader_head(self) -> tuple[dict[int, list[tuple[np.ndarray, np.ndarray]]], sqlite3.Connection]:
        """Head samples by series id, oldest write first, consistent with the open read transaction."""
        heads: dict[int, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
        if self.writer:
            for source in (self._frozen, self._head):
                for sid, hs in source.items():
                    heads[sid].append(self._head_arrays(hs))
            return heads, self.conn
        for _attempt in range(5):
            self.conn.execute("BEGIN")
            compacted = self._compacted_seq(self.conn)
            try:
                parts = [
                    wal.read_segment(wal.segment_path(self.wal_dir, s))[0]
                    for s in wal.list_segments(self.wal_dir)
                    if s > compacted
                ]
            except FileNotFoundError:  # compacted and deleted while we looked: take a newer snapshot
                self.conn.execute("COMMIT")
                continue
            records = np.concatenate(parts) if parts else np.empty(0, wal.RECORD)
            order = np.argsort(records["sid"], kind="stable")
            records = records[order]
            sids, starts = np.unique(records["sid"], return_index=True)
            for sid, s, e in zip(sids.tolist(), starts, np.append(starts[1:], len(records))):
                heads[sid].append((records["ts"][s:e], records["value"][s:e]))
            return heads, self.conn
        raise StoreError(f"{self.wal_dir}: the write-ahead log kept changing under this reader; try again")

    def _end_read(self) -> None:
        if not self.writer and self.conn.in_transaction:
            self.conn.execute("COMMIT")

    def read(self, selector: Selector, start_ms: int, end_ms: int) -> Iterator[SeriesData]:
        """Raw samples with start_ms <= ts < end_ms of every matching series (5-minute `last` where raw was dropped)."""
        for sid, series in self.series(selector):
            ts, values = self._retrying(lambda conn, heads: self._samples(conn, sid, start_ms, end_ms, heads.get(sid, [])))
            if len(ts):
                yield SeriesData(series, ts, values)

    def query(self, selector: Selector, start_ms: int, end_ms: int, step_ms: int, agg: str = "mean") -> list[SeriesData]:
        """Aggregate every matching series into buckets of `step_ms` aligned to the epoch.

        The bucket holding `start_ms` and the one holding `end_ms` are included whole, so answers do not depend
        on where a range starts inside a bucket, and hourly rollups give exactly what raw samples would.
        """
        if agg not in AGGREGATIONS:
            raise StoreError(f"unknown aggregation {agg!r}: use one of {', '.join(AGGREGATIONS)}")
        if step_ms <= 0:
            raise StoreError("step must be positive")
        lo = start_ms - start_ms % step_ms
        hi = end_ms - end_ms % step_ms + step_ms
        def run(conn, heads) -> list[SeriesData]:
            out = []
            stored = self._stored_days(conn)
            for sid, series in self.series(selector):
                rows, raw = self._rows(conn, sid, lo, hi, step_ms, heads.get(sid, []), stored)
                if len(rows):
                    out.append(SeriesData(series, *bucketize(rows, lo, hi, step_ms, agg, raw=raw)))
            return out

        return self._retrying(run)

    def _retrying(self, fn):
        """Run a read against one consistent snapshot; retry when garbage collection moved a chunk under it."""
        for _attempt in range(5):
            heads, conn = self._reader_head()
            try:
                return fn(conn, heads)
            except ChunkMoved:
                continue
            finally:
                self._end_read()
        raise StoreError(f"{self.data_dir}: chunks kept moving under this reader; try again")

    @staticmethod
    def _stored_days(conn) -> list[tuple[int, int]]:
        """(first, last) day of each table holding day rows: the span a read can find anything in."""
        ids = conn.execute(_STORED_IDS).fetchone()
        return [(a >> _SID_BITS, b >> _SID_BITS) for a, b in zip(ids[::2], ids[1::2]) if a is not None]

    def _days(self, conn, lo: int, hi: int, head, stored: list[tuple[int, int]] | None = None) -> range:
        """Days of [lo, hi) that can hold data: clamped to what the chunks, 5-minute rollups and head span."""
        first, last = lo // DAY_MS, (hi - 1) // DAY_MS
        bounds = list(self._stored_days(conn) if stored is None else stored)
        bounds += [(int(t.min()) // DAY_MS, int(t.max()) // DAY_MS) for t, _v in head if len(t)]
        if not bounds:
            return range(0)
        return range(max(first, min(b[0] for b in bounds)), min(last, max(b[1] for b in bounds)) + 1)

    def _rows(self, conn, sid: int, lo: int, hi: int, step_ms: int, head, stored=None) -> tuple[Rows, bool]:
        """Rollup rows (or samples as rows) of [lo, hi), and whether they are all raw samples."""
        head_parts = [(t, v) for t, v in head if len(t)]
        days = self._days(conn, lo, hi, head_parts, stored)
        head_days = _head_days(head_parts, lo, hi)
        rolled: set[int] = set()
        parts: list[Rows] = []
        if step_ms % HOUR_MS == 0:
            blocks = range(days.start // BLOCK_DAYS, (days.stop - 1) // BLOCK_DAYS + 1) if days else range(0)
            skip = np.array(sorted(head_days), np.int64)
            for rid, blob in self._fetch(conn, "rollup_1h", [_row_id(b, sid) for b in blocks]):
                rows, mask, _extras = self._decoded_rollups(rid, blob)
                first_day = (rid >> _SID_BITS) * BLOCK_DAYS
                if mask == _FULL_MASK and days.start <= first_day and first_day + BLOCK_DAYS <= days.stop and not len(skip):
                    rolled.update(range(first_day, first_day + BLOCK_DAYS))  # the common case of a long range
                    parts.append(rows)
                    continue
                block_days = first_day + _BLOCK_OFFSETS
                wanted = ((mask >> _BLOCK_OFFSETS) & 1).astype(bool)
                wanted &= (block_days >= days.start) & (block_days < days.stop)
                if len(skip):
                    wanted &= ~np.isin(block_days, skip)
                if wanted.any():
                    rolled.update((first_day + np.flatnonzero(wanted)).tolist())
                    keep = wanted[rows.ts // DAY_MS - first_day]
                    parts.append(rows if keep.all() else Rows(*(getattr(rows, f)[keep] for f in ("ts", *Rows.FIELDS))))
        need = [d for d in days if d not in rolled]
        if need:
            ts, values = self._samples(conn, sid, lo, hi, head_parts, days=need, rows_out=parts, step_ms=step_ms)
            parts.append(Rows.from_samples(ts, values))
        raw = len(parts) == 1 and not rolled
        rows = Rows.concat(parts)
        if len(parts) > 1 and not bool(np.all(rows.ts[1:] > rows.ts[:-1])):
            order = np.argsort(rows.ts, kind="stable")
            rows = Rows(*(getattr(rows, f)[order] for f in ("ts", *Rows.FIELDS)))
        return rows.between(lo, hi), raw

    def _samples(
        self, conn, sid: int, lo: int, hi: int, head, *, days=None, rows_out: list[Rows] | None = None, step_ms: int = 0,
        transient: bool = False, found: list | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Samples of [lo, hi); `transient`: in this thread's scratch arrays, valid until its next transient read;
        `found`: `_decoded_chunks` of these days, when the caller has them already."""
        if days is None:
            days = self._days(conn, lo, hi, head)
        ids = [_row_id(d, sid) for d in days]
        chunks = sorted(self._decoded_chunks(conn, ids) if found is None else found, key=lambda c: c[0])
        parts: list[Decoded | tuple[np.ndarray, np.ndarray]] = [chunk for _id, chunk in chunks]
        have = {i for i, _a in chunks}
        missing = [i for i in ids if i not in have]
        if missing:
            for _id, blob in sorted(self._fetch(conn, "rollup_5m", missing)):
                rows, _mask = decode_rows(blob)
                if rows_out is not None and step_ms % FIVE_MINUTES_MS == 0:
                    rows_out.append(rows)
                else:  # finer than the rollups: the best left is one sample per 5 minutes
                    parts.append((rows.ts + FIVE_MINUTES_MS - 1, rows.last))
        day_set = set(days)
        for t, v in head:
            sel = (t >= lo) & (t < hi)
            if days is not None:
                sel &= np.isin(t // DAY_MS, list(day_set))
            parts.append((t[sel], v[sel]))
        ts, values = _gather(parts, self._scratch if transient else None)
        lo_i, hi_i = np.searchsorted(ts, [lo, hi])
        return ts[lo_i:hi_i], values[lo_i:hi_i]

    def _pieces(self, conn, sid: int, lo: int, hi: int, head, days, found: list) -> Samples:
        """The samples of [lo, hi) as `Samples`, from `found`, the `_decoded_chunks` of `days`: a day held as one
        steady chunk (`Decoded.steady`, no head samples or open chunk beside it) stays compact, the other days are
        read as `_samples` reads them (in this thread's scratch arrays: use them before the next read)."""
        head_days = _head_days(head, lo, hi)
        steady: dict[int, Decoded] = {}
        other: set[int] = set()  # days read as arrays: also those with an open chunk beside a sealed one
        for row_id, chunk in found:
            day = row_id >> _SID_BITS
            if day in steady or day in other:
                steady.pop(day, None)
                other.add(day)
            elif isinstance(chunk, Decoded) and chunk.steady and day not in head_days:
                steady[day] = chunk
            else:
                other.add(day)
        runs = []
        for day in sorted(steady):
            chunk = steady[day]  # samples k0 <= k < k1 lie in [lo, hi): all of a day inside it
            if lo <= day * DAY_MS and (day + 1) * DAY_MS <= hi:
                runs.append((chunk, 0, chunk.n))
            else:
                runs.append((chunk, chunk.before(lo), chunk.before(hi)))
        rest = [d for d in days if d not in steady]
        if not rest:
            return Samples(runs)
        others = [(row_id, chunk) for row_id, chunk in found if row_id >> _SID_BITS not in steady]
        ts, values = self._samples(conn, sid, lo, hi, head, days=rest, transient=True, found=others)
        if not runs:
            return Samples([(ts, values)])
        # the other days' samples, cut where each steady day begins, between them in time order
        cuts = np.searchsorted(ts, [chunk.first for chunk, _k0, _k1 in runs]).tolist()
        parts: list = []
        for (begin, end), run in zip(zip([0, *cuts], cuts), runs):
            parts += [(ts[begin:end], values[begin:end]), run]
        parts.append((ts[cuts[-1]:], values[cuts[-1]:]))
        return Samples(parts)

    # ----------------------------------------------------------------- reads in a worker thread (PromQL)

    def read_view(self, selectors: Iterable[Selector] | None = None) -> ReadView:
        """The series and head as of now, for reads in a worker thread; call it where writes happen (the event loop).

        With `selectors` (a query's), the view reads only what those select, and copies the head samples of their
        series only: in a hub, copying every series' head is most of what a view costs (100 series with 5 minutes
        of head: ~120 µs).
        """
        self._load_known_series()
        index = self._index
        if selectors is not None:
            selectors = frozenset(selectors)
        if self.writer:
            heads: dict[int, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
            sids = None if selectors is None else {sid for sel in selectors for sid, _s in index.match(sel)}
            for source in (self._frozen, self._head):
                if sids is None:
                    wanted = source.items()
                else:
                    wanted = [(sid, source[sid]) for sid in sids if sid in source]
                for sid, hs in wanted:
                    heads[sid].append(self._head_arrays(hs))  # copies: the head keeps growing meanwhile
        else:
            heads, _conn = self._reader_head()
            self._end_read()
        return ReadView(self, index, heads, selectors)

    def _view_connection(self) -> sqlite3.Connection:
        if self._view_conn is None:
            self._view_conn = _connect(self.db_path)
        return self._view_conn

    def _hourly_summaries(
        self, conn: sqlite3.Connection, sid: int, days: Iterable[int], resets: bool, out: list[Summary]
    ) -> set[int]:
        """Hourly summaries of sealed `days` from the rollup blocks that keep the extras (appended to `out`); the
        days served. A block from before the extras, or without resets when they are needed, serves none."""
        by_block: dict[int, list[int]] = defaultdict(list)
        for day in days:
            by_block[day // BLOCK_DAYS].append(day)
        served: set[int] = set()
        for rid, blob in self._fetch(conn, "rollup_1h", [_row_id(b, sid) for b in by_block]):
            rows, mask, extras = self._decoded_rollups(rid, blob)
            if extras is None or (resets and extras.resets is None):
                continue
            wanted = sorted(d for d in by_block[rid >> _SID_BITS] if mask >> (d % BLOCK_DAYS) & 1)
            if not wanted:
                continue
            summary = self._block_summary(rid, blob, rows, extras)
            if wanted[-1] - wanted[0] + 1 == len(wanted):  # the usual case: a run of days
                out.append(summary.between(wanted[0] * DAY_MS, (wanted[-1] + 1) * DAY_MS))
            else:
                out.append(Summary(summary.rows[:, np.isin(rows.ts // DAY_MS, wanted)]))
            served.update(wanted)
        return served

    def _block_summary(self, rid: int, blob: bytes, rows: Rows, extras: Extras) -> Summary:
        """The hourly summary of a whole rollup block, from the summary cache (keyed by the block's content)."""
        key = (rid, len(blob), zlib.crc32(blob), "block")
        with self._cache_lock:
            hit = self._summary_cache.get(key)
            if hit is not None:
                self._summary_cache.move_to_end(key)
                return hit
        ts = rows.ts.astype(np.float64)
        table = np.empty((len(SUMMARY_FIELDS), len(ts)))
        table[TS], table[COUNT], table[SUM], table[MIN], table[MAX] = ts, rows.count, rows.sum, rows.min, rows.max
        table[FIRST_TS], table[FIRST] = ts + extras.first_offset, extras.first
        table[LAST_TS], table[LAST] = ts + extras.last_offset, rows.last
        table[RESETS] = extras.resets if extras.resets is not None else 0.0  # then never read: see _hourly_summaries
        table.setflags(write=False)
        summary = Summary(table)
        self._summary_put(key, summary)
        return summary

    def _chunk_summary(self, file_id: int, offset: int, length: int, width_ms: int) -> Summary:
        """The summary of a sealed chunk, from a bounded cache (sealed bytes never change, see `_decoded_chunks`)."""
        key = (file_id, offset, width_ms)
        with self._cache_lock:
            hit = self._summary_cache.get(key)
            if hit is not None:
                self._summary_cache.move_to_end(key)
                return hit
            raw = self._cache.get((file_id, offset))
        ts, values = raw.arrays() if raw is not None else decode_chunk(self.files.read(file_id, offset, length))
        summary = summarize(ts, values, width_ms)
        self._summary_put(key, summary)
        return summary

    def warm_summaries(self, days: int = WARM_DAYS) -> int:
        """Summarize the newest `days` sealed days of every series at 5 minutes into the summary cache, newest
        day first, until the cache holds `_WARM_SUMMARY_BYTES` (or half its budget); returns the days summarized.

        The hub runs it before it serves (`roost.api.prometheus`): a week on the Grafana grid (step 10m) is read
        from these summaries, and making them costs a query of 32 series ~40 ms where reading them takes 6; the
        budget bounds this to ~900 days, ~0.1 s here. Compaction keeps them for the days it seals
        (`compact_frozen`). Thread-safe; stops quietly when garbage collection moves a chunk under it.
        """
        try:
            with contextlib.closing(_connect(self.db_path)) as conn:
                (last,) = conn.execute("SELECT max(id) FROM chunks").fetchone()
                newest = [] if last is None else conn.execute(
                    "SELECT file, offset, length FROM chunks WHERE id >= ? ORDER BY id DESC",
                    (_row_id((last >> _SID_BITS) - days + 1, 0),),
                ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.db_path}: cannot list the newest chunks: {exc}") from None
        done = 0
        for file_id, offset, length in newest:
            if self._summary_bytes >= min(_WARM_SUMMARY_BYTES, self._summary_budget // 2):
                break
            try:
                self._chunk_summary(file_id, offset, length, FIVE_MINUTES_MS)
            except ChunkMoved:
                break
            done += 1
        return done

    def _summary_put(self, key: tuple, summary: Summary) -> None:
        with self._cache_lock:
            if key in self._summary_cache:  # two threads made it at once
                return
            self._summary_cache[key] = summary
            self._summary_bytes += summary.nbytes
            while self._summary_bytes > self._summary_budget and self._summary_cache:
                _key, old = self._summary_cache.popitem(last=False)
                self._summary_bytes -= old.nbytes

    def _rewritten(self) -> None:
        with self._rewrites_lock:
            self.rewrites += 1

    def history_mark(self, selectors: Iterable[Selector]) -> tuple[int, dict[int, int]]:
        """What an answer over `selectors` depends on, taken before computing it: `rewrites`, and the newest sample's
        time of every matching series (-1: none yet). Samples that arrive later in time order than a series' newest
        one change no answer that reads only up to that newest time."""
        self._load_known_series()
        latest, index = self._latest, self._index
        newest = {sid: latest[sid][0] if sid in latest else -1 for sel in selectors for sid, _s in index.match(sel)}
        return self.rewrites, newest

    def latest(self) -> dict[Series, tuple[int, float]]:
        """The newest sample of every series (also what other processes imported)."""
        self._load_series()
        for sid, last_ts, last_value in self.conn.execute("SELECT id, last_ts, last_value FROM series WHERE last_ts IS NOT NULL"):
            if sid not in self._latest or self._latest[sid][0] < last_ts:
                self._latest[sid] = (last_ts, last_value)
        if not self.writer:
            heads, _conn = self._reader_head()
            self._end_read()
            self._load_series()
            for sid, parts in heads.items():
                for t, v in parts:
                    if len(t):
                        i = int(np.argmax(t))
                        if sid not in self._latest or t[i] >= self._latest[sid][0]:
                            self._latest[sid] = (int(t[i]), float(v[i]))
        return {self._series_by_id[sid]: tv for sid, tv in self._latest.items() if sid in self._series_by_id}

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.data_dir.rglob("*") if p.is_file())

    def checkpoint(self) -> None:
        """Fold SQLite's WAL into the database file and return free pages (before measuring or snapshotting)."""
        self.conn.execute("PRAGMA incremental_vacuum")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # ----------------------------------------------------------------- durability hooks (roost.durability)

    @classmethod
    def open_readonly(cls, data_dir: Path | str) -> Store:
        """Open a store that must not change (a snapshot being verified): no schema writes, no WAL recovery."""
        store = cls(Path(data_dir), StoreOptions(), writer=False)
        if not store.db_path.exists():
            raise StoreError(f"{store.db_path}: no such file — this is not a roost store or snapshot")
        try:
            store.conn = _connect(store.db_path, readonly=True)
            store._load_series()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{store.db_path}: cannot open the store read-only ({exc})") from None
        return store

    def wal_position(self) -> tuple[int, int]:
        """(segment, byte offset) just past the last batch appended to the write-ahead log (writer only)."""
        if self._segment is None:
            raise StoreError("the store is closed")
        return self._segment.seq, self._segment.size

    def compacted_seq(self) -> int:
        """The newest write-ahead log segment already moved into chunks (older segments are deleted)."""
        return self._compacted_seq(self.conn)

    def adopt_series(self, sid: int, series: Series) -> None:
        """Register a series under the id another store gave it (a standby mirrors its primary's ids)."""
        key = _series_key(series)
        known = self._series_by_key.get(key)
        if known == sid:
            return
        row = self.conn.execute("SELECT key FROM series WHERE id = ?", (sid,)).fetchone()
        if known is not None or (row is not None and row[0] != key):
            raise StoreError(
                f"{self.data_dir}: series id {sid} is {row[0] if row else key!r} here but {key!r} on the primary: "
                "this standby has diverged — resync it (`roost standby --resync`)"
            )
        try:
            self.conn.execute(
                "INSERT INTO series (id, key, metric, labels) VALUES (?, ?, ?, ?)",
                (sid, key, series.metric, json.dumps(series.labels)),
            )
        except sqlite3.OperationalError as exc:
            raise self._write_error(exc) from None
        self._load_series()


    def _note_segment_end(self, seq: int, size: int) -> None:
        self.segment_ends[seq] = size
        while len(self.segment_ends) > 1024:
            del self.segment_ends[min(self.segment_ends)]

    # -- the bulk-change log: a standby gets the write-ahead log streamed, and pulls what bulk writes changed

    @staticmethod
    def _log_bulk_change(conn: sqlite3.Connection, sid: int, ts: np.ndarray) -> None:
        """Note the day chunks of `sid` a bulk write touched, in its own transaction (a standby pulls them)."""
        if len(ts):
            days = np.unique(ts // DAY_MS).tolist()
            conn.executemany("INSERT INTO bulk_changes (id) VALUES (?)", [(_row_id(d, sid),) for d in days])

    def bulk_change_seq(self) -> int:
        """The number of the newest bulk change ever logged (0: none)."""
        try:
            row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'bulk_changes'").fetchone()
        except sqlite3.OperationalError:  # a store older than the log
            return 0
        return int(row[0]) if row else 0

    def bulk_changes(self, after: int, max_bytes: int) -> tuple[list[tuple[int, bytes]], int] | None:
        """Day chunks (row id, encoded blob) changed by bulk writes logged after change `after`, each once, about
        `max_bytes` at most, from one snapshot of the index; and the change the answer reaches (the next `after`).

        None when changes after `after` were already trimmed away (the asker must copy the store again). Thread-safe.
        """
        for _attempt in range(5):
            with contextlib.closing(_connect(self.db_path)) as conn:
                conn.execute("BEGIN")
                row = conn.execute("SELECT value FROM meta WHERE key = 'bulk_changes_trimmed'").fetchone()
                if row is not None and after < int(row[0]):
                    return None
                out: list[tuple[int, bytes]] = []
                seen: set[int] = set()
                size, reached = 0, after
                try:
                    while True:
                        page = conn.execute(
                            "SELECT seq, id FROM bulk_changes WHERE seq > ? ORDER BY seq LIMIT 256", (reached,)
                        ).fetchall()
                        if not page:
                            return out, reached
                        blobs = dict(self._load_chunks(conn, list({i for _s, i in page} - seen)))
                        for seq, row_id in page:
                            if row_id not in seen:
                                blob = blobs.get(row_id)  # None: deleted since (retention)
                                if blob is not None:
                                    if out and size + len(blob) > max_bytes:
                                        return out, reached
                                    out.append((row_id, blob))
                                    size += len(blob)
                                seen.add(row_id)
                            reached = seq
                except ChunkMoved:  # garbage collection moved a chunk under this snapshot: take a newer one
                    continue
        raise StoreError(f"{self.data_dir}: chunks kept moving while reading the bulk-change log; try again")

    def trim_bulk_changes(self, upto: int) -> None:
        """Forget logged bulk changes up to `upto` (what the standby has applied, or all without a standby)."""
        with self._write_transaction() as conn:
            conn.execute("DELETE FROM bulk_changes WHERE seq <= ?", (upto,))
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('bulk_changes_trimmed', "
                "max(?, coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'bulk_changes_trimmed'), 0)))",
                (upto,),
            )


GC_LOCK = "GC.LOCK"


@contextlib.contextmanager
def hold_data_files(data_dir: Path) -> Iterator[None]:
    """Keep garbage collection (which deletes data files) from running while this is held; other processes too."""
    fd = os.open(Path(data_dir) / GC_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _gc_permit(data_dir: Path) -> Iterator[bool]:
    """True while no snapshot holds the data files (`hold_data_files`); never waits."""
    try:
        fd = os.open(data_dir / GC_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


class ViewBusy(Exception):
    """Another read view is reading (`ReadView.run(wait=False)`)."""


class ReadView:
    """One query's reads, safe in a worker thread beside the hub's writes.

    Series and head samples are copied by `Store.read_view()` on the writing thread; chunks come from one SQLite
    snapshot per `run`, on a connection of the view's own, one view at a time.
    """

    def __init__(
        self, store: Store, index: _SeriesIndex, heads: dict[int, list[tuple[np.ndarray, np.ndarray]]],
        selectors: frozenset[Selector] | None = None,
    ):
        self._store = store
        self._index = index
        self._heads = heads
        self._selectors = selectors  # what it may read (None: anything)
        self._conn: sqlite3.Connection | None = None
        self._stored: list[tuple[int, int]] = []

    def run(self, fn, *, wait: bool = True):
        """`fn(self)` inside one read transaction; again on a newer snapshot if garbage collection moved a chunk.

        With `wait=False` it raises `ViewBusy` at once when another view is reading (the event loop must not wait).
        """
        store = self._store
        if not store._view_lock.acquire(blocking=wait):
            raise ViewBusy
        try:
            conn = store._view_connection()
            for _attempt in range(5):
                conn.execute("BEGIN")
                try:
                    self._conn, self._stored = conn, store._stored_days(conn)
                    return fn(self)
                except ChunkMoved:
                    continue
                finally:
                    self._conn = None
                    conn.execute("COMMIT")
        finally:
            store._view_lock.release()
        raise StoreError(f"{store.data_dir}: chunks kept moving under this reader; try again")

    def count(self, selector: Selector) -> int:
        """How many series match (what a query's cost grows with); needs no `run`."""
        return len(self._matches(selector))

    def summaries_fit(self, selector: Selector, start_ms: int, end_ms: int, width_ms: int) -> bool:
        """Whether the summaries `summaries` would return stay in the store's summary cache: finer than hourly
        (those are made from the day chunks; hourly ones mostly come from the stored rollups), the summaries of
        every matching series' days must fit in three quarters of it. Beyond that every read would make them
        again from the chunks (~0.25 ms a series-day), where reading the samples costs a tenth of that.
        Measured: `avg(humidity_percent)` over 313 series, a week at step 10m, 660 ms from summaries made
        again on each read, ~100 ms from the samples (in process)."""
        if width_ms >= HOUR_MS:
            return True
        days = (end_ms - 1) // DAY_MS - start_ms // DAY_MS + 1
        per_day = (DAY_MS // width_ms) * len(SUMMARY_FIELDS) * 8
        return self.count(selector) * days * per_day <= self._store._summary_budget * 3 // 4

    def _matches(self, selector: Selector) -> list[tuple[int, Series]]:
        return self._index.match(selector)

    def _matching(self, selector: Selector) -> Iterator[tuple[int, Series, list[tuple[np.ndarray, np.ndarray]]]]:
        if self._conn is None:
            raise StoreError("ReadView reads only inside run()")
        if self._selectors is not None and selector not in self._selectors:
            raise StoreError(f"this view was taken for other selectors than {selector.text}: it has not its head samples")
        for sid, series in self._matches(selector):
            yield sid, series, [(t, v) for t, v in self._heads.get(sid, ()) if len(t)]

    def read(self, selector: Selector, start_ms: int, end_ms: int, *, transient: bool = False) -> Iterator[SeriesData]:
        """As `Store.read`: raw samples with start_ms <= ts < end_ms of every matching series.

        `transient`: each series' arrays are reused for the next one (read them before asking for it), which
        saves faulting in fresh memory for every series of a long range.
        """
        store = self._store
        for sid, series, head in self._matching(selector):
            days = store._days(self._conn, start_ms, end_ms, head, self._stored)
            ts, values = store._samples(self._conn, sid, start_ms, end_ms, head, days=days, transient=transient)
            if len(ts):
                yield SeriesData(series, ts, values)

    def samples(self, selector: Selector, start_ms: int, end_ms: int) -> Iterator[tuple[Series, Samples]]:
        """As `read`, with the days whose timestamps keep a steady interval left compact (samples.py); each
        series' `Samples` is valid until the next is asked for."""
        store, conn = self._store, self._conn
        matching = iter(self._matching(selector))
        # the chunks of a batch of series in a few statements (not two per series)
        while batch := list(itertools.islice(matching, _SERIES_PER_FETCH)):
            wanted = [(sid, series, head, store._days(conn, start_ms, end_ms, head, self._stored)) for sid, series, head in batch]
            found: dict[int, list] = defaultdict(list)
            for row_id, chunk in store._decoded_chunks(conn, [_row_id(d, sid) for sid, _s, _h, days in wanted for d in days]):
                found[row_id & _SID_MASK].append((row_id, chunk))
            for sid, series, head, days in wanted:
                if days:
                    samples = store._pieces(conn, sid, start_ms, end_ms, head, days, found[sid])
                    if samples.n:
                        yield series, samples

    def summaries(
        self, selector: Selector, start_ms: int, end_ms: int, width_ms: int, *, resets: bool = True
    ) -> Iterator[tuple[Series, Summary]]:
        """Summaries (summaries.py) of the buckets of `width_ms` in [start_ms, end_ms) (multiples of the width).

        Hourly summaries of sealed days come from the hourly rollup blocks where those keep the extras (and the
        resets, when `resets` says the caller needs them): nothing is decoded. Other sealed days come from the
        summary cache; days with an open chunk, head samples or only 5-minute rollups are summarized from what
        `read` would return for them.
        """
        store, conn = self._store, self._conn
        wanted: list[tuple[int, Series, list[tuple[np.ndarray, np.ndarray]], range]] = []
        ids: list[int] = []
        for sid, series, head in self._matching(selector):
            days = store._days(conn, start_ms, end_ms, head, self._stored)
            if not days:
                continue
            head_days = _head_days(head, start_ms, end_ms)
            wanted.append((sid, series, head, days))
            ids.extend(_row_id(d, sid) for d in days if d not in head_days)
        # the sealed chunks of every matching series' days, in one statement per 500 (not one per series)
        chunks: dict[int, dict[int, tuple[int, int, int]]] = defaultdict(dict)
        for row_id, file_id, offset, length in store._fetch(conn, "chunks", ids, _LOCATION):
            chunks[row_id & _SID_MASK][row_id >> _SID_BITS] = (file_id, offset, length)
        for sid, series, head, days in wanted:
            located = chunks.get(sid, {})
            parts: list[Summary] = []
            served: set[int] = set()
            if width_ms == HOUR_MS and located:
                served = store._hourly_summaries(conn, sid, located, resets, parts)
            for day, (file_id, offset, length) in located.items():
                if day not in served:
                    parts.append(store._chunk_summary(file_id, offset, length, width_ms))
            rest = [d for d in days if d not in located]
            if rest:
                ts, values = store._samples(conn, sid, start_ms, end_ms, head, days=rest)
                parts.append(summarize(ts, values, width_ms))
            summary = Summary.concat(parts).between(start_ms, end_ms)
            if len(summary):
                yield series, summary
