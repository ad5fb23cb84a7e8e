import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.errors import InvalidReading
from roost.model import Reading, Series
from roost.store import SeriesData
from roost.transfer.lineprotocol import LineError, format_lines, parse_lines

NOW = 1_700_000_000_000


def parse(text: str, precision: str = "ns"):
    return parse_lines(text, precision=precision, default_ts_ms=NOW)


def test_field_value_is_the_measurement_and_other_fields_are_suffixed():
    result = parse("temperature,room=lounge value=21.5,humidity=40i 1700000000123000000")
    assert sorted(result.readings, key=lambda r: r.series.metric) == [
        Reading(Series.of("temperature", room="lounge"), 1_700_000_000_123, 21.5),
        Reading(Series.of("temperature_humidity", room="lounge"), 1_700_000_000_123, 40.0),
    ]
    assert result.errors == []


def test_booleans_and_integers_become_floats_and_escaped_tags_unescape():
    result = parse(r"switch,name=porch\ light\,left on=true,count=3i,off=F 1000000")
    values = {r.series.metric: r.value for r in result.readings}
    assert values == {"switch_on": 1.0, "switch_count": 3.0, "switch_off": 0.0}
    assert {r.series.label_dict["name"] for r in result.readings} == {"porch light,left"}


def test_missing_timestamp_takes_the_default():
    assert parse("boiler value=1").readings == [Reading(Series.of("boiler"), NOW, 1.0)]


@pytest.mark.parametrize(
    ("precision", "timestamp", "ms"),
    [
        ("ns", "1700000000123456789", 1_700_000_000_123),
        ("us", "1700000000123456", 1_700_000_000_123),
        ("u", "1700000000123456", 1_700_000_000_123),
        ("ms", "1700000000123", 1_700_000_000_123),
        ("s", "1700000000", 1_700_000_000_000),
        ("m", "28333333", 28_333_333 * 60_000),
        ("h", "472222", 472_222 * 3_600_000),
        ("ns", "1500999", 1),  # floor, so a sample never moves forward in time
    ],
)
def test_precision_converts_to_milliseconds(precision, timestamp, ms):
    assert parse(f"m value=1 {timestamp}", precision).readings[0].ts_ms == ms


@pytest.mark.parametrize(
    "timestamp, problem",
    [("-1500000", "before 1970"), ("4102444800000000000", "more than 2 days ahead")],  # the second is 2100
)
def test_a_timestamp_outside_1970_to_two_days_ahead_is_refused_naming_the_line(timestamp, problem):
    result = parse(f"ok value=1 1000000\nm value=1 {timestamp}\n", "ns")
    assert [r.series.metric for r in result.readings] == ["ok"]
    assert [(e.line, e.reason) for e in result.errors] == [(2, "bad_timestamp")]
    assert problem in result.errors[0].message and "m value=1" in result.errors[0].message


def test_an_unknown_precision_is_refused():
    with pytest.raises(InvalidReading) as info:
        parse("m value=1", "weeks")
    assert info.value.reason == "bad_precision"


def test_bad_lines_are_reported_by_number_and_reason_and_the_rest_parses():
    body = "\n".join(
        [
            "# a comment",
            "good value=1 1000000",
            "",
            "broken value= 2000000",
            "bad-name value=1",
            "m,__reserved=x value=1",
            "m note=\"hello\"",
            "m value=NaN",
            "m value=-Inf",
            "good value=2 3000000",
        ]
    )
    result = parse(body)
    assert [(r.ts_ms, r.value) for r in result.readings] == [(1, 1.0), (3, 2.0)]
    assert [(e.line, e.reason) for e in result.errors] == [
        (4, "syntax"),
        (5, "invalid_metric_name"),
        (6, "invalid_label_name"),
        (7, "non_numeric"),
        (8, "nan"),
        (9, "inf"),
    ]
    assert "line 4:" in str(result.errors[0]) and "broken value=" in result.errors[0].message


def test_a_bad_field_is_reported_while_the_good_fields_of_its_line_are_kept():
    result = parse('weather,site=roof temp=3.5,state="sunny",wind=nan,gust=7i 60000000000')
    assert {r.series.metric: r.value for r in result.readings} == {"weather_temp": 3.5, "weather_gust": 7.0}
    assert sorted((e.line, e.reason) for e in result.errors) == [(1, "nan"), (1, "non_numeric")]


def test_windows_line_endings_are_accepted():
    result = parse("a value=1 1000000\r\nb value=2 2000000\r\n")
    assert [r.series.metric for r in result.readings] == ["a", "b"] and result.errors == []


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_lines_never_raises_on_arbitrary_text(text):
    result = parse(text)
    assert all(isinstance(e, LineError) and e.line >= 1 for e in result.errors)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["=", ",", " ", "value", "m", "x", "1", "1i", "t", '"', "\\", "nan", "\n", "#"]),
        ).map(lambda t: t[0]),
        max_size=40,
    )
)
def test_parse_lines_never_raises_on_line_protocol_fragments(parts):
    parse("".join(parts))


def test_format_lines_writes_ns_timestamps_that_parse_back():
    data = [
        SeriesData(
            Series.of("temperature", room="living room", note="a,b=c"),
            np.array([1_700_000_000_000, 1_700_000_000_001]),
            np.array([21.5, 0.1 + 0.2]),
        ),
        SeriesData(Series.of("power_watts"), np.array([5]), np.array([1e20])),
    ]
    lines = list(format_lines(data))
    assert lines[0] == "temperature,note=a\\,b\\=c,room=living\\ room value=21.5 1700000000000000000\n"
    back = parse("".join(lines)).readings
    assert back == [
        Reading(data[0].series, 1_700_000_000_000, 21.5),
        Reading(data[0].series, 1_700_000_000_001, 0.1 + 0.2),
        Reading(data[1].series, 5, 1e20),
    ]
