"""Expiry notices, piece by piece: which jobs get one, the email's words, how the mailer and the job's page
tell a notice from the completion email."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from packager.core.settings import Settings, load_settings
from packager.domain.emails import render_expiry_notice
from packager.domain.events import CacheCleared, EmailFailed, EmailSent, ExpiryNoticeDue, envelope
from projections.jobs import apply
from streams.expiry_notices import Reminders, notice_entry, track
from streams.mailer import mail_of
from tests.unit.samples import SECRET, completed

pytestmark = pytest.mark.features


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        {},
        secret=SECRET,
        store_directory=str(tmp_path),
        cache_time=3600,
        expiry_notice_before=600,
        portal_name="Example Portal",
    )


def cached(zip_name: str, age: float) -> dict[str, Any]:
    return {"job_id": "builder", "zip_file_name": zip_name, "completed_at": time.time() - age}


def test_a_job_is_tracked_only_while_its_package_outlives_the_notice_time(settings: Settings) -> None:
    done = envelope("j1", completed(zip_file_name="b.zip"))
    now = time.time()
    entry = notice_entry(done, cached("b.zip", age=0), 3, settings, now)
    assert entry is not None and entry["partition"] == 3 and entry["zip_file_name"] == "b.zip"
    assert entry["expires"] == pytest.approx(now + 3600, abs=2)
    # Ready 55 minutes ago: the notice time has begun, it is too late for a reminder.
    assert notice_entry(done, cached("b.zip", age=3300), 3, settings, now) is None
    assert notice_entry(done, cached("other.zip", age=0), 3, settings, now) is None  # not this link
    assert notice_entry(done, None, 3, settings, now) is None


def test_the_table_forgets_a_job_once_its_notice_is_read_back_or_its_cache_cleared(
    settings: Settings,
) -> None:
    notices: dict[str, Any] = {}
    reminders = Reminders()
    track(
        notices, reminders, envelope("j1", completed(zip_file_name="b.zip")), cached("b.zip", 0), 1, settings
    )
    track(
        notices, reminders, envelope("j2", completed(zip_file_name="b.zip")), cached("b.zip", 0), 2, settings
    )
    assert set(notices) == {"j1", "j2"}
    reminders.noticing.add("j1")
    notice = ExpiryNoticeDue("ck", "r1", "h", "b.zip", "2026-12-02T10:00:00.000Z", "", "p", "d", "s")
    track(notices, reminders, envelope("j1", notice), None, 1, settings)
    assert set(notices) == {"j2"} and not reminders.noticing
    track(notices, reminders, envelope("op", CacheCleared(cache_key="*", partition=2)), None, 2, settings)
    assert notices == {}


def test_the_reminder_says_until_when_where_and_how_to_ask_again(settings: Settings) -> None:
    notice = ExpiryNoticeDue(
        "ck", "r1", "data.example.org", "j1.zip", "2026-12-02T10:00:00.000Z", "ann@example.org", "p", "d", ""
    )
    msg = render_expiry_notice(settings, "j1", notice)
    assert msg["Subject"] == "Your download from data.example.org expires on 2026-12-02 10:00 UTC"
    assert msg["To"] == "ann@example.org" and msg["X-Packager-Job"] == "j1"
    body = msg.get_content()
    assert "can be downloaded until 2026-12-02 10:00 UTC" in body and "/downloads/j1.zip" in body
    assert "ask for the data again from the dataset's page on Example Portal" in body


def test_a_notice_and_its_outcome_are_not_the_completion_email() -> None:
    notice = ExpiryNoticeDue("ck", "r1", "h", "j.zip", "2026-12-02T10:00:00.000Z", "", "p", "d", "s")
    sent = EmailSent(cache_key="ck", about="ExpiryNoticeDue", message_id="<m>", attempts=1)
    assert mail_of(envelope("j", notice)) == mail_of(envelope("j", sent)) == "j:notice"
    assert mail_of(envelope("j", completed())) == "j"
    # The page keeps telling the completion email's outcome.
    done = apply(None, envelope("j", completed()))
    failed = EmailFailed(cache_key="ck", about="ExpiryNoticeDue", error="550", attempts=1)
    after = apply(apply(done, envelope("j", sent)), envelope("j", failed))
    assert (after.emailed, after.email_error) == (False, "")
