"""The gateway's guards: bearer tokens (who is asking, and the ``Grant`` they hold) and TLS.

``Tokens`` is the table of ``http.tokens``: each token known only by the SHA-256 of its
text, mapped to the role and key prefixes it grants. An empty table asks for no token
(the gateway of a loopback-only cluster). ``Tokens.authenticate(header)`` turns an
``Authorization`` header into the ``Grant`` to check requests with, or raises
``Unauthorized`` (401); ``Tokens.replace`` swaps the whole table at once (on SIGHUP), so a
request sees either the old table or the new one, never a mix.

``server_context(tls)`` is the ``ssl.SSLContext`` the gateway serves HTTPS with (TLS 1.2
at least); ``reload_chain(context, tls)`` loads a new certificate chain into that same
context, after checking it on a scratch context first, so a bad file leaves the served one
alone. New connections get the new chain; open ones keep theirs.

Pure: no sockets; ``zkv.http.app`` and ``zkv http`` use it.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Mapping
from typing import Final

from zkv.access import Grant
from zkv.config import TlsConfig, TokenConfig
from zkv.errors import ConfigError

__all__ = ["REALM", "Tokens", "Unauthorized", "reload_chain", "server_context", "token_digest"]

#: The ``WWW-Authenticate`` header of every 401.
REALM: Final = 'Bearer realm="zkv"'


class Unauthorized(Exception):
    """No bearer token, or one the gateway does not know: the asker's to fix (401)."""


def token_digest(token: str) -> str:
    """The SHA-256 of ``token`` (its UTF-8 bytes) as 64 lower-case hex digits."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Tokens:
    """The bearer tokens a gateway accepts, by digest; none: no token is asked for."""

    def __init__(self, tokens: Mapping[str, TokenConfig] | None = None) -> None:
        self._grants: dict[str, Grant] = {}
        self.replace(tokens or {})

    def replace(self, tokens: Mapping[str, TokenConfig]) -> None:
        """Accept exactly ``tokens`` from now on (a removed token's next request is 401)."""
        self._grants = {
            t.sha256.lower(): Grant.of(t.name, t.role, t.prefixes) for t in tokens.values()
        }

    def __len__(self) -> int:
        return len(self._grants)

    @property
    def required(self) -> bool:
        """Whether requests must carry a token (some are configured)."""
        return bool(self._grants)

    def authenticate(self, authorization: str | None) -> Grant:
        """The grant of the bearer token in ``authorization`` (an ``Authorization`` header).

        Raises ``Unauthorized`` without a header, with another scheme, or with a token that
        is not in the table.
        """
        if not authorization:
            raise Unauthorized(
                "this route needs a bearer token: send the header `Authorization: Bearer "
                "TOKEN` (`zkv token` makes one for http.tokens)"
            )
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(
                f"the Authorization header must be `Bearer TOKEN`, not a {scheme!r} one"
            )
        grant = self._grants.get(token_digest(token))
        if grant is None:
            raise Unauthorized(
                "the bearer token is not one of this gateway's http.tokens (mistyped, or "
                "removed from the config)"
            )
        return grant


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server context for HTTPS with ``tls``'s certificate chain and key, TLS 1.2 or later.

    Raises ``ConfigError`` naming the file for one that cannot be read, is not PEM, or
    holds a key that does not match the certificate or is encrypted (zkv asks for no
    passphrase).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, tls)
    return context


def reload_chain(context: ssl.SSLContext, tls: TlsConfig) -> None:
    """Load ``tls``'s chain and key into ``context``, which keeps serving the old ones if
    they fail (checked first on a scratch context; errors as ``server_context``'s)."""
    server_context(tls)
    _load_chain(context, tls)


def _load_chain(context: ssl.SSLContext, tls: TlsConfig) -> None:
    def no_passphrase() -> str:
        raise ConfigError(
            f"http.tls.key: {tls.key} is encrypted; give the gateway an unencrypted key "
            "(readable by its user only)"
        )

    for where, path in (("http.tls.cert", tls.cert), ("http.tls.key", tls.key)):
        try:
            path.open("rb").close()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        context.load_cert_chain(tls.cert, tls.key, password=no_passphrase)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"http.tls: {tls.cert} and {tls.key} must be a PEM certificate chain and its "
            f"unencrypted private key ({exc.reason or 'not PEM'})"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"http.tls: cannot load {tls.cert} or {tls.key}: {exc}") from exc
