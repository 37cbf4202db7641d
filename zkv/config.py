"""The cluster's YAML file, loaded into frozen dataclasses and validated.

One file describes the whole cluster; every process reads the same file and takes its own
entry by name. A problem is reported as one ``ConfigError`` line naming the file, the key
path and what is wrong, e.g. ``local.yaml: shards.s1[0].publish: not a tcp:// endpoint``.
Durations are float seconds, sizes are bytes. Relative ``storage.dir`` paths are relative
to the working directory of the process (as Redis's ``dir``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
_ENDPOINT = re.compile(r"^tcp://(?P<host>[^:/\s]+|\[[0-9a-fA-F:.]+\]):(?P<port>\d{1,5}|\*)$")
_TOP = "(top level)"
_LISTEN = re.compile(r"(?P<host>[^:/\s]+|\[[0-9a-fA-F:.]+\]):(?P<port>\d{1,5})")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_ETCD_ENDPOINT = re.compile(r"^http://(?P<host>[^:/\s\[\]]+|\[[0-9a-fA-F:.]+\]):(?P<port>\d{1,5})$")
_ETCD_PREFIX = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")
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
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}{at}invalid YAML: {problem}") from None
    try:
        return _Parser().cluster(raw, path)
    except _Invalid as exc:
        raise ConfigError(f"{where}{exc.path}: {exc.problem}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping with the same key twice (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Invalid(Exception):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class _Parser:
    """Walks the YAML tree, keeping the key path for error messages."""

    def cluster(self, raw: Any, path: Path | None) -> ClusterConfig:
        top = self._map(
            raw,
            _TOP,
            required={"shards"},
            allowed={
                "cluster",
                "slots",
                "broker",
                "storage",
                "limits",
                "defaults",
                "heartbeat",
                "shards",
                "replication",
                "watch",
                "http",
                "launcher",
                "allow_insecure_remote",
                "security",
                "memory",
                "coordination",
                "brokers",
            },
        )
        cluster = self._str(top.get("cluster", "zkv"), "cluster")
        slots = self._int(top.get("slots", 16384), "slots", 1, 65536)
        b = self._map(top.get("broker", {}), "broker", allowed={"clients", "nodes"})
        broker = BrokerConfig(
            clients=self._endpoint(b.get("clients", "tcp://127.0.0.1:7400"), "broker.clients"),
            nodes=self._endpoint(b.get("nodes", "tcp://127.0.0.1:7401"), "broker.nodes"),
        )
        s = self._map(
            top.get("storage", {}),
            "storage",
            allowed={"dir", "fsync", "compact_ratio", "compact_min_bytes", "min_free_bytes"},
        )
        fsync = s.get("fsync", "everysec")
        if fsync is False:  # YAML 1.1 reads a bare `no` as false
            fsync = "no"
        if fsync not in FSYNC_POLICIES:
            raise _Invalid("storage.fsync", f"must be one of {', '.join(FSYNC_POLICIES)}")
        storage = StorageConfig(
            dir=Path(self._str(s.get("dir", "./data"), "storage.dir")),
            fsync=fsync,
            compact_ratio=self._ratio(s.get("compact_ratio", 2.0), "storage.compact_ratio"),
            compact_min_bytes=self._int(
                s.get("compact_min_bytes", 16 * 1024 * 1024), "storage.compact_min_bytes", 0, 2**62
            ),
            min_free_bytes=self._int(
                s.get("min_free_bytes", 64 * 1024 * 1024), "storage.min_free_bytes", 0, 2**62
            ),
        )
        lim = self._map(
            top.get("limits", {}),
            "limits",
            allowed={
                "max_key_bytes",
                "max_value_bytes",
                "max_request_bytes",
                "max_keys_per_request",
                "max_inflight_per_client",
                "hwm",
            },
        )
        limits = LimitsConfig(
            max_key_bytes=self._int(
                lim.get("max_key_bytes", 1024), "limits.max_key_bytes", 1, 65536
            ),
            max_value_bytes=self._int(
                lim.get("max_value_bytes", 1024 * 1024), "limits.max_value_bytes", 1, 2**31
            ),
            max_request_bytes=self._int(
                lim.get("max_request_bytes", 64 * 1024 * 1024),
                "limits.max_request_bytes",
                1024,
                2**31,
            ),
            max_keys_per_request=self._int(
                lim.get("max_keys_per_request", 10_000),
                "limits.max_keys_per_request",
                1,
                100_000,
            ),
            max_inflight_per_client=self._int(
                lim.get("max_inflight_per_client", 1000),
                "limits.max_inflight_per_client",
                1,
                1_000_000,
            ),
            hwm=self._int(lim.get("hwm", 10_000), "limits.hwm", 1, 10_000_000),
        )
        d = self._map(top.get("defaults", {}), "defaults", allowed={"consistency", "timeout_s"})
        consistency = d.get("consistency", "strong")
        if consistency not in ("strong", "eventual"):
            raise _Invalid("defaults.consistency", "must be strong or eventual")
        defaults = DefaultsConfig(
            consistency=Consistency(consistency),
            timeout_s=self._seconds(d.get("timeout_s", 5.0), "defaults.timeout_s"),
        )
        h = self._map(top.get("heartbeat", {}), "heartbeat", allowed={"interval_s", "liveness"})
        heartbeat = HeartbeatConfig(
            interval_s=self._seconds(h.get("interval_s", 0.5), "heartbeat.interval_s"),
            liveness=self._int(h.get("liveness", 3), "heartbeat.liveness", 1, 1000),
        )
        r = self._map(
            top.get("replication", {}),
            "replication",
            allowed={"ack_timeout_s", "hwm", "backlog_bytes"},
        )
        replication = ReplicationConfig(
            ack_timeout_s=self._seconds(r.get("ack_timeout_s", 1.0), "replication.ack_timeout_s"),
            hwm=self._int(r.get("hwm", 100_000), "replication.hwm", 1, 2**31),
            backlog_bytes=self._int(
                r.get("backlog_bytes", 16 * 1024 * 1024), "replication.backlog_bytes", 0, 2**40
            ),
        )
        wt = self._map(
            top.get("watch", {}),
            "watch",
            allowed={"history_records", "history_bytes", "max_watchers", "linger_s"},
        )
        watch = WatchConfig(
            history_records=self._int(
                wt.get("history_records", 100_000), "watch.history_records", 1, 2**31
            ),
            history_bytes=self._int(
                wt.get("history_bytes", 16 * 1024 * 1024), "watch.history_bytes", 1024, 2**40
            ),
            max_watchers=self._int(wt.get("max_watchers", 10_000), "watch.max_watchers", 1, 2**20),
            linger_s=self._linger(wt.get("linger_s", 0.005)),
        )
        w = self._map(top.get("http", {}), "http", allowed={"listen", "client", "tls", "tokens"})
        listen = w.get("listen", "127.0.0.1:7480")
        if not isinstance(listen, str) or not _LISTEN.fullmatch(listen):
            raise _Invalid("http.listen", "must be HOST:PORT, e.g. 127.0.0.1:7480")
        if int(listen.rsplit(":", 1)[1]) > 65535:
            raise _Invalid("http.listen", "port is out of range")
        gateway = w.get("client", "gateway")
        if not isinstance(gateway, str) or not _NAME.fullmatch(gateway):
            raise _Invalid("http.client", "a client name is letters, digits, '_', '-' or '.'")
        launcher = self._launcher(top.get("launcher", {}))
        insecure = self._flag(top.get("allow_insecure_remote", False), "allow_insecure_remote")
        coordination = None
        if "coordination" in top:
            coordination = self._coordination(top["coordination"], cluster, insecure)
        brokers = self._brokers(top, coordination is not None)
        if brokers:
            broker = BrokerConfig(clients=brokers[0].clients, nodes=brokers[0].nodes)
            endpoints = {}
            for i, named in enumerate(brokers):
                endpoints[named.clients] = f"brokers[{i}].clients"
                endpoints[named.nodes] = f"brokers[{i}].nodes"
        else:
            endpoints = {broker.clients: "broker.clients", broker.nodes: "broker.nodes"}
        shards = self._shards(top["shards"], endpoints)
        node_names = {n.name for nodes in shards.values() for n in nodes}
        for i, named in enumerate(brokers):
            if named.name in node_names:
                raise _Invalid(f"brokers[{i}].name", f"{named.name!r} is also the name of a node")
        security = None
        if "security" in top:
            security = self._security(top["security"], shards, gateway)
        memory = self._memory(top.get("memory", {}), shards)
        if slots < len(shards):
            raise _Invalid("slots", f"must be at least the number of shards ({len(shards)})")
        return ClusterConfig(
            cluster=cluster,
            slots=slots,
            broker=broker,
            storage=storage,
            limits=limits,
            defaults=defaults,
            heartbeat=heartbeat,
            shards=shards,
            replication=replication,
            watch=watch,
            http=HttpConfig(
                listen, gateway, self._tls(w.get("tls")), self._tokens(w.get("tokens"))
            ),
            launcher=launcher,
            memory=memory,
            allow_insecure_remote=insecure,
            security=security,
            coordination=coordination,
            brokers=brokers,
            path=path,
        )

    def _etcd_members(self, raw: Any) -> tuple[EtcdMember, ...]:
        if not isinstance(raw, list):
            raise _Invalid("coordination.etcd.members", "must be a list of {name, client, peer}")
        members: list[EtcdMember] = []
        for i, entry in enumerate(raw):
            where = f"coordination.etcd.members[{i}]"
            m = self._map(entry, where, required={"name", "client", "peer"})
            name = self._str(m["name"], f"{where}.name")
            if not _NAME.fullmatch(name) or any(x.name == name for x in members):
                raise _Invalid(f"{where}.name", "a distinct name of letters, digits, '_', '-'")
            urls = []
            for field_ in ("client", "peer"):
                url = m[field_]
                match = _ETCD_ENDPOINT.fullmatch(url) if isinstance(url, str) else None
                if match is None or not is_loopback(match["host"]):
                    raise _Invalid(
                        f"{where}.{field_}",
                        "must be a loopback URL http://127.0.0.1:PORT (zkv up runs it here)",
                    )
                urls.append(url)
            members.append(EtcdMember(name, urls[0], urls[1]))
        return tuple(members)

    def _coordination(self, raw: Any, cluster: str, insecure: bool) -> CoordinationConfig:
        c = self._map(raw, "coordination", required={"etcd"}, allowed={"etcd"})
        e = self._map(
            c["etcd"],
            "coordination.etcd",
            required=set() if "members" in (c["etcd"] or {}) else {"endpoints"},
            allowed={"endpoints", "prefix", "lease_ttl_s", "timeout_s", "members"},
        )
        members = self._etcd_members(e.get("members", []))
        raw_endpoints = e.get("endpoints", [m.client for m in members])
        if not isinstance(raw_endpoints, list) or not raw_endpoints:
            raise _Invalid(
                "coordination.etcd.endpoints",
                "must be a non-empty list of etcd client URLs (http://HOST:PORT)",
            )
        endpoints: list[str] = []
        for i, url in enumerate(raw_endpoints):
            where = f"coordination.etcd.endpoints[{i}]"
            if not isinstance(url, str) or not (m := _ETCD_ENDPOINT.fullmatch(url)):
                raise _Invalid(where, "not an etcd client URL (http://HOST:PORT)")
            if not 0 < int(m["port"]) <= 65535:
                raise _Invalid(where, f"port {m['port']} is out of range")
            if url in endpoints:
                raise _Invalid(where, f"{url} is listed twice")
            if not insecure and not is_loopback(m["host"]):
                raise _Invalid(
                    where,
                    f"{url} is not a loopback address, and etcd's HTTP API carries the "
                    "routing state unencrypted and unauthenticated: run etcd on 127.0.0.1 "
                    "(or ::1), or put `allow_insecure_remote: true` at the top of the file "
                    "to run on a trusted network",
                )
            endpoints.append(url)
        default_prefix = "prefix" not in e
        prefix = e.get("prefix", f"/zkv/{cluster}")
        if not isinstance(prefix, str) or not _ETCD_PREFIX.fullmatch(prefix):
            problem = "must be a key path such as /zkv/prod (letters, digits, '_', '-', '.')"
            if default_prefix:
                problem = f"the default /zkv/<cluster> does not suit cluster {cluster!r}: set one"
            raise _Invalid("coordination.etcd.prefix", problem)
        ttl = self._seconds(e.get("lease_ttl_s", 2.0), "coordination.etcd.lease_ttl_s")
        if not 1 <= ttl <= 3600:
            raise _Invalid("coordination.etcd.lease_ttl_s", "must be between 1 and 3600 seconds")
        timeout = self._seconds(e.get("timeout_s", 0.5), "coordination.etcd.timeout_s")
        if timeout > ttl / 4:
            raise _Invalid(
                "coordination.etcd.timeout_s",
                f"must be at most a quarter of lease_ttl_s ({ttl / 4:g} s), so that the "
                "controller's keep-alives fit well within its lease",
            )
        return CoordinationConfig(
            EtcdConfig(
                endpoints=tuple(endpoints),
                prefix=prefix,
                lease_ttl_s=ttl,
                timeout_s=timeout,
                members=members,
            )
        )

    def _brokers(self, top: dict[str, Any], coordinated: bool) -> tuple[NamedBrokerConfig, ...]:
        if "brokers" not in top:
            if coordinated:
                raise _Invalid(
                    "brokers",
                    "is required with coordination: list each broker as {name, clients, nodes}",
                )
            return ()
        if not coordinated:
            raise _Invalid(
                "brokers",
                "several brokers share their routing state through etcd: add a coordination "
                "section (coordination: {etcd: {endpoints: [...]}}), or describe one broker "
                "under broker:",
            )
        if "broker" in top:
            raise _Invalid(
                "broker",
                "give either broker (one broker) or brokers (several, with coordination)",
            )
        raw = top["brokers"]
        if not isinstance(raw, list) or not raw:
            raise _Invalid("brokers", "must be a non-empty list of {name, clients, nodes}")
        brokers: list[NamedBrokerConfig] = []
        seen: dict[str, str] = {}
        for i, entry in enumerate(raw):
            at = f"brokers[{i}]"
            b = self._map(
                entry,
                at,
                required={"name", "clients", "nodes"},
                allowed={"name", "clients", "nodes"},
            )
            name = self._str(b["name"], f"{at}.name")
            if not _NAME.fullmatch(name):
                raise _Invalid(f"{at}.name", "a broker name is letters, digits, '_', '-' or '.'")
            if any(other.name == name for other in brokers):
                raise _Invalid(f"{at}.name", f"{name!r} is used twice")
            broker = NamedBrokerConfig(
                name=name,
                clients=self._endpoint(b["clients"], f"{at}.clients"),
                nodes=self._endpoint(b["nodes"], f"{at}.nodes"),
            )
            for kind in ("clients", "nodes"):
                ep = getattr(broker, kind)
                if ep in seen and not ep.endswith((":0", ":*")):
                    raise _Invalid(f"{at}.{kind}", f"{ep} is also {seen[ep]}")
                seen[ep] = f"{at}.{kind}"
            brokers.append(broker)
        return tuple(brokers)

    def _security(
        self, raw: Any, shards: dict[str, tuple[NodeConfig, ...]], gateway: str
    ) -> SecurityConfig:
        sec = self._map(raw, "security", required={"keys", "clients"}, allowed={"keys", "clients"})
        keys = Path(self._str(sec["keys"], "security.keys"))
        raw_clients = sec["clients"]
        if isinstance(raw_clients, list):  # names alone: each may do anything (admin)
            entries: list[tuple[str, Any, Any]] = [
                (f"security.clients[{i}]", name, {}) for i, name in enumerate(raw_clients)
            ]
        elif isinstance(raw_clients, dict):
            entries = [(f"security.clients.{n}", n, g) for n, g in raw_clients.items()]
        else:
            entries = []
        if not entries:
            raise _Invalid(
                "security.clients",
                "must map each client name to {role, prefixes} (or list client names)",
            )
        taken = {BROKER_KEY: "the broker"}
        taken.update({n.name: f"node {n.name}" for nodes in shards.values() for n in nodes})
        clients: dict[str, ClientConfig] = {}
        for where, name, grant in entries:
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise _Invalid(where, "a client name is letters, digits, '_', '-' or '.'")
            if name in taken or name in clients:
                owner = taken.get(name, "another client")
                raise _Invalid(where, f"{name!r} is already the key name of {owner}")
            role, prefixes = self._grant(grant, where, ClientRole.ADMIN)
            clients[name] = ClientConfig(name, role, prefixes)
        if gateway not in clients:
            raise _Invalid(
                "http.client",
                f"the gateway's client {gateway!r} is not in security.clients "
                "(the gateway talks to the broker with that key)",
            )
        return SecurityConfig(keys=keys, clients=clients)

    def _grant(
        self, raw: Any, where: str, default: ClientRole | None
    ) -> tuple[ClientRole, tuple[str, ...]]:
        """A ``{role, prefixes}`` mapping (``role`` required unless ``default``)."""
        extra = {"sha256"} if default is None else set()
        g = self._map(
            raw,
            where,
            required=set() if default is not None else {"role"},
            allowed={"role", "prefixes"} | extra,
        )
        role = g.get("role", default)
        if role not in {r.value for r in ClientRole}:
            raise _Invalid(f"{where}.role", "must be read, write or admin")
        prefixes = g.get("prefixes", [])
        if not isinstance(prefixes, list) or not all(isinstance(p, str) and p for p in prefixes):
            raise _Invalid(f"{where}.prefixes", "must be a list of non-empty key prefixes")
        return ClientRole(role), tuple(prefixes)

    def _tls(self, raw: Any) -> TlsConfig | None:
        if raw is None:
            return None
        t = self._map(raw, "http.tls", required={"cert", "key"}, allowed={"cert", "key"})
        return TlsConfig(
            cert=Path(self._str(t["cert"], "http.tls.cert")),
            key=Path(self._str(t["key"], "http.tls.key")),
        )

    def _tokens(self, raw: Any) -> dict[str, TokenConfig]:
        if raw is None:
            return {}
        if not isinstance(raw, dict) or not raw:
            raise _Invalid("http.tokens", "must map each token name to {sha256, role, prefixes}")
        tokens: dict[str, TokenConfig] = {}
        digests: set[str] = set()
        for name, entry in raw.items():
            where = f"http.tokens.{name}"
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise _Invalid(where, "a token name is letters, digits, '_', '-' or '.'")
            role, prefixes = self._grant(entry, where, None)
            digest = entry.get("sha256")
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise _Invalid(
                    f"{where}.sha256",
                    "must be the token's SHA-256 as 64 hex digits (`zkv token` prints it)",
                )
            if digest.lower() in digests:
                raise _Invalid(f"{where}.sha256", "another token has the same digest")
            digests.add(digest.lower())
            tokens[name] = TokenConfig(name, digest.lower(), role, prefixes)
        return tokens

    def _memory(self, raw: Any, shards: dict[str, tuple[NodeConfig, ...]]) -> MemoryConfig:
        m = self._map(raw, "memory", allowed={"max_bytes", "policy", "shards"})
        default = self._memory_limit(m, "memory", MemoryLimit())
        overrides = m.get("shards", {})
        if not isinstance(overrides, dict):
            raise _Invalid("memory.shards", "must map shard names to {max_bytes, policy}")
        per_shard: dict[str, MemoryLimit] = {}
        for shard, entry in overrides.items():
            where = f"memory.shards.{shard}"
            if shard not in shards:
                known = ", ".join(shards)
                raise _Invalid(where, f"no shard named {shard!r} (shards: {known})")
            limit = self._map(entry, where, allowed={"max_bytes", "policy"})
            per_shard[shard] = self._memory_limit(limit, where, default)
        return MemoryConfig(default, per_shard)

    def _memory_limit(self, m: dict[str, Any], where: str, base: MemoryLimit) -> MemoryLimit:
        max_bytes = self._int(m.get("max_bytes", base.max_bytes), f"{where}.max_bytes", 0, 2**62)
        policy = m.get("policy", base.policy)
        if policy not in {p.value for p in Policy}:
            names = ", ".join(p.value for p in Policy)
            raise _Invalid(f"{where}.policy", f"must be one of {names}")
        return MemoryLimit(max_bytes, Policy(policy))

    def _launcher(self, raw: Any) -> LauncherConfig:
        u = self._map(
            raw,
            "launcher",
            allowed={"max_crashes", "crash_window_s", "backoff_first_s", "backoff_max_s"},
        )
        config = LauncherConfig(
            max_crashes=self._int(u.get("max_crashes", 5), "launcher.max_crashes", 1, 1000),
            crash_window_s=self._seconds(u.get("crash_window_s", 60.0), "launcher.crash_window_s"),
            backoff_first_s=self._seconds(
                u.get("backoff_first_s", 0.5), "launcher.backoff_first_s"
            ),
            backoff_max_s=self._seconds(u.get("backoff_max_s", 8.0), "launcher.backoff_max_s"),
        )
        if config.backoff_max_s < config.backoff_first_s:
            raise _Invalid("launcher.backoff_max_s", "must be at least launcher.backoff_first_s")
        return config

    def _shards(
        self, raw: Any, broker_endpoints: dict[str, str]
    ) -> dict[str, tuple[NodeConfig, ...]]:
        if not isinstance(raw, dict) or not raw:
            raise _Invalid("shards", "must map each shard name to a list of nodes")
        shards: dict[str, tuple[NodeConfig, ...]] = {}
        names: set[str] = set()
        endpoints = dict(broker_endpoints)
        for shard, nodes in raw.items():
            where = f"shards.{shard}"
            if not isinstance(shard, str) or not _NAME.fullmatch(shard):
                raise _Invalid(where, "a shard name is letters, digits, '_', '-' or '.'")
            if not isinstance(nodes, list) or not nodes:
                raise _Invalid(where, "must be a non-empty list of nodes")
            parsed = []
            for i, entry in enumerate(nodes):
                at = f"{where}[{i}]"
                n = self._map(
                    entry,
                    at,
                    required={"name", "publish", "sync"},
                    allowed={"name", "publish", "sync"},
                )
                name = self._str(n["name"], f"{at}.name")
                if not _NAME.fullmatch(name):
                    raise _Invalid(f"{at}.name", "a node name is letters, digits, '_', '-' or '.'")
                if name in names or name == "broker":
                    raise _Invalid(f"{at}.name", f"{name!r} is used twice")
                names.add(name)
                node = NodeConfig(
                    name=name,
                    shard=shard,
                    publish=self._endpoint(n["publish"], f"{at}.publish"),
                    sync=self._endpoint(n["sync"], f"{at}.sync"),
                )
                for kind in ("publish", "sync"):
                    ep = getattr(node, kind)
                    if ep in endpoints and not ep.endswith((":0", ":*")):
                        raise _Invalid(f"{at}.{kind}", f"{ep} is also {endpoints[ep]}")
                    endpoints[ep] = f"{at}.{kind}"
                parsed.append(node)
            shards[shard] = tuple(parsed)
        return shards

    @staticmethod
    def _map(
        raw: Any,
        where: str,
        required: set[str] | frozenset[str] = frozenset(),
        allowed: set[str] | None = None,
    ) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise _Invalid(where, "must be a mapping")
        prefix = "" if where == _TOP else f"{where}."
        for key in sorted(required - raw.keys()):
            raise _Invalid(f"{prefix}{key}", "is required")
        for key in raw:
            if allowed is not None and key not in allowed:
                known = ", ".join(sorted(allowed))
                raise _Invalid(f"{prefix}{key}", f"unknown key (known: {known})")
        return raw

    @staticmethod
    def _str(raw: Any, where: str) -> str:
        if not isinstance(raw, str) or not raw:
            raise _Invalid(where, "must be a non-empty string")
        return raw

    @staticmethod
    def _linger(raw: Any) -> float:
        if not isinstance(raw, int | float) or isinstance(raw, bool) or not 0 <= raw <= 1:
            raise _Invalid("watch.linger_s", "must be a number of seconds from 0 to 1")
        return float(raw)

    @staticmethod
    def _int(raw: Any, where: str, low: int, high: int) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise _Invalid(where, "must be an integer")
        if not low <= raw <= high:
            raise _Invalid(where, f"must be between {low} and {high}")
        return raw

    @staticmethod
    def _seconds(raw: Any, where: str) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not raw > 0:
            raise _Invalid(where, "must be a positive number of seconds")
        return float(raw)

    @staticmethod
    def _ratio(raw: Any, where: str) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not raw >= 1:
            raise _Invalid(where, "must be a number of at least 1")
        return float(raw)

    @staticmethod
    def _flag(raw: Any, where: str) -> bool:
        if type(raw) is not bool:
            raise _Invalid(where, "must be true or false")
        return raw

    @staticmethod
    def _endpoint(raw: Any, where: str) -> str:
        if not isinstance(raw, str) or not (m := _ENDPOINT.fullmatch(raw)):
            raise _Invalid(where, "not a tcp:// endpoint (tcp://HOST:PORT)")
        if m["port"] != "*" and int(m["port"]) > 65535:
            raise _Invalid(where, f"port {m['port']} is out of range")
        return raw


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
