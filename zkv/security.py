"""Security: CURVE keys for zkv's processes and clients, and who may connect to what.

Key pairs are written with pyzmq's own ``zmq.auth.create_certificates`` (``zkv keygen``):
for a name N, a public certificate ``N.key`` and a secret one ``N.key_secret`` (readable
by its owner only, mode 0600). An existing pair is never overwritten, so running
``keygen`` again is safe; ``keygen --config FILE`` creates every pair the file's
``security`` section names (``ClusterConfig.key_names``).

With a ``security`` section every ZeroMQ link runs CurveZMQ: each server socket (the
broker's two ROUTERs, each node's PUB and sync ROUTER) is a CURVE server with its
process's secret key, and each connecting socket proves its own key pair and checks the
server's public key. A ``Keyring`` holds one process's keys and runs the ZAP authenticator
(pyzmq's ``ThreadAuthenticator``) with one allow-list per *domain*:

- ``clients`` (broker): the public keys of ``security.clients``;
- ``nodes`` (broker): the public keys of the nodes;
- ``shard:NAME`` (each node of shard NAME): the public keys of that shard's nodes only.

A refused key never completes its handshake, so nothing it sends reaches a handler; the
refusal is logged, throttled. An admitted connection's messages carry its key as ZeroMQ's
``User-Id`` property: the broker names each message's sender from it (``Keyring.name_of``),
a node by the key it proved rather than an identity it chose, a client for its role.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from zkv.config import BROKER_KEY, ClusterConfig, SecurityConfig
from zkv.errors import ConfigError
from zkv.runtime import Throttle

__all__ = [
    "CLIENTS_DOMAIN",
    "NODES_DOMAIN",
    "CurveKeys",
    "KeyPair",
    "Keyring",
    "generate_config_keys",
    "generate_keys",
    "shard_domain",
]

log = logging.getLogger(__name__)

_NAME: Final = re.compile(r"[A-Za-z0-9_.-]+")
#: The ZAP domain of the broker's client socket, and of its node socket.
CLIENTS_DOMAIN: Final = "clients"
NODES_DOMAIN: Final = "nodes"


def shard_domain(shard: str) -> str:
    """The ZAP domain of shard ``shard``'s stream and sync sockets."""
    return f"shard:{shard}"


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


def generate_config_keys(config: ClusterConfig) -> list[KeyPair]:
    """``generate_keys`` for every name the config's ``security`` section needs."""
    if config.security is None:
        where = f"{config.path}: " if config.path else ""
        raise ConfigError(
            f"{where}no security section, so no keys to create; add one (see "
            "config/secure.yaml) or name the keys: zkv keygen --out DIR NAME..."
        )
    return generate_keys(config.security.keys, config.key_names())


# --------------------------------------------------------------------------- reading keys


def read_public(path: Path) -> bytes:
    """The z85 public key in the certificate at ``path``; ``ConfigError`` naming the file."""
    return _read(path, secret=False)[0]


def read_pair(path: Path) -> tuple[bytes, bytes]:
    """The z85 ``(public, secret)`` keys in the secret certificate at ``path``.

    Refused (``ConfigError``) if the file is missing, holds no secret key, or is readable
    by anyone but its owner: a secret key others could read is not secret any more.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such key file; {_HOW_TO_CREATE}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path}: a secret key readable by others (mode {stat.S_IMODE(mode):04o}); "
            f"run chmod 600 {path}"
        )
    public, secret = _read(path, secret=True)
    assert secret is not None
    return public, secret


_HOW_TO_CREATE: Final = "create the cluster's keys with `zkv keygen --config FILE`"


def _read(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such key file; {_HOW_TO_CREATE}") from None
    except OSError as exc:
        if not path.exists():
            raise ConfigError(f"{path}: no such key file; {_HOW_TO_CREATE}") from None
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError:
        raise ConfigError(f"{path}: not a CURVE key file (no public-key line)") from None
    if len(public) != 40 or (secret and (secret_key is None or len(secret_key) != 40)):
        what = "secret" if secret else "public"
        raise ConfigError(f"{path}: not a CURVE {what} key file (want 40 z85 characters)")
    return public, secret_key


# --------------------------------------------------------------------------- clients


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """A client's CURVE identity: its key pair and the public key of the broker it trusts.

    Pass one as ``Client(..., curve=keys)``; ``Client.from_config(path, client=NAME)``
    builds it from the config's key folder.
    """

    public: bytes
    secret: bytes
    server: bytes

    def __repr__(self) -> str:  # never print a secret key
        return f"CurveKeys(public={self.public.decode()!r}, server={self.server.decode()!r})"

    @classmethod
    def load(cls, secret_file: str | Path, server_file: str | Path | None = None) -> CurveKeys:
        """Read a client's secret key file and the broker's public key file.

        ``server_file`` defaults to ``broker.key`` next to ``secret_file`` (the layout
        ``zkv keygen`` writes).
        """
        secret_path = Path(secret_file)
        server_path = Path(server_file) if server_file else secret_path.with_name("broker.key")
        public, secret = read_pair(secret_path)
        return cls(public, secret, read_public(server_path))

    @classmethod
    def for_client(cls, config: ClusterConfig, name: str) -> CurveKeys:
        """The keys of client ``name`` of the config's ``security`` section."""
        security = _security(config)
        if name not in security.clients:
            listed = ", ".join(security.clients)
            raise ConfigError(
                f"{config.path or 'config'}: {name!r} is not in security.clients ({listed})"
            )
        return cls.load(security.secret_file(name), security.public_file(BROKER_KEY))

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE client with these keys (before it connects)."""
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server)


def _security(config: ClusterConfig) -> SecurityConfig:
    if config.security is None:
        raise ConfigError(f"{config.path or 'config'}: has no security section")
    return config.security


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True, slots=True)
class _Keys:
    """What a keyring is made of, read from the config and its key folder."""

    pair: tuple[bytes, bytes]
    publics: dict[str, bytes]
    domains: dict[str, list[str]]


class Keyring:
    """One server process's CURVE keys, its peers' public keys, and its ZAP authenticator.

    ``serve(sock, domain)`` makes a socket a CURVE server whose peers must hold a key on
    ``domain``'s allow-list; ``dial(sock, peer)`` makes a socket prove this process's key
    to ``peer`` (a process name) and check that peer's public key. ``start()`` runs the
    authenticator (one thread); ``stop()`` ends it; ``reload(config)`` reads the allow-lists
    and public keys again (on SIGHUP), for new connections and for ``name_of``.

    An admitted connection's messages carry its public key (z85) as ZeroMQ's ``User-Id``;
    ``name_of`` turns it into a name with the keys as they are now, so a key removed or
    replaced by a reload stops naming anyone, even on a connection opened before.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        owner: str,
        load: Callable[[ClusterConfig], _Keys],
        config: ClusterConfig,
    ) -> None:
        self.owner = owner
        self._load = load
        keys = load(config)
        self.public, self._secret = keys.pair
        #: Every peer's public key by name.
        self.publics: dict[str, bytes] = {}
        self._domains: dict[str, frozenset[bytes]] = {}
        self._names: dict[str, str] = {}
        self._lock = threading.Lock()
        self._auth = _Authenticator(context, self)
        self._install(keys)

    @classmethod
    def for_broker(cls, config: ClusterConfig, context: zmq.Context[Any]) -> Keyring:
        """The broker's keyring: clients on ``clients``, nodes on ``nodes``."""
        return cls(context, BROKER_KEY, _broker_keys, config)

    @classmethod
    def for_node(cls, config: ClusterConfig, name: str, context: zmq.Context[Any]) -> Keyring:
        """Node ``name``'s keyring: only its shard's nodes on its stream and sync sockets."""
        return cls(context, name, lambda c: _node_keys(c, name), config)

    def reload(self, config: ClusterConfig) -> None:
        """Read the allow-lists and public keys of ``config`` again, replacing the old ones
        at once; ``ConfigError`` (nothing changed) if a key file is missing or bad. This
        process's own key pair is not replaced: that takes a restart."""
        keys = self._load(config)
        if keys.pair != (self.public, self._secret):
            log.warning("%s: its own key pair changed; it takes effect at restart", self.owner)
        self._install(keys)

    def _install(self, keys: _Keys) -> None:
        publics = keys.publics
        allowed = {d: frozenset(publics[n] for n in names) for d, names in keys.domains.items()}
        names = {key.decode("ascii"): name for name, key in publics.items()}
        with self._lock:
            self.publics, self._domains, self._names = dict(publics), allowed, names
        for domain in allowed:
            if self._auth.is_alive():
                self._auth.configure_curve_callback(domain, self._auth)

    def start(self) -> None:
        """Start answering ZAP requests (before any server socket binds)."""
        self._auth.start()
        for domain in self._domains:
            self._auth.configure_curve_callback(domain, self._auth)

    def stop(self) -> None:
        """Stop the authenticator thread."""
        self._auth.stop()

    def serve(self, sock: zmq.Socket[Any], domain: str) -> None:
        """Make ``sock`` a CURVE server admitting the keys of ``domain`` (before bind)."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self._secret)
        sock.setsockopt_string(zmq.ZAP_DOMAIN, domain)

    def dial(self, sock: zmq.Socket[Any], peer: str) -> None:
        """Make ``sock`` a CURVE client of ``peer``, proving this process's key (before
        connect); ``ConfigError`` if the peer's public key is not known."""
        with self._lock:
            server = self.publics.get(peer)
        if server is None:
            raise ConfigError(f"no public key of {peer!r} in this process's keyring")
        CurveKeys(self.public, self._secret, server).apply(sock)

    def admits(self, domain: str, z85_key: bytes) -> bool:
        """Whether ``domain``'s allow-list holds ``z85_key`` (called by the ZAP thread)."""
        with self._lock:
            return z85_key in self._domains.get(domain, ())

    def name_of(self, user_id: str) -> str | None:
        """The name of the key a message came with (its ``User-Id``, the key in z85), as
        the keys are now; None if no listed key is that one any more."""
        return self._names.get(user_id)


def _broker_keys(config: ClusterConfig) -> _Keys:
    security = _security(config)
    nodes = [n.name for n in config.nodes()]
    publics = {name: read_public(security.public_file(name)) for name in nodes}
    publics.update({c: read_public(security.public_file(c)) for c in security.clients})
    domains = {CLIENTS_DOMAIN: list(security.clients), NODES_DOMAIN: nodes}
    return _Keys(read_pair(security.secret_file(BROKER_KEY)), publics, domains)


def _node_keys(config: ClusterConfig, name: str) -> _Keys:
    security = _security(config)
    me = config.node(name)
    peers = [n.name for n in config.shards[me.shard]]
    publics = {peer: read_public(security.public_file(peer)) for peer in peers}
    publics[BROKER_KEY] = read_public(security.public_file(BROKER_KEY))
    pair = read_pair(security.secret_file(name))
    if pair[0] != publics[name]:
        raise ConfigError(
            f"{security.secret_file(name)}: its public key is not the one in "
            f"{security.public_file(name)}; the pair was mixed up"
        )
    return _Keys(pair, publics, {shard_domain(me.shard): peers})


class _Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread, asking a ``Keyring`` whether a key may connect to a domain.

    The ``User-Id`` of an admitted connection is its key in z85 (pyzmq's default). Refusals
    are logged with the peer's address, throttled: anyone who can reach a port can cause
    them.
    """

    def __init__(self, context: zmq.Context[Any], keyring: Keyring) -> None:
        super().__init__(context, log=logging.getLogger(f"{__name__}.zap"))
        self.keyring = keyring
        self._address = ""
        self._refusals = Throttle(log)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        """Remember the peer's address for the log, then let pyzmq answer the request."""
        self._address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        await super().handle_zap_message(msg)

    def callback(self, domain: str, z85_key: bytes) -> bool:
        """Whether ``z85_key`` may connect on ``domain`` (pyzmq's credentials provider)."""
        if self.keyring.admits(domain, z85_key):
            return True
        self._refusals.warning(
            "%s refused a connection from %s on %s: key %s is not on its allow-list",
            self.keyring.owner,
            self._address or "?",
            domain,
            z85_key.decode("ascii", "replace"),
        )
        return False
