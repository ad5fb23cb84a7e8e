"""Rules keep their promises across restarts and reloads: timers, threshold holds, While rules, missed schedules.

The first part runs the engine on the test clock, restarting it on the same state directory; the second kills
a real `roost run` with SIGKILL in the middle of a hold and of a timer and checks the action still happens at
the promised time, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import textwrap
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import HubProcess

from roost.model import Series
from roost.rules import AbsoluteTimeTrigger, Changed, Rule, SunTrigger, Threshold, WhileRule
from roost.rules.errors import RuleError
from roost.rules.state import RuleStateStore
from roost.store.engine import SeriesData
from roost.testing import FakeThing, RuleHarness

# ------------------------------------------------------------------ timers


class Boost(Rule):
    """The heater runs for 30 minutes when the boost button is pressed."""

    def register_triggers(self):
        return (Changed(self.Boost_Button, "pressed"),)

    def action(self, *args):
        if self.Boost_Button.pressed:
            self.Heater.on = True
            self.after("30m", self.heater_off, "boost over")

    def heater_off(self, why):
        self.Heater.on = False
        self.Heater.note = why


def boost_things():
    return [FakeThing("Boost Button", pressed=False), FakeThing("Heater", on=False, note="")]


async def test_a_timer_fires_at_its_deadline_after_a_restart(tmp_path):
    button, heater = things = boost_things()
    async with RuleHarness(Boost, things=things, start="2024-03-06 12:00", state_dir=tmp_path) as house:
        await house.change("Boost Button", pressed=True)
        assert heater["on"] is True
        await house.clock.advance("10m")
    saved = json.loads((tmp_path / "Boost.json").read_text())
    assert saved["timers"]["heater_off"]["args"] == ["boost over"]
    async with RuleHarness(Boost, things=things, start="2024-03-06 12:25", state_dir=tmp_path) as house:
        await house.clock.advance("4m59s")
        assert heater["on"] is True
        await house.clock.advance("1s")
        assert (heater["on"], heater["note"]) == (False, "boost over")
        await house.clock.advance("1h")
    assert heater.writes == [("on", True), ("on", False), ("note", "boost over")]
    assert "timers" not in json.loads((tmp_path / "Boost.json").read_text())


async def test_a_timer_due_while_the_hub_was_down_runs_once_at_start(tmp_path):
    button, heater = things = boost_things()
    async with RuleHarness(Boost, things=things, start="2024-03-06 12:00", state_dir=tmp_path) as house:
        await house.change("Boost Button", pressed=True)
    async with RuleHarness(Boost, things=things, start="2024-03-06 13:00", state_dir=tmp_path) as house:
        assert heater["on"] is False
        await house.clock.advance("1h")
    assert heater.writes.count(("on", False)) == 1


async def test_starting_a_timer_again_moves_its_deadline_and_cancel_stops_it(tmp_path):
    button, heater = things = boost_things()
    async with RuleHarness(Boost, things=things, start="2024-03-06 12:00", state_dir=tmp_path) as house:
        await house.change("Boost Button", pressed=True)
        await house.clock.advance("20m")
        await house.change("Boost Button", pressed=False)
        await house.change("Boost Button", pressed=True)  # pressed again: 30 minutes from now
        await house.clock.advance("29m")
        assert heater["on"] is True
        await house.clock.advance("1m")
        assert heater["on"] is False
        await house.change("Boost Button", pressed=False)
        await house.change("Boost Button", pressed=True)
        assert house.rule("Boost").rule.cancel_timer(Boost.heater_off.__name__) is True
        await house.clock.advance("2h")
        assert heater["on"] is True


async def test_a_timer_takes_only_this_rules_methods_and_plain_arguments():
    class Wrong(Rule):
        def register_triggers(self):
            return (Changed(self.Boost_Button, "pressed"),)

        def action(self, *args):
            self.after("1m", self.off, object())

        def off(self, x):
            pass

    async with RuleHarness(Wrong, things=boost_things()) as house:
        with pytest.raises(RuleError, match="plain values"):
            house.rule("Wrong").rule.after("1m", house.rule("Wrong").rule.off, object())
        with pytest.raises(RuleError, match="a method of this rule"):
            house.rule("Wrong").rule.after("1m", print)


async def test_disabling_a_rule_drops_its_timers(tmp_path):
    button, heater = things = boost_things()
    async with RuleHarness(Boost, things=things, start="2024-03-06 12:00", state_dir=tmp_path) as house:
        await house.change("Boost Button", pressed=True)
        await house.enable("Boost", False)
        await house.enable("Boost", True)
        await house.clock.advance("1h")
        assert heater["on"] is True
    assert "timers" not in json.loads((tmp_path / "Boost.json").read_text())


# ------------------------------------------------------------------ thresholds judged from the store


class HotAlarm(Rule):
    """If the lounge stays above 25 °C for 10 minutes, sound the alarm."""

    def register_triggers(self):
        return (Threshold('temperature_celsius{room="lounge"} > 25 for 10m'),)

    def action(self, *args):
        self.Alarm.count = self.Alarm.count + 1


def stored(points):
    """A store's `read` holding these (datetime, value) readings of the lounge temperature."""
    series = Series.of("temperature_celsius", room="lounge")

    def history(selector, lo, hi):
        ts = np.array([int(t.timestamp() * 1000) for t, _ in points])
        values = np.array([v for _, v in points], dtype=float)
        keep = (ts >= lo) & (ts < hi)
        if keep.any():
            yield SeriesData(series, ts[keep], values[keep])

    return history


def utc(text):
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


async def test_a_hold_that_began_before_an_outage_fires_when_it_would_have(tmp_path):
    """7 minutes into a 10-minute hold the hub stops for a minute: it fires 3 minutes after it is back."""
    alarm = FakeThing("Alarm", count=0)
    points = [(utc("2024-03-06 11:50"), 24.0)] + [(utc(f"2024-03-06 12:0{m}"), 26.0) for m in range(8)]
    async with RuleHarness(HotAlarm, things=[alarm], start=utc("2024-03-06 12:08"), history=stored(points),
                           state_dir=tmp_path) as house:
        await house.clock.advance("1m59s")
        assert alarm["count"] == 0
        await house.clock.advance("1s")
        assert alarm["count"] == 1


async def test_a_hold_that_fired_before_a_restart_does_not_fire_again(tmp_path):
    alarm = FakeThing("Alarm", count=0)
    points = [(utc("2024-03-06 11:00"), 24.0)] + [(utc(f"2024-03-06 {11 + m // 60}:{m % 60:02d}"), 26.0)
                                                  for m in range(1, 50)]
    async with RuleHarness(HotAlarm, things=[alarm], start=utc("2024-03-06 11:30"), history=stored(points),
                           state_dir=tmp_path):
        assert alarm["count"] == 1
    # 20 minutes later, still hot: more than the lookback past the firing
    async with RuleHarness(HotAlarm, things=[alarm], start=utc("2024-03-06 11:50"), history=stored(points),
                           state_dir=tmp_path) as house:
        assert alarm["count"] == 1
        await house.reading('temperature_celsius{room="lounge"}', 24)  # broken: the next hold fires again
        await house.clock.advance("1s")
        await house.reading('temperature_celsius{room="lounge"}', 27)
        await house.clock.advance("10m")
        assert alarm["count"] == 2


async def test_a_hold_broken_while_the_hub_was_down_fires_again(tmp_path):
    alarm = FakeThing("Alarm", count=0)
    points = [(utc("2024-03-06 11:00"), 26.0), (utc("2024-03-06 11:10"), 26.0)]
    async with RuleHarness(HotAlarm, things=[alarm], start=utc("2024-03-06 11:11"), history=stored(points),
                           state_dir=tmp_path):
        assert alarm["count"] == 1
    points += [(utc("2024-03-06 11:12"), 20.0), (utc("2024-03-06 11:13"), 26.0), (utc("2024-03-06 11:25"), 26.0)]
    async with RuleHarness(HotAlarm, things=[alarm], start=utc("2024-03-06 11:30"), history=stored(points),
                           state_dir=tmp_path):
        assert alarm["count"] == 2


async def test_a_hold_whose_readings_stopped_long_ago_is_looked_for_further_back(tmp_path):
    """No reading for an hour (the hub and the sensor were down): the hold counts from its first reading."""
    alarm = FakeThing("Alarm", count=0)
    points = [(utc("2024-03-06 10:00"), 24.0), (utc("2024-03-06 10:55"), 26.0), (utc("2024-03-06 11:59"), 26.0)]
    async with RuleHarness(HotAlarm, things=[alarm], start=utc("2024-03-06 12:00"), history=stored(points),
                           state_dir=tmp_path):
        assert alarm["count"] == 1


async def test_thresholds_on_one_metric_are_judged_together_each_on_its_own_series(tmp_path):
    """At start the thresholds on one metric share one read of the store; each still sees only its series."""
    alarms = [FakeThing(f"Alarm {room}", count=0) for room in ("lounge", "hall", "attic")]

    def alarm_rule(room, limit):
        class Rule_(Rule):
            def register_triggers(self):
                return (Threshold(f'temperature_celsius{{room="{room}"}} > {limit} for 10m'),)

            def action(self, *args):
                alarm = getattr(self, f"Alarm_{room}")
                alarm.count = alarm.count + 1

        Rule_.__name__ = f"Hot{room.title()}"
        return Rule_

    def history(selector, lo, hi):
        for room, values in (("lounge", [26, 26, 26]), ("hall", [26, 24, 26]), ("attic", [30, 30, 30])):
            series = Series.of("temperature_celsius", room=room)
            if selector.matches(series):
                ts = np.array([int(utc(f"2024-03-06 11:{m}").timestamp() * 1000) for m in ("45", "50", "59")])
                keep = (ts >= lo) & (ts < hi)
                yield SeriesData(series, ts[keep], np.array(values, dtype=float)[keep])

    async with RuleHarness(alarm_rule("lounge", 25), alarm_rule("hall", 25), alarm_rule("attic", 35),
                           things=alarms, start=utc("2024-03-06 12:00"), history=history, state_dir=tmp_path) as house:
        assert [a["count"] for a in alarms] == [1, 0, 0]  # the hall's hold began at 11:59, the attic is not > 35
        await house.clock.advance("9m")
        assert [a["count"] for a in alarms] == [1, 1, 0]


# ------------------------------------------------------------------ While rules


class FanWhileHot(WhileRule):
    """The fan runs while the window is closed."""

    def register_triggers(self):
        return (Changed(self.Window, "closed"),)

    def action(self, *args):
        self.Fan.speed = 3


async def test_a_while_rule_undoes_its_action_after_a_restart(tmp_path):
    window, fan = things = [FakeThing("Window", closed=False), FakeThing("Fan", speed=1)]
    async with RuleHarness(FanWhileHot, things=things, state_dir=tmp_path) as house:
        await house.change("Window", closed=True)
        assert fan["speed"] == 3
    assert json.loads((tmp_path / "FanWhileHot.json").read_text())["while"] == {"undo": [["fake-fan", "speed", 1, 3]]}
    async with RuleHarness(FanWhileHot, things=things, state_dir=tmp_path) as house:
        assert fan.writes == [("speed", 3)]  # still in effect: not acted again
        await house.change("Window", closed=False)
        assert fan["speed"] == 1


async def test_a_while_rule_whose_condition_ended_during_the_outage_undoes_at_start(tmp_path):
    window, fan = things = [FakeThing("Window", closed=False), FakeThing("Fan", speed=1)]
    async with RuleHarness(FanWhileHot, things=things, state_dir=tmp_path) as house:
        await house.change("Window", closed=True)
    window.values["closed"] = False
    async with RuleHarness(FanWhileHot, things=things, state_dir=tmp_path):
        assert fan["speed"] == 1
    assert "while" not in json.loads((tmp_path / "FanWhileHot.json").read_text())


# ------------------------------------------------------------------ missed schedules


class Morning(Rule):
    """Coffee at 06:30, catching up for two hours."""

    def register_triggers(self):
        return (AbsoluteTimeTrigger("06:30", catch_up="2h"),)

    def action(self, *args):
        self.Coffee.on = True


class Evening(Rule):
    """Porch light at dusk, no catching up."""

    def register_triggers(self):
        return (SunTrigger("dusk"),)

    def action(self, *args):
        self.Porch_Light.on = True


async def test_a_missed_time_within_catch_up_runs_once_at_start(tmp_path, caplog):
    coffee = FakeThing("Coffee", on=False)
    async with RuleHarness(Morning, things=[coffee], start="2024-03-06 06:00", state_dir=tmp_path):
        pass
    caplog.set_level(logging.INFO, "roost.rules")
    async with RuleHarness(Morning, things=[coffee], start="2024-03-06 08:00", state_dir=tmp_path) as house:
        assert coffee.writes == [("on", True)]
        await house.clock.advance("1h")
    assert coffee.writes == [("on", True)]
    assert "rule Morning: at 06:30 fell at 2024-03-06 06:30:00 CET while the hub was down; running it now (catch_up 2h)" in caplog.text


async def test_a_missed_time_outside_catch_up_is_logged_with_its_time(tmp_path, caplog):
    coffee, porch = things = [FakeThing("Coffee", on=False), FakeThing("Porch Light", on=False)]
    async with RuleHarness(Morning, Evening, things=things, start="2024-03-06 06:00", state_dir=tmp_path):
        pass
    async with RuleHarness(Morning, Evening, things=things, start="2024-03-08 09:00", state_dir=tmp_path) as house:
        assert coffee.writes == [] and porch.writes == []
        await house.clock.advance_to("06:30")
        assert coffee.writes == [("on", True)]
    assert ("rule Morning: missed at 06:30: it fell at 2024-03-08 06:30:00 CET (and 2 times before) while the hub "
            "was down (more than catch_up 2h ago)") in caplog.text
    assert "rule Evening: missed at dusk: it fell at 2024-03-07 18:" in caplog.text
    assert "(and 1 time before) while the hub was down (no catch_up)" in caplog.text


async def test_a_schedule_that_fired_before_the_restart_is_not_caught_up(tmp_path):
    coffee = FakeThing("Coffee", on=False)
    async with RuleHarness(Morning, things=[coffee], start="2024-03-06 06:00", state_dir=tmp_path) as house:
        await house.clock.advance("31m")
        assert coffee.writes == [("on", True)]
    async with RuleHarness(Morning, things=[coffee], start="2024-03-06 07:00", state_dir=tmp_path):
        assert coffee.writes == [("on", True)]


def test_catch_up_must_be_a_duration():
    with pytest.raises(RuleError, match="catch_up='two hours'"):
        AbsoluteTimeTrigger("06:30", catch_up="two hours")


# ------------------------------------------------------------------ exactly once across a crash

# What a kill -9 at a point of a rule leaves behind is what is on disk then: `at_crash` copies the state files
# (each replaced atomically, so each is whole) to another directory, which a second harness starts from.
CRASH: dict[str, Any] = {}


def crash_here() -> None:
    if (hook := CRASH.pop("hook", None)) is not None:
        hook()


def at_crash(state: Path, to: Path) -> None:
    to.mkdir(exist_ok=True)
    for path in state.glob("*.json"):
        with contextlib.suppress(FileNotFoundError):
            shutil.copyfile(path, to / path.name)


class TimerDone(Rule):
    """Thirty minutes after the button is pressed, count."""

    def register_triggers(self):
        return (Changed(self.Boost_Button, "pressed"),)

    def action(self, *args):
        if self.Boost_Button.pressed:
            self.after("30m", self.done)

    def done(self):
        crash_here()
        self.Done.count = self.Done.count + 1


class HoldDone(Rule):
    """When the lounge has been above 25 for 10 minutes, count."""

    def register_triggers(self):
        return (Threshold('temperature_celsius{room="lounge"} > 25 for 10m'),)

    def action(self, *args):
        crash_here()
        self.Done.count = self.Done.count + 1


class ScheduleDone(Rule):
    """At 06:30, count (catching up for two hours)."""

    def register_triggers(self):
        return (AbsoluteTimeTrigger("06:30", catch_up="2h"),)

    def action(self, *args):
        crash_here()
        self.Done.count = self.Done.count + 1


# the lounge above 25 from 06:00 local (05:00 UTC): the hold is due at 06:10
LOUNGE = stored([(utc("2024-03-06 04:59"), 24.0)] + [(utc(f"2024-03-06 05:{m:02d}"), 26.0) for m in range(60)])


async def keep_the_promise(house, kind: str) -> None:
    if kind == "timer":
        await house.change("Boost Button", pressed=True)
    house.engine.flush()
    await asyncio.to_thread(house.engine.state.drain)  # the promise on disk, as in the minutes before it is due
    await house.clock.advance_to({"timer": "06:30", "hold": "06:10", "schedule": "06:30"}[kind])


def crash_harness(kind: str, done: FakeThing, state: Path, start: str) -> RuleHarness:
    rule = {"timer": TimerDone, "hold": HoldDone, "schedule": ScheduleDone}[kind]
    return RuleHarness(rule, things=[FakeThing("Boost Button", pressed=False), done], start=start,
                       history=LOUNGE, state_dir=state)


@pytest.mark.parametrize("kind", ["timer", "hold", "schedule"])
async def test_a_promise_whose_action_started_before_a_crash_is_not_kept_again(tmp_path, kind):
    """Killed just as the action starts: the state on disk says the promise was kept, so the restarted hub does
    not act again (a timer's, a hold's or a schedule's state was only queued for writing then, before)."""
    state, crashed = tmp_path / "state", tmp_path / "crashed"
    done = FakeThing("Done", count=0)
    CRASH["hook"] = lambda: at_crash(state, crashed)
    async with crash_harness(kind, done, state, "2024-03-06 06:00") as house:
        await keep_the_promise(house, kind)
        assert done["count"] == 1 and "hook" not in CRASH
    async with crash_harness(kind, done, crashed, "2024-03-06 06:45") as house:
        await house.clock.advance("1h")
    assert done["count"] == 1


@pytest.mark.parametrize("kind", ["timer", "hold", "schedule"])
async def test_a_promise_due_when_a_crash_came_before_its_state_was_written_is_kept_once(tmp_path, kind, monkeypatch):
    """Killed while the state saying "kept" is being written: the action has not run yet, and the restarted
    hub runs it, once."""
    state, crashed = tmp_path / "state", tmp_path / "crashed"
    done = FakeThing("Done", count=0)
    seen: list[dict] = []
    acted_at_crash: list[int] = []
    save = RuleStateStore.save

    def kept(saved: dict) -> bool:  # the state says the promise was kept (as against every state before)
        if kind == "timer":
            return any("timers" in s for s in seen) and "timers" not in saved
        if kind == "hold":
            return bool(saved.get("thresholds"))
        return any(s.get("times") for s in seen) and saved.get("times") != next(s["times"] for s in seen if s.get("times"))

    def crashing_save(store, name, saved):
        if not acted_at_crash and kept(saved):
            at_crash(state, crashed)  # the disk when the process dies before this write completes
            acted_at_crash.append(done["count"])
        seen.append(saved)
        save(store, name, saved)

    monkeypatch.setattr(RuleStateStore, "save", crashing_save)
    async with crash_harness(kind, done, state, "2024-03-06 06:00") as house:
        await keep_the_promise(house, kind)
    assert acted_at_crash == [0]  # the action had not run when its promise was being written as kept
    monkeypatch.setattr(RuleStateStore, "save", save)
    again = FakeThing("Done", count=0)
    async with crash_harness(kind, again, crashed, "2024-03-06 06:45") as house:
        await house.clock.advance("1h")
    assert again["count"] == 1


# ------------------------------------------------------------------ reloading one file


def write_rule(directory, name, body):
    (directory / name).write_text(textwrap.dedent(body))


BOOST_FILE = '''
    from roost.rules import Changed, Rule

    class Boost(Rule):
        """Heater for 30 minutes."""

        def register_triggers(self):
            return (Changed(self.Boost_Button, "pressed"),)

        def action(self, *args):
            if self.Boost_Button.pressed:
                self.Heater.on = True
                self.after("30m", self.off)

        def off(self):
            self.Heater.on = False
'''

OTHER_FILE = '''
    from roost.rules import HeartBeat, Rule

    class Other(Rule):
        """Counts (VERSION)."""

        def register_triggers(self):
            return (HeartBeat("1h"),)
'''


async def test_reloading_one_file_keeps_the_other_rules_and_their_timers(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    write_rule(rules, "boost.py", BOOST_FILE)
    write_rule(rules, "other.py", OTHER_FILE.replace("VERSION", "1"))
    button, heater = things = boost_things()
    async with RuleHarness(things=things, start="2024-03-06 12:00", state_dir=tmp_path / "state") as house:
        assert await house.engine.load_directory(rules) == []
        await house.change("Boost Button", pressed=True)
        boost = house.rule("Boost")
        await house.clock.advance("10m")
        write_rule(rules, "other.py", OTHER_FILE.replace("VERSION", "2"))
        assert await house.engine.reload_if_changed() == []
        assert house.rule("Other").sentence == "Counts (2)."
        assert house.rule("Boost") is boost and boost.armed
        await house.clock.advance("19m")
        assert heater["on"] is True
        await house.clock.advance("1m")
        assert heater["on"] is False


async def test_reloading_a_rules_own_file_keeps_its_timer(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    write_rule(rules, "boost.py", BOOST_FILE)
    button, heater = things = boost_things()
    async with RuleHarness(things=things, start="2024-03-06 12:00", state_dir=tmp_path / "state") as house:
        assert await house.engine.load_directory(rules) == []
        await house.change("Boost Button", pressed=True)
        await house.clock.advance("10m")
        write_rule(rules, "boost.py", BOOST_FILE.replace("Heater for 30 minutes.", "Heater boost."))
        assert await house.engine.reload_if_changed() == []
        assert house.rule("Boost").sentence == "Heater boost."
        await house.clock.advance("19m59s")
        assert heater["on"] is True
        await house.clock.advance("1s")
        assert heater["on"] is False


# ------------------------------------------------------------------ a real hub, killed with SIGKILL


MARKING = '''
    import time
    from pathlib import Path

    from roost.rules import AbsoluteTimeTrigger, Rule, Threshold

    MARKS = Path(r"{marks}")


    def mark(what):
        with MARKS.open("a") as f:
            f.write(f"{{what}} {{time.time():.3f}}\\n")
'''


def marks(path) -> dict[str, list[float]]:
    seen: dict[str, list[float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            what, at = line.split()
            seen.setdefault(what, []).append(float(at))
    return seen


def wait_until(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout:g} s")


def push(hub, body: str) -> float:
    """POST line protocol (stamped by the hub on arrival); returns the time halfway through the request."""
    before = time.time()
    with urllib.request.urlopen(urllib.request.Request(hub.url + "/write", data=body.encode(), method="POST"), timeout=10) as r:
        assert r.status == 204
    return (before + time.time()) / 2


class KillableHub:
    """`roost run` on a rules file (with `mark(what)` noting when each action ran) and a store in tmp_path, killed
    with SIGKILL and started again on the same store."""

    def __init__(self, tmp_path: Path, rules_body: str, extra_config: str = ""):
        self.rules = tmp_path / "rules"
        self.rules.mkdir()
        self.marks_path = tmp_path / "marks"
        (self.rules / "promises.py").write_text(
            textwrap.dedent(MARKING.format(marks=self.marks_path)) + textwrap.dedent(rules_body))
        self.config = tmp_path / "roost.toml"
        self.config.write_text(f'[rules]\ndirectory = "{self.rules}"\ntimezone = "UTC"\n{extra_config}')
        self.data = tmp_path / "data"
        self.process: HubProcess | None = None

    def start(self) -> KillableHub:
        self.process = HubProcess(self.data, "-c", str(self.config))
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.proc.poll() is None:
            self.process.kill(9)

    def restart(self) -> KillableHub:
        self.kill()
        return self.start()

    def died(self) -> int:
        """The exit status of a hub that ends by itself (within 10 s)."""
        assert self.process is not None
        return self.process.proc.wait(timeout=10)

    def marks(self) -> dict[str, list[float]]:
        return marks(self.marks_path)

    def state(self, rule: str) -> Path:
        return self.data / "rules-state" / f"{rule}.json"

    @property
    def url(self) -> str:
        assert self.process is not None
        return self.process.url

    @property
    def log(self) -> str:
        assert self.process is not None
        return Path(self.process.log.name).read_text()


@pytest.fixture
def killable_hub(tmp_path):
    """Make the test's KillableHub (not started); it is killed at the end of the test if still running."""
    made: list[KillableHub] = []

    def make(rules_body: str, extra_config: str = "") -> KillableHub:
        made.append(KillableHub(tmp_path, rules_body, extra_config))
        return made[-1]

    yield make
    for hub in made:
        hub.kill()


def test_a_killed_hub_keeps_a_pending_hold_and_a_timer_at_their_promised_times(killable_hub):
    hub = killable_hub('''

        class Hot(Rule):
            """Marks when the test room has been above 25 for 8 seconds."""

            def register_triggers(self):
                return (Threshold('heat_celsius{room="test"} > 25 for 8s'),)

            def action(self, *args):
                mark("hot")


        class Boost(Rule):
            """Marks a boost request and, 8 seconds later, its end."""

            def register_triggers(self):
                return (Threshold('boost_requested{room="test"} > 0'),)

            def action(self, *args):
                mark("boost")
                self.after("8s", self.over)

            def over(self):
                mark("over")
    ''')
    hub.start()
    pushed = push(hub, "heat_celsius,room=test value=26\nboost_requested,room=test value=1\n")
    boosted = wait_until(lambda: hub.marks().get("boost"), "the boost rule ran")[0]
    wait_until(lambda: hub.state("Boost").exists() and "timers" in hub.state("Boost").read_text(), "the timer saved")
    time.sleep(max(0.0, pushed + 3 - time.time()))
    hub.kill()  # 3 s into the hold and into the timer
    assert "hot" not in hub.marks()
    hub.start()
    restarted = time.time()
    wait_until(lambda: {"hot", "over"} <= set(hub.marks()), "the hold and the timer", timeout=30)
    time.sleep(2)  # anything fired twice would be there by now
    hub.kill()
    seen = hub.marks()
    assert restarted < pushed + 7, "the restart took too long for this test to mean anything"
    assert (len(seen["boost"]), len(seen["hot"]), len(seen["over"])) == (1, 1, 1)
    assert abs(seen["hot"][0] - (pushed + 8)) < 1.0
    assert abs(seen["over"][0] - (boosted + 8)) < 1.0


def test_a_hub_that_dies_as_a_timer_acts_or_just_before_does_not_act_twice_or_never(killable_hub):
    """Two real crashes: `Once` kills the process (os._exit) as its timer's method starts, `Late` as the state
    saying its timer is over is being written (the rule file wraps the state store's write). After each restart
    each timer's method has run exactly once."""
    hub = killable_hub('''
        import os

        from roost.rules.state import RuleStateStore

        _save = RuleStateStore.save


        def save(store, name, state):
            if name == "Late" and "timers" not in state and "late" in MARKS.read_text() and "crashed" not in MARKS.read_text():
                mark("crashed")
                os._exit(9)  # killed before the write saying the timer is over reaches the disk
            _save(store, name, state)


        RuleStateStore.save = save


        class Once(Rule):
            """Two seconds after a request, marks "over", and the first time dies at once."""

            def register_triggers(self):
                return (Threshold('once_requested{room="test"} > 0'),)

            def action(self, *args):
                mark("once")
                self.after("2s", self.over)

            def over(self):
                crashed = "over" in MARKS.read_text()
                mark("over")
                if not crashed:
                    os._exit(9)


        class Late(Rule):
            """Six seconds after a request, marks "late_over"."""

            def register_triggers(self):
                return (Threshold('late_requested{room="test"} > 0'),)

            def action(self, *args):
                mark("late")
                self.after("6s", self.over)

            def over(self):
                mark("late_over")
    ''')
    hub.start()
    push(hub, "once_requested,room=test value=1\nlate_requested,room=test value=1\n")
    wait_until(lambda: "over" in hub.marks(), "Once's timer")
    assert hub.died() == 9  # died in the timer's method
    hub.start()
    wait_until(lambda: "crashed" in hub.marks(), "Late's timer")
    assert hub.died() == 9  # died writing that the timer is over
    assert "late_over" not in hub.marks()
    hub.start()
    wait_until(lambda: "late_over" in hub.marks(), "Late's timer after the restart")
    time.sleep(2)  # anything run twice would be there by now
    hub.kill()
    counts = {what: len(at) for what, at in hub.marks().items()}
    assert counts == {"once": 1, "late": 1, "over": 1, "crashed": 1, "late_over": 1}

def test_a_schedule_missed_by_a_killed_hub_is_caught_up_once_or_logged(killable_hub):
    at = (datetime.now(timezone.utc) + timedelta(seconds=12)).strftime("%H:%M:%S")
    hub = killable_hub(f'''

        class Caught(Rule):
            """Catches up for two hours."""

            def register_triggers(self):
                return (AbsoluteTimeTrigger("{at}", catch_up="2h"),)

            def action(self, *args):
                mark("caught")


        class Missed(Rule):
            """No catching up."""

            def register_triggers(self):
                return (AbsoluteTimeTrigger("{at}"),)

            def action(self, *args):
                mark("missed")
    ''')
    hub.start()
    wait_until(lambda: all(hub.state(name).exists() for name in ("Caught", "Missed")), "promises saved")
    hub.kill()
    due = datetime.combine(datetime.now(timezone.utc).date(), datetime.strptime(at, "%H:%M:%S").time(), timezone.utc)
    assert datetime.now(timezone.utc) < due, "the hub took too long to start for this test to mean anything"
    time.sleep(max(0.0, (due - datetime.now(timezone.utc)).total_seconds() + 0.5))
    hub.start()
    wait_until(lambda: hub.marks().get("caught"), "the caught-up run")
    time.sleep(1)
    hub.kill()
    assert hub.marks() == {"caught": hub.marks()["caught"]}
    assert len(hub.marks()["caught"]) == 1
    log = hub.log
    assert f"rule Missed: missed at {at}: it fell at {due:%Y-%m-%d} {at} UTC while the hub was down (no catch_up)" in log


async def test_a_while_rule_in_effect_when_the_hub_was_killed_still_undoes_its_action(tmp_path, killable_hub):
    """Through a zigbee2mqtt fan on a real mosquitto: the test plays the device, confirming each command."""
    import asyncio
    import contextlib

    import aiomqtt
    from test_mqtt import Mosquitto

    broker = Mosquitto(tmp_path)
    broker.start()
    hub = killable_hub('''
        from roost.rules import WhileRule


        class FanWhileHot(WhileRule):
            """The fan runs while the test room is above 25."""

            def register_triggers(self):
                return (Threshold('heat_celsius{room="test"} > 25'),)

            def action(self, *args):
                self.test_fan.on = True
    ''', f'[[source.mqtt]]\nurl = "{broker.url}"\nname = "home"\n[source.mqtt.zigbee2mqtt]\n')
    commands: asyncio.Queue = asyncio.Queue()

    async def device(client: aiomqtt.Client) -> None:
        await client.subscribe("zigbee2mqtt/test_fan/set")
        async for message in client.messages:
            command = json.loads(message.payload)
            await commands.put(command)
            await client.publish("zigbee2mqtt/test_fan", json.dumps(command), qos=1, retain=True)

    async def fan_known(hub) -> None:
        import aiohttp

        async with aiohttp.ClientSession(base_url=hub.url) as http:
            for _ in range(300):
                async with http.get("/things/test-fan") as r:
                    if r.status == 200:
                        return
                await asyncio.sleep(0.05)
        raise AssertionError("the fan did not become a thing")

    try:
        async with broker.client() as client:
            await client.publish("zigbee2mqtt/test_fan", json.dumps({"state": "OFF"}), qos=1, retain=True)
            playing = asyncio.create_task(device(client))
            try:
                await asyncio.to_thread(hub.start)
                await fan_known(hub)
                await asyncio.to_thread(push, hub, "heat_celsius,room=test value=26\n")
                assert await asyncio.wait_for(commands.get(), 10) == {"state": "ON"}
                await asyncio.sleep(0.3)  # the device's confirmation reaches the hub
                await asyncio.to_thread(hub.restart)
                await fan_known(hub)
                await asyncio.sleep(2.5)  # the rule arms (it waits for the fan) and judges the stored readings
                assert commands.empty()  # still in effect: nothing sent again
                await asyncio.to_thread(push, hub, "heat_celsius,room=test value=20\n")
                assert await asyncio.wait_for(commands.get(), 10) == {"state": "OFF"}
            finally:
                playing.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await playing
    finally:
        hub.kill()
        broker.stop()


def test_editing_one_rule_file_of_a_running_hub_keeps_another_rules_pending_timer(killable_hub):
    hub = killable_hub('''

        class Boost(Rule):
            """Marks a boost request and, 6 seconds later, its end."""

            def register_triggers(self):
                return (Threshold('boost_requested{room="test"} > 0'),)

            def action(self, *args):
                mark("boost")
                self.after("6s", self.over)

            def over(self):
                mark("over")
    ''')
    other = hub.rules / "other.py"
    other.write_text(textwrap.dedent(OTHER_FILE.replace("VERSION", "1")))
    hub.start()
    push(hub, "boost_requested,room=test value=1\n")
    boosted = wait_until(lambda: hub.marks().get("boost"), "the boost rule ran")[0]
    other.write_text(textwrap.dedent(OTHER_FILE.replace("VERSION", "two")))
    wait_until(lambda: "rules: reloaded other.py (Other)" in hub.log, "the edited file reloaded")
    assert time.time() < boosted + 6, "the reload came too late for this test to mean anything"
    wait_until(lambda: hub.marks().get("over"), "the timer")
    time.sleep(1)
    hub.kill()
    seen = hub.marks()
    assert (len(seen["boost"]), len(seen["over"])) == (1, 1)
    assert abs(seen["over"][0] - (boosted + 6)) < 1.0
    assert "rules: reloaded other.py (Other)" in hub.log and "rules: 2 of 2 armed" in hub.log


async def test_roost_rules_reload_reloads_the_changed_file_now(tmp_path):
    import asyncio
    from dataclasses import replace

    from conftest import hub_settings, run_roost

    from roost.hub import Hub
    from roost.rules.settings import RulesSettings

    rules = tmp_path / "rules"
    rules.mkdir()
    write_rule(rules, "other.py", OTHER_FILE.replace("VERSION", "1"))
    settings = replace(hub_settings(tmp_path / "data"), rules=RulesSettings(directory=rules))
    async with Hub(settings) as hub:
        config = tmp_path / "roost.toml"
        config.write_text(f'[rules]\ndirectory = "rules"\n[hub]\nlisten = "{hub.url.removeprefix("http://")}"\n')
        write_rule(rules, "other.py", OTHER_FILE.replace("VERSION", "two"))
        proc = await asyncio.to_thread(run_roost, "rules", "reload", "-c", str(config), cwd=tmp_path)
        assert proc.stdout.strip() in ("reloaded other.py", "no rule file changed")  # the watcher may be first
        assert hub.things.get("rule-Other").description == "Counts (two)."
        proc = await asyncio.to_thread(run_roost, "rules", "reload", "-c", str(config), cwd=tmp_path)
        assert proc.stdout.strip() == "no rule file changed"
        write_rule(rules, "other.py", "def broken(:\n")
        proc = await asyncio.to_thread(run_roost, "rules", "reload", "-c", str(config), cwd=tmp_path, check=False)
        if proc.stdout.strip() != "no rule file changed":  # else the watcher was first, and logged the problem
            assert proc.returncode == 1 and "other.py:1: syntax error" in proc.stderr
    (tmp_path / "roost.toml").write_text('[rules]\ndirectory = "rules"\n[hub]\nlisten = "127.0.0.1:9"\n')
    proc = run_roost("rules", "reload", "-c", str(tmp_path / "roost.toml"), cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "http://127.0.0.1:9: no hub answers" in proc.stderr
