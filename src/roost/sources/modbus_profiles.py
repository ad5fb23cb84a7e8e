"""Register maps of common energy meters, selectable by name: `profile = "sdm120"` on a `[[source.modbus.devices]]`.

Addresses are the 0-based register numbers of the request (the datasheets' "30001" is address 0x0000). Both Eastron
meters keep every measurement in a pair of input registers holding an IEEE 754 float32, high word first (ABCD).
Each register has the title its meter's thing shows ("Apparent power"; the unit comes from the metric's suffix).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProfileRegister:
    metric: str
    address: int
    title: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    title: str
    registers: tuple[ProfileRegister, ...]
    type: str = "input"
    data_type: str = "float32"
    order: str = "ABCD"


def _phases(metric: str, title: str, *addresses: int) -> tuple[ProfileRegister, ...]:
    return tuple(
        ProfileRegister(metric, a, f"{title} L{i}", (("phase", f"L{i}"),)) for i, a in enumerate(addresses, start=1)
    )


_ENERGY = (
    ProfileRegister("frequency_hertz", 0x0046, "Frequency"),
    ProfileRegister("energy_import_kwh_total", 0x0048, "Energy imported"),
    ProfileRegister("energy_export_kwh_total", 0x004A, "Energy exported"),
    ProfileRegister("energy_kwh_total", 0x0156, "Energy"),
)

SDM120 = Profile(
    "sdm120",
    "Eastron SDM120 (single phase)",
    (
        ProfileRegister("voltage_volts", 0x0000, "Voltage"),
        ProfileRegister("current_amperes", 0x0006, "Current"),
        ProfileRegister("power_watts", 0x000C, "Power"),
        ProfileRegister("apparent_power_va", 0x0012, "Apparent power"),
        ProfileRegister("reactive_power_var", 0x0018, "Reactive power"),
        ProfileRegister("power_factor", 0x001E, "Power factor"),
        *_ENERGY,
    ),
)

# The total system power carries no `phase` label, like the single-phase meter's reading: a dashboard of
# power_watts{device="..."} works for both meters (sum only {phase!=""} to add up the phases).
SDM630 = Profile(
    "sdm630",
    "Eastron SDM630 (three phase)",
    (
        *_phases("voltage_volts", "Voltage", 0x0000, 0x0002, 0x0004),
        *_phases("current_amperes", "Current", 0x0006, 0x0008, 0x000A),
        *_phases("power_watts", "Power", 0x000C, 0x000E, 0x0010),
        ProfileRegister("power_watts", 0x0034, "Power"),
        *_ENERGY,
    ),
)

PROFILES: dict[str, Profile] = {p.name: p for p in (SDM120, SDM630)}
