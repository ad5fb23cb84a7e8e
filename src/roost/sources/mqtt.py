"""MQTT brokers: `[[source.mqtt]]` subscribes and turns messages into readings through three kinds of mapping.

- `[source.mqtt.zigbee2mqtt]`: zigbee2mqtt's device state objects (one series per numeric field, named with its
  unit), device and bridge availability as `up`;
- `[[source.mqtt.topics]]`: one plain value per topic, labels taken from topic levels (`home/{room}/{metric}`);
- `[[source.mqtt.json]]`: JSON payloads (Tasmota, ESPHome) with chosen fields by path (`ENERGY.Power`).

Parsing is `MqttParser.parse(topic, payload, ts_ms)`, a pure function of the message; `MqttSource` is the network
part. It keeps a persistent session (clean_session false, a stable client id) so QoS 1 messages published while
roost reconnects are delivered afterwards, and reconnects and resubscribes by itself after a broker restart,
starting half a second after the loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import aiomqtt

from roost.durations import parse_time_ms
from roost.errors import InvalidReading, SourceError
from roost.model import LABEL_NAME, METRIC_NAME, Reading, Series
from roost.secret import Secret
from roost.sources.base import Source, SourceContext

log = logging.getLogger("roost.sources.mqtt")
# The MQTT client library logs a lost connection at ERROR ("failed to receive on socket") just before the source
# logs it once, with the broker's URL and what happens next; its own lines show with log_level = "debug".
_client_log = logging.getLogger("roost.sources.mqtt.client")
_client_log.addFilter(lambda record: record.levelno < logging.ERROR or _client_log.isEnabledFor(logging.DEBUG))

_FIRST_RETRY_S = 0.5
_MAX_RETRY_S = 30.0
_KEEPALIVE_S = 30
_MAX_BATCH = 2000  # readings handed to the hub at once while a backlog drains
_MAX_CACHED = 50_000  # topics and series remembered; a topic flood only costs a cache clear

# ---------------------------------------------------------------- settings


def _check_url(url: str) -> None:
    split_url(url)


def split_url(url: str) -> tuple[str, int, bool]:
    """`mqtt://host[:port]` or `mqtts://host[:port]` → (host, port, tls); ValueError says what was expected."""
    expected = 'expected a broker URL like "mqtt://127.0.0.1:1883" or "mqtts://broker.lan:8883"'
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"{expected}, got {url!r}") from None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"{expected}, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{expected}, got a URL with credentials (give them as username and password_file)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{expected} (no path or query), got {url!r}")
    tls = parts.scheme == "mqtts"
    return parts.hostname, port or (8883 if tls else 1883), tls


def _label_problems(key: str, labels: dict[str, str]) -> list[str]:
    return [
        f'{key}: "{name}" is not a label name (letters, digits and _, not starting with a digit or __)'
        for name in labels
        if not LABEL_NAME.match(name) or name.startswith("__")
    ]


def _metric_problem(key: str, metric: str) -> list[str]:
    if METRIC_NAME.match(metric):
        return []
    return [f'{key}: "{metric}" is not a metric name (letters, digits, _ and :, not starting with a digit)']


_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def _levels(text: str, key: str, *, wildcards: bool) -> tuple[list[tuple[str, str]], list[str]]:
    """A topic pattern's levels as (kind, value): ("lit", text), ("label", name), ("+", ""), ("#", "")."""
    levels, problems = [], []
    parts = text.split("/")
    for i, part in enumerate(parts):
        if (m := _PLACEHOLDER.fullmatch(part)) is not None:
            name = m[1]
            if not LABEL_NAME.match(name) or name.startswith("__"):
                problems.append(f'{key}: placeholder "{{{name}}}" is not a label name (letters, digits and _)')
            levels.append(("label", name))
        elif "{" in part or "}" in part:
            problems.append(f'{key}: a placeholder must be a whole topic level like "home/{{room}}/temp", got {text!r}')
        elif part == "+" and wildcards:
            levels.append(("+", ""))
        elif part == "#" and wildcards and i == len(parts) - 1:
            levels.append(("#", ""))
        elif "+" in part or "#" in part:
            allowed = '"+" for one level or a final "#"' if wildcards else "{placeholders}"
            problems.append(f"{key}: use {allowed} as whole levels, got {text!r}")
        else:
            levels.append(("lit", part))
    if not text:
        problems.append(f"{key}: expected a topic, got an empty string")
    names = [v for k, v in levels if k == "label"]
    if len(names) != len(set(names)):
        problems.append(f"{key}: a placeholder appears twice in {text!r}")
    return levels, problems


_PATH_STEP = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")


def parse_path(path: str) -> tuple[str | int, ...]:
    """`ENERGY.Power`, `StatusSNS.DS18B20[0].Temperature` → keys and list indices; ValueError when malformed."""
    steps: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _PATH_STEP.match(path, pos)
        if m is None or (m[1] is not None and m.group(0).startswith(".") == (pos == 0)):
            raise ValueError(f'expected a field path like "ENERGY.Power" or "sensors[0].value", got {path!r}')
        steps.append(m[1] if m[1] is not None else int(m[2]))
        pos = m.end()
    if not steps:
        raise ValueError('expected a field path like "ENERGY.Power", got an empty string')
    return tuple(steps)


@dataclass(frozen=True, slots=True)
class Zigbee2MqttSettings:
    """`[source.mqtt.zigbee2mqtt]`: devices under `base_topic`; `rooms` maps friendly names to a `room` label."""

    base_topic: str = "zigbee2mqtt"
    rooms: dict[str, str] = field(default_factory=dict)

    def _validate(self) -> list[str]:
        if not self.base_topic or "+" in self.base_topic or "#" in self.base_topic or self.base_topic.endswith("/"):
            return [f'base_topic: expected a topic like "zigbee2mqtt" (no wildcards), got {self.base_topic!r}']
        return []


@dataclass(frozen=True, slots=True)
class TopicMapping:
    """`[[source.mqtt.topics]]`: one plain value per topic; `{name}` levels become labels, `{metric}` the metric."""

    pattern: str
    metric: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def _validate(self) -> list[str]:
        levels, problems = _levels(self.pattern, "pattern", wildcards=True)
        placeholders = [v for k, v in levels if k == "label"]
        if self.metric and "metric" in placeholders:
            problems.append('metric: give the metric either as "{metric}" in the pattern or as this key, not both')
        elif not self.metric and "metric" not in placeholders:
            problems.append('pattern: no metric: put "{metric}" in the pattern or add metric = "temperature_celsius"')
        if self.metric:
            problems += _metric_problem("metric", self.metric)
        problems += _label_problems("labels", self.labels)
        return problems


@dataclass(frozen=True, slots=True)
class JsonMapping:
    """`[[source.mqtt.json]]`: JSON payloads on `topic`; `fields` maps field paths to metric names."""

    topic: str
    fields: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)
    timestamp: str = ""

    def _validate(self) -> list[str]:
        _, problems = _levels(self.topic, "topic", wildcards=True)
        if not self.fields:
            problems.append('fields: expected at least one field, like { "ENERGY.Power" = "power_watts" }')
        for path, metric in self.fields.items():
            try:
                parse_path(path)
            except ValueError as err:
                problems.append(f"fields: {err}")
            problems += _metric_problem("fields", metric)
        if self.timestamp:
            try:
                parse_path(self.timestamp)
            except ValueError as err:
                problems.append(f"timestamp: {err}")
        problems += _label_problems("labels", self.labels)
        return problems


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """`[[source.mqtt]]`: one broker and the mappings from its messages to readings (at least one)."""

    url: str = field(metadata={"check": _check_url})
    name: str = ""
    username: str = ""
    password: Secret | None = None
    client_id: str = ""
    qos: int = field(default=1, metadata={"min": 0, "max": 2})
    ca_file: Path | None = None
    zigbee2mqtt: Zigbee2MqttSettings | None = None
    topics: list[TopicMapping] = field(default_factory=list)
    json: list[JsonMapping] = field(default_factory=list)

    def _validate(self) -> list[str]:
        problems = []
        if self.zigbee2mqtt is None and not self.topics and not self.json:
            problems.append(
                "no mapping: add [source.mqtt.zigbee2mqtt], [[source.mqtt.topics]] or [[source.mqtt.json]] "
                "so that messages become readings"
            )
        if self.password is not None and not self.username:
            problems.append("password: a password needs a username")
        if self.ca_file is not None and not self.url.startswith("mqtts:"):
            problems.append('ca_file: only used with an "mqtts://" URL')
        if len(self.client_id.encode()) > 65535:
            problems.append("client_id: longer than MQTT allows")
        return problems


# ---------------------------------------------------------------- parsing: message → readings


class Problem(NamedTuple):
    """A refused payload or value: `reason` is the counted label, `key` the series (or the topic)."""

    reason: str
    key: str
    message: str


_NO_PROBLEMS: tuple[Problem, ...] = ()
_SWITCH = {"ON": 1.0, "OFF": 0.0}
_PLAIN_WORDS = {b"on": 1.0, b"off": 0.0, b"true": 1.0, b"false": 0.0}

# zigbee2mqtt field → metric name with its unit (z2m's units; see docs/sources/mqtt.md)
Z2M_METRICS = {
    "temperature": "temperature_celsius",
    "device_temperature": "device_temperature_celsius",
    "local_temperature": "local_temperature_celsius",
    "humidity": "humidity_percent",
    "soil_moisture": "soil_moisture_percent",
    "pressure": "pressure_hpa",
    "battery": "battery_percent",
    "linkquality": "linkquality",
    "power": "power_watts",
    "energy": "energy_kwh_total",
    "current": "current_amperes",
    "illuminance_lux": "illuminance_lux",
    "co2": "co2_ppm",
}
_Z2M_IGNORED = frozenset({"last_seen", "elapsed"})  # metadata, not measurements (last_seen may be epoch ms)
# A quirk of z2m's units: battery devices report their voltage in mV, metering plugs their mains voltage in V
# (next to power and current); z2m 1.x sent a raw `illuminance` next to `illuminance_lux`, 2.x sends lux.
_Z2M_BY_CONTEXT = {
    "voltage": lambda obj: "voltage_volts" if "power" in obj or "current" in obj else "voltage_millivolts",
    "illuminance": lambda obj: "illuminance_raw" if "illuminance_lux" in obj else "illuminance_lux",
}
_UNSEEN = object()


def metric_name(field_name: str) -> str:
    """A payload field name as a metric name: invalid characters become `_`, a leading digit gets a `_`."""
    name = re.sub(r"[^a-zA-Z0-9_:]", "_", field_name)
    return name if METRIC_NAME.match(name) else f"_{name}"


def _finite(value: float, series: Series) -> Problem | None:
    if math.isnan(value):
        return Problem("nan", str(series), f"{series}: value is NaN")
    if math.isinf(value):
        return Problem("inf", str(series), f"{series}: value is infinite")
    return None


def _number(value: object) -> float | None:
    """A JSON value as a reading value: numbers, booleans and ON/OFF; None for anything else."""
    kind = type(value)
    if kind is float or kind is int:
        try:
            return float(value)  # type: ignore[arg-type]
        except OverflowError:
            return math.inf
    if kind is bool:
        return 1.0 if value else 0.0
    if kind is str:
        return _SWITCH.get(value)  # type: ignore[arg-type]
    return None


def _excerpt(value: object, limit: int = 100) -> str:
    """`value` as shown in a problem's message: its repr, cut to `limit` characters (a payload of unprintable
    bytes is four times as long escaped)."""
    text = repr(value[: limit + 1] if isinstance(value, bytes | str) else value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_object(topic: str, payload: bytes) -> tuple[dict | None, Problem | None]:
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:  # RecursionError: [[[[… nested past the stack
        return None, Problem("invalid_json", topic, f"{topic}: payload is not JSON ({err}): {_excerpt(payload)}")
    if not isinstance(obj, dict):
        return None, Problem("invalid_payload", topic, f"{topic}: expected a JSON object, got {_excerpt(payload)}")
    return obj, None


class _Zigbee2Mqtt:
    """zigbee2mqtt's topics under one base topic."""

    def __init__(self, settings: Zigbee2MqttSettings):
        self.base = settings.base_topic
        self.prefix = settings.base_topic + "/"
        self.rooms = settings.rooms
        self.filters = (f"{self.base}/#",)
        self._series: dict[tuple[str, str], Series] = {}
        self._fields: dict[str, dict[str, Series | None]] = {}  # device → field → series (None: ignored)

    def route(self, topic: str) -> tuple | None:
        if not topic.startswith(self.prefix):
            return None
        rest = topic[len(self.prefix):]
        if rest == "bridge/state":
            return (self._availability, "bridge")
        if rest.startswith("bridge/") or not rest:
            return None
        if rest.endswith("/availability"):
            return (self._availability, rest[: -len("/availability")])
        levels = rest.split("/")
        if "set" in levels or "get" in levels:  # commands: <name>/set, <name>/set/<attribute>, <name>/get
            return None
        return (self._state, rest)

    def device_state(self, topic: str, payload: bytes) -> tuple[str, dict] | None:
        """(friendly name, state object) if the message is a device's JSON state, for things; else None."""
        route = self.route(topic)
        if route is None or route[0] != self._state or not payload.startswith(b"{"):
            return None
        try:
            obj = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        return (route[1], obj) if isinstance(obj, dict) else None

    def series(self, device: str, metric: str) -> Series:
        key = (device, metric)
        series = self._series.get(key)
        if series is None:
            if len(self._series) > _MAX_CACHED:
                self._series.clear()
            series = self._series[key] = Series.of(metric, device=device, room=self.rooms.get(device, ""))
        return series

    def _availability(self, device: str, topic: str, payload: bytes, ts_ms: int, retained: bool, out: list) -> Problem | None:
        text = payload.strip()
        if text.startswith(b"{"):
            try:
                text = str(json.loads(text).get("state", "")).encode()
            except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
                text = b""
        if text not in (b"online", b"offline"):
            if not payload:
                return None  # a cleared retained message: the device was removed
            return Problem("invalid_availability", topic, f'{topic}: expected "online" or "offline", got {_excerpt(payload)}')
        out.append(Reading(self.series(device, "up"), ts_ms, 1.0 if text == b"online" else 0.0))
        return None

    def _state(self, device: str, topic: str, payload: bytes, ts_ms: int, retained: bool, out: list) -> list[Problem] | Problem | None:
        if retained or not payload:
            return None  # an old state from before (see MqttParser.parse), or a removed device
        obj, problem = _json_object(topic, payload)
        if obj is None:
            return problem
        fields = self._fields.get(device)
        if fields is None:
            if len(self._fields) > _MAX_CACHED:
                self._fields.clear()
            fields = self._fields[device] = {}
        problems = None
        for key, value in obj.items():
            kind = type(value)
            if kind is float or kind is int:
                try:
                    number = float(value)
                except OverflowError:
                    number = math.inf
            elif kind is bool:
                number = 1.0 if value else 0.0
            elif kind is str and value in _SWITCH:
                number = _SWITCH[value]
            else:
                continue  # other strings, objects, lists, null: not measurements
            if key in _Z2M_BY_CONTEXT:
                series = self.series(device, _Z2M_BY_CONTEXT[key](obj))
            else:
                series = fields.get(key, _UNSEEN)
                if series is _UNSEEN:
                    ignored = key in _Z2M_IGNORED
                    series = fields[key] = None if ignored else self.series(device, Z2M_METRICS.get(key) or metric_name(key))
                if series is None:
                    continue
            if math.isfinite(number):
                out.append(Reading(series, ts_ms, number))
            else:
                problems = problems or []
                problems.append(_finite(number, series))
        return problems


class _ValueTopics:
    """`[[source.mqtt.topics]]`: a plain number (or ON/OFF, true/false) per topic."""

    def __init__(self, mapping: TopicMapping):
        self.levels, _ = _levels(mapping.pattern, "pattern", wildcards=True)
        self.metric = mapping.metric
        self.labels = mapping.labels
        self.filters = ("/".join({"label": "+"}.get(k, v if k == "lit" else k) for k, v in self.levels),)

    def route(self, topic: str) -> tuple | None:
        captured = _match(self.levels, topic)
        if captured is None:
            return None
        metric = captured.pop("metric", self.metric)
        try:
            series = Series.of(metric, self.labels, **captured)
        except InvalidReading as err:
            return (self._invalid, Problem(err.reason, topic, f"{topic}: {err}"))
        return (self._value, series)

    @staticmethod
    def _invalid(problem: Problem, topic: str, payload: bytes, ts_ms: int, retained: bool, out: list) -> Problem:
        return problem

    @staticmethod
    def _value(series: Series, topic: str, payload: bytes, ts_ms: int, retained: bool, out: list) -> Problem | None:
        if retained:
            return None
        try:
            value = float(payload)
        except ValueError:
            word = _PLAIN_WORDS.get(payload.strip().lower())
            if word is None:
                return Problem("non_numeric", str(series), f"{topic}: value {_excerpt(payload)} is not a number")
            value = word
        if not math.isfinite(value):
            return _finite(value, series)
        out.append(Reading(series, ts_ms, value))
        return None


class _JsonFields:
    """`[[source.mqtt.json]]`: chosen fields of a JSON object, by path."""

    def __init__(self, mapping: JsonMapping):
        self.levels, _ = _levels(mapping.topic, "topic", wildcards=True)
        self.fields = [(parse_path(path), metric) for path, metric in mapping.fields.items()]
        self.labels = mapping.labels
        self.timestamp = parse_path(mapping.timestamp) if mapping.timestamp else None
        self.filters = ("/".join({"label": "+"}.get(k, v if k == "lit" else k) for k, v in self.levels),)

    def route(self, topic: str) -> tuple | None:
        captured = _match(self.levels, topic)
        if captured is None:
            return None
        try:
            series = [(path, Series.of(metric, self.labels, **captured)) for path, metric in self.fields]
        except InvalidReading as err:
            return (_ValueTopics._invalid, Problem(err.reason, topic, f"{topic}: {err}"))
        return (self._fields, series)

    def _fields(self, fields: list, topic: str, payload: bytes, ts_ms: int, retained: bool, out: list) -> list | Problem | None:
        if retained and self.timestamp is None:
            return None
        obj, problem = _json_object(topic, payload)
        if obj is None:
            return problem
        if self.timestamp is not None:
            ts = _resolve(obj, self.timestamp)
            try:
                if ts is _MISSING or isinstance(ts, (bool, dict, list)) or ts is None:
                    raise ValueError("missing")
                ts_ms = parse_time_ms(str(ts), ts_ms)
            except ValueError:
                return Problem("invalid_timestamp", topic, f"{topic}: no usable timestamp at {_path_text(self.timestamp)} (got {_excerpt(ts)})")
        problems: list[Problem] = []
        found = 0
        for path, series in fields:
            value = _resolve(obj, path)
            if value is _MISSING or value is None:
                continue  # another device's message on a shared topic, or a sensor that reports null
            found += 1
            number = _number(value)
            if number is None:
                try:
                    number = float(value)  # numbers sent as strings ("21.5")
                except (TypeError, ValueError):
                    problems.append(Problem("non_numeric", str(series), f"{topic}: {series}: value {_excerpt(value)} is not a number"))
                    continue
            if math.isfinite(number):
                out.append(Reading(series, ts_ms, number))
            else:
                problems.append(_finite(number, series))
        if not found:
            paths = ", ".join(_path_text(p) for p, _s in fields)
            problems.append(Problem("no_mapped_fields", topic, f"{topic}: none of the fields {paths} is in {_excerpt(payload)}"))
        return problems


_MISSING = object()


def _resolve(obj: object, path: tuple[str | int, ...]) -> object:
    for step in path:
        if type(step) is int:
            if not isinstance(obj, list) or step >= len(obj):
                return _MISSING
        elif not isinstance(obj, dict) or step not in obj:
            return _MISSING
        obj = obj[step]  # type: ignore[index]
    return obj


def _path_text(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{s}]" if type(s) is int else f".{s}" for s in path).lstrip(".")


def _match(levels: list[tuple[str, str]], topic: str) -> dict[str, str] | None:
    parts = topic.split("/")
    captured: dict[str, str] = {}
    for i, (kind, value) in enumerate(levels):
        if kind == "#":
            return captured
        if i >= len(parts):
            return None
        if kind == "lit":
            if parts[i] != value:
                return None
        elif kind == "label":
            captured[value] = parts[i]
    return captured if len(parts) == len(levels) else None


class MqttParser:
    """The configured mappings of one broker: which topics to subscribe, and message → readings.

    Retained messages are old values the broker replays on every (re)subscription: they are stored only when
    the payload carries its own timestamp, and availability (a current state, not a measurement) is always read.
    """

    def __init__(self, settings: MqttSettings):
        self._mappings: list = []
        self.zigbee2mqtt = _Zigbee2Mqtt(settings.zigbee2mqtt) if settings.zigbee2mqtt is not None else None
        if self.zigbee2mqtt is not None:
            self._mappings.append(self.zigbee2mqtt)
        self._mappings += [_ValueTopics(m) for m in settings.topics]
        self._mappings += [_JsonFields(m) for m in settings.json]
        self.filters = list(dict.fromkeys(f for m in self._mappings for f in m.filters))
        self._routes: dict[str, list[tuple]] = {}

    def parse(self, topic: str, payload: bytes, ts_ms: int, retained: bool = False) -> tuple[list[Reading], tuple[Problem, ...] | list[Problem]]:
        """The readings of one message (timestamped `ts_ms` unless the payload has a time) and what was refused."""
        routes = self._routes.get(topic)
        if routes is None:
            if len(self._routes) > _MAX_CACHED:
                self._routes.clear()
            routes = self._routes[topic] = [r for m in self._mappings if (r := m.route(topic)) is not None]
        out: list[Reading] = []
        problems: tuple[Problem, ...] | list[Problem] = _NO_PROBLEMS
        for handler, arg in routes:
            found = handler(arg, topic, payload, ts_ms, retained, out)
            if found:
                problems = list(problems)
                if isinstance(found, Problem):
                    problems.append(found)
                else:
                    problems.extend(found)
        return out, problems


# ---------------------------------------------------------------- the network part


def default_client_id(source_name: str) -> str:
    """`roost-<host>-<source>`: stable across restarts, so the broker keeps the session between them."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"roost-{socket.gethostname()}-{source_name}")[:64]


def _reason(err: BaseException) -> str:
    text = re.sub(r"^\[Errno -?\d+\] ", "", str(err)) or type(err).__name__
    return text[:1].upper() + text[1:]


class MqttSource(Source):
    """Subscribes to the mappings' topics and emits readings; reconnects by itself while running."""

    kind = "mqtt"

    def __init__(self, settings: MqttSettings, ctx: SourceContext):
        super().__init__(settings, ctx)
        self.parser = MqttParser(settings)
        self.host, self.port, self.tls = split_url(settings.url)
        self.client_id = settings.client_id or default_client_id(ctx.name)
        self._client: aiomqtt.Client | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        # Where zigbee2mqtt device states go besides readings: (friendly name, state object, ts_ms) → the things
        # registry, which also keeps the non-numeric fields (ON/OFF, colour). Retained states count: they are current.
        self.device_states: Callable[[str, dict, int], None] | None = None

    async def publish(self, topic: str, payload: bytes) -> None:
        """Send a command (zigbee2mqtt `<name>/set`); SourceError when the broker is not connected."""
        client = self._client
        if client is None:
            raise SourceError(f"{self.settings.url}: not connected — cannot publish to {topic}")
        try:
            await client.publish(topic, payload, qos=self.settings.qos)
        except aiomqtt.MqttError as err:
            raise SourceError(f"{self.settings.url}: publishing to {topic} failed ({_reason(err)})") from None

    async def __aenter__(self) -> MqttSource:
        await self._connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._disconnect()
        self.ctx.up(False)

    async def run(self) -> None:
        while True:
            try:
                await self._consume()
            except aiomqtt.MqttError as err:
                self.ctx.up(False)
                self.ctx.error("disconnected", f"{self.settings.url}: connection lost ({_reason(err)}) — reconnecting")
            await self._disconnect()
            await self._reconnect()

    async def _reconnect(self) -> None:
        delay = _FIRST_RETRY_S
        while True:
            await asyncio.sleep(delay)
            try:
                await self._connect()
                return
            except SourceError as err:
                delay = min(delay * 2, _MAX_RETRY_S)
                self.ctx.error("connect", f"{err} — retrying in {delay:g} s")

    async def _connect(self) -> None:
        url, s = self.settings.url, self.settings
        tls_context = None
        if self.tls:
            try:
                tls_context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
            except (OSError, ssl.SSLError) as err:
                raise SourceError(f"{url}: cannot load ca_file {s.ca_file} ({_reason(err)})") from None
        client = aiomqtt.Client(
            self.host, self.port,
            username=s.username or None,
            password=s.password.reveal() if s.password is not None else None,
            identifier=self.client_id,
            clean_session=False,
            keepalive=_KEEPALIVE_S,
            tls_context=tls_context,
            logger=_client_log,
            # Small messages (a /set, one sensor state) must not wait for the peer's delayed ACK (~40 ms).
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )
        stack = contextlib.AsyncExitStack()
        try:
            await stack.enter_async_context(client)
        except aiomqtt.MqttCodeError as err:
            code = getattr(err.rc, "value", err.rc)
            if code in (4, 5, 134, 135):  # bad user name or password, not authorised (MQTT 3.1.1 / 5 codes)
                raise SourceError(f"{url}: the broker refused the login ({_reason(err)}) — check username and password") from None
            raise SourceError(f"{url}: the broker refused the connection ({_reason(err)})") from None
        except aiomqtt.MqttError as err:
            if "SSL" in str(err) or "certificate" in str(err):
                hint = "give the broker's CA certificate as ca_file" if "VERIFY" in str(err) else "is it a TLS port?"
                raise SourceError(f"{url}: TLS failed ({_reason(err)}) — {hint}") from None
            raise SourceError(f"{url}: cannot connect ({_reason(err)}) — is the broker running?") from None
        try:
            granted = await client.subscribe([(f, s.qos) for f in self.parser.filters])
            refused = [f for f, code in zip(self.parser.filters, granted) if getattr(code, "value", code) >= 0x80]
            if refused:
                raise SourceError(f"{url}: the broker refused the subscription to {', '.join(refused)} — check its ACL")
        except aiomqtt.MqttError as err:
            await stack.aclose()
            raise SourceError(f"{url}: subscribing failed ({_reason(err)})") from None
        except BaseException:  # also cancellation: never leave a connected client behind
            await stack.aclose()
            raise
        self._client, self._stack = client, stack
        self.ctx.up(True)
        self.ctx.log.info("connected to %s as %s, subscribed to %s", url, self.client_id, ", ".join(self.parser.filters))

    async def _disconnect(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(aiomqtt.MqttError, OSError):
                await stack.aclose()

    async def _consume(self) -> None:
        assert self._client is not None
        messages = self._client.messages
        parse, ctx = self.parser.parse, self.ctx
        states = self.parser.zigbee2mqtt if self.device_states is not None else None
        batch: list[Reading] = []
        try:
            async for message in messages:
                ts_ms = time.time_ns() // 1_000_000
                readings, problems = parse(message.topic.value, message.payload, ts_ms, message.retain)
                if states is not None and (state := states.device_state(message.topic.value, message.payload)):
                    self.device_states(*state, ts_ms)
                if readings:
                    batch += readings
                for problem in problems:
                    ctx.reject(problem.reason, problem.key, problem.message)
                # One hand-over per drained backlog rather than per message: the hub's writer batches anyway.
                if batch and (not len(messages) or len(batch) >= _MAX_BATCH):
                    ctx.emit(batch)
                    batch = []
        finally:
            if batch:
                ctx.emit(batch)
