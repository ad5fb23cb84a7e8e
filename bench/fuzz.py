"""Coverage-guided fuzzing (atheris, libFuzzer) of every parser the hub exposes to untrusted bytes.

    .venv/bin/pip install -e '.[fuzz]'                      # atheris: not part of the test extra
    .venv/bin/python bench/fuzz.py                          # every target, 60 s each
    .venv/bin/python bench/fuzz.py --seconds 300 line mqtt  # some targets, longer

Targets (each the entry point the hub hands outside bytes to, seeded from tests/corpus/<kind>/ and a few good
inputs; remote-write bodies are binary, built here as tests/test_bad_input.py builds its corpus of them):

    line         an HTTP push body (`/write`, `/api/v2/write`): gzip check when it starts gzipped, then line protocol
    mqtt         an MQTT message (zigbee2mqtt, topic and JSON mappings): the first byte picks the topic
    w1_slave     a 1-Wire sensor's w1_slave file, read by `read_millicelsius` from a sensor directory
    promql       a PromQL query as the HTTP API answers it: parsed, then evaluated over a small store
    webthing_ws  a text message on a thing's WebSocket, handled as the API does (a real registry and thing)
    remote_write a Prometheus remote-write body: snappy, then the protobuf WriteRequest
    config       a roost.toml file, loaded and checked
    modbus       a Modbus RTU answer on a serial port (a pty): framing, CRC and decoding by the serial link

Each input may end only in what roost documents for bad input: its own error types with a message, or
counted rejections (and what it accepts must be storable: finite values, valid names). Anything else is a
finding: another exception, an input taking longer than --timeout seconds, or the process going over
--rss-mb. Each target fuzzes in a process of its own (`--child`), so one target's crash does not end the
run; after a crash the target starts again with the corpus grown so far, until its time is spent. Findings
(the input that crashed) are kept under the run's directory, printed at the end with the table:
target, executions, exec/s, coverage (libFuzzer's `cov`: edges, `ft`: features), findings.

A finding is fixed in the parser and its input added to tests/corpus/<kind>/, which tests/test_bad_input.py
reads. Not part of the test suite: fuzzing takes as long as it is given.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus"
TARGETS = ["line", "mqtt", "w1_slave", "promql", "webthing_ws", "remote_write", "config", "modbus"]


# ---------------------------------------------------------------- seeds


def _corpus_lines(name: str) -> list[str]:
    """The inputs of an `input => expected` corpus file."""
    out = []
    for line in (CORPUS / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            out.append(line.rpartition(" => ")[0])
    return out


def _files(kind: str) -> list[bytes]:
    folder = CORPUS / kind
    return [p.read_bytes() for p in sorted(folder.iterdir())] if folder.is_dir() else []


MQTT_TOPICS = ["zigbee2mqtt/lounge_sensor", "zigbee2mqtt/lounge_sensor/availability", "zigbee2mqtt/bridge/state",
               "home/lounge/temperature_celsius", "tele/plug/SENSOR", "other/topic"]


def seeds(target: str) -> list[bytes]:
    """Starting inputs of a target, from the checked-in corpus (and a few good inputs to mutate from)."""
    if target == "line":
        return _files("line") + [b"temperature,room=lounge value=21.5 1700000000000000000\n",
                                 gzip.compress(b"power_watts,meter=main value=512i\n")]
    if target == "mqtt":
        out = []
        for raw in _files("mqtt"):
            head, _, payload = raw.partition(b"\n")
            topic = re.search(rb"topic: (\S+)", head)
            index = MQTT_TOPICS.index(topic[1].decode()) if topic and topic[1].decode() in MQTT_TOPICS else 0
            out.append(bytes([index]) + payload)
        return out + [b"\x00" + b'{"temperature": 21.5, "humidity": 40, "linkquality": 90}',
                      b"\x04" + b'{"Time": "2024-01-01T00:00:00", "ENERGY": {"Power": 12, "Total": 1.5}}']
    if target == "w1_slave":
        return _files("w1_slave") + [b"72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"]
    if target == "promql":
        return [q.encode() for q in _corpus_lines("promql/queries.txt")] + [
            b'sum by (room) (rate(energy_kwh_total[5m]))', b'avg_over_time(temperature_celsius{room=~"l.*"}[1h])',
            b"temperature_celsius > bool 20 offset 5m", b"max(temperature_celsius) - min(temperature_celsius)"]
    if target == "webthing_ws":
        return [m.encode() for m in _corpus_lines("webthing_ws/messages.txt")] + [
            b'{"messageType": "setProperty", "data": {"brightness": 70, "on": true}}',
            b'{"messageType": "requestAction", "data": {"blink": {"input": {"seconds": 0}}}}',
            b'{"messageType": "addEventSubscription", "data": {"overheated": {}}}']
    if target == "remote_write":
        from roost.export.prompb import encode_write_request
        from roost.model import Reading, Series

        return _files("remote_write") + [
            encode_write_request([Reading(Series.of("power_watts", meter="main"), 1_700_000_000_000, 512.0),
                                  Reading(Series.of("temperature_celsius", room="lounge"), 1_700_000_015_000, 21.5)]),
            b"\xff\xff\xff\xff\x0f\x00"]
    if target == "config":
        return _files("config") + [(ROOT / "examples" / name).read_bytes()
                                   for name in ("roost.toml",) if (ROOT / "examples" / name).is_file()]
    if target == "modbus":
        # RTU answers of unit 1 to "read 2 input registers from 0" (CCCC: the right CRC), and the TCP corpus' PDUs
        from pymodbus.framer import FramerRTU

        def crc(frame: bytes) -> bytes:
            return frame + FramerRTU.compute_CRC(frame).to_bytes(2, "big")

        out = [crc(bytes.fromhex(a[:-4])) if a.endswith("CCCC") else bytes.fromhex(a)
               for a in _corpus_lines("modbus/rtu_answers.txt")]
        for frame in _corpus_lines("modbus/answers.txt"):  # TCP frames: their PDUs, framed for RTU
            hexed = frame.replace("TTTT", "0000").replace("UU", "01").replace(" ", "")
            if re.fullmatch(r"(?:[0-9a-f]{2})*", hexed) and len(hexed) > 14:
                out.append(crc(b"\x01" + bytes.fromhex(hexed)[7:]))
        return out
    raise SystemExit(f"unknown target {target!r}: expected one of {', '.join(TARGETS)}")


def dictionary(target: str) -> list[str]:
    """Tokens libFuzzer may splice into inputs (`-dict`): the words of each format, found far sooner so."""
    if target == "promql":
        from roost.promql import AGGREGATIONS, RANGE_FUNCTIONS

        return [*AGGREGATIONS, *RANGE_FUNCTIONS, "by", "without", "bool", "offset", "@", "on", "ignoring",
                "group_left", "group_right", "and", "or", "unless", "[5m]", "[1h:1m]", "=~", "!~", "!=", "==", ">=",
                "NaN", "Inf", "1e308", '"lounge"', "{__name__=", "temperature_celsius", "energy_kwh_total", "room"]
    if target in ("mqtt", "webthing_ws"):
        return ["messageType", "setProperty", "requestAction", "addEventSubscription", "data", "input", "seconds",
                "brightness", "on", "blink", "overheated", "true", "null", "NaN", "Infinity", "1e999", "temperature",
                "state", "online", "offline", "ENERGY", "Power", "Total", "Time", "2024-01-01T00:00:00Z"]
    if target == "config":
        return ["[hub]", "[store]", "[[source.modbus]]", "[[source.modbus.devices]]", "[[source.mqtt]]",
                "[source.onewire]", "[[store.retention]]", "listen", "max_series", "interval", "url", "match", "keep",
                "_file", "_env", '"15s"', '"tcp://127.0.0.1:502"', '"mqtt://127.0.0.1:1883"', "= ", "\n"]
    if target == "line":
        return [",", "=", " ", "\\ ", '"', "i", "u", "true", "t=", "1700000000000000000", "\n", "#"]
    return []


# ---------------------------------------------------------------- targets (in the child process)


def make_target(target: str, tmp: Path) -> Callable[[bytes], None]:
    """The function atheris calls with each input; it raises only for a finding."""
    import atheris

    with atheris.instrument_imports(include=["roost"]):
        import roost.api.things
        import roost.config
        import roost.export.prompb
        import roost.promql
        import roost.sources.http_push
        import roost.sources.modbus
        import roost.sources.mqtt
        import roost.sources.onewire
        import roost.sources.serial_link
        import roost.things.registry
        import roost.transfer.lineprotocol
    from roost.errors import ConfigError
    from roost.model import LABEL_NAME, METRIC_NAME, now_ms

    def storable(readings) -> None:
        for r in readings:
            assert math.isfinite(r.value), f"a non-finite reading passed: {r}"
            assert METRIC_NAME.match(r.series.metric), f"an invalid metric name passed: {r.series.metric!r}"
            assert all(LABEL_NAME.match(k) for k, _v in r.series.labels), f"an invalid label passed: {r.series}"

    if target == "line":
        push = roost.sources.http_push
        precisions = list(roost.transfer.lineprotocol.PRECISIONS)

        def one(data: bytes) -> None:
            if data[:2] == push._GZIP_MAGIC:
                try:
                    data = push._gunzip(data)
                except (push._TooLarge, push._Undecodable):
                    return
            now = now_ms()
            parsed = push._parse(data, precisions[len(data) % len(precisions)], now)
            assert all(e.line >= 1 and e.reason and str(e) for e in parsed.errors)
            storable(parsed.readings)
            assert all(0 <= r.ts_ms <= now + 2 * 86_400_000 for r in parsed.readings)
        return one

    if target == "mqtt":
        mqtt = roost.sources.mqtt
        parser = mqtt.MqttParser(mqtt.MqttSettings(
            url="mqtt://127.0.0.1",
            zigbee2mqtt=mqtt.Zigbee2MqttSettings(rooms={"lounge_sensor": "lounge"}),
            topics=[mqtt.TopicMapping("home/{room}/{metric}")],
            json=[mqtt.JsonMapping("tele/{device}/SENSOR", {"ENERGY.Power": "power_watts",
                                                             "ENERGY.Total": "energy_kwh_total"}, timestamp="Time")],
        ))

        def one(data: bytes) -> None:
            if not data:
                return
            topic = MQTT_TOPICS[data[0] % len(MQTT_TOPICS)]
            readings, problems = parser.parse(topic, data[1:], now_ms(), data[0] >= 128)
            storable(readings)
            # a payload is shown clipped: a message is its topic, its series and at most ~300 characters more
            assert all(p.reason and p.message and len(p.message) < len(topic) + len(p.key) + 300 for p in problems), problems
        return one

    if target == "w1_slave":
        onewire = roost.sources.onewire
        device = tmp / "28-00000a1b2c3d"
        device.mkdir()

        def one(data: bytes) -> None:
            (device / "w1_slave").write_bytes(data)
            try:
                value = onewire.read_millicelsius(device)
            except onewire._Unusable as err:
                assert err.reason in {"crc", "power_on_reset", "out_of_range", "unreadable", "malformed"} and str(err)
            else:
                assert -55_000 <= value <= 125_000 and value != 85_000, value
        return one

    if target == "promql":
        import numpy as np

        from roost.model import Series
        from roost.store import Store

        promql = roost.promql
        store = Store.open(tmp / "store", writer=True)
        end = now_ms()
        ts = np.arange(end - 6 * 3600_000, end, 15_000, dtype=np.int64)
        for i, room in enumerate(("lounge", "bedroom", "kitchen")):
            store.write_bulk(Series.of("temperature_celsius", room=room), ts, 20.0 + i + np.sin(ts / 3.6e6))
            store.write_bulk(Series.of("energy_kwh_total", room=room), ts, np.cumsum(np.ones(len(ts))) % 500)
        store.compact()

        def one(data: bytes) -> None:
            query = data.decode("utf-8", errors="surrogateescape")
            try:
                node = promql.parse(query)
                # as the API does: a range query over the last hour in 1-minute steps, on a read view
                view = store.read_view(vs.selector for vs, _back in promql.selections(node))
                view.run(lambda v: promql.Evaluator(v, end - 3600_000, end, 60_000).eval(node))
            except promql.PromQLError as err:
                assert str(err)
        return one

    if target == "webthing_ws":
        from test_things import desk_lamp  # the thing the WebSocket tests use

        api = roost.api.things
        loop = asyncio.new_event_loop()
        registry = roost.things.registry.ThingRegistry()
        registry.add(desk_lamp([]))
        registry.report("desk-lamp", "on", False)
        registry.report("desk-lamp", "brightness", 40)
        handler = api._ThingApi(registry, None)

        def one(data: bytes) -> None:
            client = api._Client("desk-lamp", None, may_write=bool(len(data) % 4))
            loop.run_until_complete(handler._on_message(client, data.decode("utf-8", errors="replace")))
            for task in [t for t in asyncio.all_tasks(loop) if not t.done()]:
                task.cancel()  # an action started (blink): it is not what is being fuzzed
            loop.run_until_complete(asyncio.sleep(0))
            for sent in client.queue:
                assert sent.startswith('{"messageType":'), sent
        return one

    if target == "remote_write":
        prompb = roost.export.prompb

        def one(data: bytes) -> None:
            try:
                decoded = prompb.decode_write_request(data)
            except prompb.WireError as err:  # TooLarge is one
                assert str(err)
            else:
                for r in decoded.readings:
                    assert METRIC_NAME.match(r.series.metric) or not r.series.metric, r.series
        return one

    if target == "config":
        path = tmp / "roost.toml"

        def one(data: bytes) -> None:
            path.write_bytes(data)
            try:
                roost.config.load_config(path)
            except ConfigError as err:
                assert str(path) in str(err), str(err)
        return one

    if target == "modbus":
        import serial
        from pymodbus.pdu.register_message import ReadInputRegistersRequest

        modbus, serial_link = roost.sources.modbus, roost.sources.serial_link
        master, slave = os.openpty()
        link = serial_link.SerialRtuLink(os.ttyname(slave), baudrate=9600, bytesize=8, parity="none", stopbits=1,
                                         timeout_s=0.02)
        link._port = serial.Serial(os.ttyname(slave), timeout=0.02)
        request = ReadInputRegistersRequest(address=0, count=2, dev_id=1)
        frame = link._framer.buildFrame(request)
        answer: list[bytes] = [b""]
        ready = threading.Semaphore(0)

        def meter() -> None:  # the other end of the line: reads each request, sends the input as the answer
            while True:
                got = b""
                while len(got) < len(frame):
                    got += os.read(master, 256)
                ready.acquire()
                os.write(master, answer[0])

        threading.Thread(target=meter, daemon=True).start()

        def one(data: bytes) -> None:
            answer[0] = data[:300]
            ready.release()
            try:
                response = link._transact(frame, 1)
            except (modbus.NoResponse, modbus.BadFrame) as err:
                assert isinstance(err, modbus.NoResponse) or (err.reason and str(err))
                return
            if not response.isError():
                regs = getattr(response, "registers", None) or []
                if len(regs) >= 2:
                    modbus.decode_registers(regs, "float32")
        return one

    raise SystemExit(f"unknown target {target!r}")


def child(args: argparse.Namespace) -> None:
    import atheris

    work = Path(args.child_dir)
    sys.path.insert(0, str(ROOT / "tests"))
    one = make_target(args.child, Path(tempfile.mkdtemp(dir=work)))
    atheris.Setup([sys.argv[0], f"-max_total_time={args.seconds}", f"-rss_limit_mb={args.rss_mb}",
                   f"-malloc_limit_mb={args.rss_mb}", f"-timeout={args.timeout}", "-max_len=4096",
                   f"-artifact_prefix={work}/findings/", "-print_final_stats=1",
                   *([f"-dict={work}/dict.txt"] if (work / "dict.txt").stat().st_size else []), str(work / "corpus")], one)
    atheris.Fuzz()


# ---------------------------------------------------------------- the run (parent)


def fuzz_target(target: str, seconds: int, args: argparse.Namespace, work: Path) -> dict:
    """Fuzz one target for `seconds`, restarting its process after each finding; its figures and findings."""
    (work / "corpus").mkdir(parents=True)
    (work / "findings").mkdir()
    for i, seed in enumerate(seeds(target)):
        (work / "corpus" / f"seed{i:03d}").write_bytes(seed)
    words = dictionary(target)
    (work / "dict.txt").write_text("".join(f'"{_dict_escape(w)}"\n' for w in words))
    row = {"target": target, "execs": 0, "seconds": 0.0, "cov": 0, "ft": 0, "findings": []}
    deadline = time.monotonic() + seconds
    for attempt in range(args.max_restarts + 1):
        left = int(deadline - time.monotonic())
        if left < 5:
            break
        started = time.monotonic()
        log = work / f"log{attempt}.txt"
        with log.open("wb") as out:
            rc = subprocess.call(
                [sys.executable, __file__, "--child", target, "--child-dir", str(work), "--seconds", str(left),
                 "--timeout", str(args.timeout), "--rss-mb", str(args.rss_mb)],
                stdout=out, stderr=subprocess.STDOUT, cwd=work,
            )
        row["seconds"] += time.monotonic() - started
        text = log.read_text(errors="replace")
        if m := re.search(r"stat::number_of_executed_units: (\d+)", text):
            row["execs"] += int(m[1])
        else:  # a crash: no final stats, the last status line counts
            runs = re.findall(r"^#(\d+)\s", text, re.M)
            row["execs"] += int(runs[-1]) if runs else 0
        for m in re.finditer(r"cov: (\d+) ft: (\d+)", text):
            row["cov"], row["ft"] = max(row["cov"], int(m[1])), max(row["ft"], int(m[2]))
        if rc != 0:
            row["findings"].append(_finding(text, work, rc, log))
    return row


def _dict_escape(word: str) -> str:
    """A word as a libFuzzer dictionary entry spells it between its quotes."""
    return "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}" for b in word.encode())


def _finding(text: str, work: Path, rc: int, log: Path) -> str:
    """One line naming a finding: what went wrong, where in roost, and the saved input."""
    artifacts = sorted((work / "findings").iterdir(), key=lambda p: p.stat().st_mtime)
    saved = str(artifacts[-1]) if artifacts else "no input saved"
    if m := re.search(r"=== Uncaught Python exception: ===\n(.*?)\n(?:Traceback.*?\n)((?:  .*\n)+)", text, re.S):
        frames = re.findall(r'File "([^"]*roost[^"]*)", line (\d+), in (\w+)', m[2])
        where = f" at {Path(frames[-1][0]).name}:{frames[-1][1]} {frames[-1][2]}" if frames else ""
        return f"{m[1].strip()}{where} — {saved}"
    for kind in ("timeout", "out-of-memory", "malloc", "deadly signal"):
        if kind in text:
            return f"{kind} — {saved}"
    return f"exit {rc} (see {log}) — {saved}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=f"of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per target")
    parser.add_argument("--timeout", type=int, default=5, help="seconds one input may take before it is a finding")
    parser.add_argument("--rss-mb", type=int, default=2048, help="memory one target's process may use")
    parser.add_argument("--max-restarts", type=int, default=5, help="new processes per target after findings")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (corpus grown, logs)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        import atheris  # noqa: F401
    except ImportError:
        raise SystemExit("atheris is not installed: .venv/bin/pip install -e '.[fuzz]'") from None
    if args.child:
        child(args)
        return
    targets = args.targets or TARGETS
    for t in targets:
        if t not in TARGETS:
            raise SystemExit(f"unknown target {t!r}: expected one of {', '.join(TARGETS)}")
    run_dir = Path(tempfile.mkdtemp(prefix="roost-fuzz-"))
    print(f"fuzzing {', '.join(targets)} for {args.seconds} s each; work in {run_dir}", flush=True)
    rows = []
    for t in targets:
        row = fuzz_target(t, args.seconds, args, run_dir / t)
        rows.append(row)
        print(f"  {t}: {row['execs']:,} executions, cov {row['cov']}, ft {row['ft']}, "
              f"{len(row['findings'])} finding(s)", flush=True)
    print(f"\n| target | executions | exec/s | cov (edges) | ft (features) | findings |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['target']} | {r['execs']:,} | {r['execs'] / max(r['seconds'], 1e-9):,.0f} | {r['cov']} | "
              f"{r['ft']} | {len(r['findings'])} |")
    findings = [(r["target"], f) for r in rows for f in r["findings"]]
    for target, f in findings:
        print(f"finding in {target}: {f}")
    if findings or args.keep:
        print(f"inputs and logs kept in {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    sys.exit(1 if findings else 0)


if __name__ == "__main__":
    main()
