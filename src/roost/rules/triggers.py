"""What makes a rule act: a thing or one of its properties changing, the time of day, the sun, a schedule,
a heartbeat, or a series crossing a threshold and staying there.

Time triggers say when they fire next (`next_after`), so the engine and the test clock share one loop and a
trigger is testable without sleeping. All wall-clock times are in the configured place's time zone, computed
day by day, so they stay right across daylight-saving changes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import operator
import re
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Protocol

from roost.durations import format_duration_ms, parse_duration_ms
from roost.model import Reading, Series
from roost.rules.clock import Clock, Place
from roost.rules.errors import RuleError
from roost.rules.proxy import ThingProxy
from roost.selector import Selector

log = logging.getLogger("roost.rules")

__all__ = [
    "AbsoluteTimeTrigger",
    "Changed",
    "Cron",
    "HeartBeat",
    "SunTrigger",
    "Threshold",
    "TimeTrigger",
    "Trigger",
]


class TriggerContext(Protocol):
    """What the engine gives a trigger while its rule is enabled."""

    clock: Clock
    place: Place
    name: str

    def fire(
        self, trigger: Trigger, subject: Any, name: str | None, value: Any, *, release: bool = False,
        durable: bool = False,
    ) -> None:
        """Act on the trigger; `durable`: it fired from a saved promise, so the state is on disk before acting."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task: ...

    def persist(self) -> None:
        """Something the trigger promised changed: save the rule's state."""

    def promised(self, trigger: TimeTrigger) -> datetime | None:
        """When the trigger was due next, as saved before a restart (None: nothing saved)."""

    def promise(self, trigger: TimeTrigger, when: datetime) -> None:
        """Save when the trigger is due next."""


class Trigger:
    """Base of everything `register_triggers` may return besides things."""

    def describe(self) -> str:
        """An English phrase for rule sentences ("at 06:30 on weekdays")."""
        return type(self).__name__

    def holds(self) -> bool | None:
        """For While rules: whether the trigger's condition holds now (None: the trigger has no state)."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"


# ------------------------------------------------------------------ things


class ThingTrigger(Trigger):
    """Any property of a thing changed (what a bare thing in `register_triggers` means)."""

    def __init__(self, thing: ThingProxy):
        self.thing = thing
        self.property: str | None = None

    def describe(self) -> str:
        return f"{self.thing} changes"


class Changed(ThingTrigger):
    """One property of a thing changed: `Changed(self.Porch_Light, "on")`; for While rules it holds while truthy."""

    def __init__(self, thing: ThingProxy, property_name: str):
        if not isinstance(thing, ThingProxy):
            raise RuleError(f"Changed(...) expects a thing such as self.Porch_Light, got {thing!r}")
        thing._check(property_name)
        super().__init__(thing)
        self.property = property_name

    def holds(self) -> bool:
        return bool(getattr(self.thing, self.property))

    def describe(self) -> str:
        return f"{self.thing} {self.property} changes"


# ------------------------------------------------------------------ time


class TimeTrigger(Trigger):
    """Fires at the times `next_after` names.

    Schedules (not heartbeats) save their next time, so a time that fell while the hub was down is noticed at
    start: it runs once when it fell within `catch_up` of now ("2h"; default off), else it is logged as missed.
    """

    catch_up = timedelta(0)
    keeps_promises = True  # the next time is saved (a heartbeat's is not: it has no time of its own)

    def next_after(self, now: datetime, place: Place) -> datetime:
        """The first firing time strictly after `now` (aware datetimes)."""
        raise NotImplementedError

    async def run(self, ctx: TriggerContext) -> None:
        now = ctx.clock.now()
        when = self.next_after(now, ctx.place)
        if self.keeps_promises:
            promised = ctx.promised(self)
            if promised is None or abs(promised - when) >= timedelta(milliseconds=1):  # saved to the ms
                ctx.promise(self, when)
            if promised is not None and promised <= now:
                self._missed(promised, now, ctx)  # the next time is saved with it: it catches up once
        while True:
            await ctx.clock.sleep_until(when)
            following = self.next_after(when, ctx.place)
            now = ctx.clock.now()
            # After a long stall (suspend, a clock set forward) skip the missed firings instead of bursting.
            if following <= now:
                following = self.next_after(now, ctx.place)
            if self.keeps_promises:
                ctx.promise(self, following)  # on disk before acting: a crash in the action does not run it twice
            ctx.fire(self, self, None, None, durable=self.keeps_promises)
            when = following

    def _missed(self, first: datetime, now: datetime, ctx: TriggerContext) -> None:
        """The hub was down when this trigger was due (at `first`, and maybe later): catch up once, or log it."""
        last, earlier = first, 0
        while earlier < 100_000:
            following = self.next_after(last + timedelta(milliseconds=1), ctx.place)  # `first` was saved to the ms
            if following > now:
                break
            last, earlier = following, earlier + 1
        local = ctx.place.local(last).strftime("%Y-%m-%d %H:%M:%S %Z")
        also = f" (and {earlier} time{'s' if earlier != 1 else ''} before)" if earlier else ""
        if self.catch_up > timedelta(0) and now - last <= self.catch_up:
            log.info("rule %s: %s fell at %s%s while the hub was down; running it now (catch_up %s)",
                     ctx.name, self.describe(), local, also, format_duration_ms(int(self.catch_up.total_seconds() * 1000)))
            ctx.fire(self, self, None, None, durable=True)
        else:
            why = (f"more than catch_up {format_duration_ms(int(self.catch_up.total_seconds() * 1000))} ago"
                   if self.catch_up > timedelta(0) else "no catch_up")
            log.warning("rule %s: missed %s: it fell at %s%s while the hub was down (%s)",
                        ctx.name, self.describe(), local, also, why)


def _catch_up(text: str | None, what: str) -> timedelta:
    window = _signed_duration(text, f"{what}, catch_up={text!r}")
    if window < timedelta(0):
        raise RuleError(f"{what}: catch_up={text!r} must not be negative")
    return window


def _signed_duration(text: str | None, what: str) -> timedelta:
    if text is None or text == "":
        return timedelta(0)
    s = str(text).strip()
    sign = -1 if s.startswith("-") else 1
    try:
        ms = parse_duration_ms(s.lstrip("+-"))
    except ValueError as err:
        raise RuleError(f"{what}: {err}") from None
    return timedelta(milliseconds=sign * ms)


class HeartBeat(TimeTrigger):
    """Every `period` ("2s", "5m"), starting one period after the rule is enabled."""

    keeps_promises = False

    def __init__(self, period: str):
        self.period = _signed_duration(period, f"HeartBeat({period!r})")
        if self.period <= timedelta(0):
            raise RuleError(f"HeartBeat({period!r}): the period must be positive")
        self.text = str(period)

    def next_after(self, now: datetime, place: Place) -> datetime:
        return now + self.period

    def describe(self) -> str:
        return f"every {self.text}"


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_DAY_SETS = {"daily": range(7), "weekdays": range(5), "weekends": range(5, 7), "weekend": range(5, 7)}


def parse_weekdays(spec: str | Iterable[str | int] | None) -> frozenset[int]:
    """"mon-fri", "sat,sun", "weekdays", "weekends", or names/numbers (0 = Monday) → weekday numbers."""
    if spec is None:
        return frozenset(range(7))
    parts = [p.strip().lower() for p in spec.split(",")] if isinstance(spec, str) else list(spec)
    days: set[int] = set()
    for part in parts:
        if isinstance(part, int) and 0 <= part <= 6:
            days.add(part)
        elif isinstance(part, str) and part in _DAY_SETS:
            days.update(_DAY_SETS[part])
        elif isinstance(part, str) and re.fullmatch(r"[a-z]{3}\w*(-[a-z]{3}\w*)?", part):
            ends = [_day(p, spec) for p in part.split("-")]
            days.update(range(ends[0], ends[-1] + 1) if ends[0] <= ends[-1] else [*range(ends[0], 7), *range(ends[-1] + 1)])
        else:
            raise RuleError(f'weekdays={spec!r}: expected names like "mon-fri", "sat,sun", "weekdays" or "weekends"')
    if not days:
        raise RuleError(f"weekdays={spec!r}: names no day")
    return frozenset(days)


def _day(name: str, spec: object) -> int:
    try:
        return _DAYS.index(name[:3])
    except ValueError:
        raise RuleError(f'weekdays={spec!r}: {name!r} is not a day (use mon, tue, wed, thu, fri, sat, sun)') from None


def _describe_days(days: frozenset[int]) -> str:
    if len(days) == 7:
        return "every day"
    if days == frozenset(range(5)):
        return "on weekdays"
    if days == frozenset(range(5, 7)):
        return "at weekends"
    names = [_DAY_NAMES[d] for d in sorted(days)]
    return "on " + (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1])


def _local_instant(day: date, at: time, place: Place) -> datetime:
    """`at` o'clock on `day` where the house is. In a spring-forward gap it is the moment the clock jumps past
    (02:30 becomes 03:30); in an autumn repeat it is the first 01:30."""
    naive = datetime.combine(day, at)
    return naive.replace(tzinfo=place.tz).astimezone(timezone.utc)


def _next_daily(now: datetime, place: Place, days: frozenset[int], at_day: Callable[[date], datetime | None]) -> datetime:
    today = place.local(now).date()
    for offset in range(-1, 370):
        day = today + timedelta(days=offset)
        if day.weekday() not in days:
            continue
        when = at_day(day)
        if when is not None and when > now:
            return when
    raise RuleError("no firing time within a year")


class AbsoluteTimeTrigger(TimeTrigger):
    """Every day (or on `weekdays`) at a local time: `AbsoluteTimeTrigger("06:30", weekdays="mon-fri")`."""

    def __init__(self, at: str, *, weekdays: str | Iterable[str | int] | None = None, catch_up: str | None = None):
        self.at = parse_time_of_day(at)
        self.days = parse_weekdays(weekdays)
        self.catch_up = _catch_up(catch_up, f"AbsoluteTimeTrigger({at!r})")

    def next_after(self, now: datetime, place: Place) -> datetime:
        return _next_daily(now, place, self.days, lambda day: _local_instant(day, self.at, place))

    def describe(self) -> str:
        fmt = "%H:%M:%S" if self.at.second else "%H:%M"
        return f"at {self.at.strftime(fmt)} {_describe_days(self.days)}".replace(" every day", "")


def parse_time_of_day(text: str) -> time:
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*", str(text))
    if not m or int(m[1]) > 23 or int(m[2]) > 59 or int(m[3] or 0) > 59:
        raise RuleError(f'expected a time of day like "06:30" or "06:30:00", got {text!r}')
    return time(int(m[1]), int(m[2]), int(m[3] or 0))


SUN_EVENTS = (
    "dawn", "sunrise", "noon", "sunset", "dusk",
    "golden_hour", "blue_hour", "morning_golden_hour", "morning_blue_hour",
)


def sun_event(event: str, day: date, place: Place) -> datetime | None:
    """When `event` happens on the local `day` (UTC), or None where the sun never gets there that day."""
    from astral import Observer, SunDirection
    from astral import sun as astral_sun

    observer = Observer(place.latitude, place.longitude)
    tz = place.tz
    try:
        if event in ("dawn", "sunrise", "noon", "sunset", "dusk"):
            when = getattr(astral_sun, event)(observer, day, tzinfo=tz)
        else:
            direction = SunDirection.RISING if event.startswith("morning_") else SunDirection.SETTING
            window = astral_sun.golden_hour if "golden" in event else astral_sun.blue_hour
            when = window(observer, day, direction, tzinfo=tz)[0]
    except ValueError:  # polar day or night: the sun does not reach that elevation
        return None
    return when.astimezone(timezone.utc)


class SunTrigger(TimeTrigger):
    """At a sun event where the house is, shifted by `offset`: `SunTrigger("dusk", offset="-15m")`.

    Events: dawn, sunrise, noon, sunset, dusk, golden_hour and blue_hour (the evening ones' start), and
    morning_golden_hour, morning_blue_hour. Days on which the event does not happen (polar summer) are skipped.
    """

    def __init__(
        self, event: str, *, offset: str | None = None, weekdays: str | Iterable[str | int] | None = None,
        catch_up: str | None = None,
    ):
        if event not in SUN_EVENTS:
            close = [e for e in SUN_EVENTS if e.startswith(event[:3])]
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise RuleError(f"SunTrigger({event!r}): unknown sun event{hint}; use one of {', '.join(SUN_EVENTS)}")
        self.event = event
        self.offset = _signed_duration(offset, f"SunTrigger({event!r}, offset={offset!r})")
        self.days = parse_weekdays(weekdays)
        self.catch_up = _catch_up(catch_up, f"SunTrigger({event!r})")

    def next_after(self, now: datetime, place: Place) -> datetime:
        def at_day(day: date) -> datetime | None:
            when = sun_event(self.event, day, place)
            return None if when is None else when + self.offset

        return _next_daily(now, place, self.days, at_day)

    def describe(self) -> str:
        event = self.event.replace("_", " ")
        ms = int(self.offset.total_seconds() * 1000)
        if ms == 0:
            head = f"at {event}"
        else:
            head = f"{_spoken(abs(ms))} {'before' if ms < 0 else 'after'} {event}"
        days = _describe_days(self.days)
        return head if days == "every day" else f"{head} {days}"


def _spoken(ms: int) -> str:
    for unit, size in (("hour", 3_600_000), ("minute", 60_000), ("second", 1000)):
        if ms % size == 0:
            n = ms // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return format_duration_ms(ms)


class Cron(TimeTrigger):
    """A cron schedule in the house's time zone: `Cron("*/5 * * * *")`, `Cron("0 7 * * mon-fri")`."""

    def __init__(self, expression: str, *, catch_up: str | None = None):
        from croniter import croniter

        if not isinstance(expression, str) or not croniter.is_valid(expression):
            raise RuleError(f'Cron({expression!r}): not a cron expression (five fields like "*/5 * * * *")')
        self.expression = expression
        self.catch_up = _catch_up(catch_up, f"Cron({expression!r})")

    def next_after(self, now: datetime, place: Place) -> datetime:
        from croniter import croniter

        following = croniter(self.expression, place.local(now)).get_next(datetime)
        return following.astimezone(timezone.utc)

    def describe(self) -> str:
        return f'on the schedule "{self.expression}"'


# ------------------------------------------------------------------ thresholds

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
}
_METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_REST = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?:for\s+(\S+))?\s*")
_FORM = 'like \'temperature_celsius{room="lounge"} > 25 for 10m\''


@dataclass(eq=False, slots=True)
class _Held:
    since_ms: int | None = None
    last_ts: int = -1
    value: float = math.nan
    fired: bool = False
    timer: asyncio.Task | None = None


class Threshold(Trigger):
    """A series compared with a number, held for a while: `Threshold('power_watts{plug="kettle"} > 2000 for 30s')`.

    Fires once per series when every reading of that series has satisfied the comparison for the `for`
    duration (at once without `for`), judged by the readings' timestamps; fires again only after a reading
    breaks the condition. For While rules it holds while any matching series has fired and not been broken.
    At start the engine replays the stored readings, so a hold that began before a restart counts from when it
    began; `fired` (saved with the rule) remembers the series that fired and have not been broken since, so a
    hold that fired before the restart does not fire again.
    """

    def __init__(self, spec: str):
        self.spec = spec
        selector_text, rest = _split_selector(spec)
        m = _REST.fullmatch(rest)
        if not m:
            raise RuleError(f"Threshold({spec!r}): expected a selector, a comparison and a number, {_FORM}")
        try:
            self.selector = Selector.parse(selector_text)
        except Exception as err:
            raise RuleError(f"Threshold({spec!r}): {err}") from None
        self.op, self.limit = m[1], float(m[2])
        try:
            self.for_ms = parse_duration_ms(m[3]) if m[3] else 0
        except ValueError as err:
            raise RuleError(f"Threshold({spec!r}): for: {err}") from None
        self._compare = _OPS[self.op]
        self._held: dict[Series, _Held] = {}
        self.fired: dict[str, int] = {}  # series → when it fired (ms), while not broken since; saved with the rule

    @property
    def metric(self) -> str | None:
        """The metric name the selector requires, if it names one (the engine indexes thresholds by it)."""
        for m in self.selector.matchers:
            if m.name == "__name__" and m.op == "=":
                return m.value
        return None

    def holds(self) -> bool:
        return any(h.fired for h in self._held.values())

    def complies(self, value: float) -> bool:
        return self._compare(value, self.limit)

    def describe(self) -> str:
        held = f" for {format_duration_ms(self.for_ms)}" if self.for_ms else ""
        return f"{self.selector.text} {self.op} {self.limit:g}{held}"

    def reset(self) -> None:
        for held in self._held.values():
            if held.timer is not None:
                held.timer.cancel()
        self._held.clear()

    def observe(self, reading: Reading, ctx: TriggerContext) -> None:
        """Take one reading of a matching series."""
        held = self._held.get(reading.series)
        if held is None:
            held = self._held[reading.series] = _Held()
        if reading.ts_ms <= held.last_ts:
            return  # replayed history overlapping live readings, or out of order
        held.last_ts = reading.ts_ms
        held.value = reading.value
        if self._compare(reading.value, self.limit):
            if held.since_ms is None and not held.fired:
                if str(reading.series) in self.fired:  # fired before a restart or reload, not broken since
                    held.fired = True
                    return
                held.since_ms = reading.ts_ms
                deadline = datetime.fromtimestamp((reading.ts_ms + self.for_ms) / 1000, timezone.utc)
                if deadline <= ctx.clock.now():
                    self._fire(reading.series, held, ctx)
                else:
                    held.timer = ctx.spawn(self._wait(reading.series, held, deadline, ctx))
            return
        held.since_ms = None
        if held.timer is not None:
            held.timer.cancel()
            held.timer = None
        key = str(reading.series)
        if key in self.fired and self.fired[key] <= reading.ts_ms:
            del self.fired[key]  # broken since it fired (a break before is history the replay passes over)
            ctx.persist()
        if held.fired:
            held.fired = False
            ctx.fire(self, self, key, reading.value, release=True)

    async def _wait(self, series: Series, held: _Held, deadline: datetime, ctx: TriggerContext) -> None:
        await ctx.clock.sleep_until(deadline)
        held.timer = None
        self._fire(series, held, ctx)

    def _fire(self, series: Series, held: _Held, ctx: TriggerContext) -> None:
        held.since_ms = None
        held.fired = True
        self.fired[str(series)] = int(ctx.clock.now().timestamp() * 1000)
        ctx.persist()  # saved before acting, so a restart does not act twice: a hold's firing is on disk before
        ctx.fire(self, self, str(series), held.value, durable=self.for_ms > 0)  # (it was a promise), an instant one's queued


def _split_selector(spec: str) -> tuple[str, str]:
    """`metric{labels} > 25 for 10m` → (`metric{labels}`, ` > 25 for 10m`); quotes may hold any character."""
    s = str(spec).strip()
    m = _METRIC.match(s)
    pos = m.end() if m else 0
    if pos < len(s) and s[pos] == "{":
        quote = None
        for i in range(pos + 1, len(s)):
            c = s[i]
            if quote:
                if c == "\\":
                    continue
                if c == quote and s[i - 1] != "\\":
                    quote = None
            elif c in "\"'`":
                quote = c
            elif c == "}":
                return s[: i + 1], s[i + 1 :]
        raise RuleError(f"Threshold({spec!r}): the selector's {{ is not closed, {_FORM}")
    if pos == 0:
        raise RuleError(f"Threshold({spec!r}): expected a selector first, {_FORM}")
    return s[:pos], s[pos:]
