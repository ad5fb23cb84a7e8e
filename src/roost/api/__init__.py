"""The hub's HTTP surface: JSON API, ingest endpoints, /metrics and the dashboard (`roost.api.app.create_app`).

Nothing is imported here, so modules that only need `roost.api.responses` (a source's HTTP handler) do not
pull in the whole app.
"""
