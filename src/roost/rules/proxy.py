"""Things as a rule sees them: `self.Porch_Light.on` reads the current value, assigning to it asks the device."""

from __future__ import annotations

import difflib
from typing import Any, Protocol

from roost.rules.errors import UnknownProperty
from roost.things import Thing


class Writer(Protocol):
    def read(self, thing: Thing, name: str) -> Any: ...

    def write(self, thing: Thing, name: str, value: Any) -> None: ...


def did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


class ThingProxy:
    """A thing's properties as attributes. Names starting with "_" belong to the proxy, not the thing."""

    __slots__ = ("_thing", "_writer")

    def __init__(self, thing: Thing, writer: Writer):
        object.__setattr__(self, "_thing", thing)
        object.__setattr__(self, "_writer", writer)

    def _check(self, name: str) -> None:
        if name not in self._thing.properties:
            known = sorted(self._thing.properties)
            raise UnknownProperty(
                f'"{self._thing.title}" has no property "{name}"{did_you_mean(name, known)} '
                f"(it has: {', '.join(known) or 'none'})"
            )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        self._check(name)
        return self._writer.read(self._thing, name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._check(name)
        self._writer.write(self._thing, name, value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ThingProxy) and other._thing.id == self._thing.id

    def __hash__(self) -> int:
        return hash(self._thing.id)

    def __str__(self) -> str:
        return self._thing.title

    def __repr__(self) -> str:
        values = ", ".join(f"{k}={v!r}" for k, v in self._thing.values.items())
        return f"<{self._thing.title}: {values}>"
