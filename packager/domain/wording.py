"""Words for a requester: failures (what happened and what to do next, never the raw error), and how to
ask again for a download that expired.

The packer's messages name hosts, exception classes and limits for the operator; the job page and the
failure email say instead what a requester can act on. The raw error stays in the worker's log, in
`/statistics/errors` and in the `error` field programs read.
"""

from __future__ import annotations

import re

# Known failures, from the packer's messages, told for a requester: (pattern, what happened, what to do).
_TRY_LATER = (
    "Please try again later. If it keeps failing, contact the portal and give them the download number."
)
_ASK_LESS = "Please ask for less data (fewer rows or columns), or try again later."
_FAILURES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (
        re.compile(r"^CKAN at \S+ kept failing|^CKAN's dump"),
        "The data portal did not answer while your data was being fetched.",
        _TRY_LATER,
    ),
    (
        re.compile(r"^CKAN (refused the query|cannot be queried)"),
        "The data portal refused the query for this data (the resource, its filters or its columns may no "
        "longer exist).",
        "Please go back to the portal, check the filters and ask again.",
    ),
    (
        re.compile(r"^The file .*(could not be fetched|cannot be fetched|redirects more than)"),
        "The file could not be fetched from where the portal keeps it.",
        _TRY_LATER,
    ),
    (
        re.compile(r"larger than|over the (cap|limit)|more than the service allows", re.I),
        "The data is larger than this service can prepare.",
        _ASK_LESS,
    ),
    (re.compile(r"took longer than the service allows"), "Preparing the data took too long.", _ASK_LESS),
    (
        re.compile(r"lost this package's build|failed while preparing"),
        "The service stopped while preparing your data.",
        _TRY_LATER,
    ),
)


def failure_texts(error: str) -> tuple[str, str]:
    """(what happened, what to do next) for a failed job, never the raw error."""
    for pattern, message, next_step in _FAILURES:
        if pattern.search(error):
            return message, next_step
    return "Something went wrong while preparing your data.", _TRY_LATER


def ask_again_text(portal_name: str = "", portal_url: str = "") -> str:
    """How to get the data of an expired or cleared download: ask again where it was asked for (the job's
    page and the expiry notice say it alike)."""
    where = f"the dataset's page on {portal_name or 'the portal'}"
    if portal_url:
        where += f" ({portal_url})"
    return (
        f"Please ask for the data again from {where}, as you did the first time: a new download is "
        "prepared and a new link emailed to you."
    )
