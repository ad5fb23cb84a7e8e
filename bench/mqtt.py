"""End-to-end ingest rate of the mqtt source: zigbee2mqtt messages through mosquitto into a hub's store.

    PYTHONPATH=src python bench/mqtt.py [--messages 20000] [--devices 50] [--runs 2]

Starts its own mosquitto on a free 127.0.0.1 port (`max_queued_messages 0`, so nothing is dropped), and a
publisher process that sends every message at QoS 1 from a raw socket (fast enough not to be the bottleneck)
once told to go. Each run times from "go" until the last message is handled, for two subscribers in turn:

- peer: a plain aiomqtt subscriber (QoS 1, persistent session) that only counts messages — the floor any
  aiomqtt-based source stands on;
- roost: an in-process Hub with one `[[source.mqtt]]` zigbee2mqtt source, until every reading is stored
  (written to the WAL and synced).

It prints messages/s and readings/s, and the subscriber's CPU time per message, which a busy shared machine
distorts less than wall time.
"""

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from peers import mosquitto  # noqa: E402
from roost.config import load_config  # noqa: E402
from roost.hub import Hub  # noqa: E402
from roost.sources import SourceSettings  # noqa: E402
from roost.sources.mqtt import MqttSettings, Zigbee2MqttSettings  # noqa: E402

FIELDS = {"temperature": 21.5, "humidity": 45.2, "pressure": 1013.1, "battery": 97, "voltage": 3005, "linkquality": 120}
EXTRA = {"last_seen": "2024-01-01T00:00:00Z", "update": {"state": "idle"}}  # as z2m sends them; not readings

PUBLISHER = r'''
import socket, struct, sys
port, count, devices, payload = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()

def length(n):
    out = bytearray()
    while True:
        n, b = divmod(n, 128)
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)

def text(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b

def packet(kind, body):
    return bytes([kind]) + length(len(body)) + body

s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.sendall(packet(0x10, text("MQTT") + bytes([4, 2]) + struct.pack("!H", 60) + text("bench-publisher")))
assert s.recv(4)[:2] == b"\x20\x02", "no CONNACK"
messages = [packet(0x32, text(f"zigbee2mqtt/sensor_{i % devices}") + struct.pack("!H", i % 1000 + 1) + payload)
            for i in range(count)]
print("ready", flush=True)
sys.stdin.readline()
for start in range(0, count, 1000):  # 1000 QoS 1 messages in flight, then wait for their PUBACKs
    chunk = messages[start:start + 1000]
    s.sendall(b"".join(chunk))
    need, got = 4 * len(chunk), 0
    while got < need:
        got += len(s.recv(65536))
s.sendall(b"\xe0\x00")
'''


class Publisher:
    def __init__(self, port: int, count: int, devices: int):
        payload = json.dumps(FIELDS | EXTRA)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, str(port), str(count), str(devices), payload],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout.readline().strip() == "ready"

    def go(self) -> float:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return time.perf_counter()

    def wait(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=120)


async def until(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the run did not finish")
        await asyncio.sleep(0.002)


async def run_peer(port: int, count: int, devices: int, run: int) -> tuple[float, float]:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-peer-{run}", clean_session=False) as client:
        await client.subscribe("zigbee2mqtt/#", qos=1)
        publisher = Publisher(port, count, devices)
        seen = 0
        cpu = time.process_time()
        start = publisher.go()
        async for _message in client.messages:
            seen += 1
            if seen == count:
                break
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        publisher.wait()
    return elapsed, cpu


async def run_roost(port: int, count: int, devices: int, run: int, data: Path) -> tuple[float, float]:
    settings = load_config(None, data_dir=str(data))
    source = MqttSettings(url=f"mqtt://127.0.0.1:{port}", name="z2m", client_id=f"bench-roost-{run}",
                          zigbee2mqtt=Zigbee2MqttSettings())
    settings = replace(settings, source=SourceSettings(mqtt=[source]))
    async with Hub(settings, serve_http=False) as hub:
        await until(lambda: hub.metrics.source_up.labels(source="z2m")._value.get() == 1, 10)
        publisher = Publisher(port, count, devices)
        stored = hub.metrics.readings._value
        cpu = time.process_time()
        start = publisher.go()
        await until(lambda: stored.get() >= count * len(FIELDS))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        publisher.wait()
        assert stored.get() == count * len(FIELDS), stored.get()
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="roost-bench-mqtt-"))
    broker = mosquitto(work)
    port = broker.port
    try:
        n = args.messages
        print(f"{n} zigbee2mqtt messages ({len(FIELDS)} numeric fields each) from {args.devices} devices, "
              f"QoS 1, mosquitto on 127.0.0.1:{port}")
        print(f"{'subscriber':<34} {'messages/s':>11} {'readings/s':>11} {'cpu µs/msg':>11}")
        for run in range(args.runs):
            elapsed, cpu = asyncio.run(run_peer(port, n, args.devices, run))
            print(f"{'peer: plain aiomqtt subscriber':<34} {n / elapsed:>11,.0f} {'-':>11} {cpu / n * 1e6:>11.1f}")
            elapsed, cpu = asyncio.run(run_roost(port, n, args.devices, run, work / f"data-{run}"))
            print(f"{'roost: mqtt source → hub store':<34} {n / elapsed:>11,.0f} "
                  f"{n * len(FIELDS) / elapsed:>11,.0f} {cpu / n * 1e6:>11.1f}")
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
