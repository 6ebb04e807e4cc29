"""A worker whose Kafka log was wiped under it says so in plain words when Faust stops it."""

from __future__ import annotations

from faust.exceptions import ConsistencyError

from streams.worker import wiped_log_explanation


def test_a_wiped_log_is_explained_with_what_to_do() -> None:
    faust_words = (
        "The persisted offset for changelog topic partition TP(topic='p-worker-ending-changelog', "
        "partition=0) is higher than the last offset in that topic (highwater) (1 > -1)."
    )
    explanation = wiped_log_explanation(ConsistencyError(faust_words))
    assert explanation is not None
    assert "wiped" in explanation and "Start it again" in explanation and "exit status 1" in explanation
    assert faust_words in explanation


def test_other_stops_are_not_explained_as_a_wipe() -> None:
    assert wiped_log_explanation(None) is None
    assert wiped_log_explanation(RuntimeError("boom")) is None
