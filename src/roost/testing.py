"""Test rules without waiting: a clock that jumps, fake things, and a harness running the real rule engine.

    from roost.testing import FakeThing, RuleHarness

    async def test_porch_light_goes_on_at_dusk():
        porch = FakeThing("Porch Light", on=False)
        async with RuleHarness(PorchLight, things=[porch], start="2024-06-01 12:00") as house:
            await house.clock.advance_to("dusk")
            assert porch.values["on"] is True

The harness runs the same `RuleEngine` the hub runs, with a `FakeClock` in place of the wall clock: time moves
only when the test says so, and every timer due on the way fires in order, each at its own moment.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from roost.bus import Bus
from roost.model import Reading, Series
from roost.rules.clock import Place, seconds
from roost.rules.engine import RuleEngine, RuleRuntime
from roost.rules.loader import RuleSource, load_directory, load_file
from roost.rules.rule import Rule
from roost.rules.triggers import SUN_EVENTS, AbsoluteTimeTrigger, SunTrigger
from roost.selector import Selector
from roost.things import PropertySpec, Thing, ThingRegistry

__all__ = ["FakeClock", "FakeThing", "RuleHarness", "settle"]


async def settle(rounds: int = 10_000) -> None:
    """Let every task that can run, run, until all of them wait (on the clock, a queue, or I/O)."""
    loop = asyncio.get_running_loop()
    ready = getattr(loop, "_ready", None)  # asyncio's run queue; without it, a fixed number of passes
    for _ in range(rounds if ready is not None else 200):
        await asyncio.sleep(0)
        if ready is not None and not ready:
            await asyncio.sleep(0)
            if not ready:
                return


class FakeClock:
    """A clock for tests: `now()` stands still until `advance(...)` or `advance_to(...)` moves it."""

    def __init__(self, start: datetime | str = "2024-01-01 12:00", place: Place | None = None):
        self.place = place or Place()
        self._now = self._parse(start)
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self.busy: Callable[[], Iterable[asyncio.Future[Any]]] = tuple  # I/O to wait for: the engine's state writes

    def _parse(self, when: datetime | str) -> datetime:
        if isinstance(when, str):
            when = datetime.fromisoformat(when)
        if when.tzinfo is None:
            when = when.replace(tzinfo=self.place.tz)
        return when.astimezone(timezone.utc)

    def now(self) -> datetime:
        return self._now

    def local_now(self) -> datetime:
        return self.place.local(self._now)

    async def sleep_until(self, when: datetime) -> None:
        if when <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (when, next(self._order), future))
        await future

    async def advance(self, duration: str | float | timedelta) -> datetime:
        """Move time forward by "10m", "20m", seconds or a timedelta, firing what is due on the way."""
        return await self._run_until(self._now + timedelta(seconds=seconds(duration)))

    async def advance_to(self, when: str | datetime, *, weekday: str | None = None) -> datetime:
        """Move to the next "06:30" (on `weekday`, e.g. "sat"), the next sun event ("dusk", "sunrise", ...)
        or a given local date and time ("2024-06-01 21:00"), firing what is due on the way."""
        if isinstance(when, str) and when in SUN_EVENTS:
            target = SunTrigger(when, weekdays=weekday).next_after(self._now, self.place)
        elif isinstance(when, str) and len(when) <= 8 and ":" in when:
            target = AbsoluteTimeTrigger(when, weekdays=weekday).next_after(self._now, self.place)
        else:
            target = self._parse(when)
            if target < self._now:
                raise ValueError(f"advance_to({when!r}): that is in the past (now {self.local_now():%Y-%m-%d %H:%M:%S})")
        return await self._run_until(target)

    async def settle(self) -> None:
        """`settle()`, and wait for the I/O of `busy` (a state write before an action) and settle again."""
        await settle()
        while pending := [f for f in self.busy() if not f.done()]:
            await asyncio.wait(pending)
            await settle()

    async def _run_until(self, target: datetime) -> datetime:
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, future = heapq.heappop(self._sleepers)
            if future.done():  # cancelled sleeper
                continue
            self._now = max(self._now, when)
            future.set_result(None)
            await self.settle()
        self._now = max(self._now, target)
        await self.settle()
        return self.local_now()


def _spec(name: str, value: Any) -> PropertySpec:
    if isinstance(value, bool):
        return PropertySpec(name, "boolean")
    if isinstance(value, int):
        return PropertySpec(name, "integer")
    if isinstance(value, float):
        return PropertySpec(name, "number")
    if isinstance(value, str):
        return PropertySpec(name, "string")
    return PropertySpec(name, "object")


class FakeThing(Thing):
    """A thing with the given properties and values that obeys every write and remembers it in `writes`:
    `FakeThing("Lounge Lamp", on=False, brightness=0)`. `specs=` overrides inferred property descriptions
    (ranges, read-only); `fail=True` makes writes raise, like an unreachable device."""

    def __init__(self, title: str, *, id: str | None = None, specs: Iterable[PropertySpec] = (), **values: Any):
        properties = {name: _spec(name, value) for name, value in values.items()}
        properties.update({s.name: s for s in specs})
        super().__init__(
            id=id or "fake-" + title.lower().replace(" ", "-"), title=title, properties=properties,
            values=dict(values), actuator=self._write, origin="test",
        )
        self.writes: list[tuple[str, Any]] = []
        self.fail = False

    async def _write(self, name: str, value: Any) -> None:
        if self.fail:
            raise OSError(f"{self.title} does not answer")
        self.writes.append((name, value))

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


class RuleHarness:
    """The real rule engine on fake time: `async with RuleHarness(MyRule, things=[...]) as house:`.

    `rules` are rule classes, or paths of rule files or a rules directory. With `state_dir` the rules save what
    they promised there, so a second harness on the same directory (and a later `start`) is a restarted hub.
    `house.change(...)` is a device
    reporting, `house.set(...)` someone using the API, `house.reading(...)` a sensor sample on the bus; each
    returns once every rule has reacted.
    """

    def __init__(
        self,
        *rules: type[Rule] | str | Path,
        things: Iterable[Thing] = (),
        start: datetime | str = "2024-01-01 12:00",
        latitude: float = 52.52,
        longitude: float = 13.405,
        timezone: str = "Europe/Berlin",
        max_failures: int = 3,
        history: Any = None,
        state_dir: str | Path | None = None,
        notify: Iterable[Any] = (),
        thing_log: str | Path | None = None,
    ):
        self.place = Place(latitude, longitude, timezone)
        self.clock = FakeClock(start, self.place)
        self.registry = ThingRegistry()
        self.bus: Bus[Reading] = Bus()
        self.things: dict[str, Thing] = {}
        for thing in things:
            self.registry.add(thing)
            self.things[thing.title] = thing
        self._rules = rules
        self.engine = RuleEngine(
            self.registry, clock=self.clock, place=self.place, readings=self.bus, history=history,
            max_failures=max_failures, state_dir=Path(state_dir) if state_dir is not None else None,
            notify=notify, thing_log=Path(thing_log) if thing_log is not None else None,
        )
        self.clock.busy = lambda: self.engine.saving
        self.problems: list[str] = []

    async def __aenter__(self) -> RuleHarness:
        await self.engine.__aenter__()
        await self.load(*self._rules)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.engine.__aexit__(*exc)

    async def load(self, *rules: type[Rule] | str | Path) -> list[str]:
        """(Re)load rules, as editing the rules directory does; returns the problems found."""
        sources: list[RuleSource] = []
        problems: list[str] = []
        for rule in rules:
            if isinstance(rule, type):
                sources.append(RuleSource(rule, None, 1))
            elif Path(rule).is_dir():
                found, trouble = load_directory(Path(rule))
                sources += found
                problems += trouble
            else:
                found, trouble = load_file(Path(rule))
                sources += found
                problems += trouble
        problems += await self.engine.load(sources)
        self.problems = problems
        await self.clock.settle()
        return problems

    def rule(self, name: str) -> RuleRuntime:
        return self.engine.runtimes[name]

    def thing(self, title: str) -> Thing:
        return self.things[title]

    async def change(self, title: str, **values: Any) -> None:
        """A device reports new values (origin "device")."""
        thing = self.things[title]
        for name, value in values.items():
            self.registry.report(thing.id, name, value, ts_ms=int(self.clock.now().timestamp() * 1000))
        await self.clock.settle()

    async def set(self, title: str, **values: Any) -> None:
        """Someone sets values through the API (origin "api"), checked and written like any request."""
        thing = self.things.get(title) or self.registry.get(title)
        for name, value in values.items():
            await self.registry.set(thing.id, name, value, origin="api")
        await self.clock.settle()

    async def enable(self, rule: str, enabled: bool = True) -> None:
        """Switch a rule on or off through its thing, as the API does."""
        await self.registry.set(f"rule-{rule}", "enabled", enabled, origin="api")
        await self.clock.settle()

    async def reading(self, series: str, value: float) -> None:
        """A sensor sample now: `await house.reading('temperature_celsius{room="lounge"}', 26.5)`."""
        selector = Selector.parse(series)
        labels = {m.name: m.value for m in selector.matchers if m.name != "__name__" and m.op == "="}
        metric = next(m.value for m in selector.matchers if m.name == "__name__")
        self.bus.publish(Reading(Series.of(metric, labels), int(self.clock.now().timestamp() * 1000), float(value)))
        await self.clock.settle()
