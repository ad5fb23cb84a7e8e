"""Snapshots of a live store: taken while a real `roost run` hub receives pushes and compacts every second,
verified, restored, and compared with the live store; damaged snapshots are refused naming the bad file."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import pytest

from roost.durability.snapshot import take_snapshot, verify_snapshot
from roost.model import Series
from roost.store import DAY_MS, Store

from conftest import HubProcess, run_roost

ROOMS = ("lounge", "kitchen", "attic")
STEP_MS = 600_000  # ten minutes of simulated time per push: days fill, get sealed into data files


class Pusher(threading.Thread):
    """Pushes one reading per room per request, timestamps in order; counts the acknowledged requests."""

    def __init__(self, url: str, t0: int):
        super().__init__(daemon=True)
        self.url, self.t0 = url + "/write?precision=ms", t0
        self.acked = 0
        self.error: OSError | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            ts = self.t0 + i * STEP_MS
            body = "".join(f"temperature_celsius,room={r} value={20 + (i % 97) / 10 + k} {ts}\n" for k, r in enumerate(ROOMS))
            try:
                with urllib.request.urlopen(urllib.request.Request(self.url, body.encode(), method="POST"), timeout=30) as resp:
                    assert resp.status == 204
            except OSError as err:
                self.error = err
                return
            i += 1
            self.acked = i


@pytest.fixture
def live(tmp_path):
    cfg = tmp_path / "roost.toml"
    cfg.write_text('[store]\ncompact_interval = "1s"\n')
    hub = HubProcess(tmp_path / "data", "-c", str(cfg))
    now = int(time.time() * 1000)
    pusher = Pusher(hub.url, now - now % DAY_MS - 1000 * DAY_MS)  # room for 144,000 pushes before "now"
    pusher.start()
    yield hub, pusher, tmp_path / "data"
    pusher.stop.set()
    pusher.join(10)
    hub.kill(15)


def test_snapshots_under_ingest_hold_every_acknowledged_reading_and_restore_to_the_live_answers(live, tmp_path):
    hub, pusher, data = live
    _wait_for_compaction(data, 0, pusher)  # days sealed into a data file
    taken = []
    for k in range(3):
        acked_before = pusher.acked
        manifest = take_snapshot(data, tmp_path / f"snap{k}")
        taken.append((tmp_path / f"snap{k}", acked_before, pusher.acked, manifest))
        _wait_for_compaction(data, manifest.wal_compacted, pusher)  # a compaction between snapshots
    pusher.stop.set()
    pusher.join(10)
    assert pusher.error is None, pusher.error
    assert any(f.path.startswith("chunks/") for f in taken[-1][3].files), "no sealed data file was snapshotted"

    for snap, acked_before, acked_after, manifest in taken:
        assert verify_snapshot(snap).ok
        # a prefix of the ingest: every reading acknowledged before the snapshot began, nothing with a hole
        assert len(ROOMS) * acked_before <= manifest.samples <= len(ROOMS) * (acked_after + 1)
        restored = tmp_path / f"restored-{snap.name}"
        run_roost("restore", "--from", str(snap), "--to", str(restored), "--data", str(data))
        with Store.open(restored, writer=True) as store:
            for room in ROOMS:
                got = list(store.read(_selector(room), 0, 2**62))[0]
                assert len(got.ts) == manifest.samples // len(ROOMS)
                assert (got.ts == pusher.t0 + STEP_MS * np.arange(len(got.ts))).all()
        drill = run_roost("restore", "--verify", "--from", str(snap), "--data", str(data))
        assert "restore drill ok" in drill.stdout


def _wait_for_compaction(data, after: int, pusher: Pusher, timeout: float = 120) -> None:
    """Until the hub has compacted a log segment newer than `after` (polled, with a generous deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        assert pusher.error is None, pusher.error
        with Store.open(data, writer=False) as store:
            if store.compacted_seq() > after and pusher.acked:
                return
        assert time.monotonic() < deadline, f"no compaction past log segment {after} within {timeout:g} s"
        time.sleep(0.05)


def _selector(room: str):
    from roost.selector import Selector

    return Selector.parse(f'temperature_celsius{{room="{room}"}}')


def test_verify_names_the_damaged_or_missing_file(tmp_path):
    data = tmp_path / "data"
    with Store.open(data, writer=True) as store:
        ts = np.arange(0, 3 * DAY_MS, 60_000) + 1_700_006_400_000
        store.write_bulk(Series.of("power_watts", meter="m1"), ts, np.arange(len(ts), dtype=float))
    snap = tmp_path / "snap"
    manifest = take_snapshot(data, snap)
    ok = run_roost("verify", str(snap))
    assert f"{manifest.samples} samples" in ok.stdout and manifest.samples == len(ts)

    chunk = next(f.path for f in manifest.files if f.path.startswith("chunks/"))
    raw = bytearray((snap / chunk).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (snap / chunk).write_bytes(bytes(raw))
    bad = run_roost("verify", str(snap), check=False)
    assert bad.returncode == 1
    assert f"{snap / chunk}: sha256 differs from the manifest" in bad.stderr

    (snap / chunk).unlink()
    assert f"{snap / chunk}: missing" in run_roost("verify", str(snap), check=False).stderr
    (snap / "manifest.json").unlink()
    gone = run_roost("verify", str(snap), check=False)
    assert gone.returncode == 1 and f"{snap / 'manifest.json'}: no manifest" in gone.stderr


def test_snapshot_refuses_a_non_empty_target_and_a_missing_store(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    proc = run_roost("snapshot", "--data", str(tmp_path / "nothing"), "--to", str(tmp_path / "s"), check=False)
    assert proc.returncode == 1 and "no roost store here" in proc.stderr
    with Store.open(tmp_path / "data", writer=True):
        pass
    proc = run_roost("snapshot", "--data", str(tmp_path / "data"), "--to", str(tmp_path / "busy"), check=False)
    assert proc.returncode == 1 and "is not empty" in proc.stderr


def test_a_snapshots_directory_keeps_what_the_policy_keeps(tmp_path):
    with Store.open(tmp_path / "data", writer=True):
        pass
    snaps = tmp_path / "snaps"
    for _ in range(4):
        run_roost("snapshot", "--data", str(tmp_path / "data"), "--dir", str(snaps), "--keep-last", "2")
    left = sorted(p.name for p in snaps.iterdir())
    assert len(left) == 2
    assert all(json.loads((snaps / name / "manifest.json").read_text())["format"] == 1 for name in left)
