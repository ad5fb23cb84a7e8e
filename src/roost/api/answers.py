"""Range-query answers kept for the next identical request, as long as the store says they still hold.

Grafana rounds a panel's range to its step, so a dashboard refreshing every 30 s asks the same
`/api/v1/query_range` (query, start, end, step) again until the next step begins, once per panel and viewer.
An answer is kept with what it was computed from (`Store.history_mark`) and served again only while

- no write has changed stored history since (a sample at or before its series' newest, other than that newest
  reading sent again; a retention deletion),
- the query matches the same series, and
- every matching series either has no new samples, or already had samples up to the query's horizon (its end,
  or later with a negative `offset`) when the answer was made: the new ones come after it and change nothing.

An answer is kept from the second time its request comes: a request made once (an `end` of now, to the
millisecond, from a script) would only push out answers that are asked again. The answers are bytes of the JSON
response; the least recently used go first beyond `max_bytes` (`[hub] query_cache_mb`). Hits and misses:
`roost_query_answers_total{origin="cache"|"store"}` on /metrics.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["AnswerCache"]

ASKED_KEYS = 4096  # requests remembered (by hash) to tell a repeated one from a one-off


@dataclass(frozen=True, slots=True)
class _Answer:
    body: bytes
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

    def get(self, key: tuple, mark: tuple[int, dict[int, int]]) -> bytes | None:
        """The kept answer for `key` if it still holds under `mark` (taken now), else None (and it is dropped)."""
        answer = self._answers.get(key)
        if answer is None:
            return None
        rewrites, newest = mark
        if rewrites == answer.rewrites and newest.keys() == answer.newest.keys() and all(
            then >= answer.horizon or newest[sid] == then for sid, then in answer.newest.items()
        ):
            self._answers.move_to_end(key)
            return answer.body
        self._drop(key)
        return None

    def put(self, key: tuple, mark: tuple[int, dict[int, int]], horizon: int, body: bytes) -> None:
        """Keep `body`, computed after `mark` was taken, for reads up to `horizon` (ms), if `key` was asked before."""
        if self.max_bytes <= 0 or len(body) > self.max_bytes // 4 or not self._asked_before(key):
            return
        self._drop(key)
        self._answers[key] = _Answer(body, mark[0], mark[1], horizon)
        self._bytes += len(body)
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._answers)))

    def _asked_before(self, key: tuple) -> bool:
        h = hash(key)
        if h in self._asked:
            self._asked.move_to_end(h)
            return True
        self._asked[h] = None
        if len(self._asked) > ASKED_KEYS:
            self._asked.popitem(last=False)
        return False

    def _drop(self, key: tuple) -> None:
        answer = self._answers.pop(key, None)
        if answer is not None:
            self._bytes -= len(answer.body)
