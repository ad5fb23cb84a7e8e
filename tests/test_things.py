"""The Web Thing API of the hub (REST and WebSocket), zigbee2mqtt devices as things through a real mosquitto, the demo's things."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import aiohttp
import pytest
from conftest import HubProcess
from test_mqtt import Z2M, mosquitto, mqtt, running_hub, until  # noqa: F401  (mosquitto is a fixture)

from roost.api.things import SEND_QUEUE, _Client
from roost.things import (
    ActionRequest,
    ActionSpec,
    EventSpec,
    PropertySpec,
    Thing,
    ThingError,
)


def desk_lamp(written: list) -> Thing:
    async def actuate(name, value):
        written.append((name, value))

    async def blink(request: ActionRequest):
        await asyncio.sleep(request.input["seconds"])

    return Thing(
        "desk-lamp", "Desk Lamp", ("Light", "OnOffSwitch"), "A test lamp",
        {
            "on": PropertySpec("on", "boolean", title="On", at_type="OnOffProperty"),
            "brightness": PropertySpec("brightness", "integer", unit="percent", minimum=0, maximum=100, at_type="BrightnessProperty"),
            "power": PropertySpec("power", "number", unit="watt", read_only=True),
        },
        actions={"blink": ActionSpec("blink", "Blink", {"type": "object", "required": ["seconds"],
                                                         "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 60}}})},
        events={"overheated": EventSpec("overheated", "Overheated", "number", "degree celsius")},
        actuator=actuate, performer=blink,
    )


@pytest.fixture
async def lamp(hub):
    written: list = []
    hub.things.add(desk_lamp(written))
    hub.things.report("desk-lamp", "on", False)
    hub.things.report("desk-lamp", "brightness", 40)
    hub.things.report("desk-lamp", "power", 4.5)
    return written


# ---------------------------------------------------------------- Thing Description


async def test_the_thing_description_has_the_web_thing_shape(hub, http, lamp):
    async with http.get("/things/desk-lamp") as r:
        assert r.status == 200
        td = await r.json()
    assert td["id"] == f"{hub.url}/things/desk-lamp"
    assert td["title"] == "Desk Lamp" and td["@context"] == "https://webthings.io/schemas/"
    assert td["@type"] == ["Light", "OnOffSwitch"]
    assert td["properties"]["brightness"] == {
        "type": "integer", "title": "brightness", "readOnly": False, "unit": "percent", "minimum": 0, "maximum": 100,
        "@type": "BrightnessProperty", "links": [{"rel": "property", "href": "/things/desk-lamp/properties/brightness"}],
    }
    assert td["properties"]["power"]["readOnly"] is True
    assert td["actions"]["blink"]["links"] == [{"rel": "action", "href": "/things/desk-lamp/actions/blink"}]
    assert td["actions"]["blink"]["input"]["required"] == ["seconds"]
    assert td["events"]["overheated"]["unit"] == "degree celsius"
    links = {link["rel"]: link["href"] for link in td["links"]}
    assert links == {
        "properties": "/things/desk-lamp/properties", "actions": "/things/desk-lamp/actions",
        "events": "/things/desk-lamp/events", "alternate": hub.url.replace("http", "ws") + "/things/desk-lamp",
    }
    async with http.get("/things") as r:
        assert [t["title"] for t in await r.json()] == ["Desk Lamp"]


# ---------------------------------------------------------------- properties


async def test_properties_are_read_and_written_with_a_name_keyed_body(hub, http, lamp):
    async with http.get("/things/desk-lamp/properties") as r:
        assert await r.json() == {"on": False, "brightness": 40, "power": 4.5}
    async with http.put("/things/desk-lamp/properties/brightness", json={"brightness": 75}) as r:
        assert (r.status, await r.json()) == (200, {"brightness": 75})
    async with http.get("/things/desk-lamp/properties/brightness") as r:
        assert await r.json() == {"brightness": 75}
    assert lamp == [("brightness", 75)]
    async with http.put("/things/desk-lamp/properties/brightness", json={"brightness": 75}) as r:
        assert r.status == 200
    assert lamp == [("brightness", 75)]  # unchanged: not written again


@pytest.mark.parametrize("name, body, status, message", [
    ("brightness", {"brightness": "high"}, 400, "property 'brightness': expected a integer, got 'high'"),
    ("brightness", {"brightness": 101}, 400, "property 'brightness': 101 is above the maximum 100"),
    ("brightness", {"brightness": 2.5}, 400, "property 'brightness': expected an integer, got 2.5"),
    ("on", {"on": "yes"}, 400, "property 'on': expected true or false, got 'yes'"),
    ("power", {"power": 10}, 400, "property 'power' is read-only"),
    ("on", {"brightness": 5}, 400, "expected a body like {\"on\": value}"),
    ("colour", {"colour": "red"}, 404, "has no property 'colour' (it has: brightness, on, power)"),
])
async def test_a_refused_write_says_which_property_and_why(http, lamp, name, body, status, message):
    async with http.put(f"/things/desk-lamp/properties/{name}", json=body) as r:
        assert r.status == status
        assert message in (await r.json())["error"]
    assert lamp == []


async def test_an_unknown_thing_is_404(http, lamp):
    for method, path in (("GET", "/things/attic"), ("GET", "/things/attic/properties/on"), ("PUT", "/things/attic/properties/on")):
        async with http.request(method, path, json={"on": True}) as r:
            assert r.status == 404
            assert (await r.json())["error"] == "no thing with id 'attic'"


# ---------------------------------------------------------------- actions and events


async def test_an_action_goes_from_created_to_completed(http, lamp):
    async with http.post("/things/desk-lamp/actions", json={"blink": {"input": {"seconds": 0.05}}}) as r:
        assert r.status == 201
        created = (await r.json())["blink"]
    assert created["status"] == "created" and created["input"] == {"seconds": 0.05}
    assert created["href"].startswith("/things/desk-lamp/actions/blink/")

    async def status():
        async with http.get(created["href"]) as r:
            return (await r.json())["blink"]["status"]

    for _ in range(100):
        if await status() == "completed":
            break
        await asyncio.sleep(0.02)
    async with http.get(created["href"]) as r:
        done = (await r.json())["blink"]
    assert done["status"] == "completed" and "timeCompleted" in done
    async with http.get("/things/desk-lamp/actions/blink") as r:
        assert [a["blink"]["href"] for a in await r.json()] == [created["href"]]


async def test_a_running_action_is_cancelled_by_delete(hub, http, lamp):
    async with http.post("/things/desk-lamp/actions/blink", json={"blink": {"input": {"seconds": 30}}}) as r:
        href = (await r.json())["blink"]["href"]
    statuses = hub.things.action_status.subscribe("test")
    async with http.delete(href) as r:
        assert r.status == 204
    assert (await asyncio.wait_for(statuses.get(), 2)).status == "cancelled"
    async with http.get(href) as r:
        assert r.status == 404


@pytest.mark.parametrize("body, status, message", [
    ({"blink": {"input": {}}}, 400, "input lacks seconds"),
    ({"blink": {"input": {"seconds": 99}}}, 400, "99 is above the maximum 60 (for 'seconds')"),
    ({"dance": {}}, 404, "has no action 'dance' (it has: blink)"),
])
async def test_a_refused_action_request_says_why(http, lamp, body, status, message):
    async with http.post("/things/desk-lamp/actions", json=body) as r:
        assert r.status == status
        assert message in (await r.json())["error"]


async def test_events_are_listed_newest_last(hub, http, lamp):
    hub.things.emit_event("desk-lamp", "overheated", 71)
    hub.things.emit_event("desk-lamp", "overheated", 75)
    async with http.get("/things/desk-lamp/events/overheated") as r:
        assert [e["overheated"]["data"] for e in await r.json()] == [71, 75]


# ---------------------------------------------------------------- WebSocket


async def next_message(ws, kind: str) -> dict:
    while True:
        message = await asyncio.wait_for(ws.receive_json(), 5)
        if message["messageType"] == kind:
            return message["data"]


async def test_set_property_over_websocket_is_pushed_to_every_subscriber(hub, http, lamp):
    async with http.ws_connect("/things/desk-lamp") as one, http.ws_connect("/things/desk-lamp") as two:
        await one.send_json({"messageType": "setProperty", "data": {"on": True}})
        assert await next_message(one, "propertyStatus") == {"on": True}
        assert await next_message(two, "propertyStatus") == {"on": True}
    assert lamp == [("on", True)]


async def test_an_http_put_is_pushed_to_websocket_subscribers(http, lamp):
    async with http.ws_connect("/things/desk-lamp") as ws:
        async with http.put("/things/desk-lamp/properties/brightness", json={"brightness": 12}) as r:
            assert r.status == 200
        assert await next_message(ws, "propertyStatus") == {"brightness": 12}


async def test_a_refused_websocket_write_answers_an_error_naming_the_property(http, lamp):
    async with http.ws_connect("/things/desk-lamp") as ws:
        await ws.send_json({"messageType": "setProperty", "data": {"brightness": 500}})
        error = await next_message(ws, "error")
        assert error["status"] == "400 Bad Request"
        assert error["message"] == "thing 'desk-lamp' property 'brightness': 500 is above the maximum 100"
        await ws.send_json({"messageType": "setProperty", "data": {"power": 1}})
        assert (await next_message(ws, "error"))["message"] == "thing 'desk-lamp' property 'power' is read-only"
        await ws.send_str("not json")
        assert (await next_message(ws, "error"))["status"] == "400 Bad Request"
    assert lamp == []


async def test_actions_and_subscribed_events_over_websocket(hub, http, lamp):
    async with http.ws_connect("/things/desk-lamp") as ws:
        await ws.send_json({"messageType": "addEventSubscription", "data": {"overheated": {}}})
        await ws.send_json({"messageType": "requestAction", "data": {"blink": {"input": {"seconds": 0}}}})
        statuses = [(await next_message(ws, "actionStatus"))["blink"]["status"] for _ in range(3)]
        assert statuses == ["created", "pending", "completed"]
        await asyncio.sleep(0.05)  # the subscription is in place before the event
        hub.things.emit_event("desk-lamp", "overheated", 80)
        assert (await next_message(ws, "event"))["overheated"]["data"] == 80


def test_a_slow_websocket_client_loses_the_oldest_messages_and_counts_them():
    client = _Client("desk-lamp", ws=None)
    for i in range(SEND_QUEUE + 10):
        client.send("propertyStatus", {"brightness": i})
    assert client.dropped == 10
    assert len(client.queue) == SEND_QUEUE
    assert json.loads(client.queue[0])["data"] == {"brightness": 10}
    assert json.loads(client.queue[-1])["data"] == {"brightness": SEND_QUEUE + 9}


# ---------------------------------------------------------------- zigbee2mqtt devices


async def test_a_zigbee2mqtt_light_is_a_thing_driven_through_the_broker(mosquitto, tmp_path):  # noqa: F811
    async with running_hub(tmp_path / "data", mqtt(mosquitto, zigbee2mqtt=Z2M)) as hub, \
            aiohttp.ClientSession(base_url=hub.url) as http, mosquitto.client() as broker:
        await broker.subscribe("zigbee2mqtt/hall_light/set")
        await mosquitto.publish("zigbee2mqtt/hall_light", {
            "state": "OFF", "brightness": 30, "color": {"x": 0.31, "y": 0.33}, "linkquality": 90, "last_seen": 1,
        })
        thing = await until(lambda: "hall-light" in hub.things and hub.things.get("hall-light"), "the hall light as a thing")
        assert thing.title == "hall_light" and thing.types[0] == "Light"
        assert set(thing.properties) == {"on", "brightness", "color"}
        assert thing.values == {"on": False, "brightness": 30, "color": {"x": 0.31, "y": 0.33}}

        async with http.put("/things/hall-light/properties/on", json={"on": True}) as r:
            assert r.status == 200
        message = await asyncio.wait_for(anext(aiter(broker.messages)), 5)
        assert (str(message.topic), json.loads(message.payload)) == ("zigbee2mqtt/hall_light/set", {"state": "ON"})
        async with http.put("/things/hall-light/properties/brightness", json={"brightness": 128}) as r:
            assert r.status == 200
        message = await asyncio.wait_for(anext(aiter(broker.messages)), 5)
        assert json.loads(message.payload) == {"brightness": 128}
        async with http.put("/things/hall-light/properties/brightness", json={"brightness": 300}) as r:
            assert r.status == 400 and "above the maximum 254" in (await r.json())["error"]

        async with http.ws_connect("/things/hall-light") as ws:
            await mosquitto.publish("zigbee2mqtt/hall_light", {"state": "OFF", "brightness": 200})
            seen = {}
            while seen != {"on": False, "brightness": 200}:
                seen.update(await next_message(ws, "propertyStatus"))
        assert hub.things.get("hall-light").values["on"] is False


async def test_a_zigbee2mqtt_sensor_is_a_read_only_thing_with_units(mosquitto, tmp_path):  # noqa: F811
    async with running_hub(tmp_path / "data", mqtt(mosquitto, zigbee2mqtt=Z2M)) as hub:
        await mosquitto.publish("zigbee2mqtt/lounge_sensor", {"temperature": 21.5, "humidity": 45, "battery": 97, "occupancy": True})
        thing = await until(lambda: "lounge-sensor" in hub.things and hub.things.get("lounge-sensor"), "the sensor as a thing")
        assert set(thing.types) == {"TemperatureSensor", "MultiLevelSensor", "MotionSensor"}
        assert thing.values == {"temperature": 21.5, "humidity": 45.0, "battery": 97.0, "occupancy": True}
        assert thing.properties["temperature"].unit == "degree celsius" and thing.properties["temperature"].read_only
        with pytest.raises(ThingError, match="read-only"):
            await hub.things.set("lounge-sensor", "temperature", 30)
        await until(lambda: any(str(s) == 'temperature_celsius{device="lounge_sensor",room="lounge"}' for s in hub.store.latest()),
                    "the temperature series as before")


# ---------------------------------------------------------------- the demo


def test_the_demo_lists_its_things_and_they_can_be_switched(tmp_path):
    demo = HubProcess(tmp_path / "data", "--backfill", "1h", "--no-mqtt", command="demo")
    try:
        def get(path):
            return json.load(urllib.request.urlopen(demo.url + path, timeout=5))

        for _ in range(300):  # the meter's thing comes with its source, once the history is written
            things = {t["href"].rsplit("/", 1)[1]: t for t in get("/things")}
            if len(things) >= 11:
                break
            time.sleep(0.1)
        devices = {k for k in things if not k.startswith("rule-")}
        assert devices == {"lounge-lamp", "porch-light", "kettle-plug", "lounge", "bedroom", "entry", "main"}  # main: the Modbus meter
        assert set(things) - devices == {"rule-BondedLights", "rule-WakeUp", "rule-RainbowHeartbeat", "rule-PorchLight"}
        assert things["kettle-plug"]["properties"]["power"]["readOnly"] is True
        assert set(things["lounge"]["properties"]) == {"temperature", "humidity", "pressure"}
        assert isinstance(get("/things/lounge/properties/temperature")["temperature"], float)  # from the backfilled series
        request = urllib.request.Request(demo.url + "/things/kettle-plug/properties/on", data=b'{"on": true}', method="PUT")
        assert json.load(urllib.request.urlopen(request, timeout=5)) == {"on": True}
        assert get("/things/kettle-plug/properties") == {"on": True, "power": 2000.0}
    finally:
        demo.kill(15)


# ---------------------------------------------------------------- Modbus meters


async def test_a_modbus_meter_is_a_read_only_thing_fed_by_its_stored_readings(hub):
    from roost.model import Reading, Series, now_ms
    from roost.sources.base import SourceContext
    from roost.sources.modbus import (
        ModbusDevice,
        ModbusRegister,
        ModbusSettings,
        ModbusSource,
    )

    settings = ModbusSettings(url="tcp://127.0.0.1:1502", name="meters", devices=[
        ModbusDevice(name="Main", unit=1, profile="sdm630",
                     registers=[ModbusRegister(metric="relay", address=3, type="coil")]),
    ])
    hub.thing_service.attach("meters", ModbusSource(settings, SourceContext("meters", hub.metrics, hub.submit)))
    meter = hub.things.get("main")
    assert "EnergyMonitor" in meter.types
    assert meter.properties["voltage_L1"].unit == "volt" and meter.properties["voltage_L1"].read_only
    assert meter.properties["energy"].unit == "kilowatt hour"
    assert meter.properties["relay"].type == "boolean" and meter.properties["relay"].read_only
    await hub.ingest([
        Reading(Series.of("voltage_volts", source="meters", device="Main", phase="L2"), now_ms(), 231.5),
        Reading(Series.of("relay", source="meters", device="Main"), now_ms(), 1.0),
    ])
    await until(lambda: meter.values.get("voltage_L2") == 231.5 and meter.values.get("relay") is True, "the meter's values")
