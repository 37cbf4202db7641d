"""Security: CURVE key pairs for zkv's processes and clients (``zkv keygen``).

Key pairs are written with pyzmq's own ``zmq.auth.create_certificates``: for a name N, a
public certificate ``N.key`` and a secret one ``N.key_secret`` (readable by its owner only,
mode 0600). An existing pair is never overwritten, so running ``keygen`` again is safe.

Not built yet (the security issue): using the keys on the links (CURVE with a ZAP
authenticator and allow-lists), ``keygen --config`` and the config's ``security`` section.
Until then every endpoint must stay on loopback (see ``ClusterConfig.exposed_endpoints``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import zmq.auth

from zkv.errors import ConfigError

__all__ = ["KeyPair", "generate_keys"]

_NAME: Final = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class KeyPair:
    """Where one name's key pair lives, and whether this run created it."""

    name: str
    public: Path
    secret: Path
    created: bool


def generate_keys(directory: Path, names: list[str]) -> list[KeyPair]:
    """Create a CURVE key pair in ``directory`` for each of ``names`` that has none yet.

    Raises ``ConfigError`` for a name that is not a plain file name, before writing any.
    """
    for name in names:
        if not _NAME.fullmatch(name) or name in (".", ".."):
            raise ConfigError(f"{name!r} is not a key name (letters, digits, '_', '-', '.')")
    directory.mkdir(parents=True, exist_ok=True)
    pairs = []
    for name in names:
        public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
        if public.exists() != secret.exists():
            raise ConfigError(
                f"{directory}: only one of {public.name} and {secret.name} exists; move it "
                "away and run keygen again"
            )
        created = not public.exists()
        if created:
            umask = os.umask(0o077)  # the secret file is never readable by others
            try:
                made_public, made_secret = zmq.auth.create_certificates(str(directory), name)
            finally:
                os.umask(umask)
            public, secret = Path(made_public), Path(made_secret)
        os.chmod(secret, 0o600)
        pairs.append(KeyPair(name, public, secret, created))
    return pairs
