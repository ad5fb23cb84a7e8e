"""The hub: owns the store, the bus and the HTTP server, and runs the background work in one TaskGroup.

Ingest path: `ingest()` (awaits durability: HTTP push) and `submit()` (fire-and-forget: device sources) queue
readings for one writer task. The writer appends each batch to the store's WAL and publishes the stored readings
on the bus for things, rules, exporters and live views at once. A committer task syncs what has been written
(one fdatasync for everything since the last: a group commit) and only then acknowledges it. What was
acknowledged is durable; a reading on its way to the rules never waits for the disk, neither for its own fsync
nor for one already running when it came (the fsync's tail was the largest share of a rule's latency, see
bench/README.md). Compaction takes the same lock as the committer, so the WAL segment it closes is synced first
and no fsync runs on it meanwhile. When the disk is full the writer holds unacknowledged readings in memory
(bounded by `store.max_buffered`, oldest dropped and counted beyond that), fails acknowledged-path writes with
StoreFullError, and retries until space returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web

from roost.bus import Bus
from roost.config import Settings
from roost.errors import RoostError, StoreFullError
from roost.model import Reading
from roost.selector import Selector
from roost.store import RetentionRule, Store, StoreOptions, WriteResult
from roost.telemetry import RuleCollector, SelfMetrics
from roost.rules import RuleEngine
from roost.things import ThingRegistry
from roost.things.service import ThingService

log = logging.getLogger("roost.hub")

_FULL_RETRY_S = 5.0
_RETENTION_EVERY_S = 3600.0


@functools.cache
def _glibc():
    """glibc, loaded when a hub first tunes its memory (not on import: the CLI's other commands never do)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return None


def _keep_query_buffers_on_the_heap() -> None:
    """Stop glibc from mmap-ing (and page-faulting in) every query's large numpy temporaries.

    Measured on the 9-series 7-day query: 12.9 → 7.6 ms per request; memory at rest does not grow.
    """
    libc = _glibc()
    if libc is None:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 * 1024 * 1024)
    libc.mallopt(m_trim_threshold, 128 * 1024 * 1024)


def _give_back_free_memory() -> None:
    """Return the free pages of every malloc arena to the system (glibc's malloc_trim).

    Worker threads (compaction, pushes parsed off the event loop, queries) each get an arena of their own, and
    with the trim threshold above an arena never shrinks by itself: in an hour of bench/soak.py the arenas held
    ~10 MB free, a few MB of it resident. Called after each compaction; it takes well under a millisecond.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def store_options(settings: Settings) -> StoreOptions:
    s = settings.store
    return StoreOptions(
        max_series=s.max_series,
        fsync=s.fsync,
        cache_bytes=s.cache_mb * 1024 * 1024,
        retention=tuple(RetentionRule(Selector.parse(r.match), r.keep_ms, r.raw_ms) for r in s.retention),
    )


def _freeze_startup_objects() -> None:
    """Keep what the hub made at start (modules, the rules, the store's index) out of the collector's full passes.

    Those objects live as long as the hub, yet every full collection walked all of them: 60–90 ms with the event
    loop stopped, the longest pause in bench/rules.py. Frozen, a full pass walks only what came since.
    """
    gc.freeze()


@dataclass(eq=False)
class _Pending:
    readings: list[Reading]
    done: asyncio.Future[WriteResult] | None


class Hub:
    """`async with Hub(settings) as hub: await hub.run()` — or use `hub.ingest()` from tests and tools."""

    def __init__(self, settings: Settings, *, serve_http: bool = True):
        self.settings = settings
        self.metrics = SelfMetrics()
        self.bus: Bus[Reading] = Bus()
        self.things = ThingRegistry()
        self.thing_service = ThingService(self)
        self.store: Store
        self.started_at = time.time()
        self._serve_http = serve_http
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._unsynced: list[tuple[_Pending, WriteResult]] = []  # written and published, not yet synced
        self._written = asyncio.Event()  # set when _unsynced has something for the committer
        self._sync_lock = asyncio.Lock()  # one fsync at a time, and none while compaction closes a WAL segment
        self._held: deque[Reading] = deque()
        # Compaction, retention and GC on one thread of their own: their temporaries grow through the day with the
        # open chunks, and glibc keeps an arena's high-water mark per thread that used it — run on the shared
        # worker pool, every one of its threads came to hold one.
        self._store_thread = ThreadPoolExecutor(1, thread_name_prefix="roost-compaction")
        self._runner: web.AppRunner | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._stopping = asyncio.Event()
        self.rules: RuleEngine | None = None
        self.replication = None  # roost.durability.replication.Primary, set on start
        self.backup = None  # roost.durability.backup.BackupScheduler when [backup] is configured
        self.url = ""

    async def __aenter__(self) -> Hub:
        _keep_query_buffers_on_the_heap()
        data = self.settings.hub.data
        hub_settings = self.settings.hub
        tls = None
        if self._serve_http:
            from roost.access import check_listen, tls_context

            check_listen(hub_settings.listen_host, hub_settings.listen_port, data)  # no tokens: loopback only
            if hub_settings.tls_cert_file and hub_settings.tls_key_file:
                tls = tls_context(hub_settings.tls_cert_file, hub_settings.tls_key_file)
        from roost.durability.replication import Primary

        self.replication = await Primary.start(self)  # refuses a standby's store, or a former primary after a promotion
        self.store = Store.open(data, store_options(self.settings), writer=True)
        log.info("store %s: %d series, %d samples to replay", data, self.store.series_count, self.store.head_samples)
        if self._serve_http:
            from roost.api.app import LIMITS, create_app
            from roost.api.limits import IDLE_TIMEOUT_S

            app = create_app(self)
            # keepalive_timeout also closes a new connection that has not sent a whole request by then (slowloris)
            self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=IDLE_TIMEOUT_S)
            await self._runner.setup()
            app[LIMITS].guard(self._runner.server)
            site = web.TCPSite(self._runner, hub_settings.listen_host, hub_settings.listen_port, ssl_context=tls)
            try:
                await site.start()
            except OSError as exc:
                await self._runner.cleanup()
                self.store.close()
                raise RoostError(
                    f"hub.listen: cannot listen on {self.settings.hub.listen_host}:{self.settings.hub.listen_port} "
                    f"({exc.strerror}) — is another roost running? choose another port with --listen"
                ) from None
            port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked for
            host = hub_settings.listen_host
            self.url = f"{'https' if tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}"
            log.info("serving %s", self.url)
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._tasks.create_task(self._writer(), name="store-writer")
        self._tasks.create_task(self._committer(), name="store-commit")
        self._tasks.create_task(self._maintenance(), name="store-maintenance")
        self._tasks.create_task(self.thing_service.run(), name="things")
        self._start_sources()
        self._start_exporters()
        await self._start_rules()
        if self.settings.backup.configured:
            from roost.durability.backup import BackupScheduler

            self.backup = BackupScheduler(self)
            if self.settings.backup.schedule:
                self.spawn(self.backup.run(), "backup-schedule")
        _freeze_startup_objects()
        return self

    async def _start_rules(self) -> None:
        """Run the rules of `[rules] directory` (a rule whose things are not there yet waits for them)."""
        settings = self.settings.rules
        if settings.directory is None:
            return
        self.rules = RuleEngine(
            self.things, place=settings.place(), readings=self.bus, history=self.store.read,
            max_failures=settings.max_failures, state_dir=self.settings.hub.data / "rules-state",
            wait_for_things=True, notify=settings.notify, thing_log=self.settings.hub.data / "thing-changes",
        )
        await self.rules.__aenter__()
        self.metrics.registry.register(RuleCollector(self.rules))  # roost_rule_{runs,errors}_total, roost_rule_enabled
        for problem in await self.rules.load_directory(settings.directory):
            log.error("%s", problem)
        log.info("rules: %d loaded from %s", len(self.rules.runtimes), settings.directory)
        self.spawn(self.rules.watch(), "rules-watch")  # reloads edited rule files

    def _start_sources(self) -> None:
        for kind, name, source_settings in self.settings.source.configured():
            self.start_source(kind, name, source_settings)

    def start_source(self, kind: str, name: str, source_settings) -> None:
        """Run a source, supervised, for the hub's lifetime (the configured ones start with the hub; the demo's later)."""
        from roost.sources import SourceContext, source_class, supervise

        ctx = SourceContext(name, self.metrics, self.submit)
        cls = source_class(kind)
        make = lambda: self.thing_service.attach(name, cls(source_settings, ctx))
        self.spawn(supervise(make, ctx), f"source-{name}")
        log.info("source %s (%s) started", name, kind)

    def _start_exporters(self) -> None:
        from roost.export import start_exporters

        start_exporters(self)  # [[export.remote_write]] and [[export.influx]]: they follow the bus

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.rules is not None:
            await self.rules.__aexit__(None, None, None)
        if self._tasks is not None:
            for task in list(self._tasks._tasks):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tasks.__aexit__(None, None, None)
        try:
            await self._in_store_thread(self.store.compact)
        except RoostError as err:
            log.warning("final compaction skipped: %s (the write-ahead log keeps the data)", err)
        self._store_thread.shutdown()
        self.store.close()
        gc.unfreeze()  # a process that runs hub after hub (tests) lets the old ones' objects go

    def spawn(self, coro, name: str) -> asyncio.Task:
        """Run a background coroutine for the hub's lifetime (sources, demo, exporters)."""
        assert self._tasks is not None, "the hub is not running"
        return self._tasks.create_task(coro, name=name)

    async def run(self) -> None:
        """Serve until cancelled (Ctrl-C, SIGTERM)."""
        await self._stopping.wait()

    def stop(self) -> None:
        self._stopping.set()

    # ------------------------------------------------------------------ ingest

    async def ingest(self, readings: Iterable[Reading]) -> WriteResult:
        """Store readings and return once they are durable (raises StoreFullError when the disk is full).

        Readings the store refuses (NaN/inf, a timestamp before 1970 or over 2 days ahead, a new series over
        store.max_series) are counted and logged here, and listed in the result's `refused` for the caller's answer.
        """
        done: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(list(readings), done))
        return await done

    def submit(self, readings: Iterable[Reading]) -> None:
        """Queue readings for the store without waiting (device sources)."""
        self._queue.put_nowait(_Pending(list(readings), None))

    async def _writer(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            if not self._write_batch(batch):
                await asyncio.sleep(_FULL_RETRY_S)  # the disk is full: try again in a while

    def _write_batch(self, batch: list[_Pending]) -> bool:
        """Write to the WAL and publish on the bus; the committer acknowledges. False when the disk is full."""
        written = 0
        try:
            if self._held:
                self._write_held()
            for item in batch:
                result = self.store.write(item.readings)
                written += 1
                self._unsynced.append((item, result))
                self._publish(item.readings, result)
        except StoreFullError as err:
            self.metrics.store_errors.labels(reason="disk_full").inc()
            log.error("%s", err)
            for item in batch[written:]:
                if item.done is None:
                    self._hold(item.readings)
                elif not item.done.done():
                    item.done.set_exception(err)
            self.metrics.buffered.set(len(self._held))
            return False
        finally:
            if self._unsynced:
                self._written.set()
        return True

    async def _committer(self) -> None:
        """Sync everything written since the last sync, then acknowledge it: one fsync at a time."""
        while True:
            await self._written.wait()
            self._written.clear()
            stored, self._unsynced = self._unsynced, []
            position = self.store.wal_position()  # what this sync covers: everything written until now
            async with self._sync_lock:
                await asyncio.to_thread(self.store.sync)
            if self.replication is not None:  # sync replication: the standby has it before we acknowledge
                await self.replication.committed(position)
            for item, result in stored:
                self._account(result)
                if item.done is not None and not item.done.done():
                    item.done.set_result(result)

    def _write_held(self) -> None:
        held = list(self._held)
        result = self.store.write(held)  # raises StoreFullError again while the disk is still full
        self._held.clear()
        self.metrics.buffered.set(0)
        log.info("disk space is back: stored %d readings held in memory", len(held))
        self._publish(held, result)
        self._account(result)

    def _hold(self, readings: list[Reading]) -> None:
        limit = self.settings.store.max_buffered
        for r in readings:
            if len(self._held) >= limit:
                self._held.popleft()
                self.metrics.store_errors.labels(reason="buffer_overflow").inc()
            self._held.append(r)

    def _account(self, result: WriteResult) -> None:
        self.metrics.readings.inc(result.accepted)
        for refusal in result.refused:
            self.metrics.reject(refusal.reason, str(refusal.reading.series), refusal.message)

    def _publish(self, readings: list[Reading], result: WriteResult) -> None:
        """Tell the bus what the store took (refused readings are left out)."""
        if result.refused:
            refused = {id(refusal.reading) for refusal in result.refused}
            readings = [r for r in readings if id(r) not in refused]
        self.bus.publish_many(readings)

    # ------------------------------------------------------------------ maintenance

    async def _maintenance(self) -> None:
        interval = self.settings.store.compact_interval_ms / 1000
        last_retention = 0.0
        while True:
            await asyncio.sleep(interval)
            await self.compact()
            if time.monotonic() - last_retention >= _RETENTION_EVERY_S:
                last_retention = time.monotonic()
                try:
                    stats = await self._in_store_thread(self.store.apply_retention)
                    if any(stats.values()):
                        log.info("retention: %s", stats)
                    await self._in_store_thread(self.store.collect_garbage)
                except RoostError as err:
                    log.error("retention skipped: %s", err)
            self.refresh_gauges()

    async def compact(self) -> int:
        """Move recent readings from the head into compressed chunks (in a worker thread)."""
        async with self._sync_lock:  # no fsync of the committer's runs on the segment that closes
            # Synced here, on the event loop: no write can slip into the old segment between its sync and its close
            # (one fsync per compaction interval; the committer's acknowledgements rely on it).
            self.store.sync()
            frozen = self.store.freeze_head()
        if not frozen:
            return 0
        try:
            n = await self._in_store_thread(self._compact_frozen)
        except RoostError as err:
            self.store.finish_compaction(False)
            self.metrics.store_errors.labels(reason="compaction").inc()
            log.error("compaction failed, will retry: %s", err)
            return 0
        self.store.finish_compaction(True)
        self.metrics.compactions.inc()
        return n

    async def _in_store_thread(self, fn):
        return await asyncio.get_running_loop().run_in_executor(self._store_thread, fn)

    def _compact_frozen(self) -> int:
        n = self.store.compact_frozen()
        _give_back_free_memory()
        return n

    def refresh_gauges(self) -> None:
        self.metrics.series.set(self.store.series_count)
        self.metrics.head_samples.set(self.store.head_samples)
        self.metrics.disk_bytes.set(self.store.disk_bytes())
        for sub in self.bus.subscribers:  # subscribers may share a name: count each one's new drops
            new = sub.dropped - sub.dropped_reported
            if new:
                self.metrics.bus_dropped.labels(subscriber=sub.name).inc(new)
                sub.dropped_reported = sub.dropped
