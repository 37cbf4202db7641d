"""Reading the cluster's YAML file: the walk that validates it into ``zkv.config``'s
dataclasses, keeping the key path of each value for its error message
(``zkv.config.parse_config`` runs it and turns its ``Invalid`` into one ``ConfigError``
line)."""

from __future__ import annotations

import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from zkv.access import ClientRole
from zkv.config import (
    BROKER_KEY,
    FSYNC_POLICIES,
    BrokerConfig,
    ClientConfig,
    ClusterConfig,
    CoordinationConfig,
    DefaultsConfig,
    EtcdConfig,
    EtcdMember,
    HeartbeatConfig,
    HttpConfig,
    LauncherConfig,
    LimitsConfig,
    MemoryConfig,
    MemoryLimit,
    NamedBrokerConfig,
    NodeConfig,
    ReplicationConfig,
    SecurityConfig,
    StorageConfig,
    TlsConfig,
    TokenConfig,
    WatchConfig,
    is_loopback,
)
from zkv.protocol import Consistency
from zkv.storage.eviction import Policy

__all__ = ["Invalid", "Parser", "UniqueKeyLoader"]

_ENDPOINT = re.compile(r"^tcp://(?P<host>[^:/\s]+|\[[0-9a-fA-F:.]+\]):(?P<port>\d{1,5}|\*)$")
_TOP = "(top level)"
_LISTEN = re.compile(r"(?P<host>[^:/\s]+|\[[0-9a-fA-F:.]+\]):(?P<port>\d{1,5})")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_ETCD_ENDPOINT = re.compile(r"^http://(?P<host>[^:/\s\[\]]+|\[[0-9a-fA-F:.]+\]):(?P<port>\d{1,5})$")
_ETCD_PREFIX = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")


class UniqueKeyLoader(yaml.SafeLoader):
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


class Invalid(Exception):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class Parser:
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
            raise Invalid("storage.fsync", f"must be one of {', '.join(FSYNC_POLICIES)}")
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
            raise Invalid("defaults.consistency", "must be strong or eventual")
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
            raise Invalid("http.listen", "must be HOST:PORT, e.g. 127.0.0.1:7480")
        if int(listen.rsplit(":", 1)[1]) > 65535:
            raise Invalid("http.listen", "port is out of range")
        gateway = w.get("client", "gateway")
        if not isinstance(gateway, str) or not _NAME.fullmatch(gateway):
            raise Invalid("http.client", "a client name is letters, digits, '_', '-' or '.'")
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
                raise Invalid(f"brokers[{i}].name", f"{named.name!r} is also the name of a node")
        security = None
        if "security" in top:
            security = self._security(top["security"], shards, gateway)
        memory = self._memory(top.get("memory", {}), shards)
        if slots < len(shards):
            raise Invalid("slots", f"must be at least the number of shards ({len(shards)})")
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
            raise Invalid("coordination.etcd.members", "must be a list of {name, client, peer}")
        members: list[EtcdMember] = []
        for i, entry in enumerate(raw):
            where = f"coordination.etcd.members[{i}]"
            m = self._map(entry, where, required={"name", "client", "peer"})
            name = self._str(m["name"], f"{where}.name")
            if not _NAME.fullmatch(name) or any(x.name == name for x in members):
                raise Invalid(f"{where}.name", "a distinct name of letters, digits, '_', '-'")
            urls = []
            for field_ in ("client", "peer"):
                url = m[field_]
                match = _ETCD_ENDPOINT.fullmatch(url) if isinstance(url, str) else None
                if match is None or not is_loopback(match["host"]):
                    raise Invalid(
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
            raise Invalid(
                "coordination.etcd.endpoints",
                "must be a non-empty list of etcd client URLs (http://HOST:PORT)",
            )
        endpoints: list[str] = []
        for i, url in enumerate(raw_endpoints):
            where = f"coordination.etcd.endpoints[{i}]"
            if not isinstance(url, str) or not (m := _ETCD_ENDPOINT.fullmatch(url)):
                raise Invalid(where, "not an etcd client URL (http://HOST:PORT)")
            if not 0 < int(m["port"]) <= 65535:
                raise Invalid(where, f"port {m['port']} is out of range")
            if url in endpoints:
                raise Invalid(where, f"{url} is listed twice")
            if not insecure and not is_loopback(m["host"]):
                raise Invalid(
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
            raise Invalid("coordination.etcd.prefix", problem)
        ttl = self._seconds(e.get("lease_ttl_s", 2.0), "coordination.etcd.lease_ttl_s")
        if not 1 <= ttl <= 3600:
            raise Invalid("coordination.etcd.lease_ttl_s", "must be between 1 and 3600 seconds")
        timeout = self._seconds(e.get("timeout_s", 0.5), "coordination.etcd.timeout_s")
        if timeout > ttl / 4:
            raise Invalid(
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
                raise Invalid(
                    "brokers",
                    "is required with coordination: list each broker as {name, clients, nodes}",
                )
            return ()
        if not coordinated:
            raise Invalid(
                "brokers",
                "several brokers share their routing state through etcd: add a coordination "
                "section (coordination: {etcd: {endpoints: [...]}}), or describe one broker "
                "under broker:",
            )
        if "broker" in top:
            raise Invalid(
                "broker",
                "give either broker (one broker) or brokers (several, with coordination)",
            )
        raw = top["brokers"]
        if not isinstance(raw, list) or not raw:
            raise Invalid("brokers", "must be a non-empty list of {name, clients, nodes}")
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
                raise Invalid(f"{at}.name", "a broker name is letters, digits, '_', '-' or '.'")
            if any(other.name == name for other in brokers):
                raise Invalid(f"{at}.name", f"{name!r} is used twice")
            broker = NamedBrokerConfig(
                name=name,
                clients=self._endpoint(b["clients"], f"{at}.clients"),
                nodes=self._endpoint(b["nodes"], f"{at}.nodes"),
            )
            for kind in ("clients", "nodes"):
                ep = getattr(broker, kind)
                if ep in seen and not ep.endswith((":0", ":*")):
                    raise Invalid(f"{at}.{kind}", f"{ep} is also {seen[ep]}")
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
            raise Invalid(
                "security.clients",
                "must map each client name to {role, prefixes} (or list client names)",
            )
        taken = {BROKER_KEY: "the broker"}
        taken.update({n.name: f"node {n.name}" for nodes in shards.values() for n in nodes})
        clients: dict[str, ClientConfig] = {}
        for where, name, grant in entries:
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise Invalid(where, "a client name is letters, digits, '_', '-' or '.'")
            if name in taken or name in clients:
                owner = taken.get(name, "another client")
                raise Invalid(where, f"{name!r} is already the key name of {owner}")
            role, prefixes = self._grant(grant, where, ClientRole.ADMIN)
            clients[name] = ClientConfig(name, role, prefixes)
        if gateway not in clients:
            raise Invalid(
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
            raise Invalid(f"{where}.role", "must be read, write or admin")
        prefixes = g.get("prefixes", [])
        if not isinstance(prefixes, list) or not all(isinstance(p, str) and p for p in prefixes):
            raise Invalid(f"{where}.prefixes", "must be a list of non-empty key prefixes")
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
            raise Invalid("http.tokens", "must map each token name to {sha256, role, prefixes}")
        tokens: dict[str, TokenConfig] = {}
        digests: set[str] = set()
        for name, entry in raw.items():
            where = f"http.tokens.{name}"
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise Invalid(where, "a token name is letters, digits, '_', '-' or '.'")
            role, prefixes = self._grant(entry, where, None)
            digest = entry.get("sha256")
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise Invalid(
                    f"{where}.sha256",
                    "must be the token's SHA-256 as 64 hex digits (`zkv token` prints it)",
                )
            if digest.lower() in digests:
                raise Invalid(f"{where}.sha256", "another token has the same digest")
            digests.add(digest.lower())
            tokens[name] = TokenConfig(name, digest.lower(), role, prefixes)
        return tokens

    def _memory(self, raw: Any, shards: dict[str, tuple[NodeConfig, ...]]) -> MemoryConfig:
        m = self._map(raw, "memory", allowed={"max_bytes", "policy", "shards"})
        default = self._memory_limit(m, "memory", MemoryLimit())
        overrides = m.get("shards", {})
        if not isinstance(overrides, dict):
            raise Invalid("memory.shards", "must map shard names to {max_bytes, policy}")
        per_shard: dict[str, MemoryLimit] = {}
        for shard, entry in overrides.items():
            where = f"memory.shards.{shard}"
            if shard not in shards:
                known = ", ".join(shards)
                raise Invalid(where, f"no shard named {shard!r} (shards: {known})")
            limit = self._map(entry, where, allowed={"max_bytes", "policy"})
            per_shard[shard] = self._memory_limit(limit, where, default)
        return MemoryConfig(default, per_shard)

    def _memory_limit(self, m: dict[str, Any], where: str, base: MemoryLimit) -> MemoryLimit:
        max_bytes = self._int(m.get("max_bytes", base.max_bytes), f"{where}.max_bytes", 0, 2**62)
        policy = m.get("policy", base.policy)
        if policy not in {p.value for p in Policy}:
            names = ", ".join(p.value for p in Policy)
            raise Invalid(f"{where}.policy", f"must be one of {names}")
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
            raise Invalid("launcher.backoff_max_s", "must be at least launcher.backoff_first_s")
        return config

    def _shards(
        self, raw: Any, broker_endpoints: dict[str, str]
    ) -> dict[str, tuple[NodeConfig, ...]]:
        if not isinstance(raw, dict) or not raw:
            raise Invalid("shards", "must map each shard name to a list of nodes")
        shards: dict[str, tuple[NodeConfig, ...]] = {}
        names: set[str] = set()
        endpoints = dict(broker_endpoints)
        for shard, nodes in raw.items():
            where = f"shards.{shard}"
            if not isinstance(shard, str) or not _NAME.fullmatch(shard):
                raise Invalid(where, "a shard name is letters, digits, '_', '-' or '.'")
            if not isinstance(nodes, list) or not nodes:
                raise Invalid(where, "must be a non-empty list of nodes")
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
                    raise Invalid(f"{at}.name", "a node name is letters, digits, '_', '-' or '.'")
                if name in names or name == "broker":
                    raise Invalid(f"{at}.name", f"{name!r} is used twice")
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
                        raise Invalid(f"{at}.{kind}", f"{ep} is also {endpoints[ep]}")
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
            raise Invalid(where, "must be a mapping")
        prefix = "" if where == _TOP else f"{where}."
        for key in sorted(required - raw.keys()):
            raise Invalid(f"{prefix}{key}", "is required")
        for key in raw:
            if allowed is not None and key not in allowed:
                known = ", ".join(sorted(allowed))
                raise Invalid(f"{prefix}{key}", f"unknown key (known: {known})")
        return raw

    @staticmethod
    def _str(raw: Any, where: str) -> str:
        if not isinstance(raw, str) or not raw:
            raise Invalid(where, "must be a non-empty string")
        return raw

    @staticmethod
    def _linger(raw: Any) -> float:
        if not isinstance(raw, int | float) or isinstance(raw, bool) or not 0 <= raw <= 1:
            raise Invalid("watch.linger_s", "must be a number of seconds from 0 to 1")
        return float(raw)

    @staticmethod
    def _int(raw: Any, where: str, low: int, high: int) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise Invalid(where, "must be an integer")
        if not low <= raw <= high:
            raise Invalid(where, f"must be between {low} and {high}")
        return raw

    @staticmethod
    def _seconds(raw: Any, where: str) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not raw > 0:
            raise Invalid(where, "must be a positive number of seconds")
        return float(raw)

    @staticmethod
    def _ratio(raw: Any, where: str) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not raw >= 1:
            raise Invalid(where, "must be a number of at least 1")
        return float(raw)

    @staticmethod
    def _flag(raw: Any, where: str) -> bool:
        if type(raw) is not bool:
            raise Invalid(where, "must be true or false")
        return raw

    @staticmethod
    def _endpoint(raw: Any, where: str) -> str:
        if not isinstance(raw, str) or not (m := _ENDPOINT.fullmatch(raw)):
            raise Invalid(where, "not a tcp:// endpoint (tcp://HOST:PORT)")
        if m["port"] != "*" and int(m["port"]) > 65535:
            raise Invalid(where, f"port {m['port']} is out of range")
        return raw
