"""Upcasters: functions turning a stored older event payload into the next version's payload.

`packager.domain.events` applies them, in order, to every payload stored at an older `schema_version`
than its type's current one; a test keeps one stored sample per (type, version) here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _completed_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """PackageCompleted v1 had no `cached_from`: every v1 completion built its own ZIP."""
    return {**payload, "cached_from": ""}


def _first_attempt(payload: dict[str, Any]) -> dict[str, Any]:
    """Queued and progress v1 predate attempts: every v1 build was the first."""
    return {**payload, "attempt": 1}


def _started_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """PackageStarted v1 had no lease: attempt 1, no lease deadline."""
    return {**payload, "attempt": 1, "lease_until": ""}


def _no_callback(payload: dict[str, Any]) -> dict[str, Any]:
    """Before webhooks no request named a callback URL."""
    return {**payload, "callback_sealed": ""}


def _no_requester(payload: dict[str, Any]) -> dict[str, Any]:
    """Before crypto-shredding the address was in `email`, in clear: no pseudonym, nothing sealed."""
    return {**payload, "requester": "", "requester_domain": "", "email_sealed": ""}


# (type, stored schema_version) -> function turning that payload into the next version's payload.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    ("PackageCompleted", 1): _completed_v1_to_v2,
    ("PackageQueued", 1): _first_attempt,
    ("PackageProgress", 1): _first_attempt,
    ("PackageStarted", 1): _started_v1_to_v2,
    ("PackageRequested", 1): _no_requester,
    ("PackageCompleted", 2): _no_requester,
    ("PackageFailed", 1): _no_requester,
    ("PackageCompleted", 3): _no_callback,
    ("PackageFailed", 2): _no_callback,
}
