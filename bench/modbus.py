"""How punctually roost polls 200 Modbus meters, and at what CPU cost, next to a plain sequential pymodbus loop.

    PYTHONPATH=src python bench/modbus.py [--seconds 60] [--meters 200] [--servers 20] [--registers 10]

The meters live in a separate process (this script with --simulate): `--servers` Modbus TCP servers on
127.0.0.1, each with meters/servers unit ids, every unit holding `--registers` float32 input registers. The
simulator notes the wall-clock time each request arrives, so both pollers are judged by the same clock.

  roost       a Hub with one [[source.modbus]] per server (its units as devices), every device polled each
              `--interval`; readings go into the hub's store as in production (fsync on).
  sequential  the usual script, with pymodbus' synchronous client: each interval, read every meter in turn,
              then sleep the remainder of the interval.

A poll is *on time* when its request reaches the meter within 100 ms after its tick. Ticks are the poller's
own grid: for roost each device's fixed grid (wall-clock multiples of the interval plus the device's phase),
for the sequential loop start + k * interval from its first cycle. A tick without a request (skipped, or
drifted past) counts as late. CPU is the bench process' CPU time (time.process_time: the hub with its
store and HTTP-less event loop, or the loop) over the measured wall time, in % of one core; the simulator's
CPU is not included.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

ON_TIME_S = 0.1
EARLY_S = 0.005  # a request may reach the meter a hair before the tick the event loop woke for


# ---------------------------------------------------------------- the simulator (its own process)


async def simulate(servers: int, units: int, registers: int) -> None:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    arrivals: list[tuple[int, int, float]] = []
    running = []
    ports = []
    values = [230.0 + i for i in range(registers)]
    for s in range(servers):

        def seen(sending, pdu, s=s):
            if not sending:
                arrivals.append((s, pdu.dev_id, time.time()))
            return pdu

        devices = [SimDevice(u, simdata=SimData(0, values=values, datatype=DataType.FLOAT32)) for u in range(1, units + 1)]
        server = ModbusTcpServer(devices, address=("127.0.0.1", 0), trace_pdu=seen)
        await server.serve_forever(background=True)
        ports.append(server.transport.sockets[0].getsockname()[1])
        running.append(server)
    print(json.dumps(ports), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command, _, arg = line.strip().partition(" ")
        if command == "dump":
            Path(arg).write_text(json.dumps(arrivals))
            arrivals.clear()
        print("ok", flush=True)
    for server in running:
        await server.shutdown()


class Simulator:
    def __init__(self, servers: int, units: int, registers: int):
        cmd = [sys.executable, __file__, "--simulate", str(servers), str(units), str(registers)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ports = json.loads(self.proc.stdout.readline())

    def arrivals(self, path: Path) -> dict[tuple[int, int], list[float]]:
        """Request arrival times by (server, unit) since the last call."""
        self.proc.stdin.write(f"dump {path}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"
        out: dict[tuple[int, int], list[float]] = {}
        for s, unit, t in json.loads(path.read_text()):
            out.setdefault((s, unit), []).append(t)
        return out

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# ---------------------------------------------------------------- judging punctuality


def punctuality(arrivals, grids, t0: float, t1: float, interval: float):
    """(share of ticks on time, lateness of each tick that got a request) over ticks in [t0, t1 - interval]."""
    on_time = total = 0
    lateness = []
    for meter, phase in grids.items():
        times = sorted(arrivals.get(meter, []))
        first = math.ceil((t0 - phase) / interval)
        last = math.floor((t1 - interval - phase) / interval)
        for k in range(first, last + 1):
            tick = phase + k * interval
            total += 1
            i = bisect.bisect_left(times, tick - EARLY_S)
            if i < len(times) and times[i] < tick + interval - EARLY_S:
                late = times[i] - tick
                lateness.append(late)
                on_time += late <= ON_TIME_S
    return on_time / max(total, 1), sorted(lateness), total


def _pct(values, q):
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


# ---------------------------------------------------------------- roost


async def run_roost(sim: Simulator, args, workdir: Path):
    from roost.config import load_config
    from roost.hub import Hub
    from roost.sources import SourceSettings
    from roost.sources.modbus import ModbusDevice, ModbusRegister, ModbusSettings, tick_phase_s

    units = args.meters // args.servers
    registers = [
        ModbusRegister(metric=f"value_{k}", address=2 * k, type="input", data_type="float32")
        for k in range(args.registers)
    ]
    sources = [
        ModbusSettings(
            url=f"tcp://127.0.0.1:{port}",
            name=f"gw{s}",
            interval_ms=int(args.interval * 1000),
            devices=[ModbusDevice(name=f"m{s}-{u}", unit=u, registers=list(registers)) for u in range(1, units + 1)],
        )
        for s, port in enumerate(sim.ports)
    ]
    settings = load_config(None, data_dir=str(workdir / "data"))
    settings = replace(settings, source=SourceSettings(modbus=sources))
    grids = {
        (s, u): tick_phase_s(f"gw{s}", f"m{s}-{u}", args.interval)
        for s in range(args.servers) for u in range(1, units + 1)
    }
    async with Hub(settings, serve_http=False) as hub:
        await asyncio.sleep(args.warmup)
        await asyncio.to_thread(sim.arrivals, workdir / "arrivals.json")  # the event loop keeps polling meanwhile
        readings0, cpu0, t0 = hub.metrics.readings._value.get(), time.process_time(), time.time()
        await asyncio.sleep(args.seconds)
        readings1, cpu1, t1 = hub.metrics.readings._value.get(), time.process_time(), time.time()
        arrivals = await asyncio.to_thread(sim.arrivals, workdir / "arrivals.json")
    share, lateness, ticks = punctuality(arrivals, grids, t0, t1, args.interval)
    return share, lateness, ticks, (cpu1 - cpu0) / (t1 - t0), (readings1 - readings0) / (t1 - t0)


# ---------------------------------------------------------------- the sequential script


def run_sequential(sim: Simulator, args, workdir: Path):
    from pymodbus.client import ModbusTcpClient

    units = args.meters // args.servers
    clients = [ModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0) for port in sim.ports]
    for c in clients:
        c.connect()
    meters = [(s, u) for s in range(args.servers) for u in range(1, units + 1)]
    sim.arrivals(workdir / "arrivals.json")
    values = 0
    cpu0, t0 = time.process_time(), time.time()
    start = t0
    while start < t0 + args.seconds:
        for s, unit in meters:
            rr = clients[s].read_input_registers(0, count=2 * args.registers, device_id=unit)
            values += len(clients[s].convert_from_registers(rr.registers, clients[s].DATATYPE.FLOAT32))
        time.sleep(max(0.0, args.interval - (time.time() - start)))
        start = time.time()
    cpu1, t1 = time.process_time(), time.time()
    arrivals = sim.arrivals(workdir / "arrivals.json")
    for c in clients:
        c.close()
    grids = {m: t0 % args.interval for m in meters}
    share, lateness, ticks = punctuality(arrivals, grids, t0, t1, args.interval)
    return share, lateness, ticks, (cpu1 - cpu0) / (t1 - t0), values / (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="measured time per poller (default 60)")
    parser.add_argument("--meters", type=int, default=200)
    parser.add_argument("--servers", type=int, default=20, help="TCP servers the meters are spread over")
    parser.add_argument("--registers", type=int, default=10, help="float32 values per meter")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--simulate", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.simulate:
        asyncio.run(simulate(*args.simulate))
        return
    if args.meters % args.servers:
        parser.error("--meters must be a multiple of --servers")

    sim = Simulator(args.servers, args.meters // args.servers, args.registers)
    try:
        with tempfile.TemporaryDirectory(prefix="roost-bench-modbus-") as tmp:
            rows = [
                ("roost (asyncio, fixed grid)", asyncio.run(run_roost(sim, args, Path(tmp)))),
                ("sequential pymodbus loop", run_sequential(sim, args, Path(tmp))),
            ]
    finally:
        sim.stop()

    print(f"{args.meters} meters ({args.servers} TCP servers x {args.meters // args.servers} units) x "
          f"{args.registers} float32 registers, every {args.interval:g} s, {args.seconds:g} s measured each")
    print(f"{'poller':30s} {'on time':>8s} {'ticks':>7s} {'p50 late':>9s} {'p99 late':>9s} {'max late':>9s} "
          f"{'CPU':>7s} {'values/s':>9s}")
    for name, (share, lateness, ticks, cpu, rate) in rows:
        print(f"{name:30s} {share:8.2%} {ticks:7d} {_pct(lateness, .5) * 1e3:7.1f}ms {_pct(lateness, .99) * 1e3:7.1f}ms "
              f"{(lateness[-1] if lateness else float('nan')) * 1e3:7.1f}ms {cpu:7.1%} {rate:9.0f}")
    print(f"on time = the request reached the meter within {ON_TIME_S * 1e3:.0f} ms after its tick; "
          "CPU = process CPU time / wall time (one core = 100 %); values/s = readings stored (roost: values + up "
          "+ poll duration) or values decoded (loop)")


if __name__ == "__main__":
    main()
