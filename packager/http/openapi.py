"""The OpenAPI 3 description of the HTTP API, served by the ingress at `GET /openapi.json`.

Written as Python dicts so parameters shared by endpoints are defined once: the paths here, the component
schemas they refer to in `packager.http.openapi_schemas`. A test validates it as OpenAPI 3.0 and checks
that it names exactly the routes the ingress and the worker's ops server register.
POST endpoints take a form-encoded body (what the CKAN extension sends), a JSON object, or multipart form
data, with the same fields; in a JSON body non-string values (e.g. `filters` as an object, `offset` as a
number) are accepted and read as their JSON text.
"""

from __future__ import annotations

from typing import Any

from packager.http.openapi_schemas import component_schemas, ref

VERSION = "0.1.0"


def _body(schema_name: str) -> dict[str, Any]:
    schema = ref(schema_name)
    return {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {"schema": schema},
            "application/json": {"schema": schema},
            "multipart/form-data": {"schema": schema},
        },
    }


def _json(schema_name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(schema_name)}}}


def _failure(description: str) -> dict[str, Any]:
    return _json("Failure", description)


_REJECTIONS = {
    "400": _failure("A parameter is missing or invalid, or the body is not UTF-8 / not a JSON object."),
    "401": _failure("Wrong or missing secret."),
    "413": _failure("The body is over MAX_BODY_SIZE."),
    "503": _failure("Kafka is unreachable or did not acknowledge in KAFKA_SEND_TIMEOUT."),
}
_LIMITED = {
    "429": {
        **_failure(
            "A fair limit is reached (MAX_ACTIVE_JOBS_PER_REQUESTER, MAX_REQUESTS_PER_HOUR_PER_REQUESTER or "
            "MAX_ACTIVE_JOBS_PER_RESOURCE); `message` says when to ask again. Nothing was appended."
        ),
        "headers": {
            "Retry-After": {
                "description": "Seconds until asking again may succeed.",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    }
}


def _package(summary: str, schema_name: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "tags": ["packages"],
            "requestBody": _body(schema_name),
            "responses": {
                "200": _json("Accepted", "Accepted: the job is on the log."),
                **_REJECTIONS,
                **_LIMITED,
            },
            "callbacks": {"jobFinished": {"{$request.body#/callback_url}": {"post": _WEBHOOK}}},
        }
    }


# The webhook POSTed to a request's `callback_url` (and to WEBHOOK_URL) when its job ends
# (docs/http-api.md#webhooks).
_WEBHOOK: dict[str, Any] = {
    "summary": "The job completed or failed (at least once: dedupe by X-Packager-Delivery).",
    "parameters": [
        {
            "name": "X-Packager-Signature",
            "in": "header",
            "required": True,
            "schema": {"type": "string", "example": "t=1796212860,v1=5f0c..."},
            "description": 'HMAC-SHA256 (hex), keyed by WEBHOOK_SECRET, of "<t>.<body>"; refuse an old t.',
        },
        {
            "name": "X-Packager-Event",
            "in": "header",
            "required": True,
            "schema": {"type": "string", "enum": ["PackageCompleted", "PackageFailed", "PackageCancelled"]},
        },
        {
            "name": "X-Packager-Delivery",
            "in": "header",
            "required": True,
            "schema": {"type": "string"},
            "description": "The terminal event's id: the same on every retry of this webhook.",
        },
    ],
    "requestBody": {"required": True, "content": {"application/json": {"schema": ref("WebhookBody")}}},
    "responses": {
        "2XX": {"description": "Received; any other answer (or none) is retried until WEBHOOK_RETRY_FOR."}
    },
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
        "/requesters/erase": {
            "post": _secret_post(
                "Erase a requester: destroy their data keys (their sealed addresses become unreadable for "
                "good) and append RequesterErased. Statistics keep counting them under their pseudonym; "
                "emails not yet sent to them are not sent (docs/privacy.md).",
                "privacy",
                "EraseRequest",
                "Erased",
                "The requester's keys are destroyed.",
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
        "/": {
            "get": _status_get(
                "Service status (as /status); a browser (Accept: text/html, not JSON) gets the landing page.",
            ),
            "post": _status_post("Service status."),
        },
        "/docs": {
            "get": {
                "summary": "The endpoints and what they do, as a page for people.",
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": "The page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/static/{name}": {
            "get": {
                "summary": "The pages' style sheet, script and icon.",
                "tags": ["jobs"],
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "The file.", "content": {"*/*": {"schema": {"type": "string"}}}},
                    "404": _failure("No such file."),
                },
            }
        },
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
        "/statistics/daily": {
            "post": _secret_post(
                "Requests, failures and unique requesters per UTC day, of all resources or one.",
                "statistics",
                "DailyRequest",
                "Daily",
                "The series.",
            )
        },
        "/statistics/page": {
            "get": {
                "summary": "The statistics as charts for people: the page asks for the secret and sends "
                "it in POST bodies to `/statistics` and `/statistics/daily`, never in its URL.",
                "tags": ["statistics"],
                "responses": {
                    "200": {
                        "description": "The page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/jobs/{job_id}": {
            "get": {
                "summary": "A job's state as JSON, or a live status page for a browser (Accept: text/html, "
                "not JSON); 404 as a page for a browser too.",
                "tags": ["jobs"],
                "parameters": [_JOB_ID_PARAM],
                "responses": {
                    "200": {
                        "description": "The job.",
                        "content": {
                            "application/json": {"schema": ref("Job")},
                            "text/html": {"schema": {"type": "string"}},
                        },
                    },
                    "404": not_found,
                    "503": _failure("This ingress keeps no read model."),
                },
            }
        },
        "/jobs/{job_id}/cancel": {
            "post": {
                "summary": "Cancel a job not finished yet: with the shared secret (`secret`) or the job's "
                "cancel token from its accept answer (`token`). The job ends with PackageCancelled; a build "
                "in progress stops within 2 s and leaves no file; no completion email is sent (a short "
                "cancellation email only with EMAIL_CANCELLATIONS). Identical requests that waited for its "
                "build are built on their own.",
                "tags": ["jobs"],
                "parameters": [_JOB_ID_PARAM],
                "requestBody": _body("CancelRequest"),
                "responses": {
                    "200": _json("CancelAnswer", "Cancelled (`state` is `cancelled`)."),
                    "202": _json("CancelAnswer", "Asked; the job's outcome was not in the views within 5 s."),
                    "401": _failure("Wrong or missing secret, or a wrong token for this job."),
                    "404": not_found,
                    "409": _json(
                        "CancelAnswer", "The job has finished (or finished first): `state` says how."
                    ),
                    "503": _failure("The views cannot be read, or Kafka did not acknowledge."),
                },
            }
        },
        "/statistics/reset": {
            "post": _secret_post(
                "Reset the `requests` or `errors` statistics from now (StatisticsReset): the listings and "
                "the totals' requests or errors count only what occurred after it. Nothing is deleted "
                "from the log; unique requester counts are kept.",
                "statistics",
                "ResetRequest",
                "ResetAnswer",
                "Reset.",
            )
        },
        "/jobs/{job_id}/events": {
            "get": {
                "summary": "Server-Sent Events: `event: job` with the Job JSON on every change, then "
                "`event: end` once the job is finished and its email's outcome (sent, failed, none due) "
                "is known.",
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
                    "200": _json(
                        "Health",
                        "Ready; on the ingress `degraded` (with a reason) while its read model lacks an "
                        "event whose fold raised or its reading loop is being restarted.",
                    ),
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
            {"name": "privacy"},
        ],
        "paths": _paths(),
        "components": {"schemas": component_schemas()},
    }
