"""What goes wrong with rules, as part of roost's one error hierarchy."""

from roost.errors import RoostError


class RuleError(RoostError):
    """A rule cannot be loaded or run: a syntax error, an unknown thing, a bad trigger spec."""


class UnknownThing(RuleError, AttributeError):
    """A rule named a thing the registry does not have (an AttributeError too, so `hasattr` works)."""


class UnknownProperty(RuleError, AttributeError):
    """A rule read or wrote a property its thing does not have."""
