"""Prometheus remote-write 1.0 on the wire: a snappy-compressed protobuf `WriteRequest`.

The four messages roost needs are declared here in code (a descriptor, no generated module and no .proto file)
and handled by the `protobuf` runtime, which skips what roost does not read (metadata, exemplars, histograms):

    message WriteRequest { repeated TimeSeries timeseries = 1; }
    message TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    message Label        { string name = 1; string value = 2; }
    message Sample       { double value = 1; int64 timestamp = 2; }   // timestamp: ms since the epoch
"""

from __future__ import annotations

import math
import struct
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import cramjam
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from roost.errors import InvalidReading
from roost.model import Reading, Series

__all__ = ["MAX_DECODED_BYTES", "DecodedWrite", "TooLarge", "WireError", "decode_write_request", "encode_write_request"]

HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}
_STALE_NAN = 0x7FF0000000000002  # Prometheus' staleness marker: a NaN with this bit pattern


class WireError(ValueError):
    """A body that is not a snappy-compressed WriteRequest."""


class TooLarge(WireError):
    """A body whose snappy header declares more bytes than the receiver accepts."""


MAX_DECODED_BYTES = 32 * 1024 * 1024  # Prometheus sends a few hundred KB per request


def _declared_length(body: bytes) -> int:
    """The uncompressed length a snappy block declares in its leading varint (at most 32 bits, 5 bytes)."""
    length = 0
    for i, byte in enumerate(body[:5]):
        length |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return length
    raise WireError("the body is not snappy block-compressed (no valid length header)")


def _message_class():
    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="roost/prompb.proto", package="roost.prompb", syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, str | None]) -> None:
        m = fd.message_type.add(name=name)
        for fname, number, ftype, type_name in fields:
            label = F.LABEL_REPEATED if type_name else F.LABEL_OPTIONAL
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f".roost.prompb.{type_name}"

    message("Label", ("name", 1, F.TYPE_STRING, None), ("value", 2, F.TYPE_STRING, None))
    message("Sample", ("value", 1, F.TYPE_DOUBLE, None), ("timestamp", 2, F.TYPE_INT64, None))
    message("TimeSeries", ("labels", 1, F.TYPE_MESSAGE, "Label"), ("samples", 2, F.TYPE_MESSAGE, "Sample"))
    message("WriteRequest", ("timeseries", 1, F.TYPE_MESSAGE, "TimeSeries"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("roost.prompb.WriteRequest"))


WriteRequest = _message_class()


def encode_write_request(readings: Iterable[Reading], extra_labels: dict[str, str] | None = None) -> bytes:
    """A snappy-compressed WriteRequest of `readings`, one TimeSeries per series, samples in time order."""
    by_series: dict[Series, list[Reading]] = defaultdict(list)
    for r in readings:
        by_series[r.series].append(r)
    extra = extra_labels or {}
    req = WriteRequest()
    for series, rs in by_series.items():
        ts = req.timeseries.add()
        labels = dict(series.labels)
        labels.update(extra)
        labels["__name__"] = series.metric
        for name in sorted(labels):  # remote write wants labels sorted by name
            ts.labels.add(name=name, value=labels[name])
        rs.sort(key=lambda r: r.ts_ms)
        for r in rs:
            ts.samples.add(value=r.value, timestamp=r.ts_ms)
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


@dataclass(slots=True)
class DecodedWrite:
    readings: list[Reading] = field(default_factory=list)
    stale: int = 0  # staleness markers skipped: roost has no such thing, an absent sample says the same
    invalid: list[InvalidReading] = field(default_factory=list)  # invalid metric or label names


def decode_write_request(body: bytes, max_bytes: int = MAX_DECODED_BYTES) -> DecodedWrite:
    """Readings of a snappy-compressed WriteRequest; raises WireError for a body that is not one.

    Values and timestamps are passed on as sent: the store refuses NaN/inf and out-of-range timestamps
    (`WriteResult.refused`). Only staleness markers, which are not readings, are left out here.

    The declared uncompressed length is checked against `max_bytes` before anything is allocated: six bytes
    claiming 4 GiB must not make the receiver reserve 4 GiB (TooLarge).
    """
    declared = _declared_length(body)
    if declared > max_bytes:
        raise TooLarge(f"the body declares {declared:,} bytes uncompressed, over the limit of {max_bytes:,}")
    try:
        raw = bytes(cramjam.snappy.decompress_raw(body))
    except Exception as exc:  # cramjam raises its own DecompressionError
        raise WireError(f"the body is not snappy block-compressed ({exc})") from None
    req = WriteRequest()
    try:
        req.ParseFromString(raw)
    except DecodeError as exc:
        raise WireError(f"the body is not a remote-write WriteRequest ({exc})") from None
    out = DecodedWrite()
    for ts in req.timeseries:
        labels = {lb.name: lb.value for lb in ts.labels}
        metric = labels.pop("__name__", "")
        try:
            series = Series.of(metric, labels)
        except InvalidReading as err:
            out.invalid.append(err)
            continue
        for s in ts.samples:
            v = s.value
            if math.isnan(v) and struct.unpack("<Q", struct.pack("<d", v))[0] == _STALE_NAN:
                out.stale += 1
                continue
            out.readings.append(Reading(series, s.timestamp, v))
    return out
