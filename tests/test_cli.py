"""The `zkv` command's data commands and exit codes, against a real cluster."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, ttl_left

from zkv.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_put_get_del_keys(cluster: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ep = ["--connect", cluster.endpoint]
    assert run(capsys, "put", "cli:a", "hello", *ep)[0] == 0
    code, out, _ = run(capsys, "get", "cli:a", *ep)
    assert (code, json.loads(out)) == (0, "hello")
    assert run(capsys, "put", "cli:j", '{"n": [1, 2.5, null]}', "--json", *ep)[0] == 0
    code, out, _ = run(capsys, "get", "cli:j", *ep)
    assert json.loads(out) == {"n": [1, 2.5, None]}
    assert run(capsys, "put", "cli:num", "42", *ep)[0] == 0
    assert json.loads(run(capsys, "get", "cli:num", *ep)[1]) == "42"  # a string without --json
    code, out, _ = run(capsys, "keys", "cli:", *ep)
    assert code == 0
    assert sorted(out.split()) == ["cli:a", "cli:j", "cli:num"]
    assert run(capsys, "del", "cli:a", *ep)[0] == 0
    code, out, err = run(capsys, "get", "cli:a", *ep)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "not found" in err
    code, _, err = run(capsys, "del", "cli:a", *ep)
    assert code == 1 and "not found" in err


def test_put_with_ttl(cluster: Any, capsys: pytest.CaptureFixture[str]) -> None:
    since = time.monotonic()
    assert run(capsys, "put", "cli:ttl", "v", "--ttl", "60", "--connect", cluster.endpoint)[0] == 0
    import zkv

    with zkv.Client(cluster.endpoint) as kv:
        ttl = kv.ttl("cli:ttl")
    assert ttl_left(ttl, 60, since), ttl


def test_config_option_and_status(cluster: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "status", "--config", str(cluster.config))
    assert code == 0
    lines = out.splitlines()
    assert "NAME" in lines[1] and "ROLE" in lines[1] and "SLOTS" in lines[1]
    for name in ("s0a", "s1a", "s2a"):
        assert any(line.startswith(name) and "primary" in line for line in lines)


def test_usage_errors_exit_2(cluster: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "put", "only-key", "--connect", cluster.endpoint)[0] == 2
    code, _, err = run(capsys, "put", "k", "{bad", "--json", "--connect", cluster.endpoint)
    assert code == 2 and "not valid JSON" in err
    code, _, err = run(capsys, "put", "k", "v", "--ttl", "0", "--connect", cluster.endpoint)
    assert code == 2 and "ttl" in err
    assert run(capsys)[0] == 2


def test_bad_config_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("shards:\n  s0: [{name: a, publish: 'udp://x', sync: 'tcp://127.0.0.1:1'}]\n")
    code, _, err = run(capsys, "get", "k", "--config", str(bad))
    assert code == 2
    assert err == f"zkv: {bad}: shards.s0[0].publish: not a tcp:// endpoint (tcp://HOST:PORT)\n"
    code, _, err = run(capsys, "get", "k", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "no such config file" in err and err.count("\n") == 1


def test_unavailable_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "get", "k", "--connect", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.3"
    )
    assert code == 3
    assert err.startswith("zkv: cluster unavailable") and err.count("\n") == 1


def test_entry_points_run(cluster: Any) -> None:
    for argv in (["zkv"], [sys.executable, "-m", "zkv"]):
        if argv == ["zkv"]:
            exe = Path(sys.executable).with_name("zkv")
            if not exe.exists():
                continue
            argv = [str(exe)]
        done = subprocess.run(
            [*argv, "get", "cli:none", "--connect", cluster.endpoint],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 1, done.stderr
        assert "not found" in done.stderr


def test_bench_prints_a_table_and_json(cluster: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "bench",
        "--connect",
        cluster.endpoint,
        "--seconds",
        "0.5",
        "--keys",
        "200",
        "--threads",
        "2",
        "--pipeline",
        "10",
        "--json",
    )
    assert code == 0
    result = json.loads(out)["result"]
    assert result["ops"] > 0
    assert result["errors"] == 0
    assert result["ops"] == result["requests"] * 10
    assert 0 < result["p50_us"] <= result["p99_us"] <= result["max_us"]
    code, out, _ = run(
        capsys,
        "bench",
        "--connect",
        cluster.endpoint,
        "--seconds",
        "0.3",
        "--keys",
        "100",
        "--workload",
        "mixed",
    )
    assert code == 0
    assert "ops/s" in out and "p99.9 us" in out
    assert run(capsys, "bench", "--connect", cluster.endpoint, "--threads", "0")[0] == 2
