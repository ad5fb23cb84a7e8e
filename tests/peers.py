"""Real peers as processes on free 127.0.0.1 ports, stopped by handle: mosquitto, VictoriaMetrics, Prometheus, a hub.

Shared by the tests (conftest.py, test_promql.py, test_prometheus_api.py, test_remote_write.py, ...) and the
benchmarks in bench/, which put this directory on their import path.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

MOSQUITTO = "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, log: Path | None = None, timeout: float = 20.0) -> None:
    """Return once something accepts connections on 127.0.0.1:port; fail with `proc`'s log if it exits first."""
    what = Path(str(proc.args[0])).name if proc is not None else "the peer"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g} s: {_tail(log)}")


def _tail(log: Path | None, chars: int = 2000) -> str:
    return log.read_text(errors="replace")[-chars:] if log is not None and log.exists() else "(no log)"


def need(binary: str) -> str:
    """The path of `binary`; skips the test (or stops a benchmark) when it is not installed."""
    path = shutil.which(binary)
    if path is None:
        import pytest  # only when missing: the benchmarks import this module without pytest

        pytest.skip(f"{binary} is not installed (make peers installs it)")
    return path


def get_json(url: str, params: dict | None = None, timeout: float = 30) -> dict:
    if params:
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            return json.loads(body) | {"_status": err.code}
        except ValueError:
            raise AssertionError(f"{url}: {err.code} {body[:300]!r}") from None


class Peer:
    """A server process, started on construction: ready once it answers `ready_path` over HTTP (or, without one,
    once it accepts connections). `stop()` and `start()` again keep its port; `restarts` counts the starts again."""

    name = "peer"

    def __init__(self, argv: list[str], port: int, log: Path, ready_path: str | None = None, *,
                 name: str | None = None, timeout: float = 60, env: dict[str, str] | None = None,
                 cwd: str | None = None):
        self.argv, self.port, self.log_path, self.ready_path = argv, port, log, ready_path
        self.name = name or self.name
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, **env} if env else None
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.restarted_at: list[float] = []  # time.monotonic() of each start after the first
        self.start(timeout)

    def start(self, timeout: float = 60) -> None:
        if self.proc is not None:
            self.restarts += 1
            self.restarted_at.append(time.monotonic())
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        if self.ready_path is None:
            wait_port(self.port, self.proc, self.log_path, timeout)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}: {_tail(self.log_path)}")
            try:
                urllib.request.urlopen(self.url + self.ready_path, timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"{self.name} did not come up in {timeout:g} s: {_tail(self.log_path)}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def mosquitto(directory: Path, *settings: str) -> Peer:
    """mosquitto on a free port with anonymous access and no queue limit (the default 1000 drops QoS 1 messages
    for a lagging subscriber), plus `settings` lines; its configuration and log in `directory`."""
    need(MOSQUITTO)
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text("\n".join([
        f"listener {port} 127.0.0.1", "allow_anonymous true", "max_queued_messages 0",
        f"user {getpass.getuser()}",  # as root mosquitto would switch to "mosquitto", which cannot write here
        *settings,
    ]) + "\n")
    return Peer([MOSQUITTO, "-c", str(conf)], port, directory / "mosquitto.log", name="mosquitto")


class Prometheus(Peer):
    name = "prometheus"

    def __init__(self, work: Path, config: str = "global: {}\n", tsdb: Path | None = None, *extra: str):
        need("prometheus")
        work.mkdir(parents=True, exist_ok=True)
        (work / "prometheus.yml").write_text(config)
        port = free_port()
        argv = [
            "prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={tsdb or work / 'tsdb'}",
            "--storage.tsdb.retention.time=100y", f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            *extra,
        ]
        super().__init__(argv, port, work / "prometheus.log", "/-/ready")

    def query(self, expr: str, **params) -> dict:
        return get_json(self.url + "/api/v1/query", {"query": expr, **params})


class VictoriaMetrics(Peer):
    """victoria-metrics, by default with its query cache off, so repeated queries are measured, not remembered
    (`cache=True`: as installed, with its rollup result cache)."""

    name = "victoria-metrics"

    def __init__(self, data: Path, *extra: str, port: int | None = None, timeout: float = 60, cache: bool = False):
        need("victoria-metrics")
        port = port or free_port()
        argv = [
            "victoria-metrics", f"-storageDataPath={data}", f"-httpListenAddr=127.0.0.1:{port}", "-retentionPeriod=100y",
            "-loggerLevel=WARN", *([] if cache else ["-search.disableCache"]), *extra,
        ]
        super().__init__(argv, port, data.parent / f"{data.name}.vm.log", "/health", timeout=timeout)

    def flush(self) -> None:
        urllib.request.urlopen(self.url + "/internal/force_flush", timeout=30).read()

    def export(self, match: str) -> list[dict]:
        """Raw samples of every series matching `match` (one JSON object per series)."""
        self.flush()
        url = self.url + "/api/v1/export?" + urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(url, timeout=60) as resp:
            return [json.loads(line) for line in resp.read().splitlines() if line.strip()]
