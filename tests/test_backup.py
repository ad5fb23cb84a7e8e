"""Backups through real restic to a local repository: init, now, list, retention after each backup, restore and
the restore drill; inside the hub, the outcome as series, /metrics, the `backup` thing and a failure event."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace

import aiohttp
import numpy as np
import pytest

from roost.durability.backup import BackupStatus, compare_stores
from roost.durability.restic import Restic
from roost.durability.retention import KeepPolicy
from roost.durability.settings import BackupSettings
from roost.hub import Hub
from roost.model import Series
from roost.secret import Secret
from roost.selector import Selector
from roost.store import DAY_MS, Store

from conftest import hub_settings, run_roost

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (apt-get install restic)")

PASSWORD = "horse-battery-staple-42"
T0 = 1_700_006_400_000


@pytest.fixture
def config(tmp_path):
    data = tmp_path / "data"
    ts = T0 + np.arange(0, 3 * DAY_MS, 60_000)
    with Store.open(data, writer=True) as store:
        for room in ("lounge", "attic"):
            store.write_bulk(Series.of("temperature_celsius", room=room), ts, np.round(np.sin(ts / 3e6) * 3 + 20, 2))
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    cfg = tmp_path / "roost.toml"
    cfg.write_text(f'[hub]\ndata = "data"\n[backup]\nrepository = "{tmp_path / "repo"}"\npassword_file = "pw"\n'
                   'tags = ["test"]\nkeep = { last = 1 }\n')
    return cfg


def test_backup_init_now_list_restore_round_trip_keeps_the_policy(config, tmp_path):
    c = str(config)
    assert "created" in run_roost("backup", "init", "-c", c).stdout
    assert "exists already" in run_roost("backup", "init", "-c", c).stdout
    first = run_roost("backup", "now", "-c", c)
    second = run_roost("backup", "now", "-c", c)
    for proc in (first, second):
        assert PASSWORD not in proc.stdout + proc.stderr
    listing = run_roost("backup", "list", "-c", c)
    assert "1 backup(s)" in listing.stderr and "roost,test" in listing.stdout  # keep last = 1 after each backup

    restored = tmp_path / "restored"
    run_roost("restore", "--from", "restic", "--to", str(restored), "-c", c)
    with Store.open(restored, writer=False) as a, Store.open(tmp_path / "data", writer=False) as b:
        _series, buckets, _raw, mismatches = compare_stores(a, b)
        assert buckets > 0 and not mismatches
    drill = run_roost("restore", "--verify", "-c", c)
    assert "restore drill ok" in drill.stdout

    status = BackupStatus.load(tmp_path / "data")
    assert status.last_error == 0 and status.size > 0 and status.snapshot_id
    with Store.open(tmp_path / "data", writer=False) as store:
        assert store.series(Selector.parse("roost_backup_last_error"))


def test_restore_drill_fails_when_the_live_store_differs(config, tmp_path):
    c = str(config)
    run_roost("backup", "init", "-c", c)
    run_roost("backup", "now", "-c", c)
    with Store.open(tmp_path / "data", writer=True) as store:  # history rewritten after the backup
        store.write_bulk(Series.of("temperature_celsius", room="lounge"), np.array([T0 + 3_600_000]), np.array([99.0]))
    drill = run_roost("restore", "--verify", "-c", c, check=False)
    assert drill.returncode == 1
    assert 'temperature_celsius{room="lounge"}: count per hour' in drill.stderr or "mean per hour" in drill.stderr


async def test_the_hub_reports_a_failed_then_a_good_backup_as_series_metrics_thing_and_event(tmp_path):
    settings = hub_settings(tmp_path / "data")
    repo = tmp_path / "repo"
    backup = BackupSettings(repository=str(repo), password=Secret(PASSWORD), keep=KeepPolicy(last=3))
    async with Hub(replace(settings, backup=backup)) as hub:
        events = hub.things.changes.subscribe("test")
        failed = await hub.backup.run_now()
        assert failed.last_error == 1 and "roost backup init" in failed.error
        change = await asyncio.wait_for(_next(events, "backup_failed"), 5)
        assert "no restic repository" in change.new
        assert hub.things.get("backup").values["last_error"] == 1

        await Restic(str(repo), Secret(PASSWORD), tmp_path / "cache").init()
        good = await hub.backup.run_now()
        assert good.last_error == 0
        thing = hub.things.get("backup")
        assert thing.values["last_error"] == 0 and thing.values["size"] > 0 and thing.spec("size").read_only
        async with aiohttp.ClientSession() as http:
            async with http.get(hub.url + "/metrics") as resp:
                text = await resp.text()
        assert "roost_backup_last_error 0.0" in text and "roost_backup_last_success_timestamp_seconds" in text
        await asyncio.sleep(0.2)  # the status readings go through the writer
        latest = {str(s): v for s, (_t, v) in hub.store.latest().items()}
        assert latest["roost_backup_last_error"] == 0.0 and latest["roost_backup_size_bytes"] > 0


async def _next(sub, name):
    while True:
        change = await sub.get()
        if change.name == name:
            return change
