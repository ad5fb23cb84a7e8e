"""How small and how fast the chunk codec is on the reference workload.

    PYTHONPATH=src python bench/codec.py [--days 30] [--series 100]

Cuts every series of bench/workload.py into UTC-day chunks, encodes each with
roost.store.codec, checks the round trip bit for bit, and prints bytes per
sample (values, timestamps, total; per metric) and encode/decode microseconds
per chunk. The peer row is the store's first design from the same run:
order-1 delta of the decimal-scaled integers, zigzag, narrowest width, zstd-19.
"""
import argparse
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from roost.store.codec import decode_chunk, decode_timestamps, describe_chunk, encode_chunk  # noqa: E402
from workload import generate  # noqa: E402

DAY_MS = 86_400_000


def day_chunks(ts_ms: np.ndarray, values: np.ndarray):
    days = ts_ms // DAY_MS
    cuts = np.flatnonzero(np.diff(days)) + 1
    for start, end in zip(np.r_[0, cuts], np.r_[cuts, len(ts_ms)]):
        yield ts_ms[start:end], values[start:end]


def best_of(function, *args, repeat: int = 3) -> float:
    """Microseconds of the fastest of a few calls: other processes only ever add time."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function(*args)
        best = min(best, time.perf_counter() - start)
    return best * 1e6


def delta_baseline(values: np.ndarray, compressor: zstandard.ZstdCompressor) -> int:
    """Bytes of the first design: decimal-scaled order-1 delta, zigzag, narrowest width, zstd-19."""
    for d in range(10):
        x = np.round(values * 10.0**d)
        if np.array_equal((x / 10.0**d).view(np.int64), values.view(np.int64)):
            break
    delta = np.diff(x.astype(np.int64), prepend=0)
    zigzag = ((delta << 1) ^ (delta >> 63)).view(np.uint64)
    width = next(w for w in (1, 2, 4, 8) if int(zigzag.max()) < 1 << (8 * w))
    planes = zigzag.astype(f"<u{width}").view(np.uint8).reshape(-1, width).T.tobytes()
    return len(compressor.compress(planes))


def run(n_series: int, days: float) -> None:
    baseline_zstd = zstandard.ZstdCompressor(level=19, write_content_size=False, write_checksum=False)
    total = Counter()
    samples = Counter()
    schemes = defaultdict(Counter)
    encode_us, decode_us, ts_only_us = [], [], []
    for metric, _labels, ts_s, values in generate(n_series, days):
        for ts, vals in day_chunks(ts_s * 1000, values):
            blob = encode_chunk(ts, vals)
            back_ts, back_values = decode_chunk(blob)
            if not (np.array_equal(back_ts, ts) and np.array_equal(back_values.view(np.int64), vals.view(np.int64))):
                raise SystemExit(f"round trip FAILED for {metric} chunk at {ts[0]}")
            if len(ts) == 5760:
                encode_us.append(best_of(encode_chunk, ts, vals))
                decode_us.append(best_of(decode_chunk, blob))
                ts_only_us.append(best_of(decode_timestamps, blob))
            ts_bytes = len(encode_chunk(ts, np.zeros(len(ts))))
            total[metric, "all"] += len(blob)
            total[metric, "ts"] += ts_bytes
            total[metric, "baseline"] += delta_baseline(vals, baseline_zstd)
            samples[metric] += len(ts)
            schemes[metric][describe_chunk(blob).split()[2]] += 1

    def per_sample(kind: str, metrics) -> float:
        return sum(total[m, kind] for m in metrics) / sum(samples[m] for m in metrics)

    def row(label: str, metrics) -> str:
        everything = per_sample("all", metrics)
        ts = per_sample("ts", metrics)
        peer = per_sample("baseline", metrics)
        count = sum(samples[m] for m in metrics)
        return f"{label:22s} {everything - ts:8.4f} {ts:8.4f} {everything:8.4f} {peer:10.4f}   {count:>9d}"

    metrics = list(samples)
    print(f"{n_series} series x {days:g} days, {sum(samples.values())} samples, per-day chunks")
    print(f"{'bytes/sample':22s} {'values':>8s} {'ts':>8s} {'total':>8s} {'peer:delta':>10s}   {'samples':>9s}")
    for metric in metrics:
        print(row(metric, [metric]), "  ", dict(schemes[metric]))
    print(row("ALL", metrics))
    print("(ts = size of the same chunk with all-zero values; values = the rest; peer = values only)")
    for name, times in (("encode", encode_us), ("decode", decode_us), ("decode_timestamps", ts_only_us)):
        print(f"{name:18s} µs per 5760-sample chunk (best of 3): median {np.median(times):7.1f}"
              f"  p90 {np.percentile(times, 90):7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--series", type=int, default=100)
    args = parser.parse_args()
    run(args.series, args.days)


if __name__ == "__main__":
    main()
