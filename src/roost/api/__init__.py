"""The hub's HTTP surface: JSON API, ingest endpoints, /metrics and the status page."""

from roost.api.app import create_app

__all__ = ["create_app"]
