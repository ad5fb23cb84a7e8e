"""Rules are Python files in the rules directory; each class deriving from `Rule` in them is one rule.

Loading reports problems the way the rest of roost does, with the file and line to fix:

    rules/porch.py:14: syntax error: invalid syntax
    rules/porch.py:14: PorchLight.register_triggers: no thing named "Porch_Lite" (did you mean "Porch_Light"?)
"""

from __future__ import annotations

import ast
import itertools
import sys
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

from roost.rules.rule import Rule, WhileRule

_BASES = (Rule, WhileRule)
_generation = itertools.count(1)


@dataclass(frozen=True, slots=True)
class RuleSource:
    """A rule class and where it is written."""

    cls: type[Rule]
    path: Path | None
    line: int

    @property
    def where(self) -> str:
        return f"{display(self.path)}:{self.line}" if self.path else f"<{self.cls.__module__}>"


def display(path: Path | None) -> str:
    """A path as messages show it: relative to the working directory when under it."""
    if path is None:
        return "<rule>"
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def error_line(exc: BaseException, path: Path | None, default: int) -> int:
    """The line of `path` deepest in the exception's traceback (where the user's code went wrong)."""
    if path is None:
        return default
    target = str(Path(path).resolve())
    line = default
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename and str(Path(frame.filename).resolve()) == target and frame.lineno:
            line = frame.lineno
    return line


def load_file(path: Path) -> tuple[list[RuleSource], list[str]]:
    """Import one rule file; returns its rule classes and the problems found (syntax, import errors)."""
    where = display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return [], [f"{where}: cannot read the rule file ({getattr(err, 'strerror', None) or err})"]
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as err:
        return [], [f"{where}:{err.lineno or 1}: syntax error: {err.msg}"]
    module = types.ModuleType(f"roost_rules_{next(_generation)}_{path.stem}")
    module.__file__ = str(path)
    sys.modules[module.__name__] = module  # so inspect, dataclasses and tracebacks find the source
    try:
        exec(compile(tree, str(path), "exec"), module.__dict__)
    except Exception as err:
        sys.modules.pop(module.__name__, None)
        return [], [f"{where}:{error_line(err, path, 1)}: {type(err).__name__}: {err}"]
    lines = {node.name: node.lineno for node in tree.body if isinstance(node, ast.ClassDef)}
    if any(isinstance(v, type) and v.__module__ == module.__name__ and v.__name__ not in lines
           for v in module.__dict__.values()):  # a class defined inside a block
        lines = {node.name: node.lineno for node in ast.walk(tree) if isinstance(node, ast.ClassDef)} | lines
    found = [
        RuleSource(value, path, lines.get(value.__name__, 1))
        for value in module.__dict__.values()
        if isinstance(value, type) and issubclass(value, Rule) and value not in _BASES
        and value.__module__ == module.__name__
    ]
    if not found:
        return [], [f"{where}: no rule in this file (a rule is a class deriving from roost.rules.Rule)"]
    return sorted(found, key=lambda s: s.line), []


def load_directory(directory: Path) -> tuple[list[RuleSource], list[str]]:
    """Every rule in the `*.py` files of `directory` (files starting with "_" are helpers, not rules)."""
    if not directory.is_dir():
        return [], [f"{display(directory)}: the rules directory does not exist (rules.directory in the config)"]
    sources: list[RuleSource] = []
    problems: list[str] = []
    seen: dict[str, RuleSource] = {}
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        found, trouble = load_file(path)
        problems += trouble
        for source in found:
            name = source.cls.__name__
            if name in seen:
                problems.append(f"{source.where}: a rule named {name} exists already ({seen[name].where}); rename one")
                continue
            seen[name] = source
            sources.append(source)
    return sources, problems


def files_state(directory: Path) -> dict[str, tuple[int, int]]:
    """What changed-detection compares: each rule file's size and modification time, by name."""
    try:
        return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.glob("*.py")}
    except OSError:
        return {}
