"""Soak under faults: every source at 10x its normal rate while the peers fail around a real `roost run` hub.

What runs, all on 127.0.0.1:
- a mosquitto broker (persistence on) restarted every `--broker-restart` seconds; 30 zigbee2mqtt climate
  sensors publish through it every 1.5 s (10x the usual 15 s), QoS 1;
- HTTP pushes of Influx line protocol: 300 series, each read every 1.5 s (10x the usual 15 s), sent as a
  batch of 50 lines every 0.25 s (200 readings/s);
- a Modbus TCP SDM120 meter (pymodbus) polled every second (10x), and a second meter whose gateway is dead;
- remote write out into VictoriaMetrics, which is stopped for `--vm-down` seconds every `--vm-period`;
- a rule that raises on every heartbeat (disabled after its failures) beside a threshold rule that works;
- a probe asking the hub for the last hour of one pushed series every 2 s.

The store compacts every minute instead of every 15 (readings wait in memory until the next compaction, so
with the default a short soak would mostly measure the head filling up, not a leak).

RSS growth is counted from the end of a warm-up (a fifth of the run, at most 5 minutes), when the hub's
caches have filled; the RSS trace of the whole run is printed beside it.

At the end the load stops, VictoriaMetrics is left up until the hub's export buffer is empty, the hub is
stopped and its store opened to count. The report: readings acknowledged vs stored (HTTP pushes answered 204
must all be there; MQTT messages the broker acknowledged are counted beside them), what VictoriaMetrics
received, hub RSS after warm-up and at the end (growth must stay within 10 %), errors by reason from the
hub's /metrics, and the query probe's failures and latencies.

    .venv/bin/python bench/soak.py                 # 5 minutes
    .venv/bin/python bench/soak.py --hour          # the hour-long soak
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import paho.mqtt.client as paho

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import peers  # noqa: E402  (mosquitto and VictoriaMetrics, as the tests run them)

PYTHON = sys.executable
SENSORS = 30
SENSOR_PERIOD_S = 1.5
PUSH_SERIES = 300
PUSH_LINES = 50
PUSH_PERIOD_S = 0.25  # 200 readings/s: each series every 1.5 s
MQTT_STALL_S = 15.0  # no acknowledgement for this long while messages wait: a new publisher


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def http(url: str, data: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


# ----------------------------------------------------------------------------- load


class Load:
    """The load generators and the probe, each in a thread, with what they sent and what was acknowledged."""

    def __init__(self, hub_url: str, broker_port: int):
        self.hub_url, self.broker_port = hub_url, broker_port
        self.stop = threading.Event()
        self.push_acked = 0
        self.push_status: Counter[str] = Counter()
        self.mqtt_published = 0
        self.mqtt_acked = 0
        self.mqtt_unacked = 0
        self.mqtt_client_replaced = 0  # publishers replaced after a stall
        self.mqtt_acked_sequence: dict[int, float] = {}  # message sequence number -> when the broker acknowledged it
        self.probe_ms: list[float] = []
        self.probe_failures: Counter[str] = Counter()
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._push, self._mqtt, self._probe)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(60)

    def _push(self) -> None:
        rng = random.Random(1)
        next_at = time.monotonic()
        k = 0
        while not self.stop.is_set():
            lines = []
            now = int(time.time() * 1000)
            for _ in range(PUSH_LINES):  # round robin: each series once per 1.5 s
                series = k % PUSH_SERIES
                lines.append(f"soak_push,series=s{series:03d} value={rng.uniform(15, 30):.2f} {now}")
                k += 1
            try:
                status, _body = http(f"{self.hub_url}/write?precision=ms", ("\n".join(lines) + "\n").encode())
            except OSError as err:
                status = type(err).__name__
            self.push_status[str(status)] += 1
            if status == 204:
                self.push_acked += PUSH_LINES
            next_at += PUSH_PERIOD_S
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def _mqtt(self) -> None:
        """Publish the sensors' readings at QoS 1, counting what the broker acknowledged.

        paho calls `on_publish` holding its own lock, which `publish` takes too: so `publish` is called without
        this function's lock (held the other way round, the two threads deadlocked within minutes, and the
        soak's MQTT load stopped), and an acknowledgement that arrives before its message is noted waits in
        `early`. Also, paho can stop sending for good after a reconnect when its in-flight window was full as
        the connection dropped (eclipse-paho/paho.mqtt.python#24): a client that has had no acknowledgement for
        `MQTT_STALL_S` while messages wait is replaced by a fresh one; what the old one never got acknowledged
        stays unacknowledged (the soak only requires acknowledged readings to be stored).
        """
        lock = threading.Lock()
        pending: dict[int, int] = {}  # mid -> message sequence number, for the current client
        early: set[int] = set()  # mids acknowledged before the publisher noted them
        last_ack = [time.monotonic()]

        def acked(sequence: int) -> None:  # with the lock held
            self.mqtt_acked += 3
            self.mqtt_acked_sequence[sequence] = time.monotonic()

        def connect(generation: int) -> paho.Client:
            client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"soak-sensors-{generation}",
                                 clean_session=False)
            client.max_queued_messages_set(0)
            client.max_inflight_messages_set(100)

            def on_publish(_c, _u, mid, _rc, _p):
                with lock:
                    if client is not current[0]:
                        return
                    last_ack[0] = time.monotonic()
                    sequence = pending.pop(mid, None)
                    if sequence is None:
                        early.add(mid)
                    else:
                        acked(sequence)

            client.on_publish = on_publish
            client.connect_async("127.0.0.1", self.broker_port, keepalive=10)
            client.reconnect_delay_set(0.2, 2)
            client.loop_start()
            return client

        current = [connect(0)]
        rng = random.Random(2)
        period = SENSOR_PERIOD_S / SENSORS
        next_at = time.monotonic()
        k = 0
        while not self.stop.is_set():
            sensor = k % SENSORS
            payload = {"temperature": round(rng.uniform(18, 24), 2), "humidity": round(rng.uniform(35, 60), 1),
                       "pressure": round(rng.uniform(990, 1030), 1), "sequence": k}
            with lock:
                stalled = pending and time.monotonic() - last_ack[0] > MQTT_STALL_S
                if stalled:
                    old = current[0]
                    self.mqtt_unacked += 3 * len(pending)
                    pending.clear()
                    early.clear()
                    self.mqtt_client_replaced += 1
                    last_ack[0] = time.monotonic()
            if stalled:
                old.loop_stop()
                old.disconnect()
                client = connect(self.mqtt_client_replaced)
                with lock:
                    current[0] = client
            client = current[0]
            info = client.publish(f"zigbee2mqtt/soak_sensor_{sensor:02d}", json.dumps(payload), qos=1)
            with lock:
                self.mqtt_published += 3
                if client is current[0]:
                    if info.mid in early:
                        early.discard(info.mid)
                        acked(k)
                    else:
                        if not pending:
                            last_ack[0] = time.monotonic()  # the stall clock runs from the oldest wait
                        pending[info.mid] = k
            k += 1
            next_at += period
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        deadline = time.monotonic() + 60  # let what paho queued during a broker restart go out
        while pending and time.monotonic() < deadline:
            time.sleep(0.2)
        with lock:
            self.mqtt_unacked += 3 * len(pending)
        current[0].loop_stop()
        current[0].disconnect()

    def _probe(self) -> None:
        while not self.stop.is_set():
            now = int(time.time() * 1000)
            query = urllib.parse.urlencode({"match": 'soak_push{series="s000"}', "start": now - 3600_000, "end": now,
                                            "step": "60s", "agg": "mean"})
            started = time.perf_counter()
            try:
                status, _ = http(f"{self.hub_url}/api/query?{query}", timeout=5)
                if status == 200:
                    self.probe_ms.append((time.perf_counter() - started) * 1000)
                else:
                    self.probe_failures[f"HTTP {status}"] += 1
            except OSError as err:
                self.probe_failures[type(err).__name__] += 1
            self.stop.wait(2)


# ----------------------------------------------------------------------------- the house


METER = textwrap.dedent("""\
    import asyncio, sys
    from roost.demo.meter import SimulatedMeter

    async def main():
        async with SimulatedMeter() as meter:
            print(meter.port, flush=True)
            energy = 1000.0
            while True:
                energy += 0.0005
                await meter.show(400.0, energy)
                await asyncio.sleep(1)

    asyncio.run(main())
""")

RULES = textwrap.dedent('''\
    from roost.rules import HeartBeat, Rule


    class Broken(Rule):
        """A rule with a bug: it raises on every heartbeat (roost disables it after its failures)."""

        def register_triggers(self):
            return (HeartBeat("1s"),)

        def action(self, *args):
            raise RuntimeError("a bug in a user's rule")


    class Beat(Rule):
        """A rule that works: counts its heartbeats."""

        def register_triggers(self):
            return (HeartBeat("1s"),)

        def action(self, *args):
            self.beats = getattr(self, "beats", 0) + 1
''')


def config(work: Path, hub_port: int, broker_port: int, meter_port: int, dead_port: int, vm_port: int) -> Path:
    (work / "rules").mkdir()
    (work / "rules" / "soak.py").write_text(RULES)
    path = work / "roost.toml"
    path.write_text(textwrap.dedent(f"""\
        [hub]
        data = "data"
        listen = "127.0.0.1:{hub_port}"
        log_level = "warning"

        [store]
        compact_interval = "1m"   # several compactions even in a short soak (the head grows until each one)

        [rules]
        directory = "rules"

        [[source.mqtt]]
        url = "mqtt://127.0.0.1:{broker_port}"
        name = "zigbee"
        client_id = "roost-soak"
        [source.mqtt.zigbee2mqtt]

        [[source.modbus]]
        name = "meter"
        url = "tcp://127.0.0.1:{meter_port}"
        interval = "1s"
        [[source.modbus.devices]]
        name = "main"
        unit = 1
        profile = "sdm120"

        [[source.modbus]]
        name = "garage"
        url = "tcp://127.0.0.1:{dead_port}"
        interval = "1s"
        timeout = "500ms"
        [[source.modbus.devices]]
        name = "garage"
        unit = 1
        profile = "sdm120"

        [[export.remote_write]]
        name = "vm"
        url = "http://127.0.0.1:{vm_port}/api/v1/write"
        flush_interval = "1s"
        max_backoff = "5s"
        timeout = "5s"
        """))
    return path


def metrics_by_reason(text: str) -> dict[str, float]:
    """Counters of the hub's /metrics that say what went wrong, as `name{labels}` → value (non-zero only)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(roost_(?:source_errors|rejected_readings|rule_errors|rule_failures|export_\w+|"
                     r"store_write_errors|bus_dropped\w*|auth_failures)\w*)(\{[^}]*\})? (\S+)$", line)
        if m and not m[1].endswith("_created") and float(m[3]) != 0:
            out[m[1] + (m[2] or "")] = float(m[3])
    return out


def count_stored(data: Path) -> tuple[dict[str, int], set[int]]:
    """Samples stored by kind (push, mqtt, all), and the sequence numbers of the MQTT messages stored."""
    from roost.selector import Selector
    from roost.store import Store

    counts: Counter[str] = Counter()
    sequences: set[int] = set()
    with Store.open(data) as store:
        for d in store.read(Selector.parse('{__name__=~".+"}'), 0, 2**62):
            if d.series.metric == "soak_push":
                counts["push"] += len(d.ts)
            elif d.series.label_dict.get("device", "").startswith("soak_sensor_") and d.series.metric in (
                    "temperature_celsius", "humidity_percent", "pressure_hpa"):
                counts["mqtt"] += len(d.ts)
            elif d.series.metric == "sequence":
                sequences.update(int(v) for v in d.values)
            counts["all"] += len(d.ts)
    return dict(counts), sequences


def vm_count(vm_port: int) -> int:
    http(f"http://127.0.0.1:{vm_port}/internal/force_flush")
    query = urllib.parse.urlencode({"query": 'sum(count_over_time(soak_push[30d]))'})
    _status, body = http(f"http://127.0.0.1:{vm_port}/api/v1/query?{query}")
    result = json.loads(body)["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the load (default 5)")
    parser.add_argument("--hour", dest="minutes", action="store_const", const=60.0, help="the hour-long soak")
    parser.add_argument("--broker-restart", type=float, default=90.0, help="seconds between broker restarts (90)")
    parser.add_argument("--vm-period", type=float, default=60.0, help="VictoriaMetrics flap period, s (60)")
    parser.add_argument("--vm-down", type=float, default=20.0, help="seconds VictoriaMetrics is down per period (20)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (its path is printed)")
    args = parser.parse_args()
    for tool in ("/usr/sbin/mosquitto", "victoria-metrics"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed: make peers (or apt-get install mosquitto victoria-metrics)")

    work = Path(tempfile.mkdtemp(prefix="roost-soak-"))
    print(f"soak: {args.minutes:g} min, work directory {work}; load average {os.getloadavg()[0]:.1f}", flush=True)
    hub_port, dead_port = peers.free_port(), peers.free_port()
    meter = subprocess.Popen([PYTHON, "-c", METER], stdout=subprocess.PIPE, text=True, start_new_session=True)
    broker = vm = hub = load = None
    try:
        broker = peers.mosquitto(work, "persistence true", f"persistence_location {work}/", "autosave_interval 1")
        vm = peers.VictoriaMetrics(work / "vm")
        broker_port, vm_port = broker.port, vm.port
        meter_port = int(meter.stdout.readline())
        path = config(work, hub_port, broker_port, meter_port, dead_port, vm_port)
        hub = subprocess.Popen([str(ROOT / ".venv/bin/roost"), "run", "-c", str(path)], stdout=open(work / "hub.log", "w"),
                               stderr=subprocess.STDOUT, start_new_session=True)
        peers.wait_port(hub_port, hub, work / "hub.log", timeout=60)
        hub_url = f"http://127.0.0.1:{hub_port}"
        deadline = time.monotonic() + 60  # the broker keeps messages for roost's session only once it has one
        while b'roost_source_up{source="zigbee"} 1.0' not in http(f"{hub_url}/metrics")[1]:
            if time.monotonic() > deadline:
                raise SystemExit("the hub's MQTT source did not connect within 60 s")
            time.sleep(0.2)
        load = Load(hub_url, broker_port)
        load.start()
        started = time.monotonic()
        end = started + args.minutes * 60
        # caches (decoded days, summaries, rollup blocks), the broker's and the exporter's buffers fill during the
        # first minutes: growth counts from after them (the printed RSS trace shows the whole run)
        warm = started + min(300.0, args.minutes * 60 / 5)
        rss_start = rss_end = None
        rss_trace: list[tuple[float, float]] = []
        next_rss = started
        next_broker = started + args.broker_restart
        vm_stopped = False

        def vm_outage(down: bool, now: float) -> None:
            """Stop VictoriaMetrics as an outage begins, start it again as it ends."""
            nonlocal vm_stopped
            if down == vm_stopped:
                return
            if down:
                vm.stop()
                print(f"  {now - started:5.0f} s  VictoriaMetrics stopped for {args.vm_down:g} s", flush=True)
            else:
                vm.start()
                print(f"  {now - started:5.0f} s  VictoriaMetrics started", flush=True)
            vm_stopped = down

        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_rss:
                rss_trace.append((now - started, rss_mb(hub.pid)))
                next_rss += max(10.0, args.minutes * 60 / 20)
            if rss_start is None and now >= warm:
                rss_start = rss_mb(hub.pid)
                print(f"  {now - started:5.0f} s  hub RSS after warm-up {rss_start:.0f} MB", flush=True)
            if now >= next_broker:
                broker.restart()
                print(f"  {now - started:5.0f} s  mosquitto restarted", flush=True)
                next_broker += args.broker_restart
            vm_outage((now - started) % args.vm_period >= args.vm_period - args.vm_down, now)  # the period's last part
            if hub.poll() is not None:
                raise SystemExit(f"the hub exited with {hub.returncode}: see {work / 'hub.log'}")
            time.sleep(0.5)
        rss_end = rss_mb(hub.pid)
        load.join()
        vm_outage(False, time.monotonic())
        print(f"  load stopped; hub RSS {rss_end:.0f} MB; waiting for VictoriaMetrics to have every push", flush=True)
        drain_started = time.monotonic()
        while time.monotonic() < drain_started + 180 and vm_count(vm_port) < load.push_acked:
            time.sleep(1)
        drain_s = time.monotonic() - drain_started
        time.sleep(2)  # the last MQTT messages
        _s, text = http(f"{hub_url}/metrics")
        problems = metrics_by_reason(text.decode())
        hub.send_signal(signal.SIGTERM)
        hub.wait(60)
        stored, sequences = count_stored(work / "data")
        received = vm_count(vm_port)
    finally:
        if load is not None:
            load.stop.set()
        if hub is not None and hub.poll() is None:
            hub.kill()
        meter.kill()
        for peer in (broker, vm):
            if peer is not None:
                peer.stop()

    probe = sorted(load.probe_ms)
    lost = sorted(set(load.mqtt_acked_sequence) - sequences)
    restarts = [t - started for t in broker.restarted_at]
    for k in lost[:10]:
        print(f"  MQTT message {k} acknowledged by the broker at {load.mqtt_acked_sequence[k] - started:.1f} s is not "
              f"stored (broker restarts at {', '.join(f'{t:.1f}' for t in restarts)} s)")
    growth = (rss_end - rss_start) / rss_start * 100 if rss_start else float("nan")
    # The publisher must have kept its pace (a stuck one publishes nothing more, so acknowledged vs published
    # alone would not show it) and the broker must have acknowledged most of what it sent.
    expected = 3 * SENSORS / SENSOR_PERIOD_S * args.minutes * 60
    mqtt_ok = load.mqtt_published >= 0.9 * expected and load.mqtt_acked >= 0.9 * load.mqtt_published
    rows = [
        ("HTTP push readings acknowledged (204)", f"{load.push_acked:,}"),
        ("  of them stored", f"{stored.get('push', 0):,}" + ("  OK" if stored.get("push", 0) == load.push_acked else "  MISMATCH")),
        ("  of them received by VictoriaMetrics", f"{received:,}" + ("  OK" if received == load.push_acked else "  MISMATCH")
         + f" ({drain_s:.0f} s after the load stopped)"),
        ("  push answers", ", ".join(f"{k}: {v}" for k, v in sorted(load.push_status.items()))),
        ("MQTT readings published (of the load's pace) / acknowledged by the broker",
         f"{load.mqtt_published:,} ({load.mqtt_published / expected:.0%}) / {load.mqtt_acked:,} "
         f"({load.mqtt_unacked:,} never acknowledged, {load.mqtt_client_replaced} stalled publishers replaced)"
         + ("" if mqtt_ok else "  THE PUBLISHER STALLED")),
        ("  of them stored", f"{stored.get('mqtt', 0):,}" + (f"  ({len(lost)} messages lost)" if lost else "  OK")),
        ("broker restarts / VictoriaMetrics outages", f"{broker.restarts} / {vm.restarts}"),
        ("hub RSS after warm-up → end", f"{rss_start:.0f} → {rss_end:.0f} MB ({growth:+.1f} %)"
         + ("  OK" if growth <= 10 else "  OVER 10 %")),
        ("query probe answers / failures", f"{len(probe)} / {sum(load.probe_failures.values())} "
         f"{dict(load.probe_failures) or ''}"),
        ("query probe p50 / max", f"{statistics.median(probe):.1f} / {probe[-1]:.1f} ms" if probe else "-"),
    ]
    print("\n| figure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print("\nhub RSS over time: " + ", ".join(f"{t:.0f} s {mb:.0f} MB" for t, mb in rss_trace))
    print("\nerrors counted by the hub (from /metrics):")
    for name, value in sorted(problems.items()):
        print(f"  {name} {value:g}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    ok = (stored.get("push", 0) == load.push_acked == received and growth <= 10 and not load.probe_failures
          and not lost and mqtt_ok)
    print("verdict: " + ("OK" if ok else "FAILED (see above)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
