"""Values shared by the unit tests of the ingress: the shared secret and a valid `/package_url` request."""

SECRET = "unit-test-secret-0123456789"
URL_REQUEST = {
    "secret": SECRET,
    "resource_id": "r1",
    "resource_url": "https://data.example.org/files/f.csv",
    "email": "a@example.org",
}
