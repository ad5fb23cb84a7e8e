"""The `roost` command. Every subcommand takes -c/--config and --data, so any command can point at any store."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import logging
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

from roost import __version__
from roost.config import Settings, load_config
from roost.durations import parse_duration_ms, parse_time_ms
from roost.errors import ConfigError, RoostError
from roost.model import now_ms

log = logging.getLogger("roost")

EXAMPLES = """\
examples:
  roost demo                                   simulated house, dashboard on http://127.0.0.1:8080
  roost run -c roost.toml                      run the hub from a config file
  roost check -c roost.toml                    validate a config without starting anything
  roost query 'temperature_celsius{room="lounge"}' --since 7d --step 1h --agg max
  roost import history.csv                     bring history in (csv, parquet, Influx line protocol)
  roost export --since 30d --format parquet -o month.parquet
  roost snapshot --to /mnt/usb/roost-snap      consistent snapshot while the hub runs; roost verify DIR checks it
  roost token create --name phone --scope read an access token; the hub then asks every request for one
"""


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", type=Path, metavar="FILE", help="TOML config file (default: none, all defaults)")
    common.add_argument("--data", metavar="DIR", help="data directory, overriding the config (default ./roost-data)")
    common.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="roost",
        description="roost: a self-hosted, local-first home telemetry and automation hub.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"roost {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_text, description=description, epilog=epilog, parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = add("run", "run the hub", "Run the hub: store, HTTP API and status page, sources from the config.",
            "example:\n  roost run -c roost.toml --data /var/lib/roost")
    p.add_argument("--listen", metavar="HOST:PORT", help="override hub.listen (default 127.0.0.1:8080)")
    p.set_defaults(func=cmd_run)

    p = add("check", "validate a config", "Validate the config file (and everything it names) without starting anything.",
            "example:\n  roost check -c roost.toml      # prints every problem with file, line and key")
    p.set_defaults(func=cmd_check)

    p = add("demo", "run a simulated house", "Run the hub with a simulated house: three rooms (temperature, humidity, "
            "pressure), an energy meter (a simulated SDM120 on 127.0.0.1 that roost polls over Modbus TCP) and, when an "
            "MQTT broker answers, a zigbee2mqtt sensor in a fourth room that roost reads over MQTT. History is "
            "backfilled first, then a live reading every 15 s.",
            "examples:\n  roost demo --backfill 30d --listen 127.0.0.1:8081 --data /tmp/roost-demo\n"
            "  roost demo --mqtt mqtt://192.168.1.10:1883     the sensor on another broker\n"
            "  roost demo --no-mqtt")
    p.add_argument("--backfill", default="7d", metavar="DURATION", help="history to write first (default 7d; 0s for none)")
    p.add_argument("--listen", default=None, metavar="HOST:PORT", help="where to serve (default 127.0.0.1:8080)")
    p.add_argument("--seed", type=int, default=7, help="random seed of the simulation (default 7)")
    mqtt = p.add_mutually_exclusive_group()
    mqtt.add_argument("--mqtt", metavar="URL", help="broker for the zigbee2mqtt sensor (default: mqtt://127.0.0.1:1883 "
                      "if it answers, else no sensor)")
    mqtt.add_argument("--no-mqtt", action="store_true", help="no MQTT sensor, even if a broker answers")
    p.add_argument("--interval", default="15s", help=argparse.SUPPRESS)  # time between live readings, for tests
    p.add_argument("--no-rules", action="store_true",
                   help="without the example rules (bonded lights, wake-up fade, rainbow heartbeat, porch light)")
    p.set_defaults(func=cmd_demo)

    p = add("query", "query a range", "Aggregate the matching series into time buckets and print them.",
            "examples:\n"
            "  roost query 'temperature_celsius{room=\"lounge\"}' --since 7d --step 10m\n"
            "  roost query 'humidity_percent{room=~\"bed.*|entry\"}' --since 30d --step 1d --agg max --format csv\n"
            "  roost query power_watts --start 2024-01-01T00:00:00Z --end 2024-01-02T00:00:00Z --step 1h --format json\n"
            "Label matchers: = != =~ !~ (regular expressions match the whole value).")
    p.add_argument("selector", help='series selector, e.g. temperature_celsius{room="lounge"}')
    p.add_argument("--since", default=None, metavar="DURATION", help="range ending now (default 24h)")
    p.add_argument("--start", metavar="TIME", help="range start: RFC 3339, epoch ms, or now-7d")
    p.add_argument("--end", default="now", metavar="TIME", help="range end (default now)")
    p.add_argument("--step", default=None, metavar="DURATION", help="bucket size (default: about 100 buckets)")
    p.add_argument("--agg", default="mean", choices=["mean", "min", "max", "last", "sum", "count"])
    p.add_argument("--format", default="table", choices=["table", "csv", "json"])
    p.set_defaults(func=cmd_query)

    p = add("series", "list series", "List the stored series with their latest values.",
            "example:\n  roost series --match 'temperature_celsius'")
    p.add_argument("--match", metavar="SELECTOR", help="only series matching this selector")
    p.set_defaults(func=cmd_series)

    p = add("import", "import history", "Import readings from a file. Malformed lines are reported with their "
            "numbers and skipped; the rest is imported. Safe while the hub runs on the same --data.",
            "formats:\n"
            "  csv      header metric,<label columns...>,timestamp,value (timestamp: epoch ms or RFC 3339)\n"
            "  parquet  columns metric, timestamp, value and string label columns (what export writes)\n"
            "  line     Influx line protocol (field 'value' -> measurement, other fields -> measurement_field)\n"
            "example:\n  roost import history.csv\n  roost import telegraf.lp --format line --precision s")
    p.add_argument("file", type=Path)
    p.add_argument("--format", choices=["csv", "parquet", "line"], help="default: from the file suffix")
    p.add_argument("--precision", default="ns", choices=["ns", "us", "ms", "s"], help="line protocol timestamps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)

    p = add("export", "export readings", "Export raw readings for archival or analysis.",
            "examples:\n  roost export --since 30d --format csv > month.csv\n"
            "  roost export --match 'power_watts' --since 1y --format parquet -o power.parquet")
    p.add_argument("--since", default="30d", metavar="DURATION", help="range ending now (default 30d)")
    p.add_argument("--start", metavar="TIME")
    p.add_argument("--end", default="now", metavar="TIME")
    p.add_argument("--match", metavar="SELECTOR", help="only series matching this selector (default: all)")
    p.add_argument("--format", default="csv", choices=["csv", "parquet", "line"])
    p.add_argument("-o", "--output", type=Path, help="output file (default: standard output; required for parquet)")
    p.set_defaults(func=cmd_export)

    p = add("compact", "compact recent data now", "Compact the write-ahead log into chunks and apply retention "
            "(only when no hub runs on this --data; the hub does this by itself).")
    p.set_defaults(func=cmd_compact)

    from roost.durability.commands import add_durability_commands

    add_durability_commands(add)

    from roost.rules.commands import add_rule_commands

    add_rule_commands(add)

    from roost.access.commands import add_token_commands

    add_token_commands(add, common)
    return parser


def _settings(args: argparse.Namespace, listen: str | None = None) -> Settings:
    settings = load_config(args.config, data_dir=args.data)
    if listen:
        from dataclasses import replace

        probe = replace(settings.hub, listen=listen)
        try:
            _ = probe.listen_host, probe.listen_port
        except ValueError as err:
            raise ConfigError(f"--listen: {err}") from None
        settings = replace(settings, hub=probe)
    return settings


def _setup_logging(settings: Settings | None, verbose: bool) -> None:
    level = logging.DEBUG if verbose else getattr(logging, (settings.hub.log_level if settings else "info").upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)


def _range(args: argparse.Namespace, default_since: str) -> tuple[int, int]:
    now = now_ms()
    try:
        end = parse_time_ms(args.end, now)
        start = parse_time_ms(args.start, now) if args.start else end - parse_duration_ms(args.since or default_since)
    except ValueError as err:
        raise ConfigError(f"--start/--end/--since: {err}") from None
    if start > end:
        raise ConfigError("--start is after --end")
    return start, end


def _open_reader(settings: Settings):
    from roost.hub import store_options
    from roost.store import Store

    if not (settings.hub.data / "store.db").exists():
        raise RoostError(f"{settings.hub.data}: no roost store here — run `roost demo` or `roost run`, or pass --data DIR")
    return Store.open(settings.hub.data, store_options(settings), writer=False)


async def _serve(settings: Settings, demo_args: argparse.Namespace | None = None) -> None:
    from roost.hub import Hub

    async with contextlib.AsyncExitStack() as stack:
        demo = None
        if demo_args is not None:
            from roost.demo import DEFAULT_BROKER, Demo

            # Entered before the hub, so the simulated devices outlive the sources that read them.
            demo = await stack.enter_async_context(Demo(
                demo_args.seed, interval_ms=parse_duration_ms(demo_args.interval),
                mqtt=None if demo_args.no_mqtt else demo_args.mqtt or DEFAULT_BROKER, mqtt_required=bool(demo_args.mqtt),
            ))
            for line in demo.summary():
                print(f"demo: {line}", file=sys.stderr, flush=True)
        hub = Hub(settings)
        if demo is not None:
            demo.add_things(hub)  # before the hub starts its rules, so they find the house's lights at once
        await stack.enter_async_context(hub)
        if demo is not None:
            await demo.start(hub, parse_duration_ms(demo_args.backfill))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, hub.stop)
        # SIGHUP must not kill the hub; sources that rescan on it (1-Wire) install their own handler while they run.
        loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP: no source rescans on it"))
        print(f"roost is running: open {hub.url}/ (Ctrl-C to stop)", file=sys.stderr, flush=True)
        await hub.run()
        log.info("stopping")


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args, args.listen)
    _setup_logging(settings, args.verbose)
    asyncio.run(_serve(settings))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from roost.sources.mqtt import split_url

    settings = _settings(args, args.listen)
    try:
        parse_duration_ms(args.backfill)
    except ValueError as err:
        raise ConfigError(f"--backfill: {err}") from None
    try:
        interval = parse_duration_ms(args.interval)
    except ValueError as err:
        raise ConfigError(f"--interval: {err}") from None
    if interval < 100:
        raise ConfigError(f"--interval: expected at least 100ms, got {args.interval}")
    if args.mqtt:
        try:
            split_url(args.mqtt)
        except ValueError as err:
            raise ConfigError(f"--mqtt: {err}") from None
    if settings.rules.directory is None and not args.no_rules:
        from dataclasses import replace

        import roost.demo

        rules = Path(roost.demo.__file__).parent / "rules"  # bonded lights, wake-up fade, rainbow, porch light
        settings = replace(settings, rules=replace(settings.rules, directory=rules))
    _setup_logging(settings, args.verbose)
    asyncio.run(_serve(settings, demo_args=args))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from roost.rules.commands import check as check_rules

    problems, notes = check_rules(settings)
    if problems:
        raise ConfigError(problems)
    where = settings.source_file or "defaults (no config file given)"
    print(f"{where}: ok — data {settings.hub.data}, listening on {settings.hub.listen_host}:{settings.hub.listen_port}")
    for note in notes:
        print(note)
    return 0


def _fmt_ts(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_query(args: argparse.Namespace) -> int:
    from roost.selector import Selector

    settings = _settings(args)
    start, end = _range(args, "24h")
    try:
        step = parse_duration_ms(args.step) if args.step else max(1000, (end - start) // 100)
    except ValueError as err:
        raise ConfigError(f"--step: {err}") from None
    selector = Selector.parse(args.selector)
    with _open_reader(settings) as store:
        results = store.query(selector, start, end, step, args.agg)
    out = sys.stdout
    if args.format == "json":
        import orjson

        payload = [{"series": str(r.series), "ts": r.ts, "values": r.values} for r in results]
        out.write(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
    elif args.format == "csv":
        w = csv.writer(out)
        w.writerow(["series", "timestamp", "time", args.agg])
        for r in results:
            for t, v in zip(r.ts.tolist(), r.values.tolist()):
                w.writerow([str(r.series), t, _fmt_ts(t), repr(v)])
    else:
        for r in results:
            out.write(f"{r.series}  ({len(r.ts)} buckets of {args.step or f'{step} ms'}, {args.agg})\n")
            for t, v in zip(r.ts.tolist(), r.values.tolist()):
                out.write(f"  {_fmt_ts(t)}  {v:.6g}\n")
    if not results:
        print(f"no series match {args.selector}", file=sys.stderr)
    return 0


def cmd_series(args: argparse.Namespace) -> int:
    from roost.selector import Selector

    settings = _settings(args)
    selector = Selector.parse(args.match) if args.match else None
    with _open_reader(settings) as store:
        latest = store.latest()
        for _sid, series in store.series(selector):
            if series in latest:
                ts, value = latest[series]
                print(f"{series}  {value:g}  {_fmt_ts(ts)}")
            else:
                print(f"{series}  -")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from roost.transfer.imports import import_file

    settings = _settings(args)
    _setup_logging(settings, args.verbose)
    if not args.file.exists():
        raise RoostError(f"{args.file}: no such file")
    settings.hub.data.mkdir(parents=True, exist_ok=True)
    from roost.hub import store_options
    from roost.store import Store

    with Store.open(settings.hub.data, store_options(settings), writer=False) as store:
        report = import_file(store, args.file, args.format, progress=not args.no_progress, precision=args.precision)
    for err in report.errors:
        print(f"{args.file}:{err.line}: {err.message}", file=sys.stderr)
    if report.skipped_lines > len(report.errors):
        print(f"... {report.skipped_lines - len(report.errors)} more malformed lines", file=sys.stderr)
    rate = report.samples / report.seconds if report.seconds else 0
    print(
        f"imported {report.samples} samples of {report.series} series in {report.seconds:.1f} s "
        f"({rate:,.0f} samples/s); {report.skipped_lines} malformed line(s) skipped"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from roost.selector import Selector
    from roost.transfer.exports import export

    settings = _settings(args)
    start, end = _range(args, "30d")
    if args.format == "parquet" and args.output is None:
        raise ConfigError("--format parquet needs -o FILE (Parquet is not written to a terminal)")
    selector = Selector.parse(args.match) if args.match else None
    with _open_reader(settings) as store:
        target = args.output if args.output else (sys.stdout if args.format != "parquet" else None)
        report = export(store, selector, start, end + 1, args.format, target)
    print(f"exported {report.samples} samples of {report.series} series", file=sys.stderr)
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from roost.hub import store_options
    from roost.store import Store

    settings = _settings(args)
    _setup_logging(settings, args.verbose)
    with Store.open(settings.hub.data, store_options(settings), writer=True) as store:
        n = store.compact()
        stats = store.apply_retention()
        store.collect_garbage()
        store.checkpoint()
    print(f"compacted {n} samples; retention: {stats}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except RoostError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        with contextlib.suppress(Exception):
            sys.stdout.close()
        return 0
