"""Fair limits without a broker: what is counted, the Retry-After, the words, and reservations given back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from packager.adapters.view_queries import Usage
from packager.core.errors import TooManyRequestsError
from packager.core.settings import Settings, load_settings
from packager.http.limits import Accepted, Limits, check

pytestmark = pytest.mark.features

SECRET = "unit-test-secret-0123456789"
NOTHING = Usage(active=0, resource_active=0, requests=0, recent=[], positions={})


def settings(tmp_path: Path, **limits: int) -> Settings:
    return load_settings({}, secret=SECRET, store_directory=str(tmp_path), **limits)


def test_the_hourly_limit_frees_a_place_when_enough_requests_are_an_hour_old(tmp_path: Path) -> None:
    now = time.time()
    recent = [now - 3000, now - 1000, now - 10]
    usage = Usage(active=0, resource_active=0, requests=3, recent=recent, positions={})
    with pytest.raises(TooManyRequestsError) as refused:
        check(settings(tmp_path, max_requests_per_hour_per_requester=2), usage, [], "who", "r", now)
    # Three in the hour, two allowed: two must leave the window, the second oldest leaves 2,600 s from now.
    assert refused.value.retry_after == 2600
    assert "You have asked for 3 downloads in the last hour" in refused.value.message
    assert "(in 44 minutes)" in refused.value.message
    check(settings(tmp_path, max_requests_per_hour_per_requester=4), usage, [], "who", "r", now)
    # The views give only their newest requests (as many as the limit); the count says how many in all.
    many = Usage(active=0, resource_active=0, requests=30, recent=recent[1:], positions={})
    with pytest.raises(TooManyRequestsError, match="asked for 30 downloads") as refused:
        check(settings(tmp_path, max_requests_per_hour_per_requester=2), many, [], "who", "r", now)
    assert refused.value.retry_after == 2600


def test_requests_the_views_do_not_show_yet_count_for_their_requester_and_resource(tmp_path: Path) -> None:
    now = time.time()
    mine = [Accepted("j1", "who", "r", now), Accepted("j2", "other", "r", now)]
    limited = settings(tmp_path, max_active_jobs_per_requester=2, max_active_jobs_per_resource=3)
    check(limited, NOTHING, mine, "who", "r", now)  # 1 of 2 for who, 2 of 3 for r
    with pytest.raises(TooManyRequestsError, match="You already have 2 downloads"):
        check(limited, Usage(1, 0, 0, [], {}), mine, "who", "elsewhere", now)
    with pytest.raises(TooManyRequestsError, match="This resource already has 3 downloads") as refused:
        check(limited, Usage(0, 1, 0, [], {}), mine, "third", "r", now)
    assert refused.value.retry_after == 60


def test_no_limit_set_counts_nothing(tmp_path: Path) -> None:
    now = time.time()
    busy = Usage(active=10**6, resource_active=10**6, requests=1000, recent=[now] * 1000, positions={})
    check(settings(tmp_path), busy, [], "who", "r", now)


async def test_a_reservation_holds_a_place_until_given_back(tmp_path: Path) -> None:
    """Without views: the ingress's own count; a request the log did not take frees its place."""
    limits = Limits(settings(tmp_path, max_active_jobs_per_requester=1))
    await limits.admit(None, "j1", "who", "r")
    with pytest.raises(TooManyRequestsError):
        await limits.admit(None, "j2", "who", "r")
    limits.withdraw("j1")
    await limits.admit(None, "j2", "who", "r")
