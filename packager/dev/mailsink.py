"""A local mail sink for the development stack: an SMTP server that keeps every message as a .eml file.

With it, `packager dev up` needs no real SMTP server and every outgoing message lands in a folder a person
can read (`var/mail/` by default), with a one-line summary on the console.
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import itertools
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class FolderHandler:
    """aiosmtpd handler writing each accepted message to `<folder>/<time>-<n>.eml`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._counter = itertools.count(1)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """Store the message and print where it went."""
        content = envelope.original_content or envelope.content
        path = self.folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{next(self._counter):04d}.eml"
        path.write_bytes(content)
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        print(f"[mail sink] to {', '.join(envelope.rcpt_tos)}: {parsed['Subject']!s} -> {path}", flush=True)
        return "250 Message accepted for delivery"


def show_latest(folder: Path) -> int:
    """Print the newest message in the sink folder as a person reads it (headers and plain-text part)."""
    messages = sorted(folder.glob("*.eml"))
    if not messages:
        where = folder.resolve()
        hint = "" if folder.is_absolute() else " (run it where the stack started, or give --dir)"
        print(f"no messages in {where}{hint}")
        return 1
    parsed = email.message_from_bytes(messages[-1].read_bytes(), policy=email.policy.default)
    for header in ("From", "To", "Subject", "Date"):
        if parsed[header]:
            print(f"{header}: {parsed[header]}")
    body = parsed.get_body(("plain",)) if isinstance(parsed, email.message.EmailMessage) else None
    print()
    print(body.get_content() if body is not None else parsed.get_payload())
    return 0


def serve(folder: Path, host: str = "127.0.0.1", port: int = 8025) -> None:
    """Run the sink until interrupted."""
    controller = Controller(FolderHandler(folder), hostname=host, port=port)
    controller.start()
    print(f"[mail sink] listening on {host}:{port}, writing messages to {folder}", flush=True)
    try:
        asyncio.run(_forever())
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


async def _forever() -> None:
    await asyncio.Event().wait()
