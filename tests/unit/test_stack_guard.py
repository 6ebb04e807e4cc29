"""`packager dev up`'s guards: one stack per state folder, and its ports free before anything starts."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import pytest

from packager.dev.stack_guard import StackBusy, check_ports_free, hold_state_folder


def test_a_second_stack_on_the_same_folder_is_refused_until_the_first_ends(tmp_path: Path) -> None:
    first = hold_state_folder(tmp_path)
    with pytest.raises(StackBusy, match=f"already running from {tmp_path} \\(process {os.getpid()}\\)"):
        hold_state_folder(tmp_path)
    first.close()  # the first stack ended
    hold_state_folder(tmp_path).close()


def test_a_port_in_use_is_named_before_anything_starts() -> None:
    with contextlib.closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StackBusy, match=f"the ingress's address 127.0.0.1:{port} is in use"):
            check_ports_free({"mail sink": ("127.0.0.1", 0), "ingress": ("127.0.0.1", port)})
