"""The chunk codec gives back exactly what it was given, small, and fails loudly on damage."""
import importlib.util
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.errors import StoreError
from roost.store import codec
from roost.store.codec import Decoded, decode_chunk, decode_timestamps, describe_chunk, encode_chunk

DAY_MS = 86_400_000
MIDNIGHT = 1_700_006_400_000  # 2023-11-15T00:00:00Z
EVERY_15_S = MIDNIGHT + np.arange(5760, dtype=np.int64) * 15_000


def round_trip(ts, values) -> tuple[np.ndarray, np.ndarray]:
    ts = np.asarray(ts, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    blob = encode_chunk(ts, values)
    back_ts, back_values = decode_chunk(blob)
    assert back_ts.dtype == np.int64 and back_values.dtype == np.float64
    np.testing.assert_array_equal(back_ts, ts)
    np.testing.assert_array_equal(decode_timestamps(blob), ts)
    # Bit patterns, not ==: -0.0 == 0.0 and NaN != NaN would hide differences.
    np.testing.assert_array_equal(back_values.view(np.int64), values.view(np.int64))
    kept_ts, kept_values = Decoded(blob).arrays()  # the compact form a cache keeps gives the same
    assert kept_ts.dtype == np.int64 and kept_values.dtype == np.float64
    np.testing.assert_array_equal(kept_ts, ts)
    np.testing.assert_array_equal(kept_values.view(np.int64), values.view(np.int64))
    return back_ts, back_values


def scheme_of(ts, values) -> str:
    return describe_chunk(encode_chunk(np.asarray(ts, dtype=np.int64), np.asarray(values, dtype=np.float64))).split()[2]


def noisy_temperature(n=5760, seed=0):
    rng = np.random.default_rng(seed)
    daily = 1.5 * np.sin(np.linspace(0, 2 * np.pi, n))
    return np.round(21 + daily + 0.3 * np.cumsum(rng.normal(0, 0.01, n)) + rng.normal(0, 0.03, n), 2)


# --- exact round trip -------------------------------------------------------

def test_decimal_readings_come_back_bit_exact():
    round_trip(EVERY_15_S, noisy_temperature())


@pytest.mark.parametrize(
    "values",
    [
        [1013.25, 1013.27, 1012.98],
        [1000.123, 1000.125, 1000.127],
        [50.1, 50.1, 50.2, 49.9],
        [-12.5, -3.25, 0.0, 4.75, -0.5],
        [1500.0, 2000.0, 0.0, 3000.0],
        [1e15, 2e15, -3e15],
        [0.000000001, 0.000000002, 0.000000123],
    ],
    ids=["hPa", "kWh", "percent", "negative", "round-thousands", "large-integers", "nano"],
)
def test_readings_with_few_decimals_come_back_bit_exact(values):
    round_trip(EVERY_15_S[: len(values)], values)


def test_readings_with_few_decimals_are_coded_as_scaled_integers():
    assert scheme_of(EVERY_15_S[:4], [21.27, 21.28, 21.3, 21.25]) != "raw"
    assert scheme_of(EVERY_15_S, noisy_temperature()) == "trend"


def test_a_cached_day_of_temperatures_takes_two_bytes_a_sample():
    kept = Decoded(encode_chunk(EVERY_15_S, noisy_temperature()))
    assert kept.nbytes <= 2 * 5760 + 128
    assert Decoded(encode_chunk(EVERY_15_S, np.round(np.linspace(-5, 300, 5760), 1))).nbytes <= 2 * 5760 + 128


def test_a_cached_day_stamped_on_arrival_takes_four_bytes_a_sample():
    """Arrival times, a little off every 15 s, are kept as int16 offsets from a steady interval; a day with
    offsets too large for that (a gap of minutes) as int32 offsets from its first sample."""
    rng = np.random.default_rng(3)
    arrived = EVERY_15_S + rng.integers(0, 1000, len(EVERY_15_S))
    round_trip(arrived, noisy_temperature())
    assert Decoded(encode_chunk(arrived, noisy_temperature())).nbytes <= 4 * 5760 + 128
    drifting = MIDNIGHT + np.cumsum(rng.integers(14_000, 16_000, 5760))  # the offsets from a steady interval drift
    round_trip(drifting, noisy_temperature())
    gap = np.concatenate([arrived[:2000], arrived[2000:] + 600_000])[:5760]  # ten minutes missing
    round_trip(gap, noisy_temperature())
    assert Decoded(encode_chunk(gap, noisy_temperature())).nbytes > 6 * 5760


def test_random_floats_come_back_bit_exact():
    rng = np.random.default_rng(7)
    round_trip(EVERY_15_S, rng.normal(0, 1, 5760))
    round_trip(EVERY_15_S, rng.random(5760).view(np.float64))


def test_negative_zero_stays_negative_zero():
    _, back = round_trip(EVERY_15_S[:4], [0.0, -0.0, 1.5, -0.0])
    assert np.signbit(back).tolist() == [False, True, False, True]


def test_outdoor_readings_rounded_to_negative_zero_stay_small():
    values = np.round(noisy_temperature() - 21, 1)  # round(-0.04, 1) is -0.0
    assert np.signbit(values[values == 0]).any()
    round_trip(EVERY_15_S, values)
    assert scheme_of(EVERY_15_S, values) != "raw"
    assert len(encode_chunk(EVERY_15_S, values)) < 0.5 * len(values)


def test_huge_and_tiny_magnitudes_come_back_bit_exact():
    finfo = np.finfo(np.float64)
    values = [finfo.max, -finfo.max, finfo.tiny, 5e-324, -5e-324, 1e300, 1e-300, 2.0**53 + 2, 123456789.123456789]
    round_trip(EVERY_15_S[: len(values)], values)


def test_values_that_only_look_decimal_come_back_bit_exact():
    values = [0.1 + 0.2, 21.27 + 1e-15, 1 / 3, 0.3]
    round_trip(EVERY_15_S[: len(values)], values)


def test_nan_and_infinity_do_not_crash_and_keep_their_bits():
    nan_with_payload = np.array([0x7FF8_0000_DEAD_BEEF], dtype=np.int64).view(np.float64)[0]
    round_trip(EVERY_15_S[:5], [21.5, np.nan, np.inf, -np.inf, nan_with_payload])


def test_slowly_changing_readings_are_coded_as_sparse_changes():
    rng = np.random.default_rng(2)
    humidity = np.round(50 + 0.5 * np.cumsum(rng.normal(0, 0.05, 5760)), 1)
    round_trip(EVERY_15_S, humidity)
    assert scheme_of(EVERY_15_S, humidity) == "sparse"
    assert len(encode_chunk(EVERY_15_S, humidity)) < 0.14 * 5760


def test_constant_series_comes_back_and_costs_almost_nothing():
    blob = encode_chunk(EVERY_15_S, np.full(5760, 21.5))
    round_trip(EVERY_15_S, np.full(5760, 21.5))
    assert len(blob) < 40


def test_step_changes_come_back_bit_exact():
    values = np.where(np.arange(5760) % 1000 < 500, 300.0, 2500.5)
    values[4000:] = -40.25
    round_trip(EVERY_15_S, values)


def test_negative_readings_come_back_bit_exact():
    round_trip(EVERY_15_S, noisy_temperature() - 45)


# --- timestamps -------------------------------------------------------------

def test_irregular_timestamps_with_gaps_and_jitter_come_back_exactly():
    rng = np.random.default_rng(3)
    steps = 15_000 + rng.integers(-400, 400, 5000)
    steps[[100, 2000, 3500]] = [3_600_000, 17, 7_200_000]  # an outage, a burst, another outage
    ts = MIDNIGHT + np.concatenate(([0], np.cumsum(steps)))
    round_trip(ts, noisy_temperature(len(ts)))


def test_regular_timestamps_cost_almost_nothing():
    with_values = len(encode_chunk(EVERY_15_S, noisy_temperature()))
    twice_as_many_samples = len(encode_chunk(MIDNIGHT + np.arange(11520) * 7500, np.zeros(11520)))
    assert twice_as_many_samples < 30
    assert with_values < 0.5 * 5760


@pytest.mark.parametrize(
    "ts",
    [
        [-(2**63), -1, 0, 2**62, 2**63 - 1],
        [2**63 - 3, 2**63 - 2, 2**63 - 1],
        [-(2**63), -(2**63) + 7, -(2**63) + 14],
        [-(2**63), 2**63 - 1],
        [-5, 2**63 - 6, 2**63 - 5],
    ],
)
def test_timestamps_at_the_ends_of_int64_come_back_exactly(ts):
    round_trip(ts, np.arange(len(ts), dtype=np.float64))


# --- small chunks -----------------------------------------------------------

def test_empty_chunk_comes_back_empty():
    ts, values = round_trip([], [])
    assert len(ts) == len(values) == 0


@pytest.mark.parametrize("n", [1, 2, 3, 4, 63, 64, 65, 127, 128, 129, 257])
def test_short_chunks_come_back_exactly(n):
    round_trip(EVERY_15_S[:n], noisy_temperature(n))


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="must be equal"):
        encode_chunk(EVERY_15_S[:3], np.zeros(4))


# --- properties -------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(-(2**62), 2**62), min_size=0, max_size=600, unique=True).map(sorted),
    st.data(),
)
def test_any_finite_floats_at_any_increasing_timestamps_come_back_exactly(ts, data):
    values = data.draw(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=len(ts), max_size=len(ts)))
    round_trip(ts, values)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 3),
    st.lists(st.integers(-(10**9), 10**9), min_size=1, max_size=800),
)
def test_any_decimal_readings_come_back_exactly(decimals, integers):
    values = np.array(integers) / 10.0**decimals
    round_trip(MIDNIGHT + np.arange(len(values), dtype=np.int64) * 15_000, values)


# --- size -------------------------------------------------------------------

def _reference_workload():
    path = Path(__file__).resolve().parents[1] / "bench" / "workload.py"
    spec = importlib.util.spec_from_file_location("roost_bench_workload", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_workload_compresses_below_0_39_bytes_per_sample():
    # Measured 0.37 (temperature, humidity, pressure; cut at UTC midnight like
    # the store). Without the trend scheme it is 0.40, so losing it, or the
    # decimal scaling or the byte planes, fails this.
    total_bytes = total_samples = 0
    for _metric, _labels, ts_s, values in _reference_workload().generate(n_series=10, days=1.2):
        ts = ts_s * 1000
        for day in np.unique(ts // DAY_MS):
            mask = ts // DAY_MS == day
            total_bytes += len(encode_chunk(ts[mask], values[mask]))
            total_samples += int(mask.sum())
    assert total_bytes / total_samples < 0.39


# --- damage -----------------------------------------------------------------

def test_every_truncation_of_a_chunk_raises_store_error():
    blob = encode_chunk(EVERY_15_S[:300], noisy_temperature(300))
    for end in range(len(blob)):
        with pytest.raises(StoreError, match="chunk blob"):
            decode_chunk(blob[:end])


def test_an_unknown_format_version_says_so():
    blob = bytearray(encode_chunk(EVERY_15_S[:10], noisy_temperature(10)))
    blob[0] = 99
    with pytest.raises(StoreError, match="format version 99"):
        decode_chunk(bytes(blob))


DAMAGEABLE = {
    "trend": noisy_temperature(),
    "sparse": np.round(50 + 0.5 * np.cumsum(np.random.default_rng(2).normal(0, 0.05, 5760)), 1),
    "raw": np.random.default_rng(4).normal(0, 1, 5760),
}


@pytest.mark.parametrize("kind", DAMAGEABLE)
def test_damaged_payload_raises_store_error_or_decodes_to_the_right_length(kind):
    # Without a checksum (SQLite guards the pages) a flipped bit may decode to
    # other numbers; it must never surface as an IndexError or a crash.
    blob = encode_chunk(EVERY_15_S, DAMAGEABLE[kind])
    assert describe_chunk(blob).split()[2] == kind
    rng = np.random.default_rng(5)
    for _ in range(300):
        damaged = bytearray(blob)
        damaged[rng.integers(2, len(blob))] ^= 1 << int(rng.integers(8))
        try:
            ts, values = decode_chunk(bytes(damaged))
        except StoreError as error:
            assert "chunk blob" in str(error)
        else:
            assert len(ts) == len(values)


def test_an_overlong_varint_is_corrupt_not_an_overflow():
    blob = bytes([1, 3]) + b"\xff" * 9 + b"\x7f"  # a first timestamp of 70 bits
    with pytest.raises(StoreError, match="longer than 64 bits"):
        decode_chunk(blob)


def test_random_bytes_raise_store_error_or_decode():
    rng = np.random.default_rng(11)
    for _ in range(500):
        blob = bytes([1]) + rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
        try:
            ts, values = decode_chunk(blob)
        except StoreError:
            continue
        assert len(ts) == len(values)


# --- zstd contexts ------------------------------------------------------------


def zstd_contexts() -> int:
    return sum(len(free) for free in codec._free_compressors.values()) + len(codec._free_decompressors)


def test_threads_taking_turns_share_the_zstd_contexts():
    # Each context keeps a workspace sized for the largest input it saw (up to ~2 MB). Kept per thread, every
    # worker thread a compaction ever ran on grew a set of its own and the hub's memory climbed for hours.
    values = noisy_temperature()
    round_trip(EVERY_15_S, values)
    made = zstd_contexts()
    for _ in range(12):  # twelve threads, one after another: the contexts of the first are lent to the rest
        t = threading.Thread(target=round_trip, args=(EVERY_15_S, values))
        t.start()
        t.join()
    assert zstd_contexts() == made


def test_threads_encoding_at_once_each_get_a_context_of_their_own():
    days = [noisy_temperature(seed=seed) for seed in range(16)]
    blobs = [encode_chunk(EVERY_15_S, v) for v in days]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            assert list(pool.map(lambda v: encode_chunk(EVERY_15_S, v), days)) == blobs
            for (ts, values), expected in zip(pool.map(decode_chunk, blobs), days):
                np.testing.assert_array_equal(ts, EVERY_15_S)
                np.testing.assert_array_equal(values.view(np.int64), expected.view(np.int64))
