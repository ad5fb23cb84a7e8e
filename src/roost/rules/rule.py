"""The rule API: a class deriving from `Rule` with `register_triggers`, `action` and optionally `initial_state`.

Things are attributes under their sanitized titles (`self.Philips_HUE_01`), their properties attributes of
those (`self.Philips_HUE_01.on`); assigning one asks the device to take the value. Every rule is a thing too,
`self.rules.Coffee` (a device of the same name is `self.Coffee`).

If and While: a `Rule` acts on every trigger, once, and never undoes anything. A `WhileRule` acts when its
`condition()` starts to hold and, when it stops holding, puts back every property the action changed (unless
someone else has changed it since). Simple rules can be declared instead of written, and then read as English:

    def register_triggers(self):
        return While(self.Philips_HUE_01, on=True).then(Set(self.Philips_HUE_02, on=True))
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from roost.rules.clock import seconds
from roost.rules.errors import RuleError
from roost.rules.proxy import ThingProxy
from roost.rules.triggers import Changed, Trigger
from roost.things import PropertySpec

if TYPE_CHECKING:
    from roost.rules.engine import RuleRuntime

__all__ = ["If", "Rule", "RuleProperty", "Set", "While", "WhileRule"]


class Rule:
    """An If rule: `action` runs on every trigger. Override `register_triggers` and `action`."""

    retrigger_on_own_writes: ClassVar[bool] = False
    """Whether the rule's own writes (origin `rule:<Name>`) trigger it again; off, so rules cannot echo."""

    _roost: RuleRuntime

    def register_triggers(self) -> Iterable[Trigger | ThingProxy] | Declared:
        """The things and triggers that make this rule act (or a declaration: `If(...).then(...)`)."""
        return ()

    def action(self, thing: Any, property_name: str | None, new_value: Any) -> None:
        """Called with what changed: a thing, the property name and its new value; for time triggers the
        trigger, None, None; for thresholds the trigger, the series and its value. May be `async def`."""

    def initial_state(self) -> None:
        """Called once when the rule is enabled, before any trigger fires."""

    @property
    def rules(self) -> RuleThings:
        """The rules' own things by rule name: `self.rules.Coffee.enabled = False` (`enabled`, `last_run` and its
        settings). `self.Coffee` is a device named "Coffee" when there is one, else the rule's thing too."""
        return RuleThings(self._roost)

    @property
    def triggering_things(self) -> dict[str, ThingProxy]:
        """The things among the triggers, by attribute name."""
        return self._roost.triggering_things

    def now(self) -> datetime:
        """The current time in the house's time zone (the test clock's time under `roost.testing`)."""
        return self._roost.local_now()

    async def sleep(self, duration: str | float) -> None:
        """Wait in an async action ("12s", "5m" or seconds); cancelled when the rule is disabled or reloaded."""
        await self._roost.sleep(seconds(duration))

    def after(self, delay: str | float, method: Any, *args: Any) -> None:
        """Call `method(*args)` (a method of this rule) after `delay` ("30m", "10s" or seconds). The deadline is
        saved in the data directory, so a restart or a reload keeps it; starting the same method's timer again
        moves its deadline. The arguments must be plain values (numbers, strings, lists, dicts)."""
        self._roost.start_timer(method, seconds(delay), args)

    def notify(self, message: str, *, to: str | None = None) -> None:
        """Send `message` to the `[[rules.notify]]` target named `to` (every target when None): a webhook, email
        or MQTT. At most one message per rule and target within the target's `rate_limit` (15 minutes)."""
        self._roost.notify(message, to)

    def cancel_timer(self, method: Any) -> bool:
        """Stop the timer of `method`; False when none was running."""
        return self._roost.cancel_timer(method)

    def __getattr__(self, name: str) -> ThingProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._roost.thing(name)


class RuleThings:
    """`self.rules`: each rule's thing as an attribute named like the rule."""

    __slots__ = ("_roost",)

    def __init__(self, runtime: RuleRuntime):
        self._roost = runtime

    def __getattr__(self, name: str) -> ThingProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._roost.rule_thing(name)


class WhileRule(Rule):
    """A While rule: `action` runs when `condition()` starts to hold, and is undone when it stops holding."""

    def condition(self) -> bool:
        """Whether the rule should be in effect; by default, whether every stateful trigger holds
        (`Changed` while the property is truthy, `Threshold` while the series stays past its limit)."""
        states = [s for s in (t.holds() for t in self._roost.triggers) if s is not None]
        if not states:
            raise RuleError(
                f"{type(self).__name__}: a WhileRule needs a condition() method or a trigger with a state "
                "(Changed(...) or Threshold(...))"
            )
        return all(states)


class RuleProperty:
    """A setting of a rule, exposed as a writable property of the rule's thing (so the API can change it):
    `wake_time = RuleProperty("06:30", type="string")`. Changing it re-arms the rule's triggers."""

    def __init__(
        self,
        default: Any,
        *,
        type: str | None = None,
        title: str = "",
        unit: str | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
        enum: Iterable[Any] | None = None,
    ):
        if type is None:
            type = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(default.__class__)
            if type is None:
                raise RuleError(f"RuleProperty({default!r}): give type= (boolean, integer, number or string)")
        self.default = default
        self.name = ""
        self._options = dict(
            type=type, title=title, unit=unit, minimum=minimum, maximum=maximum,
            enum=tuple(enum) if enum is not None else None,
        )

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def spec(self) -> PropertySpec:
        return PropertySpec(self.name, **self._options)

    def __get__(self, rule: Rule | None, owner: type) -> Any:
        if rule is None:
            return self
        return rule._roost.property_value(self.name, self.default)

    def __set__(self, rule: Rule, value: Any) -> None:
        rule._roost.set_property_value(self.name, value)


def rule_properties(cls: type) -> dict[str, RuleProperty]:
    found: dict[str, RuleProperty] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, RuleProperty):
                found[name] = value
    return found


# ------------------------------------------------------------------ declarations


class Set:
    """An effect of a declared rule: `Set(self.Porch_Light, on=True)`, `Set(self.Lounge_Lamp, brightness=40)`."""

    def __init__(self, thing: ThingProxy, **values: Any):
        if not isinstance(thing, ThingProxy):
            raise RuleError(f"Set(...) expects a thing such as self.Porch_Light, got {thing!r}")
        if not values:
            raise RuleError(f"Set({thing}): name at least one property, like Set(self.X, on=True)")
        for name in values:
            thing._check(name)
        self.thing = thing
        self.values = values

    def apply(self) -> None:
        for name, value in self.values.items():
            setattr(self.thing, name, value)


class If:
    """Declares an If rule: `If(self.Motion_Sensor, motion=True).then(Set(self.Hall_Light, on=True))` acts each
    time the condition becomes true; `If(SunTrigger("dusk")).then(...)` acts each time the trigger fires."""

    word = "If"

    def __init__(self, subject: ThingProxy | Trigger, **values: Any):
        if isinstance(subject, ThingProxy):
            if not values:
                raise RuleError(f"{self.word}({subject}): name the condition, like {self.word}(self.X, on=True)")
            for name in values:
                subject._check(name)
        elif isinstance(subject, Trigger):
            if values:
                raise RuleError(f"{self.word}({subject!r}, ...): a trigger takes no property conditions")
        else:
            raise RuleError(f"{self.word}(...) expects a thing such as self.Porch_Light or a trigger, got {subject!r}")
        self.subject = subject
        self.values = values
        self.effects: tuple[Set, ...] = ()

    def then(self, *effects: Set) -> If:
        for effect in effects:
            if not isinstance(effect, Set):
                raise RuleError(f"{self.word}(...).then(...) takes Set(...) effects, got {effect!r}")
        if not effects:
            raise RuleError(f"{self.word}(...).then(): name at least one effect, like Set(self.X, on=True)")
        self.effects = effects
        return self

    @property
    def triggers(self) -> tuple[Trigger, ...]:
        if isinstance(self.subject, ThingProxy):
            return tuple(Changed(self.subject, name) for name in self.values)
        return (self.subject,)

    def holds(self) -> bool | None:
        if isinstance(self.subject, ThingProxy):
            return all(getattr(self.subject, name) == value for name, value in self.values.items())
        return self.subject.holds()

    def apply(self) -> None:
        for effect in self.effects:
            effect.apply()


class While(If):
    """Declares a While rule: the effects hold while the condition does, and are undone after."""

    word = "While"


Declared = If
