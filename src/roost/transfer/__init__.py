"""Moving data in and out of the store: Influx line protocol, CSV and Parquet files."""

from roost.transfer.exports import ExportReport, export
from roost.transfer.imports import ImportReport, import_file
from roost.transfer.lineprotocol import LineError, ParseResult, format_lines, parse_lines

__all__ = [
    "ExportReport",
    "ImportReport",
    "LineError",
    "ParseResult",
    "export",
    "format_lines",
    "import_file",
    "parse_lines",
]
