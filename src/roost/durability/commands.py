"""The durability subcommands of `roost`: snapshot, verify, backup init|now|list, restore, standby, promote."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime, timezone
from pathlib import Path

from roost.errors import ConfigError, RoostError


def add_durability_commands(add) -> None:
    """Register the subcommands with `add(name, help, description, epilog)` of roost.cli.build_parser."""
    p = add("snapshot", "take a consistent snapshot", "Copy the store into a new directory while the hub keeps "
            "running: the write-ahead log is cut first, then the database is copied from one read snapshot, then the "
            "data files up to their committed sizes; a manifest (files, sizes, sha256, counts) is written last.",
            "examples:\n  roost snapshot --data /var/lib/roost --to /mnt/usb/roost-2024-06-01\n"
            "  roost snapshot --dir /mnt/usb/roost-snapshots --keep-daily 7 --keep-weekly 4   # new one, then prune")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", type=Path, metavar="DIR", help="the new snapshot directory")
    where.add_argument("--dir", type=Path, metavar="DIR", help="a directory of snapshots: add one named by its UTC time")
    for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        p.add_argument(f"--keep-{name}", type=int, default=0, metavar="N", help=f"with --dir: keep {name} snapshots (as restic counts them)")
    p.add_argument("--keep-within", default="", metavar="DURATION", help="with --dir: keep all within e.g. 30d, 1y6m of the newest")
    p.set_defaults(func=cmd_snapshot)

    p = add("verify", "check a snapshot", "Check every file of a snapshot against its manifest (size, sha256), then "
            "open it read-only and check it answers a count query with the manifest's number of samples.",
            "example:\n  roost verify /mnt/usb/roost-2024-06-01     # exit 1 naming each bad file")
    p.add_argument("snapshot", type=Path)
    p.set_defaults(func=cmd_verify)

    p = add("backup", "restic backups", "Back the store up with restic ([backup] in the config): `init` creates the "
            "repository, `now` snapshots the store and runs `restic backup` then `restic forget --prune` with the keep "
            "policy, `list` shows the backups. The hub also runs `now` daily at [backup] schedule.",
            "examples:\n  roost backup init -c roost.toml\n  roost backup now -c roost.toml\n  roost backup list -c roost.toml")
    p.add_argument("action", choices=["init", "now", "list"])
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_backup)

    p = add("restore", "restore a snapshot or backup", "Restore a snapshot directory or a restic backup into a new "
            "store directory (--to), or run a restore drill (--verify): restore into a temporary directory and compare "
            "range queries over every series with the live store at --data (a running hub is fine).",
            "examples:\n  roost restore --from restic --to /var/lib/roost-restored -c roost.toml\n"
            "  roost restore --from restic:1a2b3c4d --to /tmp/roost-old -c roost.toml\n"
            "  roost restore --from /mnt/usb/roost-2024-06-01 --to /var/lib/roost\n"
            "  roost restore --verify -c roost.toml          # drill: the latest backup against the live store")
    p.add_argument("--from", dest="source", default="restic", metavar="SOURCE",
                   help="restic (latest backup), restic:ID, or a snapshot directory (default: restic)")
    p.add_argument("--to", type=Path, metavar="DIR", help="the new store directory")
    p.add_argument("--verify", action="store_true", help="restore drill: compare with the live store instead of keeping it")
    p.set_defaults(func=cmd_restore)

    p = add("standby", "follow a primary as a warm standby", "Follow a primary hub continuously: copy its store "
            "once, then apply its write-ahead log as it is written, acknowledging each batch once it is durable here. "
            "Serves /metrics (roost_replication_lag_seconds) and /api/replication/status on --listen.",
            "examples:\n  roost standby --primary http://10.0.0.2:8080 --token-file /etc/roost/token --data /var/lib/roost\n"
            "  roost standby --primary http://10.0.0.3:8080 --token-file token --resync   # a former primary rejoins")
    p.add_argument("--primary", required=True, metavar="URL", help="the primary hub's base URL")
    p.add_argument("--token-file", required=True, type=Path, metavar="FILE", help="the primary's [replication] token")
    p.add_argument("--mode", choices=["async", "sync"], default=None, help="informational: the primary's [replication] mode decides")
    p.add_argument("--listen", default="127.0.0.1:8081", metavar="HOST:PORT", help="where to serve metrics (default 127.0.0.1:8081)")
    p.add_argument("--resync", action="store_true", help="replace this store with a copy of the primary's (a former primary)")
    p.set_defaults(func=cmd_standby)

    p = add("promote", "turn a standby into the primary", "Promote a stopped standby: write a promotion record with a "
            "new epoch, after which `roost run` serves as the primary. The former primary then refuses to run as primary "
            "while it sees this one (its [replication] peer), until resynced with `roost standby --resync`.",
            "example:\n  roost promote --data /var/lib/roost && roost run -c roost.toml --data /var/lib/roost")
    p.set_defaults(func=cmd_promote)


def _settings(args):
    from roost.cli import _settings as settings_of, _setup_logging

    settings = settings_of(args)
    _setup_logging(settings, args.verbose)
    return settings


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


def cmd_snapshot(args: argparse.Namespace) -> int:
    from roost.durability.retention import KeepPolicy, apply_policy
    from roost.durability.snapshot import Manifest, take_snapshot

    settings = _settings(args)
    try:
        policy = KeepPolicy(*(getattr(args, f"keep_{n}") for n in ("last", "hourly", "daily", "weekly", "monthly", "yearly")),
                            within=args.keep_within)
        if args.keep_within:
            from roost.durability.retention import parse_within

            parse_within(args.keep_within)
    except ValueError as err:
        raise ConfigError(f"--keep-within: {err}") from None
    if args.to is not None and not policy.empty:
        raise ConfigError("--keep-* go with --dir (a directory of snapshots), not --to")
    target = args.to
    if target is None:
        args.dir.mkdir(parents=True, exist_ok=True)
        target = args.dir / datetime.now(timezone.utc).strftime("roost-%Y%m%dT%H%M%S%fZ")
    m = take_snapshot(settings.hub.data, target)
    print(f"snapshot {target}: {m.series} series, {m.samples} samples, {len(m.files)} files, {_human(m.size)}, "
          f"cut at {m.created_at}, {m.seconds:.2f} s")
    if args.dir is not None and not policy.empty:
        import shutil

        snaps = [(d, Manifest.load(d)) for d in sorted(args.dir.iterdir()) if (d / "manifest.json").exists()]
        times = [datetime.fromtimestamp(m.created_ms / 1000, timezone.utc) for _d, m in snaps]
        decisions = {d.time: d for d in apply_policy(times, policy)}
        for (d, _m), t in zip(snaps, times):
            if not decisions[t].keep:
                shutil.rmtree(d)
                print(f"removed {d} ({policy})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from roost.durability.snapshot import verify_snapshot

    _settings(args)
    result = verify_snapshot(args.snapshot)
    for problem in result.problems:
        print(f"error: {problem}", file=sys.stderr)
    if not result.ok:
        return 1
    m = result.manifest
    print(f"{args.snapshot}: ok — {len(m.files)} files, {_human(m.size)}, {m.series} series, {result.samples} samples "
          f"(roost {m.roost_version}, cut at {m.created_at})")
    return 0


def _progress(enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None

    def show(status: dict) -> None:
        pct = 100 * float(status.get("percent_done", 0))
        done, total = status.get("bytes_done", 0), status.get("total_bytes", 0)
        print(f"\rbackup: {pct:5.1f} %  {_human(done)} of {_human(total)}", end="", file=sys.stderr, flush=True)

    return show


def cmd_backup(args: argparse.Namespace) -> int:
    from roost.durability.backup import record_in_store, restic_for, run_backup

    settings = _settings(args)
    data = settings.hub.data
    if args.action == "init":
        created = asyncio.run(restic_for(data, settings.backup).init())
        print(f"{settings.backup.repository}: {'created' if created else 'exists already'}")
        return 0
    if args.action == "list":
        restic = restic_for(data, settings.backup)
        snaps = asyncio.run(restic.snapshots(host=settings.backup.host, tags=("roost",)))
        for s in snaps:
            print(f"{s.short_id}  {s.time.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S}Z  {s.host}  {','.join(s.tags)}")
        print(f"{len(snaps)} backup(s) in {settings.backup.repository}", file=sys.stderr)
        return 0
    status = asyncio.run(run_backup(data, settings.backup, progress=_progress(not args.no_progress)))
    if _progress(not args.no_progress):
        print(file=sys.stderr)
    try:
        from roost.hub import store_options
        from roost.store import Store

        with Store.open(data, store_options(settings), writer=False) as store:
            record_in_store(store, status)
    except RoostError as err:
        print(f"warning: backup status not stored as series: {err}", file=sys.stderr)
    if status.last_error:
        raise RoostError(status.error)
    print(f"backup {status.snapshot_id[:8]}: {_human(status.size)} in {status.duration:.1f} s "
          f"(kept by policy: {settings.backup.keep})")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from roost.durability.backup import restore, restore_drill
    from roost.hub import store_options

    settings = _settings(args)
    if args.verify:
        report = asyncio.run(restore_drill(args.source, settings.backup, settings.hub.data, store_options(settings)))
        for problem in report.mismatches:
            print(f"error: {problem}", file=sys.stderr)
        verdict = "ok" if report.ok else "FAILED"
        print(f"restore drill {verdict}: {args.source} (cut at {report.manifest.created_at}) restored in "
              f"{report.restore_seconds:.1f} s; {report.series} series, {report.buckets} hourly buckets and "
              f"{report.raw_samples} raw samples compared with {settings.hub.data} in {report.compare_seconds:.1f} s")
        return 0 if report.ok else 1
    if args.to is None:
        raise ConfigError("restore needs --to DIR (a new store directory), or --verify for a drill")
    m = asyncio.run(restore(args.source, settings.backup, settings.hub.data, args.to))
    print(f"restored {args.source} (cut at {m.created_at}: {m.series} series, {m.samples} samples) into {args.to}; "
          f"run it with: roost run --data {args.to}")
    return 0


def cmd_standby(args: argparse.Namespace) -> int:
    from roost.durability.replication import run_standby

    settings = _settings(args)
    try:
        token = args.token_file.read_text().strip()
    except OSError as err:
        raise ConfigError(f"--token-file: cannot read {args.token_file} ({err.strerror})") from None
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f'--listen: expected host:port like "127.0.0.1:8081", got {args.listen!r}')
    asyncio.run(run_standby(settings, args.primary.rstrip("/"), token, host, int(port), resync=args.resync))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from roost.durability.replication import promote

    settings = _settings(args)
    record = promote(settings.hub.data)
    print(f"{settings.hub.data}: promoted to primary, epoch {record['epoch']} (was a standby of "
          f"{record.get('previous_primary', '?')}); start it with `roost run`")
    return 0
