"""Security without a cluster: CURVE key pairs (`zkv keygen`), loopback-only without keys,
and the client side of CURVE (keys from a config, the CLI's --key, the handshake itself)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq
import zmq.auth
from conftest import cluster_doc, free_port

import zkv
from zkv import protocol
from zkv.cli import main as zkv_main
from zkv.config import is_loopback, parse_config
from zkv.errors import ConfigError
from zkv.security import CurveKeys

REPO = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------ keygen


def test_keygen_writes_pairs_that_zmq_auth_loads_and_keeps_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    assert zkv_main(["keygen", "--out", str(keys), "broker", "s0a", "app"]) == 0
    out = capsys.readouterr().out
    assert out.count("created") == 3
    for name in ("broker", "s0a", "app"):
        public, secret = keys / f"{name}.key", keys / f"{name}.key_secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert zmq.auth.load_certificate(public)[0] == zmq.auth.load_certificate(secret)[0]
        assert zmq.auth.load_certificate(secret)[1] is not None  # the secret half is there
    before = (keys / "s0a.key_secret").read_bytes()
    assert zkv_main(["keygen", "--out", str(keys), "s0a", "s0b"]) == 0
    out = capsys.readouterr().out
    assert "kept" in out and "created" in out
    assert (keys / "s0a.key_secret").read_bytes() == before  # never overwritten


def test_keygen_refuses_bad_names_and_half_pairs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    assert zkv_main(["keygen", "--out", str(keys), "../evil"]) == 2
    assert not keys.exists()  # refused before writing anything
    keys.mkdir()
    (keys / "lonely.key").write_text("only the public half")
    assert zkv_main(["keygen", "--out", str(keys), "lonely"]) == 2
    assert "only one of" in capsys.readouterr().err


# ------------------------------------------------------------------ loopback only


def doc(tmp_path: Path, clients_host: str = "127.0.0.1", **extra: Any) -> dict[str, Any]:
    d = cluster_doc(
        {"s0": ["s0a"]},
        tmp_path / "data",
        broker_clients=f"tcp://{clients_host}:{free_port()}",
        broker_nodes=f"tcp://127.0.0.1:{free_port()}",
    )
    d.update(extra)
    return d


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("*", False),
        ("10.0.0.7", False),
        ("db.example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposed_endpoints_and_the_override_flag(tmp_path: Path) -> None:
    config = parse_config(yaml.safe_dump(doc(tmp_path, "0.0.0.0", http={"listen": "0.0.0.0:0"})))
    assert [where for where, _ in config.exposed_endpoints()] == ["broker.clients", "http.listen"]
    assert config.allow_insecure_remote is False
    assert parse_config(yaml.safe_dump(doc(tmp_path))).exposed_endpoints() == []
    with pytest.raises(ConfigError, match="allow_insecure_remote: must be true or false"):
        parse_config(yaml.safe_dump(doc(tmp_path, allow_insecure_remote="yes please")))


def test_a_server_off_loopback_refuses_to_start_without_the_override(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc(tmp_path, "0.0.0.0")))
    for argv in (["broker"], ["node", "--name", "s0a"], ["up"]):
        done = subprocess.run(
            [sys.executable, "-m", "zkv", *argv, "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, done.stderr
        assert "broker.clients is tcp://0.0.0.0:" in lines[0]
        assert "allow_insecure_remote: true" in lines[0]


def test_the_override_starts_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc(tmp_path, "0.0.0.0", allow_insecure_remote=True)))
    ready = tmp_path / "broker.ready"
    log = tmp_path / "broker.log"
    with open(log, "wb") as out:
        argv = ["broker", "--config", str(path), "--ready-file", str(ready)]
        broker = subprocess.Popen(
            [sys.executable, "-m", "zkv", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert broker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the broker did not start"
            time.sleep(0.05)
        assert "off loopback, without encryption" in log.read_text()
    finally:
        broker.terminate()
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(broker.pid, 9)
            broker.wait(10)


# ------------------------------------------------------------------ keygen --config


def secure_config(tmp_path: Path, **security: Any) -> Path:
    """A one-node cluster file with a security section whose keys are in tmp_path/keys."""
    section: dict[str, Any] = {"keys": str(tmp_path / "keys"), "clients": ["admin", "gateway"]}
    section.update(security)
    path = tmp_path / "secure.yaml"
    path.write_text(yaml.safe_dump(doc(tmp_path, security=section)))
    return path


def test_keygen_config_writes_every_key_the_file_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = secure_config(tmp_path)
    assert zkv_main(["keygen", "--config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and all(line.startswith("created ") for line in out)
    keys = tmp_path / "keys"
    for name in ("broker", "s0a", "admin", "gateway"):
        assert (keys / f"{name}.key").is_file()
        assert stat.S_IMODE((keys / f"{name}.key_secret").stat().st_mode) == 0o600
    assert zkv_main(["keygen", "--config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and all(line.startswith("kept ") for line in out)


def test_keygen_config_through_python_m_zkv(tmp_path: Path) -> None:
    # the shipped file, as the README runs it: keys land in ./keys of the working directory
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "secure.yaml", tmp_path / "config")
    done = subprocess.run(
        [sys.executable, "-m", "zkv", "keygen", "--config", "config/secure.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("created") == 10  # broker, 6 nodes, admin, app, gateway
    names = ["admin", "app", "broker", "gateway", "s0a", "s0b", "s1a", "s1b", "s2a", "s2b"]
    assert sorted(p.stem for p in (tmp_path / "keys").glob("*.key")) == names


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "{path}", "--out", "{tmp}/k"], "either --config FILE"),
        (["--config", "{path}", "extra"], "either --config FILE"),
        ([], "keygen needs --config FILE"),
        (["--out", "{tmp}/k"], "keygen needs --config FILE"),
        (["--config", "{plain}"], "no security section, so no keys to create"),
        (["--config", "{tmp}/none.yaml"], "no such config file"),
    ],
)
def test_keygen_usage_errors_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(doc(tmp_path)))
    values = {"path": str(secure_config(tmp_path)), "tmp": str(tmp_path), "plain": str(plain)}
    assert zkv_main(["keygen", *(a.format(**values) for a in argv)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "keys").exists() and not (tmp_path / "k").exists()


# ------------------------------------------------------------------ clients from a config


@pytest.fixture
def keyed(tmp_path: Path) -> Path:
    """A secured cluster file whose keys exist."""
    path = secure_config(tmp_path)
    assert zkv_main(["keygen", "--config", str(path)]) == 0
    return path


@pytest.mark.usefixtures("capsys")  # keygen's lines
def test_from_config_loads_the_named_clients_keys(keyed: Path, tmp_path: Path) -> None:
    with zkv.Client.from_config(keyed, client="admin", connect_timeout_s=0.1) as kv:
        assert kv.curve == CurveKeys.for_client(parse_config(keyed.read_text(), keyed), "admin")
        assert kv.curve == CurveKeys.load(tmp_path / "keys" / "admin.key_secret")
        assert "secret" not in repr(kv.curve)  # the secret key is never printed
    explicit = CurveKeys.load(tmp_path / "keys" / "gateway.key_secret")
    with zkv.Client.from_config(keyed, curve=explicit) as kv:
        assert kv.curve is explicit


@pytest.mark.usefixtures("capsys")
async def test_async_from_config_loads_the_named_clients_keys(keyed: Path, tmp_path: Path) -> None:
    async with zkv.AsyncClient.from_config(keyed, client="gateway") as kv:
        assert kv.curve == CurveKeys.load(tmp_path / "keys" / "gateway.key_secret")
    with pytest.raises(ConfigError, match="pass client=NAME"):
        zkv.AsyncClient.from_config(keyed)


@pytest.mark.usefixtures("capsys")
@pytest.mark.parametrize("face", [zkv.Client, zkv.AsyncClient])
def test_from_config_errors(face: Any, keyed: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        face.from_config(keyed)
    assert str(info.value) == (
        f"{keyed}: has a security section: pass client=NAME (one of security.clients: "
        "admin, gateway) to connect with that client's key, or curve=CurveKeys.load(FILE)"
    )
    with pytest.raises(ConfigError, match=r"'app' is not in security.clients \(admin, gateway\)"):
        face.from_config(keyed, client="app")
    with pytest.raises(TypeError, match="not both"):
        face.from_config(
            keyed, client="admin", curve=CurveKeys.load(tmp_path / "keys" / "admin.key_secret")
        )
    (tmp_path / "keys" / "admin.key_secret").unlink()
    with pytest.raises(ConfigError) as info:
        face.from_config(keyed, client="admin")
    message = str(info.value)
    assert str(tmp_path / "keys" / "admin.key_secret") in message
    assert "zkv keygen --config" in message
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(doc(tmp_path)))
    with pytest.raises(ConfigError, match="has no security section"):
        face.from_config(plain, client="admin")


@pytest.mark.usefixtures("capsys")
def test_a_readable_secret_key_is_refused(keyed: Path, tmp_path: Path) -> None:
    secret = tmp_path / "keys" / "admin.key_secret"
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        zkv.Client.from_config(keyed, client="admin")


# ------------------------------------------------------------------ the CLI's --key


def test_cli_needs_a_key_for_a_secured_config(
    keyed: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ZKV_KEY", raising=False)
    monkeypatch.delenv("ZKV_SERVER_KEY", raising=False)
    capsys.readouterr()
    assert zkv_main(["count", "--config", str(keyed)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"zkv: {keyed} has a security section: pass --key FILE (or set ZKV_KEY) with a "
        f"client's secret key, e.g. {tmp_path / 'keys' / 'admin.key_secret'}\n"
    )
    missing = tmp_path / "keys" / "nobody.key_secret"
    for argv in (["--key", str(missing)], []):
        if not argv:
            monkeypatch.setenv("ZKV_KEY", str(missing))
        assert zkv_main(["get", "a", "--config", str(keyed), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{missing}: no such key file" in err, err
        assert "zkv keygen --config" in err
    monkeypatch.delenv("ZKV_KEY")
    assert zkv_main(["status", "--server-key", str(missing), "--connect", "127.0.0.1:1"]) == 2
    assert "--server-key needs --key FILE" in capsys.readouterr().err


def test_cli_key_with_a_plain_config_is_a_usage_error(
    keyed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(doc(tmp_path)))
    key = tmp_path / "keys" / "admin.key_secret"
    capsys.readouterr()
    assert zkv_main(["count", "--config", str(plain), "--key", str(key)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"zkv: {plain} has no security section (its links are not encrypted): drop --key\n"
    )


# ------------------------------------------------------------------ the handshake


class CurveBroker:
    """A CURVE ROUTER holding the broker's key (admitting any CURVE client: no ZAP) that
    answers every GET with ``value``, in a thread that owns the socket until ``close()``."""

    def __init__(self, keys: Path, value: Any) -> None:
        self.value = value
        self.served = 0
        self._stop = threading.Event()
        self._secret = zmq.auth.load_certificate(keys / "broker.key_secret")[1]
        self._bound = threading.Event()
        self.endpoint = ""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._bound.wait(10)

    def _serve(self) -> None:
        sock = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self._secret)
        try:
            self.endpoint = f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"
            self._bound.set()
            while not self._stop.is_set():
                if not sock.poll(20):
                    continue
                identity, *frames = sock.recv_multipart()
                request = protocol.decode_request(frames)
                reply = protocol.encode_reply(request.seq, protocol.pack_value(self.value))
                sock.send_multipart([identity, *reply])
                self.served += 1
        finally:
            sock.close(linger=0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def curve_broker(keyed: Path, tmp_path: Path) -> Iterator[CurveBroker]:
    broker = CurveBroker(tmp_path / "keys", ["secret", 1])
    yield broker
    broker.close()


def test_client_completes_the_curve_handshake(curve_broker: CurveBroker, tmp_path: Path) -> None:
    admin = CurveKeys.load(tmp_path / "keys" / "admin.key_secret")
    with zkv.Client(curve_broker.endpoint, curve=admin) as kv:
        assert kv.get("k") == ["secret", 1]
    assert curve_broker.served == 1


async def test_async_client_completes_the_curve_handshake(
    curve_broker: CurveBroker, tmp_path: Path
) -> None:
    app = CurveKeys.load(tmp_path / "keys" / "gateway.key_secret")
    async with zkv.AsyncClient(curve_broker.endpoint, curve=app) as kv:
        assert await kv.get("k") == ["secret", 1]
    assert curve_broker.served == 1


def test_a_plain_text_client_gets_no_answer_from_a_curve_broker(
    curve_broker: CurveBroker,
) -> None:
    plain = zkv.Client(curve_broker.endpoint, timeout_s=0.3, connect_timeout_s=0.3)
    with plain as kv, pytest.raises(zkv.TransportError):
        kv.get("k")
    assert curve_broker.served == 0


def test_cli_key_reaches_a_curve_broker(
    curve_broker: CurveBroker,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = tmp_path / "keys" / "admin.key_secret"
    capsys.readouterr()
    assert zkv_main(["get", "k", "--connect", curve_broker.endpoint, "--key", str(key)]) == 0
    assert capsys.readouterr().out == '["secret", 1]\n'
    config = doc(tmp_path, security={"keys": str(tmp_path / "keys"), "clients": ["gateway"]})
    config["broker"]["clients"] = curve_broker.endpoint
    path = tmp_path / "at-the-broker.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("ZKV_KEY", str(tmp_path / "keys" / "gateway.key_secret"))
    assert zkv_main(["exists", "k", "--config", str(path)]) == 0
    assert capsys.readouterr().out == "1\n"
    assert curve_broker.served == 2
