"""The OpenAPI 3 description of the HTTP API, served by the ingress at `GET /openapi.json`.

Written as a Python dict so parameters shared by endpoints are defined once. A test validates it as
OpenAPI 3.0 and checks that it names exactly the routes the ingress and the worker's ops server register.
POST endpoints take a form-encoded body (what the CKAN extension sends), a JSON object, or multipart form
data, with the same fields; in a JSON body non-string values (e.g. `filters` as an object, `offset` as a
number) are accepted and read as their JSON text.
"""

from __future__ import annotations

from typing import Any

from packager.domain.validation import FORMATS, MAX_EML_CHARS

VERSION = "0.1.0"

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


_SECRET = _string("The shared secret (SECRET setting).")
_EMAIL = _string("Where to send the link.", format="email", example="requester@example.org")
_KEY = _string(
    "A CKAN API key, sent in the Authorization header to the CKAN host only. Never logged or stored."
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
            "EML metadata, written as eml.xml; must be well-formed XML.", maxLength=MAX_EML_CHARS
        )
        properties["for_gbif"] = {"description": "Accepted for compatibility; no effect.", **_BOOLEAN_TEXT}
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
            "email": _string("Only this requester (hashed the same way when ANONYMIZE_EMAILS)."),
        },
    }


def _body(schema_name: str) -> dict[str, Any]:
    schema = _ref(schema_name)
    return {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {"schema": schema},
            "application/json": {"schema": schema},
            "multipart/form-data": {"schema": schema},
        },
    }


def _json(schema_name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema_name)}}}


def _failure(description: str) -> dict[str, Any]:
    return _json("Failure", description)


_REJECTIONS = {
    "400": _failure("A parameter is missing or invalid, or the body is not UTF-8 / not a JSON object."),
    "401": _failure("Wrong or missing secret."),
    "413": _failure("The body is over MAX_BODY_SIZE."),
    "503": _failure("Kafka is unreachable or did not acknowledge in KAFKA_SEND_TIMEOUT."),
}


def _package(summary: str, schema_name: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "tags": ["packages"],
            "requestBody": _body(schema_name),
            "responses": {"200": _json("Accepted", "Accepted: the job is on the log."), **_REJECTIONS},
        }
    }


def _secret_post(summary: str, tag: str, schema_name: str, answer: str, description: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "tags": [tag],
        "requestBody": _body(schema_name),
        "responses": {
            "200": _json(answer, description),
            "400": _REJECTIONS["400"],
            "401": _REJECTIONS["401"],
            "413": _REJECTIONS["413"],
            "503": _failure("This ingress keeps no read model, or Kafka cannot be asked."),
        },
    }


def _status_get(summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "tags": ["status"],
        "parameters": [{"name": "secret", "in": "query", "required": True, "schema": {"type": "string"}}],
        "responses": {
            "200": _json("Status", "Workers, queue length and processed jobs."),
            "401": _REJECTIONS["401"],
            "503": _failure("This ingress keeps no read model, or Kafka cannot be asked."),
        },
    }


def _status_post(summary: str) -> dict[str, Any]:
    return _secret_post(
        summary, "status", "SecretOnly", "Status", "Workers, queue length and processed jobs."
    )


_JOB_ID_PARAM = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
    "description": "The job id from the accepted answer.",
}

_HEALTH = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string", "enum": ["live", "ready", "not ready"]},
        "reason": {"type": "string"},
    },
    "additionalProperties": True,
}

_JOB = {
    "type": "object",
    "properties": {
        "success": {"type": "boolean"},
        "job_id": {"type": "string"},
        "state": {"type": "string", "enum": ["queued", "running", "completed", "failed"]},
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
        "error": {"type": "string", "nullable": True},
        "requested_at": {"type": "string", "nullable": True},
        "started_at": {"type": "string", "nullable": True},
        "finished_at": {"type": "string", "nullable": True},
        "updated_at": {"type": "string", "nullable": True},
    },
}

_COUNTS = {
    "type": "object",
    "properties": {
        "requests": {"type": "integer"},
        "errors": {"type": "integer"},
        "emails": {"type": "integer"},
    },
}


def _schemas() -> dict[str, Any]:
    return {
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
                    "ServiceUnavailableError, HTTPNotFound, HTTPGone, HTTPMethodNotAllowed, InternalError...",
                },
                "message": {"type": "string"},
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
                            "email": {"type": "string"},
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
                            "email": {"type": "string"},
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


def _paths() -> dict[str, Any]:
    not_found = _failure("No such job.")
    return {
        "/package_url": _package("Package the file at resource_url and email a link.", "UrlRequest"),
        "/package_datastore": _package(
            "Package the rows of a datastore query and email a link.", "DatastoreRequest"
        ),
        "/package_dwc_archive": _package(
            "Package a datastore query as a Darwin Core Archive and email a link.", "DwcArchiveRequest"
        ),
        "/clear_caches": {
            "post": _secret_post(
                "Empty the cache of built ZIPs (CacheCleared on every partition).",
                "packages",
                "SecretOnly",
                "Done",
                "Done.",
            )
        },
        "/downloads/{name}": {
            "get": {
                "summary": "A finished ZIP (Range requests supported).",
                "tags": ["packages"],
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.zip$"},
                    },
                    {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "The ZIP.",
                        "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "206": {
                        "description": "The requested range of the ZIP.",
                        "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "404": _failure("No such download."),
                    "410": _failure("The download is older than CACHE_TIME."),
                    "416": {"description": "The range is not satisfiable."},
                },
            }
        },
        "/": {"get": _status_get("Service status (as /status)."), "post": _status_post("Service status.")},
        "/status": {"get": _status_get("Service status."), "post": _status_post("Service status.")},
        "/statistics": {
            "post": _secret_post(
                "Requests, errors and unique requesters per resource and in all (`*`).",
                "statistics",
                "StatisticsRequest",
                "Statistics",
                "Totals.",
            )
        },
        "/statistics/requests": {
            "post": _secret_post(
                "Requests, newest first.", "statistics", "ListingRequest", "RequestList", "Requests."
            )
        },
        "/statistics/errors": {
            "post": _secret_post(
                "Failures, newest first.", "statistics", "ListingRequest", "ErrorList", "Errors."
            )
        },
        "/jobs/{job_id}": {
            "get": {
                "summary": "A job's state as JSON, or a live status page for a browser (Accept: text/html).",
                "tags": ["jobs"],
                "parameters": [_JOB_ID_PARAM],
                "responses": {
                    "200": {
                        "description": "The job.",
                        "content": {
                            "application/json": {"schema": _ref("Job")},
                            "text/html": {"schema": {"type": "string"}},
                        },
                    },
                    "404": not_found,
                    "503": _failure("This ingress keeps no read model."),
                },
            }
        },
        "/jobs/{job_id}/events": {
            "get": {
                "summary": "Server-Sent Events: `event: job` with the Job JSON on every change, then "
                "`event: end`.",
                "tags": ["jobs"],
                "parameters": [_JOB_ID_PARAM],
                "responses": {
                    "200": {
                        "description": "The event stream.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "404": not_found,
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format). Also served by each worker.",
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": "Every series.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/health/live": {
            "get": {
                "summary": "The process answers. Also served by each worker.",
                "tags": ["operations"],
                "responses": {"200": _json("Health", "Alive.")},
            }
        },
        "/health/ready": {
            "get": {
                "summary": "Ready to serve: on the ingress, the broker answers and the read model caught up "
                "with the log; on a worker, it started, holds partitions and is not rebalancing.",
                "tags": ["operations"],
                "responses": {
                    "200": _json("Health", "Ready."),
                    "503": _json("Health", "Not ready, and why."),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This description.",
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3 document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }


def spec() -> dict[str, Any]:
    """The OpenAPI 3.0 document of the ingress (and the worker's /metrics and /health/* subset)."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "ckanpackager",
            "version": VERSION,
            "description": "Packages CKAN resources into ZIPs and emails download links. POST bodies may be "
            "form-encoded (what the CKAN extension sends), a JSON object, or multipart form data. Answers "
            "carry both `success`/`msg` and `status`/`message`.",
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "packages"},
            {"name": "status"},
            {"name": "statistics"},
            {"name": "jobs"},
            {"name": "operations"},
        ],
        "paths": _paths(),
        "components": {"schemas": _schemas()},
    }
