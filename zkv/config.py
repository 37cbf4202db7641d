"""The cluster's YAML file, loaded into frozen dataclasses and validated.

One file describes the whole cluster; every process reads the same file and takes its own
entry by name. A problem is reported as one ``ConfigError`` line naming the file, the key
path and what is wrong, e.g. ``local.yaml: shards.s1[0].publish: not a tcp:// endpoint``.
Durations are float seconds, sizes are bytes. Relative ``storage.dir`` paths are relative
to the working directory of the process (as Redis's ``dir``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from zkv.access import ClientRole
from zkv.errors import ConfigError
from zkv.protocol import Consistency
from zkv.storage.eviction import Policy

__all__ = [
    "BrokerConfig",
    "ClientConfig",
    "ClusterConfig",
    "CoordinationConfig",
    "DefaultsConfig",
    "EtcdConfig",
    "EtcdMember",
    "HeartbeatConfig",
    "HttpConfig",
    "LauncherConfig",
    "LimitsConfig",
    "MemoryConfig",
    "MemoryLimit",
    "NamedBrokerConfig",
    "NodeConfig",
    "ReplicationConfig",
    "SecurityConfig",
    "StorageConfig",
    "TlsConfig",
    "TokenConfig",
    "WatchConfig",
    "load_config",
    "parse_config",
]

FSYNC_POLICIES = ("always", "everysec", "no")
#: The name of the broker's key pair in ``security.keys``.
BROKER_KEY = "broker"


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Where the broker binds: ``clients`` for clients, ``nodes`` for shard nodes."""

    clients: str = "tcp://127.0.0.1:7400"
    nodes: str = "tcp://127.0.0.1:7401"


@dataclass(frozen=True, slots=True)
class NamedBrokerConfig:
    """One broker of several (the ``brokers:`` list): its name and the endpoints it binds."""

    name: str
    clients: str
    nodes: str


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    """The etcd cluster that several brokers share their routing state through.

    ``endpoints`` are etcd's client URLs (``http://HOST:PORT``), tried in turn; every key
    lives under ``prefix`` (``/zkv/<cluster>`` by default). The controller holds its key
    under a lease of ``lease_ttl_s`` (etcd grants whole seconds, and at least its own
    minimum: 2 s with etcd's default election timeout). ``timeout_s`` bounds each request
    to one endpoint.
    """

    endpoints: tuple[str, ...]
    prefix: str
    lease_ttl_s: float = 2.0
    timeout_s: float = 0.5
    #: The members ``zkv up`` runs itself (none: etcd runs elsewhere).
    members: tuple[EtcdMember, ...] = ()


@dataclass(frozen=True, slots=True)
class EtcdMember:
    """One etcd member ``zkv up`` starts: its name, client URL and peer URL (loopback)."""

    name: str
    client: str
    peer: str


@dataclass(frozen=True, slots=True)
class CoordinationConfig:
    """The ``coordination`` section: where several brokers keep their shared state."""

    etcd: EtcdConfig


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Where each process keeps its files (``<dir>/<name>/``) and how often it fsyncs."""

    dir: Path = Path("./data")
    fsync: str = "everysec"
    #: Compact once the log exceeds this many times the live data...
    compact_ratio: float = 2.0
    #: ...and this many bytes.
    compact_min_bytes: int = 16 * 1024 * 1024
    #: Below this many free bytes on its volume a node refuses writes (``StorageFull``),
    #: keeping room for compaction and recovery.
    min_free_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Limits a peer cannot exceed: sizes, checked before anything is stored, and the load
    one client may put on the broker."""

    max_key_bytes: int = 1024
    max_value_bytes: int = 1024 * 1024
    max_request_bytes: int = 64 * 1024 * 1024
    #: The most keys (or pipeline operations) one mget, mput or pipeline may carry.
    max_keys_per_request: int = 10_000
    #: Requests of one client the broker forwards and holds unanswered; past it a request
    #: is refused at once with ``TooManyRequests``.
    max_inflight_per_client: int = 1000
    #: Messages each broker socket queues per peer, each way (ZeroMQ's SNDHWM/RCVHWM).
    hwm: int = 10_000


@dataclass(frozen=True, slots=True)
class MemoryLimit:
    """How many bytes of data a node may hold (``max_bytes``, 0: no limit) and what its
    primary does when a write would pass that (``policy``, Redis's eight names)."""

    max_bytes: int = 0
    policy: Policy = Policy.NOEVICTION


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    """The ``memory`` section: the limit of every node, and per-shard overrides.

    ```yaml
    memory:
      max_bytes: 1000000000     # every node of every shard (0: no limit)
      policy: allkeys-lru
      shards:
        s1: {max_bytes: 200000000, policy: volatile-ttl}   # a key left out is the default's
    ```
    """

    default: MemoryLimit = MemoryLimit()
    shards: dict[str, MemoryLimit] = field(default_factory=dict)

    def of(self, shard: str) -> MemoryLimit:
        """The limit of the nodes of ``shard``."""
        return self.shards.get(shard, self.default)


@dataclass(frozen=True, slots=True)
class DefaultsConfig:
    """Per-request defaults for clients built from this file."""

    consistency: Consistency = Consistency.STRONG
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class HeartbeatConfig:
    """A peer silent for ``liveness`` heartbeats of ``interval_s`` is declared dead."""

    interval_s: float = 0.5
    liveness: int = 3

    @property
    def expiry_s(self) -> float:
        """How long a peer may stay silent before it is declared dead."""
        return self.interval_s * self.liveness


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    """How primaries and replicas keep in step."""

    #: A replica that has not acknowledged a write for this long leaves the in-sync set.
    ack_timeout_s: float = 1.0
    #: Stream messages queued per replica before the primary drops some (the replica then
    #: sees a gap and resyncs).
    hwm: int = 100_000
    #: Memory for recent records each node keeps (payloads plus about 48 bytes each), so
    #: that a replica that missed fewer gets only those (a partial resync) instead of a
    #: snapshot; 0: none.
    backlog_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class WatchConfig:
    """Change feeds (``zkv.node.watching``): the history each node keeps for watchers."""

    #: Records of recent history kept in memory per node, and their bytes (keys, values).
    history_records: int = 100_000
    history_bytes: int = 16 * 1024 * 1024
    #: Watches one node keeps waiting (long polls) at most; more are refused, retryably.
    max_watchers: int = 10_000
    #: How long a waiting watch is held once new records are confirmed, to gather more
    #: of them into its answer: fewer messages per write under load, that much latency.
    linger_s: float = 0.005


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """What one client may do: its role (``read``, ``write``, ``admin``) and, if any, the
    key prefixes its keys must start with (``zkv.access``)."""

    name: str
    role: ClientRole = ClientRole.ADMIN
    prefixes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TokenConfig:
    """One HTTP bearer token: the SHA-256 of the token (hex; the file never holds the token
    itself, ``zkv token`` makes one), and the role and key prefixes it grants."""

    name: str
    sha256: str
    role: ClientRole
    prefixes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The HTTP gateway's certificate chain and private key (PEM files)."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The HTTP gateway (``zkv http``): where it listens, ``HOST:PORT``; when the cluster
    has a ``security`` section, the client key it talks to the broker with; TLS; and the
    bearer tokens it accepts (none: no token asked)."""

    listen: str = "127.0.0.1:7480"
    client: str = "gateway"
    tls: TlsConfig | None = None
    tokens: dict[str, TokenConfig] = field(default_factory=dict)

    @property
    def host(self) -> str:
        """The host part of ``listen``."""
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        """The port part of ``listen``."""
        return int(self.listen.rsplit(":", 1)[1])


@dataclass(frozen=True, slots=True)
class LauncherConfig:
    """How ``zkv up`` restarts a child that exits, and when it gives up on one.

    A child that exits is restarted after ``backoff_first_s``, doubling with each quick
    crash up to ``backoff_max_s``; one that exits ``max_crashes`` times within
    ``crash_window_s`` is given up on (the rest of the cluster keeps running).
    """

    max_crashes: int = 5
    crash_window_s: float = 60.0
    backoff_first_s: float = 0.5
    backoff_max_s: float = 8.0


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """CURVE on every ZeroMQ link: where the key pairs live and which clients are admitted.

    ``keys`` holds one pair per name (``NAME.key`` public, ``NAME.key_secret`` secret, as
    ``zkv keygen`` writes them): ``broker``, every node, and every client in ``clients``.
    Each process reads only its own secret file and the public files of its peers, so a
    machine needs only the secret keys of the processes it runs.
    """

    keys: Path
    #: Each admitted client by name, with its role and key prefixes.
    clients: dict[str, ClientConfig]

    def public_file(self, name: str) -> Path:
        """The public key file of ``name``."""
        return self.keys / f"{name}.key"

    def secret_file(self, name: str) -> Path:
        """The secret key file of ``name`` (mode 0600)."""
        return self.keys / f"{name}.key_secret"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One shard node: its name, its shard and the endpoints it binds."""

    name: str
    shard: str
    publish: str
    sync: str


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """The whole cluster, as one YAML file describes it."""

    cluster: str
    slots: int
    broker: BrokerConfig
    storage: StorageConfig
    limits: LimitsConfig
    defaults: DefaultsConfig
    heartbeat: HeartbeatConfig
    shards: dict[str, tuple[NodeConfig, ...]]
    replication: ReplicationConfig = ReplicationConfig()
    watch: WatchConfig = WatchConfig()
    http: HttpConfig = HttpConfig()
    launcher: LauncherConfig = LauncherConfig()
    memory: MemoryConfig = MemoryConfig()
    #: Accept endpoints off loopback although the links are not encrypted (a warning at
    #: every start); without it such a config is refused (see ``exposed_endpoints``).
    allow_insecure_remote: bool = False
    #: CURVE keys and admitted clients; None: no encryption, every endpoint on loopback.
    security: SecurityConfig | None = None
    #: Shared routing state in etcd for several brokers; None: one broker, routing.json.
    coordination: CoordinationConfig | None = None
    #: The brokers sharing that state (only with ``coordination``); ``broker`` is then the
    #: first of them.
    brokers: tuple[NamedBrokerConfig, ...] = ()
    path: Path | None = None

    def broker_list(self) -> list[NamedBrokerConfig]:
        """Every broker with its name: the ``brokers:`` list, or the one ``broker`` (named
        ``broker``)."""
        if self.brokers:
            return list(self.brokers)
        return [NamedBrokerConfig(BROKER_KEY, self.broker.clients, self.broker.nodes)]

    def nodes(self) -> list[NodeConfig]:
        """Every node, shard by shard in file order."""
        return [node for nodes in self.shards.values() for node in nodes]

    def node(self, name: str) -> NodeConfig:
        """The node called ``name``; ``ConfigError`` if there is none."""
        for node in self.nodes():
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes())
        raise ConfigError(f"{self._where()}no node named {name!r} (nodes: {known})")

    def key_names(self) -> list[str]:
        """Every key pair the ``security`` section names: the broker, each node, each client."""
        if self.security is None:
            return []
        return [BROKER_KEY, *(n.name for n in self.nodes()), *self.security.clients]

    def exposed_endpoints(self) -> list[tuple[str, str]]:
        """``(key path, endpoint)`` of every endpoint that is neither encrypted nor on a
        loopback address.

        With a ``security`` section every ZeroMQ link is encrypted, so only the HTTP
        gateway's ``listen`` can count, and only without both TLS and tokens. Host names
        other than ``localhost`` count as exposed: what they resolve to is not known here.
        (etcd's endpoints are checked when the file is read: off loopback they need
        ``allow_insecure_remote``.)
        """
        http_safe = is_loopback(self.http.host) or (
            self.security is not None and bool(self.http.tokens) and self.http.tls is not None
        )
        http = [] if http_safe else [("http.listen", self.http.listen)]
        if self.security is not None:
            return http
        endpoints = [("broker.clients", self.broker.clients), ("broker.nodes", self.broker.nodes)]
        if self.brokers:
            endpoints = []
            for i, b in enumerate(self.brokers):
                endpoints.append((f"brokers[{i}].clients", b.clients))
                endpoints.append((f"brokers[{i}].nodes", b.nodes))
        for shard, nodes in self.shards.items():
            for i, node in enumerate(nodes):
                endpoints.append((f"shards.{shard}[{i}].publish", node.publish))
                endpoints.append((f"shards.{shard}[{i}].sync", node.sync))
        exposed = [(where, e) for where, e in endpoints if not is_loopback(_tcp_host(e))]
        return exposed + http

    def data_dir(self, name: str) -> Path:
        """The folder where process ``name`` keeps its files."""
        return self.storage.dir / name

    def _where(self) -> str:
        return f"{self.path}: " if self.path else ""


def load_config(path: str | Path) -> ClusterConfig:
    """Read and validate the YAML file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(text, path)


def parse_config(text: str, path: Path | None = None) -> ClusterConfig:
    """Validate YAML ``text`` (``path`` only names it in errors)."""
    where = f"{path}: " if path else ""
    # the parser's module builds this module's dataclasses: imported here, not at the top
    from zkv.config_parse import Invalid, Parser, UniqueKeyLoader

    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}{at}invalid YAML: {problem}") from None
    try:
        return Parser().cluster(raw, path)
    except Invalid as exc:
        raise ConfigError(f"{where}{exc.path}: {exc.problem}") from None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, ``localhost``, ``*``) is a loopback address."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*', a host name: not known to stay on this machine
        return False


def _tcp_host(endpoint: str) -> str:
    """The host part of ``tcp://HOST:PORT``."""
    return endpoint.removeprefix("tcp://").rsplit(":", 1)[0]
