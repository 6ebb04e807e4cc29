"""DNS rebinding: a name that answers a public address to the job's check and a private one to the HTTP client
fails the job at connect time, and the private server never receives a connection.

A fake DNS answers 93.184.216.34 the first time it is asked and 127.0.0.1 after. The job's `check_url` asks
first (and lets the job go on); the workers' HTTP client (`http_session`) asks next, gets 127.0.0.1 and must
refuse it before connecting. Nothing ever connects to the public address: the fake refuses to hand it to the
HTTP client, so a broken order of checks fails the test instead of sending traffic off the machine.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from packager.adapters.http_client import AddressRefusedError, http_session
from packager.adapters.store import FileStore
from packager.core.settings import Settings, load_settings
from packager.domain.events import Event, PackageCompleted, PackageFailed, PackageRequested, envelope
from packager.domain.validation import is_public_address
from packager.service.packaging import JobContext, run_job
from tests.integration.conftest import PrivateTarget

SECRET = "rebinding-test-secret-0123456789"
PUBLIC = "93.184.216.34"
NAME = "rebind.example.org"


class FlippingDns(AbstractResolver):
    """Answers PUBLIC the first time it is asked, 127.0.0.1 every time after."""

    def __init__(self) -> None:
        self.asked = 0

    def _next(self) -> str:
        self.asked += 1
        return PUBLIC if self.asked == 1 else "127.0.0.1"

    async def lookup(self, host: str) -> list[str]:
        """The job's check (`packager.domain.validation.Resolver`)."""
        return [self._next()]

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The HTTP client's resolver."""
        address = self._next()
        if is_public_address(address):
            raise OSError("test guard: the HTTP client asked first and would have connected off the machine")
        return [ResolveResult(hostname=host, host=address, port=port, family=family, proto=0, flags=0)]

    async def close(self) -> None:
        return None


class LoopbackDns(AbstractResolver):
    """Every name is 127.0.0.1 (for the control with ALLOW_PRIVATE_URLS on)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host="127.0.0.1", port=port, family=family, proto=0, flags=0)]

    async def close(self) -> None:
        return None


def request_for(kind: str, url: str) -> PackageRequested:
    if kind == "url":
        request: dict[str, Any] = {"resource_id": "r1", "resource_url": url, "key_sealed": ""}
    else:
        request = {"api_url": url, "resource_id": "r1", "format": "csv", "key_sealed": ""}
    return PackageRequested(
        kind=kind,
        cache_key="rebind-test",
        resource_id="r1",
        email="someone@example.org",
        ckan_host=NAME,
        request=request,
    )


async def run(req: PackageRequested, settings: Settings, check: Any, client_dns: AbstractResolver) -> Event:
    async def emit(event: Event) -> None:
        return None

    async with http_session(settings, resolver=client_dns) as session:
        ctx = JobContext(
            settings=settings,
            session=session,
            store=FileStore(Path(settings.store_directory), settings.partial_directory),
            resolve=check,
            emit=emit,
            worker="test",
        )
        return await run_job(envelope("7c9e6679-7425-40de-944b-e07fc1f90ae7", req), "fast", ctx)


@pytest.mark.parametrize(
    ("kind", "path"), [("url", "/data.csv"), ("datastore", "/api/3/action/datastore_search")]
)
async def test_a_name_rebound_to_loopback_after_the_check_fails_the_job_without_connecting(
    private_target: PrivateTarget, store_dir: Path, kind: str, path: str
) -> None:
    dns = FlippingDns()
    settings = load_settings({}, secret=SECRET, store_directory=str(store_dir), allow_private_urls=False)
    url = f"http://{NAME}:{private_target.port}{path}"
    outcome = await run(request_for(kind, url), settings, dns.lookup, dns)

    assert isinstance(outcome, PackageFailed), outcome
    assert outcome.error.startswith(
        f"Host {NAME} resolved to a private, loopback or link-local address when the service connected"
    ), outcome.error
    assert dns.asked == 2, "the check and the HTTP client each resolved the name once"
    assert private_target.connections == []
    assert list(settings.partial_directory.iterdir()) == []


async def test_with_private_urls_allowed_the_same_server_is_reached(
    private_target: PrivateTarget, store_dir: Path
) -> None:
    """The control: the server answers, so the refusal above is the guard's doing."""
    settings = load_settings({}, secret=SECRET, store_directory=str(store_dir), allow_private_urls=True)
    outcome = await run(
        request_for("url", f"http://{NAME}:{private_target.port}/data.csv"),
        settings,
        FlippingDns().lookup,
        LoopbackDns(),
    )
    assert isinstance(outcome, PackageCompleted), outcome
    assert len(private_target.connections) == 1


async def test_an_ip_literal_in_private_space_is_refused_by_the_client_itself(
    private_target: PrivateTarget, store_dir: Path
) -> None:
    """An IP literal never reaches a resolver: the socket factory refuses it before connecting."""
    settings = load_settings({}, secret=SECRET, store_directory=str(store_dir), allow_private_urls=False)
    async with http_session(settings) as session:
        with pytest.raises(AddressRefusedError, match=r"Host 127\.0\.0\.1 resolved to a private"):
            await session.get(f"http://127.0.0.1:{private_target.port}/")
        with pytest.raises(AddressRefusedError):
            await session.get(f"http://[::ffff:127.0.0.1]:{private_target.port}/")
    assert private_target.connections == []


async def test_the_client_keeps_the_public_answers_of_a_mixed_set_and_refuses_an_all_private_one() -> None:
    """No connection here: the resolver is asked directly."""
    from packager.adapters.http_client import PublicAddressResolver

    class Fixed(AbstractResolver):
        def __init__(self, addresses: list[str]) -> None:
            self.addresses = addresses

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            return [
                ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
                for a in self.addresses
            ]

        async def close(self) -> None:
            return None

    mixed = PublicAddressResolver(Fixed(["10.0.0.7", PUBLIC, "169.254.169.254", "::1"]))
    assert [r["host"] for r in await mixed.resolve(NAME, 80)] == [PUBLIC]
    private = PublicAddressResolver(Fixed(["10.0.0.7", "fd00::1", "100.64.0.1"]))
    with pytest.raises(AddressRefusedError):
        await private.resolve(NAME, 80)


def test_aiohttp_does_not_report_the_refusal_as_a_network_error() -> None:
    """The refusal is not retried as a connection failure: it is no OSError nor aiohttp error."""
    assert not issubclass(AddressRefusedError, OSError | aiohttp.ClientError)
