"""Adapter: the HTTP client every outgoing request of the workers goes through, and its connect-time checks.

`check_url` (domain.validation) vets a URL by resolving its host, but the HTTP client resolves the name
again to connect: a name that answers a public address to the check and a private one to the client (DNS
rebinding) would get through. So, unless `ALLOW_PRIVATE_URLS` is on, the client's own resolver drops every
private, loopback, link-local or reserved address it is given (refusing the host when none is left), and the
socket factory refuses to open a socket towards such an address whatever produced it (an IP literal never
reaches the resolver). Both run before any connection is attempted.
"""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from packager.core.errors import PackagingError
from packager.core.settings import Settings
from packager.domain.validation import is_public_address


class AddressRefusedError(PackagingError):
    """The HTTP client was about to connect to a private address; no connection was made."""

    def __init__(self, host: str) -> None:
        super().__init__(
            f"Host {host} resolved to a private, loopback or link-local address when the service connected "
            "to it; the service only connects to public addresses."
        )


class PublicAddressResolver(AbstractResolver):
    """Wraps a resolver and keeps only the public addresses it answers; none left refuses the host.

    Raising a `PackagingError` (not an `OSError`) keeps aiohttp from reporting it as a DNS failure, so the
    job fails at once with the message above instead of being retried as a network error.
    """

    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The inner resolver's answers for `host`, public addresses only."""
        answers = await self._inner.resolve(host, port, family)
        public = [answer for answer in answers if is_public_address(answer["host"])]
        if not public:
            raise AddressRefusedError(host)
        return public

    async def close(self) -> None:
        """Close the inner resolver."""
        await self._inner.close()


def public_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """Open the socket for one connection attempt, refusing a private target address."""
    family, type_, proto, _, address = addr_info
    if not is_public_address(str(address[0])):
        raise AddressRefusedError(str(address[0]))
    return socket.socket(family=family, type=type_, proto=proto)


def http_timeout(settings: Settings) -> aiohttp.ClientTimeout:
    """Connect and idle-read timeouts for every outgoing request.

    No total: a big file takes long. `sock_read` fires when no byte arrives for FETCH_READ_TIMEOUT seconds;
    a server trickling bytes slower than that is stopped by JOB_TIMEOUT around the whole build.
    """
    return aiohttp.ClientTimeout(
        total=None, sock_connect=settings.fetch_connect_timeout, sock_read=settings.fetch_read_timeout
    )


def http_session(settings: Settings, *, resolver: AbstractResolver | None = None) -> aiohttp.ClientSession:
    """The workers' HTTP client: timeouts, and private addresses refused at connect time unless allowed.

    `resolver` replaces the system resolver (tests); the caller owns it (aiohttp never closes a resolver it
    was given, and the system resolver holds nothing to close).
    """
    inner = resolver or ThreadedResolver()
    if settings.allow_private_urls:
        connector = aiohttp.TCPConnector(resolver=inner)
    else:
        connector = aiohttp.TCPConnector(resolver=PublicAddressResolver(inner), socket_factory=public_socket)
    return aiohttp.ClientSession(connector=connector, timeout=http_timeout(settings))
