"""CURVE on every link: a secured cluster serves listed clients and nobody else.

Real processes on 127.0.0.1 with keys made by ``zkv keygen``'s code. Attackers are plain
pyzmq sockets: no key, a wrong key, a client key where a node key is needed, another
node's key. Each negative check runs next to a positive one that got through on the same
kind of socket (a listed client served, a shard node's key receiving the stream), so
"nothing arrived" is never a bet on timing alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import Cluster, Proc

import zkv
from zkv import protocol
from zkv.config import load_config
from zkv.protocol import NodeInfo, NodeState, Role
from zkv.security import CurveKeys, generate_keys
from zkv.slots import SlotMap

pytestmark = pytest.mark.timeout(120)

SHARDS = {"s0": ["s0a", "s0b"], "s1": ["s1a"]}
CLIENTS = ["app", "gateway"]


def security(tmp: Path) -> dict[str, Any]:
    return {"keys": str(tmp / "keys"), "clients": CLIENTS}


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("secure")
    c = Cluster(tmp, SHARDS, security=security(tmp))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)


def key_of_s0(prefix: str) -> str:
    """A key that shard s0 holds."""
    slots = SlotMap.even(list(SHARDS), 16384)
    return next(
        f"{prefix}-{i}" for i in range(1000) if slots.shard_of(f"{prefix}-{i}".encode()) == "s0"
    )


def keys_dir(c: Cluster) -> Path:
    return Path(c.doc["security"]["keys"])


def pair(c: Cluster, name: str) -> tuple[bytes, bytes]:
    public, secret = zmq.auth.load_certificate(keys_dir(c) / f"{name}.key_secret")
    assert secret is not None
    return public, secret


def public(c: Cluster, name: str) -> bytes:
    return zmq.auth.load_certificate(keys_dir(c) / f"{name}.key")[0]


def stranger(tmp: Path) -> CurveKeys:
    """A well-formed key pair that no allow-list holds."""
    made = generate_keys(tmp / "stranger", ["mallory"])[0]
    return CurveKeys.load(made.secret, made.public)  # "server" key unused below


def curve_socket(
    ctx: zmq.Context[Any], kind: int, keys: tuple[bytes, bytes] | None, server: bytes
) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys[0])
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys[1])
        sock.setsockopt(zmq.CURVE_SERVERKEY, server)
    return sock


def wait_for_log(c: Cluster, proc: str, text: str, timeout: float = 20.0) -> float:
    start = time.monotonic()
    log = c.tmp / f"{proc}.log"
    while text not in log.read_text(errors="replace"):
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{proc}.log never said {text!r}:\n{c.logs()}")
        time.sleep(0.05)
    took = time.monotonic() - start
    print(f"{proc} logged {text!r} after {took:.2f} s")
    return took


# --------------------------------------------------------------------------- clients


def test_a_listed_client_is_served_and_its_writes_replicate(secure: Cluster) -> None:
    kv = secure.client()
    kv.put("card", {"number": "4111 1111 1111 1111"})
    kv.put(key_of_s0("card"), {"number": "4111 1111 1111 1111"})
    assert kv.get("card") == {"number": "4111 1111 1111 1111"}
    gateway = secure.client(curve=CurveKeys.for_client(load_config(secure.config), "gateway"))
    assert gateway.get("card") == {"number": "4111 1111 1111 1111"}
    # the replica follows the primary over its encrypted stream
    secure.wait_for(
        lambda: secure.node("s0b")["seq"] == secure.node("s0a")["seq"] > 0, "s0b in step"
    )


def assert_no_service(c: Cluster, curve: CurveKeys | None) -> None:
    """A client with ``curve`` (None: plain text) cannot complete a request."""
    kv = zkv.Client(c.endpoint, timeout_s=2.0, connect_timeout_s=1.0, curve=curve)
    try:
        with pytest.raises(zkv.TransportError):
            kv.get("card")
    finally:
        kv.close()


def test_a_client_without_a_key_gets_no_service(secure: Cluster) -> None:
    assert_no_service(secure, None)
    secure.client().put("after-plain", 1)  # the broker kept serving


def test_unlisted_and_wrong_keys_get_no_service_and_are_logged(
    secure: Cluster, tmp_path: Path
) -> None:
    mallory = stranger(tmp_path)
    unlisted = CurveKeys(mallory.public, mallory.secret, public(secure, "broker"))
    assert_no_service(secure, unlisted)
    wait_for_log(secure, "broker", f"key {mallory.public.decode()} is not on its allow-list")
    # a listed client that trusts the wrong broker key never completes the handshake
    app = secure.curve
    assert app is not None
    wrong_server = CurveKeys(app.public, app.secret, public(secure, "s0a"))
    assert_no_service(secure, wrong_server)
    # a node's key is not a client key
    node = pair(secure, "s1a")
    as_node = CurveKeys(node[0], node[1], public(secure, "broker"))
    assert_no_service(secure, as_node)
    assert secure.client().get("card") == {"number": "4111 1111 1111 1111"}


# --------------------------------------------------------------------------- lying nodes


def lie(sock: zmq.Socket[bytes]) -> None:
    """READY and heartbeats as s0a, primary of s0 at a huge sequence and epoch."""
    info = NodeInfo(
        "s0a",
        "s0",
        role=Role.PRIMARY,
        state=NodeState.SERVING,
        pid=4242,
        epoch=99,
        seq=10**12,
        publish="tcp://127.0.0.1:9",
        sync="tcp://127.0.0.1:9",
    )
    for kind in (protocol.NODE_READY, protocol.NODE_HEARTBEAT, protocol.NODE_HEARTBEAT):
        sock.send_multipart(protocol.encode_node_info(kind, info), zmq.NOBLOCK)


@pytest.mark.parametrize("key", ["none", "client", "other-node"])
def test_a_lying_node_cannot_register_as_another(
    secure: Cluster, ctx: zmq.Context[Any], key: str
) -> None:
    real = secure.node("s0a")
    keys = {"none": None, "client": pair(secure, "app"), "other-node": pair(secure, "s1a")}[key]
    sock = curve_socket(ctx, zmq.DEALER, keys, public(secure, "broker"))
    sock.setsockopt(zmq.IDENTITY, b"node:s0a")
    sock.setsockopt(zmq.IMMEDIATE, 0)
    sock.connect(secure.nodes_endpoint)
    lie(sock)
    if key == "client":
        wait_for_log(secure, "broker", f"key {keys[0].decode()} is not on its allow-list")
    elif key == "other-node":  # admitted as s1a, so its claim to be s0a is refused
        wait_for_log(secure, "broker", "dropped node info for 's0a' from identity b'node:s1a'")
    kv = secure.client()
    kv.put(f"after-lie-{key}", key)  # s0 or s1 still served by the real nodes
    assert kv.get(f"after-lie-{key}") == key
    now = secure.node("s0a")
    assert (now["pid"], now["epoch"], now["alive"]) == (real["pid"], real["epoch"], True)
    status = kv.cluster_status()
    assert status["shards"]["s0"]["primary"] == "s0a"
    assert status["shards"]["s0"]["epoch"] == real["epoch"]
    sock.close(linger=0)


# --------------------------------------------------------------------------- the stream


def test_only_the_shards_nodes_receive_its_stream(secure: Cluster, ctx: zmq.Context[Any]) -> None:
    primary = secure.node(secure.client().cluster_status()["shards"]["s0"]["primary"])
    server = public(secure, primary["name"])
    replica = "s0b" if primary["name"] == "s0a" else "s0a"
    listeners = {
        "shard-node": pair(secure, replica),
        "none": None,
        "client": pair(secure, "app"),
        "other-shard-node": pair(secure, "s1a"),
    }
    subs = {}
    for name, keys in listeners.items():
        sub = curve_socket(ctx, zmq.SUB, keys, server)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(primary["publish"])
        subs[name] = sub
    kv = secure.client()
    slot_key = key_of_s0("stream")
    start = time.monotonic()
    i = 0
    while not subs["shard-node"].poll(50):
        assert time.monotonic() - start < 20, "a shard node's key never received the stream"
        kv.put(slot_key, {"card": "4111 1111 1111 1111", "i": i})
        i += 1
    print(f"the shard node's key received the stream after {i} writes")
    for name in ("none", "client", "other-shard-node"):
        assert subs[name].poll(0) == 0, f"{name} received the stream"
    for sub in subs.values():
        sub.close(linger=0)
    wait_for_log(secure, primary["name"], f"key {pair(secure, 's1a')[0].decode()} is not on")


def test_the_sync_socket_refuses_keys_of_other_shards(
    secure: Cluster, ctx: zmq.Context[Any]
) -> None:
    s0a = secure.node("s0a")
    dealer = curve_socket(ctx, zmq.DEALER, pair(secure, "s1a"), public(secure, "s0a"))
    dealer.connect(s0a["sync"])
    wait_for_log(
        secure,
        "s0a",
        f"refused a connection from 127.0.0.1 on shard:s0: key {pair(secure, 's1a')[0].decode()}",
    )
    dealer.close(linger=0)


# --------------------------------------------------------------------------- election


def test_rebuilding_routing_counts_only_authenticated_nodes(
    cluster_factory: Any, ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    """No routing file: the broker elects from the nodes that report. An impostor with a
    valid node key of another shard, claiming s0b at a far higher sequence, is not one."""
    c: Cluster = cluster_factory(
        SHARDS,
        lazy=("s0b",),
        security=security(tmp_path / "election"),
        heartbeat={"interval_s": 0.25, "liveness": 3},
    )
    sock = curve_socket(ctx, zmq.DEALER, pair(c, "s1a"), public(c, "broker"))
    sock.setsockopt(zmq.IMMEDIATE, 0)
    sock.connect(c.nodes_endpoint)
    info = NodeInfo("s0b", "s0", role=Role.REPLICA, state=NodeState.FOLLOWING, seq=10**12)
    sock.send_multipart(protocol.encode_node_info(protocol.NODE_READY, info))
    c.wait_for(
        lambda: c.client().cluster_status()["shards"]["s0"]["primary"] == "s0a",
        "s0a elected primary of s0",
    )
    assert c.node("s0b")["alive"] is False
    assert (
        "dropped node info for 's0b' from identity b'node:s1a'"
        in (c.tmp / "broker.log").read_text()
    )
    sock.close(linger=0)


# --------------------------------------------------------------------------- CLI and HTTP


def test_the_cli_and_the_gateway_use_their_keys(secure: Cluster) -> None:
    key = keys_dir(secure) / "app.key_secret"
    config = ["--config", str(secure.config)]
    run = [sys.executable, "-m", "zkv"]
    env = {"PATH": "/usr/bin:/bin", "ZKV_KEY": str(key)}
    done = subprocess.run(
        [*run, "put", "cli-key", "7", *config], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [*run, "get", "cli-key", *config], env=env, capture_output=True, text=True, timeout=30
    )
    assert (done.returncode, done.stdout.strip()) == (0, '"7"'), done.stderr
    refused = subprocess.run(
        [*run, "get", "cli-key", *config],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2 and "--key" in refused.stderr, refused.stderr
    http = Proc(
        "http",
        [
            sys.executable,
            "-m",
            "zkv",
            "http",
            *config,
        ],
        secure.tmp / "http.ready.json",
        secure.tmp / "http.log",
    )
    secure.procs["http"] = http
    http.start()
    listen = http.wait_ready()["listen"]
    with urllib.request.urlopen(f"http://{listen}/api/kv/cli-key", timeout=10) as reply:
        assert json.loads(reply.read())["value"] == "7"
