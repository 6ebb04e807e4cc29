"""Values shared by unit tests: the shared secret, a valid `/package_url` request, a completed job."""

from aiohttp import web

from packager.adapters.readside import identity_for
from packager.adapters.viewdb import ViewDatabase, database_url
from packager.adapters.viewreads import ReadViews
from packager.core.settings import Settings
from packager.domain.events import Envelope, PackageCompleted
from packager.http.app_keys import READ_VIEWS

SECRET = "unit-test-secret-0123456789"
URL_REQUEST = {
    "secret": SECRET,
    "resource_id": "r1",
    "resource_url": "https://data.example.org/files/f.csv",
    "email": "a@example.org",
}


def completed(**overrides: object) -> PackageCompleted:
    """A `PackageCompleted` payload; `overrides` replace any field."""
    fields: dict[str, object] = dict(
        cache_key="ck",
        resource_id="r1",
        email="a@example.org",
        ckan_host="data.example.org",
        doi="",
        lane="fast",
        zip_file_name="job-1.zip",
        size=2048,
        sha256="0" * 64,
        rows=None,
        started_at="t0",
        finished_at="t1",
    )
    fields.update(overrides)
    return PackageCompleted(**fields)  # type: ignore[arg-type]


def fill_views(settings: Settings, records: list[tuple[str, int, int, Envelope]]) -> ViewDatabase:
    """Fold `records` (topic, partition, offset, event) into the settings' views, as the projector would."""
    db = ViewDatabase(database_url(settings))
    conn = db.connect(create=True)
    try:
        db.apply(conn, records, identity_for(settings))
    finally:
        conn.close()
    return db


def attach_views(app: web.Application, settings: Settings) -> None:
    """Give an ingress app built without views (`read_views=False`) the settings' views, closed with it."""
    app[READ_VIEWS] = ReadViews(settings)

    async def close(app: web.Application) -> None:
        await app[READ_VIEWS].close()

    app.on_cleanup.append(close)
