"""Export raw samples as CSV, Parquet or line protocol, series by series, in the shapes `imports` reads back."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from roost.errors import StoreError
from roost.selector import Selector
from roost.store.engine import SeriesData, Store
from roost.transfer.lineprotocol import format_lines

__all__ = ["ExportReport", "export"]

ExportFormat = Literal["csv", "parquet", "line"]

_ROW_GROUP_ROWS = 1 << 20  # ~18 MB before compression, 2-4 MB after zstd for typical sensor series
_EVERYTHING = Selector("{}", ())  # no matchers: every series (Selector.parse refuses this on purpose)
_CSV_STRUCTURAL = (",", '"', "\n", "\r")


@dataclass(slots=True)
class ExportReport:
    samples: int = 0
    series: int = 0


def export(
    store: Store,
    selector: Selector | None,
    start_ms: int,
    end_ms: int,
    fmt: ExportFormat,
    out: Path | str | BinaryIO | TextIO,
) -> ExportReport:
    """Write raw samples with start_ms <= ts < end_ms of the selected (default: all) series to a file or stream.

    CSV: header `metric,<every label name, sorted>,timestamp,value`, ms timestamps, an empty cell for an absent
    label. Parquet: the same columns, labels and metric dictionary-encoded, timestamp as timestamp[ms, UTC], zstd.
    Line protocol: see `format_lines` (ns timestamps). Memory holds one series at a time.
    """
    if fmt not in ("csv", "parquet", "line"):
        raise StoreError(f"unknown export format {fmt!r}; use csv, parquet or line")
    selector = selector or _EVERYTHING
    labels = sorted({name for _sid, series in store.series(selector) for name, _v in series.labels})
    report = ExportReport()

    def counted(data: Iterator[SeriesData]) -> Iterator[SeriesData]:
        for sd in data:
            report.series += 1
            report.samples += len(sd.ts)
            yield sd

    data = counted(store.read(selector, start_ms, end_ms))
    with _binary(out) as sink:
        if fmt == "parquet" and isinstance(sink, _TextSink):
            raise StoreError("Parquet is binary: write it to a file or a binary stream, not a text stream")
        if fmt == "csv":
            _write_csv(data, labels, sink)
        elif fmt == "parquet":
            _write_parquet(data, labels, sink)
        else:
            for sd in data:
                sink.write("".join(format_lines([sd])).encode())
    return report


def _write_csv(data: Iterator[SeriesData], labels: list[str], sink: BinaryIO) -> None:
    sink.write((",".join(["metric", *labels, "timestamp", "value"]) + "\n").encode())
    for sd in data:
        own = sd.series.label_dict
        cells = [sd.series.metric, *(own.get(name, "") for name in labels)]
        # Arrow's "needed" quoting quotes every string cell; unquoted CSV is friendlier when nothing needs quotes.
        plain = not any(c in cell for cell in cells for c in _CSV_STRUCTURAL)
        n = len(sd.ts)
        table = pa.table(
            [*(pa.repeat(cell, n) for cell in cells), pa.array(sd.ts, pa.int64()), pa.array(sd.values, pa.float64())],
            names=["metric", *labels, "timestamp", "value"],
        )
        pacsv.write_csv(
            table, sink, pacsv.WriteOptions(include_header=False, quoting_style="none" if plain else "needed")
        )


def _write_parquet(data: Iterator[SeriesData], labels: list[str], sink: BinaryIO) -> None:
    text = pa.dictionary(pa.int32(), pa.string())
    schema = pa.schema(
        [
            pa.field("metric", text, nullable=False),
            *(pa.field(name, text) for name in labels),
            pa.field("timestamp", pa.timestamp("ms", "UTC"), nullable=False),
            pa.field("value", pa.float64(), nullable=False),
        ]
    )
    pending: list[pa.Table] = []
    rows = 0
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for sd in data:
            own = sd.series.label_dict
            n = len(sd.ts)
            zeros = pa.array(np.zeros(n, np.int32))
            columns = [pa.DictionaryArray.from_arrays(zeros, pa.array([sd.series.metric]))]
            for name in labels:
                if name in own:
                    columns.append(pa.DictionaryArray.from_arrays(zeros, pa.array([own[name]])))
                else:
                    columns.append(pa.nulls(n, text))
            columns.append(pa.array(sd.ts, pa.int64()).cast(pa.timestamp("ms", "UTC")))
            columns.append(pa.array(sd.values, pa.float64()))
            pending.append(pa.Table.from_arrays(columns, schema=schema))
            rows += n
            if rows >= _ROW_GROUP_ROWS:
                writer.write_table(pa.concat_tables(pending).unify_dictionaries(), row_group_size=rows)
                pending, rows = [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending).unify_dictionaries(), row_group_size=max(rows, 1))


class _TextSink(io.RawIOBase):
    """Bytes in, text out: for a text stream without a binary buffer (io.StringIO)."""

    def __init__(self, text: TextIO):
        self._text = text
        self._position = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def write(self, data) -> int:
        self._text.write(bytes(data).decode())
        self._position += len(data)
        return len(data)


@contextmanager
def _binary(out: Path | str | BinaryIO | TextIO) -> Iterator[BinaryIO]:
    if isinstance(out, (str, Path)):
        with open(out, "wb") as file:
            yield file
    elif isinstance(out, io.TextIOBase):
        out.flush()
        buffer = getattr(out, "buffer", None)
        if buffer is not None:
            yield buffer
            buffer.flush()
        else:
            yield _TextSink(out)
    else:
        yield out
