"""End-to-end latency of rules: a sensor publish through a threshold rule to the actuator's `/set` on the broker.

    PYTHONPATH=src python bench/rules.py [--rules 500] [--rate 100] [--seconds 30]

Starts its own mosquitto on a free 127.0.0.1 port and an in-process hub with one zigbee2mqtt `[[source.mqtt]]`
and a rules directory of `--rules` While rules, rule i being

    Threshold('temperature_celsius{device="sensor<i>"} > 25')  →  fan<i>.on = True (undone below 25)

The fans are zigbee2mqtt things (roost's own MQTT→thing wiring: a write publishes `zigbee2mqtt/fan<i>/set`).
A driver process publishes sensor readings at `--rate` per second, round robin over the sensors, each crossing
the threshold the other way than last time, and times each one until the matching `/set` arrives. The same
driver measures the bare broker round trip (publish and receive one message, same rate, same QoS 1), the two
alternating in `--blocks` blocks, so that a busy moment of a shared machine does not fall on one of them only.
Readings go through the hub's real ingest path on their way to the rules: the WAL write, then the bus (the
group commit's fsync follows, before anything is acknowledged; `--no-fsync` leaves it out).
"""

import argparse
import asyncio
import json
import shutil
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
from roost.rules.settings import RulesSettings  # noqa: E402
from roost.sources import SourceSettings  # noqa: E402
from roost.sources.mqtt import MqttSettings, Zigbee2MqttSettings  # noqa: E402

DRIVER = r'''
import asyncio, json, socket, sys, time
import aiomqtt

NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)  # the peer at its best: no Nagle delay on small packets

port, rules, rate, seconds, blocks = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])

def stats(samples):
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] * 1000
    return {"n": len(s), "p50": pick(0.50), "p99": pick(0.99), "max": s[-1] * 1000}

async def paced(first, count, send):
    start = time.perf_counter()
    for k in range(first, first + count):
        delay = start + (k - first) / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(k)

class Bare:
    # the broker alone: publish a message and receive it back
    def __init__(self, client):
        self.client, self.sent, self.got = client, {}, []

    async def receive(self):
        async for message in self.client.messages:
            k = int(message.payload)
            self.got.append(time.perf_counter() - self.sent.pop(k))

    async def send(self, k):
        self.sent[k] = time.perf_counter()
        await self.client.publish(f"bench/echo/{k % rules}", str(k), qos=1)

class ThroughRules:
    # a sensor reading crossing its threshold, until its fan's /set arrives
    def __init__(self, client):
        self.client, self.sent, self.got, self.hot = client, {}, [], [False] * rules

    async def receive(self):
        async for message in self.client.messages:
            fan = str(message.topic).split("/")[1]
            t = self.sent.pop((fan, json.loads(message.payload).get("state")), None)
            if t is not None:
                self.got.append(time.perf_counter() - t)

    async def send(self, k):
        i = k % rules
        self.hot[i] = not self.hot[i]
        self.sent[(f"fan{i}", "ON" if self.hot[i] else "OFF")] = time.perf_counter()
        await self.client.publish(f"zigbee2mqtt/sensor{i}", json.dumps({"temperature": 30 if self.hot[i] else 20}), qos=1)

async def settle(path, deadline_s=30):
    deadline = time.perf_counter() + deadline_s
    while path.sent and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)

async def main():
    # Bare and through-rules alternate in blocks, so a busy moment of the machine falls on both alike.
    per_block = int(rate * seconds / blocks)
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-driver", socket_options=NODELAY) as b_client, \
               aiomqtt.Client("127.0.0.1", port, identifier="bench-driver-2", socket_options=NODELAY) as r_client:
        await b_client.subscribe("bench/echo/#", qos=1)
        await r_client.subscribe("zigbee2mqtt/+/set", qos=1)
        bare, through = Bare(b_client), ThroughRules(r_client)
        readers = [asyncio.create_task(bare.receive()), asyncio.create_task(through.receive())]
        for block in range(blocks):
            for path in (bare, through):
                await paced(block * per_block, per_block, path.send)
                await settle(path)
        for reader in readers:
            reader.cancel()
    print(json.dumps({"bare": stats(bare.got), "rules": stats(through.got), "lost": len(through.sent)}))

asyncio.run(main())
'''

RULE = '''
class Fan{i}(WhileRule):
    """fan{i} on while sensor{i} is above 25 degrees."""

    def register_triggers(self):
        return (Threshold('temperature_celsius{{device="sensor{i}"}} > 25'),)

    def action(self, *args):
        self.fan{i}.on = True
'''


async def bench(args: argparse.Namespace, work: Path, port: int) -> dict:
    rules = work / "rules"
    rules.mkdir()
    (rules / "fans.py").write_text(
        "from roost.rules import Threshold, WhileRule\n" + "".join(RULE.format(i=i) for i in range(args.rules))
    )
    settings = load_config(None, data_dir=str(work / "data"))
    mqtt = MqttSettings(url=f"mqtt://127.0.0.1:{port}", name="z2m", client_id="roost-bench",
                        zigbee2mqtt=Zigbee2MqttSettings())
    settings = replace(
        settings, hub=replace(settings.hub, listen="127.0.0.1:0"), source=SourceSettings(mqtt=[mqtt]),
        rules=RulesSettings(directory=rules), store=replace(settings.store, fsync=args.fsync),
    )
    async with Hub(settings) as hub:
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-setup") as client:
            deadline = time.monotonic() + 120
            def ready() -> bool:
                things = hub.things.by_attribute()
                return all(f"fan{i}" in things for i in range(args.rules)) and all(
                    rt.armed for rt in hub.rules.runtimes.values())

            while not ready():
                for i in range(args.rules):  # the fans appear as things once they publish a state
                    await client.publish(f"zigbee2mqtt/fan{i}", json.dumps({"state": "OFF"}), qos=1)
                    await client.publish(f"zigbee2mqtt/sensor{i}", json.dumps({"temperature": 20}), qos=1)
                await asyncio.sleep(1)
                if time.monotonic() > deadline:
                    raise SystemExit("the rules did not arm: their things did not appear")
        driver = await asyncio.create_subprocess_exec(
            sys.executable, "-c", DRIVER, str(port), str(args.rules), str(args.rate), str(args.seconds), str(args.blocks),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await driver.communicate()
        return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0, help="sensor events per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="of each measurement (bare, through the rules)")
    parser.add_argument("--blocks", type=int, default=6, help="bare and through-rules alternate in this many blocks")
    parser.add_argument("--no-fsync", dest="fsync", action="store_false",
                        help="store.fsync = false: take the disk's sync time out of the path")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="roost-bench-rules-"))
    broker = mosquitto(work, "set_tcp_nodelay true")
    try:
        result = asyncio.run(bench(args, work, broker.port))
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    bare, rules = result["bare"], result["rules"]
    target = 2 * bare["p99"] + 5
    print(f"{args.rules} rules loaded, {args.rate:g} events/s for {args.seconds:g} s")
    print(f"  bare broker round trip  p50 {bare['p50']:6.2f} ms  p99 {bare['p99']:6.2f} ms  max {bare['max']:6.2f} ms  (n={bare['n']})")
    print(f"  sensor → rule → /set    p50 {rules['p50']:6.2f} ms  p99 {rules['p99']:6.2f} ms  max {rules['max']:6.2f} ms  "
          f"(n={rules['n']}, lost {result['lost']})")
    verdict = "met" if rules["p99"] <= target else "MISSED"
    print(f"  target p99 <= 2 x bare p99 + 5 ms = {target:.2f} ms: {verdict}")


if __name__ == "__main__":
    main()
