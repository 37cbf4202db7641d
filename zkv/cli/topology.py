"""``zkv apply``: make the running cluster match its (edited) config file.

The file is the way users describe the cluster. After editing it (a new shard with its
nodes, a new replica, a dropped node or shard), ``zkv apply --config FILE`` compares it with
what the broker runs, prints the plan and, once confirmed (or with ``--yes``), carries it
out while the cluster serves:

1. drain each shard the file dropped (its slots move to the shards that stay);
2. move the primary role off each dropped node that holds it (a switch-over);
3. have the processes read the file again: SIGHUP to ``zkv up`` (which passes it on, then
   starts the new nodes and stops the dropped ones), or, without ``zkv up``, to the broker
   when it runs on this machine (start and stop the nodes yourself then);
4. wait until the broker knows exactly the file's nodes and the new ones are up;
5. rebalance, if the file gained or dropped a shard.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Final

from zkv.broker.reshard import plan
from zkv.cli._common import (
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    _connect,
    _UsageError,
    config_path,
)
from zkv.cli.ops import _follow_reshard
from zkv.config import ClusterConfig, load_config
from zkv.slots import SlotMap
from zkv.supervision import launcher_pid

#: How long ``apply`` waits for the broker to know the file's nodes (seconds).
JOIN_TIMEOUT_S: Final = 60.0


@dataclass
class Plan:
    """What ``apply`` will do."""

    added_shards: dict[str, list[str]] = field(default_factory=dict)
    removed_shards: dict[str, list[str]] = field(default_factory=dict)
    added_nodes: dict[str, str] = field(default_factory=dict)  # node -> shard
    removed_nodes: dict[str, str] = field(default_factory=dict)
    #: Dropped nodes that are their shard's primary: shard -> node.
    switch: dict[str, str] = field(default_factory=dict)
    slots_to_move: int = 0
    keys_to_copy: int = 0

    @property
    def empty(self) -> bool:
        """Whether the cluster matches the file already."""
        return (
            not (self.added_shards or self.removed_shards or self.added_nodes or self.removed_nodes)
            and not self.slots_to_move
        )

    def lines(self) -> list[str]:
        """The plan, for people."""
        out = []
        for shard, nodes in self.added_shards.items():
            out.append(f"  add shard {shard}: nodes {', '.join(nodes)}")
        for node, shard in self.added_nodes.items():
            if shard not in self.added_shards:
                out.append(f"  add node {node} to shard {shard} (a replica: it syncs first)")
        for shard, node in self.switch.items():
            out.append(f"  move the primary role of shard {shard} off {node} (a switch-over)")
        for node, shard in self.removed_nodes.items():
            if shard not in self.removed_shards:
                out.append(f"  remove node {node} from shard {shard}")
        for shard, nodes in self.removed_shards.items():
            out.append(
                f"  remove shard {shard} (nodes {', '.join(nodes)}) once its slots moved away"
            )
        if self.slots_to_move:
            out.append(
                f"  move {self.slots_to_move} slots (about {self.keys_to_copy:,} keys) while "
                "serving"
            )
        return out


def make_plan(status: dict[str, Any], new: ClusterConfig) -> Plan:
    """Compare the broker's ``status()`` with the file ``new``."""
    nodes = status["nodes"]
    running: dict[str, list[str]] = {}
    for node in nodes:
        running.setdefault(node["shard"], []).append(node["name"])
    wanted = {shard: [n.name for n in ns] for shard, ns in new.shards.items()}
    result = Plan()
    result.added_shards = {s: ns for s, ns in wanted.items() if s not in running}
    result.removed_shards = {s: ns for s, ns in running.items() if s not in wanted}
    shard_of_running = {n["name"]: n["shard"] for n in nodes}
    shard_of_wanted = {n.name: n.shard for n in new.nodes()}
    for name, shard in shard_of_wanted.items():
        if name in shard_of_running and shard_of_running[name] != shard:
            raise _UsageError(
                f"node {name} moves from shard {shard_of_running[name]} to {shard}; drop it "
                "and add it under another name"
            )
    result.added_nodes = {n: s for n, s in shard_of_wanted.items() if n not in shard_of_running}
    result.removed_nodes = {n: s for n, s in shard_of_running.items() if n not in shard_of_wanted}
    for shard, entry in status["shards"].items():
        primary = entry.get("primary")
        if shard in wanted and primary in result.removed_nodes:
            result.switch[shard] = primary
    owners = _owners(status)
    slot_map = SlotMap(owners) if owners else None
    if slot_map is not None:
        shards = list(wanted)
        moves = [m for s in result.removed_shards for m in _drain(slot_map, s, shards)]
        if result.added_shards or result.removed_shards:
            moves += plan(_after(slot_map, moves), shards)
        result.slots_to_move = sum(len(m.slots) for m in moves)
        keys = {n["shard"]: n.get("keys") or 0 for n in nodes if n["role"] == "primary"}
        result.keys_to_copy = sum(
            keys.get(m.source, 0) * len(m.slots) // max(1, slot_map.count_of(m.source))
            for m in moves
        )
    return result


def _owners(status: dict[str, Any]) -> list[str]:
    owners: list[str | None] = [None] * int(status["slots"])
    for node in status["nodes"]:
        if node["role"] != "primary" or not node.get("slot_ranges"):
            continue
        for run in str(node["slot_ranges"]).split(","):
            first, _, last = run.partition("-")
            for slot in range(int(first), int(last or first) + 1):
                owners[slot] = node["shard"]
    return [] if None in owners else [o for o in owners if o is not None]


def _drain(slot_map: SlotMap, shard: str, keep: list[str]) -> list[Any]:
    return plan(slot_map, [*keep, shard], shard) if shard in slot_map.shards() else []


def _after(slot_map: SlotMap, moves: list[Any]) -> SlotMap:
    owners = [slot_map.owner(s) for s in range(slot_map.slots)]
    for move in moves:
        for slot in move.slots:
            owners[slot] = move.target
    return SlotMap(owners)


def _apply(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    new = load_config(path)
    kv = _connect(args)
    status = kv.cluster_status()
    todo = make_plan(status, new)
    if todo.empty:
        print(f"{path}: the running cluster matches it; nothing to do")
        return EXIT_OK
    print(f"zkv apply {path} (slot map version {status.get('slot_map_version', 0)}):")
    print("\n".join(todo.lines()))
    if not args.yes:
        if not sys.stdin.isatty():
            raise _UsageError("not a terminal: pass --yes to apply without asking")
        if input("Apply? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing changed")
            return EXIT_USAGE
    for shard in todo.removed_shards:
        print(f"draining shard {shard}")
        code = _follow_reshard(args, kv, shard, None, None)
        if code != EXIT_OK:
            return code
    for shard, node in todo.switch.items():
        keep = [n.name for n in new.shards[shard]]
        result = kv.failover(shard, next(iter(keep), None), timeout=args.timeout)
        print(f"shard {shard}: {result['primary']} is the primary now (was {node})")
    _reload(new, status)
    wanted = {n.name for n in new.nodes()}
    start = time.monotonic()
    print(f"waiting for the broker to run nodes {', '.join(sorted(wanted))}")
    while True:
        nodes = kv.cluster_status()["nodes"]
        known = {n["name"] for n in nodes}
        up = {n["name"] for n in nodes if n["alive"]}
        if known == wanted and set(todo.added_nodes) <= up:
            break
        if time.monotonic() - start > JOIN_TIMEOUT_S:
            missing = sorted((wanted - up) | (known - wanted))
            print(
                f"zkv: after {JOIN_TIMEOUT_S:g} s these nodes are not as the file says: "
                f"{', '.join(missing)} (started? zkv node --config {path} --name NAME)",
                file=sys.stderr,
            )
            return EXIT_UNAVAILABLE
        time.sleep(0.2)
    if todo.added_shards or todo.removed_shards:
        print("rebalancing")
        code = _follow_reshard(args, kv, None, None, None)
        if code != EXIT_OK:
            return code
    print(f"applied {path}")
    return EXIT_OK


def _shard_add(args: argparse.Namespace) -> int:
    """``zkv shard add NAME``: the file lists shard NAME (with its nodes) and the cluster
    does not run it yet: ``apply`` the file (its plan shows every change it holds)."""
    path = config_path(args.config)
    if args.name not in load_config(path).shards:
        raise _UsageError(
            f"{path} has no shard {args.name!r}: add it with its nodes to the file first"
        )
    running = {n["shard"] for n in _connect(args).cluster_status()["nodes"]}
    if args.name in running:
        raise _UsageError(f"shard {args.name!r} runs already")
    return _apply(args)


def _shard_remove(args: argparse.Namespace) -> int:
    """``zkv shard remove NAME``: drain it (its slots spread over the other shards), then
    say how to let its nodes go."""
    kv = _connect(args)
    code = _follow_reshard(args, kv, args.name, None, None)
    if code == EXIT_OK:
        print(
            f"shard {args.name} owns no slots now: take it out of the config file, then run "
            "zkv apply --config FILE (its nodes stop under zkv up)"
        )
    return code


def _reload(new: ClusterConfig, status: dict[str, Any]) -> None:
    """Have the processes read the file again: ``zkv up`` if it runs this cluster, else the
    broker if it runs on this machine."""
    pid = launcher_pid(new.storage.dir)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
        print(f"zkv up (pid {pid}) reads the file again, starting and stopping nodes")
        return
    broker = status["broker"].get("pid")
    try:
        os.kill(int(broker), signal.SIGHUP)
    except (OSError, TypeError, ValueError):
        raise _UsageError(
            "no zkv up runs this cluster here and the broker is not on this machine: send "
            "SIGHUP to the broker yourself, start the new nodes and stop the dropped ones"
        ) from None
    print(f"the broker (pid {broker}) reads the file again; start the new nodes yourself")
