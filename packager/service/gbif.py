"""The EML of a GBIF-ready archive (`for_gbif` without `eml`): the dataset's CKAN metadata, templated.

When CKAN refuses `resource_show` or `package_show` (a portal that does not offer them, a key that may read
the datastore but not the dataset), the archive is still built, with an EML made from what the request says
(the resource id, its DOI), and the manifest's `eml_source` says why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from packager.adapters.ckan import CkanError, DatastoreClient
from packager.adapters.ckan_metadata import dataset_of, portal_url
from packager.core.settings import Settings
from packager.domain.dwc.eml import DatasetMetadata, load_eml_template, render_eml

log = logging.getLogger(__name__)


async def eml_from_ckan(
    client: DatastoreClient, request: Mapping[str, Any], settings: Settings
) -> tuple[str, dict[str, Any]]:
    """The EML document for the request's dataset, and what the manifest says of its source."""
    api_url, resource_id = str(request["api_url"]), str(request["resource_id"])
    template = load_eml_template(settings)
    source: dict[str, Any]
    try:
        package, resource = await dataset_of(client, api_url, resource_id)
        source = {"source": "ckan", "dataset_id": str(package.get("id") or "")}
    except CkanError as exc:
        log.warning("the EML is made without the dataset's metadata: %s", exc.message)
        package, resource = {}, {"id": resource_id}
        source = {"source": "request", "reason": exc.message}
    metadata = DatasetMetadata.from_ckan(
        package, resource, portal_url=portal_url(api_url), fallback_doi=str(request.get("doi") or "")
    )
    return render_eml(template, metadata), source
