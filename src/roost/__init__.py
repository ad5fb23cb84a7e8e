"""roost: a self-hosted, local-first home telemetry and automation hub."""

__version__ = "0.1.0"
