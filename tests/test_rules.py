"""Rules against fake things on a fake clock: every trigger kind, If vs While, no feedback loops, failures."""

from __future__ import annotations

import logging
import textwrap
from datetime import datetime, timedelta, timezone

import pytest

from roost.rules import (
    AbsoluteTimeTrigger,
    Changed,
    Cron,
    HeartBeat,
    If,
    Place,
    Rule,
    RuleError,
    RuleProperty,
    Set,
    SunTrigger,
    Threshold,
    While,
    WhileRule,
)
from roost.rules.errors import UnknownThing
from roost.rules.triggers import sun_event
from roost.testing import FakeThing, RuleHarness


def bulbs(n: int = 4, **values):
    values = values or {"on": False}
    return [FakeThing(f"Philips HUE {i:02d}", **values) for i in range(1, n + 1)]


# ------------------------------------------------------------------ If and While


class LeaderIf(Rule):
    """If Philips HUE 01 is on, turn on the others."""

    def register_triggers(self):
        return (self.Philips_HUE_01,)

    def action(self, *args):
        if self.Philips_HUE_01.on:
            self.Philips_HUE_02.on = True
            self.Philips_HUE_03.on = True


class LeaderWhile(WhileRule):
    """While Philips HUE 01 is on, the others are on."""

    def register_triggers(self):
        return (self.Philips_HUE_01,)

    def condition(self):
        return self.Philips_HUE_01.on

    def action(self, *args):
        self.Philips_HUE_02.on = True
        self.Philips_HUE_03.on = True


async def test_if_rule_acts_once_and_never_undoes():
    h1, h2, h3, _ = lights = bulbs()
    async with RuleHarness(LeaderIf, things=lights) as house:
        await house.change("Philips HUE 01", on=True)
        assert (h2["on"], h3["on"]) == (True, True)
        await house.change("Philips HUE 01", on=False)
        assert (h2["on"], h3["on"]) == (True, True)


async def test_while_rule_undoes_its_action_when_the_condition_stops_holding():
    h1, h2, h3, _ = lights = bulbs()
    h3.values["on"] = True  # already on before the rule acts: stays on after the undo
    async with RuleHarness(LeaderWhile, things=lights) as house:
        await house.change("Philips HUE 01", on=True)
        assert (h2["on"], h3["on"]) == (True, True)
        await house.change("Philips HUE 01", on=False)
        assert (h2["on"], h3["on"]) == (False, True)
        assert h3.writes == []


async def test_while_undo_leaves_a_property_someone_else_changed_meanwhile():
    lights = bulbs(3, brightness=10, on=False)

    class Bright(WhileRule):
        """Bright while HUE 01 is on."""

        def register_triggers(self):
            return (Changed(self.Philips_HUE_01, "on"),)

        def action(self, *args):
            self.Philips_HUE_02.brightness = 90
            self.Philips_HUE_03.brightness = 90

    async with RuleHarness(Bright, things=lights) as house:
        await house.change("Philips HUE 01", on=True)
        await house.set("Philips HUE 03", brightness=40)  # a person moved the slider
        await house.change("Philips HUE 01", on=False)
        assert lights[1]["brightness"] == 10
        assert lights[2]["brightness"] == 40


async def test_declared_while_rule_reads_as_english_and_undoes():
    lights = bulbs(3)

    class Followers(Rule):
        def register_triggers(self):
            return While(self.Philips_HUE_01, on=True).then(Set(self.Philips_HUE_02, on=True), Set(self.Philips_HUE_03, on=True))

    async with RuleHarness(Followers, things=lights) as house:
        assert house.rule("Followers").sentence == "While Philips HUE 01 is on, turn on Philips HUE 02 and Philips HUE 03"
        assert house.registry.get("rule-Followers").description == house.rule("Followers").sentence
        await house.change("Philips HUE 01", on=True)
        assert lights[1]["on"] and lights[2]["on"]
        await house.change("Philips HUE 01", on=False)
        assert not lights[1]["on"] and not lights[2]["on"]


async def test_declared_if_rule_acts_when_its_condition_becomes_true():
    lamp, plug = FakeThing("Lounge Lamp", on=False, brightness=0), FakeThing("Kettle Plug", on=False)

    class Kettle(Rule):
        def register_triggers(self):
            return If(self.Lounge_Lamp, on=True).then(Set(self.Kettle_Plug, on=True), Set(self.Lounge_Lamp, brightness=40))

    async with RuleHarness(Kettle, things=[lamp, plug]) as house:
        assert house.rule("Kettle").sentence == "If Lounge Lamp is on, turn on Kettle Plug and set brightness of Lounge Lamp to 40"
        await house.change("Lounge Lamp", on=True)
        assert plug["on"] and lamp["brightness"] == 40
        await house.set("Kettle Plug", on=False)
        await house.change("Lounge Lamp", brightness=10)  # still on: not a new "becomes true"
        assert plug["on"] is False


def test_english_for_time_and_threshold_declarations():
    assert SunTrigger("dusk", offset="-15m").describe() == "15 minutes before dusk"
    assert AbsoluteTimeTrigger("06:30", weekdays="mon-fri").describe() == "at 06:30 on weekdays"
    assert AbsoluteTimeTrigger("08:00", weekdays="sat,sun").describe() == "at 08:00 at weekends"
    assert Threshold('temperature_celsius{room="lounge"} > 25 for 10m').describe() == 'temperature_celsius{room="lounge"} > 25 for 10m'


async def test_declared_time_rule_sentence():
    porch = FakeThing("Porch Light", on=False)

    class Dusk(Rule):
        def register_triggers(self):
            return If(SunTrigger("dusk", offset="-15m")).then(Set(self.Porch_Light, on=True))

    async with RuleHarness(Dusk, things=[porch]) as house:
        assert house.rule("Dusk").sentence == "15 minutes before dusk, turn on Porch Light"
        await house.clock.advance_to("dusk")
        assert porch["on"] is True


async def test_docstring_is_the_sentence_of_a_written_rule():
    async with RuleHarness(LeaderIf, things=bulbs()) as house:
        assert house.rule("LeaderIf").sentence == "If Philips HUE 01 is on, turn on the others."


# ------------------------------------------------------------------ feedback loops


class Bonded(Rule):
    """Bulbs 01 to 04 act as one."""

    def register_triggers(self):
        return (self.Philips_HUE_01, self.Philips_HUE_02, self.Philips_HUE_03, self.Philips_HUE_04)

    def action(self, thing, name, value):
        self.runs = getattr(self, "runs", 0) + 1
        for bulb in self.triggering_things.values():
            setattr(bulb, name, value)


class BondedEager(Bonded):
    """Bonded, even hearing its own writes."""

    retrigger_on_own_writes = True


@pytest.mark.parametrize("rule", [Bonded, BondedEager])
async def test_bonded_bulbs_settle_after_one_change(rule):
    lights = bulbs(4, on=False, color="#ffffff")
    async with RuleHarness(rule, things=lights) as house:
        changes = house.registry.changes.subscribe("test")
        await house.change("Philips HUE 03", color="#ff0000")
        assert [b["color"] for b in lights] == ["#ff0000"] * 4
        seen = [c for c in changes.get_nowait_many(100) if c.thing_id.startswith("fake-")]
        assert len(seen) == 4  # the bulb the person changed, and each other bulb once
        for bulb in lights:
            assert bulb.writes.count(("color", "#ff0000")) == (0 if bulb is lights[2] else 1)
        runs = house.rule(rule.__name__).rule.runs
        assert runs == (1 if rule is Bonded else 4)  # the eager one hears 3 echoes, which change nothing


async def test_a_rule_does_not_hear_its_own_writes():
    lamp = FakeThing("Lounge Lamp", on=False, brightness=0)

    class Nudge(Rule):
        """Each change of the lamp makes it a little brighter."""

        def register_triggers(self):
            return (self.Lounge_Lamp,)

        def action(self, *args):
            self.Lounge_Lamp.brightness = self.Lounge_Lamp.brightness + 1

    async with RuleHarness(Nudge, things=[lamp]) as house:
        await house.change("Lounge Lamp", on=True)
        assert lamp["brightness"] == 1
        assert house.registry.get("rule-Nudge").values["last_run"]


# ------------------------------------------------------------------ time triggers


RAINBOW = ["red", "orange", "yellow", "green", "blue", "violet"]


class Rainbow(Rule):
    """A rainbow scrolls across the bulbs every 2 seconds."""

    def initial_state(self):
        self.colors = list(RAINBOW)
        self.bulbs = [self.Philips_HUE_01, self.Philips_HUE_02, self.Philips_HUE_03]
        for bulb, color in zip(self.bulbs, self.colors):
            bulb.on = True
            bulb.color = color

    def register_triggers(self):
        return (HeartBeat("2s"),)

    def action(self, *args):
        self.colors.append(self.colors.pop(0))
        for bulb, color in zip(self.bulbs, self.colors):
            bulb.color = color


async def test_heartbeat_scrolls_a_rainbow_every_two_seconds():
    lights = bulbs(3, on=False, color="white")
    async with RuleHarness(Rainbow, things=lights) as house:
        assert [b["color"] for b in lights] == ["red", "orange", "yellow"]
        await house.clock.advance("1.9s")
        assert lights[0]["color"] == "red"
        await house.clock.advance("0.1s")
        assert [b["color"] for b in lights] == ["orange", "yellow", "green"]
        await house.clock.advance("8s")
        assert [b["color"] for b in lights] == ["violet", "red", "orange"]  # 5 beats


class WakeUp(Rule):
    """Fade the Lounge Lamp up over 20 minutes at wake time."""

    weekday_time = RuleProperty("06:30", type="string")
    weekend_time = RuleProperty("08:00", type="string")

    def register_triggers(self):
        return (
            AbsoluteTimeTrigger(self.weekday_time, weekdays="mon-fri"),
            AbsoluteTimeTrigger(self.weekend_time, weekdays="sat,sun"),
        )

    async def action(self, *args):
        self.Lounge_Lamp.brightness = 0
        self.Lounge_Lamp.on = True
        for level in range(1, 101):
            await self.sleep("12s")
            self.Lounge_Lamp.brightness = level


async def test_wake_up_fade_takes_twenty_minutes_on_a_weekday():
    lamp = FakeThing("Lounge Lamp", on=False, brightness=0)
    async with RuleHarness(WakeUp, things=[lamp], start="2024-03-06 22:00") as house:  # a Wednesday
        await house.clock.advance_to("06:30")
        assert lamp["on"] is True and lamp["brightness"] == 0
        await house.clock.advance("10m")
        assert lamp["brightness"] == 50
        await house.clock.advance("9m59s")
        assert lamp["brightness"] == 99
        await house.clock.advance("1s")
        assert lamp["brightness"] == 100
        assert house.clock.local_now().strftime("%a %H:%M") == "Thu 06:50"
        assert len(lamp.writes) == 101  # on, and brightness 1..100 (0 was already 0)


async def test_wake_up_waits_for_the_weekend_time_on_saturday():
    lamp = FakeThing("Lounge Lamp", on=False, brightness=0)
    async with RuleHarness(WakeUp, things=[lamp], start="2024-03-08 22:00") as house:  # a Friday
        await house.clock.advance_to("07:59", weekday="sat")
        assert lamp["on"] is False
        await house.clock.advance("21m")
        assert lamp["brightness"] == 100


async def test_rule_property_is_a_thing_property_and_rearms_the_rule():
    lamp = FakeThing("Lounge Lamp", on=False, brightness=0)
    async with RuleHarness(WakeUp, things=[lamp], start="2024-03-06 05:00") as house:
        thing = house.registry.get("rule-WakeUp")
        assert thing.types == ("Rule",)
        assert thing.values["weekday_time"] == "06:30" and not thing.properties["weekday_time"].read_only
        await house.set("rule-WakeUp", weekday_time="05:45")
        await house.clock.advance_to("05:45")
        assert lamp["on"] is True


async def test_absolute_time_is_local_time_across_daylight_saving():
    plug = FakeThing("Kettle Plug", on=False)
    fired: list[datetime] = []

    class Kettle(Rule):
        """Kettle on at 06:30."""

        def register_triggers(self):
            return (AbsoluteTimeTrigger("06:30"),)

        def action(self, *args):
            fired.append(self.now())
            self.Kettle_Plug.on = not self.Kettle_Plug.on

    async with RuleHarness(Kettle, things=[plug], start="2024-03-30 12:00") as house:  # Berlin goes to CEST on the 31st
        await house.clock.advance("2d")
    assert [f.strftime("%d %H:%M %Z") for f in fired] == ["31 06:30 CEST", "01 06:30 CEST"]
    assert [f.astimezone(timezone.utc).hour for f in fired] == [4, 4]

    fired.clear()
    async with RuleHarness(Kettle, things=[plug], start="2024-10-26 12:00") as house:  # and back to CET on the 27th
        await house.clock.advance("2d")
    assert [f.strftime("%d %H:%M %Z") for f in fired] == ["27 06:30 CET", "28 06:30 CET"]


async def test_sun_trigger_fires_at_dusk_with_its_offset_every_day():
    porch = FakeThing("Porch Light", on=False)
    fired: list[datetime] = []

    class Evening(Rule):
        """Porch light 15 minutes before dusk."""

        def register_triggers(self):
            return (SunTrigger("dusk", offset="-15m"),)

        def action(self, *args):
            fired.append(self.now())
            self.Porch_Light.on = True

    async with RuleHarness(Evening, things=[porch], start="2024-03-30 12:00") as house:
        await house.clock.advance("3d")
    place = Place(52.52, 13.405, "Europe/Berlin")
    expected = [sun_event("dusk", datetime(2024, 3, d).date(), place) - timedelta(minutes=15) for d in (30, 31)]
    expected.append(sun_event("dusk", datetime(2024, 4, 1).date(), place) - timedelta(minutes=15))
    assert [f.astimezone(timezone.utc).replace(microsecond=0) for f in fired] == [e.replace(microsecond=0) for e in expected]
    # across the change to summer time dusk moves by an hour of clock time
    minutes = [f.hour * 60 + f.minute for f in fired]
    assert 60 <= minutes[1] - minutes[0] <= 63


@pytest.mark.parametrize("event", ["dawn", "sunrise", "noon", "sunset", "dusk", "golden_hour", "blue_hour", "morning_golden_hour", "morning_blue_hour"])
def test_every_sun_event_is_known(event):
    place = Place(52.52, 13.405, "Europe/Berlin")
    now = datetime(2024, 6, 1, tzinfo=timezone.utc)
    when = SunTrigger(event).next_after(now, place)
    assert now < when < now + timedelta(days=1, hours=1)


def test_sun_events_on_polar_days_are_skipped():
    tromso = Place(69.65, 18.96, "Europe/Oslo")
    when = SunTrigger("sunset").next_after(datetime(2024, 6, 1, tzinfo=timezone.utc), tromso)
    assert when.month == 7  # no sunset until late July


async def test_cron_fires_on_its_schedule():
    plug = FakeThing("Kettle Plug", on=False)

    class Every5(Rule):
        """Every five minutes."""

        def register_triggers(self):
            return (Cron("*/5 * * * *"),)

        def action(self, trigger, *_):
            self.count = getattr(self, "count", 0) + 1

    async with RuleHarness(Every5, things=[plug], start="2024-03-06 10:02") as house:
        await house.clock.advance("1h")
        assert house.rule("Every5").rule.count == 12


# ------------------------------------------------------------------ thresholds


class Hot(WhileRule):
    """While the lounge is above 25 °C for 10 minutes, run the fan."""

    def register_triggers(self):
        return (Threshold('temperature_celsius{room="lounge"} > 25 for 10m'),)

    def action(self, trigger, series, value):
        self.seen = (series, value)
        self.Fan.on = True


async def test_threshold_fires_after_holding_for_its_duration_and_undoes_after():
    fan = FakeThing("Fan", on=False)
    async with RuleHarness(Hot, things=[fan]) as house:
        await house.reading('temperature_celsius{room="lounge"}', 26)
        await house.reading('temperature_celsius{room="bedroom"}', 30)  # another series
        for _ in range(9):
            await house.clock.advance("1m")
            await house.reading('temperature_celsius{room="lounge"}', 26)
        await house.clock.advance("59s")
        assert fan["on"] is False
        await house.clock.advance("1s")
        assert fan["on"] is True
        assert house.rule("Hot").rule.seen == ('temperature_celsius{room="lounge"}', 26.0)
        await house.reading('temperature_celsius{room="lounge"}', 24)
        assert fan["on"] is False


async def test_threshold_restarts_its_wait_when_the_condition_breaks():
    fan = FakeThing("Fan", on=False)
    async with RuleHarness(Hot, things=[fan]) as house:
        await house.reading('temperature_celsius{room="lounge"}', 26)
        await house.clock.advance("8m")
        await house.reading('temperature_celsius{room="lounge"}', 25)  # not > 25
        await house.clock.advance("1m")
        await house.reading('temperature_celsius{room="lounge"}', 27)
        await house.clock.advance("9m")
        assert fan["on"] is False
        await house.clock.advance("1m")
        assert fan["on"] is True


async def test_threshold_counts_stored_history_at_start():
    import numpy as np

    from roost.model import Series
    from roost.store.engine import SeriesData

    fan = FakeThing("Fan", on=False)
    start = datetime(2024, 3, 6, 12, tzinfo=timezone.utc)
    series = Series.of("temperature_celsius", room="lounge")
    ms = int(start.timestamp() * 1000)

    def history(selector, lo, hi):
        ts = np.array([ms - 12 * 60_000, ms - 6 * 60_000, ms - 60_000])
        yield SeriesData(series, ts, np.array([27.0, 27.5, 28.0]))

    async with RuleHarness(Hot, things=[fan], start=start, history=history):
        assert fan["on"] is True


@pytest.mark.parametrize("spec, message", [
    ("temperature_celsius > warm", "expected a selector, a comparison and a number"),
    ('temperature_celsius{room="lounge" > 25', "is not closed"),
    ("temperature_celsius > 25 for ten minutes", "expected a selector, a comparison and a number"),
    ("temperature_celsius > 25 for 10x", "for: expected a duration"),
    ("> 25", "expected a selector first"),
])
def test_threshold_grammar_errors_say_what_is_expected(spec, message):
    with pytest.raises(RuleError, match=message):
        Threshold(spec)


def test_threshold_grammar_takes_any_selector():
    t = Threshold('power_watts{plug=~"kettle|toaster", room!="}"} >= -1.5e3')
    assert (t.op, t.limit, t.for_ms, t.metric) == (">=", -1500.0, 0, "power_watts")


# ------------------------------------------------------------------ enabling, failures, reloading


async def test_disabling_a_rule_cancels_its_running_fade():
    lamp = FakeThing("Lounge Lamp", on=False, brightness=0)
    async with RuleHarness(WakeUp, things=[lamp], start="2024-03-06 06:00") as house:
        await house.clock.advance_to("06:35")
        assert lamp["brightness"] == 25
        await house.enable("WakeUp", False)
        assert house.registry.get("rule-WakeUp").values["enabled"] is False
        await house.clock.advance("30m")
        assert lamp["brightness"] == 25
        await house.enable("WakeUp")
        await house.clock.advance_to("06:30")
        assert lamp["brightness"] == 0


async def test_reloading_cancels_a_running_fade(tmp_path):
    lamp = FakeThing("Lounge Lamp", on=False, brightness=0)
    rule_file = tmp_path / "wake.py"
    rule_file.write_text(textwrap.dedent('''
        from roost.rules import AbsoluteTimeTrigger, Rule

        class Wake(Rule):
            """Fade up at 06:30."""

            def register_triggers(self):
                return (AbsoluteTimeTrigger("06:30"),)

            async def action(self, *args):
                for level in range(1, 101):
                    await self.sleep("12s")
                    self.Lounge_Lamp.brightness = level
    '''))
    async with RuleHarness(rule_file, things=[lamp], start="2024-03-06 06:00") as house:
        await house.clock.advance_to("06:32")
        assert lamp["brightness"] == 10
        assert await house.load(rule_file) == []
        await house.clock.advance("10m")
        assert lamp["brightness"] == 10


async def test_a_failing_rule_is_disabled_after_three_failures_and_others_keep_running(caplog):
    lights = bulbs(4)

    class Broken(Rule):
        """Divides by zero."""

        def register_triggers(self):
            return (self.Philips_HUE_01,)

        def action(self, *args):
            return 1 / 0

    async with RuleHarness(Broken, LeaderIf, things=lights) as house:
        with caplog.at_level(logging.ERROR, logger="roost.rules"):
            for on in (True, False, True):
                await house.change("Philips HUE 01", on=on)
        assert "ZeroDivisionError" in caplog.text and "Traceback" in caplog.text
        assert "Broken.action failed (3 in a row; disabled after 3)" in caplog.text
        assert house.rule("Broken").enabled is False
        assert house.registry.get("rule-Broken").values["enabled"] is False
        assert house.rule("LeaderIf").enabled is True
        await house.set("Philips HUE 02", on=False)
        await house.change("Philips HUE 01", on=False)
        await house.change("Philips HUE 01", on=True)
        assert lights[1]["on"] is True


async def test_writing_a_wrong_value_is_a_failure_naming_the_thing(caplog):
    lamp = FakeThing("Lounge Lamp", on=False)

    class Wrong(Rule):
        """Sets on to a string."""

        def register_triggers(self):
            return (HeartBeat("1s"),)

        def action(self, *args):
            self.Lounge_Lamp.on = "yes"

    async with RuleHarness(Wrong, things=[lamp], max_failures=2) as house:
        await house.clock.advance("2s")
        assert "expected true or false" in caplog.text
        assert house.rule("Wrong").enabled is False


# ------------------------------------------------------------------ loading and checking


def write_rule(directory, name, text):
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


async def test_missing_thing_is_reported_with_file_line_and_suggestion(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rules = tmp_path / "rules"
    rules.mkdir()
    write_rule(rules, "porch.py", '''
        from roost.rules import Rule, SunTrigger


        class PorchLight(Rule):
            """Porch light at dusk."""

            def register_triggers(self):
                return (
                    SunTrigger("dusk"),
                    self.Porch_Lite,
                )

            def action(self, *args):
                self.Porch_Light.on = True
    ''')
    async with RuleHarness(rules, things=[FakeThing("Porch Light", on=False)]) as house:
        assert house.problems == [
            'rules/porch.py:10: PorchLight.register_triggers: no thing named "Porch_Lite" (did you mean "Porch_Light"?)'
        ]


async def test_syntax_errors_and_bad_triggers_name_file_and_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rules = tmp_path / "rules"
    rules.mkdir()
    write_rule(rules, "a_syntax.py", '''
        from roost.rules import Rule

        class Oops(Rule):
            def action(self, *args)
                pass
    ''')
    write_rule(rules, "b_trigger.py", '''
        from roost.rules import Rule, SunTrigger

        class Early(Rule):
            """Early."""

            def register_triggers(self):
                return (SunTrigger("dusky"),)
    ''')
    write_rule(rules, "c_import.py", '''
        from roost.rules import Rule, NoSuchThing
    ''')
    write_rule(rules, "d_ok.py", '''
        from roost.rules import HeartBeat, Rule

        class Fine(Rule):
            """Beats."""

            def register_triggers(self):
                return (HeartBeat("1m"),)
    ''')
    async with RuleHarness(rules) as house:
        assert house.problems == [
            "rules/a_syntax.py:4: syntax error: expected ':'",
            "rules/c_import.py:1: ImportError: cannot import name 'NoSuchThing' from 'roost.rules' "
            f"({__import__('roost.rules').rules.__file__})",
            'rules/b_trigger.py:7: Early.register_triggers: SunTrigger(\'dusky\'): unknown sun event (did you mean "dusk"?); '
            "use one of dawn, sunrise, noon, sunset, dusk, golden_hour, blue_hour, morning_golden_hour, morning_blue_hour",
        ]
        assert list(house.engine.runtimes) == ["Early", "Fine"]
        assert house.rule("Fine").armed and not house.rule("Early").armed


async def test_a_rule_waits_for_a_thing_that_appears_later():
    async with RuleHarness(LeaderIf, things=[]) as house:
        assert not house.rule("LeaderIf").armed
        for thing in bulbs(3):
            house.registry.add(thing)
            house.things[thing.title] = thing
        assert await house.engine.arm(house.rule("LeaderIf"), quiet=True) is None
        await house.change("Philips HUE 01", on=True)
        assert house.things["Philips HUE 02"]["on"] is True


async def test_in_the_hub_a_waiting_rule_is_said_once_and_an_error_only_when_its_thing_does_not_come(caplog):
    caplog.set_level(logging.INFO, logger="roost.rules")
    house = RuleHarness(LeaderIf, things=[])
    house.engine.wait_for_things = True  # as the hub runs it: devices become things after the rules start
    async with house:
        assert house.problems == []
        said = lambda: [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "roost.rules"]
        assert said() == [("INFO", 'rule LeaderIf waits for "Philips_HUE_01", not known yet '
                                   "(a device becomes a thing when its source first reports it)")]
        await house.engine.retry_waiting()  # still missing, but not for long: nothing more to say
        assert len(said()) == 1 and not house.rule("LeaderIf").armed

        house.engine.wait_error_s = 0  # as if a minute had gone by
        await house.engine.retry_waiting()
        await house.engine.retry_waiting()
        errors = [m for level, m in said() if level == "ERROR"]
        assert len(errors) == 1
        assert 'LeaderIf.register_triggers: no thing named "Philips_HUE_01" — still not there after' in errors[0]

        for thing in bulbs(3):
            house.registry.add(thing)
            house.things[thing.title] = thing
        await house.engine.retry_waiting()
        assert said()[-1] == ("INFO", 'rule LeaderIf: "Philips_HUE_01" is here now; armed')
        await house.change("Philips HUE 01", on=True)
        assert house.things["Philips HUE 02"]["on"] is True


# ------------------------------------------------------------------ the examples


EXAMPLES = __import__("pathlib").Path(__file__).resolve().parent.parent / "src" / "roost" / "demo" / "rules"


def demo_things():
    return [
        FakeThing("Lounge Lamp", on=False, brightness=0),
        FakeThing("Porch Light", on=False),
        FakeThing("Kettle Plug", on=False),
    ]


async def test_example_rules_load_and_run_a_day():
    things = demo_things()
    lamp, porch, kettle = things
    async with RuleHarness(EXAMPLES, things=things, start="2024-06-07 12:00") as house:  # a Friday
        assert house.problems == []
        assert sorted(house.engine.runtimes) == ["BondedLights", "PorchLight", "RainbowHeartbeat", "WakeUp"]
        await house.clock.advance_to("dusk")
        assert porch["on"] is True and lamp["on"] is True  # bonded
        await house.clock.advance_to("23:00")
        assert porch["on"] is False and lamp["on"] is False
        await house.set("Kettle Plug", on=True)
        await house.clock.advance("4s")
        assert lamp["brightness"] == 30
        await house.set("Kettle Plug", on=False)
        await house.clock.advance_to("08:20", weekday="sat")
        assert lamp["brightness"] == 100 and porch["on"] is True


# ------------------------------------------------------------------ the command line


def test_roost_check_names_the_rule_file_and_line(tmp_path):
    from conftest import run_roost

    rules = tmp_path / "rules"
    rules.mkdir()
    write_rule(rules, "porch.py", '''
        from roost.rules import Rule, SunTrigger


        class PorchLight(Rule):
            """Porch light at dusk."""

            def register_triggers(self):
                return (SunTrigger("dusk", offset="-15 minutes"),)
    ''')
    config = tmp_path / "roost.toml"
    config.write_text('[rules]\ndirectory = "rules"\nlatitude = 52.52\nlongitude = 13.4\ntimezone = "Europe/Berlin"\n'
                      '[hub]\nlisten = "127.0.0.1:9"\n')
    proc = run_roost("check", "-c", str(config), check=False, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: rules/porch.py:8: PorchLight.register_triggers: SunTrigger('dusk', offset='-15 minutes'): "
        'expected a duration like "500ms", "15s", "5m", "1h" or "1d", got \'15 minutes\''
    )
    (rules / "porch.py").write_text((rules / "porch.py").read_text().replace("-15 minutes", "-15m"))
    proc = run_roost("check", "-c", str(config), cwd=tmp_path)
    assert "rules: 1 rule(s)" in proc.stdout
    proc = run_roost("rules", "list", "-c", str(config), "--data", str(tmp_path / "data"), cwd=tmp_path)
    assert proc.stdout.split() == "PorchLight enabled last run never Porch light at dusk.".split()


COFFEE_RULES = '''
    from roost.rules import AbsoluteTimeTrigger, Changed, Rule


    class Coffee(Rule):
        """Coffee at 06:30."""

        def register_triggers(self):
            return (AbsoluteTimeTrigger("06:30"),)

        def action(self, *args):
            self.Coffee.on = True


    class Holiday(Rule):
        """No coffee while the holiday switch is on."""

        def register_triggers(self):
            return (Changed(self.Holiday_Switch, "on"),)

        def action(self, *args):
            self.rules.Coffee.enabled = not self.Holiday_Switch.on
'''


async def test_a_rule_named_like_a_thing_leaves_the_name_to_the_thing_and_is_self_rules_name(tmp_path, caplog):
    """Rule Coffee and the coffee machine "Coffee": self.Coffee is the machine, self.rules.Coffee the rule."""
    rules = tmp_path / "rules"
    rules.mkdir()
    write_rule(rules, "coffee.py", COFFEE_RULES)
    coffee, holiday = FakeThing("Coffee", on=False), FakeThing("Holiday Switch", on=False)
    async with RuleHarness(rules, things=[coffee, holiday], start="2024-03-06 06:00") as house:
        assert house.problems == []
        await house.clock.advance_to("06:30")
        assert coffee.writes == [("on", True)]
        await house.change("Holiday Switch", on=True)
        assert house.rule("Coffee").enabled is False
        coffee.values["on"] = False
        await house.clock.advance_to("06:30")
        assert coffee.writes == [("on", True)]
        with pytest.raises(UnknownThing, match='no rule named "Cofee" \\(did you mean "Coffee"\\?\\)'):
            house.rule("Holiday").rule.rules.Cofee
    assert (f'{rules / "coffee.py"}:4: warning: rule Coffee has the name of the thing "Coffee": in rules '
            "self.Coffee is that thing, the rule's own thing is self.rules.Coffee") in caplog.text


async def test_roost_check_warns_of_a_rule_named_like_a_thing_of_the_hub(tmp_path):
    import asyncio
    from dataclasses import replace

    from conftest import hub_settings, run_roost

    from roost.hub import Hub
    from roost.rules.settings import RulesSettings

    rules = tmp_path / "rules"
    rules.mkdir()
    write_rule(rules, "coffee.py", COFFEE_RULES)
    settings = replace(hub_settings(tmp_path / "data"), rules=RulesSettings(directory=rules))
    async with Hub(settings) as hub:
        hub.things.add(FakeThing("Coffee", on=False))
        hub.things.add(FakeThing("Holiday Switch", on=False))
        config = tmp_path / "roost.toml"
        config.write_text(f'[rules]\ndirectory = "rules"\n[hub]\nlisten = "{hub.url.removeprefix("http://")}"\n')
        proc = await asyncio.to_thread(run_roost, "check", "-c", str(config), cwd=tmp_path)
    assert "rules: 2 rule(s)" in proc.stdout
    assert ('rules/coffee.py:4: warning: rule Coffee has the name of the thing "Coffee": in rules self.Coffee is that '
            "thing, the rule's own thing is self.rules.Coffee (rename the rule to tell them apart at a glance)") in proc.stdout
    assert proc.stdout.count("warning") == 1

async def test_the_hub_runs_rules_as_things_and_remembers_a_disabled_rule(tmp_path):
    from dataclasses import replace

    from conftest import hub_settings
    from roost.hub import Hub
    from roost.rules.settings import RulesSettings

    rules = tmp_path / "rules"
    rules.mkdir()
    write_rule(rules, "beat.py", '''
        from roost.rules import HeartBeat, Rule

        class Beat(Rule):
            """Beats every minute."""

            def register_triggers(self):
                return (HeartBeat("1m"),)
    ''')
    settings = hub_settings(tmp_path / "data")
    settings = replace(settings, rules=RulesSettings(directory=rules))
    async with Hub(settings) as hub:
        thing = hub.things.get("rule-Beat")
        assert thing.types == ("Rule",) and thing.description == "Beats every minute."
        await hub.things.set("rule-Beat", "enabled", False)
        assert hub.rules.runtimes["Beat"].armed is False
    async with Hub(settings) as hub:
        assert hub.things.get("rule-Beat").values["enabled"] is False
        assert hub.rules.runtimes["Beat"].armed is False


async def test_rule_runs_errors_and_enabled_state_are_on_metrics_for_promtool(tmp_path):
    import asyncio
    import subprocess
    from dataclasses import replace

    import aiohttp
    from conftest import hub_settings
    from peers import need
    from roost.hub import Hub
    from roost.rules.settings import RulesSettings

    rules = tmp_path / "rules"
    rules.mkdir()
    write_rule(rules, "two.py", '''
        from roost.rules import HeartBeat, Rule

        class Works(Rule):
            """Beats."""

            def register_triggers(self):
                return (HeartBeat("100ms"),)

            def action(self, *args):
                pass

        class Broken(Rule):
            """Raises."""

            def register_triggers(self):
                return (HeartBeat("100ms"),)

            def action(self, *args):
                raise RuntimeError("a bug")
    ''')
    settings = replace(hub_settings(tmp_path / "data"), rules=RulesSettings(directory=rules, max_failures=3))
    async with Hub(settings) as hub, aiohttp.ClientSession(base_url=hub.url) as http:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not hub.rules.runtimes["Broken"].enabled and hub.rules.runtimes["Works"].runs_total >= 3:
                break
        body = await (await http.get("/metrics")).text()
    assert 'roost_rule_errors_total{rule="Broken"} 3.0' in body
    assert 'roost_rule_enabled{rule="Broken"} 0.0' in body and 'roost_rule_enabled{rule="Works"} 1.0' in body
    assert 'roost_rule_errors_total{rule="Works"} 0.0' in body
    runs = float(body.split('roost_rule_runs_total{rule="Works"} ')[1].split()[0])
    assert runs >= 3
    need("promtool")
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True, timeout=60)
    assert (check.returncode, check.stderr) == (0, "")
