"""Rules: Python classes that make things act on each other, on the time of day, the sun and thresholds.

    from roost.rules import AbsoluteTimeTrigger, Rule, SunTrigger

    class PorchLight(Rule):
        \"\"\"Porch Light on from dusk until 23:00.\"\"\"

        def register_triggers(self):
            self.dusk = SunTrigger("dusk")
            return (self.dusk, AbsoluteTimeTrigger("23:00"))

        def action(self, trigger, *_):
            self.Porch_Light.on = trigger is self.dusk

See docs/rules.md; `roost.testing` runs rules against fake things on a clock that jumps.
"""

from roost.rules.clock import Clock, Place, WallClock
from roost.rules.engine import RuleEngine, check_rules
from roost.rules.errors import RuleError, UnknownProperty, UnknownThing
from roost.rules.loader import RuleSource, load_directory, load_file
from roost.rules.rule import If, Rule, RuleProperty, Set, While, WhileRule
from roost.rules.triggers import (
    AbsoluteTimeTrigger,
    Changed,
    Cron,
    HeartBeat,
    SunTrigger,
    Threshold,
    TimeTrigger,
    Trigger,
)

__all__ = [
    "AbsoluteTimeTrigger",
    "Changed",
    "Clock",
    "Cron",
    "HeartBeat",
    "If",
    "Place",
    "Rule",
    "RuleEngine",
    "RuleError",
    "RuleProperty",
    "RuleSource",
    "Set",
    "SunTrigger",
    "Threshold",
    "TimeTrigger",
    "Trigger",
    "UnknownProperty",
    "UnknownThing",
    "WallClock",
    "While",
    "WhileRule",
    "check_rules",
    "load_directory",
    "load_file",
]
