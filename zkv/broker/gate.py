"""The broker's gate: who is on the other end of each message, and what they may do.

Without a ``security`` section every client may do anything and a node is known by the
identity its DEALER announces (``node:NAME``). With one, both broker sockets run CURVE
(``zkv.security.Keyring``) and each message carries the key it came with as ZeroMQ's
``User-Id``:

- a **node** is known by the name of its key, never by an identity it chose: the broker's
  node ROUTER gives each connection its own routing id (no handover), the gate maps the
  name to the connection that name's key last spoke on, and the broker sends to a node on
  that connection. A holder of one node's key can speak as that node only, and can neither
  take over nor shut out a name whose key it lacks.
- a **client** is known by its key's name and its requests are checked against that
  client's ``Grant`` (role and key prefixes, ``zkv.access``).

``reload(config)`` (on SIGHUP) reads the allow-lists, public keys and grants again: a
client removed from the file is refused from its next request on, even on a connection
it opened before, and new keys are admitted for new connections.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import zmq

from zkv.access import ClientRole, Grant
from zkv.config import ClusterConfig
from zkv.errors import ConfigError, PermissionDenied
from zkv.security import CLIENTS_DOMAIN, NODES_DOMAIN, Keyring

__all__ = ["Gate"]

log = logging.getLogger(__name__)

#: Every client's grant without a ``security`` section.
_ANYONE = Grant("anyone", ClientRole.ADMIN)


class Gate:
    """The broker's view of its peers' identities and permissions (see the module doc)."""

    def __init__(self, config: ClusterConfig, context: zmq.Context[Any]) -> None:
        self.config = config
        self.keyring = Keyring.for_broker(config, context) if config.security else None
        self.grants = _grants(config)
        #: ``node:NAME`` -> the routing id of the connection NAME's key last spoke on.
        self._connections: dict[bytes, bytes] = {}
        self._nodes = {f"node:{n.name}".encode() for n in config.nodes()}

    @property
    def secure(self) -> bool:
        """Whether the links run CURVE."""
        return self.keyring is not None

    def start(self) -> None:
        """Start the ZAP authenticator (before binding)."""
        if self.keyring is not None:
            self.keyring.start()

    def stop(self) -> None:
        """Stop the ZAP authenticator."""
        if self.keyring is not None:
            self.keyring.stop()

    def secure_sockets(self, clients: zmq.Socket[Any], nodes: zmq.Socket[Any]) -> None:
        """Make both broker sockets CURVE servers with their allow-lists (before bind)."""
        if self.keyring is None:
            # a restarted node takes its name back at once from a connection not closed yet
            nodes.setsockopt(zmq.ROUTER_HANDOVER, 1)
            return
        self.keyring.serve(clients, CLIENTS_DOMAIN)
        self.keyring.serve(nodes, NODES_DOMAIN)

    # ------------------------------------------------------------------ nodes

    def node_identity(self, connection: bytes, user: str) -> bytes | None:
        """The identity ``node:NAME`` of a node message that came on ``connection`` with
        NAME's key (``user``, its ``User-Id``); None if the key names no node now."""
        assert self.keyring is not None
        name = self.keyring.name_of(user)
        identity = f"node:{name}".encode()
        if name is None or identity not in self._nodes:
            return None
        if self._connections.get(identity) != connection:
            self._connections[identity] = connection
            log.debug("node %s speaks on connection %s", name, connection.hex())
        return identity

    def node_address(self, identity: bytes) -> bytes | None:
        """Where to send to the node ``identity``: the identity itself without CURVE, else
        the connection its key last spoke on (None: not heard from yet)."""
        if self.keyring is None:
            return identity
        return self._connections.get(identity)

    def forget_node(self, identity: bytes) -> None:
        """The node's connection is gone (``EHOSTUNREACH``)."""
        self._connections.pop(identity, None)

    # ------------------------------------------------------------------ clients

    def grant_of(self, user: str) -> Grant:
        """The grant of the client whose message carried ``user``; ``PermissionDenied`` if
        its key is no longer listed (removed by a reload)."""
        if self.keyring is None:
            return _ANYONE
        name = self.keyring.name_of(user)
        grant = self.grants.get(name) if name is not None else None
        if grant is None:
            raise PermissionDenied(
                "this client's key is not in security.clients any more; no request of it is served"
            )
        return grant

    # ------------------------------------------------------------------ reload

    def reload(self, config: ClusterConfig) -> None:
        """Take the security section of ``config`` (the same file, read again): allow-lists,
        public keys and grants. ``ConfigError`` (nothing changed) if it cannot be used."""
        if (config.security is None) != (self.config.security is None):
            raise ConfigError("turning security on or off takes a restart of every process")
        if self.keyring is not None:
            self.keyring.reload(config)
        self.grants = _grants(config)
        self._nodes = {f"node:{n.name}".encode() for n in config.nodes()}
        self.config = replace(self.config, security=config.security, shards=config.shards)


def _grants(config: ClusterConfig) -> dict[str, Grant]:
    if config.security is None:
        return {}
    return {
        name: Grant.of(name, client.role, client.prefixes)
        for name, client in config.security.clients.items()
    }
