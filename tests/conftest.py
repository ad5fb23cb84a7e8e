"""Shared fixtures: an in-process hub on a free port, and a hub as a real subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from roost.config import load_config
from roost.hub import Hub

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(proc: subprocess.Popen, port: int, what: str, log: Path, timeout: float = 10.0) -> None:
    """Return once `proc` accepts connections on 127.0.0.1:port; fail with its log if it exits or never listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"{what} did not listen within {timeout:g} s")


def hub_settings(data: Path, **store):
    settings = load_config(None, data_dir=str(data))
    return replace(settings, hub=replace(settings.hub, listen="127.0.0.1:0"), store=replace(settings.store, **store))


@pytest.fixture
async def hub(tmp_path):
    async with Hub(hub_settings(tmp_path / "data")) as h:
        yield h


@pytest.fixture
async def http(hub):
    async with aiohttp.ClientSession(base_url=hub.url) as session:
        yield session


def roost_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "roost", *args]


def run_roost(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(roost_cmd(*args), capture_output=True, text=True, env=env, timeout=120, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"roost {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


class HubProcess:
    """`roost run` (or `roost demo`) as a real process on a free port."""

    def __init__(self, data: Path, *extra: str, command: str = "run"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        self.log = open(data.parent / f"hub-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            roost_cmd(command, "--data", str(data), "--listen", f"127.0.0.1:{self.port}", *extra),
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"hub exited with {self.proc.returncode}: {Path(self.log.name).read_text()}")
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("hub did not come up in 60 s")

    def kill(self, sig: int = 9) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.log.close()
