"""Partitions, for real: a cluster across network namespaces, links cut under a Jepsen-style
workload, every history checked linearizable and every acknowledged write audited.

One etcd, two brokers, a shard of two nodes, the HTTP gateway and the clients each run in a
network namespace of their own (``tests/netns.py``) with their own address on a bridge the
fixture creates, all from one YAML file with a ``security`` section, each started as on a
separate machine (``zkv broker|node|http --config FILE --name NAME``). The nemesis cuts
links with nftables drop rules (packets vanish: nothing tells either end), adds loss with
random drop rules and delay with a proxy on every link. The workload (``tests/jepsen.py``)
runs three client processes in the clients' namespace; the checker is
``tests/linearizability.py``. What the tests hold is what the README promises under
"Partitions: what zkv guarantees". Durations are printed (``pytest -s``), never asserted.

Marked ``netns`` and ``partition`` (select with ``-m partition``); skipped, with the reason,
without root or network namespaces.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Proc
from jepsen import Agent, AgentError, load_history
from linearizability import Op, check
from netns import Net, netns_unavailable

from zkv.config import load_config
from zkv.security import generate_config_keys

pytestmark = [pytest.mark.netns, pytest.mark.partition, pytest.mark.timeout(240)]

HERE = Path(__file__).parent
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
BROKERS = ["b1", "b2"]
NODES = ["s0a", "s0b"]


class NetCluster:
    """The cluster in its namespaces, and an agent (a client in the clients' namespace)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, Proc] = {}
        self.etcd: subprocess.Popen[bytes] | None = None
        self.net = Net(tmp)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        net = self.net
        addr = {h: net.add(h) for h in ["etcd", *BROKERS, *NODES, "gw", "cl"]}
        self.addr = addr
        doc: dict[str, Any] = {
            "cluster": "netns",
            # etcd's HTTP API and the gateway's plain HTTP are off loopback here (every
            # ZeroMQ link has CURVE: security below)
            "allow_insecure_remote": True,
            "storage": {"dir": str(self.tmp / "data"), "fsync": "no"},
            "defaults": {"consistency": "strong", "timeout_s": 5.0},
            "heartbeat": {"interval_s": 0.1, "liveness": 3},
            "coordination": {
                "etcd": {"endpoints": [f"http://{addr['etcd']}:2379"], "lease_ttl_s": 2}
            },
            "brokers": [
                {"name": b, "clients": f"tcp://{addr[b]}:7400", "nodes": f"tcp://{addr[b]}:7401"}
                for b in BROKERS
            ],
            "http": {"listen": f"{addr['gw']}:7480", "client": "gateway"},
            "security": {
                "keys": str(self.tmp / "keys"),
                "clients": {
                    "admin": {"role": "admin"},
                    "app": {"role": "write"},
                    "gateway": {"role": "admin"},
                },
            },
            "shards": {
                "s0": [
                    {"name": n, "publish": f"tcp://{addr[n]}:7410", "sync": f"tcp://{addr[n]}:7411"}
                    for n in NODES
                ]
            },
        }
        self.config = self.tmp / "cluster.yaml"
        self.config.write_text(yaml.safe_dump(doc))
        generate_config_keys(load_config(self.config))
        net.start_proxies()
        self._start_etcd()
        zkv = [sys.executable, "-m", "zkv"]
        for b in BROKERS:
            self.proc(b, b, [*zkv, "broker", "--config", str(self.config), "--name", b])
        for n in NODES:
            self.proc(n, n, [*zkv, "node", "--config", str(self.config), "--name", n])
        self.proc("gw", "gw", [*zkv, "http", "--config", str(self.config)])
        for proc in self.procs.values():
            proc.start()
        for proc in self.procs.values():
            proc.wait_ready(30)
        agent = self.tmp / "agent.sock"
        with open(self.tmp / "agent.log", "ab") as log:
            self.agent_proc = subprocess.Popen(
                net.argv(
                    "cl",
                    *[sys.executable, str(HERE / "jepsen.py"), "agent"],
                    *["--config", str(self.config), "--client", "admin", "--socket", str(agent)],
                ),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.agent = Agent(agent)
        self.agent.connect()
        self.wait_healthy()

    def _start_etcd(self) -> None:
        url, peer = f"http://{self.addr['etcd']}:2379", f"http://{self.addr['etcd']}:2380"
        argv = [
            ETCD,
            "--name=zkvp",
            f"--data-dir={self.tmp / 'etcd'}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=zkvp={peer}",
            "--log-level=warn",
            "--logger=zap",
        ]
        with open(self.tmp / "etcd.log", "ab") as log:
            self.etcd = subprocess.Popen(
                self.net.argv("etcd", *argv), stdout=log, stderr=subprocess.STDOUT
            )
        probe = f"import urllib.request as u; print(u.urlopen('{url}/health', timeout=1).read())"
        deadline = time.monotonic() + 30
        while "true" not in self.net.run("etcd", sys.executable, "-c", probe, check=False):
            assert self.etcd.poll() is None, (self.tmp / "etcd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "etcd not healthy after 30 s"
            time.sleep(0.1)

    def proc(self, name: str, host: str, argv: list[str]) -> Proc:
        proc = Proc(
            name,
            self.net.argv(host, *argv),
            self.tmp / f"{name}.ready.json",
            self.tmp / f"{name}.log",
        )
        self.procs[name] = proc
        return proc

    # ------------------------------------------------------------------ state

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.agent.call("cluster_status")
        return status

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["name"]: n for n in self.status()["nodes"]}

    def primary(self) -> str:
        primary: str = self.status()["shards"]["s0"]["primary"]
        return primary

    def controller(self) -> str | None:
        controller: str | None = self.status()["coordination"]["controller"]
        return controller

    def healthy(self) -> bool:
        status = self.status()
        nodes = {n["name"]: n for n in status["nodes"]}
        primary = status["shards"]["s0"]["primary"]
        return (
            status["coordination"]["controller"] in BROKERS
            and primary in NODES
            and all(nodes[n]["alive"] for n in NODES)
            and nodes[primary]["role"] == "primary"
            and all(
                nodes[n]["state"] == "following" and nodes[n]["in_sync"]
                for n in NODES
                if n != primary
            )
            and self.agent.call("put", "probe", time.time()) is None
        )

    def wait_healthy(self, timeout: float = 60.0) -> float:
        return self.wait_for(self.healthy, "the cluster healthy, every replica in sync", timeout)

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> float:
        """Poll ``predicate`` until it holds; the time it took (printed)."""
        start = time.monotonic()
        while True:
            try:
                if predicate():
                    took = time.monotonic() - start
                    print(f"  {what}: after {took:.2f} s")
                    return took
            except (AgentError, KeyError, TypeError):
                pass
            if time.monotonic() - start > timeout:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}\n{self.logs()}"
                )
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}\n{(self.tmp / f'{name}.log').read_text(errors='replace')[-1500:]}"
            for name in self.procs
            if (self.tmp / f"{name}.log").exists()
        )

    def restore(self) -> None:
        """Undo whatever a test left (one that failed half-way): every link whole, no delay,
        every process running."""
        self.net.heal()
        self.net.delay(0.0)
        for proc in self.procs.values():
            proc.signal(signal.SIGCONT)
            if proc.popen is not None and proc.popen.poll() is not None:
                proc.start()
                proc.wait_ready(30)

    # ------------------------------------------------------------------ teardown

    def stop(self) -> None:
        """Stop every process by PID, then remove the namespaces and the bridge."""
        try:
            if getattr(self, "agent", None) is not None:
                self.agent.close()
            for popen in (getattr(self, "agent_proc", None), self.etcd):
                if popen is not None and popen.poll() is None:
                    popen.terminate()
                    try:
                        popen.wait(5)
                    except subprocess.TimeoutExpired:
                        popen.kill()
                        popen.wait(5)
            for proc in reversed(list(self.procs.values())):
                proc.stop()
        finally:
            self.net.close()


@pytest.fixture(scope="module")
def nc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetCluster]:
    why = netns_unavailable()
    if why is not None:
        pytest.skip(why)
    if not Path(ETCD).exists():
        pytest.skip("etcd not found: apt-get install etcd-server")
    start = time.monotonic()
    c = NetCluster(tmp_path_factory.mktemp("netns"))
    print(f"\nthe namespace cluster started in {time.monotonic() - start:.1f} s")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(autouse=True)
def restored(nc: NetCluster) -> Iterator[None]:
    """After each test, the cluster as the next one expects it, even if this one failed."""
    yield
    nc.restore()


# ---------------------------------------------------------------------- the workload


class Workload:
    """Client processes in the clients' namespace doing reads, writes and CAS on ``keys``."""

    def __init__(
        self,
        c: NetCluster,
        name: str,
        workers: int = 3,
        eventual: int = 0,
        via: tuple[str, ...] = (),
    ) -> None:
        """``workers`` clients of every broker, ``eventual`` more doing eventual writes only,
        and one more for each broker of ``via``, a client of that broker only."""
        self.c = c
        self.keys = [f"{name}:x", f"{name}:y"]
        self.dir = c.tmp / name
        self.dir.mkdir()
        self.stop_file = self.dir / "stop"
        self.roles: list[list[str]] = [[] for _ in range(workers)]
        self.roles += [["--eventual-only"] for _ in range(eventual)]
        self.roles += [["--broker", broker] for broker in via]
        self.files = [self.dir / f"history-{i}.jsonl" for i in range(len(self.roles))]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.initial: list[Op] = []
        #: Operations the test did itself (through the agent), in the workers' format.
        self.extra: list[dict[str, Any]] = []

    def __enter__(self) -> Workload:
        for key in self.keys:  # CAS needs a value to compare with: start from a known one
            call = time.monotonic()
            self.c.agent.call("put", key, "init")
            self.initial.append(Op(call, time.monotonic(), "write", "init"))
        for i, out in enumerate(self.files):
            argv = [sys.executable, str(HERE / "jepsen.py"), "worker", "--config"]
            argv += [str(self.c.config), "--client", "app", "--id", str(i), "--out", str(out)]
            argv += ["--keys", ",".join(self.keys), "--stop", str(self.stop_file), *self.roles[i]]
            with open(self.dir / f"worker-{i}.log", "ab") as log:
                self.procs.append(
                    subprocess.Popen(self.c.net.argv("cl", *argv), stdout=log, stderr=log)
                )
        self.wait_acked(time.monotonic(), 30, "the workload runs")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_file.touch()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def history(self) -> list[dict[str, Any]]:
        return load_history(self.files) + self.extra

    def probe(self, stop: threading.Event, broker: str, answered: list[int]) -> None:
        """Strong reads of the first key through ``broker`` alone until ``stop``, each
        given 50 ms (added to the history); counts those answered in ``answered``."""
        while not stop.is_set():
            call = time.monotonic()
            try:
                value = self.c.agent.call("get", self.keys[0], broker=broker, timeout=0.05)
            except AgentError:
                continue  # unknown outcome: a read that failed shows nothing
            answered.append(1)
            op = {"key": self.keys[0], "kind": "read", "level": "strong", "call": call}
            self.extra.append({**op, "ret": time.monotonic(), "arg": None, "result": value})
            self.extra[-1]["client"] = -2

    def acked_since(self, since: float) -> list[dict[str, Any]]:
        """Writes (puts, CAS, audit writes) called at ``since`` or later and acknowledged."""
        return [
            o
            for o in self.history()
            if o["kind"] in ("write", "cas", "audit") and o["call"] >= since and o["ret"] < math.inf
        ]

    def wait_acked(self, since: float, count: int, what: str) -> float:
        """Wait for ``count`` writes called after now to be acknowledged; the longest time
        without any acknowledged write from ``since`` (a fault's start) to the last of them
        (how long writes stopped)."""
        after = time.monotonic()
        self.c.wait_for(lambda: len(self.acked_since(after)) >= count, what)
        last = sorted(o["ret"] for o in self.acked_since(after))[count - 1]
        acks = sorted(o["ret"] for o in self.acked_since(0.0) if since <= o["ret"] <= last)
        return max(b - a for a, b in zip([since, *acks], acks, strict=False))


def verify(c: NetCluster, w: Workload, *, eventual_may_be_lost: bool) -> None:
    """Every key's strong history linearizable; eventual reads show written values only;
    acknowledged strong writes all survive (and eventual ones, unless ``eventual_may_be_lost``)."""
    c.wait_healthy()
    history = w.history()
    final = []
    for key in w.keys:  # a strong read of each key once healed: the end of its history
        call = time.monotonic()
        value = c.agent.call("get", key)
        final.append({"key": key, "kind": "read", "call": call, "ret": time.monotonic()})
        final[-1].update(result=value, arg=None, client=-1)
    for i, key in enumerate(w.keys):
        ops = [w.initial[i]] + [
            Op(
                o["call"],
                o["ret"],
                o["kind"],
                tuple(o["arg"]) if o["kind"] == "cas" else o["arg"],
                o["result"] if o["ret"] < math.inf else None,
                o["client"],
            )
            for o in [*history, *final]
            if o["key"] == key and o["kind"] in ("read", "write", "cas")
        ]
        unknown = sum(1 for op in ops if not op.known)
        start = time.monotonic()
        verdict = check(ops, max_states=2_000_000)
        print(
            f"  {key}: {len(ops)} strong operations, {unknown} of unknown outcome: "
            f"{'linearizable' if verdict else verdict} ({time.monotonic() - start:.2f} s)"
        )
        assert verdict is True, f"{key}'s history is not linearizable (None: undecided)"
        written = {"init", None} | {
            o["arg"] if o["kind"] == "write" else o["arg"][1]
            for o in history
            if o["key"] == key and o["kind"] in ("write", "cas")
        }
        ereads = [o for o in history if o["key"] == key and o["kind"] == "eread"]
        phantom = [o for o in ereads if o["ret"] < math.inf and o["result"] not in written]
        assert not phantom, f"eventual reads of values nobody wrote: {phantom[:5]}"
    audit = [o for o in history if o["kind"] == "audit" and o["ret"] < math.inf]
    found = c.agent.call("mget", [o["key"] for o in audit]) if audit else {}
    # healed, the replica holds what the primary holds (eventual reads are the replica's)
    c.wait_for(
        lambda: c.agent.call("mget", list(found), consistency="eventual") == found,
        "the replica converged with the primary",
    )
    lost = {
        level: [o["key"] for o in audit if o["level"] == level and found.get(o["key"]) != o["arg"]]
        for level in ("strong", "eventual")
    }
    counts = {level: sum(1 for o in audit if o["level"] == level) for level in lost}
    failed = sum(1 for o in history if o["ret"] == math.inf)
    print(
        f"  audit: {counts['strong']} strong and {counts['eventual']} eventual writes "
        f"acknowledged, lost {len(lost['strong'])} and {len(lost['eventual'])}; "
        f"{failed} operations failed (unknown outcome)"
    )
    assert not lost["strong"], f"acknowledged strong writes lost: {lost['strong'][:10]}"
    if not eventual_may_be_lost:
        assert not lost["eventual"], f"acknowledged eventual writes lost: {lost['eventual'][:10]}"


# ---------------------------------------------------------------------- the cases


def test_the_cluster_runs_across_namespaces(nc: NetCluster) -> None:
    """Each process on its own address, CURVE on every link, the gateway serving HTTP."""
    nodes = nc.nodes()
    assert set(nodes) == set(NODES)
    nc.agent.call("put", "hello", "world")
    url = f"http://{nc.addr['gw']}:7480/api/kv/hello"
    probe = f"import urllib.request as u; print(u.urlopen('{url}', timeout=5).read().decode())"
    out = nc.net.run("cl", sys.executable, "-c", probe)
    assert "world" in out, out
    # a client without a key of security.clients gets no answer from either broker
    bare = (
        "import zkv\n"
        f"kv = zkv.Client(['tcp://{nc.addr['b1']}:7400', 'tcp://{nc.addr['b2']}:7400'], "
        "timeout_s=1.0, connect_timeout_s=1.0)\n"
        "try:\n    kv.get('hello'); print('answered')\n"
        "except zkv.ZkvError as exc:\n    print('refused', type(exc).__name__)\n"
    )
    assert "refused" in nc.net.run("cl", sys.executable, "-c", bare)


def test_a_primary_cut_from_the_brokers(nc: NetCluster) -> None:
    """The controller promotes the replica once the primary's lease has run out; the former
    primary, healed, steps down and resyncs."""
    nc.wait_healthy()
    primary = nc.primary()
    with Workload(nc, "cut-brokers") as w:
        cut = time.monotonic()
        nc.net.cut(primary, BROKERS)
        nc.wait_for(lambda: nc.primary() != primary, "the replica promoted")
        took = w.wait_acked(cut, 20, "writes served again")
        print(f"  writes stopped for {took:.2f} s after the primary was cut off")
        nc.net.heal()
        nc.wait_healthy()
        w.wait_acked(time.monotonic(), 20, "writes after healing")
    verify(nc, w, eventual_may_be_lost=False)


@pytest.mark.parametrize("which", ["controller", "other broker"])
def test_a_primary_cut_from_one_broker(nc: NetCluster, which: str) -> None:
    """An asymmetric partition: one broker loses the primary, the other still reaches it.
    Cut from the controller, the primary is replaced (its lease is no longer renewed);
    cut from the other broker, nothing changes but that broker's route."""
    nc.wait_healthy()
    primary, controller = nc.primary(), nc.controller()
    assert controller in BROKERS
    broker = controller if which == "controller" else next(b for b in BROKERS if b != controller)
    with Workload(nc, f"cut-{broker}-only") as w:
        cut = time.monotonic()
        nc.net.cut(primary, broker)
        if which == "controller":
            nc.wait_for(lambda: nc.primary() != primary, "the replica promoted")
        took = w.wait_acked(cut, 30, "writes served")
        print(f"  writes stopped for {took:.2f} s after the primary was cut from the {which}")
        nc.net.heal()
        nc.wait_healthy()
        w.wait_acked(time.monotonic(), 20, "writes after healing")
    verify(nc, w, eventual_may_be_lost=False)


def test_a_primary_cut_from_its_replicas(nc: NetCluster) -> None:
    """Strong writes wait for the replica until it leaves the in-sync set, then go on."""
    nc.wait_healthy()
    primary = nc.primary()
    replicas = [n for n in NODES if n != primary]
    nc.agent.call("put", "cut-replicas:stale", 1)
    with Workload(nc, "cut-replicas") as w:
        cut = time.monotonic()
        nc.net.cut(primary, replicas)
        nc.wait_for(
            lambda: not any(nc.nodes()[r]["in_sync"] for r in replicas), "the replica out of sync"
        )
        took = w.wait_acked(cut, 20, "writes go on without the replica")
        print(f"  writes stopped for {took:.2f} s after the primary was cut from its replica")
        assert nc.primary() == primary  # nobody was promoted
        # an eventual read may be served by the replica, which still follows (it cannot
        # tell silence from a partition) and so answers from before the cut: stale
        nc.agent.call("put", "cut-replicas:stale", 2)
        seen = nc.agent.call("get", "cut-replicas:stale", consistency="eventual")
        print(f"  an eventual read during the partition: {seen} (the value is 2 since the cut)")
        assert seen in (1, 2)
        assert nc.agent.call("get", "cut-replicas:stale") == 2  # strong: the primary
        nc.net.heal()
        nc.wait_healthy()
        w.wait_acked(time.monotonic(), 20, "writes after healing")
    verify(nc, w, eventual_may_be_lost=False)


def test_a_primary_cut_from_its_replicas_then_from_the_brokers(nc: NetCluster) -> None:
    """The replica stops hearing the primary; before it leaves the in-sync set
    (``replication.ack_timeout_s``, 1 s) the primary is cut from the brokers too, so the
    controller promotes the replica, which lacks what the primary acknowledged meanwhile:
    eventual writes of that window are lost; strong ones were never acknowledged (they
    wait for the replica), so none is lost and the history stays linearizable."""
    nc.wait_healthy()
    primary = nc.primary()
    replicas = [n for n in NODES if n != primary]
    with Workload(nc, "cut-twice", eventual=1) as w:
        nc.net.cut(primary, replicas)
        time.sleep(0.3)  # the nemesis's rhythm: well within the replica's 1 s in the set
        nc.net.cut(primary, BROKERS)

        def decided() -> bool:
            # promoted; or, on a machine so slow that the replica had left the in-sync set
            # before the brokers lost the primary, rightly not (then nothing is lost)
            status = nc.status()
            shard = status["shards"]["s0"]
            down = not next(n for n in status["nodes"] if n["name"] == primary)["alive"]
            return shard["primary"] != primary or (down and not shard["in_sync"])

        nc.wait_for(decided, "the replica promoted (or out of sync: no promotion)")
        if nc.primary() != primary:
            w.wait_acked(time.monotonic(), 20, "writes served again")
        nc.net.heal()
        nc.wait_healthy()
        w.wait_acked(time.monotonic(), 20, "writes after healing")
    verify(nc, w, eventual_may_be_lost=True)


def test_a_broker_cut_from_etcd_while_the_primary_is_replaced(nc: NetCluster) -> None:
    """A broker cut from etcd routes with the last state it saw: to the former primary,
    while the controller, which lost that primary, promotes the replica. The former
    primary's lease has run out, so it refuses; then its link to the controller heals and
    the heartbeats held up in it arrive late."""
    nc.wait_healthy()
    primary, controller = nc.primary(), nc.controller()
    assert controller in BROKERS
    other = next(b for b in BROKERS if b != controller)
    with Workload(nc, "stale-broker", via=(other, other)) as w:
        nc.net.cut(other, "etcd")
        nc.wait_for(
            lambda: nc.agent.call("cluster_status", broker=other)["coordination"]["error"],
            f"{other} without etcd",
        )
        nc.net.cut(primary, controller)
        nc.wait_for(
            lambda: (
                nc.agent.call("cluster_status", broker=controller)["shards"]["s0"]["primary"]
                != primary
            ),
            "the replica promoted",
        )
        w.wait_acked(time.monotonic(), 30, "writes through the new primary")
        nc.net.uncut(primary, controller)

        def stepped_down() -> bool:
            status = nc.agent.call("cluster_status", broker=controller)
            node = next(n for n in status["nodes"] if n["name"] == primary)
            return bool(node["alive"] and node["role"] == "replica")

        nc.wait_for(stepped_down, "the former primary a replica")
        w.wait_acked(time.monotonic(), 30, "writes after that")
        nc.net.heal()
        nc.wait_healthy()
        w.wait_acked(time.monotonic(), 20, "writes after healing")
    verify(nc, w, eventual_may_be_lost=True)


def test_late_lease_grants_after_a_one_way_heal(nc: NetCluster) -> None:
    """As above, but the link from the controller to the former primary heals first, one
    way: the heartbeats the controller sent just before the cut arrive late, granting
    leases the controller counted as over long ago, and nothing comes back to correct it.
    The clients use the stale broker only, so those heartbeats are all the controller had
    in flight to the primary; the test writes through the controller itself."""
    nc.wait_healthy()
    primary, controller = nc.primary(), nc.controller()
    assert controller in BROKERS
    other = next(b for b in BROKERS if b != controller)
    with Workload(nc, "late-grants", workers=0, via=(other, other)) as w:
        nc.net.cut(other, "etcd")
        nc.wait_for(
            lambda: nc.agent.call("cluster_status", broker=other)["coordination"]["error"],
            f"{other} without etcd",
        )
        nc.net.cut(primary, controller)
        nc.wait_for(
            lambda: (
                nc.agent.call("cluster_status", broker=controller)["shards"]["s0"]["primary"]
                != primary
            ),
            "the replica promoted",
        )

        def write_through_controller() -> bool:
            call, ret = time.monotonic(), math.inf
            try:
                nc.agent.call("put", w.keys[0], "fresh", broker=controller)
                ret = time.monotonic()
            finally:
                op = {"key": w.keys[0], "kind": "write", "level": "strong", "call": call}
                w.extra.append({**op, "ret": ret, "arg": "fresh", "result": None, "client": -3})
            return True

        nc.wait_for(write_through_controller, "a write through the new primary")
        before = nc.net.bytes_received(primary, controller)
        stop, answered = threading.Event(), []
        prober = threading.Thread(target=w.probe, args=(stop, other, answered))
        prober.start()  # strong reads through the stale broker, all along
        try:
            nc.net.one_way(controller, primary)
            try:
                nc.wait_for(
                    lambda: nc.net.bytes_received(primary, controller) > before,
                    "TCP delivers what the controller sent before the cut",
                    timeout=15,
                )
            except AssertionError:
                print("  nothing held up was delivered (the case did not arise this time)")
            time.sleep(1.0)  # the nemesis's rhythm: a few lease lengths of this one-way link
        finally:
            stop.set()
            prober.join(30)
        print(f"  {len(answered)} strong reads through {other} answered meanwhile")
        # the former primary's lease ran out and the late grants revive nothing (before
        # the fix, it served some 300 stale strong reads here, and the history failed)
        assert not answered
        nc.net.heal()
        nc.wait_healthy()
        w.wait_acked(time.monotonic(), 20, "writes after healing")
    verify(nc, w, eventual_may_be_lost=True)


def test_a_paused_primary_resumes_with_stale_grants(nc: NetCluster) -> None:
    """The same hazard without the network's help: the primary is paused (SIGSTOP: a long
    GC or a frozen VM) while a broker is cut from etcd; the controller replaces it. Resumed,
    it reads the grants that queued up meanwhile, and the stale broker still routes to it:
    it must refuse (its lease ran out while it slept), not serve. (Here the controller
    hears it again at once and deposes it within a round trip; a one-way link, above, is
    what kept that from happening.)"""
    nc.wait_healthy()
    primary, controller = nc.primary(), nc.controller()
    assert controller in BROKERS
    other = next(b for b in BROKERS if b != controller)
    with Workload(nc, "paused", via=(other,)) as w:
        nc.net.cut(other, "etcd")
        nc.wait_for(
            lambda: nc.agent.call("cluster_status", broker=other)["coordination"]["error"],
            f"{other} without etcd",
        )
        nc.procs[primary].signal(signal.SIGSTOP)
        stop, answered = threading.Event(), []
        try:
            nc.wait_for(
                lambda: (
                    nc.agent.call("cluster_status", broker=controller)["shards"]["s0"]["primary"]
                    != primary
                ),
                "the replica promoted",
            )
            w.wait_acked(time.monotonic(), 30, "writes through the new primary")
            prober = threading.Thread(target=w.probe, args=(stop, other, answered))
            prober.start()  # strong reads through the stale broker
        finally:
            nc.procs[primary].signal(signal.SIGCONT)
        time.sleep(1.0)  # the nemesis's rhythm: a few lease lengths after the resumption
        stop.set()
        prober.join(30)
        print(f"  {len(answered)} strong reads through {other} answered meanwhile")
        nc.net.heal()
        nc.wait_healthy()
        w.wait_acked(time.monotonic(), 20, "writes after healing")
    verify(nc, w, eventual_may_be_lost=True)


def test_the_controller_cut_from_everyone(nc: NetCluster) -> None:
    """The other broker takes the controller's lease over; clients retry through it."""
    nc.wait_healthy()
    controller = nc.controller()
    assert controller in BROKERS
    other = next(b for b in BROKERS if b != controller)
    with Workload(nc, "cut-broker") as w:
        cut = time.monotonic()
        nc.net.isolate(controller)
        nc.wait_for(lambda: nc.controller() == other, f"{other} the controller")
        took = w.wait_acked(cut, 20, "writes through the other broker")
        print(f"  writes stopped for {took:.2f} s after the controller was cut off")
        nc.net.heal()
        nc.wait_healthy()
        w.wait_acked(time.monotonic(), 20, "writes after healing")
    verify(nc, w, eventual_may_be_lost=False)


def test_a_flapping_link_with_loss_and_delay(nc: NetCluster) -> None:
    """The primary's links go down and up again and again, lossy (10 %) and slow (5 ms
    each way on every link) while up."""
    nc.wait_healthy()
    primary = nc.primary()
    epoch = nc.status()["shards"]["s0"]["epoch"]
    with Workload(nc, "flapping") as w:
        nc.net.delay(0.005)
        try:
            for _ in range(4):
                nc.net.isolate(primary)
                time.sleep(0.7)  # the nemesis's rhythm, not a wait for a condition
                nc.net.heal()
                nc.net.lossy(primary, 10)
                time.sleep(1.0)
        finally:
            nc.net.heal()
            nc.net.delay(0.0)
        nc.wait_healthy()
        w.wait_acked(time.monotonic(), 20, "writes after healing")
        promotions = nc.status()["shards"]["s0"]["epoch"] - epoch
        print(f"  {promotions} promotions while the link flapped")
    verify(nc, w, eventual_may_be_lost=True)


def test_time_to_serve_writes_partition_against_kill(nc: NetCluster) -> None:
    """Printed: how long writes stop when the primary is cut off, and when it is killed."""
    times: dict[str, float] = {}
    for fault in ("partition", "SIGKILL"):
        nc.wait_healthy()
        primary = nc.primary()
        with Workload(nc, f"recover-{fault.lower()}", workers=2) as w:
            start = time.monotonic()
            if fault == "partition":
                nc.net.isolate(primary)
            else:
                nc.procs[primary].signal(signal.SIGKILL)
            times[fault] = w.wait_acked(start, 10, f"writes after {fault} of the primary")
            nc.net.heal()
            if fault == "SIGKILL":
                nc.procs[primary].start()
                nc.procs[primary].wait_ready(30)
        verify(nc, w, eventual_may_be_lost=True)
    print(
        "\nwrites served again after the primary was cut off: "
        f"{times['partition']:.2f} s; after it was killed (SIGKILL): {times['SIGKILL']:.2f} s"
    )


def test_throughput_with_delay(nc: NetCluster) -> None:
    """Printed: ``zkv bench`` from the clients' namespace, links through the delaying proxy
    at 0 and at 1 ms each way."""
    nc.wait_healthy()
    key = nc.tmp / "keys" / "admin.key_secret"
    rows = []
    for delay in (0.0, 0.001):
        nc.net.delay(delay)
        out = nc.net.run(
            "cl",
            *[sys.executable, "-m", "zkv", "bench", "--config", str(nc.config), "--key", str(key)],
            *["--workload", "mixed", "--threads", "4", "--seconds", "3", "--json"],
        )
        rows.append((delay, json.loads(out)))
    nc.net.delay(0.0)
    print("\nzkv bench --workload mixed --threads 4 --seconds 3 (CURVE, every link proxied):")
    for delay, out in rows:
        r = out["result"]
        print(
            f"  {delay * 1000:.0f} ms added per link each way: {r['ops_per_s']:.0f} ops/s, "
            f"p50 {r['p50_us'] / 1000:.2f} ms, p99 {r['p99_us'] / 1000:.2f} ms"
            f", {r['errors']} errors"
        )
