"""The rule engine: arms each enabled rule's triggers, runs its action when they fire, and keeps it from harm.

- Thing changes arrive from `registry.changes`, readings for thresholds from the hub's bus, times from the
  injected clock; each trigger calls `RuleRuntime.fire`, which applies the If or While semantics.
- A rule's writes go through `registry.set(..., origin="rule:<Name>")` in the order it made them (one writer
  task per rule); changes with its own origin do not trigger it again unless it asks for that.
- An action that raises is logged with its traceback; after `max_failures` failures in a row the rule is
  disabled and the others keep running. Async actions run as tasks, cancelled when the rule is disabled or
  reloaded.
- Every rule is a thing too (`rule-<Name>`, @type Rule) with a writable `enabled`, a read-only `last_run`
  and the rule's `RuleProperty` settings; what those hold survives restarts in the state file.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from roost.bus import Bus
from roost.model import Reading, Series
from roost.rules.clock import Clock, Place, WallClock
from roost.rules.errors import RuleError, UnknownThing
from roost.rules.loader import RuleSource, error_line, files_state, load_directory, load_file
from roost.rules.proxy import ThingProxy, did_you_mean
from roost.rules.rule import If, Rule, WhileRule, While, rule_properties
from roost.rules.english import rule_sentence
from roost.rules.state import RuleStateStore
from roost.rules.thinglog import ThingLog
from roost.rules.triggers import Threshold, ThingTrigger, TimeTrigger, Trigger
from roost.selector import Selector
from roost.rules.settings import NotifySettings
from roost.things import PropertySpec, Thing, ThingError, ThingRegistry, attribute_name
from roost.things.model import EventSpec

log = logging.getLogger("roost.rules")

History = Callable[[Selector, int, int], Iterable[Any]]  # store.read: SeriesData with .series, .ts, .values
_THRESHOLD_LOOKBACK_MS = 5 * 60_000
_THRESHOLD_LOOKBACK_MAX_MS = 86_400_000  # how far back a hold that began before a long outage is looked for
_SAVE_EVERY_S = 10.0
_DUE_WAIT_S = 10.0  # how long stopping a rule waits for the state writes of its due actions
_WAIT_BEFORE_ERROR_S = 60.0  # a rule's things normally appear within seconds of the start: retained MQTT states


class _AnyProperties(dict):
    """For checking rules without the hub's things: every property exists and takes any value."""

    def __contains__(self, name: object) -> bool:
        return True

    def __missing__(self, name: str) -> PropertySpec:
        return PropertySpec(name, type="any")


class RuleRuntime:
    """One rule as the engine runs it: its instance, triggers, state, writes and its own thing."""

    def __init__(self, engine: RuleEngine, source: RuleSource):
        self.engine = engine
        self.source = source
        self.cls = source.cls
        self.name = source.cls.__name__
        self.origin = f"rule:{self.name}"
        self.thing_id = f"rule-{self.name}"
        self.enabled = True
        self.armed = False
        self.failures = 0
        self.runs_total = 0  # actions started, and actions that raised, since the hub started (for /metrics)
        self.errors_total = 0
        self.last_run: datetime | None = None
        self.sentence = rule_sentence(self.cls, None)
        self.properties = rule_properties(self.cls)
        self.property_values: dict[str, Any] = {name: p.default for name, p in self.properties.items()}
        self.rule: Rule | None = None
        self.triggers: list[Trigger] = []
        self.triggering_things: dict[str, ThingProxy] = {}
        self.declared: If | None = None
        self.mode = "every"  # every trigger acts | "if": act when the condition becomes true | "while"
        self.active = False
        self.last_condition = False
        self.unresolved: set[str] = set()  # thing names a check without the hub's things could not verify
        self.undo: dict[tuple[str, str], tuple[Thing | None, Any, Any]] = {}  # key → (thing, value before, value set)
        self.timers: dict[str, _Timer] = {}  # method name → deadline and arguments (and its task while armed)
        self.promises: dict[str, datetime] = {}  # time trigger → when it is due next
        self.fired: dict[str, dict[str, int]] = {}  # threshold → series that fired and were not broken since
        self._trigger_keys: dict[int, str] = {}
        self._firing: Trigger | None = None
        self._proxies: dict[str, ThingProxy] = {}
        self._pending: dict[tuple[str, str], list[Any]] = {}  # key → [value, writes in flight]
        self._queue: asyncio.Queue[tuple[Thing, str, Any]] | None = None
        self._tasks: set[asyncio.Task] = set()
        self._action: asyncio.Task | None = None
        self._writer_task: asyncio.Task | None = None
        self._due: set[asyncio.Future[None]] = set()  # actions waiting for their state to reach the disk

    # ------------------------------------------------------------------ what it promised (saved, restored)

    def restore(self, saved: dict[str, Any]) -> None:
        """Take the state saved before a restart or reload (what `state()` gave)."""
        self.enabled = bool(saved.get("enabled", True))
        self.last_run = _parse_iso(saved.get("last_run"))
        for name, value in (saved.get("properties") or {}).items():
            if name in self.properties:
                with contextlib.suppress(ThingError):
                    self.property_values[name] = self.properties[name].spec().check(self.thing_id, value)
        for name, timer in (saved.get("timers") or {}).items():
            with contextlib.suppress(KeyError, TypeError, ValueError):
                self.timers[name] = _Timer(_from_ms(timer["at"]), list(timer.get("args", ())))
        for key, at in (saved.get("times") or {}).items():
            with contextlib.suppress(TypeError, ValueError):
                self.promises[key] = _from_ms(at)
        for key, series in (saved.get("thresholds") or {}).items():
            if isinstance(series, dict):
                self.fired[key] = {str(k): int(v) for k, v in series.items()}
        in_effect = saved.get("while")
        if isinstance(in_effect, dict):
            self.active = True
            for thing_id, name, before, mine in in_effect.get("undo", ()):
                self.undo[(thing_id, name)] = (None, before, mine)

    def state(self) -> dict[str, Any]:
        """Everything this rule must not forget, as JSON: what `restore()` takes."""
        state: dict[str, Any] = {
            "enabled": self.enabled, "last_run": _iso(self.last_run), "properties": self.property_values,
        }
        if self.timers:
            state["timers"] = {name: {"at": _ms(t.deadline), "args": t.args} for name, t in self.timers.items()}
        if self.promises:
            state["times"] = {key: _ms(when) for key, when in self.promises.items()}
        fired = {key: series for key, series in self.fired.items() if series}
        if fired:
            state["thresholds"] = fired
        if self.active:
            state["while"] = {"undo": [[tid, name, before, mine] for (tid, name), (_, before, mine) in self.undo.items()]}
        return state

    def persist(self) -> None:
        self.engine.persist(self)

    def trigger_key(self, trigger: Trigger) -> str:
        return self._trigger_keys.get(id(trigger)) or trigger.describe()

    def promised(self, trigger: TimeTrigger) -> datetime | None:
        return self.promises.get(self.trigger_key(trigger))

    def promise(self, trigger: TimeTrigger, when: datetime) -> None:
        self.promises[self.trigger_key(trigger)] = when
        self.persist()

    # ------------------------------------------------------------------ timers

    def start_timer(self, method: Any, delay_s: float, args: tuple[Any, ...]) -> None:
        name = method if isinstance(method, str) else getattr(method, "__name__", None)
        if not isinstance(name, str) or not callable(getattr(self.rule, name, None)) or (
            not isinstance(method, str) and getattr(method, "__self__", None) is not self.rule
        ):
            raise RuleError(f"after(...): expected a method of this rule, like self.heater_off, got {method!r}")
        try:
            orjson.dumps(list(args))
        except TypeError:
            raise RuleError(f"after(..., {name}, ...): the arguments must be plain values (numbers, strings, "
                            f"lists, dicts) so they can be saved, got {args!r}") from None
        timer = self.timers.get(name)
        if timer is not None and timer.task is not None:
            timer.task.cancel()
        self.timers[name] = _Timer(self.clock.now() + timedelta(seconds=delay_s), list(args))
        if self.armed:
            self._arm_timer(name)
        self.persist()

    def cancel_timer(self, method: Any) -> bool:
        name = method if isinstance(method, str) else getattr(method, "__name__", "")
        timer = self.timers.pop(name, None)
        if timer is None:
            return False
        if timer.task is not None:
            timer.task.cancel()
        self.persist()
        return True

    def notify(self, message: str, to: str | None) -> None:
        notifier = self.engine.notifier
        if notifier is None:
            raise RuleError("notify: no [[rules.notify]] target in the config (a webhook, email or mqtt, docs/rules.md)")
        if to is not None and to not in notifier.targets:
            raise RuleError(f"notify: no target named {to!r}{did_you_mean(to, sorted(notifier.targets))}")
        notifier.send(self.name, str(message), to)

    def _arm_timer(self, name: str) -> None:
        timer = self.timers[name]
        if not callable(getattr(self.rule, name, None)):
            log.warning("rule %s: a timer for %s() was running, but the rule has no such method any more; dropped",
                        self.name, name)
            del self.timers[name]
            self.persist()
            return
        late = (self.clock.now() - timer.deadline).total_seconds()
        if late > 1:
            log.info("rule %s: timer %s() was due %.0f s ago, while the hub was down; running it now", self.name, name, late)
        timer.task = self.spawn(self._timer(name, timer))

    async def _timer(self, name: str, timer: _Timer) -> None:
        await self.clock.sleep_until(timer.deadline)
        if self.timers.get(name) is not timer:
            return
        del self.timers[name]
        timer.task = None  # due: starting the same timer again now starts a new one
        self.last_run = self.clock.now()  # written with it: one write for the event
        try:
            await self.save_before_acting()  # "consumed" on disk first: a crash from here on does not run it again
        except asyncio.CancelledError:
            self.timers.setdefault(name, timer)  # stopped before it could act: still promised
            self.persist()
            raise
        method = getattr(self.rule, name)
        self.engine.trace(self, f"timer {name}()", "act")
        self.runs_total += 1
        self.engine.note_run(self, saved=self.engine.state is not None)
        try:
            result = method(*timer.args)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self._failed(f"{name}", err)
        else:
            self.failures = 0

    async def save_before_acting(self) -> None:
        """Write this rule's state and wait until it is on disk (in the state store's thread: the event loop
        stays free), before an action that fires from a saved promise. A crash before the write completes
        leaves the promise pending, so the restarted hub keeps it; a crash after it leaves it kept, so the
        action does not run again. Stopping or reloading the rule waits for these writes and lets the action
        start (`disarm`)."""
        if self.engine.state is None:
            return
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._due.add(started)
        try:
            await self.engine.save_now(self)
        finally:
            self._due.discard(started)
            if not started.done():
                started.set_result(None)

    def _durably(self, then: Callable[[], None]) -> None:
        """`then()` once this rule's state is on disk (at once without a state directory: checks, previews)."""
        if self.engine.state is None:
            then()
            return

        async def run() -> None:
            await self.save_before_acting()
            then()

        self.spawn(run())

    # ------------------------------------------------------------------ what the rule object asks for

    @property
    def clock(self) -> Clock:
        return self.engine.clock

    @property
    def place(self) -> Place:
        return self.engine.place

    def local_now(self) -> datetime:
        return self.place.local(self.clock.now())

    async def sleep(self, secs: float) -> None:
        await self.clock.sleep_until(self.clock.now() + timedelta(seconds=secs))

    def thing(self, name: str) -> ThingProxy:
        proxy = self._proxies.get(name)
        if proxy is not None:
            return proxy
        things = self.engine.registry.by_attribute()
        thing = things.get(name)
        if thing is None:
            if not self.engine.strict:
                self.unresolved.add(name)
                thing = Thing(id=name, title=name.replace("_", " "), properties=_AnyProperties())
            else:
                known = sorted(things)
                err = UnknownThing(f'no thing named "{name}"{did_you_mean(name, known)}')
                err.thing = name  # type: ignore[attr-defined]
                raise err
        proxy = self._proxies[name] = ThingProxy(thing, self)
        return proxy

    def rule_thing(self, name: str) -> ThingProxy:
        """Rule `name`'s own thing (`self.rules.Coffee`): `enabled`, `last_run` and its settings."""
        key = f"rule-{name}"
        proxy = self._proxies.get(key)
        if proxy is not None:
            return proxy
        registry = self.engine.registry
        if key in registry:
            thing = registry.get(key)
        elif not self.engine.strict:
            self.unresolved.add(f"rules.{name}")
            thing = Thing(id=key, title=name, types=("Rule",), properties=_AnyProperties())
        else:
            known = sorted(t.id.removeprefix("rule-") for t in registry if t.id.startswith("rule-"))
            err = UnknownThing(f'no rule named "{name}"{did_you_mean(name, known)} (self.rules.{name})')
            err.thing = f"rules.{name}"  # type: ignore[attr-defined]
            raise err
        proxy = self._proxies[key] = ThingProxy(thing, self)
        return proxy

    def read(self, thing: Thing, name: str) -> Any:
        pending = self._pending.get((thing.id, name))
        return pending[0] if pending else thing.values.get(name)

    def write(self, thing: Thing, name: str, value: Any) -> None:
        spec = thing.spec(name)
        if spec.read_only:
            raise RuleError(f'"{thing.title}" property "{name}" is read-only')
        try:
            value = spec.check(thing.id, value)
        except ThingError as err:
            raise RuleError(f'"{thing.title}": {err}') from None
        if self._queue is None:
            return  # checking, not running
        key = (thing.id, name)
        current = self.read(thing, name)
        if self.mode == "while" and self.active and key not in self.undo:
            self.undo[key] = (thing, current, value)
            self.persist()
        elif key in self.undo:
            self.undo[key] = (thing, self.undo[key][1], value)
            self.persist()
        pending = self._pending.setdefault(key, [value, 0])
        pending[0] = value
        pending[1] += 1
        self._queue.put_nowait((thing, name, value))

    def property_value(self, name: str, default: Any) -> Any:
        return self.property_values.get(name, default)

    def set_property_value(self, name: str, value: Any) -> None:
        value = self.properties[name].spec().check(self.thing_id, value)
        self.property_values[name] = value
        if self.thing_id in self.engine.registry:
            self.engine.registry.report(self.thing_id, name, value, origin=self.origin)
        self.persist()

    # ------------------------------------------------------------------ the trigger context

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task:
        task = self.engine.spawn(_guarded(self, coro, "trigger"), f"rule-{self.name}")
        task.add_done_callback(lambda _task: coro.close())  # cancelled before it started: no "never awaited"
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def fire(
        self, trigger: Trigger, subject: Any, name: str | None, value: Any, *, release: bool = False,
        durable: bool = False,
    ) -> None:
        """A trigger fired: act (or undo) as the rule's mode says. `durable`: it fired from a saved promise (a
        timer, a hold, a schedule, a catch-up, the state at start), so the state is on disk before acting."""
        if not self.armed:
            return
        self._firing = trigger
        if self.mode == "every":
            if not release:
                self._act(subject, name, value, durable)
            return
        try:
            holds = self._condition()
        except Exception as err:
            self._failed("condition", err)
            return
        if self.mode == "if":
            if holds is None:
                if not release:
                    self._act(subject, name, value, durable)
            elif holds and not self.last_condition:
                self._act(subject, name, value, durable)
            self.last_condition = bool(holds)
        elif holds and not self.active:
            self.active = True
            self.persist()
            self._act(subject, name, value, durable)
        elif not holds and self.active:
            self._stop_action()
            self.active = False
            self.engine.trace(self, trigger, "undo")
            undo, self.undo = self.undo, {}
            self.persist()
            if durable:
                self._durably(lambda: self._restore_later(undo))
            else:
                self._restore(undo)

    def _restore_later(self, undo: dict[tuple[str, str], tuple[Thing | None, Any, Any]]) -> None:
        if self.active:  # in effect again meanwhile: what to put back when it ends is still what came before
            for key, (thing, before, mine) in undo.items():
                self.undo[key] = (thing, before, self.undo[key][2]) if key in self.undo else (thing, before, mine)
            self.persist()
            return
        self._restore(undo)

    def _condition(self) -> bool | None:
        if self.declared is not None:
            return self.declared.holds()
        assert isinstance(self.rule, WhileRule)
        return bool(self.rule.condition())

    def _act(self, subject: Any, name: str | None, value: Any, durable: bool = False, *, saved: bool = False) -> None:
        if durable and self.engine.state is not None:
            trigger = self._firing
            self.last_run = self.clock.now()  # written with the state before acting: one write for the event

            def act() -> None:
                if self.mode == "while" and not self.active:
                    return  # its condition ended while the state was being written: nothing to do, or undo
                self._firing = trigger
                self._act(subject, name, value, saved=True)

            self._durably(act)
            return
        self.engine.trace(self, self._firing, "act")
        if not saved:
            self.last_run = self.clock.now()
        self.runs_total += 1
        self.engine.note_run(self, saved=saved)
        rule = self.rule
        assert rule is not None
        if self.declared is not None:
            try:
                self.declared.apply()
            except Exception as err:
                self._failed("action", err)
            return
        if inspect.iscoroutinefunction(rule.action):
            if self._action is not None and not self._action.done():
                log.debug("%s: the action still runs; this trigger is skipped", self.name)
                return
            self._action = self.spawn(self._run_async(subject, name, value))
            return
        try:
            rule.action(subject, name, value)
        except Exception as err:
            self._failed("action", err)
        else:
            self.failures = 0

    async def _run_async(self, subject: Any, name: str | None, value: Any) -> None:
        try:
            await self.rule.action(subject, name, value)  # type: ignore[union-attr]
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self._failed("action", err)
        else:
            self.failures = 0

    def _failed(self, what: str, err: BaseException) -> None:
        self.failures += 1
        self.errors_total += 1
        limit = self.engine.max_failures
        line = error_line(err, self.source.path, self.source.line)
        where = f"{self.source.where.rsplit(':', 1)[0]}:{line}" if self.source.path else self.source.where
        tracer = self.engine.failure_tracer
        if tracer is not None:  # a preview: its answer carries the failure, the hub's log is for live rules
            log.debug("%s: preview of %s: %s.%s failed: %s: %s", where, self.name, self.name, what, type(err).__name__, err)
            tracer(self, f"{self.name}.{what} failed: {type(err).__name__}: {err}", self.failures >= limit)
        else:
            log.error(
                "%s: %s.%s failed (%d in a row; disabled after %d): %s: %s",
                where, self.name, what, self.failures, limit, type(err).__name__, err,
                exc_info=(type(err), err, err.__traceback__),
            )
        if self.failures >= limit:
            if tracer is None:
                log.error("%s: rule %s disabled after %d failures in a row; enable it again once fixed", where, self.name, limit)
            self.enabled = False
            self.engine.spawn(self.engine.disarm(self, undo=True), f"rule-{self.name}-disable")
            self.engine.report_enabled(self)

    def _stop_action(self) -> None:
        if self._action is not None and not self._action.done():
            self._action.cancel()
        self._action = None

    def _restore(self, undo: dict[tuple[str, str], tuple[Thing | None, Any, Any]] | None = None) -> None:
        """Undo a While rule: put back what it changed (`undo`, else what it holds), where nobody changed it since."""
        if undo is None:
            undo, self.undo = self.undo, {}
        for (thing_id, name), (thing, before, mine) in undo.items():
            if thing is None:  # restored from the saved state: the thing as it is now
                if thing_id not in self.engine.registry:
                    log.warning("%s: cannot restore %s.%s: the thing is not there", self.name, thing_id, name)
                    continue
                thing = self.engine.registry.get(thing_id)
            if before is None or self.read(thing, name) != mine:
                continue
            try:
                self.write(thing, name, before)
            except RuleError as err:
                log.warning("%s: cannot restore %s.%s: %s", self.name, thing.title, name, err)

    async def _writer(self) -> None:
        assert self._queue is not None
        registry = self.engine.registry
        while True:
            thing, name, value = await self._queue.get()
            key = (thing.id, name)
            try:
                await registry.set(thing.id, name, value, origin=self.origin)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("%s: cannot set %s.%s to %r: %s", self.name, thing.title, name, value, err)
            finally:
                pending = self._pending.get(key)
                if pending is not None:
                    pending[1] -= 1
                    if pending[1] <= 0:
                        del self._pending[key]
                self._queue.task_done()

    # ------------------------------------------------------------------ building

    def bind(self) -> None:
        """Make the rule object and ask it for its triggers; RuleError names the file and line on trouble."""
        self._proxies.clear()
        if self.rule is None:
            rule = self.cls.__new__(self.cls)
            rule._roost = self
            try:
                rule.__init__()
            except Exception as err:
                raise self._located(err, "__init__") from None
            self.rule = rule
        try:
            result = self.rule.register_triggers()
            self._take(result)
        except Exception as err:
            raise self._located(err, "register_triggers") from None
        self.sentence = rule_sentence(self.cls, self.declared)

    def _located(self, err: BaseException, method: str) -> RuleError:
        line = error_line(err, self.source.path, self.source.line)
        where = f"{self.source.where.rsplit(':', 1)[0]}:{line}" if self.source.path else self.source.where
        message = str(err) if isinstance(err, RuleError) else f"{type(err).__name__}: {err}"
        error = RuleError(f"{where}: {self.name}.{method}: {message}")
        error.unknown_thing = getattr(err, "thing", None) if isinstance(err, UnknownThing) else None  # type: ignore[attr-defined]
        return error

    def _take(self, result: Any) -> None:
        self.declared = None
        if isinstance(result, If):
            if not result.effects:
                raise RuleError(f"{result.word}(...) needs .then(Set(...)) to say what to do")
            self.declared = result
            items: list[Any] = list(result.triggers)
            self.mode = "while" if isinstance(result, While) else "if"
        else:
            if result is None:
                result = ()
            if isinstance(result, (Trigger, ThingProxy)):
                result = (result,)
            try:
                items = list(result)
            except TypeError:
                raise RuleError(f"expected a tuple of things and triggers, got {result!r}") from None
            self.mode = "while" if isinstance(self.rule, WhileRule) else "every"
        triggers: list[Trigger] = []
        for item in items:
            if isinstance(item, ThingProxy):
                item = ThingTrigger(item)
            if not isinstance(item, Trigger):
                raise RuleError(
                    f"{item!r} is not a trigger (return things such as self.Porch_Light, or HeartBeat, "
                    "AbsoluteTimeTrigger, SunTrigger, Cron, Threshold, Changed)"
                )
            triggers.append(item)
        self.triggers = triggers
        self._trigger_keys = {}
        seen: dict[str, int] = {}
        for trigger in triggers:
            key = trigger.describe()
            seen[key] = seen.get(key, 0) + 1
            self._trigger_keys[id(trigger)] = key if seen[key] == 1 else f"{key} #{seen[key]}"
        self.triggering_things = {
            attribute_name(t.thing._thing.title): t.thing for t in triggers if isinstance(t, ThingTrigger)
        }
        if self.declared is None:
            try:
                inspect.signature(self.rule.action).bind(None, None, None)  # type: ignore[union-attr]
            except TypeError:
                raise RuleError("action must accept (thing, property_name, new_value), or *args") from None

    def make_thing(self) -> Thing:
        properties = {
            "enabled": PropertySpec("enabled", "boolean", title="Enabled"),
            "last_run": PropertySpec("last_run", "string", title="Last run", read_only=True),
        }
        properties.update({name: p.spec() for name, p in self.properties.items()})
        values: dict[str, Any] = {"enabled": self.enabled, "last_run": _iso(self.last_run)}
        values.update(self.property_values)
        return Thing(
            id=self.thing_id, title=self.name, types=("Rule",), description=self.sentence,
            properties=properties, values=values, actuator=self._actuate, origin="rules",
            events={"notifyFailed": EventSpec("notifyFailed", title="A notification could not be sent", type="object")},
        )

    async def _actuate(self, name: str, value: Any) -> None:
        if name == "enabled":
            await self.engine.set_enabled(self.name, value)
            return
        self.property_values[name] = value
        self.persist()
        if self.enabled:
            await self.engine.disarm(self, undo=False)
            await self.engine.arm(self)


def _iso(when: datetime | None) -> str:
    return when.isoformat(timespec="seconds") if when else ""


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _from_ms(ms: Any) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, timezone.utc)


@dataclass(eq=False, slots=True)
class _Timer:
    """A timer a rule started with `self.after(...)`: the method's name is its key."""

    deadline: datetime
    args: list[Any]
    task: asyncio.Task | None = None


class _Waiting:
    """A rule waiting for a thing it names: since when, what is missing, whether that was logged as an error."""

    def __init__(self, thing: str, problem: str):
        self.since = time.monotonic()
        self.thing = thing
        self.problem = problem
        self.reported = False


class RuleEngine:
    """`async with RuleEngine(registry, clock=..., place=...) as engine: await engine.load(sources)`.

    `wait_for_things` (the hub): a rule naming a thing the registry does not have yet is not a problem of
    `load()` but waits for it (`watch()` retries), logged once; an error only when it has not appeared after
    a minute. Without it (a test harness, whose things are all there) that is a problem at once.
    """

    def __init__(
        self,
        registry: ThingRegistry,
        *,
        clock: Clock | None = None,
        place: Place | None = None,
        readings: Bus[Reading] | None = None,
        history: History | None = None,
        max_failures: int = 3,
        state_dir: Path | None = None,
        strict: bool = True,
        wait_for_things: bool = False,
        notify: Iterable[NotifySettings] = (),
        thing_log: Path | None = None,
    ):
        self.registry = registry
        self.wait_for_things = wait_for_things
        self.wait_error_s = _WAIT_BEFORE_ERROR_S
        self.clock: Clock = clock or WallClock()
        self.place = place or Place()
        self.readings = readings
        self.history = history
        self.max_failures = max_failures
        self.state = RuleStateStore(state_dir) if state_dir is not None else None
        self.strict = strict
        self.runtimes: dict[str, RuleRuntime] = {}
        self.directory: Path | None = None
        self._by_thing: dict[str, list[tuple[RuleRuntime, ThingTrigger]]] = {}
        self._thresholds: list[tuple[RuleRuntime, Threshold]] = []
        self._threshold_cache: dict[Series, list[tuple[RuleRuntime, Threshold]]] = {}
        self._waiting: dict[str, _Waiting] = {}  # rule name → the thing it waits for
        self._group: asyncio.TaskGroup | None = None
        self._saved: dict[str, dict[str, Any]] = self.state.load() if self.state is not None else {}
        self._dirty: set[str] = set()  # rules whose state changed since it was last saved
        self.saving: set[asyncio.Future[None]] = set()  # writes awaited before acting, in flight (for tests)
        self._flush_soon = False
        self._files: dict[str, tuple[int, int]] = {}
        self.tracer: Callable[[RuleRuntime, Trigger | str | None, str], None] | None = None  # for previews
        self.failure_tracer: Callable[[RuleRuntime, str, bool], None] | None = None  # for previews: (rule, error, disabled)
        self.notify_targets = list(notify)
        self.last_reloaded: list[str] = []  # the files the last reload_if_changed() reloaded
        self.thing_log = ThingLog(thing_log) if thing_log is not None else None  # thing changes, for previews
        self._reload_lock = asyncio.Lock()
        self.notifier: Any = None  # roost.rules.notify.Notifier while running, when targets are configured

    # ------------------------------------------------------------------ lifetime

    async def __aenter__(self) -> RuleEngine:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self.spawn(self._follow_changes(self.registry.changes.subscribe("rules", maxsize=100_000)), "rules-changes")
        if self.readings is not None:
            self.spawn(self._follow_readings(self.readings.subscribe("rules", maxsize=100_000)), "rules-readings")
        if self.state is not None or self.thing_log is not None:
            self.spawn(self._save_periodically(), "rules-state")
        if self.notify_targets:
            from roost.rules.notify import Notifier

            self.notifier = Notifier(self.notify_targets, spawn=self.spawn, now=self.clock.now, failed=self._notify_failed)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for rt in list(self.runtimes.values()):
            await self.disarm(rt, undo=False)  # stopping the hub leaves the house as it is
        self.flush()
        if self.state is not None:
            self.state.close()  # the last states written before the hub goes
        if self.thing_log is not None:
            self.thing_log.flush()
        assert self._group is not None
        for task in list(self._group._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._group.__aexit__(None, None, None)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        assert self._group is not None, "the rule engine is not running"
        return self._group.create_task(coro, name=name)

    # ------------------------------------------------------------------ loading

    async def load_directory(self, directory: Path) -> list[str]:
        """Load (or reload) every rule in `directory`; returns the problems, each naming file and line."""
        started = time.perf_counter()
        self.directory = directory
        self._files = files_state(directory)
        sources, problems = load_directory(directory)
        problems += await self.load(sources)
        timers = sum(1 for rt in self.runtimes.values() for t in rt.timers.values() if t.task is not None)
        log.info("rules: %d of %d armed in %.0f ms; %d timer(s) re-armed", sum(rt.armed for rt in self.runtimes.values()),
                 len(self.runtimes), (time.perf_counter() - started) * 1000, timers)
        return problems

    async def load(self, sources: Iterable[RuleSource], *, files: Iterable[Path] | None = None) -> list[str]:
        """Replace the running rules with these — all of them, or (`files`) only those written in these files.

        A replaced rule keeps what it promised: its new version starts from the old one's state (timers,
        thresholds that fired, a While rule in effect), as a restarted hub starts from the saved state.
        """
        if files is None:
            old, self.runtimes = self.runtimes, {}
        else:
            paths = {_resolved(path) for path in files}
            old = {name: rt for name, rt in self.runtimes.items() if _resolved(rt.source.path) in paths}
            for name in old:
                del self.runtimes[name]
        previous_state: dict[str, dict[str, Any]] = {}
        for rt in old.values():
            await self.disarm(rt, undo=False)
            self.registry.remove(rt.thing_id)
            previous_state[rt.name] = rt.state()
        problems = []
        loaded: list[RuleRuntime] = []
        for source in sources:
            rt = RuleRuntime(self, source)
            if rt.name in self.runtimes:
                problems.append(f"{source.where}: a rule named {rt.name} exists already "
                                f"({self.runtimes[rt.name].source.where}); rename one")
                continue
            rt.restore(previous_state.get(rt.name) or self._saved.get(rt.name, {}))
            self.runtimes[rt.name] = rt
            self.registry.add(rt.make_thing())  # every rule's thing first: rules may name each other (self.rules.X)
            loaded.append(rt)
        started: list[RuleRuntime] = []
        for rt in loaded:
            if (clash := name_clash(rt, self.registry)) is not None:
                log.warning("%s", clash)
            if rt.enabled:
                problem = self._start(rt)
                if problem:
                    problems.append(problem)
                if rt.armed:
                    started.append(rt)
        self._replay_all(started)
        for rt in started:
            if rt.armed:
                self._settle(rt)
        for name in old:
            if name not in self.runtimes:
                self._saved[name] = previous_state[name]  # a rule taken out, perhaps to come back
        return problems

    async def reload_if_changed(self) -> list[str] | None:
        """Reload the rule files that changed since the last load (None: nothing changed; `last_reloaded` names
        them). The rules of the other files keep running untouched; a changed helper (`_*.py`) reloads them all."""
        async with self._reload_lock:  # the watcher and `roost rules reload` may ask at once
            return await self._reload_changed()

    async def _reload_changed(self) -> list[str] | None:
        if self.directory is None:
            return None
        now = files_state(self.directory)
        if now == self._files:
            return None
        changed = sorted(name for name in set(now) | set(self._files) if now.get(name) != self._files.get(name))
        self.last_reloaded = changed
        if any(name.startswith("_") for name in changed):
            log.info("rules: %s changed in %s; reloading every rule", ", ".join(changed), self.directory)
            return await self.load_directory(self.directory)
        self._files = now
        sources: list[RuleSource] = []
        problems: list[str] = []
        for name in changed:
            path = self.directory / name
            if name in now:
                found, trouble = load_file(path)
                sources += found
                problems += trouble
        paths = [self.directory / name for name in changed]
        problems += await self.load(sources, files=paths)
        log.info("rules: reloaded %s (%s)", ", ".join(changed),
                 ", ".join(s.cls.__name__ for s in sources) or "no rules")
        return problems

    async def watch(self, interval_s: float = 2.0) -> None:
        """Reload on rule file changes and retry rules waiting for things; in real time."""
        while True:
            await asyncio.sleep(interval_s)
            problems = await self.reload_if_changed()
            for problem in problems or ():
                log.error("%s", problem)
            await self.retry_waiting()

    async def retry_waiting(self) -> None:
        """Arm the rules whose things have appeared; an error for each that has waited too long."""
        for name, waiting in list(self._waiting.items()):
            rt = self.runtimes.get(name)
            if rt is None or not rt.enabled:
                self._waiting.pop(name, None)
                continue
            await self.arm(rt, quiet=True)
            if rt.armed:
                log.info('rule %s: "%s" is here now; armed', name, waiting.thing)
            elif not waiting.reported and time.monotonic() - waiting.since >= self.wait_error_s:
                waiting.reported = True
                log.error(
                    "%s — still not there after %.0f s; the rule stays off until it appears (is its source running? "
                    "`roost check` compares the rules' names with the hub's things)",
                    waiting.problem, time.monotonic() - waiting.since,
                )

    # ------------------------------------------------------------------ arming

    async def arm(self, rt: RuleRuntime, *, quiet: bool = False) -> str | None:
        """Start a rule's triggers; returns the problem instead when it cannot start."""
        problem = self._start(rt, quiet=quiet)
        if rt.armed:
            self._replay_all([rt])
            self._settle(rt)
        return problem

    def _start(self, rt: RuleRuntime, *, quiet: bool = False) -> str | None:
        """Arm a rule up to judging its thresholds from the store (`_replay_all`) and its condition (`_settle`)."""
        if rt.armed:
            return None
        try:
            rt.bind()
        except RuleError as err:
            missing = getattr(err, "unknown_thing", None)
            if missing is None:
                self._waiting.pop(rt.name, None)
                return None if quiet else str(err)
            waiting = self._waiting.get(rt.name)
            if waiting is None:
                waiting = self._waiting[rt.name] = _Waiting(missing, str(err))
            elif waiting.thing != missing:  # one of its things came, another is still missing
                waiting.thing, waiting.reported = missing, False
            else:
                missing = None  # said already
            waiting.problem = str(err)
            if missing is not None and self.wait_for_things:
                log.info('rule %s waits for "%s", not known yet (a device becomes a thing when its source first '
                         "reports it)", rt.name, missing)
            return None if quiet or self.wait_for_things else str(err)
        self._waiting.pop(rt.name, None)
        if self.registry.__contains__(rt.thing_id):
            self.registry.get(rt.thing_id).description = rt.sentence
        rt._queue = asyncio.Queue()
        rt._writer_task = self.spawn(rt._writer(), f"rule-{rt.name}-writer")
        rt.armed = True
        keys = {rt.trigger_key(t) for t in rt.triggers}
        for stale in [k for k in (*rt.promises, *rt.fired) if k not in keys]:  # the rule's triggers were changed
            rt.promises.pop(stale, None)
            rt.fired.pop(stale, None)
            rt.persist()
        for trigger in rt.triggers:
            if isinstance(trigger, ThingTrigger):
                self._by_thing.setdefault(trigger.thing._thing.id, []).append((rt, trigger))
            elif isinstance(trigger, Threshold):
                trigger.reset()
                trigger.fired = rt.fired.setdefault(rt.trigger_key(trigger), {})
                self._thresholds.append((rt, trigger))
                self._threshold_cache.clear()
            elif isinstance(trigger, TimeTrigger):
                rt.spawn(trigger.run(rt))
        for name in list(rt.timers):
            rt._arm_timer(name)
        try:
            result = rt.rule.initial_state()  # type: ignore[union-attr]
            if inspect.isawaitable(result):
                rt.spawn(result)
        except Exception as err:
            rt._failed("initial_state", err)
        return None

    def _settle(self, rt: RuleRuntime) -> None:
        """After the replay: an If rule learns its condition, a While rule comes into effect or is undone."""
        if rt.mode != "while" and rt.active:  # saved by a former While version of the rule
            rt.active, rt.undo = False, {}
            rt.persist()
        if rt.mode in ("while", "if") and rt.armed:
            try:
                holds = rt._condition()
            except Exception:
                holds = None  # a condition that needs a trigger's event first
            if rt.mode == "if":
                rt.last_condition = bool(holds)
            elif holds and not rt.active:
                rt.fire(rt.triggers[0] if rt.triggers else Trigger(), None, None, None, durable=True)
            elif holds is False and rt.active:
                rt.fire(rt.triggers[0], None, None, None, durable=True)

    def _replay_all(self, runtimes: Iterable[RuleRuntime]) -> None:
        """Judge the thresholds of these rules from the stored readings; the thresholds on one metric share one
        read of its series (at start, 500 rules on one metric are one read, not 500 scans of every series)."""
        if self.history is None:
            return
        by_metric: dict[str | None, list[tuple[RuleRuntime, Threshold]]] = {}
        for rt in runtimes:
            for trigger in rt.triggers:
                if isinstance(trigger, Threshold) and rt.armed:
                    by_metric.setdefault(trigger.metric, []).append((rt, trigger))
        now = int(self.clock.now().timestamp() * 1000)
        for metric, group in by_metric.items():
            if metric is None or len(group) == 1:
                for rt, trigger in group:
                    self._replay(rt, trigger, now)
                continue
            lo = min(min([now - t.for_ms - _THRESHOLD_LOOKBACK_MS, *t.fired.values()]) for _, t in group)
            try:
                found = [(d.series, d.ts, d.values) for d in self.history(Selector.parse(metric), lo, now + 1)]
            except Exception as err:
                log.warning("rules: cannot read the history of %s: %s", metric, err)
                continue
            matching: dict[int, list[tuple[Series, Any, Any]]] = {id(t): [] for _, t in group}
            for data, triggers in _dispatch(found, [t for _, t in group]):
                for trigger in triggers:
                    matching[id(trigger)].append(data)
            for rt, trigger in group:
                self._replay(rt, trigger, now, matching[id(trigger)])

    def _replay(self, rt: RuleRuntime, trigger: Threshold, now: int, shared: list | None = None) -> None:
        """Judge a threshold from the stored readings: a hold that began before a restart counts from when it
        began, a series that fired and was not broken since does not fire again. `shared`: the readings of
        the threshold's metric, read far enough back already."""
        span = trigger.for_ms + _THRESHOLD_LOOKBACK_MS
        try:
            while True:
                lo = min([now - span, *trigger.fired.values()])
                if shared is None:
                    found = [(d.series, d.ts, d.values) for d in self.history(trigger.selector, lo, now + 1)]
                else:  # the series this threshold matches, read from at most `lo`
                    found = [(series, ts[ts >= lo], values[ts >= lo]) for series, ts, values in shared]
                # Only the readings from each series' last break on tell its state now (holds that ended in the
                # past are history, not something to act on). A series with no break here, whose first reading is
                # too recent for its hold to be over, may have begun its hold further back (readings missing for
                # a while, a long outage): look further back.
                runs = []
                deeper = False
                for series, ts, values in found:
                    breaks = np.flatnonzero(~np.asarray(trigger.complies(values), dtype=bool)) if len(ts) else ()
                    if len(ts) and not len(breaks) and int(ts[0]) + trigger.for_ms > now and str(series) not in trigger.fired:
                        deeper = True
                    first = int(breaks[-1]) if len(breaks) else 0
                    runs.append((series, ts[first:], values[first:]))
                if not deeper or span >= _THRESHOLD_LOOKBACK_MAX_MS:
                    break
                span = min(span * 4, _THRESHOLD_LOOKBACK_MAX_MS)
                shared = None
            for series, ts, values in runs:
                for t, value in zip(ts.tolist(), values.tolist()):
                    trigger.observe(Reading(series, int(t), float(value)), rt)
        except Exception as err:
            log.warning("rule %s: cannot read the history of %s: %s", rt.name, trigger.selector.text, err)

    async def disarm(self, rt: RuleRuntime, *, undo: bool) -> None:
        """Stop a rule: its triggers, its running action; a While rule in effect is undone when `undo`."""
        if not rt.armed:
            return
        rt.armed = False
        if rt._due:  # actions whose state is being written start first: their promise is kept on disk already
            await asyncio.wait(set(rt._due), timeout=_DUE_WAIT_S)
        rt._stop_action()
        for thing_id in list(self._by_thing):
            self._by_thing[thing_id] = [(r, t) for r, t in self._by_thing[thing_id] if r is not rt]
            if not self._by_thing[thing_id]:
                del self._by_thing[thing_id]
        if any(r is rt for r, _ in self._thresholds):
            self._thresholds = [(r, t) for r, t in self._thresholds if r is not rt]
            self._threshold_cache.clear()
        for trigger in rt.triggers:
            if isinstance(trigger, Threshold):
                trigger.reset()
        current = asyncio.current_task()
        for task in list(rt._tasks):
            if task is not current:
                task.cancel()
        if undo:  # disabled: what it promised is off too (enabled again, it starts afresh)
            for timer in rt.timers.values():
                if timer.task is not None:
                    timer.task.cancel()
            rt.timers.clear()
            rt.promises.clear()
            rt.fired.clear()
            rt.persist()
        for timer in rt.timers.values():
            timer.task = None
        if undo and rt.mode == "while" and rt.active:
            rt.active = False
            rt._restore()
        writer = rt._writer_task
        if writer is not None and writer is not current and rt._queue is not None and rt._queue._unfinished_tasks:
            # let queued writes (and the undo) reach the devices before the writer goes
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(rt._queue.join(), 10)
        if writer is not None and writer is not current:
            writer.cancel()
        rt._writer_task = None
        rt._queue = None
        rt._pending.clear()

    async def set_enabled(self, name: str, enabled: bool) -> None:
        rt = self.runtimes.get(name)
        if rt is None:
            raise RuleError(f"no rule named {name!r}{did_you_mean(name, sorted(self.runtimes))}")
        if enabled == rt.enabled and enabled == rt.armed:
            return
        rt.enabled = enabled
        if enabled:
            rt.failures = 0
            problem = await self.arm(rt)
            if problem:
                log.error("%s", problem)
        else:
            await self.disarm(rt, undo=True)
        self.report_enabled(rt)
        log.info("rule %s %s", name, "enabled" if enabled else "disabled")

    def report_enabled(self, rt: RuleRuntime) -> None:
        if rt.thing_id in self.registry:
            self.registry.report(rt.thing_id, "enabled", rt.enabled, origin="rules")
        self.persist(rt)

    def _notify_failed(self, rule: str, target: str, message: str, error: str) -> None:
        thing_id = f"rule-{rule}"
        if thing_id in self.registry:
            self.registry.emit_event(thing_id, "notifyFailed", {"target": target, "message": message, "error": error})

    def trace(self, rt: RuleRuntime, cause: Trigger | str | None, what: str) -> None:
        """Tell the tracer (a preview) that a rule acts ("act") or undoes ("undo") because of `cause`."""
        if self.tracer is not None:
            self.tracer(rt, cause, what)

    def note_run(self, rt: RuleRuntime, *, saved: bool = False) -> None:
        """The rule acted: its thing's `last_run`, saved with its next change (`saved`: written already)."""
        if rt.thing_id in self.registry:
            self.registry.report(rt.thing_id, "last_run", _iso(rt.last_run), origin="rules")
        if self.state is not None and not saved:
            self._dirty.add(rt.name)  # saved with the next change, or within _SAVE_EVERY_S

    # ------------------------------------------------------------------ events

    async def _follow_changes(self, sub) -> None:
        try:
            while True:
                change = await sub.get()
                if self.thing_log is not None and not change.thing_id.startswith("rule-"):
                    self.thing_log.record(change, self.registry, int(self.clock.now().timestamp() * 1000))
                listeners = self._by_thing.get(change.thing_id)
                if not listeners:
                    continue
                acted: set[int] = set()
                for rt, trigger in listeners:
                    if trigger.property is not None and trigger.property != change.name:
                        continue
                    if id(rt) in acted or (change.origin == rt.origin and not rt.cls.retrigger_on_own_writes):
                        continue
                    acted.add(id(rt))
                    rt.fire(trigger, trigger.thing, change.name, change.new)
        finally:
            self.registry.changes.unsubscribe(sub)

    async def _follow_readings(self, sub) -> None:
        try:
            while True:
                reading = await sub.get()
                if not self._thresholds:
                    continue
                watchers = self._threshold_cache.get(reading.series)
                if watchers is None:
                    watchers = self._threshold_cache[reading.series] = [
                        (rt, t) for rt, t in self._thresholds
                        if (t.metric is None or t.metric == reading.series.metric) and t.selector.matches(reading.series)
                    ]
                for rt, trigger in watchers:
                    trigger.observe(reading, rt)
        finally:
            assert self.readings is not None
            self.readings.unsubscribe(sub)

    # ------------------------------------------------------------------ state that survives restarts

    def persist(self, rt: RuleRuntime) -> None:
        """Save the rule's state before the event loop does anything else (changes in one step: one write)."""
        if self.state is None:
            return
        self._dirty.add(rt.name)
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write the state of every rule that changed (one small file each)."""
        self._flush_soon = False
        if self.state is None:
            return
        dirty, self._dirty = self._dirty, set()
        for name in sorted(dirty):
            rt = self.runtimes.get(name)
            if rt is None:
                continue
            state = rt.state()
            self._saved[name] = state
            self.state.save_soon(name, state)  # written by a worker thread: the loop never waits for the disk

    async def save_now(self, rt: RuleRuntime) -> None:
        """Write the rule's state now and return once it is on disk; the write is the state store's worker
        thread's, after the states queued before it, so the event loop does not wait for the disk."""
        if self.state is None:
            return
        state = rt.state()
        self._saved[rt.name] = state
        done = asyncio.wrap_future(self.state.save_now(rt.name, state))
        self.saving.add(done)
        done.add_done_callback(self.saving.discard)
        await asyncio.shield(done)  # a cancelled wait leaves the write to finish

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(_SAVE_EVERY_S)
            self.flush()  # last_run of rules that only ran (nothing they promised changed)
            if self.thing_log is not None:
                await asyncio.to_thread(self.thing_log.flush)


async def _guarded(rt: RuleRuntime, awaitable: Any, what: str) -> None:
    try:
        await awaitable
    except asyncio.CancelledError:
        raise
    except Exception as err:
        rt._failed(what, err)


def _dispatch(found: list[tuple[Series, Any, Any]], triggers: list[Threshold]):
    """Each series' data with the thresholds matching it. Thresholds are indexed by one label they require
    (`room="lounge"`), so each series is matched against the few that may want it, not against all."""
    anchored: dict[str, dict[str, list[Threshold]]] = {}
    loose: list[Threshold] = []
    for trigger in triggers:
        anchor = next((m for m in trigger.selector.matchers if m.name != "__name__" and m.op == "="), None)
        if anchor is None:
            loose.append(trigger)
        else:
            anchored.setdefault(anchor.name, {}).setdefault(anchor.value, []).append(trigger)
    for data in found:
        labels = data[0].label_dict
        candidates = list(loose)
        for name, by_value in anchored.items():
            candidates += by_value.get(labels.get(name, ""), ())
        yield data, [t for t in candidates if t.selector.matches(data[0])]


def _resolved(path: Path | None) -> Path | None:
    return Path(path).resolve() if path is not None else None


def _parse_iso(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except (TypeError, ValueError):
        return None


def name_clash(rt: RuleRuntime, registry: ThingRegistry) -> str | None:
    """A warning when a device has the rule's name as its attribute name (rule `Coffee`, thing "Coffee")."""
    thing = registry.by_attribute().get(rt.name)
    if thing is None or thing.id == rt.thing_id or "Rule" in thing.types:
        return None
    return (f'{rt.source.where}: warning: rule {rt.name} has the name of the thing "{thing.title}": in rules '
            f"self.{rt.name} is that thing, the rule's own thing is self.rules.{rt.name} (rename the rule to tell "
            "them apart at a glance)")


def check_rules(sources: Iterable[RuleSource], registry: ThingRegistry | None, place: Place | None = None):
    """Bind every rule without running it: (runtimes, problems). Without a registry thing names are not checked
    (they are collected in each runtime's `unresolved`). The rules' own things are added to the registry."""
    engine = RuleEngine(registry or ThingRegistry(), place=place, strict=registry is not None)
    runtimes, problems = [], []
    checked = [RuleRuntime(engine, source) for source in sources]
    for rt in checked:
        if registry is not None and rt.thing_id not in registry:
            registry.add(rt.make_thing())
    for rt in checked:
        try:
            rt.bind()
        except RuleError as err:
            problems.append(str(err))
        runtimes.append(rt)
    return runtimes, problems
