"""What every part of the command line shares: exit codes, usage errors, the config file."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Final

from zkv.errors import (
    ConfigError,
)

DEFAULT_CONFIG: Final = "config/local.yaml"
USER_CONFIG: Final = "~/.config/zkv/config.yaml"
CONFIG_HELP: Final = (
    f"cluster YAML file (default: $ZKV_CONFIG, else ./{DEFAULT_CONFIG}, else {USER_CONFIG})"
)
KEY_HELP: Final = (
    "a client's CURVE secret key file, for a cluster with a security section (default: "
    "$ZKV_KEY); the broker's public key is broker.key next to it"
)
SERVER_KEY_HELP: Final = (
    "the broker's public key file (default: $ZKV_SERVER_KEY, else broker.key next to --key)"
)

EXIT_OK, EXIT_MISSING, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
#: The client's role or key prefixes do not allow the command (``PermissionDenied``).
EXIT_DENIED = 4


class _UsageError(Exception):
    pass


def _fail(message: str, status: int) -> int:
    print(f"zkv: {message}", file=sys.stderr)
    return status


def config_path(given: str | None) -> Path:
    """The config file: ``--config``, else ``$ZKV_CONFIG``, else ``./config/local.yaml``,
    else ``~/.config/zkv/config.yaml``; ``ConfigError`` listing where it looked."""
    if given:
        return Path(given)
    env = os.environ.get("ZKV_CONFIG")
    if env:
        return Path(env)
    candidates = [Path(DEFAULT_CONFIG), Path(USER_CONFIG).expanduser()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "no config file found; looked for --config, $ZKV_CONFIG (not set), "
        f"./{DEFAULT_CONFIG} and {candidates[1]}; pass --config FILE or --connect HOST:PORT"
    )


def _connect(args: argparse.Namespace) -> Any:
    """The client of a data command: ``zkv.cli._client(args)``, looked up on the package at
    each call so that one seam replaces the connection of every command (tests use it)."""
    from zkv import cli

    return cli._client(args)
