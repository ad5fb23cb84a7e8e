"""`roost demo` as a user runs it: its meter polled over Modbus and its study sensor read over MQTT by roost's sources."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path

import aiomqtt
import pytest
from conftest import HubProcess, free_port, run_roost
from test_mqtt import mosquitto  # noqa: F401  (a fixture: our own broker on a free port)

from roost.demo import Demo

METER = 'device="main",meter="main",source="demo-modbus"'
STUDY = 'device="study_sensor",room="study"'
DAY_MS = 86_400_000


@pytest.fixture
def start_demo(tmp_path):
    demos: list[HubProcess] = []

    def start(*args: str) -> HubProcess:
        demo = HubProcess(tmp_path / f"data{len(demos)}", "--backfill", "1d", "--interval", "1s", *args, command="demo")
        demos.append(demo)
        return demo

    yield start
    for demo in demos:
        demo.kill(15)
        assert demo.proc.returncode == 0, Path(demo.log.name).read_text()


def get(demo: HubProcess, path: str, **params) -> dict | str:
    url = demo.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=5) as r:
        body = r.read().decode()
    return json.loads(body) if r.headers.get_content_type() == "application/json" else body


def latest(demo: HubProcess, series: str) -> tuple[int, float] | None:
    found = get(demo, "/api/series", match=series)["series"]
    return (found[0]["latest"]["ts"], found[0]["latest"]["value"]) if found else None


def source_up(demo: HubProcess) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r'^roost_source_up\{source="([^"]+)"\} (\S+)$', get(demo, "/metrics"), re.MULTILINE)}


def wait_for(condition, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)
    return result


def history(demo: HubProcess, series: str) -> list[float]:
    """The series' values of the last day, one per 15-minute bucket that has any."""
    found = get(demo, "/api/query", match=series, since="1d", step="15m", agg="last")["series"]
    return [v for v in found[0]["values"] if v is not None] if found else []


def test_the_meter_is_polled_through_roosts_modbus_source_and_continues_its_history(start_demo):
    demo = start_demo("--no-mqtt")
    log = Path(demo.log.name)
    wait_for(lambda: "roost is running" in log.read_text(), "the backfill")
    started = wait_for(lambda: latest(demo, f"energy_kwh_total{{{METER}}}"), "the backfilled energy counter")
    wait_for(lambda: source_up(demo).get("demo-modbus") == 1.0, 'roost_source_up{source="demo-modbus"} 1')

    readings = []
    wait_for(lambda: readings.append(latest(demo, f"power_watts{{{METER}}}")) or len({r for r in readings if r[0] > started[0]}) >= 3,
             "three live power readings")  # a poll a second, at its own phase: not on the house's 15 s grid
    assert len(history(demo, f"power_watts{{{METER}}}")) >= 90  # the backfilled day is the same series
    ts, energy = latest(demo, f"energy_kwh_total{{{METER}}}")
    assert ts > started[0] and 0 <= energy - started[1] < 0.1  # the counter carries on from its history
    assert 220 < latest(demo, f"voltage_volts{{{METER}}}")[1] < 240
    assert 49.8 < latest(demo, f"frequency_hertz{{{METER}}}")[1] < 50.2
    assert latest(demo, 'up{device="main",source="demo-modbus"}')[1] == 1.0
    assert set(get(demo, "/things/main/properties")) >= {"power", "energy", "voltage", "frequency"}  # the source's thing

    assert "demo: energy meter \"main\": a simulated SDM120 at tcp://127.0.0.1:" in log.read_text()
    assert "demo: MQTT skipped (--no-mqtt)" in log.read_text()
    assert "demo-mqtt" not in source_up(demo)
    assert get(demo, "/api/series", match='{room="study"}')["series"] == []


def test_a_newcomer_sees_a_clean_start_and_the_example_rules_work_at_once(start_demo):
    demo = start_demo("--no-mqtt")
    log = Path(demo.log.name)
    wait_for(lambda: "roost is running" in log.read_text(), "the backfill")
    request = urllib.request.Request(demo.url + "/things/lounge-lamp/properties/on", data=b'{"on": true}', method="PUT")
    urllib.request.urlopen(request, timeout=5).read()
    wait_for(lambda: get(demo, "/things/porch-light/properties/on") == {"on": True}, "the bonded porch light")
    text = log.read_text()
    assert "rules: 4 loaded" in text
    assert "waits for" not in text  # the house's things are there before its rules start
    assert [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line] == []


def test_the_study_sensor_publishes_like_zigbee2mqtt_and_arrives_through_roosts_mqtt_source(start_demo, mosquitto):  # noqa: F811
    async def listen() -> dict[str, bytes]:
        got: dict[str, bytes] = {}
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            await client.subscribe("zigbee2mqtt/#")
            demo = await asyncio.to_thread(start_demo, "--mqtt", mosquitto.url)
            async with asyncio.timeout(30):
                async for message in client.messages:
                    got[message.topic.value] = message.payload
                    if len(got) == 2:
                        return demo, got

    demo, published = asyncio.run(listen())
    assert json.loads(published["zigbee2mqtt/study_sensor/availability"]) == {"state": "online"}
    state = json.loads(published["zigbee2mqtt/study_sensor"])
    assert set(state) == {"temperature", "humidity", "pressure", "battery", "linkquality"}
    assert isinstance(state["battery"], int) and isinstance(state["linkquality"], int)

    log = Path(demo.log.name)
    wait_for(lambda: "roost is running" in log.read_text(), "the backfill")
    started = latest(demo, f"temperature_celsius{{{STUDY}}}")
    wait_for(lambda: source_up(demo).get("demo-mqtt") == 1.0, 'roost_source_up{source="demo-mqtt"} 1')
    _ts, value = wait_for(lambda: (r := latest(demo, f"temperature_celsius{{{STUDY}}}")) and r[0] > started[0] and r,
                          "a live study temperature")
    assert 15 < value < 25
    assert len(history(demo, f"temperature_celsius{{{STUDY}}}")) >= 90  # the study's history: the same series
    assert latest(demo, f"up{{{STUDY}}}")[1] == 1.0
    assert get(demo, "/things/study-sensor/properties")["temperature"] == pytest.approx(value, abs=1)
    assert f"demo: room study: a simulated zigbee2mqtt sensor 'study_sensor' publishing to {mosquitto.url}" in log.read_text()


def test_an_mqtt_broker_asked_for_but_unreachable_is_an_error(tmp_path):
    url = f"mqtt://127.0.0.1:{free_port()}"
    proc = run_roost("demo", "--data", str(tmp_path / "data"), "--listen", f"127.0.0.1:{free_port()}", "--mqtt", url, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"error: --mqtt: cannot reach the MQTT broker {url} (connection refused) — is the broker running? (or pass --no-mqtt)"
    )


async def test_the_default_broker_is_skipped_with_the_reason_when_it_does_not_answer():
    url = f"mqtt://127.0.0.1:{free_port()}"
    async with Demo(mqtt=url) as demo:
        assert demo.sensor is None and not demo.house.study
        assert demo.summary()[-1] == (
            f"MQTT skipped: cannot reach the MQTT broker {url} (connection refused)"
            " — no study sensor (start a broker there, or pass --mqtt URL)"
        )
        assert demo.meter.url.startswith("tcp://127.0.0.1:")
