"""``records.us_to_ts`` (per-day prefix, integer arithmetic) formats exactly as ``dt_to_ts`` through datetime, and
fails alike outside 1970..9999."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from enforcer.analyst.records import EPOCH, MAX_TS, MIN_TS, dt_to_ts, ts_to_us, us_to_ts

DAY_US = 86_400_000_000


def test_same_as_through_datetime() -> None:
    rnd = random.Random(3)
    top = ts_to_us(MAX_TS)
    values = [0, 1, DAY_US - 1, DAY_US, DAY_US + 1, top, top - DAY_US, ts_to_us("2023-10-30T04:00:00.000000Z")]
    values += [rnd.randrange(0, top + 1) for _ in range(20_000)]
    values += [d * DAY_US + rnd.choice((-1, 0, 1)) for d in (rnd.randrange(1, top // DAY_US) for _ in range(2000))]
    for us in values:
        assert us_to_ts(us) == dt_to_ts(EPOCH + timedelta(microseconds=us)), us
        assert ts_to_us(us_to_ts(us)) == us
    assert us_to_ts(0) == MIN_TS and us_to_ts(top) == MAX_TS


def test_out_of_range_fails_as_before() -> None:
    with pytest.raises(ValueError, match="before 1970"):
        us_to_ts(-1)
    with pytest.raises(OverflowError):
        us_to_ts(ts_to_us(MAX_TS) + 1)
