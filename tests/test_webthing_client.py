"""The gateway client against the reference `webthing` server (PyPI webthing 0.15) in a subprocess on 127.0.0.1.

The server is started with the LoopbackServer recipe (docs: /work/shared/PEERS.md): never `WebThingServer.start()`,
which would announce over mDNS and listen on every interface.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time

import aiohttp
import pytest
from conftest import free_port, hub_settings, wait_port

from roost.hub import Hub
from roost.secret import Secret
from roost.sources.base import SourceContext, supervise
from roost.things import ThingError
from roost.things.client import GatewayClient, GatewaySettings

SERVER = textwrap.dedent('''
    import sys
    import tornado.ioloop
    from webthing import MultipleThings, Property, Thing, Value, WebThingServer

    class LoopbackServer(WebThingServer):
        def start(self):
            self.server.listen(self.port, address="127.0.0.1")
            tornado.ioloop.IOLoop.current().start()

    def light(n):
        t = Thing(f"urn:dev:ops:lab-light-{n}", f"Lab Light {n}", ["OnOffSwitch", "Light", "ColorControl"], "A dimmable colour light")
        t.add_property(Property(t, "on", Value(False), metadata={"@type": "OnOffProperty", "title": "On", "type": "boolean"}))
        t.add_property(Property(t, "brightness", Value(50), metadata={
            "@type": "BrightnessProperty", "title": "Brightness", "type": "integer", "minimum": 0, "maximum": 100, "unit": "percent"}))
        t.add_property(Property(t, "color", Value("#ffffff"), metadata={"@type": "ColorProperty", "title": "Color", "type": "string"}))
        return t

    sensor = Thing("urn:dev:ops:lab-sensor", "Lab Sensor", ["MultiLevelSensor", "TemperatureSensor"], "A sensor")
    level = Value(40.0)
    temperature = Value(20.0)
    sensor.add_property(Property(sensor, "level", level, metadata={
        "@type": "LevelProperty", "title": "Level", "type": "number", "minimum": 0, "maximum": 100, "unit": "percent", "readOnly": True}))
    sensor.add_property(Property(sensor, "temperature", temperature, metadata={
        "@type": "TemperatureProperty", "title": "Temperature", "type": "number", "unit": "degree celsius", "readOnly": True}))

    def tick():
        temperature.notify_of_external_update(round(temperature.get() + 0.5, 1))

    tornado.ioloop.PeriodicCallback(tick, 200).start()
    things = MultipleThings([light(1), light(2), sensor], "Lab")
    LoopbackServer(things, port=int(sys.argv[1]), hostname="127.0.0.1", base_path="/things").start()
''')


class WebThingLab:
    """Two dimmable colour lights (things/0, things/1) and a sensor (things/2) whose temperature rises 0.5 per 200 ms."""

    def __init__(self, directory):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.script = directory / "lab_server.py"
        self.script.write_text(SERVER)
        self.log = directory / "lab_server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([sys.executable, str(self.script), str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc, self.log, timeout=20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    async def get(self, path: str):
        async with aiohttp.ClientSession() as s, s.get(self.url + path) as r:
            return r.status, await r.json()

    async def put(self, thing: int, name: str, value) -> int:
        async with aiohttp.ClientSession() as s, s.put(f"{self.url}/things/{thing}/properties/{name}", json={name: value}) as r:
            return r.status


@pytest.fixture
def lab(tmp_path):
    server = WebThingLab(tmp_path)
    server.start()
    yield server
    server.stop()


async def until(condition, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def mirrored(lab, tmp_path):
    """A hub mirroring the lab as gateway "lab" (things lab-0, lab-1, lab-2)."""
    async with Hub(hub_settings(tmp_path / "data")) as hub:
        gateway = GatewaySettings(name="lab", url=lab.url, token=Secret("test-token"))
        ctx = SourceContext("gateway-lab", hub.metrics, hub.submit)
        hub.spawn(supervise(lambda: GatewayClient(gateway, ctx, hub.things), ctx, max_backoff_s=1), "gateway-lab")
        await until(lambda: all(f"lab-{i}" in hub.things for i in range(3)), "the lab's things in the registry")
        await until(lambda: all(len(hub.things.get(f"lab-{i}").values) == len(hub.things.get(f"lab-{i}").properties)
                                for i in range(3)), "the lab's property values")
        yield hub


def latest(hub: Hub, series: str):
    return {str(s): v for s, (_t, v) in hub.store.latest().items()}.get(series)


async def test_remote_things_join_the_registry_with_their_descriptions(mirrored):
    light, sensor = mirrored.things.get("lab-0"), mirrored.things.get("lab-2")
    assert light.title == "Lab Light 1"
    assert set(light.types) == {"OnOffSwitch", "Light", "ColorControl"}
    assert light.properties["brightness"].maximum == 100 and light.properties["brightness"].type == "integer"
    assert light.values == {"on": False, "brightness": 50, "color": "#ffffff"}
    assert sensor.properties["temperature"].read_only and sensor.properties["temperature"].unit == "degree celsius"


async def test_setting_a_mirrored_light_changes_the_remote_light(mirrored, lab):
    changes = mirrored.things.changes.subscribe("test")
    assert await mirrored.things.set("lab-0", "on", True) is True
    # the gateway's propertyStatus echo may arrive before the PUT returns: it is still the writer's change
    assert [(c.name, c.new, c.origin) for c in changes.get_nowait_many(10)] == [("on", True, "api")]
    assert await mirrored.things.set("lab-0", "brightness", 80) is True
    await mirrored.things.set("lab-0", "color", "#ff8800")
    assert (await lab.get("/things/0/properties"))[1] == {"on": True, "brightness": 80, "color": "#ff8800"}
    assert (await lab.get("/things/1/properties/on"))[1] == {"on": False}  # the other light is untouched


async def test_the_remote_description_limits_what_roost_sends(mirrored, lab):
    with pytest.raises(ThingError, match="'brightness': 150 is above the maximum 100"):
        await mirrored.things.set("lab-1", "brightness", 150)
    with pytest.raises(ThingError, match="'temperature' is read-only"):
        await mirrored.things.set("lab-2", "temperature", 5)
    assert (await lab.get("/things/1/properties/brightness"))[1] == {"brightness": 50}


async def test_a_remote_change_becomes_a_registry_change_and_a_reading(mirrored, lab):
    changes = mirrored.things.changes.subscribe("test")
    assert await lab.put(1, "brightness", 33) == 200
    await until(lambda: mirrored.things.get("lab-1").values["brightness"] == 33, "the remote brightness in the registry")
    seen = [changes.queue.get_nowait() for _ in range(changes.queue.qsize())]
    assert any(c.thing_id == "lab-1" and c.name == "brightness" and c.new == 33 and c.origin == "device" for c in seen)
    assert await until(lambda: latest(mirrored, 'brightness{gateway="lab",thing="lab-1"}') == 33, "the brightness series")
    assert await lab.put(1, "on", True) == 200
    assert await until(lambda: latest(mirrored, 'on{gateway="lab",thing="lab-1"}') == 1.0, "the on series (as 1)")


async def test_sensor_updates_pushed_by_the_remote_become_series(mirrored):
    first = await until(lambda: latest(mirrored, 'temperature{gateway="lab",thing="lab-2"}'), "a temperature reading")
    await until(lambda: (latest(mirrored, 'temperature{gateway="lab",thing="lab-2"}') or 0) >= first + 1, "a rising temperature")
    assert mirrored.things.get("lab-2").values["temperature"] >= first + 1


async def test_the_client_follows_the_gateway_again_after_it_restarts(mirrored, lab):
    lab.stop()
    await asyncio.sleep(0.3)
    lab.start()  # the same port; the restarted lights are back to their defaults
    assert await lab.put(0, "brightness", 7) == 200
    await until(lambda: mirrored.things.get("lab-0").values["brightness"] == 7, "the change after the restart", timeout=20)
    await mirrored.things.set("lab-0", "on", True)
    assert (await lab.get("/things/0/properties/on"))[1] == {"on": True}
