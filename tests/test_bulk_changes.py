"""The store's bulk-change log: every day chunk a bulk write changes, in order, for a standby to pull in
bounded answers, resumably, and forget once applied."""

from __future__ import annotations

import numpy as np

from roost.model import Series
from roost.selector import Selector
from roost.store import DAY_MS, RetentionRule, Store, StoreOptions
from roost.store.codec import decode_chunk

T0 = 1_700_006_400_000 - 1_700_006_400_000 % DAY_MS
ROOMS = ("lounge", "kitchen", "attic")


def _import(store: Store, room: str, first_day: int, days: int, offset_ms: int = 0) -> None:
    ts = T0 + first_day * DAY_MS + offset_ms + np.arange(0, days * DAY_MS, 60_000)
    store.write_bulk(Series.of("t", room=room), ts, np.sin(ts / 1e7))


def _pull(store: Store, after: int, max_bytes: int) -> tuple[dict[int, bytes], int, list[tuple[int, int]]]:
    """Everything logged after `after`, answer by answer: the newest chunk of each id, the end, and each
    answer's (bytes, chunks)."""
    got, answers = {}, []
    while True:
        chunks, reached = store.bulk_changes(after, max_bytes)
        if reached == after:
            return got, after, answers
        got.update(chunks)
        answers.append((sum(len(b) for _i, b in chunks), len(chunks)))
        after = reached


def test_bulk_writes_log_each_changed_day_and_answers_stay_within_their_byte_budget(tmp_path):
    with Store.open(tmp_path / "data", writer=True) as store:
        for room in ROOMS:
            _import(store, room, 0, 20)
        _import(store, "lounge", 5, 2, offset_ms=30_000)  # into days already written: logged again
        assert store.bulk_change_seq() == 3 * 20 + 2

        got, end, answers = _pull(store, 0, 40_000)
        assert end == store.bulk_change_seq()
        assert len(got) == 3 * 20
        assert len(answers) > 1 and all(size <= 40_000 or n == 1 for size, n in answers)
        _got, _end, answers = _pull(store, 0, 1 << 20)
        assert [n for _size, n in answers] == [3 * 20]  # in one answer, each changed day once, in its newest version
        lounge = store.series_id(Series.of("t", room="lounge"))
        ts, _values = decode_chunk(got[((T0 // DAY_MS + 5) << 24) | lounge])
        assert len(ts) == 2 * 1440  # the second write merged into the first

        partial, _end, _answers = _pull(store, 3 * 20, 1 << 20)  # resumes from any change number
        assert len(partial) == 2


def test_applied_changes_are_forgotten_and_asking_before_them_says_so(tmp_path):
    with Store.open(tmp_path / "data", writer=True) as store:
        _import(store, "lounge", 0, 10)
        store.trim_bulk_changes(4)
        assert store.bulk_changes(3, 1 << 20) is None  # the standby must copy the store again
        chunks, reached = store.bulk_changes(4, 1 << 20)
        assert len(chunks) == 6 and reached == 10
        store.trim_bulk_changes(10)
        assert store.bulk_changes(10, 1 << 20) == ([], 10) and store.bulk_change_seq() == 10
        _import(store, "lounge", 20, 1)
        assert store.bulk_change_seq() == 11  # numbers are never reused


def test_days_deleted_since_by_retention_are_left_out(tmp_path):
    options = StoreOptions(retention=(RetentionRule(Selector.parse('t{room="attic"}'), keep_ms=5 * DAY_MS),))
    with Store.open(tmp_path / "data", options, writer=True) as store:
        _import(store, "attic", 0, 10)
        store.apply_retention(now=T0 + 10 * DAY_MS)
        chunks, reached = store.bulk_changes(0, 1 << 20)
        assert reached == 10 and len(chunks) == 5
