"""The store benchmark: roost's embedded store beside VictoriaMetrics, on the same data, in the same run.

    .venv/bin/python bench/store.py                 # full run: 100 series x 30 days x 15 s (17.28 M samples)
    .venv/bin/python bench/store.py --days 2 --series 20 --year-days 30 --demo-wait 5   # a quick look

Figures (each printed as it is measured, then together in one table with the targets):

1. Bulk ingest, samples/s. The reference workload (bench/workload.py) written through roost's bulk path,
   (a) `Store.write_bulk` once per series (the backfill path), (b) `roost import` of a CSV file and of a
   Parquet file of the same samples (files written first, untimed; the command is timed as a whole, process
   start included; should the command fail, `import_file()` is timed in-process and a note says so).
   VictoriaMetrics imports the same samples as CSV, one `/api/v1/import/csv` request per series on one
   keep-alive connection (the fastest of CSV, JSON lines and Influx line protocol here), timed until
   `/internal/force_flush` returns. Samples per CPU second (roost's process, VictoriaMetrics' server) are
   printed too: on a shared machine they vary far less than wall-clock rates.
2. Streaming ingest, samples/s. A fresh store opened as the hub opens it (writer), fed one
   `write([100 Readings])` + `sync()` per 15-s tick, with `compact()` every 15 simulated minutes as the hub
   does, for `--stream-days` of ticks; once with fsync on (the default) and once with it off.
3. Bytes per sample on disk after compaction: the whole data directory of the write_bulk store after
   `checkpoint()` (SQLite's WAL folded in), split into chunk data files, the chunk tables in SQLite,
   hourly rollups (SQLite pages, from its dbstat table) and the rest.
   VictoriaMetrics: its -storageDataPath after force_flush and a finished force_merge.
4. Query latency, p50 over HTTP of `--runs` runs after two warm-ups, on a keep-alive connection, until the
   whole response is received: a `roost run` hub on the bulk-written store against VictoriaMetrics with
   -search.disableCache. (a) 7 days in 10-minute buckets, mean, 1 series; (b) the same for 9 series;
   (c) 365 days in 1-day buckets, mean, 9 series, on a separate store and VictoriaMetrics instance holding a
   year of 9 series. VictoriaMetrics answers `avg_over_time(SEL[step])` at bucket ends; both answers must
   have the same points, and the largest relative difference of their values is printed. Then, for the
   9-series queries, where roost's time goes: `Store.query` and JSON encoding in this process, the rest
   being HTTP and aiohttp (`--profile` adds a cProfile listing). The servers' CPU milliseconds per request
   are printed beside each latency.
5. Resident memory (VmRSS from /proc): an idle `roost demo` ~20 s after its 7-day backfill, beside
   VictoriaMetrics with the 30-day data after the queries (and the `roost run` hub serving the 30-day store,
   also after the queries). `--hub-env NAME=VALUE` sets environment variables of the roost hub and demo
   processes, e.g. glibc malloc tunables.

Servers listen on 127.0.0.1 on free ports and are stopped at the end; data goes to a temporary directory
under /tmp, removed unless --keep. Without `victoria-metrics` on PATH, roost's figures are printed alone.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import io
import os
import platform
import pstats
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from peers import Peer, VictoriaMetrics, free_port  # noqa: E402
from workload import T0, generate  # noqa: E402

from roost.model import Reading, Series  # noqa: E402
from roost.selector import Selector  # noqa: E402
from roost.store import Store, StoreOptions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROOST = ROOT / ".venv" / "bin" / "roost"
VM_BINARY = "victoria-metrics"
DAY_S = 86_400
TICK_S = 15
COMPACT_EVERY_TICKS = 60  # 15 simulated minutes, the hub's compaction interval
WARMUP_RUNS = 2

ONE_SERIES = 'temperature_celsius{room="room_00"}'
NINE_SERIES = 'temperature_celsius{room=~"room_0[0-8]"}'
YEAR_SERIES = '{room=~"room_0[0-2]"}'  # generate(n_series=9) is rooms 00-02 x temperature, humidity, pressure

Samples = list[tuple[Series, np.ndarray, np.ndarray]]  # (series, ts ms, values)


# ----------------------------------------------------------------------------- results


@dataclass
class Figure:
    """One row of the final table; `better` says which direction wins ("higher" or "lower")."""

    name: str
    roost: float | None
    vm: float | None = None
    unit: str = ""
    better: str = "lower"
    target: float | None = None
    beat_vm: bool = False  # the target also asks for no worse than VictoriaMetrics

    def verdict(self) -> str:
        misses = []
        if self.roost is None:
            return "-"
        if self.target is not None:
            ok = self.roost >= self.target if self.better == "higher" else self.roost <= self.target
            if not ok:
                misses.append("target")
        if self.beat_vm and self.vm is not None:
            ok = self.roost >= self.vm if self.better == "higher" else self.roost <= self.vm
            if not ok:
                misses.append("VM")
        if self.target is None and not self.beat_vm:
            return "-"
        return "ok" if not misses else "MISS (" + ", ".join(misses) + ")"

    def target_text(self) -> str:
        parts = []
        if self.target is not None:
            parts.append(("≥ " if self.better == "higher" else "≤ ") + _fmt(self.target, self.unit))
        if self.beat_vm:
            parts.append("≤ VM" if self.better == "lower" else "≥ VM")
        return ", ".join(parts) or "-"


@dataclass
class Results:
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)

    def note(self, text: str, *, echo: bool = True) -> None:
        if echo:
            print(f"    {text}", flush=True)
        self.notes.append(text)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "samples/s":
        return f"{value / 1e6:.2f} M/s" if value >= 1e6 else f"{value / 1e3:,.0f} k/s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "B/sample":
        return f"{value:.3f}"
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:g}"


def print_table(results: Results, vm_available: bool) -> None:
    header = ("figure", "roost", "VictoriaMetrics" if vm_available else "VictoriaMetrics (not run)", "roost/VM",
              "target", "verdict")
    rows = [header]
    for f in results.figures:
        ratio = f"{f.roost / f.vm:.2f}×" if f.roost is not None and f.vm else "-"
        rows.append((f.name, _fmt(f.roost, f.unit), _fmt(f.vm, f.unit), ratio, f.target_text(), f.verdict()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    print()
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    for text in results.notes:
        print(f"- {text}")


# ----------------------------------------------------------------------------- processes and HTTP


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    """Resident memory of a process in MB (10^6 bytes), from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"/proc/{pid}/status has no {field_name}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Server(Peer):
    """A peer serving HTTP, with one keep-alive connection for timing."""

    conn: http.client.HTTPConnection | None = None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        super().stop(sig)

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        return self.conn

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        reused = self.conn is not None
        conn = self._connection()
        try:
            conn.request(method, path, body=body)
            response = conn.getresponse()
            return response.status, response.read()
        except (http.client.HTTPException, OSError):
            conn.close()
            self.conn = None
            if reused:  # the server closed an idle keep-alive connection (VictoriaMetrics does after a minute)
                return self.request(method, path, body)
            raise

    @property
    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def get_ok(self, path: str) -> bytes:
        status, body = self.get(path)
        if status != 200:
            raise RuntimeError(f"{self.name} GET {path}: HTTP {status}: {body[:300]!r}")
        return body

    @property
    def rss_mb(self) -> float:
        assert self.proc is not None
        return rss_mb(self.proc.pid)


class TimedVictoriaMetrics(Server, VictoriaMetrics):
    """VictoriaMetrics (its query cache off) with the keep-alive connection the figures are timed on."""


def victoria_metrics(data_dir: Path) -> TimedVictoriaMetrics:
    return TimedVictoriaMetrics(data_dir, timeout=120)


HUB_ENV: dict[str, str] = {}  # --hub-env: extra environment of the roost hub and demo processes


def roost_server(command: str, data_dir: Path, log: Path) -> Server:
    """`roost run` or `roost demo` on a free port, started in /tmp (so no roost.toml of the caller's is read)."""
    port = free_port()
    argv = [str(ROOST), command, "--data", str(data_dir), "--listen", f"127.0.0.1:{port}"]
    return Server(argv, port, log, "/healthz", name=f"roost {command}", timeout=120, env=HUB_ENV, cwd="/tmp")


def roost_hub(data_dir: Path, work: Path) -> Server:
    return roost_server("run", data_dir, work / f"{data_dir.name}.hub.log")


def vm_version() -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "victoria-metrics"], capture_output=True, text=True)
        return out.stdout.strip() or "unknown version"
    except OSError:
        return "unknown version"


# ----------------------------------------------------------------------------- workload


def workload(n_series: int, days: float) -> Samples:
    return [(Series.of(metric, labels), ts * 1000, values) for metric, labels, ts, values in generate(n_series, days)]


def n_samples(data: Samples) -> int:
    return sum(len(ts) for _s, ts, _v in data)


# ----------------------------------------------------------------------------- 1. bulk ingest


def bulk_write(store_dir: Path, data: Samples) -> tuple[float, float]:
    """Wall and CPU seconds to write every series with one `Store.write_bulk` each into a fresh store."""
    with Store.open(store_dir) as store:
        started, cpu = time.perf_counter(), time.process_time()
        for series, ts, values in data:
            store.write_bulk(series, ts, values)
        return time.perf_counter() - started, time.process_time() - cpu


def _as_table(data: Samples) -> pa.Table:
    label_names = sorted({name for series, _t, _v in data for name, _value in series.labels})
    parts = []
    for series, ts, values in data:
        zeros = np.zeros(len(ts), np.int32)

        def constant(text: str) -> pa.Array:
            return pa.DictionaryArray.from_arrays(zeros, [text]).cast(pa.string())

        labels = series.label_dict
        columns = {"metric": constant(series.metric)}
        columns |= {name: constant(labels.get(name, "")) for name in label_names}
        columns |= {"timestamp": pa.array(ts), "value": pa.array(values)}
        parts.append(pa.table(columns))
    return pa.concat_tables(parts)


def write_import_files(data: Samples, work: Path) -> tuple[Path, Path]:
    """The workload as roost's CSV (metric,<labels>,timestamp,value; ms) and Parquet import files."""
    table = _as_table(data)
    csv_path, parquet_path = work / "workload.csv", work / "workload.parquet"
    with open(csv_path, "wb") as out:
        out.write((",".join(table.column_names) + "\n").encode())
        pacsv.write_csv(table, out, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    pq.write_table(table, parquet_path)
    return csv_path, parquet_path


def roost_import(path: Path, store_dir: Path, results: Results) -> tuple[float, float]:
    """Wall and CPU seconds `roost import FILE --data DIR --no-progress` takes, as a user would run it.

    If the command fails (the CLI and the import module are young), the import is timed in this process
    through `roost.transfer.imports.import_file` instead, and a note says so.
    """
    started, cpu = time.perf_counter(), children_cpu_seconds()
    done = subprocess.run(
        [str(ROOST), "import", str(path), "--data", str(store_dir), "--no-progress"], capture_output=True, text=True
    )
    seconds, cpu = time.perf_counter() - started, children_cpu_seconds() - cpu
    if done.returncode == 0:
        print(f"    roost import says: {done.stdout.strip()}", flush=True)
        return seconds, cpu
    from roost.transfer.imports import import_file

    reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
    results.note(f"`roost import {path.suffix[1:]}` failed ({reason}); timed import_file() in-process instead")
    shutil.rmtree(store_dir, ignore_errors=True)
    with Store.open(store_dir) as store:
        started, cpu = time.perf_counter(), time.process_time()
        report = import_file(store, path)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    if report.skipped_lines:
        results.note(f"import of {path.name} skipped {report.skipped_lines} lines")
    return seconds, cpu


def vm_import(vm: Server, data: Samples) -> tuple[float, float]:
    """Wall seconds, and the server's CPU seconds, for VictoriaMetrics to import the workload and flush it.

    CSV, one request per series on one keep-alive connection; the request bodies are prepared first, untimed.
    Measured once here, this path (9.1 s for the reference workload) beat one JSON-lines request (13.4 s)
    and one Influx line-protocol request (10.2 s).
    """
    requests = []
    for series, ts, values in data:
        body = io.BytesIO()
        pacsv.write_csv(pa.table({"t": ts, "v": values}), body, pacsv.WriteOptions(include_header=False))
        query = urllib.parse.urlencode(
            [("format", f"1:time:unix_ms,2:metric:{series.metric}")]
            + [("extra_label", f"{name}={value}") for name, value in series.labels]
        )
        requests.append((f"/api/v1/import/csv?{query}", body.getvalue()))
    started, cpu = time.perf_counter(), vm.cpu_seconds
    for path, body in requests:
        status, answer = vm.request("POST", path, body)
        if status not in (200, 204):
            raise RuntimeError(f"VictoriaMetrics import: HTTP {status}: {answer[:300]!r}")
    vm.get_ok("/internal/force_flush")
    return time.perf_counter() - started, vm.cpu_seconds - cpu


def vm_rows(vm: Server) -> int:
    """Samples VictoriaMetrics holds, from its own metrics (vm_rows of the storage parts)."""
    total = 0
    for line in vm.get_ok("/metrics").decode().splitlines():
        if line.startswith('vm_rows{type="storage/'):
            total += int(float(line.split()[-1]))
    return total


def measure_bulk(data: Samples, work: Path, vm: Server | None, results: Results) -> Path:
    samples = n_samples(data)
    print(f"1. bulk ingest of {samples:,} samples", flush=True)
    store_dir = work / "bulk"
    seconds, cpu = bulk_write(store_dir, data)
    print(f"    roost write_bulk: {seconds:.1f} s = {samples / seconds:,.0f} samples/s "
          f"({cpu:.1f} CPU s, {samples / cpu:,.0f} samples per CPU second)", flush=True)
    vm_rate = vm_cpu_rate = None
    if vm is not None:
        vm_seconds, vm_cpu = vm_import(vm, data)
        vm_rate, vm_cpu_rate = samples / vm_seconds, samples / vm_cpu
        held = vm_rows(vm)
        print(f"    VictoriaMetrics CSV import + flush: {vm_seconds:.1f} s = {vm_rate:,.0f} samples/s "
              f"({held:,} rows stored; {vm_cpu:.1f} CPU s of the server, {samples / vm_cpu:,.0f} samples per CPU "
              f"second)", flush=True)
        if held != samples:
            results.note(f"VictoriaMetrics reports {held:,} rows stored, {samples:,} were sent")
    results.add(Figure("bulk ingest: Store.write_bulk", samples / seconds, vm_rate, "samples/s", "higher", 1e6))
    cpu_figures = [Figure("  per CPU second: Store.write_bulk", samples / cpu, vm_cpu_rate, "samples/s", "higher")]

    csv_path, parquet_path = write_import_files(data, work)
    print(f"    import files: {csv_path.stat().st_size / 1e6:.0f} MB CSV, "
          f"{parquet_path.stat().st_size / 1e6:.0f} MB Parquet (untimed)", flush=True)
    for path, label in ((csv_path, "CSV"), (parquet_path, "Parquet")):
        target_dir = work / f"import-{label.lower()}"
        seconds, cpu = roost_import(path, target_dir, results)
        with Store.open(target_dir) as store:
            stored = sum(len(d.ts) for d in store.read(Selector.parse('{__name__=~".+"}'), 0, 2**62))
        print(f"    roost import {label}: {seconds:.1f} s = {samples / seconds:,.0f} samples/s "
              f"({cpu:.1f} CPU s; {stored:,} samples read back)", flush=True)
        if stored != samples:
            results.note(f"roost import {label}: {stored:,} samples read back, {samples:,} in the file")
        results.add(Figure(f"bulk ingest: roost import {label}", samples / seconds, vm_rate, "samples/s", "higher",
                           1e6))
        cpu_figures.append(Figure(f"  per CPU second: roost import {label}", samples / cpu, vm_cpu_rate,
                                  "samples/s", "higher"))
        shutil.rmtree(target_dir)
        path.unlink()
    results.figures += cpu_figures
    return store_dir


# ----------------------------------------------------------------------------- 2. streaming ingest


def streaming(store_dir: Path, ticks: list[list[Reading]], fsync: bool) -> tuple[float, float]:
    """Seconds to feed the ticks as the hub does (write + sync per tick, compaction every 15 minutes), and
    the part of them spent compacting."""
    compacting = 0.0
    with Store.open(store_dir, StoreOptions(fsync=fsync), writer=True) as store:
        started = time.perf_counter()
        for i, batch in enumerate(ticks, 1):
            store.write(batch)
            store.sync()
            if i % COMPACT_EVERY_TICKS == 0:
                before = time.perf_counter()
                store.compact(now=batch[0].ts_ms)
                compacting += time.perf_counter() - before
        before = time.perf_counter()
        store.compact(now=ticks[-1][0].ts_ms + TICK_S * 1000)
        compacting += time.perf_counter() - before
        return time.perf_counter() - started, compacting


def measure_streaming(n_series: int, days: float, work: Path, results: Results) -> None:
    data = workload(n_series, days)
    n_ticks = len(data[0][1])
    ticks = [[Reading(series, int(ts[i]), float(values[i])) for series, ts, values in data] for i in range(n_ticks)]
    samples = n_ticks * len(data)
    print(f"2. streaming ingest: {n_ticks:,} ticks of {len(data)} readings, compaction every "
          f"{COMPACT_EVERY_TICKS} ticks", flush=True)
    for fsync in (True, False):
        store_dir = work / f"stream-fsync-{'on' if fsync else 'off'}"
        seconds, compacting = streaming(store_dir, ticks, fsync)
        rate = samples / seconds
        writing = seconds - compacting
        text = (f"streaming, fsync {'on' if fsync else 'off'}: {seconds:.1f} s = {rate:,.0f} samples/s; "
                f"write + sync {writing / n_ticks * 1e3:.2f} ms per tick ({samples / writing:,.0f} samples/s), "
                f"compaction {compacting:.1f} s ({compacting / seconds:.0%})")
        results.note(text)
        results.add(Figure(f"streaming ingest, fsync {'on' if fsync else 'off'}", rate, None, "samples/s", "higher"))
        shutil.rmtree(store_dir)


# ----------------------------------------------------------------------------- 3. bytes per sample


def roost_disk(store_dir: Path) -> tuple[int, dict[str, int]]:
    """Directory bytes after a checkpoint, split into chunk data, hourly rollups and the rest.

    Chunk data is the sealed-chunk data files (chunks/) plus the SQLite pages of the chunk tables (the index
    of sealed chunks, open chunks); hourly rollups are the pages of rollup_1h (SQLite's dbstat table).
    """
    with Store.open(store_dir, writer=True) as store:
        store.checkpoint()
    total = dir_bytes(store_dir)
    conn = sqlite3.connect(store_dir / "store.db")
    try:
        pages = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
    except sqlite3.OperationalError:  # SQLite built without the dbstat table
        pages = {}
    finally:
        conn.close()
    files = dir_bytes(store_dir / "chunks") if (store_dir / "chunks").is_dir() else 0
    parts = {
        "chunk data files": files,
        "chunk tables in SQLite": pages.get("chunks", 0) + pages.get("open_chunks", 0),
        "hourly rollups": pages.get("rollup_1h", 0),
    }
    parts["rest"] = total - sum(parts.values())
    return total, parts


def vm_disk(vm: Server, data_dir: Path) -> tuple[int, dict[str, int]]:
    """VictoriaMetrics' data directory bytes after flush and a finished force_merge."""
    vm.get_ok("/internal/force_flush")
    vm.get_ok("/internal/force_merge")
    time.sleep(1)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        active = [ln for ln in vm.get_ok("/metrics").decode().splitlines() if ln.startswith("vm_active_force_merges")]
        if not active or float(active[0].split()[-1]) == 0:
            break
        time.sleep(0.5)
    size, stable_since = dir_bytes(data_dir), time.monotonic()
    while time.monotonic() - stable_since < 3 and time.monotonic() < deadline:  # old parts go away a bit later
        time.sleep(0.5)
        now = dir_bytes(data_dir)
        if now != size:
            size, stable_since = now, time.monotonic()
    parts = {name: dir_bytes(data_dir / name) for name in ("data", "indexdb") if (data_dir / name).exists()}
    parts["rest"] = size - sum(parts.values())
    return size, parts


def measure_disk(store_dir: Path, samples: int, vm: Server | None, vm_dir: Path, results: Results) -> None:
    print("3. bytes per sample on disk", flush=True)
    total, parts = roost_disk(store_dir)
    shown = ", ".join(f"{k} {v / samples:.3f}" for k, v in parts.items())
    print(f"    roost: {total:,} bytes = {total / samples:.3f} B/sample ({shown})", flush=True)
    vm_bps = None
    if vm is not None:
        vm_total, vm_parts = vm_disk(vm, vm_dir)
        vm_bps = vm_total / samples
        shown = ", ".join(f"{k} {v / samples:.3f}" for k, v in vm_parts.items())
        print(f"    VictoriaMetrics: {vm_total:,} bytes = {vm_bps:.3f} B/sample ({shown})", flush=True)
    results.add(Figure("bytes/sample on disk", total / samples, vm_bps, "B/sample", "lower", 0.40, beat_vm=True))
    results.note("roost bytes/sample by part: " + ", ".join(f"{k} {v / samples:.3f}" for k, v in parts.items()),
                 echo=False)


# ----------------------------------------------------------------------------- 4. query latency


@dataclass(frozen=True)
class Query:
    name: str
    selector: str
    start_s: int  # first bucket start, aligned to step
    buckets: int
    step_s: int

    def roost_path(self) -> str:
        # end is the last millisecond of the last bucket: roost includes the bucket holding `end` whole
        end_ms = (self.start_s + self.buckets * self.step_s) * 1000 - 1
        params = {"match": self.selector, "start": self.start_s * 1000, "end": end_ms,
                  "step": f"{self.step_s}s", "agg": "mean"}
        return "/api/query?" + urllib.parse.urlencode(params)

    def vm_path(self) -> str:
        # avg_over_time(x[step]) at t covers (t - step, t]: roost's bucket [t - step, t), as no sample of the
        # workload falls on a bucket edge (they sit at 5 s past a multiple of 15 s)
        params = {"query": f"avg_over_time({self.selector}[{self.step_s}s])",
                  "start": self.start_s + self.step_s, "end": self.start_s + self.buckets * self.step_s,
                  "step": f"{self.step_s}s"}
        return "/api/v1/query_range?" + urllib.parse.urlencode(params)


def p50_ms(server: Server, path: str, runs: int) -> tuple[float, float, bytes]:
    """Median milliseconds from sending the request to having read the whole response, and the server's mean
    CPU milliseconds per request (from /proc, 10-ms ticks: a figure that other load on the machine does not
    inflate the way it inflates latency)."""
    body = b""
    for _ in range(WARMUP_RUNS):
        server.get_ok(path)
    times = []
    cpu = server.cpu_seconds
    for _ in range(runs):
        started = time.perf_counter()
        status, body = server.get(path)
        times.append((time.perf_counter() - started) * 1e3)
        if status != 200:
            raise RuntimeError(f"{server.name} GET {path}: HTTP {status}: {body[:300]!r}")
    return statistics.median(times), (server.cpu_seconds - cpu) * 1e3 / runs, body


def roost_answer(body: bytes) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for s in orjson.loads(body)["series"]:
        key = (s["metric"], *sorted(s["labels"].items()))
        out[key] = (np.array(s["ts"], np.int64), np.array(s["values"], np.float64))
    return out


def vm_answer(body: bytes, step_s: int) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """VictoriaMetrics' points keyed like roost's, with timestamps moved to bucket starts in ms."""
    out = {}
    for r in orjson.loads(body)["data"]["result"]:
        labels = dict(r["metric"])
        metric = labels.pop("__name__", "?")
        ts = np.array([int(p[0]) for p in r["values"]], np.int64)
        out[(metric, *sorted(labels.items()))] = ((ts - step_s) * 1000, np.array([float(p[1]) for p in r["values"]]))
    return out


def compare(roost_body: bytes, vm_body: bytes, step_s: int) -> str:
    """Series and points of both answers, and the largest relative difference of their values."""
    mine, theirs = roost_answer(roost_body), vm_answer(vm_body, step_s)
    if any(k[0] == "?" for k in theirs):  # VictoriaMetrics dropped the metric name: match on labels alone
        mine = {k[1:]: v for k, v in mine.items()}
        theirs = {k[1:]: v for k, v in theirs.items()}
    points_mine = sum(len(t) for t, _v in mine.values())
    points_theirs = sum(len(t) for t, _v in theirs.values())
    worst, unmatched = 0.0, 0
    for key, (ts, values) in mine.items():
        if key not in theirs:
            unmatched += len(ts)
            continue
        ts_vm, values_vm = theirs[key]
        common, i, j = np.intersect1d(ts, ts_vm, return_indices=True)
        unmatched += len(ts) - len(common)
        if len(common):
            rel = np.abs(values[i] - values_vm[j]) / np.maximum(np.abs(values_vm[j]), 1e-12)
            worst = max(worst, float(rel.max()))
    text = (f"roost {len(mine)} series / {points_mine} points, VictoriaMetrics {len(theirs)} series / "
            f"{points_theirs} points; max relative difference {worst:.2e}")
    if unmatched or points_mine != points_theirs or len(mine) != len(theirs):
        text += f" — ANSWERS DIFFER ({unmatched} roost points without a VictoriaMetrics twin)"
    return text


def run_query(query: Query, hub: Server, vm: Server | None, runs: int, target_ms: float, results: Results) -> None:
    roost_ms, roost_cpu, roost_body = p50_ms(hub, query.roost_path(), runs)
    vm_ms = None
    line = f"    {query.name}: roost {roost_ms:.2f} ms ({roost_cpu:.1f} CPU ms)"
    if vm is not None:
        vm_ms, vm_cpu, vm_body = p50_ms(vm, query.vm_path(), runs)
        line += (f", VictoriaMetrics {vm_ms:.2f} ms ({vm_cpu:.1f} CPU ms)\n"
                 f"      {compare(roost_body, vm_body, query.step_s)}")
        if "DIFFER" in line:
            results.note(f"{query.name}: {line.split(chr(10))[-1].strip()}")
    print(line, flush=True)
    results.add(Figure(f"query p50: {query.name}", roost_ms, vm_ms, "ms", "lower", target_ms, beat_vm=True))


def breakdown(store_dir: Path, query: Query, runs: int, profile: bool, results: Results) -> None:
    """Where a roost query's time goes: Store.query and JSON encoding in-process; HTTP is the rest.

    The store is opened as the hub opens it (writer), so this runs before the hub starts on it.
    """
    selector = Selector.parse(query.selector)
    start_ms = query.start_s * 1000
    end_ms = (query.start_s + query.buckets * query.step_s) * 1000 - 1
    step_ms = query.step_s * 1000
    with Store.open(store_dir, writer=True) as store:
        answer = store.query(selector, start_ms, end_ms, step_ms)
        query_times, query_cpu, json_times = [], [], []
        for _ in range(runs):
            started, cpu = time.perf_counter(), time.process_time()
            answer = store.query(selector, start_ms, end_ms, step_ms)
            query_times.append((time.perf_counter() - started) * 1e3)
            query_cpu.append((time.process_time() - cpu) * 1e3)
            started = time.perf_counter()
            orjson.dumps(
                {"series": [{"series": str(r.series), "metric": r.series.metric, "labels": r.series.label_dict,
                             "ts": r.ts, "values": r.values} for r in answer]},
                option=orjson.OPT_SERIALIZE_NUMPY,
            )
            json_times.append((time.perf_counter() - started) * 1e3)
        text = (f"{query.name}, in-process: Store.query p50 {statistics.median(query_times):.2f} ms "
                f"({statistics.median(query_cpu):.2f} CPU ms), "
                f"JSON encoding p50 {statistics.median(json_times):.2f} ms; the rest of the HTTP time is "
                f"aiohttp, the event loop and the socket")
        results.note(text)
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(50):
                store.query(selector, start_ms, end_ms, step_ms)
            profiler.disable()
            print(f"    cProfile of 50 x Store.query ({query.name}), by total time:")
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
            print("\n".join("      " + ln for ln in out.getvalue().splitlines() if ln.strip()), flush=True)


def month_queries(days: float) -> list[tuple[Query, float]]:
    span_days = min(7, int(days))
    end_s = (T0 + int(days * DAY_S)) // 600 * 600
    start_s = end_s - span_days * DAY_S
    buckets = span_days * DAY_S // 600
    return [
        (Query(f"{span_days}d/10m 1 series", ONE_SERIES, start_s, buckets, 600), 2.0),
        (Query(f"{span_days}d/10m 9 series", NINE_SERIES, start_s, buckets, 600), 8.0),
    ]


def year_query(days: int) -> Query:
    return Query(f"{days}d/1d 9 series", YEAR_SERIES, T0 // DAY_S * DAY_S, days, DAY_S)


# ----------------------------------------------------------------------------- 5. memory


def measure_demo_rss(work: Path, wait_s: float, results: Results) -> float:
    """VmRSS of `roost demo` `wait_s` seconds after its 7-day backfill finished and its API answered."""
    log_path = work / "demo.log"
    with roost_server("demo", work / "demo", log_path) as server:
        deadline = time.monotonic() + 300
        while "roost is running" not in log_path.read_text(errors="replace"):  # printed after the backfill
            if time.monotonic() > deadline or server.proc.poll() is not None:
                raise RuntimeError(f"roost demo did not finish its backfill: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        series = orjson.loads(server.get_ok("/api/series"))["series"]
        server.conn.close()
        server.conn = None
        time.sleep(wait_s)
        rss, peak = server.rss_mb, rss_mb(server.proc.pid, "VmHWM")
    print(f"5. idle roost demo ({len(series)} series, 7-day backfill): VmRSS {rss:.0f} MB "
          f"(peak {peak:.0f} MB during the backfill)", flush=True)
    results.note(f"roost demo peak RSS (VmHWM, during its backfill): {peak:.0f} MB", echo=False)
    return rss


# ----------------------------------------------------------------------------- main


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1])
    return (f"{platform.node()}: {os.cpu_count()} × {cpu}, {mem / 1e6:.0f} GB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, numpy {np.__version__}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Figures, targets and how to read them: bench/README.md",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=100, help="series of the reference workload (default 100)")
    parser.add_argument("--days", type=float, default=30, help="days of the reference workload (default 30)")
    parser.add_argument("--stream-days", type=float, default=1, help="days of 15-s ticks fed as a stream (default 1)")
    parser.add_argument("--year-days", type=int, default=365, help="days of the 9-series long-range data (default 365)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per query after 2 warm-ups (default 10)")
    parser.add_argument("--demo-wait", type=float, default=20, help="idle seconds before reading the demo's RSS")
    parser.add_argument("--no-vm", action="store_true", help="measure roost alone")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the 9-series queries")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directories")
    parser.add_argument("--hub-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for the roost hub and demo processes, e.g. MALLOC_MMAP_THRESHOLD_=100000000")
    args = parser.parse_args()
    for item in args.hub_env:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--hub-env {item!r}: expected NAME=VALUE")
        HUB_ENV[name] = value

    vm_available = not args.no_vm and shutil.which(VM_BINARY) is not None
    results = Results()
    print(f"roost store benchmark, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {machine()}")
    if vm_available:
        print(f"peer: VictoriaMetrics {vm_version()}")
    else:
        print("peer: VictoriaMetrics is not installed (apt-get install victoria-metrics) or --no-vm: roost alone")
    print(f"workload: {args.series} series × {args.days:g} days × {TICK_S} s", flush=True)
    if HUB_ENV:
        print(f"roost hub and demo environment: {' '.join(f'{k}={v}' for k, v in HUB_ENV.items())}")
    print("load average at start: {:.1f} {:.1f} {:.1f} (1, 5, 15 min)".format(*os.getloadavg()), flush=True)

    work = Path(tempfile.mkdtemp(prefix="roost-bench-", dir="/tmp"))
    started = time.perf_counter()
    try:
        with ExitStack() as month_stack:
            vm_month_dir = work / "vm-month"
            vm = month_stack.enter_context(victoria_metrics(vm_month_dir)) if vm_available else None
            data = workload(args.series, args.days)
            samples = n_samples(data)
            store_dir = measure_bulk(data, work, vm, results)
            del data
            measure_streaming(args.series, args.stream_days, work, results)
            measure_disk(store_dir, samples, vm, vm_month_dir, results)

            print(f"4. query latency, p50 of {args.runs} after {WARMUP_RUNS} warm-ups", flush=True)
            queries = month_queries(args.days)
            with roost_hub(store_dir, work) as hub:
                for query, target in queries:
                    run_query(query, hub, vm, args.runs, target, results)
                time.sleep(2)
                hub_rss = hub.rss_mb
            vm_rss = vm.rss_mb if vm is not None else None
            breakdown(store_dir, queries[1][0], args.runs, args.profile, results)

        with ExitStack() as year_stack:
            year = workload(9, args.year_days)
            year_dir = work / "year"
            seconds, _cpu = bulk_write(year_dir, year)
            print(f"    {args.year_days}-day data: {n_samples(year):,} samples of 9 series, write_bulk "
                  f"{n_samples(year) / seconds:,.0f} samples/s", flush=True)
            vm_year = None
            if vm_available:
                vm_year = year_stack.enter_context(victoria_metrics(work / "vm-year"))
                vm_import(vm_year, year)
            del year
            query = year_query(args.year_days)
            with roost_hub(year_dir, work) as hub_year:
                run_query(query, hub_year, vm_year, args.runs, 10.0, results)
            breakdown(year_dir, query, args.runs, args.profile, results)

        demo_rss = measure_demo_rss(work, args.demo_wait, results)
        results.add(Figure("idle RSS: roost demo (7 d) vs VM (30 d)", demo_rss, vm_rss, "MB", "lower", 120.0))
        results.add(Figure("idle RSS: roost run, 30-day store (after queries)", hub_rss, vm_rss, "MB", "lower"))
        print(f"    roost run hub on the 30-day store, after the queries: {hub_rss:.0f} MB; "
              f"VictoriaMetrics with the 30-day data: {_fmt(vm_rss, 'MB')}", flush=True)
    finally:
        if args.keep:
            print(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\ntotal time {time.perf_counter() - started:.0f} s; load average at the end: "
          "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print_table(results, vm_available)
    return 0


if __name__ == "__main__":
    sys.exit(main())
