"""Unit tests for zkv.config: YAML parsing, defaults and one-line error messages."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from zkv.access import ClientRole
from zkv.config import (
    BrokerConfig,
    ClientConfig,
    ClusterConfig,
    CoordinationConfig,
    DefaultsConfig,
    EtcdConfig,
    HeartbeatConfig,
    LauncherConfig,
    LimitsConfig,
    NamedBrokerConfig,
    NodeConfig,
    SecurityConfig,
    StorageConfig,
    TlsConfig,
    TokenConfig,
    load_config,
    parse_config,
)
from zkv.errors import ConfigError
from zkv.protocol import Consistency

FULL = textwrap.dedent(
    """\
    cluster: prod-eu
    slots: 1024
    broker:
      clients: tcp://0.0.0.0:9400
      nodes: tcp://[::1]:9401
    storage:
      dir: /var/lib/zkv
      fsync: always
    limits:
      max_key_bytes: 512
      max_value_bytes: 2048
      max_request_bytes: 4096
    defaults:
      consistency: eventual
      timeout_s: 2
    heartbeat:
      interval_s: 0.25
      liveness: 5
    shards:
      s1:
        - name: n1
          publish: tcp://127.0.0.1:9500
          sync: tcp://127.0.0.1:9501
        - name: n1-replica
          publish: tcp://127.0.0.1:9502
          sync: tcp://127.0.0.1:9503
      s2:
        - name: n2
          publish: tcp://host.example:9504
          sync: tcp://*:9505
    """
)

MINIMAL_SHARDS = {
    "s1": [{"name": "n1", "publish": "tcp://127.0.0.1:7500", "sync": "tcp://127.0.0.1:7501"}]
}


def _doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"shards": MINIMAL_SHARDS}
    doc.update(overrides)
    return doc


def _node(name: str, publish: str, sync: str) -> dict[str, str]:
    return {"name": name, "publish": publish, "sync": sync}


def _error(doc: Any, path: Path | None = Path("cluster.yaml")) -> str:
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)
    with pytest.raises(ConfigError) as info:
        parse_config(text, path)
    message = str(info.value)
    assert "\n" not in message
    assert "Traceback" not in message
    return message


# --------------------------------------------------------------------------- valid


def test_full_document() -> None:
    cfg = parse_config(FULL, Path("full.yaml"))
    assert cfg == ClusterConfig(
        cluster="prod-eu",
        slots=1024,
        broker=BrokerConfig(clients="tcp://0.0.0.0:9400", nodes="tcp://[::1]:9401"),
        storage=StorageConfig(dir=Path("/var/lib/zkv"), fsync="always"),
        limits=LimitsConfig(max_key_bytes=512, max_value_bytes=2048, max_request_bytes=4096),
        defaults=DefaultsConfig(consistency=Consistency.EVENTUAL, timeout_s=2.0),
        heartbeat=HeartbeatConfig(interval_s=0.25, liveness=5),
        shards={
            "s1": (
                NodeConfig("n1", "s1", "tcp://127.0.0.1:9500", "tcp://127.0.0.1:9501"),
                NodeConfig("n1-replica", "s1", "tcp://127.0.0.1:9502", "tcp://127.0.0.1:9503"),
            ),
            "s2": (NodeConfig("n2", "s2", "tcp://host.example:9504", "tcp://*:9505"),),
        },
        path=Path("full.yaml"),
    )
    assert type(cfg.defaults.timeout_s) is float
    assert cfg.defaults.consistency is Consistency.EVENTUAL
    assert list(cfg.shards) == ["s1", "s2"]  # file order
    assert [n.name for n in cfg.nodes()] == ["n1", "n1-replica", "n2"]
    assert cfg.heartbeat.expiry_s == pytest.approx(1.25)


def test_defaults_when_optional_sections_are_absent() -> None:
    cfg = parse_config(yaml.safe_dump(_doc()))
    assert cfg.cluster == "zkv"
    assert cfg.slots == 16384
    assert cfg.broker == BrokerConfig()
    assert cfg.broker.clients == "tcp://127.0.0.1:7400"
    assert cfg.broker.nodes == "tcp://127.0.0.1:7401"
    assert cfg.storage == StorageConfig()
    assert cfg.storage.dir == Path("./data")
    assert cfg.storage.fsync == "everysec"
    assert cfg.limits == LimitsConfig()
    assert cfg.limits.max_key_bytes == 1024
    assert cfg.limits.max_value_bytes == 1024 * 1024
    assert cfg.limits.max_request_bytes == 64 * 1024 * 1024
    assert cfg.limits.max_keys_per_request == 10_000
    assert cfg.limits.max_inflight_per_client == 1000
    assert cfg.limits.hwm == 10_000
    assert cfg.defaults == DefaultsConfig()
    assert cfg.defaults.consistency is Consistency.STRONG
    assert cfg.defaults.timeout_s == 5.0
    assert cfg.heartbeat == HeartbeatConfig()
    assert cfg.heartbeat.expiry_s == pytest.approx(1.5)
    assert cfg.path is None
    assert cfg.shards == {
        "s1": (NodeConfig("n1", "s1", "tcp://127.0.0.1:7500", "tcp://127.0.0.1:7501"),)
    }


def test_partial_sections_keep_other_defaults() -> None:
    cfg = parse_config(
        yaml.safe_dump(_doc(broker={"clients": "tcp://127.0.0.1:1"}, limits={"max_key_bytes": 9}))
    )
    assert cfg.broker == BrokerConfig(clients="tcp://127.0.0.1:1")
    assert cfg.limits == LimitsConfig(max_key_bytes=9)


@pytest.mark.parametrize("policy", ["always", "everysec", "no"])
def test_fsync_policies(policy: str) -> None:
    doc = _doc(storage={"fsync": policy})
    assert parse_config(yaml.safe_dump(doc)).storage.fsync == policy


def test_bare_yaml_no_for_fsync_is_accepted_as_no() -> None:
    text = "storage:\n  fsync: no\n" + yaml.safe_dump(_doc())
    assert yaml.safe_load(text)["storage"]["fsync"] is False  # what YAML 1.1 reads
    assert parse_config(text).storage.fsync == "no"


def test_node_endpoints_on_port_zero_or_star_may_repeat() -> None:
    doc = _doc(
        shards={
            "a": [_node("x", "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")],
            "b": [_node("y", "tcp://127.0.0.1:0", "tcp://*:*")],
            "c": [_node("z", "tcp://*:*", "tcp://127.0.0.1:0")],
        }
    )
    cfg = parse_config(yaml.safe_dump(doc))
    assert [n.publish for n in cfg.nodes()] == [
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:0",
        "tcp://*:*",
    ]


@pytest.mark.parametrize(
    "endpoint",
    ["tcp://127.0.0.1:1", "tcp://localhost:65535", "tcp://[::1]:80", "tcp://*:9", "tcp://h:*"],
)
def test_valid_endpoints(endpoint: str) -> None:
    cfg = parse_config(yaml.safe_dump(_doc(broker={"clients": endpoint})))
    assert cfg.broker.clients == endpoint


def test_limits_bounds_are_inclusive() -> None:
    doc = _doc(
        slots=65536,
        limits={"max_key_bytes": 65536, "max_value_bytes": 2**31, "max_request_bytes": 1024},
        heartbeat={"liveness": 1000},
    )
    cfg = parse_config(yaml.safe_dump(doc))
    assert cfg.slots == 65536
    assert cfg.limits == LimitsConfig(65536, 2**31, 1024)
    assert cfg.heartbeat.liveness == 1000
    assert parse_config(yaml.safe_dump(_doc(slots=1))).slots == 1


def test_node_lookup_and_data_dir() -> None:
    cfg = parse_config(FULL, Path("full.yaml"))
    assert cfg.node("n1-replica") == NodeConfig(
        "n1-replica", "s1", "tcp://127.0.0.1:9502", "tcp://127.0.0.1:9503"
    )
    assert cfg.node("n2").shard == "s2"
    assert cfg.data_dir("n1") == Path("/var/lib/zkv/n1")
    assert cfg.data_dir("broker") == Path("/var/lib/zkv/broker")


def test_node_unknown_name() -> None:
    cfg = parse_config(FULL, Path("full.yaml"))
    with pytest.raises(ConfigError) as info:
        cfg.node("n9")
    assert str(info.value) == "full.yaml: no node named 'n9' (nodes: n1, n1-replica, n2)"


def test_node_unknown_name_without_path() -> None:
    cfg = parse_config(yaml.safe_dump(_doc()))
    with pytest.raises(ConfigError) as info:
        cfg.node("nope")
    assert str(info.value) == "no node named 'nope' (nodes: n1)"


def test_data_dir_relative() -> None:
    cfg = parse_config(yaml.safe_dump(_doc(storage={"dir": "rel/dir"})))
    assert cfg.data_dir("n1") == Path("rel/dir/n1")
    assert not cfg.data_dir("n1").is_absolute()


# --------------------------------------------------------------------------- files


def test_load_config_from_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(FULL, encoding="utf-8")
    cfg = load_config(path)
    assert cfg.path == path
    assert cfg.cluster == "prod-eu"
    assert load_config(str(path)) == cfg


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: no such config file"
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_load_config_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)  # a directory
    assert str(info.value).startswith(f"{tmp_path}: cannot read: ")
    assert "\n" not in str(info.value)


def test_load_config_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_doc(slots=0)), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: slots: must be between 1 and 65536"


@pytest.mark.parametrize(
    "text",
    [
        "shards: [unclosed\n",
        "cluster: a\n  bad: indent\nshards: {}\n",
        "cluster: x\nshards:\n  s1:\n    - name: n1\n      publish: 'oops\n",
        "a: b: c\n",
        "\tcluster: tab\n",
    ],
)
def test_bad_yaml_syntax(text: str, tmp_path: Path) -> None:
    path = tmp_path / "syntax.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert re.fullmatch(re.escape(f"{path}: ") + r"line \d+: invalid YAML: .+", message), message
    assert "\n" not in message
    assert info.value.__cause__ is None


def test_bad_yaml_line_number() -> None:
    text = "cluster: ok\nslots: 5\nbroker:\n  clients: [\n"
    message = _error(text)
    line = int(re.search(r"line (\d+)", message).group(1))  # type: ignore[union-attr]
    assert 4 <= line <= 5


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        # top level
        ("", "(top level): must be a mapping"),
        ("- a\n- b\n", "(top level): must be a mapping"),
        ("just text\n", "(top level): must be a mapping"),
        ({"cluster": "x"}, "shards: is required"),
        (
            _doc(bogus=1),
            "bogus: unknown key (known: allow_insecure_remote, broker, brokers, cluster, "
            "coordination, defaults, heartbeat, http, launcher, limits, memory, replication, "
            "security, shards, slots, storage, watch)",
        ),
        (_doc(cluster=""), "cluster: must be a non-empty string"),
        (_doc(cluster=5), "cluster: must be a non-empty string"),
        (_doc(slots=0), "slots: must be between 1 and 65536"),
        (_doc(slots=65537), "slots: must be between 1 and 65536"),
        (_doc(slots="16384"), "slots: must be an integer"),
        (_doc(slots=True), "slots: must be an integer"),
        (_doc(slots=16.0), "slots: must be an integer"),
        # broker
        (_doc(broker=[]), "broker: must be a mapping"),
        (_doc(broker=None), "broker: must be a mapping"),
        (
            _doc(broker={"client": "tcp://a:1"}),
            "broker.client: unknown key (known: clients, nodes)",
        ),
        (
            _doc(broker={"clients": "udp://127.0.0.1:1"}),
            "broker.clients: not a tcp:// endpoint (tcp://HOST:PORT)",
        ),
        (
            _doc(broker={"nodes": "tcp://127.0.0.1"}),
            "broker.nodes: not a tcp:// endpoint (tcp://HOST:PORT)",
        ),
        (_doc(broker={"nodes": 7401}), "broker.nodes: not a tcp:// endpoint (tcp://HOST:PORT)"),
        (
            _doc(broker={"clients": "tcp://127.0.0.1:123456"}),
            "broker.clients: not a tcp:// endpoint (tcp://HOST:PORT)",
        ),
        (_doc(broker={"clients": "tcp://h:65536"}), "broker.clients: port 65536 is out of range"),
        (_doc(broker={"clients": "tcp://h:99999"}), "broker.clients: port 99999 is out of range"),
        (
            _doc(broker={"clients": "tcp://a b:1"}),
            "broker.clients: not a tcp:// endpoint (tcp://HOST:PORT)",
        ),
        # storage
        (_doc(storage="data"), "storage: must be a mapping"),
        (
            _doc(storage={"path": "x"}),
            "storage.path: unknown key (known: compact_min_bytes, compact_ratio, dir, fsync, "
            "min_free_bytes)",
        ),
        (_doc(storage={"dir": ""}), "storage.dir: must be a non-empty string"),
        (_doc(storage={"dir": 3}), "storage.dir: must be a non-empty string"),
        (
            _doc(storage={"fsync": "sometimes"}),
            "storage.fsync: must be one of always, everysec, no",
        ),
        (_doc(storage={"fsync": True}), "storage.fsync: must be one of always, everysec, no"),
        (_doc(storage={"fsync": 1}), "storage.fsync: must be one of always, everysec, no"),
        (_doc(storage={"fsync": "NO"}), "storage.fsync: must be one of always, everysec, no"),
        # limits
        (
            _doc(limits={"max_keys": 1}),
            "limits.max_keys: unknown key (known: hwm, max_inflight_per_client, max_key_bytes, "
            "max_keys_per_request, max_request_bytes, max_value_bytes)",
        ),
        (
            _doc(limits={"max_keys_per_request": 0}),
            "limits.max_keys_per_request: must be between 1 and 100000",
        ),
        (
            _doc(limits={"max_inflight_per_client": "many"}),
            "limits.max_inflight_per_client: must be an integer",
        ),
        (_doc(limits={"hwm": 0}), "limits.hwm: must be between 1 and 10000000"),
        (_doc(limits={"max_key_bytes": 0}), "limits.max_key_bytes: must be between 1 and 65536"),
        (
            _doc(limits={"max_key_bytes": 65537}),
            "limits.max_key_bytes: must be between 1 and 65536",
        ),
        (
            _doc(limits={"max_value_bytes": 2**31 + 1}),
            "limits.max_value_bytes: must be between 1 and 2147483648",
        ),
        (
            _doc(limits={"max_request_bytes": 1023}),
            "limits.max_request_bytes: must be between 1024 and 2147483648",
        ),
        (_doc(limits={"max_value_bytes": "1MB"}), "limits.max_value_bytes: must be an integer"),
        # defaults
        (
            _doc(defaults={"timeout": 1}),
            "defaults.timeout: unknown key (known: consistency, timeout_s)",
        ),
        (
            _doc(defaults={"consistency": "weak"}),
            "defaults.consistency: must be strong or eventual",
        ),
        (_doc(defaults={"consistency": None}), "defaults.consistency: must be strong or eventual"),
        (
            _doc(defaults={"timeout_s": 0}),
            "defaults.timeout_s: must be a positive number of seconds",
        ),
        (
            _doc(defaults={"timeout_s": -1.5}),
            "defaults.timeout_s: must be a positive number of seconds",
        ),
        (
            _doc(defaults={"timeout_s": "5"}),
            "defaults.timeout_s: must be a positive number of seconds",
        ),
        (
            _doc(defaults={"timeout_s": True}),
            "defaults.timeout_s: must be a positive number of seconds",
        ),
        (
            "defaults:\n  timeout_s: .nan\n" + yaml.safe_dump(_doc()),
            "defaults.timeout_s: must be a positive number of seconds",
        ),
        # heartbeat
        (
            _doc(heartbeat={"interval": 1}),
            "heartbeat.interval: unknown key (known: interval_s, liveness)",
        ),
        (
            _doc(heartbeat={"interval_s": 0}),
            "heartbeat.interval_s: must be a positive number of seconds",
        ),
        (_doc(heartbeat={"liveness": 0}), "heartbeat.liveness: must be between 1 and 1000"),
        (_doc(heartbeat={"liveness": 1001}), "heartbeat.liveness: must be between 1 and 1000"),
        (_doc(heartbeat={"liveness": 2.5}), "heartbeat.liveness: must be an integer"),
        # launcher
        (_doc(launcher=[]), "launcher: must be a mapping"),
        (
            _doc(launcher={"retries": 3}),
            "launcher.retries: unknown key (known: backoff_first_s, backoff_max_s, "
            "crash_window_s, max_crashes)",
        ),
        (_doc(launcher={"max_crashes": 0}), "launcher.max_crashes: must be between 1 and 1000"),
        (_doc(launcher={"max_crashes": 2.5}), "launcher.max_crashes: must be an integer"),
        (
            _doc(launcher={"crash_window_s": 0}),
            "launcher.crash_window_s: must be a positive number of seconds",
        ),
        (
            _doc(launcher={"backoff_first_s": "1s"}),
            "launcher.backoff_first_s: must be a positive number of seconds",
        ),
        (
            _doc(launcher={"backoff_max_s": -1}),
            "launcher.backoff_max_s: must be a positive number of seconds",
        ),
        (
            _doc(launcher={"backoff_first_s": 2, "backoff_max_s": 1}),
            "launcher.backoff_max_s: must be at least launcher.backoff_first_s",
        ),
        # shards
        (_doc(shards={}), "shards: must map each shard name to a list of nodes"),
        (_doc(shards=[]), "shards: must map each shard name to a list of nodes"),
        (_doc(shards=None), "shards: must map each shard name to a list of nodes"),
        (_doc(shards={"s1": []}), "shards.s1: must be a non-empty list of nodes"),
        (_doc(shards={"s1": None}), "shards.s1: must be a non-empty list of nodes"),
        (
            _doc(shards={"s1": {"name": "n1"}}),
            "shards.s1: must be a non-empty list of nodes",
        ),
        (
            _doc(shards={"bad name": [_node("n", "tcp://h:1", "tcp://h:2")]}),
            "shards.bad name: a shard name is letters, digits, '_', '-' or '.'",
        ),
        (
            _doc(shards={"-s": [_node("n", "tcp://h:1", "tcp://h:2")]}),
            "shards.-s: a shard name is letters, digits, '_', '-' or '.'",
        ),
        (
            _doc(shards={"s1": ["n1"]}),
            "shards.s1[0]: must be a mapping",
        ),
        (
            _doc(shards={"s1": [{"name": "n1", "publish": "tcp://h:1"}]}),
            "shards.s1[0].sync: is required",
        ),
        (
            _doc(shards={"s1": [{"sync": "tcp://h:1"}]}),
            "shards.s1[0].name: is required",
        ),
        (
            _doc(
                shards={
                    "s1": [
                        _node("n1", "tcp://h:1", "tcp://h:2"),
                        {**_node("n2", "tcp://h:3", "tcp://h:4"), "role": "replica"},
                    ]
                }
            ),
            "shards.s1[1].role: unknown key (known: name, publish, sync)",
        ),
        (
            _doc(shards={"s1": [_node("", "tcp://h:1", "tcp://h:2")]}),
            "shards.s1[0].name: must be a non-empty string",
        ),
        (
            _doc(shards={"s1": [_node("n/1", "tcp://h:1", "tcp://h:2")]}),
            "shards.s1[0].name: a node name is letters, digits, '_', '-' or '.'",
        ),
        (
            _doc(shards={"s1": [_node("a" * 65, "tcp://h:1", "tcp://h:2")]}),
            "shards.s1[0].name: a node name is letters, digits, '_', '-' or '.'",
        ),
        (
            _doc(shards={"s1": [_node("n1", "127.0.0.1:7500", "tcp://h:2")]}),
            "shards.s1[0].publish: not a tcp:// endpoint (tcp://HOST:PORT)",
        ),
        (
            _doc(shards={"s1": [_node("n1", "tcp://h:1", "ipc:///tmp/x")]}),
            "shards.s1[0].sync: not a tcp:// endpoint (tcp://HOST:PORT)",
        ),
        (
            _doc(shards={"s1": [_node("n1", "tcp://h:1", "tcp://h:70000")]}),
            "shards.s1[0].sync: port 70000 is out of range",
        ),
        # duplicate node names, in one shard and across shards, and the reserved "broker"
        (
            _doc(
                shards={
                    "s1": [
                        _node("n1", "tcp://h:1", "tcp://h:2"),
                        _node("n1", "tcp://h:3", "tcp://h:4"),
                    ]
                }
            ),
            "shards.s1[1].name: 'n1' is used twice",
        ),
        (
            _doc(
                shards={
                    "s1": [_node("n1", "tcp://h:1", "tcp://h:2")],
                    "s2": [_node("n1", "tcp://h:3", "tcp://h:4")],
                }
            ),
            "shards.s2[0].name: 'n1' is used twice",
        ),
        (
            _doc(shards={"s1": [_node("broker", "tcp://h:1", "tcp://h:2")]}),
            "shards.s1[0].name: 'broker' is used twice",
        ),
        # duplicate endpoints
        (
            _doc(shards={"s1": [_node("n1", "tcp://h:1", "tcp://h:1")]}),
            "shards.s1[0].sync: tcp://h:1 is also shards.s1[0].publish",
        ),
        (
            _doc(
                shards={
                    "s1": [_node("n1", "tcp://h:1", "tcp://h:2")],
                    "s2": [_node("n2", "tcp://h:3", "tcp://h:2")],
                }
            ),
            "shards.s2[0].sync: tcp://h:2 is also shards.s1[0].sync",
        ),
        (
            _doc(shards={"s1": [_node("n1", "tcp://127.0.0.1:7400", "tcp://h:2")]}),
            "shards.s1[0].publish: tcp://127.0.0.1:7400 is also broker.clients",
        ),
        (
            _doc(
                broker={"nodes": "tcp://h:5"},
                shards={"s1": [_node("n1", "tcp://h:1", "tcp://h:5")]},
            ),
            "shards.s1[0].sync: tcp://h:5 is also broker.nodes",
        ),
    ],
)
def test_error_messages(doc: Any, message: str) -> None:
    assert _error(doc) == f"cluster.yaml: {message}"


def test_error_without_path_has_no_prefix() -> None:
    assert _error(_doc(slots=0), path=None) == "slots: must be between 1 and 65536"


def test_error_is_config_error_and_value_error() -> None:
    with pytest.raises(ValueError, match="slots"):
        parse_config(yaml.safe_dump(_doc(slots=-1)))


def test_error_has_no_chained_traceback() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(_doc(slots=-1)))
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_config_is_frozen() -> None:
    cfg = parse_config(FULL)
    with pytest.raises(AttributeError):
        cfg.slots = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cfg.limits.max_key_bytes = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    "node",
    [
        _node("n1\n", "tcp://127.0.0.1:7500", "tcp://127.0.0.1:7501"),
        _node("n1", "tcp://127.0.0.1:7500\n", "tcp://127.0.0.1:7501"),
    ],
)
def test_trailing_newline_is_rejected(node: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        parse_config(yaml.safe_dump(_doc(shards={"s1": [node]})))


def test_http_listen() -> None:
    base = "shards: {s0: [{name: a, publish: 'tcp://h:1', sync: 'tcp://h:2'}]}\n"
    assert parse_config(base).http.listen == "127.0.0.1:7480"
    config = parse_config(base + "http: {listen: '0.0.0.0:8080'}\n")
    assert (config.http.host, config.http.port) == ("0.0.0.0", 8080)
    for bad in ("'8080'", "'host:99999'", "'tcp://h:1'", "3"):
        with pytest.raises(ConfigError, match=r"^http\.listen: "):
            parse_config(base + f"http: {{listen: {bad}}}\n")


def test_launcher_section() -> None:
    assert parse_config(yaml.safe_dump(_doc())).launcher == LauncherConfig()
    assert LauncherConfig() == LauncherConfig(
        max_crashes=5, crash_window_s=60.0, backoff_first_s=0.5, backoff_max_s=8.0
    )
    doc = _doc(launcher={"max_crashes": 3, "crash_window_s": 10, "backoff_first_s": 0.1})
    launcher = parse_config(yaml.safe_dump(doc)).launcher
    assert launcher == LauncherConfig(
        max_crashes=3, crash_window_s=10.0, backoff_first_s=0.1, backoff_max_s=8.0
    )
    assert type(launcher.crash_window_s) is float
    with pytest.raises(AttributeError):
        launcher.max_crashes = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- security


def _secure(**security: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"keys": "./keys", "clients": ["admin", "gateway"]}
    section.update(security)
    return _doc(security={k: v for k, v in section.items() if v is not None})


def test_security_section() -> None:
    config = parse_config(yaml.safe_dump(_secure()))
    admin, gateway = ClientConfig("admin"), ClientConfig("gateway")  # a list: each is admin
    assert config.security == SecurityConfig(
        keys=Path("keys"), clients={"admin": admin, "gateway": gateway}
    )
    assert config.security.public_file("admin") == Path("keys/admin.key")
    assert config.security.secret_file("admin") == Path("keys/admin.key_secret")
    assert config.http.client == "gateway"
    assert config.key_names() == ["broker", "n1", "admin", "gateway"]
    plain = parse_config(yaml.safe_dump(_doc()))
    assert plain.security is None
    assert plain.key_names() == []


NO_CLIENTS = "must map each client name to {role, prefixes} (or list client names)"


NO_CLIENTS = "must map each client name to {role, prefixes} (or list client names)"


def test_the_shipped_secure_config() -> None:
    config = load_config(Path(__file__).parent.parent / "config" / "secure.yaml")
    local = load_config(Path(__file__).parent.parent / "config" / "local.yaml")
    assert config.security is not None
    assert tuple(config.security.clients) == ("admin", "app", "gateway")
    assert config.security.clients["app"] == ClientConfig("app", ClientRole.WRITE, ("app:",))
    assert config.http.client == "gateway"
    assert config.storage.dir != local.storage.dir
    assert config.shards == local.shards  # the same cluster, with keys
    assert config.exposed_endpoints() == []


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_secure(keys=None), "security.keys: is required"),
        (_secure(clients=None), "security.clients: is required"),
        (_secure(keys=""), "security.keys: must be a non-empty string"),
        (_secure(clients=[]), f"security.clients: {NO_CLIENTS}"),
        (_secure(clients="admin"), f"security.clients: {NO_CLIENTS}"),
        (
            _secure(clients={"admin": {"role": "root"}}),
            "security.clients.admin.role: must be read, write or admin",
        ),
        (
            _secure(clients={"admin": {"prefixes": "app:"}}),
            "security.clients.admin.prefixes: must be a list of non-empty key prefixes",
        ),
        (_secure(bogus=1), "security.bogus: unknown key (known: clients, keys)"),
        (
            _secure(clients=["gateway", "../x"]),
            "security.clients[1]: a client name is letters, digits, '_', '-' or '.'",
        ),
        (
            _secure(clients=["gateway", "n1"]),
            "security.clients[1]: 'n1' is already the key name of node n1",
        ),
        (
            _secure(clients=["broker", "gateway"]),
            "security.clients[0]: 'broker' is already the key name of the broker",
        ),
        (
            _secure(clients=["gateway", "app", "app"]),
            "security.clients[2]: 'app' is already the key name of another client",
        ),
        (
            _secure(clients=["admin"]),
            "http.client: the gateway's client 'gateway' is not in security.clients "
            "(the gateway talks to the broker with that key)",
        ),
        (_doc(security="yes"), "security: must be a mapping"),
        (
            _doc(http={"client": "a b"}),
            "http.client: a client name is letters, digits, '_', '-' or '.'",
        ),
    ],
)
def test_security_errors(doc: Any, message: str) -> None:
    assert _error(doc) == f"cluster.yaml: {message}"


def test_http_client_names_a_listed_client() -> None:
    doc = _secure(clients=["admin", "web"])
    doc["http"] = {"client": "web"}
    assert parse_config(yaml.safe_dump(doc)).http.client == "web"
    assert parse_config(yaml.safe_dump(_doc(http={"client": "web"}))).security is None


def test_exposed_endpoints_with_security_count_only_http_listen() -> None:
    remote = {"clients": "tcp://0.0.0.0:7400", "nodes": "tcp://10.0.0.1:7401"}
    shards = {"s1": [_node("n1", "tcp://0.0.0.0:7500", "tcp://*:7501")]}
    plain = parse_config(yaml.safe_dump(_doc(broker=remote, shards=shards)))
    assert [where for where, _ in plain.exposed_endpoints()] == [
        "broker.clients",
        "broker.nodes",
        "shards.s1[0].publish",
        "shards.s1[0].sync",
    ]
    doc = _secure()
    doc.update(broker=remote, shards=shards)
    assert parse_config(yaml.safe_dump(doc)).exposed_endpoints() == []  # all encrypted
    doc["http"] = {"listen": "0.0.0.0:7480"}
    assert parse_config(yaml.safe_dump(doc)).exposed_endpoints() == [
        ("http.listen", "0.0.0.0:7480")
    ]


def test_http_tls_and_tokens() -> None:
    digest = "ab" * 32
    doc = _secure(clients={"admin": {"role": "admin"}, "gateway": {"role": "admin"}})
    doc["http"] = {
        "listen": "0.0.0.0:7480",
        "tls": {"cert": "tls/cert.pem", "key": "tls/key.pem"},
        "tokens": {"dash": {"sha256": digest.upper(), "role": "read", "prefixes": ["app:"]}},
    }
    config = parse_config(yaml.safe_dump(doc))
    assert config.http.tls == TlsConfig(Path("tls/cert.pem"), Path("tls/key.pem"))
    assert config.http.tokens == {"dash": TokenConfig("dash", digest, ClientRole.READ, ("app:",))}
    assert config.exposed_endpoints() == []  # TLS and tokens: the gateway may face others
    del doc["http"]["tls"]
    assert config.exposed_endpoints() == [] != parse_config(yaml.safe_dump(doc)).exposed_endpoints()


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ({"dash": {"role": "read"}}, "http.tokens.dash.sha256: must be the token's SHA-256"),
        ({"dash": {"sha256": "ab" * 32}}, "http.tokens.dash.role: is required"),
        ({"dash": {"sha256": "xyz", "role": "read"}}, "http.tokens.dash.sha256: must be"),
        (
            {
                "a": {"sha256": "ab" * 32, "role": "read"},
                "b": {"sha256": "AB" * 32, "role": "read"},
            },
            "http.tokens.b.sha256: another token has the same digest",
        ),
        ({}, "http.tokens: must map each token name"),
    ],
)
def test_token_errors(tokens: Any, message: str) -> None:
    doc = _doc(http={"tokens": tokens})
    assert _error(doc).startswith(f"cluster.yaml: {message}")


# --------------------------------------------------------------------------- coordination

ETCD = {"endpoints": ["http://127.0.0.1:2379"]}
BROKERS = [
    {"name": "b1", "clients": "tcp://127.0.0.1:7400", "nodes": "tcp://127.0.0.1:7401"},
    {"name": "b2", "clients": "tcp://127.0.0.1:7410", "nodes": "tcp://127.0.0.1:7411"},
]


def test_no_coordination_means_one_broker() -> None:
    cfg = parse_config(yaml.safe_dump(_doc()))
    assert cfg.coordination is None
    assert cfg.brokers == ()


def test_coordination_section() -> None:
    doc = _doc(
        cluster="prod",
        coordination={
            "etcd": {
                "endpoints": ["http://127.0.0.1:2379", "http://[::1]:2479", "http://localhost:1"],
                "prefix": "/zkv/prod-eu",
                "lease_ttl_s": 4,
                "timeout_s": 1,
            }
        },
        brokers=BROKERS,
    )
    cfg = parse_config(yaml.safe_dump(doc))
    assert cfg.coordination == CoordinationConfig(
        EtcdConfig(
            endpoints=("http://127.0.0.1:2379", "http://[::1]:2479", "http://localhost:1"),
            prefix="/zkv/prod-eu",
            lease_ttl_s=4.0,
            timeout_s=1.0,
        )
    )
    assert type(cfg.coordination.etcd.lease_ttl_s) is float
    assert cfg.brokers == (
        NamedBrokerConfig("b1", "tcp://127.0.0.1:7400", "tcp://127.0.0.1:7401"),
        NamedBrokerConfig("b2", "tcp://127.0.0.1:7410", "tcp://127.0.0.1:7411"),
    )
    # code that knows one broker reaches the first of them
    assert cfg.broker == BrokerConfig("tcp://127.0.0.1:7400", "tcp://127.0.0.1:7401")


def test_coordination_defaults() -> None:
    cfg = parse_config(
        yaml.safe_dump(_doc(cluster="c1", coordination={"etcd": ETCD}, brokers=BROKERS))
    )
    assert cfg.coordination is not None
    assert cfg.coordination.etcd == EtcdConfig(("http://127.0.0.1:2379",), "/zkv/c1", 2.0, 0.5)


def test_exposed_endpoints_name_each_broker() -> None:
    brokers = [dict(BROKERS[0]), {**BROKERS[1], "clients": "tcp://0.0.0.0:7410"}]
    cfg = parse_config(yaml.safe_dump(_doc(coordination={"etcd": ETCD}, brokers=brokers)))
    assert cfg.exposed_endpoints() == [("brokers[1].clients", "tcp://0.0.0.0:7410")]


def test_remote_etcd_needs_allow_insecure_remote() -> None:
    etcd = {"endpoints": ["http://10.0.0.5:2379"]}
    doc = _doc(coordination={"etcd": etcd}, brokers=BROKERS)
    assert "10.0.0.5:2379 is not a loopback address" in _error(doc)
    doc["allow_insecure_remote"] = True
    cfg = parse_config(yaml.safe_dump(doc))
    assert cfg.coordination is not None
    assert cfg.coordination.etcd.endpoints == ("http://10.0.0.5:2379",)


def _coordinated(etcd: Any = None, brokers: Any = None, **overrides: Any) -> dict[str, Any]:
    doc = _doc(coordination={"etcd": ETCD if etcd is None else etcd})
    doc["brokers"] = BROKERS if brokers is None else brokers
    doc.update(overrides)
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_doc(brokers=BROKERS), "brokers: several brokers share their routing state through etcd"),
        (_doc(coordination={"etcd": ETCD}), "brokers: is required with coordination"),
        (
            _coordinated(broker={"clients": "tcp://127.0.0.1:1"}),
            "broker: give either broker (one broker) or brokers (several, with coordination)",
        ),
        (_doc(coordination=[]), "coordination: must be a mapping"),
        (_doc(coordination={}), "coordination.etcd: is required"),
        (
            _doc(coordination={"etcd": ETCD, "zookeeper": {}}),
            "coordination.zookeeper: unknown key (known: etcd)",
        ),
        (_coordinated(etcd={}), "coordination.etcd.endpoints: is required"),
        (
            _coordinated(etcd={**ETCD, "ttl": 2}),
            "coordination.etcd.ttl: unknown key "
            "(known: endpoints, lease_ttl_s, members, prefix, timeout_s)",
        ),
        (_coordinated(etcd={"endpoints": []}), "coordination.etcd.endpoints: must be a non-empty"),
        (
            _coordinated(etcd={"endpoints": "http://127.0.0.1:2379"}),
            "coordination.etcd.endpoints: must be a non-empty list",
        ),
        (
            _coordinated(etcd={"endpoints": ["127.0.0.1:2379"]}),
            "coordination.etcd.endpoints[0]: not an etcd client URL (http://HOST:PORT)",
        ),
        (
            _coordinated(etcd={"endpoints": ["https://127.0.0.1:2379"]}),
            "coordination.etcd.endpoints[0]: not an etcd client URL",
        ),
        (
            _coordinated(etcd={"endpoints": ["http://127.0.0.1:70000"]}),
            "coordination.etcd.endpoints[0]: port 70000 is out of range",
        ),
        (
            _coordinated(etcd={"endpoints": ["http://127.0.0.1:1", "http://127.0.0.1:1"]}),
            "coordination.etcd.endpoints[1]: http://127.0.0.1:1 is listed twice",
        ),
        (
            _coordinated(etcd={**ETCD, "prefix": "zkv"}),
            "coordination.etcd.prefix: must be a key path such as /zkv/prod",
        ),
        (
            _coordinated(etcd={**ETCD, "prefix": "/zkv/"}),
            "coordination.etcd.prefix: must be a key path",
        ),
        (
            _coordinated(cluster="my cluster"),
            "coordination.etcd.prefix: the default /zkv/<cluster> does not suit cluster "
            "'my cluster': set one",
        ),
        (
            _coordinated(etcd={**ETCD, "lease_ttl_s": 0}),
            "coordination.etcd.lease_ttl_s: must be a positive number of seconds",
        ),
        (
            _coordinated(etcd={**ETCD, "lease_ttl_s": 0.5}),
            "coordination.etcd.lease_ttl_s: must be between 1 and 3600 seconds",
        ),
        (
            _coordinated(etcd={**ETCD, "timeout_s": 1}),
            "coordination.etcd.timeout_s: must be at most a quarter of lease_ttl_s (0.5 s)",
        ),
        (_coordinated(brokers=[]), "brokers: must be a non-empty list"),
        (_coordinated(brokers={"b1": {}}), "brokers: must be a non-empty list"),
        (_coordinated(brokers=["b1"]), "brokers[0]: must be a mapping"),
        (_coordinated(brokers=[{"name": "b1"}]), "brokers[0].clients: is required"),
        (
            _coordinated(brokers=[{**BROKERS[0], "port": 1}]),
            "brokers[0].port: unknown key (known: clients, name, nodes)",
        ),
        (
            _coordinated(brokers=[{**BROKERS[0], "name": "b 1"}]),
            "brokers[0].name: a broker name is letters, digits, '_', '-' or '.'",
        ),
        (
            _coordinated(brokers=[BROKERS[0], {**BROKERS[1], "name": "b1"}]),
            "brokers[1].name: 'b1' is used twice",
        ),
        (
            _coordinated(brokers=[BROKERS[0], {**BROKERS[1], "name": "n1"}]),
            "brokers[1].name: 'n1' is also the name of a node",
        ),
        (
            _coordinated(brokers=[{**BROKERS[0], "nodes": "udp://x:1"}]),
            "brokers[0].nodes: not a tcp:// endpoint (tcp://HOST:PORT)",
        ),
        (
            _coordinated(brokers=[BROKERS[0], {**BROKERS[1], "nodes": "tcp://127.0.0.1:7400"}]),
            "brokers[1].nodes: tcp://127.0.0.1:7400 is also brokers[0].clients",
        ),
        (
            _coordinated(
                shards={"s1": [_node("n1", "tcp://127.0.0.1:7411", "tcp://127.0.0.1:7501")]}
            ),
            "shards.s1[0].publish: tcp://127.0.0.1:7411 is also brokers[1].nodes",
        ),
    ],
)
def test_coordination_errors(doc: Any, message: str) -> None:
    assert _error(doc).startswith(f"cluster.yaml: {message}")
