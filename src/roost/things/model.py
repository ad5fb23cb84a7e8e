"""Things as the Web Thing API describes them: typed properties, actions, events, and what a change looks like."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from roost.errors import RoostError

JSON_TYPES = ("boolean", "integer", "number", "string", "object", "array", "null")


class ThingError(RoostError):
    """A request about a thing is wrong: unknown thing or property, read-only, wrong type, out of range."""

    def __init__(self, message: str, *, status: int = 400):
        self.status = status
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class PropertySpec:
    """One property of a thing (a Web Thing property description)."""

    name: str
    type: str = "number"  # a JSON type: boolean, integer, number, string, object
    title: str = ""
    unit: str | None = None
    read_only: bool = False
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[Any, ...] | None = None
    at_type: str | None = None  # capability schema type, e.g. OnOffProperty, BrightnessProperty

    def check(self, thing_id: str, value: Any) -> Any:
        """The value as this property holds it, or ThingError saying what is wrong with it."""
        where = f"thing {thing_id!r} property {self.name!r}"
        if self.type == "boolean":
            if not isinstance(value, bool):
                raise ThingError(f"{where}: expected true or false, got {value!r}")
        elif self.type in ("integer", "number"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ThingError(f"{where}: expected a {self.type}, got {value!r}")
            if self.type == "integer":
                if value != int(value):
                    raise ThingError(f"{where}: expected an integer, got {value!r}")
                value = int(value)
            if self.minimum is not None and value < self.minimum:
                raise ThingError(f"{where}: {value!r} is below the minimum {self.minimum:g}")
            if self.maximum is not None and value > self.maximum:
                raise ThingError(f"{where}: {value!r} is above the maximum {self.maximum:g}")
        elif self.type == "string":
            if not isinstance(value, str):
                raise ThingError(f"{where}: expected a string, got {value!r}")
        elif self.type == "object" and not isinstance(value, dict):
            raise ThingError(f"{where}: expected an object, got {value!r}")
        if self.enum is not None and value not in self.enum:
            raise ThingError(f"{where}: expected one of {list(self.enum)}, got {value!r}")
        return value

    def description(self, href: str) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "title": self.title or self.name, "readOnly": self.read_only}
        for key, value in (("unit", self.unit), ("minimum", self.minimum), ("maximum", self.maximum), ("@type", self.at_type)):
            if value is not None:
                d[key] = value
        if self.enum is not None:
            d["enum"] = list(self.enum)
        d["links"] = [{"rel": "property", "href": href}]
        return d


@dataclass(frozen=True, slots=True)
class ActionSpec:
    name: str
    title: str = ""
    input: dict[str, Any] | None = None  # a JSON schema of the input
    at_type: str | None = None

    def check_input(self, thing_id: str, value: Any) -> Any:
        """The input if it fits the schema's type, required keys and property types/ranges; else ThingError."""
        schema = self.input
        where = f"thing {thing_id!r} action {self.name!r}"
        if schema is None:
            return value
        if schema.get("type") != "object" or "properties" not in schema:
            return PropertySpec(self.name, schema.get("type", "number"), minimum=schema.get("minimum"),
                                maximum=schema.get("maximum"), enum=_tuple(schema.get("enum"))).check(thing_id, value)
        if not isinstance(value, dict):
            raise ThingError(f"{where}: expected an input object, got {value!r}")
        missing = [k for k in schema.get("required", ()) if k not in value]
        if missing:
            raise ThingError(f"{where}: input lacks {', '.join(missing)}")
        checked = dict(value)
        for key, sub in schema["properties"].items():
            if key in value:
                spec = PropertySpec(key, sub.get("type", "number"), minimum=sub.get("minimum"),
                                    maximum=sub.get("maximum"), enum=_tuple(sub.get("enum")))
                try:
                    checked[key] = spec.check(thing_id, value[key])
                except ThingError as err:
                    raise ThingError(f"{where}: input {str(err).split(': ', 1)[1]} (for {key!r})") from None
        return checked

    def description(self, href: str) -> dict[str, Any]:
        d: dict[str, Any] = {"title": self.title or self.name}
        if self.input is not None:
            d["input"] = self.input
        if self.at_type is not None:
            d["@type"] = self.at_type
        d["links"] = [{"rel": "action", "href": href}]
        return d


def _tuple(values: Any) -> tuple[Any, ...] | None:
    return tuple(values) if values is not None else None


@dataclass(frozen=True, slots=True)
class EventSpec:
    name: str
    title: str = ""
    type: str | None = None
    unit: str | None = None
    at_type: str | None = None

    def description(self, href: str) -> dict[str, Any]:
        d: dict[str, Any] = {"title": self.title or self.name}
        for key, value in (("type", self.type), ("unit", self.unit), ("@type", self.at_type)):
            if value is not None:
                d[key] = value
        d["links"] = [{"rel": "event", "href": href}]
        return d


# Writes a property to the device; raises ThingError (or SourceError) when the device refuses.
Actuator = Callable[[str, Any], Awaitable[None]]
# Carries out an action request (its name and checked input); returning means completed, raising means failed.
Performer = Callable[["ActionRequest"], Awaitable[None]]


@dataclass(eq=False)
class Thing:
    """A device roost knows. `values` holds the latest value of each property; `actuator` writes to the device."""

    id: str
    title: str
    types: tuple[str, ...] = ()
    description: str = ""
    properties: dict[str, PropertySpec] = field(default_factory=dict)
    actions: dict[str, ActionSpec] = field(default_factory=dict)
    events: dict[str, EventSpec] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    actuator: Actuator | None = None
    performer: Performer | None = None
    origin: str = "roost"  # which part of roost provides it: a source name, "demo", "webthing:<url>", "rules"

    def spec(self, name: str) -> PropertySpec:
        try:
            return self.properties[name]
        except KeyError:
            known = ", ".join(sorted(self.properties)) or "none"
            raise ThingError(f"thing {self.id!r} has no property {name!r} (it has: {known})", status=404) from None


@dataclass(frozen=True, slots=True)
class PropertyChange:
    """A property took a new value; `origin` says who caused it (`device`, `api`, `rule:<Name>`, ...)."""

    thing_id: str
    name: str
    old: Any
    new: Any
    ts_ms: int
    origin: str


@dataclass(eq=False)
class ActionRequest:
    """One requested action and where it is in its life: created → pending → completed (or cancelled, failed)."""

    id: str
    thing_id: str
    name: str
    input: Any
    origin: str
    time_requested: str
    status: str = "created"
    time_completed: str | None = None
    error: str | None = None

    @property
    def href(self) -> str:
        return f"/things/{self.thing_id}/actions/{self.name}/{self.id}"

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "cancelled", "failed")

    def description(self) -> dict[str, Any]:
        """The Web Thing action status object (without the outer `{name: ...}`)."""
        d: dict[str, Any] = {"href": self.href, "timeRequested": self.time_requested, "status": self.status}
        if self.input is not None:
            d["input"] = self.input
        if self.time_completed is not None:
            d["timeCompleted"] = self.time_completed
        if self.error is not None:
            d["error"] = self.error
        return d


@dataclass(frozen=True, slots=True)
class ThingEvent:
    """Something happened on a thing (a button press, an overheat); `data` as the event description says."""

    thing_id: str
    name: str
    data: Any
    timestamp: str

    def description(self) -> dict[str, Any]:
        d: dict[str, Any] = {"timestamp": self.timestamp}
        if self.data is not None:
            d["data"] = self.data
        return d


_NOT_IDENTIFIER = re.compile(r"[^0-9a-zA-Z_]")


def attribute_name(title: str) -> str:
    """A thing's title as a Python attribute: "Philips HUE 01" → Philips_HUE_01; a leading digit gets "_"."""
    name = _NOT_IDENTIFIER.sub("_", title)
    if not name or name[0].isdigit():
        name = "_" + name
    return name
