"""`resource_show` and `package_show` of the CKAN-compatible server: each table is a resource of a dataset.

Every table served belongs to a dataset of its own, whose `package_show` answer has the shape of CKAN 2.12's
(`package_dictize`: the package's columns, `license_title`/`license_url` from the licence register,
`organization`, `resources`, `tags`, `groups`, `extras`, `num_resources`, `num_tags`, `isopen`, `type`).
A test gives a dataset's fields with `create_ckan_app(datasets={resource_id: {...}})` (e.g. `title`, `notes`,
`license_id`, `maintainer`, a `doi` as ckanext-doi adds it); the rest are defaults. Both actions take `id`
(GET query or JSON/form body); an unknown id is CKAN's 404 "Not found", a wrong token its 403.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any, Final

import orjson
from aiohttp import web

# CKAN 2.12's default licence register (ckan/model/license.py), the few ids tests use.
LICENSES: Final[Mapping[str, tuple[str, str]]] = {
    "cc-by": ("Creative Commons Attribution", "http://www.opendefinition.org/licenses/cc-by"),
    "cc-zero": ("Creative Commons CCZero", "http://www.opendefinition.org/licenses/cc-zero"),
    "cc-nc": ("Creative Commons Non-Commercial (Any)", "http://creativecommons.org/licenses/by-nc/2.0/"),
    "odc-by": ("Open Data Commons Attribution License", "http://www.opendefinition.org/licenses/odc-by"),
    "notspecified": ("License not specified", ""),
}
_OPEN = frozenset({"cc-by", "cc-zero", "odc-by"})
_CREATED: Final = "2026-01-01T00:00:00.000000"
_NAMESPACE: Final = uuid.UUID("6f1c3f0e-8a43-4f5e-9b8e-3c1d2a7b5e10")


def _dataset_name(resource_id: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", f"dataset-{resource_id}".lower())[:100]


def resource_dict(resource_id: str, package_id: str, site_url: str) -> dict[str, Any]:
    """A datastore resource as CKAN 2.12's `resource_show` gives it."""
    return {
        "cache_last_updated": None,
        "cache_url": None,
        "created": _CREATED,
        "datastore_active": True,
        "description": "",
        "format": "",
        "hash": "",
        "id": resource_id,
        "last_modified": None,
        "metadata_modified": _CREATED,
        "mimetype": None,
        "mimetype_inner": None,
        "name": resource_id,
        "package_id": package_id,
        "position": 0,
        "resource_type": None,
        "size": None,
        "state": "active",
        "url": f"{site_url}/datastore/dump/{resource_id}",
        "url_type": "datastore",
    }


def package_dict(resource_id: str, fields: Mapping[str, Any], site_url: str) -> dict[str, Any]:
    """The dataset of a table as CKAN 2.12's `package_show` gives it; `fields` override the defaults."""
    package_id = str(fields.get("id") or uuid.uuid5(_NAMESPACE, resource_id))
    package: dict[str, Any] = {
        "author": None,
        "author_email": None,
        "creator_user_id": str(uuid.uuid5(_NAMESPACE, "creator")),
        "id": package_id,
        "license_id": "cc-by",
        "maintainer": None,
        "maintainer_email": None,
        "metadata_created": _CREATED,
        "metadata_modified": _CREATED,
        "name": _dataset_name(resource_id),
        "notes": None,
        "organization": None,
        "owner_org": None,
        "private": False,
        "state": "active",
        "title": resource_id,
        "type": "dataset",
        "url": None,
        "version": None,
        "extras": [],
        "groups": [],
        "tags": [],
        "relationships_as_object": [],
        "relationships_as_subject": [],
        **fields,
    }
    package["id"] = package_id
    package["resources"] = [resource_dict(resource_id, package_id, site_url)]
    package["num_resources"] = len(package["resources"])
    package["num_tags"] = len(package["tags"])
    license_id = package.get("license_id")
    title, url = LICENSES.get(str(license_id), (license_id, ""))
    package["isopen"] = license_id in _OPEN
    package["license_title"] = title
    if url:
        package["license_url"] = url
    return package


class Catalogue:
    """The datasets of the served tables, found by resource id or by package id or name."""

    def __init__(self, resource_ids: list[str], datasets: Mapping[str, Mapping[str, Any]]) -> None:
        self._resource_ids = resource_ids
        self._datasets = datasets

    def package(self, resource_id: str, site_url: str) -> dict[str, Any]:
        """The dataset holding the resource."""
        return package_dict(resource_id, self._datasets.get(resource_id, {}), site_url)

    def resource(self, resource_id: str, site_url: str) -> dict[str, Any] | None:
        """`resource_show`'s result, or None for an unknown id."""
        if resource_id not in self._resource_ids:
            return None
        return self.package(resource_id, site_url)["resources"][0]

    def find_package(self, id_or_name: str, site_url: str) -> dict[str, Any] | None:
        """`package_show`'s result, or None for an unknown id or name."""
        for resource_id in self._resource_ids:
            package = self.package(resource_id, site_url)
            if id_or_name in (package["id"], package["name"]):
                return package
        return None


_CATALOGUE = web.AppKey("ckan_catalogue", Catalogue)
_TOKEN = web.AppKey("ckan_show_token", str)


def _answer(request: web.Request, status: int, body: dict[str, Any]) -> web.Response:
    action = request.path.rsplit("/", 1)[-1]
    help_url = f"{request.scheme}://{request.host}/api/3/action/help_show?name={action}"
    return web.Response(
        status=status,
        body=orjson.dumps({"help": help_url, **body}),
        content_type="application/json",
        charset="utf-8",
    )


async def _requested_id(request: web.Request) -> str:
    if request.method == "GET":
        return request.query.get("id", "")
    body = await request.read()
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return str((await request.post()).get("id") or "")
    try:
        parsed = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        parsed = None
    return str(parsed.get("id") or "") if isinstance(parsed, dict) else ""


async def _handle_show(request: web.Request) -> web.Response:
    action = request.path.rsplit("/", 1)[-1]
    wanted = await _requested_id(request)
    if not wanted:
        error = {"id": ["Missing value"], "__type": "Validation Error"}
        return _answer(request, 409, {"success": False, "error": error})
    site_url = f"{request.scheme}://{request.host}"
    catalogue = request.app[_CATALOGUE]
    if action == "resource_show":
        result = catalogue.resource(wanted, site_url)
    else:
        result = catalogue.find_package(wanted, site_url)
    if result is None:
        return _answer(
            request, 404, {"success": False, "error": {"message": "Not found", "__type": "Not Found Error"}}
        )
    token = request.app[_TOKEN]
    if token and request.headers.get("Authorization", "") != token:
        what = "resource" if action == "resource_show" else "package"
        message = f"Access denied: User  not authorized to read {what} {result['id']}"
        return _answer(
            request, 403, {"success": False, "error": {"message": message, "__type": "Authorization Error"}}
        )
    return _answer(request, 200, {"success": True, "result": result})


def add_show_routes(
    app: web.Application,
    resource_ids: list[str],
    datasets: Mapping[str, Mapping[str, Any]],
    api_token: str | None,
) -> None:
    """Serve `resource_show` and `package_show` (GET and POST, /api/3/action and /api/action) on `app`."""
    app[_CATALOGUE] = Catalogue(resource_ids, datasets)
    app[_TOKEN] = api_token or ""
    for base in ("/api/3/action", "/api/action"):
        for action in ("resource_show", "package_show"):
            app.router.add_get(f"{base}/{action}", _handle_show, allow_head=False)
            app.router.add_post(f"{base}/{action}", _handle_show)
