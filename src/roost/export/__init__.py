"""Streaming stored readings out: Prometheus remote write and Influx line protocol, through an on-disk buffer."""

from roost.export.buffer import Batch, DiskBuffer
from roost.export.prompb import WireError, decode_write_request, encode_write_request
from roost.export.settings import ExportSettings, InfluxTarget, RemoteWriteTarget, parse_size


def start_exporters(hub) -> None:
    """Start one exporter per `[[export.*]]` target of `hub` (imported late: it needs aiohttp and the bus)."""
    from roost.export.exporter import start_exporters as start

    start(hub)


__all__ = [
    "Batch", "DiskBuffer", "ExportSettings", "InfluxTarget", "RemoteWriteTarget", "WireError",
    "decode_write_request", "encode_write_request", "parse_size", "start_exporters",
]
