"""The demo's zigbee2mqtt sensor: it publishes what zigbee2mqtt publishes for a climate sensor, for roost to subscribe.

No radio here: the demo publishes `zigbee2mqtt/study_sensor` (a JSON state object) and its availability to a real
broker, and roost's MQTT source with a zigbee2mqtt mapping turns them into readings of the room "study".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import zlib
from pathlib import Path

import aiomqtt

from roost.errors import RoostError
from roost.model import Series
from roost.sources.mqtt import MqttSettings, Zigbee2MqttSettings, default_client_id, split_url

log = logging.getLogger("roost.demo")

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
SOURCE = "demo-mqtt"
BASE_TOPIC = "zigbee2mqtt"
NAME = "study_sensor"
ROOM = "study"
_PROBE_TIMEOUT_S = 1.0


def series(metric: str) -> Series:
    """A metric of the sensor as roost's zigbee2mqtt mapping stores it."""
    return Series.of(metric, device=NAME, room=ROOM)


async def probe(url: str) -> str | None:
    """None if something accepts TCP connections at the broker URL's address, else why not (one short attempt)."""
    host, port, _tls = split_url(url)
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), _PROBE_TIMEOUT_S)
    except TimeoutError:
        return f"no answer within {_PROBE_TIMEOUT_S:g} s"
    except OSError as err:  # asyncio's own text ("Connect call failed (...)") says less than the errno's
        return os.strerror(err.errno).lower() if err.errno else str(err)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


class Zigbee2MqttSensor:
    """`async with Zigbee2MqttSensor(url) as sensor:` connects (RoostError if it cannot); `publish()` sends a state.

    A broker that goes away later costs a warning and a reconnect attempt per publish, never the demo.
    """

    def __init__(self, url: str):
        self.url = url
        self._host, self._port, self._tls = split_url(url)
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: aiomqtt.Client | None = None
        self._failing = False

    async def __aenter__(self) -> Zigbee2MqttSensor:
        await self._connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._disconnect()

    def settings(self, data: Path) -> MqttSettings:
        """roost's MQTT source for this broker, with the sensor in the study, for a demo keeping its data in `data`."""
        # One client id per data directory rather than per host: two demos on one broker (tests beside a user's demo)
        # would otherwise take each other's session over and over; a restarted demo still resumes its own session.
        client_id = default_client_id(f"{SOURCE}-{zlib.crc32(str(data.resolve()).encode()):08x}")
        return MqttSettings(url=self.url, name=SOURCE, client_id=client_id,
                            zigbee2mqtt=Zigbee2MqttSettings(BASE_TOPIC, {NAME: ROOM}))

    async def _connect(self) -> None:
        why = await probe(self.url)
        if why is not None:
            raise RoostError(f"cannot reach the MQTT broker {self.url} ({why})")
        import ssl

        client = aiomqtt.Client(self._host, self._port, tls_context=ssl.create_default_context() if self._tls else None,
                                timeout=5, logger=log)
        stack = contextlib.AsyncExitStack()
        try:
            await stack.enter_async_context(client)
        except aiomqtt.MqttError as err:
            raise RoostError(f"the MQTT broker {self.url} refused the demo's sensor ({err})") from None
        self._stack, self._client = stack, client

    async def _disconnect(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(aiomqtt.MqttError, OSError):
                await stack.aclose()

    async def publish(self, state: dict[str, float]) -> None:
        """Publish the sensor's state object and `{"state":"online"}` availability, as zigbee2mqtt does."""
        try:
            if self._client is None:
                await self._connect()
            assert self._client is not None
            # QoS 0 and not retained: a broker shared with a real zigbee2mqtt keeps nothing of the demo afterwards.
            await self._client.publish(f"{BASE_TOPIC}/{NAME}/availability", b'{"state":"online"}')
            # Whole numbers as JSON integers, as zigbee2mqtt (JavaScript) writes them: "battery":87, not 87.0.
            payload = {k: int(v) if float(v).is_integer() else v for k, v in state.items()}
            await self._client.publish(f"{BASE_TOPIC}/{NAME}", json.dumps(payload).encode())
        except (aiomqtt.MqttError, RoostError) as err:
            await self._disconnect()
            if not self._failing:
                log.warning("demo sensor %s: cannot publish to %s (%s) — trying again every reading", NAME, self.url, err)
            self._failing = True
            return
        if self._failing:
            log.info("demo sensor %s: publishing to %s again", NAME, self.url)
        self._failing = False
