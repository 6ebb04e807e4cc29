"""Adapter: the CKAN metadata of a resource's dataset (`resource_show`, then `package_show`).

A GBIF-ready archive's EML is built from the dataset the resource belongs to. Both actions live beside the
`datastore_search` the request names (`.../api/3/action/datastore_search` -> `.../api/3/action/package_show`)
and are called with the request's API key, under the same retry policy as the datastore's pages.
"""

from __future__ import annotations

from typing import Any

from yarl import URL

from packager.adapters.ckan import CkanError, DatastoreClient


def action_url(api_url: str, action: str) -> str:
    """The URL of another action of the API whose `datastore_search` URL is `api_url`."""
    url = URL(api_url)
    return str(url.with_path(url.path.rsplit("/", 1)[0] + "/" + action).with_query(None))


def portal_url(api_url: str) -> str:
    """The portal's root URL (what comes before `/api/`), for links to its dataset pages."""
    url = URL(api_url)
    root = url.path.split("/api/", 1)[0] if "/api/" in url.path else ""
    return str(url.with_path(root or "/").with_query(None)).rstrip("/")


async def dataset_of(
    client: DatastoreClient, api_url: str, resource_id: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `package_show` and `resource_show` results of a resource; CkanError if CKAN refuses either."""
    resource = await client.call(action_url(api_url, "resource_show"), {"id": resource_id})
    package_id = resource.get("package_id")
    if not isinstance(package_id, str) or not package_id:
        raise CkanError("CKAN's resource_show names no package_id")
    package = await client.call(action_url(api_url, "package_show"), {"id": package_id})
    return package, resource
