"""Prometheus and VictoriaMetrics as real processes on free 127.0.0.1 ports, stopped by handle.

Shared by test_promql.py, test_prometheus_api.py and test_remote_write.py (and bench/interop.py).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
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
    """A server process; `url` once it answers `ready_path`."""

    name = "peer"

    def __init__(self, argv: list[str], port: int, log: Path, ready_path: str, timeout: float = 60):
        self.argv, self.port, self.log_path = argv, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        self.start(timeout)

    def start(self, timeout: float = 60) -> None:
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.url + self.ready_path, timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"{self.name} did not come up in {timeout} s: {self.log_path.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


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
    name = "victoria-metrics"

    def __init__(self, data: Path, *extra: str, port: int | None = None):
        need("victoria-metrics")
        port = port or free_port()
        argv = [
            "victoria-metrics", f"-storageDataPath={data}", f"-httpListenAddr=127.0.0.1:{port}", "-retentionPeriod=100y",
            "-loggerLevel=WARN", "-search.disableCache", *extra,
        ]
        super().__init__(argv, port, data.parent / f"{data.name}.vm.log", "/health")

    def flush(self) -> None:
        urllib.request.urlopen(self.url + "/internal/force_flush", timeout=30).read()

    def export(self, match: str) -> list[dict]:
        """Raw samples of every series matching `match` (one JSON object per series)."""
        self.flush()
        url = self.url + "/api/v1/export?" + urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(url, timeout=60) as resp:
            return [json.loads(line) for line in resp.read().splitlines() if line.strip()]
