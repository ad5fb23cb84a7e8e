"""Warm standby: a primary ships its write-ahead log over HTTP, a standby applies it and acknowledges.

Positions are `(segment, byte offset)` in the primary's write-ahead log; a position is only meaningful for one
primary identity (`id`, new at every promotion). The protocol, all under `/api/replication/`:

- `GET status` — `{"role", "epoch", "id", ...}`, no token needed (the split-brain guard asks it).
- `GET base` (token) — a consistent cut of the store (snapshot.py) streamed as a tar, file by file from disk
  (bounded memory whatever the store's size): store.db, the log segments, each data file up to its committed
  size, and last `manifest.json` with every file's size and sha256, which the standby checks as it writes.
  Headers name the primary's id, epoch, the log position the cut ends at and its total bytes. A new or
  resyncing standby starts from it.
- `GET stream?id=&from=SEG:OFF&series=N&wait=S` (token) — long poll: whole CRC-framed batches from `from` on, as
  soon as the primary has made them durable, preceded by one JSON line (next position, the head, series with ids
  above N). Asking `from=P` acknowledges everything before P: the standby asks again only once what it got is
  durable on its disk (WAL fdatasync, then its position file). 410 = those segments are compacted away: copy
  the base again. The JSON line also carries `changes`, the newest entry of the bulk-change log.
- `GET changes?id=&after=N` (token) — bulk writes (`roost import`, backfill, writes into compacted days) do not
  go through the log; the store notes each day chunk they change in its bulk-change log. The answer: one JSON
  line (the change reached, the newest, new series), then the current encoded chunk of every day changed after
  change N, each once, at most MAX_RESPONSE bytes. The standby merges them into its own chunks (a merge, like
  the bulk write itself), records the change reached, and asks from there: resumable, bounded memory. Asking
  `after=N` acknowledges changes up to N; the primary then forgets them. 410 = already forgotten: copy the base.

Modes, set on the primary (`[replication] mode`):
- `sync` (DRBD protocol C): the hub's writer acknowledges a batch (`hub.ingest` returns, HTTP 204) only once the
  standby acknowledged it — no acknowledged reading is lost when the primary dies. If the standby does not
  answer within `sync_timeout`, the primary carries on alone ("degraded", logged, `roost_replication_degraded`)
  until it reconnects.
- `async` (DRBD protocol A, the default): acknowledged at once; the standby trails by the replication lag. The
  writer waits when the oldest reading the standby has not confirmed is older than `max_lag`, so what a dying
  primary can lose is bounded: readings acknowledged within the last `max_lag` (default 5 s).

Promotion writes a new epoch and id into `replication.json`. A primary with `[replication] peer` asks the peer
at start; if the peer is a primary of a newer epoch (it was promoted), this one refuses to run until it is
resynced as a standby (`roost standby --resync`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hmac
import hashlib
import json
import logging
import os
import re
import struct
import tarfile
import tempfile
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np
from aiohttp import web

from roost.durability import _walbytes
from roost.durability.snapshot import MANIFEST, FileEntry, Manifest, cut_manifest, cut_store, read_prefix
from roost.errors import RoostError
from roost.model import Series
from roost.store.codec import decode_chunk
from roost.store import wal

if TYPE_CHECKING:
    from roost.config import Settings
    from roost.hub import Hub
    from roost.store import Store

log = logging.getLogger("roost.replication")

ROLE_FILE = "replication.json"
POSITION_FILE = "replication.pos"
MAX_RESPONSE = 4 << 20
_POS = struct.Struct("<qq")
_CHANGES = struct.Struct("<q")  # after the position: the bulk change applied up to
_CHUNK = struct.Struct("<qI")  # a shipped chunk: row id, blob length
_BASE_FILE = re.compile(r"store\.db|wal/\d{12}\.log|chunks/\d{8}\.dat|manifest\.json")
_BLOCK = 1 << 20
_SID_MASK = (1 << 24) - 1  # a chunk's row id is day << 24 | series id (store/engine.py)
Position = tuple[int, int]


class ReplicationError(RoostError):
    """Replication cannot go on as asked (split brain, diverged standby, bad token); says what to run."""


# ---------------------------------------------------------------- the role record


def load_role(data_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(data_dir) / ROLE_FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ReplicationError(f"{Path(data_dir) / ROLE_FILE}: damaged ({exc}) — fix or remove it") from None


def save_role(data_dir: Path, doc: dict[str, Any]) -> None:
    path = Path(data_dir) / ROLE_FILE
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(doc, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def promote(data_dir: Path) -> dict[str, Any]:
    """Turn a stopped standby's store into a primary of a new epoch (the promotion record)."""
    data_dir = Path(data_dir)
    role = load_role(data_dir)
    if role is None or role.get("role") != "standby":
        raise ReplicationError(f"{data_dir}: not a standby (no standby record in {ROLE_FILE}) — nothing to promote")
    fd = os.open(data_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ReplicationError(f"{data_dir}: the standby is still running (LOCK is held) — stop it, then promote") from None
        record = {
            "role": "primary", "epoch": int(role.get("epoch", 1)) + 1, "id": uuid.uuid4().hex,
            "promoted_at": _now_iso(), "previous_primary": role.get("primary", ""),
            "previous_id": role.get("primary_id", ""), "position": list(read_position(data_dir) or ()),
        }
        save_role(data_dir, record)
        (data_dir / POSITION_FILE).unlink(missing_ok=True)
    finally:
        os.close(fd)
    log.warning("%s: promoted to primary, epoch %d", data_dir, record["epoch"])
    return record


def read_position(data_dir: Path) -> Position | None:
    try:
        raw = (Path(data_dir) / POSITION_FILE).read_bytes()
    except FileNotFoundError:
        return None
    return tuple(_POS.unpack(raw[: _POS.size])) if len(raw) >= _POS.size else None  # type: ignore[return-value]


def read_changes_applied(data_dir: Path) -> int | None:
    """The bulk change of the primary a standby has applied up to (None: not recorded)."""
    try:
        raw = (Path(data_dir) / POSITION_FILE).read_bytes()
    except FileNotFoundError:
        return None
    return _CHANGES.unpack_from(raw, _POS.size)[0] if len(raw) >= _POS.size + _CHANGES.size else None


class _PositionFile:
    """The standby's applied log position and bulk change: 24 bytes rewritten in place and fdatasync'ed."""

    def __init__(self, data_dir: Path):
        self._fd = os.open(Path(data_dir) / POSITION_FILE, os.O_RDWR | os.O_CREAT, 0o644)

    def save(self, pos: Position, changes: int) -> None:
        os.pwrite(self._fd, _POS.pack(*pos) + _CHANGES.pack(changes), 0)
        os.fdatasync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


# ---------------------------------------------------------------- the primary


class Primary:
    """The primary's side, owned by the hub: split-brain guard, stream endpoints, and the writer's wait."""

    def __init__(self, hub: Hub, role: dict[str, Any]):
        from prometheus_client import Gauge

        self.hub = hub
        self.settings = hub.settings.replication
        self.role = role
        self.durable: Position | None = None
        self.acked: Position = (0, 0)
        self.changes_trimmed = 0
        self.standby_seen = 0.0
        self.degraded = False
        self._pending: deque[tuple[Position, float]] = deque()
        self._data = asyncio.Condition()
        self._acks = asyncio.Condition()
        r = hub.metrics.registry
        self.lag = Gauge("roost_replication_lag_seconds", "Age of the oldest reading the standby has not confirmed.", registry=r)
        self.connected = Gauge("roost_replication_standby_connected", "1 while a standby follows this primary.", registry=r)
        self.degraded_gauge = Gauge("roost_replication_degraded", "1 while sync replication runs without its standby.", registry=r)

    @classmethod
    async def start(cls, hub: Hub) -> Primary:
        """Refuse a standby's store and a stale former primary; otherwise the primary side of this hub."""
        data = Path(hub.settings.hub.data)
        role = load_role(data)
        if role is not None and role.get("role") == "standby":
            raise ReplicationError(
                f"{data}: this store is a standby of {role.get('primary')} — run `roost standby` on it, "
                "or `roost promote` to make it the primary"
            )
        if role is None:
            role = {"role": "primary", "epoch": 1, "id": uuid.uuid4().hex, "created_at": _now_iso()}
            if (data / "store.db").exists() or hub.settings.replication.enabled:
                data.mkdir(parents=True, exist_ok=True)
                save_role(data, role)
        peer = hub.settings.replication.peer
        if peer:
            await cls._check_peer(data, role, peer.rstrip("/"))
        if not hub.settings.replication.enabled and (data / "store.db").exists():
            await asyncio.to_thread(_forget_bulk_changes, data)
        return cls(hub, role)

    @staticmethod
    async def _check_peer(data: Path, role: dict[str, Any], peer: str) -> None:
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as s:
                async with s.get(peer + "/api/replication/status") as resp:
                    status = await resp.json() if resp.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            log.warning("replication.peer %s: not reachable — starting as primary (epoch %s)", peer, role["epoch"])
            return
        if not status or status.get("role") != "primary":
            return
        theirs, ours = int(status.get("epoch", 0)), int(role["epoch"])
        if theirs > ours or (theirs == ours and status.get("id") != role["id"]):
            raise ReplicationError(
                f"{data}: refusing to run as primary — the peer {peer} is the primary since epoch {theirs} "
                f"(this store is epoch {ours}){' and was promoted ' + status['promoted_at'] if status.get('promoted_at') else ''}: "
                f"readings written here since may conflict. Rejoin as its standby: "
                f"`roost standby --resync --primary {peer} --token-file FILE --data {data}`"
            )

    # -- the writer's hook

    async def committed(self, pos: Position) -> None:
        """Called by the hub's writer once a batch ending at `pos` is durable here; waits as the mode requires."""
        if self.durable is None or pos > self.durable:
            self.durable = pos
        if not self.settings.enabled:
            return
        async with self._data:
            self._data.notify_all()
        now = time.monotonic()
        timeout = self.settings.sync_timeout_ms / 1000
        if now - self.standby_seen > timeout:  # no standby follows: nothing to wait for
            self._pending.clear()
            self._set_degraded(self.settings.mode == "sync" and self.standby_seen > 0)
            return
        self._pending.append((pos, now))
        if self.settings.mode == "sync":
            await self._wait_acked(lambda: self.acked >= pos, timeout)
        else:
            max_lag = self.settings.max_lag_ms / 1000
            await self._wait_acked(lambda: not self._pending or time.monotonic() - self._pending[0][1] <= max_lag, timeout)

    async def _wait_acked(self, done, timeout: float) -> None:
        try:
            async with self._acks:
                await asyncio.wait_for(self._acks.wait_for(done), timeout)
        except asyncio.TimeoutError:
            log.error("replication: the standby did not confirm within %.1f s — carrying on without it", timeout)
            self.standby_seen = 0.0
            self._pending.clear()
            self._set_degraded(self.settings.mode == "sync")
            return
        self._set_degraded(False)

    def _set_degraded(self, degraded: bool) -> None:
        if degraded != self.degraded:
            self.degraded = degraded
            self.degraded_gauge.set(int(degraded))
            if degraded:
                log.error("replication: sync mode is degraded — writes are acknowledged without the standby")
            else:
                log.info("replication: the standby is in step again")

    async def _ack(self, pos: Position) -> None:
        self.standby_seen = time.monotonic()
        self.connected.set(1)
        if pos > self.acked:
            self.acked = pos
        while self._pending and self._pending[0][0] <= self.acked:
            self._pending.popleft()
        self.lag.set(time.monotonic() - self._pending[0][1] if self._pending else 0)
        async with self._acks:
            self._acks.notify_all()

    # -- HTTP

    def _authorized(self, request: web.Request) -> bool:
        from roost.api.auth import GRANT

        grant = request.get(GRANT)  # a hub token of scope admin (docs/security.md) also opens the stream
        if grant is not None and grant.allows("admin"):
            return True
        token = self.settings.token
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return token is not None and hmac.compare_digest(given.encode(), token.reveal().encode())

    def _deny(self, request: web.Request, *, following: bool = False) -> web.Response | None:
        """An error answer for a request replication must refuse; `following`: it must name this primary's id."""
        if not self.settings.enabled:
            return _error(404, "replication is not enabled on this hub: set [replication] token_file")
        if not self._authorized(request):
            return _error(401, "wrong or missing replication token (Authorization: Bearer ...)")
        if following and request.query.get("id") != self.role["id"]:
            return _error(409, f"this primary is {self.role['id']} (epoch {self.role['epoch']}), not the one the standby "
                               "followed: copy the base again")
        return None

    async def status(self, request: web.Request) -> web.Response:
        doc = {k: v for k, v in self.role.items() if k in ("role", "epoch", "id", "promoted_at", "previous_primary")}
        self._note_rotation()
        doc.update(mode=self.settings.mode, standby_connected=time.monotonic() - self.standby_seen < 30,
                   degraded=self.degraded, acked=list(self.acked),
                   head=list(self.durable),
                   changes=self.hub.store.bulk_change_seq())
        return web.json_response(doc)

    async def base(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._deny(request)) is not None:
            return denied
        data = Path(self.hub.settings.hub.data)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="replication-base-", dir=data) as work:
            work = Path(work)
            cutting = cut_store(data, work)
            cut = await asyncio.to_thread(cutting.__enter__)
            try:
                files = [(name, work / name, e.size) for name, e in sorted(cut.copied.items())] + cut.data_files
                segs = [(int(Path(n).stem), size) for n, _p, size in files if n.startswith("wal/")]
                resp = web.StreamResponse(headers={
                    "Content-Type": "application/x-tar", "X-Roost-Id": self.role["id"],
                    "X-Roost-Epoch": str(self.role["epoch"]),
                    "X-Roost-Position": "%d:%d" % (max(segs) if segs else (cut.wal_compacted + 1, 0)),
                    "X-Roost-Base-Bytes": str(sum(size for _n, _p, size in files)),
                })
                await resp.prepare(request)
                entries = []
                for name, path, size in files:
                    await resp.write(_tar_header(name, size))
                    digest = hashlib.sha256()
                    with contextlib.closing(read_prefix(path, size, _BLOCK)) as blocks:  # closed also if the standby goes
                        while (block := await asyncio.to_thread(next, blocks, None)) is not None:
                            digest.update(block)
                            await resp.write(block)
                    await resp.write(b"\0" * (-size % 512))
                    entries.append(FileEntry(name, size, digest.hexdigest()))
            finally:
                cutting.__exit__(None, None, None)
            # No count query: its decoding caches would grow with the store; the sha256 of every file is the check.
            manifest = cut_manifest(cut, data, entries, None)
            manifest.seconds = round(time.monotonic() - started, 3)
            doc = manifest.to_json().encode()
            await resp.write(_tar_header(MANIFEST, len(doc)) + doc + b"\0" * (-len(doc) % 512) + b"\0" * 1024)
            await resp.write_eof()
            return resp

    async def changes(self, request: web.Request) -> web.Response:
        if (denied := self._deny(request, following=True)) is not None:
            return denied
        q = request.query
        try:
            after = int(q["after"])
            known = int(q.get("series", "0"))
        except (KeyError, ValueError):
            return _error(400, "expected ?id=&after=N&series=N")
        store = self.hub.store
        if after > self.changes_trimmed:  # acknowledged: the standby has these durably
            self.changes_trimmed = after
            await asyncio.to_thread(store.trim_bulk_changes, after)
        answer = await asyncio.to_thread(store.bulk_changes, after, MAX_RESPONSE)
        if answer is None:
            return _error(410, f"bulk changes after {after} are already forgotten: copy the base again")
        chunks, reached = answer
        head = {"id": self.role["id"], "after": after, "next": reached, "last": store.bulk_change_seq(),
                "series": self._series_after(known)}
        body = [json.dumps(head).encode(), b"\n"]
        for row_id, blob in chunks:
            body += [_CHUNK.pack(row_id, len(blob)), blob]
        return web.Response(body=b"".join(body), content_type="application/octet-stream")

    def _series_after(self, known: int) -> list[list]:
        return [[sid, s.metric, list(map(list, s.labels))] for sid, s in self.hub.store.series() if sid > known]

    async def stream(self, request: web.Request) -> web.Response:
        if (denied := self._deny(request, following=True)) is not None:
            return denied
        q = request.query
        try:
            seq, off = (int(x) for x in q["from"].split(":"))
            known = int(q.get("series", "0"))
            wait = min(float(q.get("wait", "10")), 30.0)
            changes_known = int(q.get("changes", "-1"))
        except (KeyError, ValueError):
            return _error(400, "expected ?id=&from=SEG:OFF&series=N&changes=N&wait=SECONDS")
        pos = (seq, off)
        await self._ack(pos)
        store = self.hub.store
        self._note_rotation()
        deadline = time.monotonic() + wait
        if changes_known > self.changes_trimmed:  # the standby has these bulk changes durably
            self.changes_trimmed = changes_known
            await asyncio.to_thread(store.trim_bulk_changes, changes_known)
        while True:
            if pos > self.durable:
                return _error(409, f"the standby is at {pos}, ahead of this primary's log ({self.durable}): "
                                   "it has diverged — resync it")
            chunk, nxt = self._read(pos)
            if chunk is None:
                return _error(410, f"log segment {pos[0]} is compacted away: copy the base again")
            if chunk or nxt != pos:
                break
            left = deadline - time.monotonic()
            if left <= 0 or 0 <= changes_known < store.bulk_change_seq():
                break
            try:
                async with self._data:  # bulk writes may come from another process (`roost import`): look each second
                    await asyncio.wait_for(self._data.wait_for(lambda: self.durable > pos), min(left, 1.0))
            except asyncio.TimeoutError:
                self._note_rotation()
        head = {"id": self.role["id"], "epoch": self.role["epoch"], "from": list(pos), "next": list(nxt),
                "head": list(self.durable), "series": self._series_after(known), "time_ms": int(time.time() * 1000),
                "changes": store.bulk_change_seq()}
        return web.Response(body=json.dumps(head).encode() + b"\n" + chunk, content_type="application/octet-stream")

    def _note_rotation(self) -> None:
        """A new log segment starts empty, so its start is durable (compaction rotates segments without a write)."""
        start = (self.hub.store.wal_position()[0], 0)
        if self.durable is None or self.durable < start:
            self.durable = start

    def _read(self, pos: Position) -> tuple[bytes | None, Position]:
        """Durable batches from `pos` (at most MAX_RESPONSE bytes) and the position after them; None if gone."""
        seq, off = pos
        while True:
            durable_seq, durable_off = self.durable  # type: ignore[misc]
            if seq > durable_seq:
                return b"", (seq, off)
            path = wal.segment_path(self.hub.store.wal_dir, seq)
            if seq == durable_seq:
                end = durable_off
            else:
                try:
                    end = path.stat().st_size
                except FileNotFoundError:  # compacted: fine if the standby had all of it
                    if self.hub.store.segment_ends.get(seq) != off:
                        return None, pos
                    end = off
            if off < end:
                try:
                    with open(path, "rb") as f:
                        f.seek(off)
                        data = f.read(min(end - off, MAX_RESPONSE))
                except FileNotFoundError:
                    return None, pos
                good = _walbytes.intact_length(data)
                return data[:good], (seq, off + good)
            if seq == durable_seq:
                return b"", (seq, off)
            seq, off = seq + 1, 0


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(f"snapshot/{name}")
    info.size, info.mode, info.mtime = size, 0o644, int(time.time())
    return info.tobuf(tarfile.USTAR_FORMAT)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def add_replication_routes(app: web.Application, hub: Hub) -> None:
    """/api/replication/{status,base,stream,changes} on the primary (served once the hub has started replication)."""

    def handler(name: str):
        async def handle(request: web.Request) -> web.StreamResponse:
            primary = getattr(hub, "replication", None)
            if primary is None:
                return _error(503, "replication is not running on this hub")
            return await getattr(primary, name)(request)

        return handle

    for name in ("status", "base", "stream", "changes"):
        app.router.add_get(f"/api/replication/{name}", handler(name))


# ---------------------------------------------------------------- the standby


class Standby:
    """Follows one primary: base copy, then the log stream applied into this store, acknowledged durably."""

    def __init__(self, settings: Settings, primary: str, token: str, *, report=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.settings = settings
        self.data = Path(settings.hub.data)
        self.primary = primary
        self._auth = {"Authorization": f"Bearer {token}"}
        self.store: Store | None = None
        self.role: dict[str, Any] = {}
        self.pos: Position = (0, 0)
        self.changes = 0  # the primary's bulk change applied up to
        self.changes_head = 0  # the newest the primary has
        self.base_copy: dict[str, Any] | None = None  # bytes and total while copying the base
        self.report = report or log.info
        self.caught_up_at = time.monotonic()
        self.caught_up = False
        self.registry = CollectorRegistry()
        self.lag = Gauge("roost_replication_lag_seconds", "How long the standby has not been in step with the primary.", registry=self.registry)
        self.lag_samples = Gauge("roost_replication_lag_samples", "Samples the primary has that the standby has not applied (approximate).", registry=self.registry)
        self.applied = Counter("roost_replication_applied_samples", "Samples applied from the primary.", registry=self.registry)
        self.applied_chunks = Counter("roost_replication_applied_chunks", "Day chunks of bulk writes merged from the primary.", registry=self.registry)
        self.connected = Gauge("roost_replication_connected", "1 while the primary answers.", registry=self.registry)
        self._posfile: _PositionFile | None = None
        self._last_compaction = time.monotonic()

    # -- setup

    async def prepare(self, session: aiohttp.ClientSession, resync: bool) -> None:
        role = load_role(self.data)
        has_store = (self.data / "store.db").exists()
        if role is not None and role.get("role") == "primary" and has_store and not resync:
            raise ReplicationError(
                f"{self.data}: this store was a primary (epoch {role.get('epoch')}); readings written to it may not be "
                f"on {self.primary} — pass --resync to replace it with a copy of {self.primary}"
            )
        if role is None and has_store and not resync:
            raise ReplicationError(f"{self.data}: holds a store that never followed {self.primary} — pass --resync to replace it")
        if resync or not has_store or role is None or role.get("primary") != self.primary:
            await self.copy_base(session)
        else:
            self.role = role
            self.pos = read_position(self.data) or tuple(role["position"])  # type: ignore[assignment]
            self.changes = read_changes_applied(self.data) or int(role.get("changes", 0))
        self._open()

    def _open(self) -> None:
        from roost.hub import store_options
        from roost.store import Store

        self.store = Store.open(self.data, store_options(self.settings), writer=True)
        self._posfile = _PositionFile(self.data)

    def close(self) -> None:
        if self._posfile is not None:
            self._posfile.close()
            self._posfile = None
        if self.store is not None:
            with contextlib.suppress(RoostError):
                self.store.compact()
            self.store.close()
            self.store = None

    async def copy_base(self, session: aiohttp.ClientSession) -> None:
        """Replace this store with a copy of the primary's (the old one is kept beside it, renamed)."""
        self.close()
        self.report(f"copying the base store from {self.primary}")
        started = time.monotonic()
        parent = self.data.absolute().parent
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".roost-base-", dir=parent) as work:
            staged = Path(work) / "store"
            async with session.get(self.primary + "/api/replication/base", headers=self._auth,
                                   timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=600)) as resp:
                if resp.status != 200:
                    raise ReplicationError(f"{self.primary}: base copy refused ({resp.status}): {(await resp.text())[:300]}")
                primary_id, epoch = resp.headers["X-Roost-Id"], int(resp.headers["X-Roost-Epoch"])
                pos = tuple(int(x) for x in resp.headers["X-Roost-Position"].split(":"))
                await self._receive_base(resp, staged, int(resp.headers.get("X-Roost-Base-Bytes", "0")), started)
            os.replace(staged / MANIFEST, staged / "restored-from.json")
            (staged / "wal").mkdir(exist_ok=True)
            changes = _bulk_change_seq(staged / "store.db")
            if self.data.exists() and any(self.data.iterdir()):
                aside = self.data.with_name(f"{self.data.name}.replaced-{datetime.now():%Y%m%dT%H%M%S.%f}")
                os.replace(self.data, aside)
                log.warning("%s: the previous store is kept at %s", self.data, aside)
            elif self.data.exists():
                self.data.rmdir()
            os.replace(staged, self.data)
        self.role = {"role": "standby", "primary": self.primary, "primary_id": primary_id, "epoch": epoch,
                     "position": list(pos), "changes": changes, "since": _now_iso()}
        save_role(self.data, self.role)
        self.pos, self.changes = pos, changes  # type: ignore[assignment]
        self._write_position()

    async def _receive_base(self, resp: aiohttp.ClientResponse, into: Path, total: int, started: float) -> Manifest:
        """Write the streamed tar into `into` file by file, checking each against the manifest that ends it."""
        got: dict[str, FileEntry] = {}
        done, shown = 0, 0.0
        self.base_copy = {"bytes": 0, "total": total}
        try:
            while True:
                header = await resp.content.readexactly(512)
                if not header.strip(b"\0"):
                    break
                info = tarfile.TarInfo.frombuf(header, "utf-8", "strict")
                name = info.name.removeprefix("snapshot/")
                if not info.isfile() or not _BASE_FILE.fullmatch(name):
                    raise ReplicationError(f"{self.primary}: unexpected {info.name!r} in the base copy")
                path = into / name
                path.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with open(path, "wb") as f:
                    left = info.size
                    while left:
                        block = await resp.content.readexactly(min(left, _BLOCK))
                        await asyncio.to_thread(f.write, block)
                        digest.update(block)
                        left -= len(block)
                        if name != MANIFEST:
                            done += len(block)
                            self.base_copy["bytes"] = done
                        if time.monotonic() - shown >= 2:
                            shown = time.monotonic()
                            self.report(f"base copy: {_mib(done)} of {_mib(total)} ({100 * done // max(total, 1)} %), "
                                        f"{done / 2**20 / max(shown - started, 1e-3):.1f} MiB/s")
                await resp.content.readexactly(-info.size % 512)
                got[name] = FileEntry(name, info.size, digest.hexdigest())
        except asyncio.IncompleteReadError:
            raise ReplicationError(f"{self.primary}: the base copy was cut short after {_mib(done)} — try again") from None
        finally:
            self.base_copy = None
        self.report(f"base copy: {_mib(done)} received in {time.monotonic() - started:.2f} s (since asking)")
        manifest = Manifest.load(into)
        got.pop(MANIFEST, None)
        wrong = sorted({f.path for f in manifest.files} ^ set(got)) + [
            f.path for f in manifest.files if f.path in got and got[f.path] != f]
        if wrong:
            raise ReplicationError(f"{self.primary}: the base copy does not match its manifest ({', '.join(wrong[:5])}) "
                                   "— try again")
        return manifest
    def _write_position(self) -> None:
        if self._posfile is not None:
            self._posfile.save(self.pos, self.changes)
        else:
            pf = _PositionFile(self.data)
            pf.save(self.pos, self.changes)
            pf.close()

    # -- following

    async def follow(self, session: aiohttp.ClientSession) -> None:
        backoff, wait = 0.5, 0.0  # the first answer at once: it tells whether this standby is caught up
        while True:
            try:
                await self.step(session, wait)
                backoff, wait = 0.5, 10.0
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as err:
                self.connected.set(0)
                self.caught_up = False
                self._update_lag(None)
                log.warning("primary %s: %s — retrying in %.1f s", self.primary, err or type(err).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def step(self, session: aiohttp.ClientSession, wait: float = 10.0) -> int:
        """One long poll: fetch, apply durably, remember the position. Returns samples applied."""
        assert self.store is not None
        params = {"id": self.role["primary_id"], "from": "%d:%d" % self.pos, "changes": str(self.changes),
                  "series": str(self._known_series()), "wait": str(wait)}
        async with session.get(self.primary + "/api/replication/stream", params=params, headers=self._auth,
                               timeout=aiohttp.ClientTimeout(total=wait + 30)) as resp:
            body = await resp.read()
            if resp.status in (409, 410):
                message = json.loads(body).get("error", "")
                if resp.status == 410 or "copy the base again" in message:
                    log.warning("primary %s: %s", self.primary, message)
                    await self.copy_base(session)
                    self._open()
                    return 0
                raise ReplicationError(f"{self.primary}: {message}")
            if resp.status != 200:
                raise ReplicationError(f"{self.primary}: replication stream refused ({resp.status}): {body[:300]!r}")
        self.connected.set(1)
        head, rest = self._head(body)
        records = _walbytes.records(rest)
        if len(records):
            await asyncio.to_thread(self._apply, records)
            self.applied.inc(len(records))
        self.pos = tuple(head["next"])  # type: ignore[assignment]
        self._write_position()
        self.changes_head = int(head.get("changes", 0))
        if self.changes < self.changes_head:
            await self._pull_changes(session)
        self._update_lag(head)
        await self._maybe_compact()
        return len(records)

    def _known_series(self) -> int:
        assert self.store is not None
        return max((sid for sid, _s in self.store.series()), default=0)

    def _head(self, body: bytes) -> tuple[dict[str, Any], bytes]:
        """The JSON line of an answer (its new series adopted under the primary's ids) and what follows it."""
        assert self.store is not None
        newline = body.index(b"\n")
        head = json.loads(body[:newline])
        for sid, metric, labels in head["series"]:
            self.store.adopt_series(sid, Series(metric, tuple(tuple(p) for p in labels)))
        return head, body[newline + 1 :]

    async def _pull_changes(self, session: aiohttp.ClientSession) -> None:
        """Merge the day chunks the primary's bulk writes changed, one bounded answer at a time, remembering how far."""
        assert self.store is not None
        while self.changes < self.changes_head:
            params = {"id": self.role["primary_id"], "after": str(self.changes), "series": str(self._known_series())}
            async with session.get(self.primary + "/api/replication/changes", params=params, headers=self._auth,
                                   timeout=aiohttp.ClientTimeout(total=120)) as resp:
                body = await resp.read()
                if resp.status == 410:
                    log.warning("primary %s: %s", self.primary, json.loads(body).get("error", ""))
                    await self.copy_base(session)
                    self._open()
                    return
                if resp.status != 200:
                    raise ReplicationError(f"{self.primary}: bulk changes refused ({resp.status}): {body[:300]!r}")
            head, rest = self._head(body)
            chunks = _chunks(rest)
            await asyncio.to_thread(self._merge, chunks)
            self.applied_chunks.inc(len(chunks))
            if head["next"] <= self.changes:  # nothing further to reach (the log was cut meanwhile)
                self.changes_head = self.changes
                break
            self.changes, self.changes_head = int(head["next"]), int(head["last"])
            self._write_position()

    def _merge(self, chunks: list[tuple[int, bytes]]) -> None:
        """Merge shipped day chunks into this store like the bulk writes that changed them, then forget our own log."""
        assert self.store is not None
        by_id = dict(self.store.series())
        days: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for row_id, blob in sorted(chunks):  # row ids sort by day: each series' days in order, one bulk write each
            days.setdefault(row_id & _SID_MASK, []).append(decode_chunk(blob))
        for sid, parts in days.items():
            ts, values = (np.concatenate(arrays) for arrays in zip(*parts))
            self.store.write_bulk(by_id[sid], ts, values)
        if chunks:
            self.store.trim_bulk_changes(self.store.bulk_change_seq())  # a standby serves no bulk changes
            self.store.checkpoint()  # SQLite commits are durable against a power cut only once checkpointed

    def _apply(self, records: np.ndarray) -> None:
        assert self.store is not None
        self.store.write_records(records)
        self.store.sync()

    def _update_lag(self, head: dict | None) -> None:
        now = time.monotonic()
        if head is not None and tuple(head["head"]) <= self.pos and self.changes >= self.changes_head:
            self.caught_up, self.caught_up_at = True, now
            self.lag_samples.set(0)
        else:
            self.caught_up = False
            if head is not None and head["head"][0] == self.pos[0]:
                self.lag_samples.set((head["head"][1] - self.pos[1]) // wal.RECORD.itemsize)
        self.lag.set(0 if self.caught_up else now - self.caught_up_at)

    async def _maybe_compact(self) -> None:
        assert self.store is not None
        if time.monotonic() - self._last_compaction < self.settings.store.compact_interval_ms / 1000:
            return
        self._last_compaction = time.monotonic()
        if not self.store.freeze_head():
            return
        try:
            await asyncio.to_thread(self.store.compact_frozen)
        except RoostError as err:
            self.store.finish_compaction(False)
            log.error("standby compaction failed, will retry: %s", err)
            return
        self.store.finish_compaction(True)

    # -- its own small HTTP server

    def app(self) -> web.Application:
        from prometheus_client import generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        async def status(_request: web.Request) -> web.Response:
            return web.json_response({
                "role": "standby", "primary": self.primary, "epoch": self.role.get("epoch"),
                "primary_id": self.role.get("primary_id"), "position": list(self.pos), "caught_up": self.caught_up,
                "lag_seconds": 0 if self.caught_up else time.monotonic() - self.caught_up_at,
                "applied": self.applied._value.get(), "changes": self.changes, "changes_head": self.changes_head,
                "applied_chunks": self.applied_chunks._value.get(), "base_copy": self.base_copy,
            })

        async def metrics(_request: web.Request) -> web.Response:
            self.lag.set(0 if self.caught_up else time.monotonic() - self.caught_up_at)
            return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def healthz(_request: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "role": "standby"})

        app = web.Application()
        app.router.add_get("/api/replication/status", status)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        return app


def _chunks(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        row_id, length = _CHUNK.unpack_from(data, pos)
        pos += _CHUNK.size
        out.append((row_id, data[pos : pos + length]))
        pos += length
    return out


def _bulk_change_seq(db: Path) -> int:
    """The newest bulk change a copied store.db has logged (where its standby goes on from)."""
    from roost.store import Store

    with Store.open_readonly(db.parent) as store:
        return store.bulk_change_seq()


def _forget_bulk_changes(data_dir: Path) -> None:
    """Without replication nobody pulls the bulk-change log: empty it (at start, so it never grows for long)."""
    from roost.store import Store

    with Store.open(data_dir) as store:
        if seq := store.bulk_change_seq():
            store.trim_bulk_changes(seq)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


async def run_standby(settings: Settings, primary: str, token: str, host: str, port: int, *, resync: bool = False) -> None:
    """`roost standby`: follow until SIGINT/SIGTERM, serving status and metrics on host:port."""
    import signal

    standby = Standby(settings, primary, token, report=lambda line: print(line, flush=True))
    runner = web.AppRunner(standby.app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()  # first, so status shows the base copy's progress
    except OSError as exc:
        await runner.cleanup()
        raise ReplicationError(f"--listen: cannot listen on {host}:{port} ({exc.strerror})") from None
    try:
        async with aiohttp.ClientSession() as session:
            await standby.prepare(session, resync)
            task = asyncio.create_task(standby.follow(session))
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, task.cancel)
            print(f"roost standby of {primary}: status on http://{host}:{port}/api/replication/status", flush=True)
            try:
                await task
            except asyncio.CancelledError:
                pass
    finally:
        await runner.cleanup()
        standby.close()
