"""Things: the registry of devices as Web Things, the Web Thing API server and client."""

from roost.things.model import (
    ActionSpec,
    EventSpec,
    PropertyChange,
    PropertySpec,
    Thing,
    ThingError,
    attribute_name,
)
from roost.things.registry import ThingRegistry

__all__ = [
    "ActionSpec",
    "EventSpec",
    "PropertyChange",
    "PropertySpec",
    "Thing",
    "ThingError",
    "ThingRegistry",
    "attribute_name",
]
