"""Shared fixtures: an in-process hub on a free port, and a hub as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from peers import Peer, free_port, wait_port  # noqa: F401  (the tests import free_port and wait_port from here)

from roost.config import load_config
from roost.hub import Hub

ROOT = Path(__file__).resolve().parent.parent


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


class HubProcess(Peer):
    """`roost run` (or `roost demo`) as a real process on a free port."""

    name = "hub"

    def __init__(self, data: Path, *extra: str, command: str = "run"):
        port = free_port()
        argv = roost_cmd(command, "--data", str(data), "--listen", f"127.0.0.1:{port}", *extra)
        super().__init__(argv, port, data.parent / f"hub-{port}.log", "/healthz", env={"PYTHONPATH": str(ROOT / "src")})

    def kill(self, sig: int = 9) -> None:
        self.stop(sig)
