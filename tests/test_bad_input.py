"""Bad input for every parser: a checked-in corpus (tests/corpus/) and property-based tests.

Each bad input must get a clear error or a counted rejection; none may crash the parser, the source or the
hub, and none may corrupt the store. The corpus holds what was seen or feared in the field, one file (or one
line) per input with what roost must answer; hypothesis generates many more around it.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import struct
import tempfile
from pathlib import Path

import aiohttp
import cramjam
import pytest
from conftest import hub_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_modbus import direct
from test_things import desk_lamp

from roost.config import load_config
from roost.errors import ConfigError, QueryError
from roost.export.prompb import TooLarge, WireError, WriteRequest, decode_write_request, encode_write_request
from roost.hub import Hub
from roost.model import LABEL_NAME, METRIC_NAME, Reading, Series, now_ms
from roost.promql.ast import parse as parse_promql
from roost.selector import Selector
from roost.sources.modbus import LinkLost
from roost.sources.mqtt import JsonMapping, MqttParser, MqttSettings, TopicMapping, Zigbee2MqttSettings
from roost.sources.onewire import _Unusable, read_millicelsius
from roost.transfer.lineprotocol import LineError, parse_lines

CORPUS = Path(__file__).parent / "corpus"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def corpus_lines(name: str) -> list[tuple[str, str]]:
    """(input, expected) pairs of a `input => expected` corpus file, comments and blank lines skipped."""
    pairs = []
    for line in (CORPUS / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            given_text, _, expected = line.rpartition(" => ")
            pairs.append((given_text, expected.strip()))
    return pairs


def corpus_files(folder: str) -> list[Path]:
    return sorted((CORPUS / folder).iterdir())


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("path", corpus_files("config"), ids=lambda p: p.name)
def test_every_bad_config_names_file_line_and_key(path):
    expected = path.read_bytes().split(b"\n", 1)[0].decode().removeprefix("# expect: ")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


_KEYS = st.sampled_from(["hub", "store", "source", "listen", "max_series", "fsync", "modbus", "mqtt", "url",
                         "interval", "devices", "retention", "match", "keep", "backup", "rules", "x", "Ü"])
_TOML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=12,
)


def _toml(doc: dict) -> str:
    """A TOML-ish rendering of `doc` (tomllib decides what is valid; both outcomes are fine)."""
    lines = []
    for key, value in doc.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in value.items()]
        else:
            lines.insert(0, f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@FUZZ
@given(st.dictionaries(_KEYS, _TOML_VALUES, max_size=4) | st.text(max_size=200).map(lambda t: {"raw": t}))
def test_any_config_file_loads_or_gives_a_config_error(doc):
    text = doc["raw"] if set(doc) == {"raw"} and isinstance(doc["raw"], str) else _toml(doc)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "roost.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(path)
        except ConfigError as err:
            assert str(path) in str(err)


# ---------------------------------------------------------------- line protocol (HTTP push, roost import)


@pytest.mark.parametrize("path", corpus_files("line"), ids=lambda p: p.name)
def test_every_bad_line_is_refused_with_its_line_number_and_reason(path):
    text = path.read_bytes().decode("utf-8", errors="replace")
    reason = text.split("\n", 1)[0].removeprefix("# reason: ")
    result = parse_lines(text + "ok value=1\n", default_ts_ms=now_ms())
    assert [(e.line, e.reason) for e in result.errors] == [(2, reason)], result.errors
    assert [r.series.metric for r in result.readings] == ["ok"]  # the good line after it still counts


@FUZZ
@given(st.binary(max_size=300))
def test_line_protocol_bytes_never_crash_and_every_reading_is_storable(data):
    result = parse_lines(data.decode("utf-8", errors="replace"), default_ts_ms=now_ms())
    assert all(isinstance(e, LineError) and e.line >= 1 and e.reason for e in result.errors)
    for r in result.readings:
        assert math.isfinite(r.value) and METRIC_NAME.match(r.series.metric)
        assert all(LABEL_NAME.match(k) for k, _v in r.series.labels) and 0 <= r.ts_ms <= now_ms() + 2 * 86_400_000


# ---------------------------------------------------------------- MQTT payloads (zigbee2mqtt, topics, JSON)

MQTT = MqttSettings(
    url="mqtt://127.0.0.1",
    zigbee2mqtt=Zigbee2MqttSettings(rooms={"lounge_sensor": "lounge"}),
    topics=[TopicMapping("home/{room}/{metric}")],
    json=[JsonMapping("tele/{device}/SENSOR", {"ENERGY.Power": "power_watts", "ENERGY.Total": "energy_kwh_total"},
                      timestamp="Time")],
)


@pytest.mark.parametrize("path", corpus_files("mqtt"), ids=lambda p: p.name)
def test_every_bad_mqtt_payload_is_refused_with_a_counted_reason(path):
    head, _, payload = path.read_bytes().partition(b"\n")
    fields = dict(re.findall(r"(\w+): (\S+)", head.decode()))
    readings, problems = MqttParser(MQTT).parse(fields["topic"], payload, now_ms())
    assert readings == []
    assert [p.reason for p in problems] == ([] if fields["reason"] == "none" else [fields["reason"]])
    assert all(p.message and len(p.message) < 400 for p in problems)  # payloads are clipped in messages


def test_a_flood_of_distinct_bad_topics_is_counted_in_full_and_logged_within_a_budget(caplog, monkeypatch):
    """A malicious publisher sends bad payloads on ever new (and very long) topics: every one is counted, the log
    gets at most 50 lines a minute, each cut to 500 characters, then one line with how many went unlogged."""
    from roost import telemetry

    clock = [1000.0]
    monkeypatch.setattr(telemetry.time, "monotonic", lambda: clock[0])
    metrics = telemetry.SelfMetrics()
    parser = MqttParser(MQTT)
    caplog.set_level("WARNING", logger="roost")
    for i in range(300):
        topic = f"home/{'x' * 5000}{i}/temperature_celsius"
        for problem in parser.parse(topic, b"warm", now_ms())[1]:
            metrics.reject(problem.reason, problem.key, problem.message)
    assert metrics.registry.get_sample_value("roost_rejected_readings_total", {"reason": "non_numeric"}) == 300
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 50 and all(len(line) <= 600 and line.endswith("…") for line in lines)
    clock[0] += 61  # the next minute: the count of what was not logged, then the next rejection
    caplog.clear()
    metrics.reject("non_numeric", "another", "home/a/b: value 'warm' is not a number")
    assert [r.getMessage() for r in caplog.records] == [
        "250 more rejected readings were not logged (over 50 lines a minute; all are counted in "
        "roost_rejected_readings_total)",
        "rejected reading (non_numeric): home/a/b: value 'warm' is not a number",
    ]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["temperature", "humidity", "state", "ENERGY", "Power", "Total", "Time", "linkquality"]),
        inner, max_size=4),
    max_leaves=15,
)
_TOPICS = st.sampled_from(["zigbee2mqtt/lounge_sensor", "zigbee2mqtt/lounge_sensor/availability", "zigbee2mqtt/x/y",
                           "zigbee2mqtt/bridge/state", "home/lounge/temperature_celsius", "home/1/2",
                           "tele/plug/SENSOR", "tele/a b/SENSOR", "other/topic"])
_PAYLOADS = st.binary(max_size=200) | _JSON.map(lambda v: json.dumps(v, allow_nan=True).encode())


@FUZZ
@given(_TOPICS, _PAYLOADS, st.booleans())
def test_mqtt_payloads_never_crash_the_parser_and_readings_are_finite(topic, payload, retained):
    readings, problems = MqttParser(MQTT).parse(topic, payload, now_ms(), retained)
    assert all(math.isfinite(r.value) for r in readings)
    assert all(p.reason and p.message for p in problems)


# ---------------------------------------------------------------- 1-Wire w1_slave files


def _sensor(tmp: Path, content: bytes) -> Path:
    device = tmp / "28-00000a1b2c3d"
    device.mkdir(exist_ok=True)
    (device / "w1_slave").write_bytes(content)
    return device


@pytest.mark.parametrize("path", corpus_files("w1_slave"), ids=lambda p: p.name)
def test_every_bad_w1_slave_file_is_refused_with_its_reason(path, tmp_path):
    reason = path.name.split("__")[0]
    with pytest.raises(_Unusable) as info:
        read_millicelsius(_sensor(tmp_path, path.read_bytes()))
    assert info.value.reason == reason
    assert "28-00000a1b2c3d" in str(info.value)


_SCRATCHPAD = st.lists(st.integers(0, 255), min_size=9, max_size=9).map(lambda b: " ".join(f"{x:02x}" for x in b))


@FUZZ
@given(st.binary(max_size=120) | st.builds(
    lambda pad, ok, t: f"{pad} : crc={pad[-2:]} {ok}\n{pad} t={t}\n".encode(),
    _SCRATCHPAD, st.sampled_from(["YES", "NO", "yes", ""]), st.integers(-10**12, 10**12) | st.text(max_size=5),
))
def test_w1_slave_content_gives_a_plausible_temperature_or_a_reason(content):
    with tempfile.TemporaryDirectory() as tmp:
        try:
            value = read_millicelsius(_sensor(Path(tmp), content))
        except _Unusable as err:
            assert err.reason in {"crc", "power_on_reset", "out_of_range", "unreadable", "malformed"}
        else:
            assert -55_000 <= value <= 125_000 and value != 85_000


# ---------------------------------------------------------------- Modbus answers (a real pymodbus client)


class BrokenMeter:
    """A Modbus TCP server on 127.0.0.1 that answers every request with the frame it is told to send."""

    def __init__(self):
        self.answer = "close"
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> BrokenMeter:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"tcp://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(7)
                tid, _pid, length, unit = struct.unpack(">HHHB", header)
                await reader.readexactly(length - 1)
                if self.answer == "close":
                    break
                frame = self.answer.replace("TTTT", f"{tid:04x}").replace("UU", f"{unit:02x}")
                writer.write(bytes.fromhex(frame.replace(" ", "")) if re.fullmatch(r"[0-9a-f ]*", frame) else frame)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


MODBUS_DEVICE = """\
    [[source.modbus]]
    url = "{url}"
    timeout = "300ms"
    retries = 0
    [[source.modbus.devices]]
    name = "meter"
    unit = 1
    [[source.modbus.devices.registers]]
    metric = "power_watts"
    type = "input"
    address = 0
    data_type = "float32"
    """


async def _poll_once(tmp_path: Path, url: str):
    """One poll of a fresh source: (answered, the run with its readings and counted errors)."""
    run = direct(tmp_path, MODBUS_DEVICE.format(url=url))
    answered = False
    try:
        async with run.source as source:
            answered = await source.poll("meter")
    except LinkLost:
        pass  # the supervisor reconnects; nothing was emitted for the device
    return answered, run


@pytest.mark.parametrize("frame, reason", corpus_lines("modbus/answers.txt"), ids=lambda x: x[:24])
async def test_every_broken_modbus_answer_is_counted_and_the_source_carries_on(frame, reason, tmp_path):
    async with BrokenMeter() as meter:
        meter.answer = frame
        answered, run = await _poll_once(tmp_path, meter.url)
        for r in run.readings:
            assert math.isfinite(r.value)
        if reason == "ok":
            assert answered and run.latest("power_watts") == 12.5
        elif reason == "down":
            assert not answered and run.latest("power_watts") is None
            assert run.latest("up") in (0.0, None)  # None: the link itself dropped before the poll ended
        elif reason in ("nan", "inf"):
            assert run.latest("power_watts") is None
            value = run.metrics.registry.get_sample_value(
                "roost_rejected_readings_total", {"reason": reason})
            assert value == 1, [s for m in run.metrics.registry.collect() for s in m.samples if "reject" in s.name]
        else:
            assert run.errors(reason) >= 1 and run.latest("power_watts") is None
        meter.answer = "TTTT 0000 0007 UU 04 04 41 48 00 00"  # the meter recovers: the next poll reads 12.5
        answered, run = await _poll_once(tmp_path, meter.url)
        assert answered and run.latest("power_watts") == 12.5


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(min_size=0, max_size=40), header=st.sampled_from(["TTTT 0000 ", "TTTT 0000 0007 UU ", ""]))
def test_random_modbus_answers_never_crash_the_source(body, header, tmp_path):
    async def run() -> None:
        async with BrokenMeter() as meter:
            meter.answer = header + body.hex()
            _answered, run = await _poll_once(tmp_path, meter.url)
            assert all(math.isfinite(r.value) for r in run.readings)

    asyncio.run(run())


@pytest.mark.parametrize("answer, outcome", corpus_lines("modbus/rtu_answers.txt"), ids=lambda x: x[:24])
async def test_every_broken_rtu_answer_is_a_bad_frame_with_its_reason(answer, outcome):
    """A real pty: the link's end is opened by pyserial, the other end answers each request with the corpus frame."""
    from pymodbus.framer import FramerRTU
    from pymodbus.pdu.register_message import ReadInputRegistersRequest

    from roost.sources.modbus import BadFrame, NoResponse
    from roost.sources.serial_link import SerialRtuLink

    frame = bytes.fromhex(answer.replace("CCCC", ""))
    if answer.endswith("CCCC"):
        frame += FramerRTU.compute_CRC(frame).to_bytes(2, "big")
    master, slave = os.openpty()
    link = SerialRtuLink(os.ttyname(slave), baudrate=9600, bytesize=8, parity="none", stopbits=1, timeout_s=0.2)
    loop = asyncio.get_running_loop()
    loop.add_reader(master, lambda: os.read(master, 256) and os.write(master, frame))  # one request, one answer
    try:
        await link.connect()
        try:
            response = await link.execute(ReadInputRegistersRequest(address=0, count=2, dev_id=1))
        except (BadFrame, NoResponse) as err:
            assert getattr(err, "reason", "no_response") == outcome, err
            assert outcome == "no_response" or str(err)
        else:
            assert outcome == ("exception" if response.isError() else "ok"), response
            assert outcome == "exception" or response.registers == [0x4148, 0]
    finally:
        loop.remove_reader(master)
        await link.close()
        os.close(master)
        os.close(slave)


# ---------------------------------------------------------------- PromQL


@pytest.mark.parametrize("query, message", corpus_lines("promql/queries.txt"), ids=lambda x: x[:30])
async def test_every_unsupported_or_bad_query_is_bad_data_naming_the_part(hub, http, query, message):
    await hub.ingest([Reading(Series.of("temperature_celsius", room="lounge"), now_ms() - 1000, 21.0)])
    for path in ("/api/v1/query", "/api/v1/query_range"):
        params = {"query": query, "start": now_ms() // 1000 - 600, "end": now_ms() // 1000, "step": "60"}
        async with http.get(path, params=params) as r:
            body = await r.json()
            assert r.status == 400, body
            assert body["status"] == "error" and body["errorType"] == "bad_data"
            assert message in body["error"]


_PROMQL_TOKENS = ["temperature_celsius", "x", "{", "}", "(", ")", "[5m]", "[1h]", "[0s]", ",", "=", "!=", "=~", "!~",
                  '"lounge"', '"(("', "room", "sum", "by", "without", "rate", "increase", "avg_over_time", "+", "-",
                  "*", "/", "%", "^", ">", "==", "bool", "1", "1e308", "NaN", "Inf", "-1", "offset", "@", ":", " "]


@FUZZ
@given(st.lists(st.sampled_from(_PROMQL_TOKENS), max_size=12).map("".join) | st.text(max_size=40))
def test_promql_text_parses_or_raises_a_query_error(text):
    try:
        parse_promql(text)
    except QueryError as err:
        assert str(err)


async def test_random_queries_never_give_a_server_error(hub, http):
    now = now_ms()
    await hub.ingest([Reading(Series.of("temperature_celsius", room=r), now - k * 15_000, 20.0 + k % 7)
                      for r in ("lounge", "bedroom") for k in range(200)])
    rng = random.Random(7)
    for _ in range(300):
        query = "".join(rng.choice(_PROMQL_TOKENS) for _ in range(rng.randint(1, 10)))
        params = {"query": query, "start": now // 1000 - 3600, "end": now // 1000, "step": rng.choice(["15", "60", "0"])}
        async with http.get("/api/v1/query_range", params=params) as r:
            assert r.status in (200, 400, 422), (query, r.status, await r.text())
            body = await r.json()
            assert body["status"] == ("success" if r.status == 200 else "error")


# ---------------------------------------------------------------- Web Thing WebSocket messages


@pytest.fixture
async def lamp(hub):
    hub.things.add(desk_lamp([]))
    hub.things.report("desk-lamp", "on", False)
    hub.things.report("desk-lamp", "brightness", 40)


async def test_every_bad_websocket_message_gets_an_error_and_the_connection_stays_usable(http, lamp):
    async with http.ws_connect("/things/desk-lamp") as ws:
        for text, status in corpus_lines("webthing_ws/messages.txt"):
            await ws.send_str(text)
            reply = await asyncio.wait_for(ws.receive_json(), 5)
            assert reply["messageType"] == "error", (text, reply)
            assert str(reply["data"]["status"]).startswith(status), (text, reply)
            assert reply["data"]["message"]
        await ws.send_json({"messageType": "setProperty", "data": {"brightness": 70}})
        reply = await asyncio.wait_for(ws.receive_json(), 5)
        assert reply == {"messageType": "propertyStatus", "data": {"brightness": 70}}


async def test_random_websocket_messages_never_close_the_connection(http, lamp):
    rng = random.Random(11)
    shapes = [lambda: rng.randbytes(rng.randint(0, 30)).decode("latin-1"),
              lambda: json.dumps({"messageType": rng.choice(["setProperty", "requestAction", "addEventSubscription", 1]),
                                  "data": rng.choice([{}, [], None, 5, {"on": rng.random()}, {"brightness": "x"},
                                                      {"blink": {"input": {"seconds": rng.random() * 100}}}])})]
    async with http.ws_connect("/things/desk-lamp") as ws:
        for _ in range(200):
            await ws.send_str(rng.choice(shapes)())
        await ws.send_json({"messageType": "setProperty", "data": {"brightness": 71}})
        async def until_status():
            while True:
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                if json.loads(msg.data) == {"messageType": "propertyStatus", "data": {"brightness": 71}}:
                    return
        await asyncio.wait_for(until_status(), 10)


# ---------------------------------------------------------------- Prometheus remote-write bodies


def _snappy(raw: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(raw))


def _request(metric: str, labels: dict[str, str], samples: list[tuple[float, int]]) -> bytes:
    req = WriteRequest()
    series = req.timeseries.add()
    series.labels.add(name="__name__", value=metric)
    for k, v in labels.items():
        series.labels.add(name=k, value=v)
    for value, ts in samples:
        series.samples.add(value=value, timestamp=ts)
    return req.SerializeToString()


def remote_write_corpus() -> list[tuple[str, bytes, int, str]]:
    """(name, body, HTTP status, text in the answer): built here, as the bodies are binary."""
    now = now_ms()
    return [
        ("not_snappy", b"plain text, not snappy", 400, "snappy"),
        ("six_bytes_claiming_4_gib", b"\xff\xff\xff\xff\x0f\x00", 413, "declares 4,294,967,295 bytes"),
        ("no_length_header", b"\xff\xff\xff\xff\xff\xff", 400, "length header"),
        ("snappy_of_garbage", _snappy(b"\xff" * 40), 400, "WriteRequest"),
        ("truncated", encode_write_request([Reading(Series.of("x"), now, 1.0)])[:-3], 400, ""),
        ("invalid_metric", _snappy(_request("1-bad", {}, [(1.0, now)])), 400, "1-bad"),
        ("invalid_label", _snappy(_request("ok", {"bad-label": "v"}, [(1.0, now)])), 400, "bad-label"),
        ("nan", _snappy(_request("ok", {}, [(float("nan"), now)])), 400, "NaN"),
        ("future", _snappy(_request("ok", {}, [(1.0, now + 10 * 86_400_000)])), 400, "ahead"),
        ("before_1970", _snappy(_request("ok", {}, [(1.0, -5)])), 400, "before 1970"),
    ]


@pytest.mark.parametrize("name, body, status, text", remote_write_corpus(), ids=lambda x: x if isinstance(x, str) else "")
async def test_every_bad_remote_write_body_is_refused_and_the_store_keeps_what_it_had(hub, http, name, body, status, text):
    good = Reading(Series.of("kept_total"), now_ms() - 1000, 5.0)
    async with http.post("/api/v1/write", data=encode_write_request([good])) as r:
        assert r.status == 204
    async with http.post("/api/v1/write", data=body) as r:
        assert r.status == status, await r.text()
        assert text in await r.text()
    assert [(d.series.metric, d.values.tolist()) for d in hub.store.read(Selector.parse("{__name__=~'.+'}"), 0, 2**62)] \
        == [("kept_total", [5.0])]


async def test_remote_write_names_what_the_store_refused_and_counts_each_once(tmp_path):
    now = now_ms()
    body = _snappy(_request("ok", {}, [(1.0, now), (float("inf"), now + 1), (2.0, now + 10 * 86_400_000)]))
    async with Hub(hub_settings(tmp_path / "data", max_series=1)) as hub, aiohttp.ClientSession(hub.url) as http:
        async with http.post("/api/v1/write", data=body) as r:
            assert r.status == 400
            assert (await r.text()).startswith("2 sample(s) refused, 1 stored (do not resend): ok: value is infinite; ok: ")
        async with http.post("/api/v1/write", data=encode_write_request([Reading(Series.of("new"), now, 1.0)])) as r:
            assert (r.status, await r.text()) == (
                400, '1 sample(s) refused, 0 stored (do not resend): new: new series refused: store.max_series reached')
        rejected = hub.metrics.registry.get_sample_value
        assert [rejected("roost_rejected_readings_total", {"reason": k}) for k in ("inf", "bad_timestamp",
                "cardinality_limit")] == [1, 1, 1]
        assert [d.values.tolist() for d in hub.store.read(Selector.parse("ok"), 0, 2**62)] == [[1.0]]


@FUZZ
@given(st.binary(max_size=200) | st.binary(max_size=200).map(_snappy))
def test_remote_write_bytes_decode_or_raise_a_wire_error(body):
    try:
        decoded = decode_write_request(body)
    except TooLarge:
        pass
    except WireError as err:
        assert str(err)
    else:  # values and timestamps are the store's to refuse (the corpus above); staleness markers are no readings
        assert not any(struct.pack("<d", r.value) == struct.pack("<Q", 0x7FF0000000000002) for r in decoded.readings)
