"""What every handler of the ingress shares: reading parameters, checking the shared secret, JSON answers.

The write endpoints (`packager.http.ingress`) and the read endpoints (`packager.http.read_api`) both import
from here, never from each other.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from packager.core.errors import (
    BadRequestError,
    NotAuthorizedError,
    PackagerError,
    PayloadTooLargeError,
    TooManyRequestsError,
)
from packager.core.settings import Settings
from packager.domain.secrets import constant_time_equal
from packager.http import pages
from packager.http.app_keys import SETTINGS

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def failure_body(error: str, message: str) -> dict[str, Any]:
    """The error shape of the original service, with the documented `success`/`msg` keys added."""
    return {"success": False, "msg": message, "status": "failed", "error": error, "message": message}


def json_response(body: Mapping[str, Any], status: int = 200) -> web.Response:
    """A JSON answer encoded with orjson."""
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every failure to a JSON answer (a page for a browser's GET): domain errors to their status, the
    rest to 500."""
    try:
        return await handler(request)
    except TooManyRequestsError as exc:
        # `message` says when to ask again, for people (the CLI prints it); programs read the header.
        body = {**failure_body(exc.error_name, exc.message), "retry_after": exc.retry_after}
        response = json_response(body, exc.http_status)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except PackagerError as exc:
        return _failure(request, exc.error_name, exc.message, exc.http_status)
    except web.HTTPRequestEntityTooLarge:
        return _failure(request, "PayloadTooLargeError", "The request body is too large", 413)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _failure(request, type(exc).__name__, exc.reason, exc.status)
    except Exception:
        log.exception("Unexpected error handling %s %s", request.method, request.path)
        return _failure(request, "InternalError", "An unexpected error occurred", 500)


def _failure(request: web.Request, error: str, message: str, status: int) -> web.Response:
    if request.method in ("GET", "HEAD") and pages.wants_html(request):
        return pages.error_page(request, request.app[SETTINGS], status, message)
    return json_response(failure_body(error, message), status)


async def read_params(request: web.Request) -> dict[str, str]:
    """Parameters from a form-encoded (what the CKAN extension sends) or a JSON body."""
    settings = request.app[SETTINGS]
    if request.content_length is not None and request.content_length > settings.max_body_size:
        raise PayloadTooLargeError(f"The request body is over {settings.max_body_size} bytes")
    if request.content_type.startswith("multipart/"):
        return await _multipart_params(request, settings.max_body_size)
    body = await request.read()
    if request.content_type == "application/json":
        try:
            doc = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            raise BadRequestError("The request body is not valid JSON") from None
        if not isinstance(doc, dict):
            raise BadRequestError("The JSON body must be an object")
        return {
            str(k): v if isinstance(v, str) else _as_json_text(k, v) for k, v in doc.items() if v is not None
        }
    try:
        # Percent-escapes are decoded as UTF-8 too: `%ff` is as invalid as a raw 0xff byte.
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise BadRequestError("The request body is not valid UTF-8") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        params.setdefault(name, value)  # the first of repeated parameters wins, as in Flask's form
    return params


def _as_json_text(name: str, value: Any) -> str:
    """A non-string JSON parameter as JSON text (as a form would carry it)."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # orjson writes at most 254 levels, though it reads up to 1,024
        raise BadRequestError(f"Parameter {name} is nested too deeply") from None


async def _multipart_params(request: web.Request, limit: int) -> dict[str, str]:
    """The text fields of a multipart form; file parts are read (within the limit) and ignored.

    Parsed part by part rather than with `request.post()`, which spools file parts to temporary files it
    leaves open when the body turns out malformed, and which does not count a chunked body against the limit.
    """
    params: dict[str, str] = {}
    size = 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadRequestError("Nested multipart bodies are not accepted")
            raw = bytearray()
            while chunk := await part.read_chunk():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(f"The request body is over {limit} bytes")
                raw += chunk
            if part.name is None or part.filename is not None:
                continue
            params.setdefault(part.name, part.decode(bytes(raw)).decode(part.get_charset("utf-8")))
    except (ValueError, LookupError, HttpProcessingError):  # also UnicodeDecodeError, unknown charsets
        raise BadRequestError("The request body is not a valid multipart form") from None
    return params


def authenticate(params: Mapping[str, str], settings: Settings) -> None:
    """Check the shared secret in constant time."""
    if not constant_time_equal(str(params.get("secret", "")), settings.secret):
        raise NotAuthorizedError("Wrong/missing secret")
