"""A test network on one machine: network namespaces on a bridge, links cut with nftables,
delay through a user-space TCP proxy.

Every host of a test cluster (a broker, etcd, a node, the gateway, the clients) is a network
namespace ``zkvp-<pid>-<host>`` with one veth on the bridge ``zkvp-br<pid>`` and its own
address in ``10.77.<pid % 250>.0/24``; nothing is given an address in the machine's own
namespace, so traffic stays inside the namespaces the test made. Each namespace has one
nftables table ``inet zkvp`` (created and replaced whole, atomically) that drops packets to
and from the hosts it is cut from, and drops a share of the packets to and from "lossy"
hosts at random (``numgen random mod 100 < N``). This machine's kernel has no netem, so
delay is added by a proxy (``python tests/netns.py proxy``, one per namespace) that an nft
``redirect`` rule puts on every TCP connection a namespace opens to another test host: each
link then goes through exactly one proxy, at its connecting end, which holds every chunk
``delay_s`` in each direction (read from a control file, so it changes while running).

Needs root and ``ip``/``nft`` (iproute2, nftables); ``netns_unavailable()`` says why not.
Teardown removes the namespaces (and with them their veths and nft tables) and the bridge;
``sweep()`` removes what an earlier run of a process that no longer exists left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PREFIX = "zkvp-"
PROXY_PORT = 7999
PROXY_MARK = 0x77
SO_ORIGINAL_DST = 80


def sh(*argv: str, check: bool = True, input_text: str | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, input=input_text)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


_PIPES: dict[str, Any] = {
    "stdin": subprocess.PIPE,
    "stdout": subprocess.PIPE,
    "stderr": subprocess.PIPE,
    "text": True,
}


def netns_unavailable() -> str | None:
    """Why namespace tests cannot run here, or None if they can."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"{tool} not found: apt-get install {package}"
    name = f"{PREFIX}{os.getpid()}-probe"
    try:
        sh("ip", "netns", "add", name)
    except RuntimeError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        sh("ip", "netns", "exec", name, "nft", "list", "tables")
    except RuntimeError as exc:
        return f"nftables does not work in a namespace: {exc}"
    finally:
        sh("ip", "netns", "delete", name, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep() -> None:
    """Remove namespaces and bridges of this prefix whose test process is gone."""
    for line in sh("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{PREFIX}(\d+)-.*", name)
        if m and not _alive(int(m.group(1))):
            _kill_inside(name)
            sh("ip", "netns", "delete", name, check=False)
    for line in sh("ip", "-o", "link", "show").splitlines():
        m = re.match(r"\d+: (zkvp-br(\d+)|zp(\d+)-\w+)[@:]", line)
        if m and not _alive(int(m.group(2) or m.group(3))):
            sh("ip", "link", "delete", m.group(1), check=False)


def _kill_inside(ns: str) -> None:
    """SIGKILL every process still inside namespace ``ns`` (only tests start processes in
    namespaces of this prefix), by the PIDs ``ip netns pids`` gives."""
    for pid in sh("ip", "netns", "pids", ns, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


class Net:
    """A bridge and namespaces on it; ``cut``/``heal``/``lossy``/``delay`` shape the links."""

    def __init__(self, workdir: Path) -> None:
        self.pid = os.getpid()
        self.workdir = workdir
        self.subnet = f"10.77.{self.pid % 250}"
        self.bridge = f"zkvp-br{self.pid}"
        self.hosts: dict[str, str] = {}  # host -> address
        self.cuts: dict[str, set[str]] = {}  # host -> hosts it drops packets to and from
        self.deaf: dict[str, set[str]] = {}  # host -> hosts it drops packets from (one way)
        self.loss: dict[str, tuple[set[str], int]] = {}
        self.proxies: dict[str, subprocess.Popen[bytes]] = {}
        sweep()
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "link", "set", self.bridge, "up")

    def ns(self, host: str) -> str:
        return f"{PREFIX}{self.pid}-{host}"

    def add(self, host: str) -> str:
        """A namespace for ``host`` on the bridge; its address."""
        index = len(self.hosts) + 1
        address = f"{self.subnet}.{index}"
        ns, outer, inner = self.ns(host), f"zp{self.pid}-{index}", f"zp{self.pid}-{index}p"
        sh("ip", "netns", "add", ns)
        self.hosts[host] = address
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        sh("ip", "link", "set", inner, "netns", ns)
        sh("ip", "link", "set", outer, "master", self.bridge, "up")
        sh("ip", "-n", ns, "link", "set", inner, "name", "eth0")
        sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.cuts[host] = set()
        self.deaf[host] = set()
        self.loss[host] = (set(), 0)
        self._apply(host)
        return address

    def argv(self, host: str, *argv: str) -> list[str]:
        """A command line that runs ``argv`` inside ``host``'s namespace (``ip netns exec``
        execs it: the process started is the command itself, with its own PID)."""
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def run(self, host: str, *argv: str, check: bool = True) -> str:
        return sh(*self.argv(host, *argv), check=check)

    # ------------------------------------------------------------------ faults

    def _apply(self, *hosts: str) -> None:
        """Replace each host's nft table by one for its current cuts and losses (atomic per
        host; the hosts at once, so that a partition starts everywhere together)."""
        procs = [
            (host, subprocess.Popen(self.argv(host, "nft", "-f", "-"), **_PIPES)) for host in hosts
        ]
        for host, proc in procs:
            _, err = proc.communicate(self._script(host), timeout=30)
            if proc.returncode != 0:
                raise RuntimeError(f"nft in {host}: {err.strip()}")

    def _script(self, host: str) -> str:
        """The nft script that makes ``host``'s table."""
        lossy, percent = self.loss[host]

        def addresses(name: str, hosts: set[str]) -> str:
            listed = ", ".join(self.hosts[h] for h in sorted(hosts))
            elements = f"elements = {{ {listed} }}" if listed else ""
            return f"  set {name} {{ type ipv4_addr; {elements}}}"

        rules = ["table inet zkvp {"]
        rules += [
            addresses("cut", self.cuts[host]),
            addresses("deaf", self.deaf[host]),
            addresses("lossy", lossy),
        ]
        for chain, field in (("input", "saddr"), ("output", "daddr")):
            rules.append(f"  chain {chain} {{ type filter hook {chain} priority 0; policy accept;")
            rules.append(f"    ip {field} @cut drop")
            if chain == "input":
                rules.append("    ip saddr @deaf drop")
            if percent:
                rules.append(f"    ip {field} @lossy numgen random mod 100 < {percent} drop")
            rules.append("  }")
        rules.append("}")
        return "table inet zkvp\ndelete table inet zkvp\n" + "\n".join(rules) + "\n"

    def cut(self, a: list[str] | str, b: list[str] | str) -> None:
        """Drop every packet between the hosts of ``a`` and those of ``b`` (both ways)."""
        left, right = ([a] if isinstance(a, str) else a), ([b] if isinstance(b, str) else b)
        for x in left:
            self.cuts[x] |= set(right)
        for y in right:
            self.cuts[y] |= set(left)
        self._apply(*left, *right)

    def uncut(self, a: str, b: str) -> None:
        """Mend the link between ``a`` and ``b`` only (both ways)."""
        self.cuts[a].discard(b)
        self.cuts[b].discard(a)
        self.deaf[a].discard(b)
        self.deaf[b].discard(a)
        self._apply(a, b)

    def one_way(self, sender: str, receiver: str) -> None:
        """Mend the link between ``sender`` and ``receiver`` in one direction only: packets
        from ``sender`` arrive, packets back are dropped (TCP data gets through; its
        acknowledgements, and anything ``receiver`` sends, do not)."""
        self.cuts[sender].discard(receiver)
        self.cuts[receiver].discard(sender)
        self.deaf[sender].add(receiver)
        self._apply(sender, receiver)

    def bytes_received(self, host: str, peer: str) -> int:
        """Bytes ``host`` received so far on its open TCP connections with ``peer``."""
        out = self.run(host, "ss", "-tinH", "dst", self.hosts[peer], check=False)
        out += self.run(host, "ss", "-tinH", "src", self.hosts[peer], check=False)
        return sum(int(n) for n in re.findall(r"bytes_received:(\d+)", out))

    def isolate(self, host: str) -> None:
        """Cut ``host`` from every other host."""
        self.cut(host, [h for h in self.hosts if h != host])

    def lossy(self, host: str, percent: int) -> None:
        """Drop ``percent`` % of the packets between ``host`` and every other host."""
        others = {h for h in self.hosts if h != host}
        self.loss[host] = (others, percent)
        self._apply(host)

    def heal(self) -> None:
        """Every link whole again: no cut, no loss."""
        changed = [h for h in self.hosts if self.cuts[h] or self.deaf[h] or self.loss[h][1]]
        for host in changed:
            self.cuts[host] = set()
            self.deaf[host] = set()
            self.loss[host] = (set(), 0)
        self._apply(*changed)

    # ------------------------------------------------------------------ delay

    def start_proxies(self) -> None:
        """A delaying proxy in each namespace, on every TCP connection it opens to another
        test host (call before starting the processes: only new connections go through it)."""
        control = self.workdir / "delay.json"
        control.write_text(json.dumps({"delay_s": 0.0}))
        for host in self.hosts:
            with open(self.workdir / f"proxy-{host}.log", "ab") as log:
                self.proxies[host] = subprocess.Popen(
                    self.argv(host, sys.executable, __file__, "proxy", str(control), host),
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            nat = (
                "table ip zkvp_nat {\n chain output { type nat hook output priority -100;\n"
                f"  meta mark {PROXY_MARK:#x} return\n"
                f"  ip daddr {self.subnet}.0/24 tcp dport != {PROXY_PORT} "
                f"redirect to :{PROXY_PORT}\n }}\n}}\n"
            )
            sh(*self.argv(host, "nft", "-f", "-"), input_text=nat)
        for host in self.hosts:  # each listens before anything connects through it
            deadline = time.monotonic() + 15
            while f":{PROXY_PORT} " not in self.run(host, "ss", "-ltnH", check=False):
                assert self.proxies[host].poll() is None, f"proxy in {host} exited"
                assert time.monotonic() < deadline, f"proxy in {host} not listening"
                time.sleep(0.05)

    def delay(self, seconds: float) -> None:
        """Hold every chunk on every link ``seconds`` in each direction (the proxies)."""
        control = self.workdir / "delay.json"
        tmp = control.with_suffix(".tmp")
        tmp.write_text(json.dumps({"delay_s": seconds}))
        tmp.replace(control)
        deadline = time.monotonic() + 15
        for host in self.proxies:  # each proxy says which delay it applies
            seen = self.workdir / f"delay-{host}.json"
            while not seen.exists() or json.loads(seen.read_text() or "{}") != {"delay_s": seconds}:
                assert time.monotonic() < deadline, f"the proxy in {host} did not take the delay"
                time.sleep(0.02)

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Stop the proxies (by PID), delete every namespace and the bridge."""
        for proc in self.proxies.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        for host in self.hosts:  # anything the test failed to stop
            _kill_inside(self.ns(host))
            sh("ip", "netns", "delete", self.ns(host), check=False)
        sh("ip", "link", "delete", self.bridge, check=False)


# ---------------------------------------------------------------------- the proxy process


class _Delay:
    def __init__(self, control: Path, host: str) -> None:
        self.control = control
        self.seen = control.with_name(f"delay-{host}.json")
        self.seconds = 0.0
        self.mtime = 0.0

    async def watch(self) -> None:
        while True:
            try:
                mtime = self.control.stat().st_mtime
                if mtime != self.mtime:
                    self.mtime = mtime
                    self.seconds = float(json.loads(self.control.read_text())["delay_s"])
                    tmp = self.seen.with_suffix(".tmp")
                    tmp.write_text(json.dumps({"delay_s": self.seconds}))
                    tmp.replace(self.seen)
            except (OSError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.1)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: _Delay) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay.seconds`` after it was read, in order."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, chunk = await queue.get()
            if not chunk:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(send())
    loop = asyncio.get_running_loop()
    try:
        while True:
            chunk = await reader.read(65536)
            queue.put_nowait((loop.time() + delay.seconds, chunk))
            if not chunk:
                break
        await sender
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        sender.cancel()
        writer.close()


async def _serve_proxy(control: Path, host: str) -> None:
    delay = _Delay(control, host)
    watcher = asyncio.create_task(delay.watch())

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, packed = struct.unpack("!2xH4s8x", raw)
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, PROXY_MARK)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(
                upstream, (socket.inet_ntoa(packed), port)
            )
            up_reader, up_writer = await asyncio.open_connection(sock=upstream)
        except OSError:
            upstream.close()
            writer.close()
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(_pipe(reader, up_writer, delay), _pipe(up_reader, writer, delay))

    server = await asyncio.start_server(handle, "0.0.0.0", PROXY_PORT)
    async with server:
        await server.serve_forever()
    watcher.cancel()


if __name__ == "__main__" and sys.argv[1:2] == ["proxy"]:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_proxy(Path(sys.argv[2]), sys.argv[3]))
