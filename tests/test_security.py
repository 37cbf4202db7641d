"""Security, the first steps: CURVE key pairs (`zkv keygen`) and loopback-only without keys."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq.auth
from conftest import cluster_doc, free_port

from zkv.cli import main as zkv_main
from zkv.config import is_loopback, parse_config
from zkv.errors import ConfigError

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
