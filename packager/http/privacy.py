"""The ingress's side of requesters' privacy: sealing addresses on the way in, and erasing requesters.

A request's address is never appended in clear: `sealed_requester` gives the requester fields of
`PackageRequested` (pseudonym, domain, the address sealed under the requester's data key). `POST
/requesters/erase` (with the secret) destroys the requester's data keys and appends `RequesterErased`
(docs/privacy.md).
"""

from __future__ import annotations

import logging
import uuid

from aiohttp import web

from packager.adapters.kafka_log import KafkaEventLog, Topics
from packager.core.errors import UnavailableError
from packager.core.settings import Settings
from packager.domain.events import RequesterErased, envelope
from packager.domain.requesters import domain_of, pseudonym, pseudonyms, seal_email, shown
from packager.domain.validation import check_email, require
from packager.http.app_keys import EVENT_LOG, REQUESTER_KEYS, SETTINGS
from packager.http.common import authenticate, json_response, read_params

log = logging.getLogger(__name__)

UNREACHABLE = "The event log (Kafka) is unreachable; the request was not accepted. Try again later."


async def sealed_requester(app: web.Application, email: str, requester: str = "") -> dict[str, str]:
    """The requester fields of a new request: `email` empty, the address only sealed.

    `requester`: the address's pseudonym when the caller has it already (computed here otherwise).

    The key store and the event log talk to the same broker: while the log knows it is down, the request
    gets its 503 at once; when the key store finds it down, the log is told so (the next requests too).
    """
    settings: Settings = app[SETTINGS]
    event_log = app[EVENT_LOG]
    if getattr(event_log, "available", True) is False:
        raise UnavailableError(UNREACHABLE)
    requester = requester or pseudonym(settings.pseudonym_key, email)
    try:
        key = await app[REQUESTER_KEYS].key_for(requester)
    except UnavailableError as exc:
        if isinstance(event_log, KafkaEventLog):
            event_log.mark_unreachable(exc)
        raise UnavailableError(UNREACHABLE) from None
    return {
        "email": "",
        "requester": requester,
        "requester_domain": domain_of(email),
        "email_sealed": seal_email(key, email),
    }


async def erase_requester(request: web.Request) -> web.Response:
    """POST /requesters/erase: destroy the data keys of `email` and append RequesterErased."""
    settings = request.app[SETTINGS]
    params = await read_params(request)
    authenticate(params, settings)
    email = check_email(require(params, "email"))
    names = pseudonyms(settings.pseudonym_key, settings.previous_pseudonym_secrets, email)
    # Keys first: should the append fail, the address is unreadable all the same, and erasing again is safe.
    keys = request.app[REQUESTER_KEYS]
    destroyed = await keys.destroy(names)
    operation = str(uuid.uuid4())
    # Every key of theirs destroyed so far: an erasure retried after its append failed names those too.
    erased = RequesterErased(cache_key=names[0], requesters=names, key_ids=keys.destroyed(names))
    event = envelope(operation, erased)
    await request.app[EVENT_LOG].append(Topics(settings.topic_prefix).events, names[0], event)
    log.info("requester %s erased (%d data key(s) destroyed)", shown(names[0]), len(destroyed))
    message = f"Requester erased: {len(destroyed)} data key(s) destroyed."
    return json_response(
        {
            "success": True,
            "msg": message,
            "status": "success",
            "message": message,
            "requester": shown(names[0]),
            "keys_destroyed": len(destroyed),
            "operation_id": operation,
        }
    )
