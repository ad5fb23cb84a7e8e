"""Rules across restarts: how fast a hub re-arms what its rules promised, and what keeping it costs the disk.

    .venv/bin/python bench/rules_restart.py                                  # 500 rules, 200 pending timers
    .venv/bin/python bench/rules_restart.py --rules 100 --pending 40 --restarts 2   # a quick look

1. A `roost run` process with `--rules` rules in files of ten: each rule starts a one-hour timer
   (`self.after("1h", ...)`) when its own series `bench_go{rule="N"}` reads above 0. The bench pushes that
   reading for `--pending` of them (one `/write`) and waits until all their state files hold a timer.
2. The hub is killed with SIGKILL and started again, `--restarts` times. Measured: the time from just before
   the process is started to the engine's log line "rules: 500 of 500 armed in X ms; 200 timer(s) re-armed"
   (X is the engine's own share: loading the files, reading the saved state, judging each threshold from the
   store, re-arming the timers), and to `/healthz` answering. The log's timestamps have millisecond resolution.
3. The persisted state: the size of `rules-state/` in the data directory, in all and per rule.
4. Bytes per rule event, in this process on the same file system: the engine on the test clock with a state
   directory there (roost.testing.RuleHarness), for each kind of event a rule saves — a timer started, a timer
   fired, a threshold fired and broken, a While rule in effect and undone, a schedule fired — the files and
   bytes its state store wrote, and the bytes appended to the thing-change log (`thing-changes/`, for
   previews); and the time of one atomic write (write, fsync, rename) on this disk.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from peers import free_port  # noqa: E402

RULE = '''

class Bench{n:04d}(Rule):
    """Bench rule {n}: a one-hour timer when its series reads above 0."""

    def register_triggers(self):
        return (Threshold('bench_go{{rule="{n}"}} > 0'),)

    def action(self, *args):
        self.after("1h", self.done, {n})

    def done(self, n):
        pass
'''

ARMED = re.compile(r"^(\S+ \S+) INFO +roost\.rules: rules: (\d+) of (\d+) armed in (\d+) ms; (\d+) timer\(s\) re-armed", re.M)


class Hub:
    """`roost run` on a free port, logging to a file."""

    def __init__(self, work: Path, config: Path, n: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / f"hub-{n}.log"
        self.log = open(self.log_path, "w")
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        self.started = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roost", "run", "-c", str(config), "--data", str(work / "data"),
             "--listen", f"127.0.0.1:{self.port}"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.healthy = self._wait(self._answers, "healthz")
        found = self._wait(lambda: ARMED.search(self.log_path.read_text()), "the rules armed")
        stamp = datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # the log's local time
        self.armed = stamp - self.started
        self.rules_armed, self.rules, self.engine_ms, self.timers = (int(found[i]) for i in (2, 3, 4, 5))

    def _answers(self) -> float | None:
        try:
            urllib.request.urlopen(self.url + "/healthz", timeout=1).read()
            return time.time() - self.started
        except OSError:
            return None

    def _wait(self, probe, what: str):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the hub exited: {self.log_path.read_text()[-2000:]}")
            value = probe()
            if value:
                return value
            time.sleep(0.005)
        raise SystemExit(f"{what}: not within 120 s")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


def push(url: str, body: str) -> None:
    request = urllib.request.Request(url + "/write", data=body.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:
        assert r.status == 204, r.status


def restarts(args: argparse.Namespace, work: Path) -> None:
    rules = work / "rules"
    rules.mkdir()
    for first in range(0, args.rules, 10):
        body = "from roost.rules import Rule, Threshold\n" + "".join(
            RULE.format(n=n) for n in range(first, min(first + 10, args.rules)))
        (rules / f"bench_{first // 10:03d}.py").write_text(body)
    config = work / "roost.toml"
    config.write_text(f'[rules]\ndirectory = "{rules}"\ntimezone = "UTC"\n')
    state = work / "data" / "rules-state"

    hub = Hub(work, config, 0)
    print(f"first start: {hub.rules} rules armed {hub.armed * 1000:.0f} ms after the process started "
          f"(engine {hub.engine_ms} ms), /healthz after {hub.healthy * 1000:.0f} ms")
    push(hub.url, "".join(f'bench_go,rule={n} value=1\n' for n in range(args.pending)))
    pending = [state / f"Bench{n:04d}.json" for n in range(args.pending)]
    deadline = time.monotonic() + 60
    while not all(p.exists() and b'"timers"' in p.read_bytes() for p in pending):
        if time.monotonic() > deadline:
            raise SystemExit("the timers were not all saved within 60 s")
        time.sleep(0.05)
    hub.kill()

    armed, healthy, engine = [], [], []
    for i in range(1, args.restarts + 1):
        hub = Hub(work, config, i)
        if (hub.rules_armed, hub.timers) != (args.rules, args.pending):
            raise SystemExit(f"restart {i}: {hub.rules_armed} rules armed, {hub.timers} timers re-armed")
        armed.append(hub.armed)
        healthy.append(hub.healthy)
        engine.append(hub.engine_ms)
        hub.kill()
    print(f"\nrestart after SIGKILL, {args.restarts} times: {args.rules} rules, {args.pending} pending timers")
    print(f"  process start → all timers re-armed: median {statistics.median(armed) * 1000:.0f} ms, "
          f"max {max(armed) * 1000:.0f} ms   (target < 1000 ms)")
    print(f"  of which the rule engine:            median {statistics.median(engine):.0f} ms, max {max(engine)} ms")
    print(f"  process start → /healthz answers:    median {statistics.median(healthy) * 1000:.0f} ms")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    imports = []
    for code in ("pass", "import roost.cli, roost.hub, roost.rules, roost.api.app") * 3:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        imports.append(time.perf_counter() - started)
    bare, loaded = min(imports[0::2]), min(imports[1::2])
    print(f"  (a bare Python starts in {bare * 1000:.0f} ms; importing roost's modules takes {(loaded - bare) * 1000:.0f} ms more)")

    files = sorted(state.glob("*.json"))
    sizes = [p.stat().st_size for p in files]
    with_timer = [p.stat().st_size for p in files if b'"timers"' in p.read_bytes()]
    print(f"\npersisted state: {len(files)} files (a rule that never changed has none), {sum(sizes)} bytes in all; "
          f"per file {min(sizes)}–{max(sizes)} bytes, with a pending timer median {statistics.median(with_timer):.0f}")


async def per_event(work: Path, writes: int) -> None:
    from roost.model import Series
    from roost.rules import AbsoluteTimeTrigger, Changed, Rule, Threshold, WhileRule
    from roost.rules.state import RuleStateStore
    from roost.testing import FakeThing, RuleHarness

    class Boost(Rule):
        def register_triggers(self):
            return (Changed(self.Boost_Button, "pressed"),)

        def action(self, *args):
            if self.Boost_Button.pressed:
                self.Heater.on = True
                self.after("30m", self.off)

        def off(self):
            self.Heater.on = False

    class Hot(Rule):
        def register_triggers(self):
            return (Threshold('temperature_celsius{room="lounge"} > 25 for 10m'),)

        def action(self, *args):
            self.Alarm.count = self.Alarm.count + 1

    class FanWhileClosed(WhileRule):
        def register_triggers(self):
            return (Changed(self.Window, "closed"),)

        def action(self, *args):
            self.Fan.speed = 3
            self.Lamp.brightness = 80

    class CoffeeAtSix(Rule):
        def register_triggers(self):
            return (AbsoluteTimeTrigger("06:30", catch_up="2h"),)

        def action(self, *args):
            self.Coffee.on = True

    things = [FakeThing("Boost Button", pressed=False), FakeThing("Heater", on=False), FakeThing("Alarm", count=0),
              FakeThing("Window", closed=False), FakeThing("Fan", speed=1), FakeThing("Lamp", brightness=10),
              FakeThing("Coffee", on=False)]
    state_dir = work / "events"
    rows = []
    changes = work / "thing-changes"
    async with RuleHarness(Boost, Hot, FanWhileClosed, CoffeeAtSix, things=things, start="2024-03-06 05:00",
                           state_dir=state_dir, thing_log=changes) as house:
        store = house.engine.state
        house.engine.flush()
        await asyncio.to_thread(store.drain)

        def logged() -> int:
            house.engine.thing_log.flush()
            return sum(p.stat().st_size for p in changes.glob("*.jsonl"))

        async def event(name: str, act) -> None:
            bytes0, writes0, log0 = store.bytes_written, store.writes, logged()
            await act()
            house.engine.flush()
            await asyncio.to_thread(store.drain)  # the states are written by the store's worker thread
            rows.append((name, store.writes - writes0, store.bytes_written - bytes0, logged() - log0))

        await event("timer started (Boost)", lambda: house.change("Boost Button", pressed=True))
        await event("timer fired (Boost)", lambda: house.clock.advance("30m"))
        await event("schedule fired (CoffeeAtSix 06:30)", lambda: house.clock.advance_to("06:30"))
        await event("threshold fired (Hot)", lambda: hot(house, 26, "10m"))
        await event("threshold broken (Hot)", lambda: hot(house, 24, "1s"))
        await event("While in effect (FanWhileClosed, 2 props)", lambda: house.change("Window", closed=True))
        await event("While undone (FanWhileClosed)", lambda: house.change("Window", closed=False))
    failed = [rt.name for rt in house.engine.runtimes.values() if rt.errors_total]
    if failed:
        raise SystemExit(f"rules failed: {failed}")
    print("\nbytes written per rule event (target < 4096): the rule's own state file, replaced atomically; and the\n"
          "lines appended to thing-changes/ for previews (every change of a thing, the event's own included)")
    for name, files, size, lines in rows:
        print(f"  {name:<42} {files} file(s) {size:5d} bytes  + {lines:4d} bytes of thing changes")

    probe = RuleStateStore(work / "probe")
    body = {"enabled": True, "last_run": "2024-03-06T06:30:00+00:00", "properties": {},
            "timers": {"off": {"at": 1709706600000, "args": [1]}}}
    times = []
    for i in range(writes):
        started = time.perf_counter()
        probe.save(f"Rule{i % 50}", body)
        times.append(time.perf_counter() - started)
    times.sort()
    print(f"\none atomic state write (write + fsync + rename, {probe.bytes_written // writes} bytes) on this disk, "
          f"{writes} writes: p50 {times[len(times) // 2] * 1000:.2f} ms, p99 {times[int(len(times) * 0.99)] * 1000:.2f} ms")


async def hot(house, value: float, then: str) -> None:
    await house.reading('temperature_celsius{room="lounge"}', value)
    await house.clock.advance(then)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", type=int, default=500)
    parser.add_argument("--pending", type=int, default=200, help="rules with a pending timer")
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--writes", type=int, default=500, help="atomic writes timed for the per-write cost")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a new one in /tmp, removed)")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="roost-rules-restart-"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs, work in {work}")
    try:
        restarts(args, work)
        asyncio.run(per_event(work, args.writes))
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
