"""Rules keep their promises across restarts and reloads: timers, threshold holds, While rules, missed schedules.

The first part runs the engine on the test clock, restarting it on the same state directory; the second kills
a real `roost run` with SIGKILL in the middle of a hold and of a timer and checks the action still happens at
the promised time, once.
"""

from __future__ import annotations

import json
import logging
import textwrap
from datetime import datetime, timezone

import numpy as np
import pytest

from roost.model import Series
from roost.rules import AbsoluteTimeTrigger, Changed, Rule, SunTrigger, Threshold, WhileRule
from roost.rules.errors import RuleError
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
