"""Keys of what the ingress application holds (settings, clients, the read side)."""

from __future__ import annotations

from aiohttp import web

from packager.adapters.kafka_log import EventLog
from packager.adapters.readside import ReadSide
from packager.core.settings import Settings
from packager.domain.validation import Resolver

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
EVENT_LOG: web.AppKey[EventLog] = web.AppKey("event_log", EventLog)  # type: ignore[type-abstract]
RESOLVER: web.AppKey[Resolver] = web.AppKey("resolver")  # type: ignore[arg-type]
READ_SIDE: web.AppKey[ReadSide] = web.AppKey("read_side", ReadSide)
