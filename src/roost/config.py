"""The hub's settings: a TOML file checked against typed, frozen dataclasses.

Every problem in the file is collected and raised at once as one `ConfigError`, each
line naming the file, the line, the key path and what was expected::

    roost.toml:12: store.compact_interval: expected a duration like "15s" or "500ms", got "fast"

The schema is the dataclasses below. A private validator walks them, so adding a
section means writing a frozen dataclass and adding a field for it to `Settings`.
Field types it understands: str, int, float, bool, Path (relative paths in the file
are relative to the file's directory), Duration (write the field as `<key>_ms`; the
file spells it `<key> = "15s"`), Secret, Literal[...], list[X], dict[str, X], X | None
and nested dataclasses (tables, or lists of them for `[[array.tables]]`). Field
metadata `{"min": n}` / `{"max": n}` bounds numbers and durations (durations in ms),
`{"check": f}` runs `f(value)`, which raises ValueError("expected ...") to reject it,
and `{"toml": False}` keeps a field out of the file. A dataclass may define
`_validate(self) -> list[str]` for checks across fields; a message starting with
`key: ` is reported at that key, otherwise at the table.

Secrets are never logged: a `Secret` prints as `Secret('***')`, and error messages
about a secret field never echo its value.
"""

import difflib
import ipaddress
import json
import os
import re
import tomllib
import types
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import promql_parser

from roost.durability.settings import BackupSettings, ReplicationSettings
from roost.durations import Duration, format_duration_ms, parse_duration_ms
from roost.export.settings import ExportSettings
from roost.rules.settings import RulesSettings
from roost.secret import Secret
from roost.selector import has_offset_or_at, parse_expr
from roost.sources import SourceSettings
from roost.things.client import ThingsSettings
from roost.errors import ConfigError

__all__ = ["Duration", "HubSettings", "RetentionRule", "Secret", "Settings", "StoreSettings", "load_config"]

# ---------------------------------------------------------------- the schema


def _split_listen(listen: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); ValueError says what was expected."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})", listen)
    if m and m[1]:
        try:
            ipaddress.IPv6Address(m[1])
        except ValueError:
            m = None
    if not m or int(m[2] or m[4]) > 65535:
        raise ValueError(f'expected host:port like "127.0.0.1:8080" (port 0-65535), got {_show(listen)}')
    return (m[1] or m[3]), int(m[2] or m[4])


@dataclass(frozen=True, slots=True)
class HubSettings:
    """`[hub]`: where data lives, where the HTTP API listens, how much to log."""

    data: Path = Path("roost-data")
    listen: str = field(default="127.0.0.1:8080", metadata={"check": _split_listen})
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    site: str = ""
    tls_cert_file: Path | None = None  # PEM certificate (chain): serve https:// (docs/security.md)
    tls_key_file: Path | None = None  # its PEM private key
    query_cache_mb: int = field(default=16, metadata={"min": 0})  # range-query answers kept for repeats; 0: none

    def _validate(self) -> list[str]:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            return ["give both tls_cert_file and tls_key_file, or neither"]
        return []

    @property
    def listen_host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return _split_listen(self.listen)[1]


def _check_selector(text: str) -> None:
    example = 'a series selector like power_watts{meter="m1"}'
    try:
        expr = parse_expr(text)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"expected {example}, got {_show(text)} ({e})") from None
    if not isinstance(expr, promql_parser.VectorSelector) or has_offset_or_at(expr):
        raise ValueError(f"expected {example}, got {_show(text)} (no functions, operators, ranges, offsets or @)")


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """`[[store.retention]]`: series matching `match` are deleted after `keep`, downsampled after `raw`."""

    match: str = field(metadata={"check": _check_selector})
    keep_ms: Duration | None = None
    raw_ms: Duration | None = None

    def _validate(self) -> list[str]:
        if self.keep_ms is not None and self.raw_ms is not None and self.raw_ms > self.keep_ms:
            longer = f"{format_duration_ms(self.raw_ms)} > {format_duration_ms(self.keep_ms)}"
            return [f"raw: must not be longer than keep ({longer})"]
        return []


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """`[store]`: limits and durability of the time-series store, and retention rules (first match wins)."""

    max_series: int = field(default=10_000, metadata={"min": 1})
    compact_interval_ms: Duration = field(default=Duration(15 * 60_000), metadata={"min": 1000})
    fsync: bool = True
    max_buffered: int = field(default=100_000, metadata={"min": 0})
    cache_mb: int = field(default=128, metadata={"min": 1})  # decoded day chunks kept for queries (+ 1/4: summaries)
    retention: list[RetentionRule] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the hub is configured with; `source_file` is the TOML file it came from, if any."""

    hub: HubSettings = field(default_factory=HubSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    source: SourceSettings = field(default_factory=SourceSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    replication: ReplicationSettings = field(default_factory=ReplicationSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    rules: RulesSettings = field(default_factory=RulesSettings)
    things: ThingsSettings = field(default_factory=ThingsSettings)
    source_file: Path | None = field(default=None, metadata={"toml": False})


def load_config(path: Path | None, *, data_dir: str | None = None) -> Settings:
    """Read and check the TOML file (None: all defaults); `data_dir` (CLI --data) overrides hub.data.

    Raises ConfigError listing every problem found.
    """
    settings = Settings()
    if path is not None:
        path = Path(path)
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            column = e.start - raw.rfind(b"\n", 0, e.start)
            raise ConfigError(
                f"{path}:{line}: the config file is not UTF-8 text (column {column}, byte {raw[e.start]:#04x}); "
                "save it as UTF-8"
            ) from None
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(_syntax_problem(path, e)) from None
        checker = _Checker(path.absolute().parent)
        built = checker.build(Settings, doc, ())
        if checker.problems:
            raise ConfigError(checker.report(str(path), text))
        settings = replace(built, source_file=path)
    if data_dir is not None:
        if not data_dir.strip():
            raise ConfigError("--data: expected a directory path, got an empty string")
        settings = replace(settings, hub=replace(settings.hub, data=Path(data_dir).expanduser()))
    return settings


# ---------------------------------------------------------------- the validator

_BAD = object()  # a value that failed; its problem is already recorded
_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _show(value: Any, secret: bool = False) -> str:
    """A TOML value as the user wrote it, for "got ..." (secrets only by kind)."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if secret:
        return {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}.get(type(value), "a value")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _unoptional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"config schema: only `X | None` unions are supported, not {tp}")
        return args[0]
    return tp


@cache
def _schema(cls: type) -> list[tuple[str, str, Any, Any]]:
    """(field name, TOML key, type, field) for each field of a dataclass read from the file."""
    hints = get_type_hints(cls)
    out = []
    for f in fields(cls):
        if not f.init or f.metadata.get("toml", True) is False:
            continue
        tp = hints[f.name]
        key = f.name.removesuffix("_ms") if _unoptional(tp) is Duration else f.name
        out.append((f.name, key, tp, f))
    return out


class _Checker:
    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self.problems: list[tuple[tuple, str]] = []

    def problem(self, path: tuple, message: str) -> object:
        self.problems.append((path, message))
        return _BAD

    def build(self, cls: type, table: Any, path: tuple) -> Any:
        if not isinstance(table, dict):
            return self.problem(path, f"expected a table, got {_show(table)}")
        values, known = {}, []
        for name, key, tp, f in _schema(cls):
            if _unoptional(tp) is Secret:
                known += [key, f"{key}_file", f"{key}_env"]
                value = self.secret(table, key, path)
            else:
                known.append(key)
                value = self.convert(tp, table[key], path + (key,), f.metadata) if key in table else MISSING
            if value is MISSING and f.default is MISSING and f.default_factory is MISSING:
                also = f" (or {key}_file / {key}_env)" if _unoptional(tp) is Secret else ""
                value = self.problem(path + (key,), f"missing required key{also}")
            if value is not MISSING:
                values[name] = value
        for key in [k for k in table if k not in known]:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f'did you mean "{close[0]}"?' if close else f"known keys: {', '.join(known)}"
            self.problem(path + (key,), f"unknown key ({hint})")
        if any(v is _BAD for v in values.values()):
            return _BAD
        obj = cls(**values)
        for message in getattr(obj, "_validate", lambda: [])():
            key, sep, rest = message.partition(": ")
            if sep and key in known:
                self.problem(path + (key,), rest)
            else:
                self.problem(path, message)
        return obj

    def convert(self, tp: Any, value: Any, path: tuple, meta: Any = None) -> Any:
        tp = _unoptional(tp)
        origin = get_origin(tp)
        if is_dataclass(tp):
            return self.build(tp, value, path)
        if origin is Literal:
            if value in get_args(tp) and type(value) is type(get_args(tp)[0]):
                return value
            choices = ", ".join(_show(a) for a in get_args(tp))
            return self.problem(path, f"expected one of {choices}, got {_show(value)}")
        if origin is list:
            if not isinstance(value, list):
                return self.problem(path, f"expected an array, got {_show(value)}")
            items = [self.convert(get_args(tp)[0], v, path + (i,)) for i, v in enumerate(value)]
            return _BAD if any(v is _BAD for v in items) else items
        if origin is dict:
            if not isinstance(value, dict):
                return self.problem(path, f"expected a table, got {_show(value)}")
            items = {k: self.convert(get_args(tp)[1], v, path + (k,)) for k, v in value.items()}
            return _BAD if any(v is _BAD for v in items.values()) else items
        if tp is Duration:
            try:
                converted = parse_duration_ms(value) if isinstance(value, str) else None
            except ValueError:
                converted = None
            if converted is None:
                hint = " (write it as a quoted string with a unit)" if isinstance(value, (int, float)) else ""
                return self.problem(path, f'expected a duration like "15s" or "500ms", got {_show(value)}{hint}')
            return self.checked(Duration(converted), value, path, meta, format_duration_ms)
        if tp is Path:
            if not isinstance(value, str) or not value:
                return self.problem(path, f"expected a path, got {_show(value)}")
            return self.base_dir / Path(value).expanduser()
        if tp in _KINDS:
            # bool is an int subclass in Python but not in TOML; an integer is a fine float
            accepted = (int, float) if tp is float else tp
            if isinstance(value, accepted) and (tp is bool) == isinstance(value, bool):
                if tp is int and not -(2**63) <= value < 2**63:  # TOML integers are 64-bit; Python's parser is lenient
                    return self.problem(path, f"expected a 64-bit integer, got {_show(value)}")
                return self.checked(tp(value), value, path, meta, lambda limit: limit)
            return self.problem(path, f"expected {_KINDS[tp]}, got {_show(value)}")
        raise TypeError(f"config schema: unsupported field type {tp} at {_path_text(path)}")

    def checked(self, converted: Any, raw: Any, path: tuple, meta: Any, fmt: Any) -> Any:
        """Apply the field's metadata: `min`/`max` bounds and a `check` that raises ValueError."""
        meta = meta or {}
        if meta.get("min") is not None and converted < meta["min"]:
            return self.problem(path, f"expected at least {_show(fmt(meta['min']))}, got {_show(raw)}")
        if meta.get("max") is not None and converted > meta["max"]:
            return self.problem(path, f"expected at most {_show(fmt(meta['max']))}, got {_show(raw)}")
        try:
            meta.get("check", lambda _: None)(converted)
        except ValueError as e:
            return self.problem(path, str(e))
        return converted

    def secret(self, table: dict, key: str, path: tuple) -> Any:
        given = [k for k in (key, f"{key}_file", f"{key}_env") if k in table]
        if not given:
            return MISSING
        if len(given) > 1:
            return self.problem(path + (given[1],), f"give only one of {key}, {key}_file or {key}_env")
        source, value = given[0], table[given[0]]
        where = path + (source,)
        if not isinstance(value, str):
            return self.problem(where, f"expected a string, got {_show(value, secret=source == key)}")
        if source == key:
            return Secret(value)
        if source.endswith("_file"):
            file = self.base_dir / Path(value).expanduser()
            try:
                return Secret(file.read_text(encoding="utf-8").rstrip("\r\n"))
            except OSError as e:
                return self.problem(where, f"cannot read the secret file {file} ({e.strerror or e})")
            except UnicodeDecodeError:
                return self.problem(where, f"the secret file {file} is not UTF-8 text")
        if value not in os.environ:
            return self.problem(where, f"the environment variable {value} is not set")
        return Secret(os.environ[value])

    def report(self, name: str, text: str) -> list[str]:
        lines = _key_lines(text)

        def line_of(path: tuple) -> int | None:
            while path and path not in lines:
                path = path[:-1]
            return lines.get(path) if path else None

        located = [(line_of(p), p, m) for p, m in self.problems]
        located.sort(key=lambda t: t[0] if t[0] is not None else float("inf"))
        return [
            f"{name}{f':{line}' if line else ''}: " + (f"{_path_text(p)}: {m}" if p else m)
            for line, p, m in located
        ]


def _path_text(path: tuple) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part, ensure_ascii=False)
            out += f".{part}" if out else part
    return out


def _syntax_problem(path: Path, e: tomllib.TOMLDecodeError) -> str:
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", str(e))
    if not m:
        return f"{path}: invalid TOML: {e}"
    return f"{path}:{m[1]}: invalid TOML at column {m[2]}: {str(e)[: m.start()]}"


# ---------------------------------------------------------------- key path → line

_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_PART}(?:\s*\.\s*{_PART})*"
_HEADER = re.compile(rf"\s*(\[\[?)\s*({_DOTTED})\s*\]")
_ASSIGN = re.compile(rf"\s*({_DOTTED})\s*=")


def _parts(dotted: str) -> list[str]:
    return [p[1:-1] if p[0] in "\"'" else p for p in re.findall(_PART, dotted)]


def _key_lines(text: str) -> dict[tuple, int]:
    """Map key paths (list-of-table elements by index) to the first line that mentions them.

    A line scanner, not a parser: tomllib has already accepted the text, and a key it
    cannot place (inside an inline table, say) falls back to its enclosing table's line.
    """
    lines: dict[tuple, int] = {}
    counts: dict[tuple, int] = {}  # array-of-tables path → elements seen so far
    table: tuple = ()
    in_string = False
    for number, line in enumerate(text.splitlines(), start=1):
        starts_in_string = in_string
        if (line.count('"""') + line.count("'''")) % 2:
            in_string = not in_string
        if starts_in_string:
            continue
        if m := _HEADER.match(line):
            parts, resolved = _parts(m[2]), ()
            for part in parts[:-1] if m[1] == "[[" else parts:
                resolved += (part,)
                if resolved in counts:
                    resolved += (counts[resolved] - 1,)
            if m[1] == "[[":
                resolved += (parts[-1],)
                lines.setdefault(resolved, number)
                counts[resolved] = counts.get(resolved, 0) + 1
                resolved += (counts[resolved] - 1,)
            table = resolved
            for i in range(1, len(table) + 1):
                lines.setdefault(table[:i], number)
        elif m := _ASSIGN.match(line):
            key = table
            for part in _parts(m[1]):
                key += (part,)
                lines.setdefault(key, number)
    return lines
