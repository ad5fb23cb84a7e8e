"""Warm standby against real processes: a `roost run` primary, a `roost standby` following it over HTTP.

kill -9 of the primary mid-ingest, then promotion of the standby: in sync mode every acknowledged reading is
there; in async mode what is missing was acknowledged within the documented window (`max_lag`). A former
primary refuses to run while its peer is the promoted primary, and catches up once resynced as a standby.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path


from roost.selector import Selector
from roost.store import DAY_MS, Store

from conftest import ROOT, HubProcess, free_port, roost_cmd, run_roost

ROOMS = ("lounge", "kitchen")
MAX_LAG_S = 1.0


class Pusher(threading.Thread):
    """One push per request, in timestamp order, until the primary stops answering; notes each ack's time."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url + "/write?precision=ms"
        now = int(time.time() * 1000)
        self.t0 = now - now % DAY_MS - 2 * DAY_MS
        self.acked_at: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            body = "".join(f"t,room={r} value={i} {self.t0 + i * 1000}\n" for r in ROOMS).encode()
            try:
                with urllib.request.urlopen(urllib.request.Request(self.url, body, method="POST"), timeout=30) as resp:
                    assert resp.status == 204
            except OSError:
                return
            self.acked_at.append(time.monotonic())
            i += 1


class StandbyProcess:
    def __init__(self, data: Path, primary: str, token: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(data.parent / f"standby-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            roost_cmd("standby", "--primary", primary, "--token-file", str(token), "--data", str(data),
                      "--listen", f"127.0.0.1:{self.port}", *extra),
            env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.wait_caught_up()

    def status(self) -> dict:
        return json.loads(urllib.request.urlopen(self.url + "/api/replication/status", timeout=5).read())

    def wait_caught_up(self, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"standby exited {self.proc.returncode}: {Path(self.log.name).read_text()}")
            try:
                status = self.status()
                if status["caught_up"]:
                    return status
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"standby did not catch up: {Path(self.log.name).read_text()}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, Path(self.log.name).read_text()
        self.log.close()


def _config(tmp: Path, name: str, mode: str, peer: str = "") -> Path:
    token = tmp / "token"
    token.write_text("s3cret-token\n")
    cfg = tmp / f"{name}.toml"
    cfg.write_text(
        f'[store]\ncompact_interval = "2s"\n[replication]\ntoken_file = "token"\nmode = "{mode}"\n'
        f'max_lag = "{int(MAX_LAG_S * 1000)}ms"\nsync_timeout = "5s"\n' + (f'peer = "{peer}"\n' if peer else "")
    )
    return cfg


def _counts(data: Path) -> dict[str, list[int]]:
    with Store.open(data, writer=False) as store:
        return {
            room: [int(v) for v in next(iter(store.read(Selector.parse(f't{{room="{room}"}}'), 0, 2**62))).values]
            for room in ROOMS
        }


def _kill_primary_mid_ingest(tmp_path, mode: str):
    primary = HubProcess(tmp_path / "primary", "-c", str(_config(tmp_path, "primary", mode)))
    standby = StandbyProcess(tmp_path / "standby", primary.url, tmp_path / "token")
    pusher = Pusher(primary.url)
    pusher.start()
    time.sleep(3)
    killed_at = time.monotonic()
    primary.kill(9)
    pusher.join(30)
    time.sleep(0.5)
    standby.stop()
    run_roost("promote", "--data", str(tmp_path / "standby"))
    return pusher, killed_at, _counts(tmp_path / "standby")


def test_sync_mode_loses_no_acknowledged_reading_when_the_primary_is_killed(tmp_path):
    pusher, _killed_at, got = _kill_primary_mid_ingest(tmp_path, "sync")
    acked = len(pusher.acked_at)
    assert acked > 50
    for room in ROOMS:
        assert got[room][:acked] == list(range(acked)), f"{room}: an acknowledged reading is missing"


def test_async_mode_loses_only_readings_acknowledged_within_the_window(tmp_path):
    pusher, killed_at, got = _kill_primary_mid_ingest(tmp_path, "async")
    acked = len(pusher.acked_at)
    assert acked > 50
    for room in ROOMS:
        have = got[room]
        assert have == list(range(len(have))), f"{room}: a hole in the replicated readings"
        lost = range(len(have), acked)
        if lost:
            oldest_lost_age = killed_at - pusher.acked_at[lost.start]
            assert oldest_lost_age <= MAX_LAG_S + 0.5, f"{room}: lost a reading acknowledged {oldest_lost_age:.2f} s before"


def test_a_former_primary_refuses_to_run_after_a_promotion_and_catches_up_once_resynced(tmp_path):
    a_data, b_data = tmp_path / "a", tmp_path / "b"
    a = HubProcess(a_data, "-c", str(_config(tmp_path, "a", "sync")))
    b = StandbyProcess(b_data, a.url, tmp_path / "token")
    pusher = Pusher(a.url)
    pusher.start()
    time.sleep(1)
    a.kill(9)
    pusher.join(30)
    b.stop()
    record = run_roost("promote", "--data", str(b_data))
    assert "epoch 2" in record.stdout

    b_primary = HubProcess(b_data, "-c", str(_config(tmp_path, "b", "sync")))
    try:
        refused = run_roost("run", "--data", str(a_data), "-c", str(_config(tmp_path, "a2", "sync", peer=b_primary.url)),
                            "--listen", f"127.0.0.1:{free_port()}", check=False)
        assert refused.returncode == 1
        assert "refusing to run as primary" in refused.stderr and "epoch 2" in refused.stderr
        assert "roost standby --resync" in refused.stderr

        plain = run_roost("standby", "--primary", b_primary.url, "--token-file", str(tmp_path / "token"),
                          "--data", str(a_data), check=False)
        assert plain.returncode == 1 and "--resync" in plain.stderr

        more = Pusher(b_primary.url)
        more.t0 = pusher.t0 + 10 * DAY_MS
        more.start()
        time.sleep(1)
        a_again = StandbyProcess(a_data, b_primary.url, tmp_path / "token", "--resync")
        time.sleep(1)
        more.stop.set()
        more.join(30)
        a_again.wait_caught_up()
        a_again.stop()
    finally:
        b_primary.kill(15)
    got = _counts(a_data)
    expected = _counts(b_data)
    assert got == expected and len(got["lounge"]) >= len(pusher.acked_at) + len(more.acked_at)
