"""The deployment recipes in ``deploy/`` against zkv's own config loader, keygen and keys.

No Docker daemon and no systemd as PID 1 are needed: the compose file is parsed and held
against ``deploy/cluster.yaml`` (names, host names, ports, volumes, etcd), the config goes
through zkv's loader and a server's own refusal check, ``zkv keygen`` runs for real and each
host's key folder is checked with the loaders the processes use, and the systemd units go
through ``systemd-analyze verify``. ``docker compose config`` and ``docker build`` run only
where a compose plugin and a daemon answer; they are skipped here with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import stat
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Proc, free_port

from zkv.cli.processes import _server_config
from zkv.config import BROKER_KEY, ClusterConfig, load_config, parse_config
from zkv.errors import ConfigError
from zkv.security import CurveKeys, _broker_keys, _node_keys

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CONFIG_FILE = DEPLOY / "cluster.yaml"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
UNITS = DEPLOY / "systemd"
#: Where the image and the units expect the config file.
CONFIG_IN_HOST = "/etc/zkv/cluster.yaml"
SERVER_ROLES = ("broker", "node", "http")
#: The client key the image's health check proves (the image's ZKV_KEY).
HEALTH_CLIENT = "health"


@pytest.fixture(scope="module")
def config() -> ClusterConfig:
    return load_config(CONFIG_FILE)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return doc


def zkv_services(compose: dict[str, Any], roles: tuple[str, ...] = SERVER_ROLES) -> dict[str, Any]:
    """The compose services that run a zkv command of ``roles`` (the command's first word)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image", "").startswith("zkv:") and service["command"][0] in roles
    }


def option(command: list[str], name: str) -> str | None:
    """The value after ``name`` in a command list, else None."""
    return command[command.index(name) + 1] if name in command else None


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def host_of(endpoint: str) -> str:
    return endpoint.removeprefix("tcp://").rsplit(":", 1)[0]


def role_ports(config: ClusterConfig, role: str, name: str | None) -> set[int]:
    """The ports process ``name`` of ``role`` binds, as the config gives them."""
    if role == "broker":
        broker = next(b for b in config.broker_list() if b.name == name)
        return {port_of(broker.clients), port_of(broker.nodes)}
    if role == "node":
        node = config.node(str(name))
        return {port_of(node.publish), port_of(node.sync)}
    return {config.http.port}


def role_host(config: ClusterConfig, role: str, name: str | None) -> set[str]:
    """The host names process ``name`` of ``role`` binds (each must resolve to itself)."""
    if role == "broker":
        broker = next(b for b in config.broker_list() if b.name == name)
        return {host_of(broker.clients), host_of(broker.nodes)}
    if role == "node":
        node = config.node(str(name))
        return {host_of(node.publish), host_of(node.sync)}
    return {config.http.host}


def volume_targets(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """A service's mounts (short syntax): target -> (source, read-only)."""
    mounts = {}
    for entry in service.get("volumes", []):
        parts = entry.split(":")
        mounts[parts[1]] = (parts[0], parts[2:] == ["ro"])
    return mounts


# --------------------------------------------------------------------------- the config


@pytest.mark.timeout(10)
def test_cluster_config_loads_and_a_server_accepts_it(config: ClusterConfig) -> None:
    """zkv's loader validates the file, and the check every server runs before it binds
    (nothing reachable unencrypted but what the file allows) lets it through."""
    assert config.security is not None, "across machines the file needs a security section"
    assert config.coordination is not None
    assert len(config.broker_list()) == 3
    assert [len(nodes) for nodes in config.shards.values()] == [2, 2, 2]
    assert str(config.storage.dir) == "/var/lib/zkv"
    assert str(config.security.keys) == "/etc/zkv/keys"
    # every ZeroMQ link runs CURVE: the gateway's plain HTTP is the only exposed endpoint
    assert config.exposed_endpoints() == [("http.listen", config.http.listen)]
    assert _server_config(CONFIG_FILE).path == CONFIG_FILE
    # the health check's key may ask for the status and read nothing but health:* keys
    health = config.security.clients[HEALTH_CLIENT]
    assert (health.role.value, health.prefixes) == ("read", ("health:",))


@pytest.mark.timeout(10)
def test_without_allow_insecure_remote_etcd_off_loopback_is_refused() -> None:
    """Why the file sets allow_insecure_remote although every zkv link is encrypted."""
    text = CONFIG_FILE.read_text(encoding="utf-8")
    with pytest.raises(ConfigError, match=r"coordination\.etcd\.endpoints\[0\]"):
        parse_config(text.replace("allow_insecure_remote: true", "allow_insecure_remote: false"))


# --------------------------------------------------------------------------- compose


@pytest.mark.timeout(10)
def test_every_process_of_the_config_has_one_service(
    config: ClusterConfig, compose: dict[str, Any]
) -> None:
    services = zkv_services(compose)
    by_role: dict[str, list[str | None]] = {role: [] for role in SERVER_ROLES}
    for service in services.values():
        command = service["command"]
        by_role[command[0]].append(option(command, "--name"))
    assert sorted(map(str, by_role["broker"])) == sorted(b.name for b in config.broker_list())
    assert sorted(map(str, by_role["node"])) == sorted(n.name for n in config.nodes())
    assert by_role["http"] == [None], "one gateway (the file has one http section)"
    for name, service in services.items():
        command = service["command"]
        if command[0] != "http":
            assert option(command, "--name") == name, "service name = process name = host"


@pytest.mark.timeout(10)
def test_every_zkv_service_reads_the_one_config_file(compose: dict[str, Any]) -> None:
    for name, service in zkv_services(compose, (*SERVER_ROLES, "keygen")).items():
        assert option(service["command"], "--config") == CONFIG_IN_HOST, name
        source, read_only = volume_targets(service)[CONFIG_IN_HOST]
        assert (COMPOSE_FILE.parent / source).resolve() == CONFIG_FILE, name
        assert read_only, f"{name}: the config file is mounted read-only"


@pytest.mark.timeout(10)
def test_each_service_binds_its_own_host_name(
    config: ClusterConfig, compose: dict[str, Any]
) -> None:
    """A process binds the host name of its own entry: in compose that is the service's
    name (and hostname), which Docker's DNS resolves to the container itself."""
    for name, service in zkv_services(compose).items():
        command = service["command"]
        hosts = role_host(config, command[0], option(command, "--name"))
        assert hosts == {name}, f"{name} binds {hosts}"
        assert service.get("hostname") == name


@pytest.mark.timeout(10)
def test_ports_exposed_and_published_match_the_config(
    config: ClusterConfig, compose: dict[str, Any]
) -> None:
    client_facing = {port_of(b.clients) for b in config.broker_list()} | {config.http.port}
    host_ports: list[str] = []
    all_ports: set[int] = set()
    for name, service in zkv_services(compose).items():
        command = service["command"]
        wanted = role_ports(config, command[0], option(command, "--name"))
        all_ports |= wanted
        assert {int(p) for p in service["expose"]} == wanted, name
        for published in service.get("ports", []):
            host_ip, host_port, container_port = published.split(":")
            assert host_ip == "127.0.0.1", f"{name}: publish on the host's loopback only"
            assert int(container_port) in wanted & client_facing, f"{name}: {published}"
            host_ports.append(host_port)
    assert len(host_ports) == len(set(host_ports)), "a host port published twice"
    exposed = re.search(r"^EXPOSE (.+)$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert exposed is not None
    assert {int(p) for p in exposed[1].split()} == all_ports


@pytest.mark.timeout(10)
def test_etcd_services_are_the_coordination_endpoints(
    config: ClusterConfig, compose: dict[str, Any]
) -> None:
    assert config.coordination is not None
    etcd = {n: s for n, s in compose["services"].items() if "etcd" in s.get("image", "")}
    assert len(etcd) % 2 == 1, "an odd number of etcd members"
    advertised = {s["environment"]["ETCD_ADVERTISE_CLIENT_URLS"] for s in etcd.values()}
    assert advertised == set(config.coordination.etcd.endpoints)
    for name, service in etcd.items():
        env = service["environment"]
        assert env["ETCD_NAME"] == name == service["hostname"]
        assert f"{name}=http://{name}:2380" in env["ETCD_INITIAL_CLUSTER"].split(",")
        assert env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == f"http://{name}:2380"
        assert "ports" not in service, "etcd stays on the zkv network"
        assert f"{name}-data" in compose["volumes"]
    for name, service in zkv_services(compose, ("broker",)).items():
        for member in etcd:
            assert service["depends_on"][member] == {"condition": "service_healthy"}, name


@pytest.mark.timeout(10)
def test_keys_and_data_volumes(config: ClusterConfig, compose: dict[str, Any]) -> None:
    assert config.security is not None
    keys_dir, data_dir = str(config.security.keys), str(config.storage.dir)
    keygen = compose["services"]["keygen"]
    assert keygen["command"][0] == "keygen"
    assert volume_targets(keygen)[keys_dir] == ("keys", False)
    data_volumes = []
    for name, service in zkv_services(compose).items():
        mounts = volume_targets(service)
        assert mounts[keys_dir] == ("keys", True), f"{name}: keys mounted read-only"
        after = service["depends_on"]["keygen"]
        assert after == {"condition": "service_completed_successfully"}, name
        if service["command"][0] != "http":
            source, read_only = mounts[data_dir]
            assert source == f"{name}-data" and not read_only
            data_volumes.append(source)
    assert len(set(data_volumes)) == len(data_volumes)
    assert set(data_volumes) | {"keys"} <= set(compose["volumes"])


@pytest.mark.timeout(30)
def test_docker_compose_config_accepts_the_file() -> None:
    """``docker compose config`` parses the file without a daemon, where the plugin exists."""
    if shutil.which("docker") is None:
        pytest.skip("no docker client")
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=20, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"docker compose is not available: {probe.stderr.strip().splitlines()[0]}")
    done = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.timeout(10)
def test_readme_ports_table_is_the_config(config: ClusterConfig) -> None:
    """The README's table of ports per role says what deploy/cluster.yaml binds."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Deploying across machines", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (broker|node|gateway|etcd) \| (\d+) \| `?([^|`]+)`? \|", section, re.M)
    table = {key.strip(): int(port) for _role, port, key in rows}
    assert config.coordination is not None
    etcd_ports = {int(url.rsplit(":", 1)[1]) for url in config.coordination.etcd.endpoints}
    assert etcd_ports == {table["coordination.etcd.endpoints"]}
    assert {port_of(b.clients) for b in config.broker_list()} == {table["brokers[].clients"]}
    assert {port_of(b.nodes) for b in config.broker_list()} == {table["brokers[].nodes"]}
    assert {port_of(n.publish) for n in config.nodes()} == {table["shards.S[].publish"]}
    assert {port_of(n.sync) for n in config.nodes()} == {table["shards.S[].sync"]}
    assert config.http.port == table["http.listen"]


# --------------------------------------------------------------------------- keys


def needed_keys(config: ClusterConfig, role: str, name: str | None) -> set[str]:
    """The key files a host running process ``name`` of ``role`` needs (README's table):
    its own secret key and the public keys of the peers it admits or dials."""
    assert config.security is not None
    if role == "broker":  # every broker proves the one broker key pair
        peers = [n.name for n in config.nodes()] + list(config.security.clients)
        return {f"{BROKER_KEY}.key_secret"} | {f"{peer}.key" for peer in peers}
    if role == "node":
        shard = config.node(str(name)).shard
        peers = {f"{n.name}.key" for n in config.shards[shard]}
        return {f"{name}.key_secret", f"{BROKER_KEY}.key"} | peers
    client = config.http.client if role == "http" else str(name)
    return {f"{client}.key_secret", f"{BROKER_KEY}.key"}


def load_role_keys(config: ClusterConfig, role: str, name: str | None) -> None:
    """Read the keys of a process the way zkv does (``ConfigError`` if one is missing)."""
    if role == "broker":
        _broker_keys(config)
    elif role == "node":
        _node_keys(config, str(name))
    else:
        CurveKeys.for_client(config, config.http.client if role == "http" else str(name))


def with_keys(keys: Path) -> ClusterConfig:
    text = CONFIG_FILE.read_text(encoding="utf-8")
    assert "keys: /etc/zkv/keys" in text
    return parse_config(text.replace("keys: /etc/zkv/keys", f"keys: {keys}"), CONFIG_FILE)


@pytest.mark.timeout(20)
def test_keygen_writes_what_each_host_needs_and_no_less_will_do(
    tmp_path: Path, config: ClusterConfig, compose: dict[str, Any]
) -> None:
    """The real ``zkv keygen --config`` on a copy of the file whose key folder is in tmp;
    then, for each compose service (a host), a folder holding only the keys the README's
    table gives it is enough for zkv's own key loaders, and each of those keys is needed
    (plus the health check's key, which every server container holds)."""
    keys = tmp_path / "keys"
    copy = tmp_path / "cluster.yaml"
    copy.write_text(
        CONFIG_FILE.read_text(encoding="utf-8").replace("keys: /etc/zkv/keys", f"keys: {keys}"),
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "zkv", "keygen", "--config", str(copy)],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    made = {p.name for p in keys.iterdir()}
    assert made == {f"{n}.key" for n in config.key_names()} | {
        f"{n}.key_secret" for n in config.key_names()
    }
    for secret in keys.glob("*.key_secret"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    for service_name, service in zkv_services(compose).items():
        command = service["command"]
        role, name = command[0], option(command, "--name")
        need = needed_keys(config, role, name)
        health = needed_keys(config, "client", HEALTH_CLIENT)
        assert need <= made
        host = tmp_path / f"host-{service_name}"
        host.mkdir()
        for file in need | health:
            shutil.copy2(keys / file, host / file)
        host_config = with_keys(host)
        load_role_keys(host_config, role, name)
        load_role_keys(host_config, "client", HEALTH_CLIENT)
        for file in sorted(need):  # and each one is needed
            (host / file).rename(tmp_path / "aside")
            with pytest.raises(ConfigError):
                load_role_keys(host_config, role, name)
            (tmp_path / "aside").rename(host / file)


# --------------------------------------------------------------------------- health check


@pytest.fixture(scope="module")
def healthcheck() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("zkv_healthcheck", DEPLOY / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(10)
def test_healthcheck_finds_the_server_process(
    healthcheck: types.ModuleType, tmp_path: Path
) -> None:
    argv = healthcheck.server_argv
    node = ["node", "--config", CONFIG_IN_HOST, "--name", "s0a"]
    assert argv(["/usr/local/bin/python3", "/usr/local/bin/zkv", *node]) == node
    assert argv(["/sbin/docker-init", "--", "zkv", "broker", "--name", "b1"])[0] == "broker"
    assert argv(["python3", "-m", "zkv", "http"]) == ["http"]
    assert argv(["/usr/local/bin/python3", "/usr/local/bin/zkv", "status", "--json"]) is None
    assert argv(["/usr/local/bin/python3", "/usr/local/bin/zkv-healthcheck"]) is None
    proc = tmp_path / "proc"
    for pid, cmdline in [
        ("1", b"/sbin/docker-init\0--\0zkv\0node\0--name\0s0a\0"),
        ("7", b"/usr/local/bin/python3\0/usr/local/bin/zkv\0node\0--name\0s0a\0"),
        ("self", b"ignored\0"),
    ]:
        (proc / pid).mkdir(parents=True)
        (proc / pid / "cmdline").write_bytes(cmdline)
    assert healthcheck.find_server(proc) == ["node", "--name", "s0a"]
    assert healthcheck.option(["broker", "--config=/x.yaml"], "--config") == "/x.yaml"


@pytest.mark.timeout(10)
def test_node_health_is_what_the_brokers_see(healthcheck: types.ModuleType) -> None:
    status = {"nodes": [{"name": "s0a", "alive": True, "role": "primary", "seq": 9}]}
    assert healthcheck.node_verdict(status, "s0a")[0]
    status["nodes"][0]["alive"] = False
    ok, why = healthcheck.node_verdict(status, "s0a")
    assert not ok and "down" in why
    ok, why = healthcheck.node_verdict(status, "s9z")
    assert not ok and "not in the cluster" in why


@pytest.mark.timeout(20)
def test_healthcheck_against_a_real_broker(healthcheck: types.ModuleType, tmp_path: Path) -> None:
    """A live broker is healthy through its own endpoint, a broker that does not answer is
    not, nor a gateway that does not listen; a node is healthy once the broker sees it."""

    def write(name: str, clients: int, nodes: int) -> Path:
        doc = {
            "cluster": "health",
            "broker": {
                "clients": f"tcp://127.0.0.1:{clients}",
                "nodes": f"tcp://127.0.0.1:{nodes}",
            },
            "storage": {"dir": str(tmp_path / "data"), "fsync": "no"},
            "http": {"listen": f"127.0.0.1:{free_port()}"},
            "shards": {
                "s0": [{"name": "n1", "publish": "tcp://127.0.0.1:0", "sync": "tcp://127.0.0.1:0"}]
            },
        }
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        return path

    path = write("cluster.yaml", free_port(), free_port())
    nobody = write("nobody.yaml", free_port(), free_port())

    def process(role: str, *name: str) -> Proc:
        argv = [sys.executable, "-m", "zkv", role, "--config", str(path), *name]
        return Proc(role, argv, tmp_path / f"{role}.ready", tmp_path / f"{role}.log")

    broker, node = process("broker"), process("node", "--name", "n1")
    try:
        broker.start()
        broker.wait_ready()
        ok, why = healthcheck.check(["broker", "--config", str(path)], 2.0)
        assert ok, why
        ok, why = healthcheck.check(["broker", "--config", str(nobody)], 0.3)
        assert not ok and "exit 3" in why, why
        ok, why = healthcheck.check(["http", "--config", str(path)], 1.0)
        assert not ok and "no answer" in why, why
        node_args = ["node", "--config", str(path), "--name", "n1"]
        ok, why = healthcheck.check(node_args, 2.0)
        assert not ok and "n1" in why, why  # not started yet: the broker has not seen it
        node.start()
        node.wait_ready()
        deadline = time.monotonic() + 10
        while not ok and time.monotonic() < deadline:  # until the broker has heard from it
            ok, why = healthcheck.check(node_args, 2.0)
        assert ok and "alive" in why, why
    finally:
        node.stop()
        broker.stop()


# --------------------------------------------------------------------------- systemd


UNIT_FILES = ("zkv-broker@.service", "zkv-node@.service", "zkv-http.service", "zkv.target")


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Each ``Key=value`` of a unit file (sections merged), values in file order."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.timeout(10)
@pytest.mark.parametrize("unit", ["zkv-broker@.service", "zkv-node@.service", "zkv-http.service"])
def test_service_units_run_one_process_hardened(unit: str) -> None:
    s = unit_settings(UNITS / unit)
    role = unit.removeprefix("zkv-").split("@")[0].split(".")[0]
    name = ["--name", "%i"] if "@" in unit else []
    assert s["ExecStart"] == [
        " ".join(["/opt/zkv/bin/zkv", role, "--config", CONFIG_IN_HOST, *name])
    ]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["User"] == ["zkv"] and s["Restart"] == ["on-failure"]
    assert s["RestartPreventExitStatus"] == ["2"]  # a bad config: restarting cannot help
    assert s["ProtectSystem"] == ["strict"] and s["ReadWritePaths"] == ["/var/lib/zkv"]
    assert s["NoNewPrivileges"] == ["yes"] and s["CapabilityBoundingSet"] == [""]
    assert s["WantedBy"] == ["zkv.target"] and s["PartOf"] == ["zkv.target"]


@pytest.mark.timeout(20)
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """The units, with ExecStart pointing at this environment's zkv, verify without a
    single complaint (systemd-analyze only warns about unknown keys or bad values)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found")
    zkv_bin = Path(sys.executable).with_name("zkv")
    assert zkv_bin.exists()
    for unit in UNIT_FILES:
        text = (UNITS / unit).read_text(encoding="utf-8")
        (tmp_path / unit).write_text(text.replace("/opt/zkv/bin/zkv", str(zkv_bin)))
    probe = tmp_path / "probe.service"
    probe.write_text("[Service]\nExecStart=/bin/true\n")
    command = [analyze, "verify", "--man=no"]
    try:
        sanity = subprocess.run(
            [*command, str(probe)], capture_output=True, text=True, timeout=15, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.skip("systemd-analyze verify hangs in this container")
    if sanity.returncode != 0 or sanity.stderr.strip():
        pytest.skip(f"systemd-analyze cannot verify units here: {sanity.stderr.strip()[:200]}")
    instances = ["zkv-broker@b1.service", "zkv-node@s0a.service", "zkv-http.service", "zkv.target"]
    done = subprocess.run(
        [*command, *(str(tmp_path / u) for u in instances)],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


# --------------------------------------------------------------------------- the image


@pytest.mark.timeout(10)
def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.1[12]-slim$", text, re.M)
    assert "pip install --no-cache-dir '.[etcd]'" in text
    assert re.search(r"^USER zkv$", text, re.M)
    assert 'VOLUME ["/var/lib/zkv"]' in text
    assert 'ENTRYPOINT ["zkv"]' in text
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[\"zkv-healthcheck\"\]", text, re.M)
    assert f"ZKV_CONFIG={CONFIG_IN_HOST}" in text
    assert f"ZKV_KEY=/etc/zkv/keys/{HEALTH_CLIENT}.key_secret" in text
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".git", ".venv", "keys"} <= set(ignored)


def docker_daemon() -> str | None:
    """Why no image can be built here, or None if a Docker daemon answers."""
    if shutil.which("docker") is None:
        return "no docker client"
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{json .ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 10 s"
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines() or ["no reason given"]
        return f"no Docker daemon: {lines[-1]}"
    return None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_docker_build_and_run(tmp_path: Path) -> None:
    """Build the image (only where a daemon answers) and run ``zkv --version`` in it."""
    reason = docker_daemon()
    if reason is not None:
        pytest.skip(reason)
    tag = "zkv:test-deploy"
    build = subprocess.run(
        ["docker", "build", "-f", str(DOCKERFILE), "-t", tag, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=850,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run(
        ["docker", "run", "--rm", tag, "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0 and run.stdout.startswith("zkv "), run.stderr
    user = subprocess.run(
        ["docker", "image", "inspect", tag, "--format", "{{json .Config}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    image = json.loads(user.stdout)
    assert image["User"] == "zkv" and image["Healthcheck"]["Test"] == ["CMD", "zkv-healthcheck"]
