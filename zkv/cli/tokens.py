"""``zkv token``: a new bearer token for the HTTP gateway, and its lines for ``http.tokens``."""

from __future__ import annotations

import argparse
import json
import re
import secrets
from typing import Final

from zkv.cli._common import EXIT_OK, _UsageError
from zkv.http.auth import token_digest

#: A token's name, as the config accepts it.
_NAME: Final = re.compile(r"[A-Za-z0-9_.-]+")


def _token(args: argparse.Namespace) -> int:
    """Print a new random token once, and the YAML that admits it (only its SHA-256).

    The config file never holds the token itself, so the token printed here cannot be
    shown again: give it to its user now, or make another one.
    """
    if _NAME.fullmatch(args.name) is None:
        raise _UsageError(f"--name {args.name!r}: a token name is letters, digits, '_', '-' or '.'")
    if any(not prefix for prefix in args.prefix):
        raise _UsageError("--prefix must not be empty (leave it out for every key)")
    token = secrets.token_urlsafe(32)
    entry = {"sha256": token_digest(token), "role": args.role, "prefixes": args.prefix}
    # JSON is YAML: a flow mapping that quotes every prefix safely
    flow = ", ".join(f"{key}: {json.dumps(value)}" for key, value in entry.items())
    print(token)
    print(
        "# the token above is shown once: the config keeps only its SHA-256. Put this line "
        "under `http.tokens:`,\n# then send SIGHUP to `zkv http` (or restart it):"
    )
    print(f"{args.name}: {{{flow}}}")
    return EXIT_OK
