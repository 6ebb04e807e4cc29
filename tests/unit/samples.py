"""Values shared by unit tests: the shared secret, a valid `/package_url` request, a completed job."""

from packager.domain.events import PackageCompleted

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
