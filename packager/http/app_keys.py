"""Keys of what the ingress application holds (settings, clients, the views)."""

from __future__ import annotations

from aiohttp import web

from packager.adapters.kafka_log import EventLog
from packager.adapters.requester_keys import RequesterKeys
from packager.adapters.store import Store
from packager.adapters.viewreads import ReadViews
from packager.core.settings import Settings
from packager.domain.validation import Resolver
from packager.http.limits import Limits

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
EVENT_LOG: web.AppKey[EventLog] = web.AppKey("event_log", EventLog)
RESOLVER: web.AppKey[Resolver] = web.AppKey("resolver")
READ_VIEWS: web.AppKey[ReadViews] = web.AppKey("read_views", ReadViews)
REQUESTER_KEYS: web.AppKey[RequesterKeys] = web.AppKey("requester_keys", RequesterKeys)
STORE: web.AppKey[Store] = web.AppKey("store")
LIMITS: web.AppKey[Limits] = web.AppKey("limits", Limits)
