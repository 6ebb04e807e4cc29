"""A GBIF-ready archive end to end: `for_gbif` without `eml` on a real broker gives an archive whose eml.xml
carries the dataset's CKAN metadata (package_show), with the original's gbif.json and GBIF's offline checks
in its manifest."""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path

import orjson
import pytest
from dwca.read import DwCAReader

from packager.dev.ckan_server import SyntheticTable, serve_ckan
from tests.integration.conftest import SECRET
from tests.integration.support import SmtpSink, job_events, running_stack, submit

pytestmark = [pytest.mark.kafka, pytest.mark.features]

DATASET = {
    "title": 'Bird skins & eggs <1850-1900> "Zoë"',
    "notes": "Specimens of the bird group.",
    "license_id": "cc-zero",
    "maintainer": "Bird curators",
    "maintainer_email": "birds@example.org",
    "doi": "10.5519/qd.gbif18",
}


async def test_a_gbif_archive_without_eml_describes_its_dataset(
    kafka_bootstrap: str,
    topic_prefix: str,
    service_env: dict[str, str],
    smtp: SmtpSink,
    store_dir: Path,
    tmp_path: Path,
) -> None:
    table = SyntheticTable("gbif-birds", 3_000, seed=18)
    port = int(service_env["PACKAGER_PORT"])
    async with serve_ckan({table.resource_id: table}, datasets={table.resource_id: DATASET}) as api_url:
        with running_stack(service_env, tmp_path / "logs") as stack:
            job_id = await submit(
                port,
                "package_dwc_archive",
                SECRET,
                api_url=api_url,
                resource_id=table.resource_id,
                email="curator@example.org",
                for_gbif="true",
            )
            try:
                await smtp.wait_for(1, timeout=120)
            except TimeoutError:
                pytest.fail(f"no email.\nworker log:\n{stack.worker.log()}")

    events = await job_events(kafka_bootstrap, topic_prefix, job_id)
    counts = Counter(e.type for e in events)
    assert (counts["PackageCompleted"], counts["PackageFailed"]) == (1, 0)

    archive = store_dir / f"{job_id}.zip"
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        manifest = orjson.loads(zf.read("manifest.json"))
        marker = orjson.loads(zf.read("gbif.json"))
    assert {"occurrence.csv", "meta.xml", "eml.xml", "gbif.json", "manifest.json"} <= names
    assert isinstance(marker["time"], float)
    assert manifest["eml_source"]["source"] == "ckan"
    checks = manifest["gbif_checks"]
    assert checks["rows_checked"] == table.rows == manifest["row_count"]
    # The synthetic table has neither occurrenceID nor basisOfRecord: GBIF would flag every row.
    assert checks["occurrence_id_missing"] == checks["basis_of_record_invalid"] == table.rows
    assert checks["event_date_invalid"] == checks["coordinates_out_of_range"] == 0

    with DwCAReader(str(archive)) as reader:
        eml = reader.metadata
        assert eml is not None
        assert eml.findtext("dataset/title") == DATASET["title"]
        assert eml.findtext("dataset/abstract/para") == DATASET["notes"]
        assert eml.findtext("dataset/intellectualRights/para/ulink/citetitle") == "Creative Commons CCZero"
        assert eml.findtext("dataset/contact/electronicMailAddress") == "birds@example.org"
        identifiers = [e.text for e in eml.findall("dataset/alternateIdentifier")]
        assert "https://doi.org/10.5519/qd.gbif18" in identifiers
        assert sum(1 for _ in reader) == table.rows
