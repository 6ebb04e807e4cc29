"""The Quickstart stack's settings file, `var/stack.toml`, as the commands run beside the stack read it.

`packager dev up` records there the settings it gave the stack's processes (`main._write_stack_settings`),
so that `packager replay` and `ckanpackager` run later from the same folder reach that stack with nothing
exported by hand. One reader for both, so they agree on when the file counts and what wins over it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from packager.core.settings import Settings, load_settings

# Written by `packager dev up`: the settings the local stack's processes run with. Relative: the commands
# read it from the folder they run in, the one the stack was started in.
STACK_SETTINGS = Path("var") / "stack.toml"


def stack_file_in_use(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the settings come over `var/stack.toml`: it exists here and no PACKAGER_CONFIG names another
    file (which the operator chose on purpose, so it wins)."""
    env = os.environ if environ is None else environ
    return not env.get("PACKAGER_CONFIG") and STACK_SETTINGS.exists()


def stack_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of the environment, over the Quickstart stack's `var/stack.toml` when there is one and
    no PACKAGER_CONFIG names another file. `PACKAGER_*` variables win over the file."""
    env = os.environ if environ is None else environ
    if stack_file_in_use(env):
        return load_settings(env, STACK_SETTINGS)
    return load_settings(env)


def ingress_url(settings: Settings) -> str:
    """Where a command on this machine reaches the ingress of `settings`: a wildcard bind is reached on
    the loopback address."""
    host = settings.host if settings.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"
