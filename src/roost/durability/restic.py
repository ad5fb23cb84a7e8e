"""restic, the backup program, driven as a subprocess with `--json` output.

The repository password goes to restic through the environment (`RESTIC_PASSWORD`), never on a command line
and never into a log; restic's cache lives under roost's data directory (`RESTIC_CACHE_DIR`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from roost.errors import RoostError
from roost.secret import Secret

log = logging.getLogger("roost.backup")


class ResticError(RoostError):
    """restic failed or is missing; the message carries restic's own last words."""


@dataclass(frozen=True, slots=True)
class ResticSnapshot:
    id: str
    short_id: str
    time: datetime
    host: str
    tags: tuple[str, ...]
    paths: tuple[str, ...]

    @classmethod
    def from_json(cls, doc: dict) -> ResticSnapshot:
        return cls(
            doc["id"], doc.get("short_id", doc["id"][:8]), parse_restic_time(doc["time"]), doc.get("hostname", ""),
            tuple(doc.get("tags") or ()), tuple(doc.get("paths") or ()),
        )


@dataclass(frozen=True, slots=True)
class BackupSummary:
    snapshot_id: str
    files: int
    bytes_processed: int
    data_added: int
    seconds: float


def parse_restic_time(text: str) -> datetime:
    """restic's RFC 3339 times carry nanoseconds; Python takes microseconds."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if not m:
        raise ResticError(f"restic printed a time roost cannot read: {text!r}")
    frac = f".{m[2][:6]:0<6}" if m[2] else ""
    return datetime.fromisoformat(m[1] + frac + ("+00:00" if m[3] == "Z" else m[3]))


Progress = Callable[[dict], None]


class Restic:
    """One restic repository; every method runs one restic command and raises ResticError when it fails."""

    def __init__(self, repository: str, password: Secret, cache_dir: Path, *, binary: str = "restic"):
        self.repository = repository
        self._password = password
        self.cache_dir = Path(cache_dir)
        self.binary = binary

    def _env(self, tz_utc: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
        env.update(
            RESTIC_REPOSITORY=self.repository,
            RESTIC_PASSWORD=self._password.reveal(),
            RESTIC_CACHE_DIR=str(self.cache_dir),
        )
        if tz_utc:
            env["TZ"] = "UTC"  # --time is read, and forget buckets are cut, in the local zone: make it UTC
        return env

    async def run(
        self, *args: str, stdin: bytes | None = None, progress: Progress | None = None, ok_codes: tuple[int, ...] = (0,)
    ) -> tuple[int, str]:
        """Run `restic ARGS`; returns (exit code, stdout). JSON status lines go to `progress` as they come."""
        if shutil.which(self.binary) is None:
            raise ResticError(f"{self.binary}: not found — install restic (Debian: apt-get install restic)")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            self.binary, *args, env=self._env(tz_utc=True),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out: list[str] = []

        async def read_stdout() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode(errors="replace")
                if progress is not None and line.startswith('{"message_type":"status"'):
                    try:
                        progress(json.loads(line))
                    except ValueError:
                        pass
                    continue
                out.append(line)

        async def feed() -> None:
            if stdin is not None and proc.stdin is not None:
                proc.stdin.write(stdin)
                await proc.stdin.drain()
                proc.stdin.close()

        try:
            _, _, err = await asyncio.gather(read_stdout(), feed(), proc.stderr.read())  # type: ignore[union-attr]
            code = await proc.wait()
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if code not in ok_codes:
            words = err.decode(errors="replace").strip().splitlines()
            last = words[-1] if words else f"exit code {code}"
            raise ResticError(f"restic {args[0]} on {self.repository} failed: {last}")
        return code, "".join(out)

    async def init(self) -> bool:
        """Create the repository; False when it exists already."""
        if await self.exists():
            return False
        await self.run("init")
        return True

    async def exists(self) -> bool:
        code, _ = await self.run("cat", "config", ok_codes=(0, 1))
        return code == 0

    async def backup(
        self, path: Path, *, host: str, tags: tuple[str, ...] = (), time: datetime | None = None,
        progress: Progress | None = None,
    ) -> BackupSummary:
        args = ["backup", "--json", "--host", host]
        for tag in tags:
            args += ["--tag", tag]
        if time is not None:
            args += ["--time", time.strftime("%Y-%m-%d %H:%M:%S")]
        _code, out = await self.run(*args, str(path), progress=progress)
        for line in reversed(out.splitlines()):
            if '"message_type":"summary"' in line:
                doc = json.loads(line)
                return BackupSummary(
                    doc["snapshot_id"], doc.get("total_files_processed", 0), doc.get("total_bytes_processed", 0),
                    doc.get("data_added", 0), float(doc.get("total_duration", 0.0)),
                )
        raise ResticError(f"restic backup on {self.repository}: no summary in its output")

    async def backup_stdin(self, data: bytes, *, name: str, host: str, time: datetime, tags: tuple[str, ...] = ()) -> None:
        args = ["backup", "--stdin", "--stdin-filename", name, "--host", host, "--time", time.strftime("%Y-%m-%d %H:%M:%S")]
        for tag in tags:
            args += ["--tag", tag]
        await self.run(*args, stdin=data)

    async def snapshots(self, *, host: str | None = None, tags: tuple[str, ...] = ()) -> list[ResticSnapshot]:
        args = ["snapshots", "--json"] + (["--host", host] if host else [])
        if tags:
            args += ["--tag", ",".join(tags)]
        _code, out = await self.run(*args)
        return sorted((ResticSnapshot.from_json(d) for d in json.loads(out or "[]")), key=lambda s: s.time)

    async def forget(
        self, flags: list[str], *, host: str | None = None, tags: tuple[str, ...] = (), prune: bool = True,
        dry_run: bool = False,
    ) -> list[dict]:
        """`restic forget` with keep flags; returns restic's JSON groups (keep, remove, reasons)."""
        args = ["forget", "--json", *flags] + (["--host", host] if host else [])
        if tags:
            args += ["--tag", ",".join(tags)]
        if dry_run:
            args.append("--dry-run")
        elif prune:
            args.append("--prune")
        _code, out = await self.run(*args)
        for line in out.splitlines():  # --prune prints its own report after the JSON
            if line.startswith("["):
                return json.loads(line)
        return []

    async def restore(self, snapshot: str, target: Path) -> None:
        await self.run("restore", snapshot, "--target", str(target))
