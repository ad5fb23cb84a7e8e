"""Things: the registry of devices as Web Things, the Web Thing API server and client."""

from roost.things.model import (
    ActionRequest,
    ActionSpec,
    EventSpec,
    PropertyChange,
    PropertySpec,
    Thing,
    ThingError,
    ThingEvent,
    attribute_name,
)
from roost.things.registry import ThingRegistry

__all__ = [
    "ActionRequest",
    "ActionSpec",
    "EventSpec",
    "PropertyChange",
    "PropertySpec",
    "Thing",
    "ThingError",
    "ThingEvent",
    "ThingRegistry",
    "attribute_name",
]
