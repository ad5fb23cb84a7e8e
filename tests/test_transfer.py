import csv
import io
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from roost.errors import ImportFormatError
from roost.model import Series
from roost.selector import Selector
from roost.store import Store
from roost.transfer.exports import export
from roost.transfer.imports import import_file

DAY = 86_400_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "data", writer=True) as s:
        yield s


def samples(store: Store, selector: str = '{__name__=~".+"}', start: int = 0, end: int = 2**62):
    """Everything the store answers, as {series: [(ts, value), ...]}."""
    return {
        sd.series: list(zip(sd.ts.tolist(), sd.values.tolist()))
        for sd in store.read(Selector.parse(selector), start, end)
    }


def write_text(path, text):
    path.write_text(text)
    return path


# ----------------------------------------------------------------- CSV


def test_csv_import_lands_in_the_store_and_answers_queries(store, tmp_path):
    path = write_text(
        tmp_path / "readings.csv",
        "metric,room,sensor,timestamp,value\n"
        f"temperature_celsius,lounge,t1,{T0},21.5\n"
        f"temperature_celsius,lounge,t1,{T0 + 60_000},21.75\n"
        f"temperature_celsius,porch,,{T0},3\n"
        f"humidity_percent,,,{T0},55\n",
    )
    report = import_file(store, path)
    assert (report.samples, report.series, report.skipped_lines, report.errors) == (4, 3, 0, [])
    assert samples(store, 'temperature_celsius{room="lounge"}') == {
        Series.of("temperature_celsius", room="lounge", sensor="t1"): [(T0, 21.5), (T0 + 60_000, 21.75)]
    }
    assert samples(store, "humidity_percent") == {Series.of("humidity_percent"): [(T0, 55.0)]}
    assert Series.of("temperature_celsius", room="porch") in samples(store)


def test_csv_bad_rows_are_reported_by_line_and_the_rest_imported(store, tmp_path):
    path = write_text(
        tmp_path / "readings.csv",
        "metric,room,timestamp,value\n"  # 1
        f"t,a,{T0},1\n"  # 2
        f"t,a,{T0 + 1},warm\n"  # 3 non-numeric
        "\n"  # 4 blank: ignored
        f"t,a,{T0 + 2}\n"  # 5 too few columns
        f"t,a,yesterday,4\n"  # 6 bad timestamp
        f"t,a,{T0 + 4},5,extra\n"  # 7 too many columns
        f"bad-metric,a,{T0 + 5},6\n"  # 8 invalid metric name
        f"t,a,{T0 + 6},nan\n"  # 9 NaN
        f"t,a,{T0 + 7},-inf\n"  # 10 infinity
        f"t,a,{T0 + 8},9\n"  # 11
        "t,a,4102444800000,12\n"  # 12 the year 2100: a device with a wrong clock
        "t,a,-1,13\n",  # 13 before 1970
    )
    report = import_file(store, path)
    assert sorted((e.line, e.reason) for e in report.errors) == [
        (3, "non_numeric"),
        (5, "column_count"),
        (6, "bad_timestamp"),
        (7, "column_count"),
        (8, "invalid_metric_name"),
        (9, "nan"),
        (10, "inf"),
        (12, "bad_timestamp"),
        (13, "bad_timestamp"),
    ]
    assert report.skipped_lines == 9
    assert "more than 2 days ahead" in next(e.message for e in report.errors if e.line == 12)
    assert samples(store) == {Series.of("t", room="a"): [(T0, 1.0), (T0 + 8, 9.0)]}
    assert "warm" in next(e.message for e in report.errors if e.line == 3)


def test_csv_timestamps_may_be_rfc3339(store, tmp_path):
    path = write_text(
        tmp_path / "readings.csv",
        "metric,timestamp,value\n"
        "t,2024-01-01T00:00:00Z,1\n"
        "t,2024-01-01T01:00:00.250+01:00,2\n"
        f"t,{T0 + 2000},3\n"
        "t,2024-01-01T00:00:03z,4\n"
        "t,2024-01-01T00:00:04,5\n",  # no offset: refused rather than guessed
    )
    report = import_file(store, path)
    assert [(e.line, e.reason) for e in report.errors] == [(6, "bad_timestamp")]
    assert samples(store) == {Series.of("t"): [(T0, 1.0), (T0 + 250, 2.0), (T0 + 2000, 3.0), (T0 + 3000, 4.0)]}


def test_duplicate_timestamps_keep_the_last_value(store, tmp_path):
    write_text(tmp_path / "a.csv", f"metric,timestamp,value\nt,{T0},1\nt,{T0},2\nt,{T0 + 1},3\nt,{T0},4\n")
    import_file(store, tmp_path / "a.csv")
    assert samples(store) == {Series.of("t"): [(T0, 4.0), (T0 + 1, 3.0)]}
    write_text(tmp_path / "b.lp", f"t value=5 {T0 * 1_000_000}\n")
    import_file(store, tmp_path / "b.lp")
    assert samples(store) == {Series.of("t"): [(T0, 5.0), (T0 + 1, 3.0)]}


def test_a_csv_header_that_is_not_metric_labels_timestamp_value_is_refused(store, tmp_path):
    path = write_text(tmp_path / "x.csv", f"name,time,value\nt,{T0},1\n")
    with pytest.raises(ImportFormatError, match="metric,<label columns...>,timestamp,value"):
        import_file(store, path)


def test_errors_keep_the_first_hundred_and_count_every_skipped_line(store, tmp_path):
    rows = "".join(f"t,{T0 + i},{'x' if i % 2 else i}\n" for i in range(1000))
    report = import_file(store, write_text(tmp_path / "many.csv", "metric,timestamp,value\n" + rows))
    assert report.skipped_lines == 500 and report.samples == 500
    assert len(report.errors) == 100 and report.errors[0].line == 3 and report.errors[-1].line == 201


def test_line_numbers_stay_right_across_csv_blocks(store, tmp_path, monkeypatch):
    monkeypatch.setattr("roost.transfer.imports._CSV_BLOCK", 4096)
    lines = ["metric,timestamp,value"]
    for i in range(5000):
        if i == 1200:
            lines.append("t,1,2,3")  # wrong column count
        lines.append(f"t,{T0 + i},{'bad' if i in (10, 3000, 4999) else i}")
    report = import_file(store, write_text(tmp_path / "blocks.csv", "\n".join(lines) + "\n"))
    bad_lines = [lines.index(f"t,{T0 + i},bad") + 1 for i in (10, 3000, 4999)]
    assert sorted((e.line, e.reason) for e in report.errors) == sorted(
        [(1202, "column_count"), *((n, "non_numeric") for n in bad_lines)]
    )
    assert report.samples == 4997


def test_compressed_csv_is_read_by_its_suffix(store, tmp_path):
    import gzip

    path = tmp_path / "r.csv.gz"
    path.write_bytes(gzip.compress(f"metric,timestamp,value\nt,{T0},1\n".encode()))
    assert import_file(store, path).samples == 1


# ----------------------------------------------------------------- line protocol and Parquet


def test_line_protocol_import_reports_bad_lines_and_keeps_good_fields(store, tmp_path):
    path = write_text(
        tmp_path / "push.lp",
        f"weather,site=roof temp=3.5,state=\"sunny\" {T0 * 1_000_000}\n"
        "weather,site=roof temp=\n"
        f"boiler value=60 {(T0 + 1000) * 1_000_000}\n",
    )
    report = import_file(store, path)
    assert sorted((e.line, e.reason) for e in report.errors) == [(1, "non_numeric"), (2, "syntax")]
    assert report.skipped_lines == 1 and report.samples == 2
    assert samples(store) == {
        Series.of("weather_temp", site="roof"): [(T0, 3.5)],
        Series.of("boiler"): [(T0 + 1000, 60.0)],
    }


def test_line_numbers_stay_right_across_line_protocol_blocks(store, tmp_path, monkeypatch):
    monkeypatch.setattr("roost.transfer.imports._LINE_BLOCK", 1000)
    lines = [f"m value={i} {(T0 + i) * 1_000_000}" for i in range(3000)]
    lines[2500] = "m value=oops"
    report = import_file(store, write_text(tmp_path / "big.lp", "\n".join(lines)))  # no final newline
    assert [(e.line, e.reason) for e in report.errors] == [(2501, "syntax")]
    assert report.samples == 2999


def test_parquet_with_int_timestamps_and_nullable_labels_imports(store, tmp_path):
    table = pa.table(
        {
            "metric": ["power_watts", "power_watts", "power_watts", "bad name"],
            "circuit": ["oven", None, "oven", "x"],
            "timestamp": pa.array([T0, T0, T0 + 10, T0], pa.int64()),
            "value": [2000.0, 150.0, None, 1.0],
        }
    )
    pq.write_table(table, tmp_path / "p.parquet")
    report = import_file(store, tmp_path / "p.parquet")
    assert sorted((e.line, e.reason) for e in report.errors) == [(3, "non_numeric"), (4, "invalid_metric_name")]
    assert samples(store) == {
        Series.of("power_watts", circuit="oven"): [(T0, 2000.0)],
        Series.of("power_watts"): [(T0, 150.0)],
    }


def test_an_unknown_suffix_needs_an_explicit_format(store, tmp_path):
    path = write_text(tmp_path / "data.bin", f"t value=1 {T0 * 1_000_000}\n")
    with pytest.raises(ImportFormatError, match="suffix"):
        import_file(store, path)
    assert import_file(store, path, "line").samples == 1


# ----------------------------------------------------------------- export and round trips


def fill(store: Store) -> dict:
    """A store with awkward label values, absent labels, several days and values that stress float printing."""
    rng = np.random.default_rng(7)
    series = [
        Series.of("temperature_celsius", room="lounge", floor="0"),
        Series.of("temperature_celsius", room='porch "front", left', floor="0"),
        Series.of("temperature_celsius", room="attic\\loft"),
        Series.of("power_watts", circuit="oven=1 two"),
        Series.of("uptime_seconds"),
    ]
    for i, s in enumerate(series):
        ts = T0 + np.sort(rng.choice(3 * DAY, size=500 + 100 * i, replace=False))
        values = rng.normal(20, 50, len(ts)) * 10.0 ** rng.integers(-8, 12, len(ts))
        values[:3] = [0.0, -0.0, 1 / 3]
        store.write_bulk(s, ts, values)
    return samples(store)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "line"])
def test_an_export_reimported_gives_back_identical_samples(fmt, tmp_path):
    with Store.open(tmp_path / "source", writer=True) as source:
        original = fill(source)
        report = export(source, None, 0, 2**62, fmt, tmp_path / f"out.{fmt}")
    assert report.series == 5 and report.samples == sum(map(len, original.values()))
    with Store.open(tmp_path / "target", writer=True) as target:
        imported = import_file(target, tmp_path / f"out.{fmt}", fmt)
        assert imported.errors == [] and imported.samples == report.samples
        back = samples(target)
    assert back.keys() == original.keys()
    for series, pairs in original.items():
        assert back[series] == pairs, series
        assert [np.signbit(v) for _t, v in back[series]] == [np.signbit(v) for _t, v in pairs]


def test_export_limits_to_the_selector_and_range(store, tmp_path):
    fill(store)
    out = io.BytesIO()
    report = export(store, Selector.parse('temperature_celsius{floor="0"}'), T0 + DAY, T0 + 2 * DAY, "csv", out)
    header, *rows = out.getvalue().decode().splitlines()
    assert header == "metric,floor,room,timestamp,value"
    assert report.series == 2 and len(rows) == report.samples > 0
    cells = list(csv.reader(rows))
    assert all(T0 + DAY <= int(row[3]) < T0 + 2 * DAY for row in cells)
    assert {tuple(row[:3]) for row in cells} == {
        ("temperature_celsius", "0", "lounge"),
        ("temperature_celsius", "0", 'porch "front", left'),
    }
    assert rows[0].startswith("temperature_celsius,0,lounge,")  # quotes only where a cell needs them


def test_parquet_export_is_zstd_with_dictionary_labels_and_ms_timestamps(store, tmp_path):
    fill(store)
    export(store, None, 0, 2**62, "parquet", tmp_path / "out.parquet")
    file = pq.ParquetFile(tmp_path / "out.parquet")
    assert file.schema_arrow.names == ["metric", "circuit", "floor", "room", "timestamp", "value"]
    assert file.schema_arrow.field("timestamp").type == pa.timestamp("ms", "UTC")
    assert pa.types.is_dictionary(file.schema_arrow.field("room").type)
    assert file.metadata.row_group(0).column(0).compression == "ZSTD"


def test_export_to_a_text_stream_such_as_stdout(store, monkeypatch):
    store.write_bulk(Series.of("t", room="a"), np.array([T0]), np.array([1.5]))
    text = io.StringIO()
    export(store, None, 0, 2**62, "line", text)
    assert text.getvalue() == f"t,room=a value=1.5 {T0 * 1_000_000}\n"
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", stdout)
    export(store, None, 0, 2**62, "csv", sys.stdout)
    assert stdout.buffer.getvalue().decode() == f"metric,room,timestamp,value\nt,a,{T0},1.5\n"


def test_import_beside_a_running_hub_that_holds_the_store(tmp_path):
    with Store.open(tmp_path / "data", writer=True) as hub:
        write_text(tmp_path / "r.csv", f"metric,timestamp,value\nt,{T0},1\nt,{T0 + 1},2\n")
        with Store.open(tmp_path / "data", writer=False) as tool:
            assert import_file(tool, tmp_path / "r.csv").samples == 2
        assert samples(hub) == {Series.of("t"): [(T0, 1.0), (T0 + 1, 2.0)]}
