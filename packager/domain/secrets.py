"""Keeping secrets out of the log: sealed CKAN API keys, keyed hashes and redaction.

A CKAN API key must reach the worker that fetches the data, yet never sit in clear in a topic. The ingress
seals it with Fernet (AES-128-CBC + HMAC-SHA256) under a key derived from the shared secret; the worker
unseals it just before the request. Where only identity matters (the cache key), a keyed HMAC is used.
Rotating the shared secret therefore makes keys sealed in still-pending jobs unreadable: those jobs fail
with a clear message and can be requested again.
"""

from __future__ import annotations

import base64
import functools
import hmac

from cryptography.fernet import Fernet, InvalidToken

from packager.core.errors import PackagingError


@functools.lru_cache(maxsize=64)
def _derive(secret: str, purpose: str) -> bytes:
    """A 32-byte key for one purpose, derived from the shared secret (cached: a few secrets, many calls)."""
    return hmac.digest(secret.encode(), f"ckanpackager:{purpose}".encode(), "sha256")


def keyed_hash(secret: str, purpose: str, value: str) -> str:
    """HMAC-SHA256 of `value` under a key derived from the secret for `purpose`, as hex."""
    return hmac.digest(_derive(secret, purpose), value.encode(), "sha256").hex()


def seal(secret: str, value: str) -> str:
    """Encrypt a value (a CKAN API key) so it can travel in an event."""
    fernet = Fernet(base64.urlsafe_b64encode(_derive(secret, "seal")))
    return fernet.encrypt(value.encode()).decode()


def unseal(secret: str, token: str) -> str:
    """Decrypt a sealed value; a token sealed under another secret is a packaging error."""
    fernet = Fernet(base64.urlsafe_b64encode(_derive(secret, "seal")))
    try:
        return fernet.decrypt(token.encode()).decode()
    except InvalidToken:
        raise PackagingError(
            "The CKAN API key of this request cannot be read (the service's secret changed since it "
            "was accepted); please request the download again."
        ) from None


def constant_time_equal(given: str, expected: str) -> bool:
    """Compare a presented secret with the configured one without leaking timing."""
    return hmac.compare_digest(given.encode(), expected.encode())
