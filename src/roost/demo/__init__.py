"""`roost demo`: a simulated house so a new user sees roost working with nothing to install.

Rooms lounge, bedroom and entry report temperature (a diurnal cycle with a per-room offset), humidity (a random
walk) and pressure (one slow variation shared by the house) straight to the hub. The energy meter is a simulated
Eastron SDM120 on a pymodbus server on 127.0.0.1, polled by roost's real Modbus source. When an MQTT broker is
reachable, a zigbee2mqtt-style sensor in a fourth room, the study, publishes to it and roost's real MQTT source reads
it back. History is backfilled first under the same series, then live readings flow every 15 s.

The house is also a set of things (docs/things.md): see `roost.demo.things`; the meter and the study's sensor are
things made by their sources.
"""

from roost.demo.house import INTERVAL_MS, ROOMS, House, backfill
from roost.demo.live import Demo, describe, run_live
from roost.demo.sensor import DEFAULT_BROKER
from roost.demo.things import add_things

__all__ = ["DEFAULT_BROKER", "INTERVAL_MS", "ROOMS", "Demo", "House", "add_things", "backfill", "describe", "run_live"]
