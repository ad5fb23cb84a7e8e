"""The `roost` command as a user runs it: help, check, query, series, import/export beside a running hub."""

from __future__ import annotations

import csv
import io
import json
import urllib.request

import numpy as np
import pytest

from roost.model import Series
from roost.store import DAY_MS, Store

from conftest import HubProcess, run_roost

COMMANDS = ["run", "check", "demo", "query", "series", "import", "export", "compact"]
T0 = 1_700_006_400_000  # a UTC midnight


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example_and_the_common_options(command):
    out = run_roost(command, "--help").stdout
    assert "-c FILE, --config FILE" in out and "--data DIR" in out
    assert "example" in out or command == "compact"


def test_check_reports_every_problem_with_file_line_and_key(tmp_path):
    cfg = tmp_path / "roost.toml"
    cfg.write_text('[hub]\nlisten = "127.0.0.1:8080"\nlog_levl = "info"\n\n[store]\ncompact_interval = "fast"\n')
    proc = run_roost("check", "-c", str(cfg), check=False)
    assert proc.returncode == 2
    assert 'roost.toml:3: hub.log_levl: unknown key (did you mean "log_level"?)' in proc.stderr
    assert 'roost.toml:6: store.compact_interval: expected a duration like "15s"' in proc.stderr


def test_check_accepts_a_valid_config(tmp_path):
    cfg = tmp_path / "roost.toml"
    cfg.write_text('[hub]\ndata = "d"\n[store]\nmax_series = 500\n[[store.retention]]\nmatch = "power_watts"\nraw = "90d"\n')
    assert "ok" in run_roost("check", "-c", str(cfg)).stdout


@pytest.fixture
def week(tmp_path):
    data = tmp_path / "data"
    ts = T0 + np.arange(0, 7 * DAY_MS, 15_000)
    with Store.open(data, writer=True) as store:
        for room, offset in (("lounge", 21.0), ("bedroom", 18.0)):
            store.write_bulk(Series.of("temperature_celsius", room=room), ts, np.full(len(ts), offset), now=T0 + 8 * DAY_MS)
    return data


def test_query_prints_buckets_as_table_csv_and_json(week):
    args = ["query", 'temperature_celsius{room=~"lounge|bedroom"}', "--data", str(week),
            "--start", str(T0), "--end", str(T0 + 7 * DAY_MS - 1), "--step", "1d", "--agg", "max"]
    table = run_roost(*args).stdout
    assert 'temperature_celsius{room="lounge"}  (7 buckets of 1d, max)' in table
    assert "2023-11-15T00:00:00Z  21" in table
    rows = list(csv.DictReader(io.StringIO(run_roost(*args, "--format", "csv").stdout)))
    assert len(rows) == 14 and {float(r["max"]) for r in rows} == {21.0, 18.0}
    parsed = json.loads(run_roost(*args, "--format", "json").stdout)
    assert [p["series"] for p in parsed] == ['temperature_celsius{room="lounge"}', 'temperature_celsius{room="bedroom"}']


def test_query_on_a_missing_store_says_what_to_do(tmp_path):
    proc = run_roost("query", "x", "--data", str(tmp_path / "nothing"), check=False)
    assert proc.returncode == 1 and "no roost store here" in proc.stderr


def test_query_series_import_and_export_work_beside_a_running_hub(week, tmp_path):
    hub = HubProcess(week)
    try:
        body = f"temperature_celsius,room=entry value=12.5 {T0 + 3 * DAY_MS}".encode()
        urllib.request.urlopen(urllib.request.Request(hub.url + "/write?precision=ms", data=body, method="POST"))
        listed = run_roost("series", "--data", str(week)).stdout
        assert 'temperature_celsius{room="entry"}  12.5' in listed
        src = tmp_path / "attic.csv"
        src.write_text("metric,room,timestamp,value\n" + "".join(
            f"temperature_celsius,attic,{T0 + i * 60_000},{10 + i % 5}\n" for i in range(1000)))
        assert "imported 1000 samples of 1 series" in run_roost("import", str(src), "--data", str(week), "--no-progress").stdout
        out = tmp_path / "all.csv"
        run_roost("export", "--data", str(week), "--start", str(T0), "--end", str(T0 + 7 * DAY_MS), "-o", str(out))
        rows = list(csv.DictReader(out.open()))
        assert len(rows) == 2 * 7 * 5760 + 1 + 1000
        with urllib.request.urlopen(hub.url + "/api/series?match=temperature_celsius{room='attic'}") as resp:
            assert json.load(resp)["series"][0]["latest"]["value"] == 14.0  # the hub sees what was imported
    finally:
        hub.kill(15)
    assert hub.proc.returncode == 0  # a clean stop on SIGTERM
