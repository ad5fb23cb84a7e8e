"""Every rule as one English sentence: generated for declared rules, else the first line of its docstring."""

from __future__ import annotations

from typing import Any

from roost.rules.proxy import ThingProxy
from roost.rules.rule import If, Set
from roost.rules.triggers import Threshold, TimeTrigger


def _and(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def _condition(thing: ThingProxy, values: dict[str, Any]) -> str:
    parts = []
    for name, value in values.items():
        if name == "on" and isinstance(value, bool):
            parts.append("is on" if value else "is off")
        else:
            parts.append(f"{name} is {_value(value)}")
    return f"{thing} " + _and(parts)


def _effects(effects: tuple[Set, ...]) -> str:
    clauses: list[tuple[str, list[str]]] = []  # (verb, objects); consecutive equal verbs share a clause
    for effect in effects:
        for name, value in effect.values.items():
            if name == "on" and isinstance(value, bool):
                verb, obj = ("turn on" if value else "turn off"), str(effect.thing)
            else:
                verb, obj = f"set {name} of", f"{effect.thing} to {_value(value)}"
            if clauses and clauses[-1][0] == verb and not verb.startswith("set"):
                clauses[-1][1].append(obj)
            else:
                clauses.append((verb, [obj]))
    return _and([f"{verb} {_and(objs)}" for verb, objs in clauses])


def declared_sentence(declared: If) -> str:
    """`While(self.A, on=True).then(Set(self.B, on=True))` → "While A is on, turn on B"."""
    subject = declared.subject
    if isinstance(subject, ThingProxy):
        head = f"{declared.word} {_condition(subject, declared.values)}"
    elif isinstance(subject, TimeTrigger) and declared.word == "If":
        text = subject.describe()
        head = text[0].upper() + text[1:]
    elif isinstance(subject, Threshold):
        head = f"{declared.word} {subject.describe()}"
    else:
        head = f"{declared.word} {subject.describe()}"
    return f"{head}, {_effects(declared.effects)}"


def rule_sentence(cls: type, declared: If | None) -> str:
    """What `roost rules list` and the rule's thing description say about a rule."""
    if declared is not None:
        return declared_sentence(declared)
    doc = cls.__dict__.get("__doc__")
    if doc and doc.strip():
        return doc.strip().splitlines()[0].strip()
    return f"{cls.__name__} (no description: give the class a docstring)"
