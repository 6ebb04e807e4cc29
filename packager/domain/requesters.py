"""Requesters' personal data in the log: keyed pseudonyms, per-requester data keys, sealed addresses.

The requests topic is kept for ever, so an address written there in clear could never be erased. Instead
(crypto-shredding, docs/privacy.md):

- every requester is named by a *pseudonym*: HMAC-SHA256 of the normalised address under a key derived from
  PSEUDONYM_SECRET. Statistics count it, the analytics topic publishes it; it is stable per address, and
  cannot be turned back into the address without the secret;
- every requester has a *data key* (32 random bytes, AES-256-GCM) with an id; the address travels in events
  only sealed under it (`email_sealed`), bound to the pseudonym as associated data;
- data keys are stored wrapped (AES-256-GCM again) under a key-encryption key derived from
  KEY_SEALING_SECRET, in the compacted requester-keys topic (`packager.adapters.requester_keys`). Erasure
  deletes them there; the sealed addresses left in the log can then never be opened again.

Pure: no Kafka, no I/O. Rotation: values written under a previous secret are read with the previous
secrets given in the settings; new values always use the current one.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from packager.core.errors import PackagerError

TOKEN_VERSION = "v1"
_NONCE = 12


class SealError(PackagerError):
    """A sealed value cannot be opened: its key is gone (erased) or it was not sealed with it."""


def normalised(email: str) -> str:
    """The form an address is identified by: surrounding blanks removed, lower case."""
    return email.strip().lower()


def domain_of(email: str) -> str:
    """The part after the first `@`, lower case ("" when there is none)."""
    return normalised(email).split("@", 1)[1] if "@" in email else ""


@functools.lru_cache(maxsize=64)
def _derive(secret: str, purpose: str) -> bytes:
    # The same derivation as `packager.domain.secrets`: analytics pseudonyms of old and new events agree.
    # Cached: the ingress derives the pseudonym key on every request, from one of a few configured secrets.
    return hmac.digest(secret.encode(), f"ckanpackager:{purpose}".encode(), "sha256")


def pseudonym(secret: str, email: str) -> str:
    """The requester's pseudonym under `secret` (hex HMAC-SHA256 of the normalised address)."""
    # hmac.digest: OpenSSL's one-shot HMAC, the same value as hmac.new(...).hexdigest() with less Python.
    return hmac.digest(_derive(secret, "requester"), normalised(email).encode(), "sha256").hex()


def pseudonyms(current: str, previous: Sequence[str], email: str) -> list[str]:
    """The address's pseudonym under the current secret, then under every previous one (no repeats)."""
    found: list[str] = []
    for secret in (current, *previous):
        name = pseudonym(secret, email)
        if name not in found:
            found.append(name)
    return found


def shown(requester: str) -> str:
    """How statistics and job pages show a pseudonym: short enough to read, long enough to tell apart."""
    return f"requester-{requester[:16]}" if requester else ""


@dataclass(frozen=True, slots=True)
class DataKey:
    """One requester's data key: `key_id` names it in sealed values, `secret` is the AES-256 key."""

    requester: str
    key_id: str
    secret: bytes
    # The cipher of `secret`, made once per key rather than once per sealed address. It lives as long as the
    # key does: a destroyed key leaves no cipher behind in a cache.
    cipher: AESGCM = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cipher", AESGCM(self.secret))

    @classmethod
    def new(cls, requester: str) -> DataKey:
        """A fresh random key for a requester."""
        return cls(requester, secrets.token_hex(8), AESGCM.generate_key(bit_length=256))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def seal_email(key: DataKey, email: str) -> str:
    """The address sealed under the requester's data key: `v1.<key id>.<nonce + ciphertext, base64url>`."""
    nonce = os.urandom(_NONCE)
    sealed = key.cipher.encrypt(nonce, email.encode(), key.requester.encode())
    return f"{TOKEN_VERSION}.{key.key_id}.{_b64(nonce + sealed)}"


def key_id_of(token: str) -> str:
    """The id of the data key a sealed address needs ("" when `token` is not one)."""
    version, _, rest = token.partition(".")
    key_id, dot, _ = rest.partition(".")
    return key_id if version == TOKEN_VERSION and dot else ""


def open_email(key: DataKey, token: str) -> str:
    """The address a sealed value holds; SealError when this key cannot open it."""
    version, key_id, body = [*token.split(".", 2), "", ""][:3]
    if version != TOKEN_VERSION or key_id != key.key_id:
        raise SealError("the address was sealed under another key")
    try:
        raw = _unb64(body)
        return key.cipher.decrypt(raw[:_NONCE], raw[_NONCE:], key.requester.encode()).decode()
    except (InvalidTag, ValueError, binascii.Error):
        raise SealError("the sealed address does not open with its key") from None


# --- wrapping data keys for storage -------------------------------------------------------------------


def kek_id(sealing_secret: str) -> str:
    """A short public name of the key-encryption key (which secret wrapped a stored data key)."""
    return hashlib.sha256(_derive(sealing_secret, "requester-keys")).hexdigest()[:12]


def wrap_key(sealing_secret: str, key: DataKey) -> dict[str, str]:
    """The stored form of a data key: wrapped under the KEK of `sealing_secret`, bound to its names."""
    nonce = os.urandom(_NONCE)
    kek = AESGCM(_derive(sealing_secret, "requester-keys"))
    aad = f"{key.requester}.{key.key_id}".encode()
    return {
        "requester": key.requester,
        "key_id": key.key_id,
        "kek": kek_id(sealing_secret),
        "wrapped": _b64(nonce + kek.encrypt(nonce, key.secret, aad)),
    }


def unwrap_key(sealing_secrets: Sequence[str], stored: dict[str, str]) -> DataKey:
    """The data key of a stored record, with whichever of `sealing_secrets` wrapped it (SealError: none)."""
    requester, key_id = str(stored.get("requester", "")), str(stored.get("key_id", ""))
    aad = f"{requester}.{key_id}".encode()
    for secret in sealing_secrets:
        if kek_id(secret) != stored.get("kek"):
            continue
        try:
            raw = _unb64(str(stored.get("wrapped", "")))
            plain = AESGCM(_derive(secret, "requester-keys")).decrypt(raw[:_NONCE], raw[_NONCE:], aad)
        except (InvalidTag, ValueError, binascii.Error):
            break
        return DataKey(requester, key_id, plain)
    raise SealError(f"the data key {key_id} was wrapped under a sealing secret no longer configured")
