"""Adapter: resolving a host name to its IP addresses, with the event loop's resolver.

The ingress checks a URL's host with it before accepting a `package_url` request, and the workers check it
again before fetching; both take it as an argument (`packager.domain.validation.Resolver`), so tests hand in
their own.
"""

from __future__ import annotations

import asyncio
import socket


async def system_resolver(host: str) -> list[str]:
    """Resolve a host name to its IP addresses with the event loop's resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})
