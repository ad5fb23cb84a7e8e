"""The mqtt source against a real mosquitto broker (started per test on a free port), feeding an in-process hub."""

from __future__ import annotations

import asyncio
import logging
import getpass
import json
import ssl
import subprocess
import textwrap
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aiohttp
import aiomqtt
import pytest

from roost.config import load_config
from roost.errors import ConfigError, SourceError
from roost.hub import Hub
from roost.sources import SourceSettings
from roost.sources.base import SourceContext
from roost.sources.mqtt import (
    JsonMapping,
    MqttParser,
    MqttSettings,
    MqttSource,
    TopicMapping,
    Zigbee2MqttSettings,
    split_url,
)
from roost.telemetry import SelfMetrics

from conftest import free_port, hub_settings, wait_port

MOSQUITTO = "/usr/sbin/mosquitto"


class Mosquitto:
    """A mosquitto process on 127.0.0.1:`port`; `restart()` keeps the port (and loses sessions: no persistence)."""

    def __init__(self, directory: Path, *, users: dict[str, str] | None = None, tls: bool = False):
        self.port = free_port()
        self.url = f"{'mqtts' if tls else 'mqtt'}://127.0.0.1:{self.port}"
        self.directory = directory
        self.config = directory / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "max_queued_messages 0",  # the default 1000 drops QoS 1 messages for a lagging subscriber
            f"user {getpass.getuser()}",  # as root mosquitto would switch to "mosquitto" and lose the password file
        ]
        if users:
            passwords = directory / "passwords"
            passwords.touch()
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        if tls:  # a self-signed certificate for 127.0.0.1, as a home broker would have
            self.ca_file = directory / "broker.crt"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                 "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(directory / "broker.key"),
                 "-out", str(self.ca_file)],
                check=True, capture_output=True,
            )
            lines += [f"certfile {self.ca_file}", f"keyfile {directory / 'broker.key'}"]
        self.tls = tls
        self.config.write_text("\n".join(lines) + "\n")
        self.users = users or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log = open(self.directory / "mosquitto.log", "a")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc, self.directory / "mosquitto.log")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.log.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @asynccontextmanager
    async def client(self):
        user = next(iter(self.users), None)
        tls = ssl.create_default_context(cafile=str(self.ca_file)) if self.tls else None
        async with aiomqtt.Client(
            "127.0.0.1", self.port, username=user, password=self.users.get(user), tls_context=tls
        ) as client:
            yield client

    async def publish(self, topic: str, payload: dict | str | bytes, *, retain: bool = False) -> None:
        body = json.dumps(payload) if isinstance(payload, dict) else payload
        async with self.client() as client:
            await client.publish(topic, body, qos=1, retain=retain)


@pytest.fixture
def mosquitto(tmp_path):
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


def mqtt(broker: Mosquitto, **mappings) -> MqttSettings:
    return MqttSettings(url=broker.url, name="home", client_id=f"roost-test-{broker.port}", **mappings)


@asynccontextmanager
async def running_hub(data: Path, *sources: MqttSettings):
    settings = hub_settings(data)
    settings = replace(settings, source=SourceSettings(mqtt=list(sources)))
    async with Hub(settings) as hub:
        for source in sources:
            await until(lambda s=source: source_up(hub, s.name) == 1, f"source {source.name} connected")
        yield hub


def source_up(hub: Hub, name: str) -> float:
    return hub.metrics.source_up.labels(source=name)._value.get()


def latest(hub: Hub) -> dict[str, float]:
    return {str(series): value for series, (_ts, value) in hub.store.latest().items()}


async def until(condition, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def value_of(hub: Hub, series: str, timeout: float = 10.0) -> float:
    return (await until(lambda: latest(hub).get(series) is not None and [latest(hub)[series]], series, timeout))[0]


async def metrics_text(hub: Hub) -> str:
    async with aiohttp.ClientSession() as session, session.get(hub.url + "/metrics") as response:
        return await response.text()


def sample(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return None


Z2M = Zigbee2MqttSettings(rooms={"lounge_sensor": "lounge", "kitchen/plug": "kitchen"})


# ---------------------------------------------------------------- zigbee2mqtt


async def test_zigbee2mqtt_state_becomes_one_series_per_numeric_field_with_units(mosquitto, tmp_path):
    async with running_hub(tmp_path / "data", mqtt(mosquitto, zigbee2mqtt=Z2M)) as hub:
        await mosquitto.publish("zigbee2mqtt/lounge_sensor", {
            "temperature": 21.5, "humidity": 45.2, "pressure": 1013.1, "battery": 97, "voltage": 3005,
            "linkquality": 120, "occupancy": True, "contact": False, "last_seen": 1700000000000,
            "action": "single", "update": {"state": "idle"}, "color": None,
        })
        await mosquitto.publish("zigbee2mqtt/kitchen/plug", {
            "state": "ON", "power": 1250.5, "energy": 3.25, "current": 5.4, "voltage": 231,
        })
        await mosquitto.publish("zigbee2mqtt/hall_sensor", {"illuminance_lux": 120, "co2": 640, "pm25": 4})

        await value_of(hub, 'co2_ppm{device="hall_sensor"}')
        stored = latest(hub)
    lounge = '{device="lounge_sensor",room="lounge"}'
    plug = '{device="kitchen/plug",room="kitchen"}'
    assert {k: v for k, v in stored.items() if "lounge_sensor" in k} == {
        f"temperature_celsius{lounge}": 21.5,
        f"humidity_percent{lounge}": 45.2,
        f"pressure_hpa{lounge}": 1013.1,
        f"battery_percent{lounge}": 97,
        f"voltage_millivolts{lounge}": 3005,
        f"linkquality{lounge}": 120,
        f"occupancy{lounge}": 1,
        f"contact{lounge}": 0,
    }
    assert {k: v for k, v in stored.items() if "kitchen/plug" in k} == {
        f"state{plug}": 1,
        f"power_watts{plug}": 1250.5,
        f"energy_kwh_total{plug}": 3.25,
        f"current_amperes{plug}": 5.4,
        f"voltage_volts{plug}": 231,  # a metering plug reports mains volts, a battery sensor millivolts
    }
    assert {k: v for k, v in stored.items() if "hall_sensor" in k} == {  # not in rooms: stored without a room
        'illuminance_lux{device="hall_sensor"}': 120,
        'co2_ppm{device="hall_sensor"}': 640,
        'pm25{device="hall_sensor"}': 4,
    }


async def test_availability_plain_or_json_becomes_up(mosquitto, tmp_path):
    await mosquitto.publish("zigbee2mqtt/bridge/state", '{"state":"online"}', retain=True)
    async with running_hub(tmp_path / "data", mqtt(mosquitto, zigbee2mqtt=Z2M)) as hub:
        assert await value_of(hub, 'up{device="bridge"}') == 1  # retained: replayed on subscription
        await mosquitto.publish("zigbee2mqtt/lounge_sensor/availability", "offline", retain=True)
        assert await value_of(hub, 'up{device="lounge_sensor",room="lounge"}') == 0
        await mosquitto.publish("zigbee2mqtt/lounge_sensor/availability", '{"state":"online"}', retain=True)
        await until(lambda: latest(hub)['up{device="lounge_sensor",room="lounge"}'] == 1, "lounge_sensor online")
        await mosquitto.publish("zigbee2mqtt/bridge/state", "offline", retain=True)
        await until(lambda: latest(hub)['up{device="bridge"}'] == 0, "bridge offline")


async def test_commands_bridge_topics_and_retained_states_are_not_readings(mosquitto, tmp_path):
    await mosquitto.publish("zigbee2mqtt/lounge_sensor", {"temperature": 19.0}, retain=True)  # an old value
    async with running_hub(tmp_path / "data", mqtt(mosquitto, zigbee2mqtt=Z2M)) as hub:
        await mosquitto.publish("zigbee2mqtt/lounge_sensor/set", {"state": "ON", "brightness": 255})
        await mosquitto.publish("zigbee2mqtt/lounge_sensor/set/brightness", "128")
        await mosquitto.publish("zigbee2mqtt/lounge_sensor/get", {"state": ""})
        await mosquitto.publish("zigbee2mqtt/bridge/devices", '[{"friendly_name": "lounge_sensor"}]')
        await mosquitto.publish("zigbee2mqtt/bridge/logging", {"level": "info", "message": "42"})
        await mosquitto.publish("zigbee2mqtt/bridge/info", {"version": "1.35.0", "permit_join": False})
        await mosquitto.publish("zigbee2mqtt/last", {"temperature": 20.0})  # in order after all of the above

        await value_of(hub, 'temperature_celsius{device="last"}')
        assert latest(hub) == {'temperature_celsius{device="last"}': 20.0}
        assert sample(await metrics_text(hub), "roost_source_errors_total", reason="invalid_json", source="home") is None


# ---------------------------------------------------------------- plain value topics and JSON paths


async def test_plain_value_topics_take_labels_and_metric_from_the_topic(mosquitto, tmp_path):
    source = mqtt(mosquitto, topics=[
        TopicMapping(pattern="home/{room}/{metric}", labels={"site": "cottage"}),
        TopicMapping(pattern="esp/{device}/+/temp", metric="temperature_celsius"),
    ])
    async with running_hub(tmp_path / "data", source) as hub:
        await mosquitto.publish("home/lounge/humidity_percent", "45.5")
        await mosquitto.publish("home/porch/light", "ON")
        await mosquitto.publish("home/porch/door_open", "false")
        await mosquitto.publish("esp/boiler/sensor/temp", " 61.25\n")
        await value_of(hub, 'temperature_celsius{device="boiler"}')
        await until(lambda: len(latest(hub)) == 4, "four series")
        assert latest(hub) == {
            'humidity_percent{room="lounge",site="cottage"}': 45.5,
            'light{room="porch",site="cottage"}': 1,
            'door_open{room="porch",site="cottage"}': 0,
            'temperature_celsius{device="boiler"}': 61.25,
        }


async def test_json_fields_by_path_with_a_timestamp_from_the_payload(mosquitto, tmp_path):
    source = mqtt(mosquitto, json=[
        JsonMapping(
            topic="tele/{device}/SENSOR",
            fields={"ENERGY.Power": "power_watts", "ENERGY.Total": "energy_kwh_total",
                    "AM2301.Temperature": "temperature_celsius", "DS18B20[1].Temperature": "water_temperature_celsius"},
            labels={"vendor": "tasmota"},
            timestamp="Time",
        ),
        JsonMapping(topic="esphome/+/state", fields={"sensor.co2": "co2_ppm"}),
    ])
    async with running_hub(tmp_path / "data", source) as hub:
        await mosquitto.publish("tele/plug1/SENSOR", {
            "Time": "2024-03-01T12:00:00", "ENERGY": {"Power": 12, "Total": 3.5, "Voltage": 230},
        })
        await mosquitto.publish("tele/pool/SENSOR", {
            "Time": "2024-03-01T12:00:05Z", "AM2301": {"Temperature": "19.5"},
            "DS18B20": [{"Temperature": 8.0}, {"Temperature": 24.5}],
        })
        await mosquitto.publish("esphome/desk/state", {"sensor": {"co2": 612}})
        await value_of(hub, 'co2_ppm')
        await until(lambda: len(latest(hub)) == 5, "five series")
        stored = hub.store.latest()
    by_name = {str(s): (ts, v) for s, (ts, v) in stored.items()}
    assert by_name['power_watts{device="plug1",vendor="tasmota"}'] == (1709294400000, 12.0)
    assert by_name['energy_kwh_total{device="plug1",vendor="tasmota"}'] == (1709294400000, 3.5)
    assert by_name['temperature_celsius{device="pool",vendor="tasmota"}'] == (1709294405000, 19.5)
    assert by_name['water_temperature_celsius{device="pool",vendor="tasmota"}'] == (1709294405000, 24.5)
    assert abs(by_name["co2_ppm"][0] - time.time() * 1000) < 60_000  # no timestamp mapped: receipt time
    assert by_name["co2_ppm"][1] == 612


# ---------------------------------------------------------------- robustness


async def test_malformed_payloads_are_counted_and_the_source_keeps_working(mosquitto, tmp_path):
    source = mqtt(
        mosquitto,
        zigbee2mqtt=Z2M,
        topics=[TopicMapping(pattern="home/{room}/{metric}")],
        json=[JsonMapping(topic="tele/+/SENSOR", fields={"ENERGY.Power": "power_watts"})],
    )
    async with running_hub(tmp_path / "data", source) as hub:
        await mosquitto.publish("zigbee2mqtt/lounge_sensor", b"{temperature: 21")
        await mosquitto.publish("zigbee2mqtt/lounge_sensor", b"[1, 2]")
        await mosquitto.publish("zigbee2mqtt/lounge_sensor", b'{"temperature": NaN, "humidity": 40}')
        await mosquitto.publish("zigbee2mqtt/lounge_sensor/availability", b"maybe")
        await mosquitto.publish("home/lounge/temperature_celsius", b"warm")
        await mosquitto.publish("home/lounge/temperature_celsius", b"inf")
        await mosquitto.publish("home/lounge/2fast", b"1")
        await mosquitto.publish("tele/plug/SENSOR", b'{"ENERGY": {"Power": "lots"}}')
        await mosquitto.publish("tele/plug/SENSOR", b'{"Status": {}}')
        await mosquitto.publish("zigbee2mqtt/lounge_sensor", {"temperature": 22.0})

        assert await value_of(hub, 'temperature_celsius{device="lounge_sensor",room="lounge"}') == 22.0
        assert latest(hub)['humidity_percent{device="lounge_sensor",room="lounge"}'] == 40  # the good field stays
        text = await metrics_text(hub)
    expected = {
        "invalid_json": 1, "invalid_payload": 1, "nan": 1, "invalid_availability": 1, "non_numeric": 2,
        "inf": 1, "invalid_metric_name": 1, "no_mapped_fields": 1,
    }
    for reason, count in expected.items():
        assert sample(text, "roost_source_errors_total", reason=reason, source="home") == count, reason
        assert sample(text, "roost_rejected_readings_total", reason=reason) == count, reason
    assert sample(text, "roost_source_up", source="home") == 1


async def test_readings_flow_again_after_a_broker_restart_without_a_hub_restart(mosquitto, tmp_path):
    async with running_hub(tmp_path / "data", mqtt(mosquitto, zigbee2mqtt=Z2M)) as hub:
        lounge = 'temperature_celsius{device="lounge_sensor",room="lounge"}'
        await mosquitto.publish("zigbee2mqtt/lounge_sensor", {"temperature": 21.5})
        assert await value_of(hub, lounge) == 21.5

        mosquitto.restart()  # sessions are not persisted: roost must subscribe again, not only reconnect
        restarted = time.monotonic()
        await until(lambda: source_up(hub, "home") == 0, "the source noticing the restart", timeout=5)
        await until(lambda: source_up(hub, "home") == 1, "the source reconnecting", timeout=10)
        reconnect_s = time.monotonic() - restarted
        await mosquitto.publish("zigbee2mqtt/lounge_sensor", {"temperature": 21.7})
        await until(lambda: latest(hub)[lounge] == 21.7, "the reading after the restart")
        text = await metrics_text(hub)
    assert reconnect_s < 3, f"reconnected only after {reconnect_s:.1f} s"
    assert sample(text, "roost_source_errors_total", reason="disconnected", source="home") == 1


async def test_messages_published_while_roost_is_away_are_delivered_when_it_returns(mosquitto, tmp_path):
    source = mqtt(mosquitto, zigbee2mqtt=Z2M)
    async with running_hub(tmp_path / "data", source):
        pass  # the broker now keeps a session for the client id, subscriptions included
    for value in (20.0, 20.5, 21.0):
        await mosquitto.publish("zigbee2mqtt/lounge_sensor", {"temperature": value})
    async with running_hub(tmp_path / "data", source) as hub:
        series = 'temperature_celsius{device="lounge_sensor",room="lounge"}'
        await until(lambda: latest(hub).get(series) == 21.0, "the queued messages")
        # All three arrive (in a burst: the store may keep only the last of those within one millisecond).
        assert hub.metrics.source_readings.labels(source="home")._value.get() == 3


async def test_password_from_a_file_against_a_broker_that_requires_it(tmp_path):
    broker = Mosquitto(tmp_path, users={"roost": "s3cret pass"})
    broker.start()
    try:
        (tmp_path / "mqtt.password").write_text("s3cret pass\n")
        config = tmp_path / "roost.toml"
        config.write_text(textwrap.dedent(f"""\
            [[source.mqtt]]
            name = "home"
            url = "{broker.url}"
            username = "roost"
            password_file = "mqtt.password"
            [source.mqtt.zigbee2mqtt]
            rooms = {{ "lounge_sensor" = "lounge" }}
        """))
        settings = load_config(config, data_dir=str(tmp_path / "data"))
        settings = replace(settings, hub=replace(settings.hub, listen="127.0.0.1:0"))
        async with Hub(settings) as hub:
            await until(lambda: source_up(hub, "home") == 1, "the source logging in")
            await broker.publish("zigbee2mqtt/lounge_sensor", {"temperature": 18.5})
            assert await value_of(hub, 'temperature_celsius{device="lounge_sensor",room="lounge"}') == 18.5

        wrong = replace(settings.source.mqtt[0], password=None, username="roost")
        with pytest.raises(SourceError, match=r"refused the login .* check username and password"):
            async with MqttSource(wrong, SourceContext("home", SelfMetrics(), lambda readings: None)):
                pass
    finally:
        broker.stop()


async def test_mqtts_with_the_brokers_own_certificate(tmp_path):
    broker = Mosquitto(tmp_path, tls=True)
    broker.start()
    try:
        source = replace(mqtt(broker, zigbee2mqtt=Z2M), ca_file=broker.ca_file)
        async with running_hub(tmp_path / "data", source) as hub:
            await broker.publish("zigbee2mqtt/lounge_sensor", {"temperature": 23.0})
            assert await value_of(hub, 'temperature_celsius{device="lounge_sensor",room="lounge"}') == 23.0

        untrusted = replace(source, ca_file=None)  # the system's CAs do not know a self-signed certificate
        with pytest.raises(SourceError, match=r"^mqtts://127.0.0.1:\d+: TLS failed \(.*CERTIFICATE_VERIFY_FAILED.*\) — give the broker's CA certificate as ca_file$"):
            async with MqttSource(untrusted, SourceContext("home", SelfMetrics(), lambda readings: None)):
                pass
    finally:
        broker.stop()


async def test_an_unreachable_broker_is_a_clear_error():
    port = free_port()
    settings = MqttSettings(url=f"mqtt://127.0.0.1:{port}", zigbee2mqtt=Zigbee2MqttSettings())
    with pytest.raises(SourceError) as caught:
        async with MqttSource(settings, SourceContext("home", SelfMetrics(), lambda readings: None)):
            pass
    assert str(caught.value) == f"mqtt://127.0.0.1:{port}: cannot connect (Connection refused) — is the broker running?"


# ---------------------------------------------------------------- configuration


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "roost.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_full_config_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("MQTT_PW", "pw")
    settings = load_config(write(tmp_path, """\
        [[source.mqtt]]
        url = "mqtts://broker.lan"
        username = "roost"
        password_env = "MQTT_PW"
        qos = 0

        [source.mqtt.zigbee2mqtt]
        base_topic = "z2m"
        rooms = { "lounge_sensor" = "lounge", "kitchen/plug" = "kitchen" }

        [[source.mqtt.topics]]
        pattern = "home/{room}/{metric}"
        labels = { site = "cottage" }

        [[source.mqtt.json]]
        topic = "tele/{device}/SENSOR"
        fields = { "ENERGY.Power" = "power_watts", "DS18B20[0].Temperature" = "temperature_celsius" }
        timestamp = "Time"
    """))
    (source,) = settings.source.mqtt
    assert source.password.reveal() == "pw" and source.qos == 0
    assert source.zigbee2mqtt == Zigbee2MqttSettings(base_topic="z2m", rooms={"lounge_sensor": "lounge", "kitchen/plug": "kitchen"})
    assert settings.source.configured()[0][1] == "mqtt[0]"
    assert split_url(source.url) == ("broker.lan", 8883, True)
    assert MqttParser(source).filters == ["z2m/#", "home/+/+", "tele/+/SENSOR"]


def test_config_mistakes_are_reported_at_their_keys(tmp_path):
    path = write(tmp_path, """\
        [[source.mqtt]]
        url = "tcp://broker:1883"

        [[source.mqtt]]
        url = "mqtt://127.0.0.1"
        password = "x"

        [[source.mqtt]]
        url = "mqtt://127.0.0.1"
        [[source.mqtt.topics]]
        pattern = "home/{room}/temp"
        [[source.mqtt.topics]]
        pattern = "home/{9room}/x{metric}"
        [[source.mqtt.json]]
        topic = "tele/#/SENSOR"
        fields = { "ENERGY..Power" = "power watts" }
        labels = { "bad-label" = "x" }

        [[source.mqtt]]
        url = "mqtt://127.0.0.1"
        qos = 3
        zigbee2mqtt = { base_topic = "z2m/#" }
    """)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [p.removeprefix(f"{tmp_path}/") for p in caught.value.problems] == [
        'roost.toml:2: source.mqtt[0].url: expected a broker URL like "mqtt://127.0.0.1:1883" or '
        '"mqtts://broker.lan:8883", got \'tcp://broker:1883\'',
        "roost.toml:4: source.mqtt[1]: no mapping: add [source.mqtt.zigbee2mqtt], [[source.mqtt.topics]] or "
        "[[source.mqtt.json]] so that messages become readings",
        "roost.toml:6: source.mqtt[1].password: a password needs a username",
        'roost.toml:11: source.mqtt[2].topics[0].pattern: no metric: put "{metric}" in the pattern or add '
        'metric = "temperature_celsius"',
        'roost.toml:13: source.mqtt[2].topics[1].pattern: placeholder "{9room}" is not a label name '
        "(letters, digits and _)",
        'roost.toml:13: source.mqtt[2].topics[1].pattern: a placeholder must be a whole topic level like '
        '"home/{room}/temp", got \'home/{9room}/x{metric}\'',
        'roost.toml:13: source.mqtt[2].topics[1].pattern: no metric: put "{metric}" in the pattern or add '
        'metric = "temperature_celsius"',
        'roost.toml:15: source.mqtt[2].json[0].topic: use "+" for one level or a final "#" as whole levels, '
        "got 'tele/#/SENSOR'",
        'roost.toml:16: source.mqtt[2].json[0].fields: expected a field path like "ENERGY.Power" or '
        "\"sensors[0].value\", got 'ENERGY..Power'",
        'roost.toml:16: source.mqtt[2].json[0].fields: "power watts" is not a metric name '
        "(letters, digits, _ and :, not starting with a digit)",
        'roost.toml:17: source.mqtt[2].json[0].labels: "bad-label" is not a label name '
        "(letters, digits and _, not starting with a digit or __)",
        "roost.toml:21: source.mqtt[3].qos: expected at most 2, got 3",
        'roost.toml:22: source.mqtt[3].zigbee2mqtt.base_topic: expected a topic like "zigbee2mqtt" (no wildcards), '
        "got 'z2m/#'",
    ]


# ---------------------------------------------------------------- parsing, without a broker


def parse(settings: MqttSettings, topic: str, payload: bytes, *, retained: bool = False):
    readings, problems = MqttParser(settings).parse(topic, payload, 1000, retained)
    return {str(r.series): r.value for r in readings}, [p.reason for p in problems]


Z2M_ONLY = MqttSettings(url="mqtt://x", zigbee2mqtt=Zigbee2MqttSettings())


@pytest.mark.parametrize("payload, expected", [
    ({"illuminance": 300}, {"illuminance_lux": 300}),  # zigbee2mqtt 2.x: lux
    ({"illuminance": 21000, "illuminance_lux": 125}, {"illuminance_raw": 21000, "illuminance_lux": 125}),  # 1.x
    ({"state_l1": "ON", "state_l2": "OFF", "lock_state": "locked"}, {"state_l1": 1, "state_l2": 0}),
    ({"water_leak": True, "tamper": False, "battery_low": False}, {"water_leak": 1, "tamper": 0, "battery_low": 0}),
    ({"Soil Moisture": 31, "2nd": 1}, {"Soil_Moisture": 31, "_2nd": 1}),
    ({"elapsed": 1200, "last_seen": "2024-01-01T00:00:00Z", "update_available": None}, {}),
])
def test_zigbee2mqtt_field_names_and_values(payload, expected):
    readings, problems = parse(Z2M_ONLY, "zigbee2mqtt/d", json.dumps(payload).encode())
    assert readings == {f'{metric}{{device="d"}}': value for metric, value in expected.items()}
    assert problems == []


def test_retained_values_are_old_and_skipped_but_retained_availability_counts():
    settings = replace(Z2M_ONLY, topics=[TopicMapping(pattern="home/{metric}")])
    assert parse(settings, "zigbee2mqtt/d", b'{"temperature": 20}', retained=True) == ({}, [])
    assert parse(settings, "home/temperature_celsius", b"20", retained=True) == ({}, [])
    assert parse(settings, "zigbee2mqtt/d/availability", b"online", retained=True) == ({'up{device="d"}': 1}, [])
    assert parse(settings, "zigbee2mqtt/d", b"") == ({}, [])  # a removed device's cleared message


def test_a_topic_matching_two_mappings_feeds_both():
    settings = replace(
        Z2M_ONLY,
        json=[JsonMapping(topic="zigbee2mqtt/+", fields={"temperature": "raw_temperature"}, labels={"copy": "1"})],
    )
    readings, problems = parse(settings, "zigbee2mqtt/d", b'{"temperature": 20}')
    assert readings == {'temperature_celsius{device="d"}': 20, 'raw_temperature{copy="1"}': 20}
    assert problems == []


def test_huge_numbers_are_refused_not_crashed_on():
    readings, problems = parse(Z2M_ONLY, "zigbee2mqtt/d", b'{"energy": 1' + b"0" * 400 + b"}")
    assert readings == {} and problems == ["inf"]


def test_the_client_librarys_error_on_a_lost_connection_is_left_to_the_sources_own_warning(caplog):
    from roost.sources import mqtt as mqtt_module

    client_log = logging.getLogger("roost.sources.mqtt.client")
    assert client_log is mqtt_module._client_log
    with caplog.at_level(logging.INFO, logger="roost"):
        client_log.error("failed to receive on socket: [Errno 104] Connection reset by peer")
        client_log.warning("a warning passes")
    assert [r.getMessage() for r in caplog.records] == ["a warning passes"]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="roost"):
        client_log.error("failed to receive on socket")
    assert [r.getMessage() for r in caplog.records] == ["failed to receive on socket"]
