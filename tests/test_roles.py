"""Client roles and key prefixes, checked at the broker; keys added and removed by SIGHUP.

One secured cluster (CURVE, keys made by ``zkv keygen``'s code) with a client per role:
each may do exactly what its role allows, within its prefixes, through the Python client
and the CLI. A refused request changes nothing, even when only one of its keys is outside.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Cluster

import zkv
from zkv.config import load_config
from zkv.security import CurveKeys, generate_config_keys

pytestmark = pytest.mark.timeout(120)

CLIENTS = {
    "admin": {"role": "admin"},
    "rw": {"role": "write"},
    "writer": {"role": "write", "prefixes": ["w:", "shared:"]},
    "reader": {"role": "read"},
    "gateway": {"role": "admin"},
}


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("roles")
    cluster = Cluster(
        tmp,
        {"s0": ["s0a", "s0b"], "s1": ["s1a"]},
        security={"keys": str(tmp / "keys"), "clients": CLIENTS},
    )
    try:
        yield cluster
    finally:
        cluster.stop()


def as_client(c: Cluster, name: str) -> zkv.Client:
    return c.client(curve=CurveKeys.for_client(load_config(c.config), name))


def denied(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(zkv.PermissionDenied) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def test_read_role_reads_and_nothing_more(c: Cluster) -> None:
    admin, reader = as_client(c, "admin"), as_client(c, "reader")
    admin.put("r:1", "one", ttl=600)
    assert reader.get("r:1") == "one"
    assert reader.exists("r:1") and reader.ttl("r:1") is not None
    assert reader.mget(["r:1", "r:2"]) == {"r:1": "one"}
    assert "r:1" in list(reader.keys("r:"))
    assert reader.count() >= 1
    assert reader.cluster_status()["shards"]
    with reader.pipeline() as p:  # a pipeline of reads is a read
        p.get("r:1").exists("r:2")
        assert p.execute() == ["one", False]
    message = denied(reader.put, "r:1", "changed")
    assert "role read" in message and "needs write" in message
    denied(reader.delete, "r:1")
    denied(reader.create, "r:new", 1)
    denied(reader.cas, "r:1", "one", "two")
    denied(reader.expire, "r:1", 5)
    denied(reader.mput, {"r:3": 3})
    denied(reader.clear)
    denied(reader.failover, "s0")
    with reader.pipeline() as p:  # one write refuses the whole pipeline
        p.get("r:1").put("r:4", 4)
        denied(p.execute)
    assert admin.get("r:1") == "one"
    assert admin.mget(["r:3", "r:4", "r:new"]) == {}


def test_write_role_writes_but_does_not_clear_or_fail_over(c: Cluster) -> None:
    rw = as_client(c, "rw")
    rw.put("rw:1", 1)
    rw.mput({"rw:2": 2, "rw:3": 3})
    assert rw.cas("rw:1", 1, 10)
    rw.expire("rw:1", 600)
    assert rw.delete("rw:3")
    with rw.pipeline() as p:
        p.put("rw:4", 4).get("rw:4")
        assert p.execute() == [None, 4]
    assert "needs admin" in denied(rw.clear)
    denied(rw.failover, "s0")
    assert rw.get("rw:2") == 2


def test_prefixes_hold_for_single_keys_multi_key_requests_and_pipelines(c: Cluster) -> None:
    admin, writer = as_client(c, "admin"), as_client(c, "writer")
    writer.put("w:1", 1)
    writer.put("shared:1", 1)
    assert writer.get("w:1") == 1
    message = denied(writer.put, "x:1", 1)
    assert "'x:1'" in message and "'w:', 'shared:'" in message
    denied(writer.get, "x:1")
    admin.put("x:2", "secret")
    denied(writer.get, "x:2")
    denied(writer.mget, ["w:1", "x:2"])  # one key outside refuses the whole read
    denied(writer.mput, {"w:2": 2, "x:3": 3})  # all or nothing
    with writer.pipeline() as p:
        p.put("w:3", 3).put("x:4", 4)
        denied(p.execute)
    assert admin.mget(["w:2", "x:3", "w:3", "x:4"]) == {}
    assert set(writer.keys("w:")) == {"w:1"}
    denied(lambda: list(writer.keys("")))
    denied(lambda: list(writer.keys("x")))
    denied(writer.count)  # covers every key
    denied(writer.clear)
    assert admin.get("x:2") == "secret"


def test_the_cli_answers_permission_denied_with_exit_4(c: Cluster) -> None:
    key = Path(c.doc["security"]["keys"]) / "reader.key_secret"
    run = [sys.executable, "-m", "zkv"]
    config = ["--config", str(c.config), "--key", str(key)]
    done = subprocess.run(
        [*run, "put", "cli:1", "1", *config], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 4, done
    assert "role read" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = subprocess.run(
        [*run, "get", "cli:1", *config], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1, done  # allowed, and the key is not there


def test_admin_fails_over_and_clears(c: Cluster) -> None:
    admin = as_client(c, "admin")
    admin.put("a:1", 1)
    before = admin.cluster_status()["shards"]["s0"]
    admin.failover("s0")
    after = admin.cluster_status()["shards"]["s0"]
    assert after["primary"] != before["primary"] and after["epoch"] > before["epoch"]
    admin.clear()
    assert admin.count() == 0


# --------------------------------------------------------------------------- rotation


def rewrite_clients(c: Cluster, clients: dict[str, Any]) -> None:
    """Give both config files (the broker still runs from its first one) ``clients``."""
    for path in (c.broker_config, c.config):
        doc = yaml.safe_load(path.read_text())
        doc["security"]["clients"] = clients
        path.write_text(yaml.safe_dump(doc))
    generate_config_keys(load_config(c.config))


def test_keys_added_and_removed_by_sighup_while_others_keep_working(c: Cluster) -> None:
    admin, reader = as_client(c, "admin"), as_client(c, "reader")
    reader.get("anything")  # connected and served before the reload
    errors: list[BaseException] = []
    stop = threading.Event()
    served = [0]

    def keep_working() -> None:
        kv = as_client(c, "admin")
        while not stop.is_set():
            try:
                kv.put("busy", served[0])
                assert kv.get("busy") == served[0]
                served[0] += 1
            except BaseException as exc:
                errors.append(exc)
                return

    worker = threading.Thread(target=keep_working)
    worker.start()
    try:
        clients = {k: v for k, v in CLIENTS.items() if k != "reader"}
        clients["late"] = {"role": "read"}
        rewrite_clients(c, clients)
        os.kill(c.procs["broker"].pid, signal.SIGHUP)
        late = as_client(c, "late")
        start = time.monotonic()
        while True:  # refused at the handshake until the broker has reloaded
            try:
                late.get("anything")
                break
            except zkv.TransportError:
                assert time.monotonic() - start < 20, "the added key was never admitted"
        print(f"the added key was admitted {time.monotonic() - start:.2f} s after SIGHUP")
        # the removed client keeps its connection, but not its rights
        message = denied(reader.get, "anything")
        assert "not in security.clients" in message
        denied(late.put, "late:1", 1)  # the added client has its role: read
    finally:
        stop.set()
        worker.join(30)
    assert not errors, errors
    assert served[0] > 0
    print(f"the other client made {served[0]} round trips meanwhile, none failed")
    assert admin.get("busy") == served[0] - 1
    assert "reloaded" in (c.tmp / "broker.log").read_text()
