"""Range-query answers kept for the next identical request, as long as the store says they still hold.

Grafana rounds a panel's range to its step, so a dashboard refreshing every 30 s asks the same
`/api/v1/query_range` (query, start, end, step) again until the next step begins, once per panel and viewer.
An answer is kept with what it was computed from (`Store.history_mark`) and served again only while

- no write has changed stored history since (a sample at or before its series' newest, other than that newest
  reading sent again; a retention deletion),
- the query matches the same series, and
- every matching series either has no new samples, or already had samples up to the query's horizon (its end,
  or later with a negative `offset`) when the answer was made: the new ones come after it and change nothing.

An answer is kept from the second time its request comes (`offer`): a request made once (an `end` of now, to
the millisecond, from a script) would only push out answers that are asked again. The answers are bytes of the
JSON response, those of `GZIP_FROM` bytes or more gzipped (`pack`: a month of 300 series, 6.6 MB of JSON, is kept
in 1.7 MB and sent as it is to clients that accept gzip, as Grafana and browsers do); the least recently used go
first beyond `max_bytes` (`[hub] query_cache_mb`), and one answer takes at most a quarter of it. Hits and misses:
`roost_query_answers_total{origin="cache"|"store"}` on /metrics.
"""

from __future__ import annotations

import gzip
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["AnswerCache", "Kept", "pack", "worth_packing"]

ASKED_KEYS = 4096  # requests remembered (by hash) to tell a repeated one from a one-off
# Answers from this size on are kept gzipped: level 1 packs JSON of numbers ~4x at ~130 MB/s, and unpacking one for
# a client that does not take gzip costs a tenth of computing it again.
GZIP_FROM = 256 * 1024


@dataclass(frozen=True, slots=True)
class Kept:
    """An answer as kept: the JSON body, gzipped or not."""

    body: bytes
    gzipped: bool = False


def worth_packing(body: bytes) -> bool:
    """Whether the cache keeps `body` gzipped (`pack`) rather than as it is (`Kept(body)`)."""
    return len(body) >= GZIP_FROM


def pack(body: bytes) -> Kept:
    """`body` gzipped, as the cache keeps big answers; costly: call it off the event loop."""
    return Kept(gzip.compress(body, compresslevel=1, mtime=0), gzipped=True)


@dataclass(frozen=True, slots=True)
class _Answer:
    kept: Kept
    rewrites: int
    newest: dict[int, int]
    horizon: int


class AnswerCache:
    """Answers by request key, each valid against a later `history_mark` of the store (see the module doc)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._answers: OrderedDict[tuple, _Answer] = OrderedDict()
        self._bytes = 0
        self._asked: OrderedDict[int, None] = OrderedDict()  # hashes of requests seen, the oldest first

    def __len__(self) -> int:
        return len(self._answers)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: tuple, mark: tuple[int, dict[int, int]]) -> Kept | None:
        """The kept answer for `key` if it still holds under `mark` (taken now), else None (and it is dropped)."""
        answer = self._answers.get(key)
        if answer is None:
            return None
        rewrites, newest = mark
        if rewrites == answer.rewrites and newest.keys() == answer.newest.keys() and all(
            then >= answer.horizon or newest[sid] == then for sid, then in answer.newest.items()
        ):
            self._answers.move_to_end(key)
            return answer.kept
        self._drop(key)
        return None

    def offer(self, key: tuple) -> bool:
        """Note that `key` was answered; whether its answer is to be kept (`put`): it was asked before."""
        if self.max_bytes <= 0:
            return False
        h = hash(key)
        if h in self._asked:
            self._asked.move_to_end(h)
            return True
        self._asked[h] = None
        if len(self._asked) > ASKED_KEYS:
            self._asked.popitem(last=False)
        return False

    def put(self, key: tuple, mark: tuple[int, dict[int, int]], horizon: int, kept: Kept) -> None:
        """Keep an answer (`pack`ed), computed after `mark` was taken, for reads up to `horizon` (ms)."""
        if len(kept.body) > self.max_bytes // 4:
            return
        self._drop(key)
        self._answers[key] = _Answer(kept, mark[0], mark[1], horizon)
        self._bytes += len(kept.body)
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._answers)))

    def _drop(self, key: tuple) -> None:
        answer = self._answers.pop(key, None)
        if answer is not None:
            self._bytes -= len(answer.kept.body)
