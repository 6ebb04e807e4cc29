"""GBIF-ready archives (`for_gbif`): the original's gbif.json, GBIF's offline checks in the manifest, and an
EML built from the dataset's CKAN metadata through a replaceable template, every value escaped."""

from __future__ import annotations

import string
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from packager.adapters.ckan import CkanError, DatastoreClient
from packager.adapters.ckan_metadata import action_url, dataset_of, portal_url
from packager.adapters.kafka_log import InMemoryEventLog
from packager.core.errors import ConfigurationError
from packager.core.settings import Settings, load_settings
from packager.dev.ckan_server import SyntheticTable, serve_ckan
from packager.domain.archive import DwcPacker
from packager.domain.dwc import DwcConfig
from packager.domain.dwc.eml import (
    DEFAULT_EML_TEMPLATE,
    DatasetMetadata,
    load_eml_template,
    render_eml,
)
from packager.domain.dwc.gbif_checks import GbifChecks, basis_of_record_is_valid, event_date_is_iso
from packager.http.ingress import create_app
from tests.unit.samples import SECRET, attach_views, fill_views

pytestmark = pytest.mark.features

TERMS = ["id", "occurrenceID", "basisOfRecord", "eventDate", "decimalLatitude", "decimalLongitude"]


def template() -> string.Template:
    return string.Template(DEFAULT_EML_TEMPLATE.read_text(encoding="utf-8"))


def parsed(eml: str) -> ElementTree.Element:
    return ElementTree.fromstring(eml.encode("utf-8"))


# --- the offline checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "2024",
        "2024-02",
        "2024-02-29",
        "2024-02-29T13:05",
        "2024-02-29T13:05:09.123Z",
        "2024-02-29T13:05:09+05:30",
        "2007-03-01T13:00:00Z/2008-05-11T15:30:00Z",
        "2007-11-13/15",
        "1900-01/1900-12",
    ],
)
def test_iso_8601_dates_times_and_intervals_pass(value: str) -> None:
    assert event_date_is_iso(value)


@pytest.mark.parametrize(
    "value",
    [
        "2023-02-29",
        "12/03/2024",
        "2024-13",
        "March 2024",
        "2024-01-01T25:00",
        "2024-01-01/x",
        "2024/2025/2026",
    ],
)
def test_other_dates_fail(value: str) -> None:
    assert not event_date_is_iso(value)


def test_basis_of_record_is_read_as_gbif_reads_it() -> None:
    assert basis_of_record_is_valid("PreservedSpecimen")
    assert basis_of_record_is_valid("preserved_specimen")
    assert basis_of_record_is_valid("Human Observation")
    assert not basis_of_record_is_valid("Specimen in a drawer")
    assert not basis_of_record_is_valid("")


def test_checks_count_what_gbif_would_flag(tmp_path: Path) -> None:
    checks = GbifChecks(TERMS, spool_dir=tmp_path)
    checks.observe(
        [
            ["1", "2", "3", "4"],
            ["urn:a", "urn:b", "urn:a", ""],
            ["PreservedSpecimen", "Specimen", "", "FossilSpecimen"],
            ["2024-01-02", "", "02/01/2024", "2024-01"],
            ["51.5", "91", "-90", "x"],
            ["-0.1", "0", "180.5", "10"],
        ]
    )
    result = checks.result()
    assert result["rows_checked"] == 4
    assert result["occurrence_id_duplicates"] == 1
    assert result["occurrence_id_missing"] == 1
    assert result["basis_of_record_invalid"] == 2
    assert result["event_date_invalid"] == 1
    assert result["coordinates_out_of_range"] == 3  # rows 2 (latitude), 3 (longitude) and 4 (not a number)
    assert {"check": "event_date_invalid", "row": 3, "term": "eventDate", "value": "02/01/2024"} in result[
        "examples"
    ]


def test_without_the_columns_every_row_lacks_an_id_and_a_basis(tmp_path: Path) -> None:
    checks = GbifChecks(["id", "eventDate"], spool_dir=tmp_path)
    checks.observe([["1", "2"], ["", "2024"]])
    result = checks.result()
    assert (result["occurrence_id_missing"], result["basis_of_record_invalid"]) == (2, 2)
    assert result["occurrence_id_duplicates"] == 0 and result["event_date_invalid"] == 0


def test_duplicates_are_found_across_spilled_runs_and_the_spills_removed(tmp_path: Path) -> None:
    checks = GbifChecks(["id", "occurrenceID"], spool_dir=tmp_path, run_size=100)
    for page in range(10):  # 1,000 rows in runs of 100: ids repeat 300 rows apart
        ids = [f"urn:{(page * 100 + i) % 700}" for i in range(100)]
        checks.observe([[str(i) for i in range(100)], ids])
    assert len(list(tmp_path.iterdir())) == 10
    assert checks.result()["occurrence_id_duplicates"] == 300
    assert list(tmp_path.iterdir()) == []


# --- the EML from CKAN's metadata --------------------------------------------------------------------------


PACKAGE: dict[str, Any] = {
    "id": "pkg-1",
    "name": "bird-skins",
    "title": 'Bird skins <1850> & "others"',
    "notes": "Skins from the collection.\x01 Zoë's notes",
    "license_id": "cc-by",
    "license_title": "Creative Commons Attribution",
    "license_url": "http://www.opendefinition.org/licenses/cc-by",
    "maintainer": "Collections team",
    "maintainer_email": "collections@example.org",
    "organization": {"title": "Natural History Museum"},
    "extras": [{"key": "doi", "value": "https://doi.org/10.5519/0012345"}],
}


def test_the_eml_carries_the_dataset_metadata_escaped() -> None:
    metadata = DatasetMetadata.from_ckan(PACKAGE, {"id": "r1"}, portal_url="https://data.example.org")
    eml = render_eml(template(), metadata, now=datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC), package_id="p")
    root = parsed(eml)
    assert root.findtext("dataset/title") == 'Bird skins <1850> & "others"'
    assert root.findtext("dataset/abstract/para") == "Skins from the collection. Zoë's notes"
    link = root.find("dataset/intellectualRights/para/ulink")
    assert link is not None and link.get("url") == "http://www.opendefinition.org/licenses/cc-by"
    assert link.findtext("citetitle") == "Creative Commons Attribution"
    assert root.findtext("dataset/contact/electronicMailAddress") == "collections@example.org"
    assert root.findtext("dataset/contact/organizationName") == "Natural History Museum"
    ids = [e.text for e in root.findall("dataset/alternateIdentifier")]
    assert ids == ["https://doi.org/10.5519/0012345", "https://data.example.org/dataset/bird-skins"]
    assert root.findtext("dataset/pubDate") == "2026-03-04"
    assert root.findtext("additionalMetadata/metadata/gbif/dateStamp") == "2026-03-04T05:06:07Z"
    assert root.get("packageId") == "p"


def test_missing_fields_still_give_a_well_formed_document() -> None:
    metadata = DatasetMetadata.from_ckan({}, {"id": "r1"}, fallback_doi="doi:10.1/x")
    root = parsed(render_eml(template(), metadata))
    assert root.findtext("dataset/title") == "r1"
    assert root.findtext("dataset/alternateIdentifier") == "https://doi.org/10.1/x"
    assert root.findtext("dataset/contact/electronicMailAddress") in ("", None)


def test_the_author_stands_in_for_a_missing_maintainer_and_a_top_level_doi_wins() -> None:
    package = {"author": "A. Curator", "author_email": "a@example.org", "doi": "10.9/top", **{"title": "T"}}
    metadata = DatasetMetadata.from_ckan(package, {}, fallback_doi="10.9/request")
    assert (metadata.contact_name, metadata.contact_email, metadata.doi) == (
        "A. Curator",
        "a@example.org",
        "10.9/top",
    )


def test_an_operator_template_is_used_and_checked(tmp_path: Path) -> None:
    mine = tmp_path / "eml.xml"
    mine.write_text(
        '<eml packageId="$package_id"><title lang="$title">$title</title></eml>', encoding="utf-8"
    )
    loaded = load_eml_template(Settings(eml_template_file=str(mine)))
    root = parsed(render_eml(loaded, DatasetMetadata(title="a\"b'<c>"), package_id="z"))
    assert (
        root.get("packageId") == "z"
        and root.findtext("title") == root.find("title").get("lang") == "a\"b'<c>"  # type: ignore[union-attr]
    )


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("<eml>$nonsense</eml>", "unknown placeholder"),
        ("<eml>$title</em>", "not well-formed"),
        ('<!DOCTYPE eml [<!ENTITY x "y">]><eml>$title</eml>', "DOCTYPE"),
    ],
)
def test_a_bad_template_stops_the_service(tmp_path: Path, text: str, said: str) -> None:
    bad = tmp_path / f"bad-{abs(hash(text))}.xml"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigurationError, match=said):
        load_eml_template(Settings(eml_template_file=str(bad)))


def test_the_shipped_template_passes_its_own_check() -> None:
    assert load_eml_template(Settings()).template == template().template


# --- the archive -------------------------------------------------------------------------------------------


def _archive(tmp_path: Path, for_gbif: bool) -> tuple[set[str], dict[str, Any], zipfile.ZipFile]:
    path = tmp_path / f"a-{for_gbif}.zip"
    packer = DwcPacker(
        path,
        ["_id", "occurrenceID", "basisOfRecord"],
        DwcConfig(),
        spool_dir=tmp_path,
        eml="",
        for_gbif=for_gbif,
    )
    packer.write_rows([[1, "urn:1", "PreservedSpecimen"], [2, "urn:1", "Drawer"]])
    packer.finish({"job_id": "j"})
    archive = zipfile.ZipFile(path)
    return set(archive.namelist()), orjson.loads(archive.read("manifest.json")), archive


def test_a_gbif_archive_holds_gbif_json_and_its_manifest_the_checks(tmp_path: Path) -> None:
    names, manifest, archive = _archive(tmp_path, True)
    with archive:
        marker = orjson.loads(archive.read("gbif.json"))
    assert "gbif.json" in names and isinstance(marker["time"], float)
    checks = manifest["gbif_checks"]
    assert (checks["occurrence_id_duplicates"], checks["basis_of_record_invalid"]) == (1, 1)
    assert manifest["job_id"] == "j" and "gbif.json" in {f["name"] for f in manifest["files"]}
    names, manifest, archive = _archive(tmp_path, False)
    archive.close()
    assert "gbif.json" not in names and "gbif_checks" not in manifest


# --- CKAN's metadata ---------------------------------------------------------------------------------------


def test_the_actions_sit_beside_datastore_search() -> None:
    api = "https://data.example.org/portal/api/3/action/datastore_search?x=1"
    assert action_url(api, "package_show") == "https://data.example.org/portal/api/3/action/package_show"
    assert portal_url(api) == "https://data.example.org/portal"


async def test_the_dataset_of_a_resource_is_read_from_the_shipped_server() -> None:
    table = SyntheticTable("birds", 10, seed=1)
    datasets = {"birds": {"title": "Birds", "license_id": "cc-zero", "doi": "10.5519/abc"}}
    async with (
        serve_ckan({"birds": table}, datasets=datasets, api_token="tok") as api_url,
        aiohttp.ClientSession() as session,
    ):
        client = DatastoreClient(session, key="tok", attempts=1)
        package, resource = await dataset_of(client, api_url, "birds")
        assert resource["package_id"] == package["id"] and package["resources"][0]["id"] == "birds"
        assert (package["title"], package["license_title"]) == ("Birds", "Creative Commons CCZero")
        assert DatasetMetadata.from_ckan(package, resource).doi == "10.5519/abc"
        with pytest.raises(CkanError, match="Not found"):
            await dataset_of(client, api_url, "no-such-resource")
        with pytest.raises(CkanError, match="Access denied"):
            await dataset_of(DatastoreClient(session, key="wrong", attempts=1), api_url, "birds")


# --- the ingress -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("eml", "said"),
    [
        ("<eml><dataset></eml>", "not well-formed"),
        ('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY l "l">]><eml>&l;</eml>', "DOCTYPE"),
    ],
)
async def test_an_eml_gbif_could_not_read_is_a_400_that_appends_nothing(
    store_dir: Path, eml: str, said: str
) -> None:
    async def public(host: str) -> list[str]:
        return ["93.184.216.34"]

    settings = load_settings({}, secret=SECRET, store_directory=str(store_dir))
    log = InMemoryEventLog()
    app = create_app(settings, event_log=log, resolver=public, read_views=False)
    fill_views(settings, [])
    attach_views(app, settings)
    form = {
        "secret": SECRET,
        "api_url": "https://data.example.org/api/3/action/datastore_search",
        "resource_id": "r1",
        "email": "a@example.org",
        "for_gbif": "true",
        "eml": eml,
    }
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/package_dwc_archive", data=form)
        body = await resp.json()
    assert resp.status == 400 and said in body["message"]
    assert sum(len(v) for v in log.records.values()) == 0
