"""The component schemas of the OpenAPI description: request bodies, answers, jobs and health.

Kept apart from the paths (`packager.http.openapi`) that refer to them by name (`ref`); parameters shared by
several request bodies are defined once here.
"""

from __future__ import annotations

from typing import Any

from packager.domain.validation import FORMATS, MAX_EML_CHARS

_REF = "#/components/schemas/"


def ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


_SECRET = _string("The shared secret (SECRET setting).")
_EMAIL = _string("Where to send the link.", format="email", example="requester@example.org")
_KEY = _string(
    "A CKAN API key, sent in the Authorization header to the CKAN host only. Never logged or stored."
)
_CALLBACK_URL = _string(
    "Optional: an http(s) URL that gets a signed JSON POST when the job completes or fails (a webhook, see "
    "docs/http-api.md#webhooks), checked as resource_url is (public hosts only unless "
    "ALLOW_PRIVATE_URLS). Refused when the service has no WEBHOOK_SECRET.",
    format="uri",
    maxLength=2000,
    example="https://portal.example.org/hooks/packager",
)
_NON_NEGATIVE = {
    "oneOf": [{"type": "string", "pattern": r"^\+?\d{0,15}$"}, {"type": "integer", "minimum": 0}],
}
_BOOLEAN_TEXT = {
    "oneOf": [
        {"type": "string", "enum": ["", "true", "false", "1", "0", "yes", "no", "t", "f"]},
        {"type": "boolean"},
    ],
}

_URL_REQUEST = {
    "type": "object",
    "required": ["secret", "resource_id", "resource_url", "email"],
    "properties": {
        "secret": _SECRET,
        "resource_id": _string("The CKAN resource id (named in the email; the file name falls back to it)."),
        "resource_url": _string(
            "An http(s) URL of the file, without credentials; private addresses are refused unless "
            "ALLOW_PRIVATE_URLS.",
            format="uri",
        ),
        "email": _EMAIL,
        "key": _KEY,
        "callback_url": _CALLBACK_URL,
    },
}


def _query_request(*, dwc: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "secret": _SECRET,
        "api_url": _string(
            "The portal's datastore_search URL (http(s), a public host, one of ALLOWED_API_HOSTS when set).",
            format="uri",
            example="https://data.example.org/api/3/action/datastore_search",
        ),
        "resource_id": _string("The datastore resource.", maxLength=500),
        "email": _EMAIL,
        "callback_url": _CALLBACK_URL,
        "filters": {
            "description": "A JSON object of CKAN filters (at most 8 levels deep): JSON text, or an object "
            "in a JSON body.",
            "oneOf": [{"type": "string"}, {"type": "object"}],
            "example": '{"country": ["Kenya", "Peru"]}',
        },
        "q": _string("Full-text search."),
        "plain": {"description": "CKAN's `plain` full-text option.", **_BOOLEAN_TEXT},
        "language": _string("CKAN's full-text language."),
        "fields": {
            "description": "Columns to include, comma-separated or a JSON list, in the order wanted.",
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        },
        "sort": _string("Sort order, e.g. `year desc` (`_id` is always added last)."),
        "offset": {"description": "Rows to skip (default 0).", **_NON_NEGATIVE},
        "limit": {"description": "Most rows to package (default: all).", **_NON_NEGATIVE},
        "doi": _string("A DOI for the data, mentioned in the email and the manifest."),
        "key": _KEY,
    }
    if dwc:
        properties["eml"] = _string(
            "EML metadata, written as eml.xml; 400 unless well-formed XML without a DOCTYPE, in UTF-8.",
            maxLength=MAX_EML_CHARS,
        )
        properties["for_gbif"] = {
            "description": (
                "A GBIF-ready archive: adds gbif.json (as the original did) and GBIF's offline checks to "
                "manifest.json (`gbif_checks`); without `eml`, eml.xml is built from the dataset's CKAN "
                "metadata (package_show) through the EML template."
            ),
            **_BOOLEAN_TEXT,
        }
    else:
        properties["format"] = _string("The data file's format.", enum=list(FORMATS), default="csv")
    return {
        "type": "object",
        "required": ["secret", "api_url", "resource_id", "email"],
        "properties": properties,
    }


def _secret_only() -> dict[str, Any]:
    return {"type": "object", "required": ["secret"], "properties": {"secret": _SECRET}}


def _listing_request() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["secret"],
        "properties": {
            "secret": _SECRET,
            "offset": {"description": "Entries to skip (default 0).", **_NON_NEGATIVE},
            "limit": {"description": "Most entries to return (default 100).", **_NON_NEGATIVE},
            "resource_id": _string("Only this resource."),
            "email": _string("Only this requester (the address: it is looked up by its pseudonym)."),
        },
    }


_HEALTH = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string", "enum": ["live", "ready", "degraded", "not ready"]},
        "reason": {"type": "string"},
    },
    "additionalProperties": True,
}

_JOB = {
    "type": "object",
    "properties": {
        "success": {"type": "boolean"},
        "job_id": {"type": "string"},
        "state": {
            "type": "string",
            "enum": ["queued", "running", "completed", "failed", "cancelled", "abandoned"],
        },
        "emailed": {"type": "boolean"},
        "email_error": {"type": "string", "nullable": True},
        "kind": {"type": "string", "enum": ["url", "datastore", "dwc"]},
        "resource_id": {"type": "string"},
        "lane": {"type": "string", "nullable": True},
        "rows_done": {"type": "integer"},
        "rows_total": {"type": "integer", "nullable": True},
        "bytes_done": {"type": "integer"},
        "bytes_total": {"type": "integer", "nullable": True},
        "percent": {"type": "number", "nullable": True},
        "size": {"type": "integer", "nullable": True},
        "download_url": {"type": "string", "nullable": True},
        "requester": {"type": "string", "nullable": True, "description": "Pseudonym, never the address."},
        "requester_domain": {"type": "string", "nullable": True},
        "requester_erased": {"type": "boolean"},
        "error": {"type": "string", "nullable": True},
        "requested_at": {"type": "string", "nullable": True},
        "started_at": {"type": "string", "nullable": True},
        "finished_at": {"type": "string", "nullable": True},
        "updated_at": {"type": "string", "nullable": True},
        "display": {
            "type": "object",
            "description": "What the job's page shows now, in words (its script reads these): `state` "
            "(queued, running, finishing, completed, expired, failed, cancelled), `headline`, `progress`, "
            "`message` and `next` (a failure told for a requester, and what to do), `download` "
            "(`url`, `text`), `size` (binary units), `expires`/`expires_at`, `finished`, `email`, "
            "`percent`, `bar`.",
            "additionalProperties": True,
        },
    },
}

_WHO = _string("The requester's pseudonym; their address only with ANONYMIZE_EMAILS off (docs/privacy.md).")

_COUNTS = {
    "type": "object",
    "properties": {
        "requests": {"type": "integer"},
        "errors": {"type": "integer"},
        "emails": {"type": "integer"},
    },
}


_WEBHOOK_BODY = {
    "type": "object",
    "required": ["event_id", "event", "job_id", "state", "resource_id", "occurred_at", "status_url"],
    "properties": {
        "event_id": _string("The terminal event's id (also in X-Packager-Delivery)."),
        "event": _string(
            "The terminal event's type.", enum=["PackageCompleted", "PackageFailed", "PackageCancelled"]
        ),
        "job_id": _string("The job id of the accepted answer.", format="uuid"),
        "state": _string("What became of the job.", enum=["completed", "failed", "cancelled"]),
        "resource_id": _string("The requested resource."),
        "ckan_host": _string("The portal's host."),
        "occurred_at": _string("When the job ended (RFC 3339, UTC).", format="date-time"),
        "status_url": _string("The job's status page.", format="uri"),
        "download_url": _string("Completed only: the ZIP's download link.", format="uri"),
        "size": {"type": "integer", "description": "Completed only: the ZIP's size in bytes."},
        "sha256": _string("Completed only: the ZIP's SHA-256 (hex)."),
        "rows": {"type": "integer", "nullable": True, "description": "Completed only: rows packaged."},
        "doi": _string("Completed only: the DOI, if one was given."),
        "error": _string("Failed only: what went wrong, written for the requester."),
        "error_type": _string("Failed only: the kind of failure."),
        "cancelled_by": _string("Cancelled only: who cancelled it.", enum=["operator", "requester"]),
    },
}


def component_schemas() -> dict[str, Any]:
    return {
        "WebhookBody": _WEBHOOK_BODY,
        "UrlRequest": _URL_REQUEST,
        "DatastoreRequest": _query_request(dwc=False),
        "DwcArchiveRequest": _query_request(dwc=True),
        "SecretOnly": _secret_only(),
        "StatisticsRequest": {
            "type": "object",
            "required": ["secret"],
            "properties": {"secret": _SECRET, "resource_id": _string("Only this resource's totals.")},
        },
        "ListingRequest": _listing_request(),
        "DailyRequest": {
            "type": "object",
            "required": ["secret"],
            "properties": {
                "secret": _SECRET,
                "resource_id": _string("Only this resource (default: all)."),
                "days": {
                    "description": "Days to answer, today (UTC) included: 1 to 366 (default 30).",
                    **_NON_NEGATIVE,
                },
            },
        },
        "Accepted": {
            "type": "object",
            "required": ["success", "msg", "status", "message", "job_id", "status_url"],
            "properties": {
                "success": {"type": "boolean", "enum": [True]},
                "msg": {"type": "string"},
                "status": {"type": "string", "enum": ["success"]},
                "message": {"type": "string"},
                "job_id": {"type": "string", "format": "uuid"},
                "status_url": {"type": "string"},
                "cancel_token": _string(
                    "Lets whoever holds it cancel this job (`POST /jobs/{job_id}/cancel` with `token`)."
                ),
                "cancel_url": _string("Where to post the cancel token."),
            },
        },
        "CancelRequest": {
            "type": "object",
            "properties": {
                "secret": _string("The shared secret (an operator's cancel); or give `token`."),
                "token": _string("The job's `cancel_token` from its accept answer (the requester's cancel)."),
            },
        },
        "CancelAnswer": {
            "type": "object",
            "required": ["success", "status", "message", "job_id", "state", "status_url"],
            "properties": {
                "success": {"type": "boolean"},
                "msg": {"type": "string"},
                "status": {"type": "string"},
                "message": {"type": "string"},
                "error": {"type": "string"},
                "job_id": {"type": "string", "format": "uuid"},
                "state": {"type": "string", "nullable": True, "description": "The job's state now."},
                "status_url": _string("The job's status page, which shows its outcome."),
            },
        },
        "ResetRequest": {
            "type": "object",
            "required": ["secret", "which"],
            "properties": {
                "secret": _SECRET,
                "which": {"type": "string", "enum": ["requests", "errors"]},
            },
        },
        "ResetAnswer": {
            "type": "object",
            "required": ["success", "status", "message", "which", "since"],
            "properties": {
                "success": {"type": "boolean"},
                "msg": {"type": "string"},
                "status": {"type": "string"},
                "message": {"type": "string"},
                "which": {"type": "string", "enum": ["requests", "errors"]},
                "since": _string("The cut: entries that occurred after it are listed and counted."),
            },
        },
        "Done": {
            "type": "object",
            "required": ["success", "status", "message"],
            "properties": {
                "success": {"type": "boolean"},
                "msg": {"type": "string"},
                "status": {"type": "string"},
                "message": {"type": "string"},
            },
        },
        "EraseRequest": {
            "type": "object",
            "required": ["secret", "email"],
            "properties": {"secret": _SECRET, "email": _string("The requester's address.", format="email")},
        },
        "Erased": {
            "type": "object",
            "required": ["success", "status", "message", "requester", "keys_destroyed"],
            "properties": {
                "success": {"type": "boolean", "enum": [True]},
                "msg": {"type": "string"},
                "status": {"type": "string", "enum": ["success"]},
                "message": {"type": "string"},
                "requester": {
                    "type": "string",
                    "description": "The requester's pseudonym, as pages show it.",
                },
                "keys_destroyed": {"type": "integer", "description": "0: unknown, or erased before."},
                "operation_id": {"type": "string", "description": "The RequesterErased event's job id."},
            },
        },
        "Failure": {
            "type": "object",
            "required": ["success", "msg", "status", "error", "message"],
            "properties": {
                "success": {"type": "boolean", "enum": [False]},
                "msg": {"type": "string"},
                "status": {"type": "string", "enum": ["failed"]},
                "error": {
                    "type": "string",
                    "description": "BadRequestError, NotAuthorizedError, PayloadTooLargeError, "
                    "TooManyRequestsError, ServiceUnavailableError, HTTPNotFound, HTTPGone, "
                    "HTTPMethodNotAllowed, InternalError...",
                },
                "message": {"type": "string"},
                "retry_after": {
                    "type": "integer",
                    "description": "429 only: seconds until asking again may succeed (as `Retry-After`).",
                },
            },
        },
        "Status": {
            "type": "object",
            "properties": {
                "success": {"type": "boolean"},
                "status": {"type": "string"},
                "worker_count": {"type": "integer"},
                "queue_length": {"type": "integer"},
                "processed_requests": {"type": "integer"},
                "cache_entries": {"type": "integer"},
                "builds_in_flight": {"type": "integer"},
                "waiters": {"type": "integer"},
            },
        },
        "Statistics": {
            "type": "object",
            "properties": {
                "success": {"type": "boolean"},
                "status": {"type": "boolean"},
                "totals": {"type": "object", "additionalProperties": _COUNTS},
            },
        },
        "Daily": {
            "type": "object",
            "properties": {
                "success": {"type": "boolean"},
                "status": {"type": "boolean"},
                "resource_id": _string("The resource asked for, or `*` for all."),
                "days": {
                    "type": "array",
                    "description": "One entry per UTC day, oldest first, today last; days without any "
                    "are zeros.",
                    "items": {
                        "type": "object",
                        "properties": {
                            "date": {"type": "string", "format": "date"},
                            "requests": {"type": "integer"},
                            "errors": {"type": "integer"},
                            "requesters": {"type": "integer", "description": "Unique requesters that day."},
                        },
                    },
                },
            },
        },
        "RequestList": {
            "type": "object",
            "properties": {
                "success": {"type": "boolean"},
                "status": {"type": "boolean"},
                "requests": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "count": {"type": "integer"},
                            "domain": {"type": "string"},
                            "email": _WHO,
                            "resource_id": {"type": "string"},
                            "timestamp": {"type": "number"},
                        },
                    },
                },
            },
        },
        "ErrorList": {
            "type": "object",
            "properties": {
                "success": {"type": "boolean"},
                "status": {"type": "boolean"},
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "email": _WHO,
                            "message": {"type": "string"},
                            "resource_id": {"type": "string"},
                            "timestamp": {"type": "number"},
                        },
                    },
                },
            },
        },
        "Job": _JOB,
        "Health": _HEALTH,
    }
