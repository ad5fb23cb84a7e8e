"""roost's keep policy keeps exactly the snapshots `restic forget` keeps, for the same times and policy.

One real restic repository holds a few dozen snapshots spread over four years (clustered in hours, days, ISO
weeks across a year boundary, month ends); each policy is asked of restic with `forget --dry-run --json` and
of `apply_policy`, and the kept sets must be equal. About 40 restic commands, ~1 s each.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from datetime import datetime, timedelta, timezone

import pytest

from roost.durability.restic import Restic, parse_restic_time
from roost.durability.retention import KeepPolicy, apply_policy, parse_within
from roost.secret import Secret

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (apt-get install restic)")

UTC = timezone.utc


def _times() -> list[datetime]:
    rnd = random.Random(7)
    fixed = [
        "2020-12-30 22:00", "2021-01-03 10:00", "2021-01-04 09:00",  # ISO week 53 of 2020, then week 1 of 2021
        "2022-06-15 08:05", "2022-06-15 08:55", "2022-06-15 09:10", "2022-06-16 07:00",  # an hour, a day
        "2023-12-31 23:30", "2024-01-01 00:30",  # a year boundary inside one ISO week
        "2024-03-01 23:00", "2024-03-02 13:00",  # either side of AddDate(0, -1, 0) from 31 March (2 March, 12:00)
        "2024-03-30 06:00", "2024-03-31 11:00", "2024-03-31 11:30", "2024-03-31 12:00",  # the newest
    ]
    times = {datetime.strptime(t, "%Y-%m-%d %H:%M").replace(tzinfo=UTC) for t in fixed}
    start = datetime(2021, 2, 1, tzinfo=UTC)
    while len(times) < 38:
        times.add(start + timedelta(minutes=rnd.randrange(0, 3 * 365 * 24 * 60, 7)))
    return sorted(times)


POLICIES = [
    KeepPolicy(last=3),
    KeepPolicy(last=4, daily=7, weekly=5, monthly=12, yearly=3),
    KeepPolicy(hourly=5, daily=3),
    KeepPolicy(weekly=8),
    KeepPolicy(within="1m"),
    KeepPolicy(within="1y2m3d4h", monthly=2),
    KeepPolicy(yearly=10),
    KeepPolicy(last=2, within="2d", weekly=3, monthly=6),
]


def test_keep_within_parses_restic_durations():
    assert parse_within("1y2m3d4h") == (1, 2, 3, 4)
    assert parse_within("30d") == (0, 0, 30, 0)
    for bad in ("", "1w", "3", "1d1d"):
        with pytest.raises(ValueError):
            parse_within(bad)


def test_keep_within_counts_back_from_the_newest_snapshot_with_go_calendar_arithmetic():
    newest = datetime(2024, 3, 31, 12, tzinfo=UTC)
    times = [datetime(2024, 3, 1, 23, tzinfo=UTC), datetime(2024, 3, 2, 13, tzinfo=UTC), newest]
    kept = {d.time for d in apply_policy(times, KeepPolicy(within="1m")) if d.keep}
    assert kept == {times[1], newest}  # 31 March − 1 month = "31 February" = 2 March


def test_kept_snapshots_match_restic_forget_for_every_policy(tmp_path):
    times = _times()
    restic = Restic(str(tmp_path / "repo"), Secret("correct horse"), tmp_path / "cache")

    async def ask_restic() -> list[set[datetime]]:
        await restic.init()
        for t in times:
            await restic.backup_stdin(t.isoformat().encode(), name="store", host="roost", time=t, tags=("roost",))
        answers = []
        for policy in POLICIES:
            groups = await restic.forget(policy.restic_flags(), dry_run=True)
            assert len(groups) == 1
            answers.append({parse_restic_time(s["time"]) for s in groups[0]["keep"]})
        return answers

    answers = asyncio.run(ask_restic())
    assert len({t for t in times}) == len(times)
    for policy, restic_kept in zip(POLICIES, answers):
        ours = {d.time for d in apply_policy(times, policy) if d.keep}
        assert ours == restic_kept, (
            f"{policy}: roost keeps {sorted(ours - restic_kept)} that restic removes, "
            f"and removes {sorted(restic_kept - ours)} that restic keeps"
        )
