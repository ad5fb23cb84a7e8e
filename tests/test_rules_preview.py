"""`roost rules preview`: the stored readings replayed through a rule give the timeline the live rule made."""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path

import numpy as np

from roost.model import Series
from roost.rules import Rule, Threshold
from roost.rules.clock import Place
from roost.rules.loader import RuleSource
from roost.rules.preview import preview
from roost.store.engine import SeriesData
from roost.testing import FakeThing, RuleHarness


class CoolDown(Rule):
    """When a room has been above 25 °C for 10 minutes, run the fan for 30 minutes."""

    def register_triggers(self):
        return (Threshold('temperature_celsius{room=~"lounge|hall"} > 25 for 10m'),)

    def action(self, trigger, series, value):
        self.Fan.on = True
        self.Fan.speed = 3 if value > 28 else 1
        self.after("30m", self.stop)

    def stop(self):
        self.Fan.on = False


START = datetime(2024, 6, 7, 10, tzinfo=timezone.utc)
DEMO_RULES = Path(__file__).resolve().parent.parent / "src" / "roost" / "demo" / "rules"


class Recording(FakeThing):
    """A FakeThing noting each write as a preview step shows it: (now(), "Title.property = json")."""

    def __init__(self, title: str, *, live: list[tuple[datetime, str]], now: Callable[[], datetime], **values):
        super().__init__(title, **values)
        self.live, self.now = live, now

    async def _write(self, name, value):
        self.live.append((self.now(), f"{self.title}.{name} = {json.dumps(value)}"))


def rules_directory(tmp_path: Path, source: str) -> Path:
    """A rules directory holding one file, cool.py, of `source` (dedented)."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "cool.py").write_text(textwrap.dedent(source))
    return rules


def readings():
    """Two rooms over four hours: the lounge hot twice (once too briefly), the hall once, very hot."""
    out = []
    for minute in range(0, 240, 2):
        at = START + timedelta(minutes=minute)
        lounge = 27.0 if 20 <= minute < 60 or 100 <= minute < 106 else 22.0
        hall = 29.5 if 150 <= minute < 200 else 21.0
        out += [(at, "lounge", lounge), (at, "hall", hall)]
    return out


def history(selector, lo, hi):
    for room in ("lounge", "hall"):
        series = Series.of("temperature_celsius", room=room)
        if not selector.matches(series):
            continue
        points = [(int(at.timestamp() * 1000), v) for at, r, v in readings() if r == room]
        ts = np.array([t for t, _ in points])
        values = np.array([v for _, v in points])
        keep = (ts >= lo) & (ts < hi)
        if keep.any():
            yield SeriesData(series, ts[keep], values[keep])


async def test_the_preview_and_the_live_rule_agree_action_by_action():
    live: list[tuple[datetime, str]] = []
    fan = Recording("Fan", live=live, now=lambda: house.clock.now(), on=False, speed=0)
    async with RuleHarness(CoolDown, things=[fan], start=START - timedelta(minutes=1)) as house:
        for at, room, value in readings():
            await house.clock.advance_to(at)
            await house.reading(f'temperature_celsius{{room="{room}"}}', value)
        await house.clock.advance_to(START + timedelta(hours=5))

    result = await preview(
        RuleSource(CoolDown, None, 1), things=[FakeThing("Fan", on=False, speed=0)], history=history,
        start=START - timedelta(minutes=1), end=START + timedelta(hours=5), place=Place(timezone="UTC"),
    )
    steps, notes = result.steps, result.notes
    assert notes == [] and result.sentence == CoolDown.__doc__
    assert [(s.at, s.action) for s in steps] == live
    assert [(s.at.strftime("%H:%M"), s.trigger, s.action) for s in steps] == [
        ("10:30", 'temperature_celsius{room=~"lounge|hall"} > 25 for 10m', "Fan.on = true"),
        ("10:30", 'temperature_celsius{room=~"lounge|hall"} > 25 for 10m', "Fan.speed = 1"),
        ("11:00", "timer stop()", "Fan.on = false"),
        ("12:40", 'temperature_celsius{room=~"lounge|hall"} > 25 for 10m', "Fan.on = true"),
        ("12:40", 'temperature_celsius{room=~"lounge|hall"} > 25 for 10m', "Fan.speed = 3"),
        ("13:10", "timer stop()", "Fan.on = false"),
    ]
    assert steps[2].sentence == "Timer stop(): turn off Fan"
    assert steps[4].sentence == 'Temperature_celsius{room=~"lounge|hall"} > 25 for 10m: set speed of Fan to 3'


class Overheats(Rule):
    """When a room has been above 25 °C for 10 minutes, fail."""

    def register_triggers(self):
        return (Threshold('temperature_celsius{room=~"lounge|hall"} > 25 for 10m'),)

    def action(self, trigger, series, value):
        raise RuntimeError(f"{series} at {value}")


async def test_an_action_that_raises_is_a_failure_of_the_timeline_as_the_live_rule_counts_it(caplog):
    async with RuleHarness(Overheats, things=[], start=START - timedelta(minutes=1)) as house:
        for at, room, value in readings():
            await house.clock.advance_to(at)
            await house.reading(f'temperature_celsius{{room="{room}"}}', value)
        live_errors = house.engine.runtimes["Overheats"].errors_total
    assert sum("Overheats.action failed" in r.getMessage() for r in caplog.records if r.levelname == "ERROR") == 2

    caplog.clear()
    result = await preview(RuleSource(Overheats, None, 1), things=[], history=history, start=START - timedelta(minutes=1),
                           end=START + timedelta(hours=5), place=Place(timezone="UTC"))
    trigger = 'temperature_celsius{room=~"lounge|hall"} > 25 for 10m'
    assert result.steps == [] and len(result.failures) == live_errors == 2
    assert [(f.at.strftime("%H:%M"), f.trigger, f.disabled) for f in result.failures] == [
        ("10:30", trigger, False), ("12:40", trigger, False)]
    assert result.failures[1].error == 'Overheats.action failed: RuntimeError: temperature_celsius{room="hall"} at 29.5'
    assert result.as_json()["inputs"] == [{"trigger": trigger, "selector": 'temperature_celsius{room=~"lounge|hall"}',
                                           "op": ">", "limit": 25.0}]
    assert result.as_json()["failures"][0] == {"at": "2024-06-07T10:30:00.000+00:00", "trigger": trigger,
                                               "error": result.failures[0].error, "disabled": False}
    # The hub's log is for live rules: an operator must not read a preview's failure as the rule failing.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_roost_rules_preview_prints_the_timeline_from_the_store(tmp_path):
    from conftest import run_roost

    from roost.hub import store_options
    from roost.config import load_config
    from roost.model import Reading
    from roost.store import Store

    data = tmp_path / "data"
    settings = load_config(None, data_dir=str(data))
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    began = now - timedelta(hours=3)
    store = Store.open(data, store_options(settings), writer=True)
    store.write([Reading(Series.of("temperature_celsius", room="lounge"), int((began + timedelta(minutes=m)).timestamp() * 1000),
                         27.0 if m < 60 else 22.0) for m in range(0, 120)])
    store.sync()
    store.close()
    rules_directory(tmp_path, '''
        from roost.rules import Rule, Threshold

        class CoolDown(Rule):
            """Fan for 30 minutes when the lounge has been above 25 for 10 minutes."""

            def register_triggers(self):
                return (Threshold('temperature_celsius{room="lounge"} > 25 for 10m'),)

            def action(self, *args):
                self.Fan.on = True
                self.after("30m", self.stop)

            def stop(self):
                self.Fan.on = False
    ''')
    config = tmp_path / "roost.toml"
    config.write_text('[rules]\ndirectory = "rules"\ntimezone = "UTC"\n[hub]\nlisten = "127.0.0.1:9"\n')
    proc = run_roost("rules", "preview", "CoolDown", "--since", "6h", "--format", "json", "-c", str(config),
                     "--data", str(data), cwd=tmp_path)
    out = json.loads(proc.stdout)
    assert [(s["at"][:16], s["action"]) for s in out["steps"]] == [
        ((began + timedelta(minutes=10)).isoformat()[:16], "Fan.on = true"),
        ((began + timedelta(minutes=40)).isoformat()[:16], "Fan.on = false"),
    ]
    assert out["notes"] == ["no hub answers at http://127.0.0.1:9: the rule's things start with no values"]
    proc = run_roost("rules", "preview", "CoolDown", "--since", "6h", "-c", str(config), "--data", str(data), cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and lines[1].endswith("Timer stop(): turn off Fan")
    proc = run_roost("rules", "preview", "Cooldown", "-c", str(config), "--data", str(data), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "no rule named 'Cooldown' (did you mean \"CoolDown\"?)" in proc.stderr


async def test_the_preview_of_the_demos_wake_up_and_porch_rules_over_a_weekend():
    from roost.rules.loader import load_directory
    from roost.rules.triggers import sun_event

    sources, problems = load_directory(DEMO_RULES)
    assert problems == []
    by_name = {s.cls.__name__: s for s in sources}
    berlin = Place(52.52, 13.405, "Europe/Berlin")
    start, end = datetime(2024, 6, 7, 0, tzinfo=timezone.utc), datetime(2024, 6, 9, 0, tzinfo=timezone.utc)  # Fri, Sat

    async def weekend(rule: str):
        things = [FakeThing("Lounge Lamp", on=False, brightness=60), FakeThing("Porch Light", on=False),
                  FakeThing("Kettle Plug", on=False)]
        return await preview(by_name[rule], things=things, history=lambda *a: (), start=start, end=end, place=berlin)

    def local(step):
        return berlin.local(step.at).strftime("%a %H:%M:%S")

    result = await weekend("WakeUp")
    steps, notes = result.steps, result.notes
    assert notes == []
    assert [(local(s), s.action) for s in steps[:3]] == [
        ("Fri 06:30:00", "Lounge Lamp.brightness = 0"), ("Fri 06:30:00", "Lounge Lamp.on = true"),
        ("Fri 06:30:12", "Lounge Lamp.brightness = 1"),
    ]
    assert (local(steps[101]), steps[101].action) == ("Fri 06:50:00", "Lounge Lamp.brightness = 100")
    assert [(local(s), s.action) for s in steps[102:104]] == [
        ("Sat 08:00:00", "Lounge Lamp.brightness = 0"), ("Sat 08:00:12", "Lounge Lamp.brightness = 1"),  # on already
    ]
    assert len(steps) == 102 + 101 and steps[0].sentence == "At 06:30 on weekdays: set brightness of Lounge Lamp to 0"

    steps = (await weekend("PorchLight")).steps
    dusk = [sun_event("dusk", datetime(2024, 6, day).date(), berlin) for day in (7, 8)]
    assert [(s.at, s.sentence) for s in steps] == [
        (dusk[0], "At dusk: turn on Porch Light"), (datetime(2024, 6, 7, 21, tzinfo=timezone.utc), "At 23:00: turn off Porch Light"),
        (dusk[1], "At dusk: turn on Porch Light"), (datetime(2024, 6, 8, 21, tzinfo=timezone.utc), "At 23:00: turn off Porch Light"),
    ]
    assert local(steps[0]).startswith("Fri 22:1")

    result = await weekend("BondedLights")
    assert result.steps == [] and result.notes == [
        "thing changes are not recorded here: the triggers on things never fire in this preview"]


async def test_the_preview_of_the_demos_bonded_lights_replays_the_recorded_thing_changes(tmp_path):
    """The live rule records the things' changes as a hub does; the preview over them makes the same writes."""
    from roost.rules.loader import load_file
    from roost.rules.thinglog import ThingLog

    (source,), _ = load_file(DEMO_RULES / "bonded.py")
    live: list[tuple[datetime, str]] = []

    def things(cls):
        return [cls("Lounge Lamp", id="lounge-lamp", on=False, brightness=60), cls("Porch Light", id="porch-light", on=False)]

    start = datetime(2024, 6, 7, 16, tzinfo=timezone.utc)
    recording = partial(Recording, live=live, now=lambda: house.clock.now())
    async with RuleHarness(source.cls, things=things(recording), start=start, thing_log=tmp_path / "changes") as house:
        await house.clock.advance("1h")
        await house.set("Lounge Lamp", on=True)  # someone uses the dashboard: the porch light follows
        await house.clock.advance("2h")
        await house.change("Porch Light", on=False)  # the porch light's own switch: the lamp follows
        await house.clock.advance("1h")
        await house.set("Lounge Lamp", brightness=20)  # not "on": the rule leaves it
    by_rule = [w for w in live if w[1] not in ("Lounge Lamp.on = true", "Lounge Lamp.brightness = 20")]  # not the test's
    assert [a for _, a in by_rule] == ["Porch Light.on = true", "Lounge Lamp.on = false"]

    result = await preview(source, things=things(FakeThing), history=lambda *a: (), start=start,
                           end=start + timedelta(hours=5), place=Place(timezone="UTC"), changes=ThingLog(tmp_path / "changes").read)
    assert [(s.at, s.action) for s in result.steps] == by_rule
    assert [s.sentence for s in result.steps] == ["Lounge Lamp changes: turn on Porch Light",
                                                  "Porch Light changes: turn off Lounge Lamp"]
    assert result.notes == []


async def test_the_hub_answers_a_rules_preview_as_json(tmp_path):
    from dataclasses import replace

    import aiohttp
    from conftest import hub_settings

    from roost.hub import Hub
    from roost.model import Reading
    from roost.rules.settings import RulesSettings
    from roost.things import PropertySpec, Thing

    rules = rules_directory(tmp_path, '''
        from roost.rules import Rule, Threshold

        class CoolDown(Rule):
            """Fan on when the lounge has been above 25 for 10 minutes."""

            def register_triggers(self):
                return (Threshold('temperature_celsius{room="lounge"} > 25 for 10m'),)

            def action(self, *args):
                self.Fan.on = True
    ''')
    settings = replace(hub_settings(tmp_path / "data"), rules=RulesSettings(directory=rules, timezone="UTC"))
    now = datetime.now(timezone.utc).replace(microsecond=0)
    began = now - timedelta(hours=2)
    async with Hub(settings) as hub, aiohttp.ClientSession(base_url=hub.url) as http:
        writes = []

        async def actuate(name, value):
            writes.append((name, value))

        hub.things.add(Thing(id="fan", title="Fan", properties={"on": PropertySpec("on", "boolean")}, values={"on": False},
                             actuator=actuate))
        await hub.things.set("rule-CoolDown", "enabled", False)  # a disabled rule can be previewed too
        await hub.ingest([Reading(Series.of("temperature_celsius", room="lounge"),
                                  int((began + timedelta(minutes=m)).timestamp() * 1000), 27.0 if m < 30 else 20.0)
                          for m in range(60)])
        async with http.get("/api/rules/CoolDown/preview", params={"since": "3h"}) as r:
            assert r.status == 200
            body = await r.json()
        assert body["sentence"] == "Fan on when the lounge has been above 25 for 10 minutes."
        assert [(s["at"][:19], s["action"], s["sentence"]) for s in body["steps"]] == [
            ((began + timedelta(minutes=10)).isoformat()[:19], "Fan.on = true",
             'Temperature_celsius{room="lounge"} > 25 for 10m: turn on Fan'),
        ]
        assert writes == [] and hub.things.get("fan").values["on"] is False  # nothing actuated
        async with http.get("/api/rules/Cool/preview") as r:
            assert r.status == 404 and (await r.json())["error"] == "no rule named 'Cool' (rules: CoolDown)"
        async with http.get("/api/rules/CoolDown/preview", params={"since": "1y"}) as r:
            assert r.status == 400


async def test_the_thing_log_keeps_switches_and_settings_but_not_sensor_numbers(tmp_path):
    from roost.rules.thinglog import ThingLog
    from roost.things import PropertySpec

    lamp = FakeThing("Lamp", id="lamp", on=False, brightness=10,
                     specs=[PropertySpec("temperature", "number", read_only=True)])
    async with RuleHarness(things=[lamp], start=START, thing_log=tmp_path / "changes") as house:
        await house.change("Lamp", temperature=21.5, on=True)
        await house.clock.advance("1d")
        await house.set("Lamp", brightness=40)
    lo = int(START.timestamp() * 1000)
    assert list(ThingLog(tmp_path / "changes").read(lo, lo + 2 * 86_400_000)) == [
        (lo, "lamp", "on", True, "device"), (lo + 86_400_000, "lamp", "brightness", 40, "api"),
    ]
    assert sorted(p.name for p in (tmp_path / "changes").iterdir()) == ["2024-06-07.jsonl", "2024-06-08.jsonl"]
