"""What a rule would have done: the stored readings replayed through it on the test clock, nothing actuated.

    roost rules preview WakeUp --since 7d

The rule runs on the real engine (`roost.testing.RuleHarness`) from the start of the range, its thresholds
judged from the store as at a hub's start, its time and sun triggers firing as the clock moves, and the stored
readings its thresholds watch published at their own timestamps. Its things are stand-ins holding the hub's
current values (when a hub answers) that record what the rule asks of them instead of doing it. Thing changes
come from the hub's thing log (roost.rules.thinglog) when one is given. An action that raises is a `Failure`
of the timeline, as the live rule would log it (and disabled after as many in a row).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from roost.model import Reading
from roost.rules.clock import Place
from roost.rules.english import _value
from roost.rules.loader import RuleSource
from roost.rules.notify import Notifier
from roost.rules.settings import NotifySettings
from roost.rules.triggers import ThingTrigger, Threshold, Trigger
from roost.things import Thing

__all__ = ["Failure", "Input", "Preview", "Step", "preview"]


@dataclass(frozen=True, slots=True)
class Step:
    """One thing the rule did: when, because of what, and what (`action`, and as an English `sentence`)."""

    at: datetime
    trigger: str
    action: str
    sentence: str

    def as_json(self) -> dict[str, str]:
        return {"at": self.at.isoformat(timespec="milliseconds"), "trigger": self.trigger, "action": self.action,
                "sentence": self.sentence}


@dataclass(frozen=True, slots=True)
class Failure:
    """The rule raised: when, because of what, the error, and whether that failure disabled the rule."""

    at: datetime
    trigger: str
    error: str
    disabled: bool

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(timespec="milliseconds"), "trigger": self.trigger, "error": self.error,
                "disabled": self.disabled}


@dataclass(frozen=True, slots=True)
class Input:
    """A threshold the rule watches: its trigger as the steps name it, the series' selector and the limit."""

    trigger: str
    selector: str
    op: str
    limit: float

    def as_json(self) -> dict[str, Any]:
        return {"trigger": self.trigger, "selector": self.selector, "op": self.op, "limit": self.limit}


@dataclass(slots=True)
class Preview:
    """A rule's timeline over a range, what it watched and what failed, and notes on what the preview could not show."""

    rule: str
    sentence: str
    start: datetime
    end: datetime
    steps: list[Step]
    notes: list[str]
    failures: list[Failure] = field(default_factory=list)
    inputs: list[Input] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "sentence": self.sentence, "start": self.start.isoformat(timespec="seconds"),
                "end": self.end.isoformat(timespec="seconds"), "steps": [s.as_json() for s in self.steps],
                "failures": [f.as_json() for f in self.failures], "inputs": [i.as_json() for i in self.inputs],
                "notes": self.notes}


def _effect(title: str, name: str, value: Any) -> str:
    if name == "on" and isinstance(value, bool):
        return f"turn {'on' if value else 'off'} {title}"
    return f"set {name} of {title} to {_value(value)}"


def _named_things(cls: type) -> set[str]:
    """The things a rule's code names (`self.Porch_Light`): attributes of `self` it reads but neither defines
    nor assigns. For a preview without a hub, whose things are not known."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return set()
    read, assigned = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            (assigned if isinstance(node.ctx, ast.Store) else read).add(node.attr)
    return {name for name in read - assigned if not name.startswith("_") and not hasattr(cls, name)}


def _cause(cause: Trigger | str | None) -> str:
    if cause is None:
        return "start"
    return cause if isinstance(cause, str) else cause.describe()


async def preview(
    source: RuleSource,
    *,
    things: Iterable[Thing] | None,
    history: Callable[..., Iterable[Any]],
    start: datetime,
    end: datetime,
    place: Place,
    properties: dict[str, Any] | None = None,
    notify: Iterable[Any] = (),
    changes: Callable[[int, int], Iterable[tuple[int, str, str, Any, str]]] | None = None,
) -> Preview:
    """The timeline of what the rule would have done between `start` and `end`, and notes on what a preview
    cannot show. `history` is a store's `read`; `things` the hub's things (their values now are the start's;
    None: no hub answered, and the things the rule names start with no values and take any property);
    `properties` the rule's settings as the hub has them (else their defaults); `notify` the `[[rules.notify]]`
    targets, whose rate limits the preview applies (none given: any target name is taken, without a limit);
    `changes` the recorded thing changes (`ThingLog.read`): those before `start` give the things their values
    then, those after are replayed, but for the rule's own writes, which the preview makes itself."""
    from roost.testing import FakeThing, RuleHarness, settle

    steps: list[Step] = []
    failures: list[Failure] = []
    causes: dict[str, str] = {}  # rule → what its current action runs for
    harness: RuleHarness

    def record(thing: FakeThing, name: str, value: Any) -> None:
        cause = causes.get(source.cls.__name__, "start")
        action = f"{thing.title}.{name} = {_value(value)}"
        clause = _effect(thing.title, name, value)
        steps.append(Step(harness.clock.now(), cause, action, f"{cause[0].upper()}{cause[1:]}: {clause}"))

    class StandIn(FakeThing):
        async def _write(self, name: str, value: Any) -> None:
            record(self, name, value)

    stand_ins = []
    if things is None:
        from roost.rules.engine import _AnyProperties

        things = [Thing(id=name, title=name, properties=_AnyProperties()) for name in sorted(_named_things(source.cls))]
    for thing in things:
        if thing.id.startswith("rule-"):
            continue
        values = {name: value for name, value in thing.values.items() if name in thing.properties}
        stand_in = StandIn(thing.title, id=thing.id, **values)
        stand_in.properties = thing.properties  # also those with no value yet
        stand_ins.append(stand_in)

    name = source.cls.__name__
    lo, hi = int(start.timestamp() * 1000) + 1, int(end.timestamp() * 1000) + 1
    if changes is not None:
        by_id = {t.id: t for t in stand_ins}
        for _ts, thing_id, prop, value, _origin in changes(lo - _BEFORE_MS, lo):
            if thing_id in by_id:
                by_id[thing_id].values[prop] = value
    harness = RuleHarness(source.cls, things=stand_ins, start=start, latitude=place.latitude,
                          longitude=place.longitude, timezone=place.timezone, history=history)

    def trace(rt, cause: Trigger | str | None, what: str) -> None:
        text = _cause(cause)
        causes[rt.name] = text if what == "act" else f"{text} no longer holds"

    def failed(rt, error: str, disabled: bool) -> None:
        failures.append(Failure(harness.clock.now(), causes.get(rt.name, "start"), error, disabled))

    harness.engine.tracer = trace
    harness.engine.failure_tracer = failed
    harness.engine.notifier = _Notifications(list(notify), harness.clock.now, steps, causes)
    if properties:
        harness.engine._saved[source.cls.__name__] = {"properties": properties}  # as a restarted hub takes them
    notes: list[str] = []
    async with harness as house:
        notes += house.problems
        rt = house.engine.runtimes.get(name)
        if rt is None or not rt.armed:
            return Preview(name, name, start, end, steps, notes or [f"{name} could not be armed"])
        if changes is None and any(isinstance(t, ThingTrigger) for t in rt.triggers):
            notes.append("thing changes are not recorded here: the triggers on things never fire in this preview")
        thresholds = [t for t in rt.triggers if isinstance(t, Threshold)]
        inputs = [Input(t.describe(), t.selector.text, t.op, t.limit) for t in thresholds]
        streams = []
        for trigger in thresholds:
            for data in history(trigger.selector, lo, hi):
                streams.append([(int(ts), data.series, float(v)) for ts, v in zip(data.ts.tolist(), data.values.tolist())])
        if changes is not None:
            own = f"rule:{name}"
            streams.append([(ts, (thing_id, prop, value, origin), None) for ts, thing_id, prop, value, origin
                            in changes(lo, hi) if origin != own and thing_id in house.registry])
        for ts, subject, value in heapq.merge(*streams, key=lambda item: item[0]):
            when = datetime.fromtimestamp(ts / 1000, timezone.utc)
            if when > house.clock.now():
                await house.clock.advance_to(when)
            if isinstance(subject, tuple):  # a recorded thing change
                thing_id, prop, new, origin = subject
                house.registry.report(thing_id, prop, new, origin=origin, ts_ms=ts)
            else:
                house.bus.publish(Reading(subject, ts, value))
            await settle()
        if end > house.clock.now():
            await house.clock.advance_to(end)
    return Preview(name, rt.sentence, start, end, steps, notes, failures, inputs)


_BEFORE_MS = 2 * 86_400_000  # how far before the start a thing's last recorded value is looked for


class _AnyTarget(dict):
    def __contains__(self, name: object) -> bool:
        return True

    def __missing__(self, name: str) -> Any:
        return NotifySettings(name, webhook="http://preview", rate_limit_ms=0)


class _Notifications(Notifier):
    """A Notifier that records what it would send, as steps of the timeline (rate limits applied)."""

    def __init__(self, targets: list, now: Callable[[], datetime], steps: list[Step], causes: dict[str, str]):
        super().__init__(targets, spawn=None, now=now)
        if not targets:
            self.targets = _AnyTarget()
        self._steps = steps
        self._causes = causes

    def send(self, rule: str, message: str, to: str | None = None) -> list[str]:
        return super().send(rule, message, to if to is not None or self.targets else "every target")

    def _dispatch(self, target: Any, rule: str, message: str, at: datetime) -> None:
        cause = self._causes.get(rule, "start")
        self._steps.append(Step(at, cause, f"notify {target.name}: {message}",
                                f"{cause[0].upper()}{cause[1:]}: notify {target.name}: {message}"))
