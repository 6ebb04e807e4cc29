"""Hypothesis strategies for hostile HTTP requests to the ingress, used by the in-memory and Kafka fuzz tests.

A `Call` is one raw HTTP request (method, already-encoded path, headers, body). The strategies mix requests
that pass authentication with hostile values (so validation is really exercised) and requests broken at the
HTTP level: bodies over the limit (with and without Content-Length), invalid UTF-8, JSON where a form is
expected and the reverse, repeated parameters, multipart forms, deep nesting, odd offsets and URL tricks.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_from_bytes

import orjson
from hypothesis import strategies as st

from packager.domain.validation import MAX_FILTER_DEPTH

SECRET = "fuzz-test-secret-0123456789abcdef"
MAX_BODY = 8192

# What the fake resolver answers: names of public hosts, and names that resolve to private space.
PUBLIC_NAMES = {
    "data.example.org": ["93.184.216.34"],
    "portal.example.org": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
}
PRIVATE_NAMES = {
    "localhost": ["127.0.0.1", "::1"],
    "localtest.me": ["127.0.0.1"],
    "rebind.example.org": ["93.184.216.34", "127.0.0.1"],  # one public, one loopback answer
    "inside.example.org": ["10.0.0.7"],
    "metadata.example.org": ["169.254.169.254"],
    "v6local.example.org": ["fe80::1"],
    "mapped.example.org": ["::ffff:127.0.0.1"],
}


async def fake_resolver(host: str) -> list[str]:
    """Resolve from the tables above; other names fail as the system resolver does (IDNA errors included)."""
    known = PUBLIC_NAMES.get(host.lower()) or PRIVATE_NAMES.get(host.lower())
    if known:
        return list(known)
    host.encode("idna")  # what getaddrinfo does first: raises UnicodeError for empty or 64+ char labels
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def host_is_private(host: str) -> bool:
    """True for the names above that resolve privately and for non-global IP literals (the oracle)."""
    if host.lower() in PRIVATE_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


@dataclass(frozen=True)
class Call:
    """One raw HTTP request."""

    method: str
    path: str  # already percent-encoded, sent as is
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    chunked: bool = False  # send the body without Content-Length

    def __repr__(self) -> str:
        body = self.body if self.body is None or len(self.body) < 300 else self.body[:300] + b"..."
        size = "" if self.body is None else f" ({len(self.body)} bytes)"
        path = self.path if len(self.path) < 300 else f"{self.path[:300]}... ({len(self.path)} characters)"
        return f"Call({self.method} {path!r} {self.headers} chunked={self.chunked} body={body!r}{size})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Hypothesis prints falsifying examples with this: keep them short."""
        printer.text(repr(self))


async def chunks(body: bytes) -> AsyncIterator[bytes]:
    """The body as a stream, so the client sends it chunked, without Content-Length."""
    for start in range(0, len(body), 1024):
        yield body[start : start + 1024]


GOOD_EMAIL = "someone@example.org"
GOOD_URL = "https://data.example.org/files/f.csv"
GOOD_API = "https://data.example.org/api/3/action/datastore_search"

BASE: dict[str, dict[str, str]] = {
    "/package_url": {
        "secret": SECRET,
        "resource_id": "r1",
        "resource_url": GOOD_URL,
        "email": GOOD_EMAIL,
        "key": "ckan-key-fuzz",
    },
    "/package_datastore": {
        "secret": SECRET,
        "resource_id": "res-ds",
        "api_url": GOOD_API,
        "email": GOOD_EMAIL,
        "filters": '{"country": ["Kenya"]}',
        "limit": "10",
        "offset": "0",
        "format": "csv",
    },
    "/package_dwc_archive": {
        "secret": SECRET,
        "resource_id": "res-dwc",
        "api_url": GOOD_API,
        "email": GOOD_EMAIL,
        "eml": "<eml/>",
        "for_gbif": "false",
    },
    "/clear_caches": {"secret": SECRET},
    "/statistics": {"secret": SECRET, "resource_id": "r1"},
    "/statistics/requests": {"secret": SECRET, "offset": "0", "limit": "10", "email": GOOD_EMAIL},
    "/statistics/errors": {"secret": SECRET, "offset": "0", "limit": "10", "resource_id": "r1"},
    "/statistics/daily": {"secret": SECRET, "days": "7", "resource_id": "r1"},
    "/status": {"secret": SECRET},
}
POST_PATHS = sorted(BASE)
NAMES = sorted(
    {name for params in BASE.values() for name in params} | {"q", "fields", "sort", "plain", "doi"}
)


def nested(depth: int, *, as_list: bool = False) -> str:
    """A JSON document nested `depth` levels deep."""
    if as_list:
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


HOSTILE_URLS = [
    "http://user:password@data.example.org/f.csv",
    "https://:token@data.example.org/f.csv",
    "https://user@data.example.org/f.csv",
    "http://[::1]/",
    "http://[::1]:8080/x",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[fd00::1]/",
    "http://[::]/",
    "http://[2606:2800:220:1:248:1893:25c8:1946]/f.csv",
    "http://[::1",
    "http://[zz::1]/",
    "http://127.0.0.1/",
    "http://127.1/",
    "http://0x7f000001/",
    "http://2130706433/",
    "http://0.0.0.0/",
    "http://10.1.2.3/",
    "http://169.254.169.254/latest/meta-data",
    "http://192.168.0.1:22/",
    "http://93.184.216.34/f.csv",
    "http://data.example.org:99999/f.csv",
    "http://data.example.org:0/f.csv",
    "http://data.example.org:-1/f.csv",
    "file:///etc/passwd",
    "gopher://data.example.org/",
    "javascript:alert(1)",
    "//data.example.org/f.csv",
    "http:///f.csv",
    "https://" + "a" * 64 + ".example.org/f.csv",
    "https://" + "a." * 200 + "org/",
    "https://xn--/f.csv",
    "https://exa\u200dmple.org/f.csv",
    "https://ex\u00e4mple.org/f.csv",
    "https://data.example.org/" + "p" * 3000,
    "https://data.example.org/f.csv#frag",
    "https://data.example.org/f.csv?a=1&a=2",
    "https://data.example.org/%2e%2e/%2e%2e/etc/passwd",
]
HOSTILE_URLS += [
    f"http://{name}/f.csv" for name in [*PRIVATE_NAMES, *PUBLIC_NAMES, "LOCALHOST", "unknown.invalid"]
]


def urls() -> st.SearchStrategy[str]:
    """URLs: the listed hostile ones, hosts drawn at random, and arbitrary text."""
    hosts = st.one_of(
        st.sampled_from([*PRIVATE_NAMES, *PUBLIC_NAMES]),
        st.ip_addresses().map(lambda ip: f"[{ip}]" if ip.version == 6 else str(ip)),
        st.text(min_size=1, max_size=70),
    )
    return st.one_of(
        st.sampled_from(HOSTILE_URLS),
        st.builds(
            lambda scheme, cred, host, port, path: f"{scheme}://{cred}{host}{port}/{path}",
            st.sampled_from(["http", "https", "HTTP", "ftp"]),
            st.sampled_from(["", "u:p@", "u@", ":p@"]),
            hosts,
            st.sampled_from(["", ":80", ":443", ":65536", ":abc"]),
            st.text(max_size=20),
        ),
        st.text(max_size=100),
    )


NUMBERS = [
    "-1",
    "-0",
    "+5",
    " 5 ",
    "1.5",
    "1e3",
    "0x10",
    "NaN",
    "inf",
    "\u00b2",  # superscript two: isdigit() but not a decimal
    "\uff11\uff12",  # full-width digits
    "\u0663",  # Arabic-Indic three
    "9" * 16,
    "9" * 5000,  # over Python's int-from-string digit limit
    str(2**63),
    str(2**64 + 1),
    str(-(2**63) - 1),
]


def numbers() -> st.SearchStrategy[str]:
    """Offsets and limits: negative, huge and not numbers at all."""
    return st.one_of(
        st.sampled_from(NUMBERS),
        st.integers(min_value=-(10**30), max_value=10**30).map(str),
        st.text(max_size=10),
    )


def json_values() -> st.SearchStrategy[Any]:
    """Arbitrary JSON values (small)."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )


def filters() -> st.SearchStrategy[str]:
    """`filters` values: deep nesting (1,000 levels and around the limits), non-objects, broken JSON."""
    depths = st.sampled_from(
        [MAX_FILTER_DEPTH, MAX_FILTER_DEPTH + 1, 254, 255, 256, 300, 1000, 1023, 1025, 5000]
    )
    return st.one_of(
        depths.map(nested),
        depths.map(lambda d: nested(d, as_list=True)),
        json_values().map(lambda v: orjson.dumps(v).decode()),
        st.sampled_from(
            ['{"a": 1e400}', '{"a": "\\ud800"}', '{"a": 123456789012345678901234567890}', "{", "null"]
        ),
        st.text(max_size=30),
    )


def emails() -> st.SearchStrategy[str]:
    """Email addresses, hostile ones included (header injection, markup, length)."""
    return st.one_of(
        st.sampled_from(
            [
                GOOD_EMAIL,
                "a@example.org\r\nBcc: b@example.org",
                "a@example.org\nX: y",
                "<script>@example.org",
                "a@localhost",
                "a@[127.0.0.1]",
                "a" * 250 + "@example.org",
                "a@" + "b" * 64 + ".org",
                "\u00e9@example.org",
                "a@example.org\x00",
            ]
        ),
        st.builds(
            lambda local, domain: f"{local}@{domain}",
            st.text(alphabet="abcXYZ09.+_-%!'", min_size=1, max_size=12),
            st.sampled_from(["example.org", "sub.example.co.uk", "x", "-bad.org", "a..b.org", "\u00e9.org"]),
        ),
        st.text(max_size=40),
    )


RESOURCE_IDS = [
    "../../../../etc/passwd",
    "..",
    "/etc/passwd",
    "C:\\Windows\\win.ini",
    "a\\..\\..\\b",
    "a\x00b",
    "<script>alert(1)</script>",
    "r" * 500,
    "r" * 501,
    "\u202egnp.exe",
]


def value_for(name: str) -> st.SearchStrategy[str]:
    """A hostile (or, sometimes, valid) value for a parameter."""
    return _VALUES.get(name, _ANY_VALUE)


_ANY_VALUE = st.text(max_size=40)
_VALUES: dict[str, st.SearchStrategy[str]] = {}


def _values() -> None:
    _VALUES.update(
        {
            "resource_url": urls(),
            "api_url": urls(),
            "email": emails(),
            "filters": filters(),
            "offset": numbers(),
            "limit": numbers(),
            "resource_id": st.one_of(st.sampled_from(RESOURCE_IDS), st.text(max_size=30)),
            "format": st.sampled_from(["csv", "tsv", "jsonl", "xlsx", "CSV", "parquet", "", "dwc"]),
            "for_gbif": st.sampled_from(["true", "false", "maybe", ""]),
            "plain": st.sampled_from(["true", "false", "maybe", ""]),
            "fields": st.one_of(st.sampled_from(['["a", 1]', "[", '["a"]', "a,,b"]), st.text(max_size=20)),
            "secret": st.one_of(st.just(SECRET), st.text(max_size=40)),
            "eml": st.one_of(st.just("x" * 300_000), st.text(max_size=40)),
        }
    )


_values()


@st.composite
def param_pairs(draw: st.DrawFn, path: str) -> list[tuple[str, str]]:
    """The endpoint's valid parameters with some changed, dropped, repeated or added."""
    params = dict(BASE[path])
    own = st.sampled_from(sorted(set(BASE[path]) - {"secret"}) or NAMES)
    for name in draw(st.lists(st.one_of(own, st.sampled_from(NAMES)), max_size=4, unique=True)):
        params[name] = draw(value_for(name))
    for name in draw(st.lists(st.sampled_from(sorted(params)), max_size=2, unique=True)):
        del params[name]
    pairs = list(params.items())
    # Repeated parameters: the first one wins, so the repeat can be good or evil, before or after.
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=2)):
        repeat = (name, draw(value_for(name)))
        pairs.insert(draw(st.integers(0, len(pairs))), repeat)
    if draw(st.booleans()):
        pairs.append((draw(st.text(max_size=10)), draw(st.text(max_size=20))))
    return pairs


def form_body(pairs: Sequence[tuple[str, str]]) -> bytes:
    """A form-encoded body (surrogates, which have no UTF-8, as raw invalid bytes)."""
    return "&".join(
        quote(k.encode("utf-8", "surrogatepass")) + "=" + quote(v.encode("utf-8", "surrogatepass"))
        for k, v in pairs
    ).encode()


FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
CONTENT_TYPES = [FORM, JSON, "application/json; charset=latin-1", "text/plain", "multipart/form-data", ""]


def multipart_body(pairs: Sequence[tuple[str, str]], boundary: str) -> bytes:
    """A multipart/form-data body with the pairs as fields (one as a file part)."""
    parts = []
    for i, (name, value) in enumerate(pairs):
        disposition = f'form-data; name="{name}"' + ('; filename="f.txt"' if i == 0 else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n{value}\r\n")
    return ("".join(parts) + f"--{boundary}--\r\n").encode("utf-8", "surrogatepass")


@st.composite
def post_calls(draw: st.DrawFn, paths: Sequence[str] = POST_PATHS) -> Call:
    """A POST to one of the endpoints that read parameters from a body."""
    path = draw(st.sampled_from(paths))
    pairs = draw(param_pairs(path))
    kind = draw(
        st.sampled_from(
            [
                "form",
                "form",
                "json",
                "json",
                "json-nested",
                "json-as-form",
                "form-as-json",
                "multipart",
                "raw",
            ]
        )
    )
    headers = {"Content-Type": FORM}
    if kind == "form":
        body = form_body(pairs)
    elif kind == "form-as-json":
        body, headers = form_body(pairs), {"Content-Type": JSON}
    elif kind in ("json", "json-as-form"):
        body = orjson.dumps(dict(pairs))
        headers = {"Content-Type": FORM if kind == "json-as-form" else JSON}
    elif kind == "json-nested":  # a JSON value (not a string) for a parameter: objects, lists, deep nesting
        name = draw(st.sampled_from(NAMES))
        value = draw(
            st.one_of(
                json_values().map(orjson.dumps),
                st.sampled_from([250, 253, 254, 255, 256, 300, 1000, 1023, 1100]).map(
                    lambda d: nested(d, as_list=d % 2 == 1).encode()
                ),
            )
        )
        body = (
            orjson.dumps(dict(pairs))[:-1]
            + (b"," if pairs else b"")
            + orjson.dumps(name)
            + b":"
            + value
            + b"}"
        )
        headers = {"Content-Type": JSON}
    elif kind == "multipart":
        boundary = "fuzzBoundary7MA4YWxk"
        body = multipart_body(pairs, boundary)
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        if draw(st.booleans()):  # a truncated or mismatched multipart body
            body = body[: draw(st.integers(0, len(body)))]
    else:
        body = draw(
            st.one_of(
                st.binary(max_size=200),
                st.binary(max_size=50).map(lambda b: b"secret=" + SECRET.encode() + b"&email=" + b),
                st.binary(max_size=30).map(lambda b: b"resource_id=" + quote_from_bytes(b).encode()),
                st.sampled_from([b"\xff\xfe\xfd", b"%ff%fe=%c3%28", b"a=%ed%a0%80", b'{"secret": "\xff"}']),
            )
        )
        headers = {"Content-Type": draw(st.sampled_from(CONTENT_TYPES))}
    if draw(st.integers(0, 9)) == 0:  # over the body limit, announced or streamed
        body = body + b"&pad=" + b"x" * draw(st.integers(MAX_BODY, 20 * MAX_BODY))
    chunked = draw(st.integers(0, 4)) == 0
    return Call("POST", path, headers, body, chunked)


def segment() -> st.SearchStrategy[str]:
    """A path segment: percent-encoded arbitrary bytes, traversal, or typical names."""
    return st.one_of(
        st.binary(max_size=40).map(lambda b: quote_from_bytes(b, safe="")),
        st.text(max_size=300).map(lambda t: quote(t.encode("utf-8", "surrogatepass"), safe="")),
        st.sampled_from(
            [
                "..%2F..%2Fetc%2Fpasswd",
                "%2e%2e",
                "job.zip",
                "missing.zip",
                ".partial",
                ".readmodel",
                "a%00.zip",
                "..%5C..%5Cwin.ini",
                "x" * 201 + ".zip",
                "x" * 300 + ".zip",
                "00000000-0000-0000-0000-000000000000",
                "00000000-0000-0000-0000-00000000000G",
            ]
        ),
    )


@st.composite
def get_calls(draw: st.DrawFn) -> Call:
    """A GET (or HEAD) of the read endpoints, downloads and job pages, with odd paths and query strings."""
    kind = draw(st.sampled_from(["status", "jobs", "downloads", "statistics"]))
    if kind == "jobs":
        path = "/jobs/" + draw(st.one_of(st.sampled_from(KNOWN_JOB_IDS), segment()))
    elif kind == "downloads":
        path = "/downloads/" + draw(segment())
    elif kind == "statistics":
        path = draw(
            st.sampled_from(
                [
                    "/statistics",
                    "/statistics/requests",
                    "/statistics/errors",
                    "/statistics/daily",
                    "/statistics/page",
                ]
            )
        )
    else:
        path = draw(st.sampled_from(["/status", "/"]))
    pairs = draw(param_pairs(path if kind == "statistics" and path in BASE else "/status"))
    query = draw(
        st.one_of(
            st.just(form_body(pairs).decode()[:7_000]),  # under aiohttp's request line limit (8190 bytes)
            st.binary(max_size=40).map(lambda b: quote_from_bytes(b, safe="=&")),
            st.just(""),
        )
    )
    headers = draw(
        st.sampled_from(
            [
                {},
                {"Accept": "text/html"},
                {"Accept": "text/html, application/json"},
                {"Range": "bytes=0-3"},
                {"Range": "bytes=-1000000000000000000000"},
                {"Range": "bytes=5-1"},
                {"Range": "bytes=999999999999-"},
                {"Range": "garbage"},
            ]
        )
    )
    return Call(draw(st.sampled_from(["GET", "HEAD"])), path + (f"?{query}" if query else ""), headers)


# Jobs the read model is seeded with, so job pages and statistics have something to show.
KNOWN_JOB_IDS = ["3f2b8a4e-1c7d-4e2a-9b1f-0a1b2c3d4e5f", "7d9e1f20-3a4b-4c5d-8e6f-112233445566"]
