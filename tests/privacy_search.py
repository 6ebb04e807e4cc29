"""Looking for a requester's address wherever the service stores bytes: clear, hex or base64, any case.

Shared by the privacy tests (`tests/unit/test_privacy.py`, `tests/integration/test_privacy_e2e.py`).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from pathlib import Path

CHUNK = 4 * 1024 * 1024


def encodings(text: str) -> list[bytes]:
    """`text` as it could hide in stored bytes: clear, hex, and base64 (standard and URL-safe) at each of
    the three alignments a longer encoded value could put it at."""
    raw = text.encode()
    found = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for shift in range(3):
        for encode64 in (base64.b64encode, base64.urlsafe_b64encode):
            whole = encode64(b"\0" * shift + raw)
            # Drop the characters that also depend on the bytes before and after the address.
            found.append(whole[(shift * 4 + 2) // 3 + 1 : -4])
    return found


def _forms(email: str) -> list[bytes]:
    """Every form of the address, lower-cased (the search lower-cases what it reads as well).

    Base64 is case-sensitive, so its forms of the address as given and lower-cased are both kept.
    """
    return sorted({form.lower() for text in {email, email.lower()} for form in encodings(text)})


def leaks(blob: bytes, email: str) -> list[bytes]:
    """The forms of the address found in `blob`."""
    lowered = blob.lower()
    return [form for form in _forms(email) if form in lowered]


def files_under(roots: Iterable[Path]) -> Iterator[Path]:
    """Every regular file under `roots` (a root may be a file)."""
    for root in roots:
        if root.is_file():
            yield root
        elif root.is_dir():
            yield from (p for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink())


def search_files(roots: Iterable[Path], email: str) -> list[tuple[Path, bytes]]:
    """(file, form) for every file under `roots` holding a form of the address (read in overlapping
    chunks, so memory stays flat however large a segment file is)."""
    forms = _forms(email)
    overlap = max(len(f) for f in forms)
    found: list[tuple[Path, bytes]] = []
    for path in files_under(roots):
        try:
            with open(path, "rb") as fh:
                tail = b""
                while chunk := fh.read(CHUNK):
                    window = (tail + chunk).lower()
                    hits = [f for f in forms if f in window]
                    if hits:
                        found.extend((path, f) for f in hits)
                        break
                    tail = window[-overlap:]
        except OSError:
            continue  # a file removed meanwhile (a segment deleted, a WAL checkpointed)
    return found


def contains(roots: Iterable[Path], needle: bytes) -> bool:
    """Whether any file under `roots` holds `needle` (to show a search looked at the right files)."""
    for path in files_under(roots):
        try:
            if needle in path.read_bytes():
                return True
        except OSError:
            continue
    return False
