"""`/package_dwc_archive` end to end: a query becomes a Darwin Core Archive that a DwC-A reader accepts."""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from dwca.read import DwCAReader

from packager.dev.ckan_server import SyntheticTable, serve_ckan
from tests.integration.conftest import SECRET
from tests.integration.support import SmtpSink, job_events, running_stack, submit

pytestmark = pytest.mark.kafka

DWC = "http://rs.tdwg.org/dwc/terms/"
EML = (
    '<?xml version="1.0" encoding="UTF-8"?><eml:eml xmlns:eml="eml://ecoinformatics.org/eml-2.1.1">'
    "<dataset><title>Specimens &amp; more</title></dataset></eml:eml>"
)


async def test_a_query_is_packaged_as_a_darwin_core_archive(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    smtp: SmtpSink,
    store_dir: Path,
    tmp_path: Path,
) -> None:
    table = SyntheticTable("occurrences", 20_000, seed=9)
    filters = {"country": "Kenya"}
    expected = [table.row(i) for i in range(table.rows) if table.country_of(i) == "Kenya"]
    port = int(service_env["PACKAGER_PORT"])
    async with serve_ckan({table.resource_id: table}) as api_url:
        with running_stack(service_env, tmp_path / "logs") as stack:
            job_id = await submit(
                port,
                "package_dwc_archive",
                SECRET,
                api_url=api_url,
                resource_id=table.resource_id,
                email="curator@example.org",
                filters=orjson.dumps(filters).decode(),
                eml=EML,
                for_gbif="true",
            )
            try:
                [message] = await smtp.wait_for(1, timeout=120)
            except TimeoutError:
                pytest.fail(f"no email.\nworker log:\n{stack.worker.log()}")
    assert job_id in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]

    events = await job_events(kafka_bootstrap, topic_prefix, job_id)
    counts = Counter(e.type for e in events)
    assert (counts["PackageCompleted"], counts["PackageFailed"]) == (1, 0)

    archive = store_dir / f"{job_id}.zip"
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        manifest = orjson.loads(zf.read("manifest.json"))
    assert {"occurrence.csv", "meta.xml", "eml.xml"} <= names
    assert manifest["row_count"] == len(expected)
    assert "eml" not in manifest["query"]

    with DwCAReader(str(archive)) as reader:
        assert reader.descriptor.core.type == DWC + "Occurrence"
        assert "Specimens & more" in reader.metadata.find(".//title").text
        rows = list(reader)
    assert len(rows) == len(expected)
    for row, record in zip(rows, expected, strict=True):
        assert row.id == str(record["_id"])
        assert row.data[DWC + "country"] == "Kenya"
        assert row.data[DWC + "year"] == str(record["year"])
        dynamic: dict[str, Any] = json.loads(row.data[DWC + "dynamicProperties"])
        assert dynamic.get("species") == record["species"]
