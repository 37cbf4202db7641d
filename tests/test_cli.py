"""The `zkv` command's data commands and exit codes, against a real cluster."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, ttl_left

import zkv
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
    assert run(capsys, "put", "cli:a", "hello", *ep)[:2] == (0, "OK\n")
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
    assert run(capsys, "del", "cli:a", *ep)[:2] == (0, "1\n")
    code, out, err = run(capsys, "get", "cli:a", *ep)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "not found" in err
    assert run(capsys, "del", "cli:a", *ep)[:2] == (0, "0\n")  # as redis-cli: how many


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


def test_unreachable_cluster_exit_3_within_about_a_second(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    for endpoint, timeout in (
        (f"tcp://127.0.0.1:{port}", []),
        (f"127.0.0.1:{port}", ["--timeout", "0.3"]),
    ):
        started = time.monotonic()
        code, out, err = run(capsys, "get", "k", "--connect", endpoint, *timeout)
        assert time.monotonic() - started < 2.5
        assert (code, out) == (3, "")
        assert err == (
            f"zkv: cannot reach the cluster at tcp://127.0.0.1:{port} (is it running? start it "
            "with `zkv up`, or point --connect at it)\n"
        )


def test_bad_endpoint_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("nonsense", "tcp://127.0.0.1", "127.0.0.1:99999", "udp://h:1"):
        code, _, err = run(capsys, "get", "k", "--connect", bad)
        assert code == 2, bad
        assert err.startswith(f"zkv: bad endpoint {bad!r}") and err.count("\n") == 1, err


def test_values_and_keys_starting_with_a_dash(
    cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ep = ["--connect", cluster.endpoint.removeprefix("tcp://")]  # HOST:PORT works too
    assert run(capsys, "put", "cli:dash", "-x", *ep)[:2] == (0, "OK\n")
    assert run(capsys, "get", "cli:dash", *ep)[:2] == (0, '"-x"\n')
    assert run(capsys, "put", "-k", "--v", *ep)[:2] == (0, "OK\n")
    assert run(capsys, *ep, "get", "-k")[:2] == (2, "")  # options come after the command
    assert run(capsys, "get", "-k", *ep)[:2] == (0, '"--v"\n')
    assert run(capsys, "put", "cli:dd", *ep, "--", "-y")[:2] == (0, "OK\n")
    assert run(capsys, "get", "cli:dd", *ep)[:2] == (0, '"-y"\n')
    assert run(capsys, "put", "cli:neg", "-5", "--json", *ep)[0] == 0
    assert run(capsys, "get", "cli:neg", *ep)[:2] == (0, "-5\n")


def test_data_commands(cluster: Any, capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    ep = ["--connect", cluster.endpoint]
    assert run(capsys, "put", "cli:m1", "one", *ep)[0] == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin\n"))
    assert run(capsys, "put", "cli:m2", "-", *ep)[:2] == (0, "OK\n")
    code, out, err = run(capsys, "get", "cli:m1", "cli:nope", "cli:m2", *ep)
    assert (code, out) == (1, '"one"\n\n"from stdin"\n')
    assert "cli:nope" in err and "not found" in err
    assert run(capsys, "get", "cli:m1", "cli:m2", *ep)[:2] == (0, '"one"\n"from stdin"\n')
    assert run(capsys, "del", "cli:m1", "cli:m2", "cli:nope", *ep)[:2] == (0, "2\n")

    assert run(capsys, "create", "cli:c", "v", *ep)[:2] == (0, "OK\n")
    code, _, err = run(capsys, "create", "cli:c", "w", *ep)
    assert code == 2 and "exists" in err
    assert run(capsys, "put", "cli:n", "1", "--json", *ep)[0] == 0
    assert run(capsys, "cas", "cli:n", "1", "2", "--json", *ep)[:2] == (0, "OK\n")
    assert run(capsys, "cas", "cli:n", "1", "3", "--json", *ep)[0] == 1
    assert run(capsys, "get", "cli:n", *ep)[1] == "2\n"

    assert run(capsys, "mput", '{"cli:x": 1, "cli:y": [true, null]}', *ep)[:2] == (0, "OK\n")
    monkeypatch.setattr("sys.stdin", io.StringIO('{"cli:z": {"$b64": "/w=="}}'))
    assert run(capsys, "mput", *ep)[:2] == (0, "OK\n")
    assert run(capsys, "get", "cli:y", "cli:z", *ep)[1] == '[true, null]\n{"$b64": "/w=="}\n'
    assert run(capsys, "mput", "[1]", *ep)[0] == 2

    assert run(capsys, "exists", "cli:x", *ep)[:2] == (0, "1\n")
    assert run(capsys, "exists", "cli:nope", *ep)[:2] == (1, "0\n")
    assert run(capsys, "ttl", "cli:x", *ep)[:2] == (0, "-1\n")
    assert run(capsys, "ttl", "cli:nope", *ep)[0] == 1
    assert run(capsys, "expire", "cli:x", "100", *ep)[:2] == (0, "OK\n")
    assert 99 < float(run(capsys, "ttl", "cli:x", *ep)[1]) <= 100
    assert run(capsys, "expire", "cli:nope", "100", *ep)[0] == 1
    code, out, _ = run(capsys, "count", *ep)
    assert code == 0 and int(out) >= 5

    code, out, _ = run(capsys, "keys", "cli:", "--limit", "2", *ep)
    assert code == 0 and len(out.splitlines()) == 2
    with zkv.Client(cluster.endpoint) as kv:
        kv[b"cli:\xff"] = 1
    code, out, _ = run(capsys, "keys", "cli:", *ep)
    assert '{"$b64": "Y2xpOv8="}' in out.splitlines()

    code, _, err = run(capsys, "put", "cli:j", "NaN", "--json", *ep)
    assert code == 2 and "NaN is not JSON" in err and err.count("\n") == 1
    assert run(capsys, "put", "cli:j", "1e999", "--json", *ep)[0] == 2

    code, out, _ = run(capsys, "status", "--json", *ep)
    assert code == 0 and {n["name"] for n in json.loads(out)["nodes"]} >= {"s0a", "s1a"}

    code, _, err = run(capsys, "clear", *ep)  # stdin is not a terminal here
    assert code == 2 and "--yes" in err
    assert run(capsys, "exists", "cli:y", *ep)[0] == 0


def test_clear_yes(cluster_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    c = cluster_factory({"s0": ["s0a"]})
    with c.client() as kv:
        kv.mput({f"k{i}": i for i in range(10)})
    assert run(capsys, "clear", "--yes", "--connect", c.endpoint)[:2] == (0, "OK\n")
    assert run(capsys, "count", "--connect", c.endpoint)[:2] == (0, "0\n")


def test_broken_pipe_is_quiet(cluster: Any) -> None:
    with zkv.Client(cluster.endpoint) as kv:
        kv.mput({f"cli:pipe:{i:06}": i for i in range(6000)})
    for command in (["keys", "cli:pipe:"], ["status"]):
        with subprocess.Popen(
            [sys.executable, "-m", "zkv", *command, "--connect", cluster.endpoint],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            assert proc.stdout.readline()
            proc.stdout.close()  # as `| head -1` does
            err = proc.stderr.read().decode()
            code = proc.wait(timeout=30)
        assert err == "", err
        assert code in (0, 141)


def test_config_discovery(
    cluster: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("ZKV_CONFIG", raising=False)
    code, _, err = run(capsys, "count")
    assert code == 2 and err.count("\n") == 1
    assert "$ZKV_CONFIG" in err and "./config/local.yaml" in err
    assert str(tmp_path / ".config/zkv/config.yaml") in err
    user = tmp_path / ".config" / "zkv" / "config.yaml"
    user.parent.mkdir(parents=True)
    user.write_text(Path(cluster.config).read_text())
    assert run(capsys, "count")[0] == 0  # ~/.config/zkv/config.yaml
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "local.yaml").write_text("cluster: [")
    assert run(capsys, "count")[0] == 2  # ./config/local.yaml comes first, and is bad
    monkeypatch.setenv("ZKV_CONFIG", str(cluster.config))
    assert run(capsys, "count")[0] == 0  # $ZKV_CONFIG before it
    code, _, err = run(capsys, "count", "--config", str(tmp_path / "none.yaml"))
    assert code == 2 and "no such config file" in err


def test_check_missing_folder_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check", "--data", str(tmp_path / "nosuch"))
    assert (code, out) == (2, "")
    assert err == f"zkv: {tmp_path / 'nosuch'}: no such folder\n"


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
    code, out, _ = run(  # 16 operations at once on one AsyncClient
        capsys, "bench", "--connect", cluster.endpoint, "--seconds", "0.3", "--keys", "100",
        "--concurrency", "16", "--json",
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)["result"]
    assert result["ops"] == result["requests"] > 0 and result["errors"] == 0
    assert json.loads(out)["config"]["concurrency"] == 16
    with zkv.Client(cluster.endpoint) as kv:
        assert list(kv.keys("bench:")) == []  # removed at the end
    code, out, err = run(
        capsys, "bench", "--connect", cluster.endpoint, "--seconds", "0.6", "--keys", "50", "--keep"
    )
    assert code == 0 and "\r" not in err  # stderr is not a terminal: no progress line
    with zkv.Client(cluster.endpoint) as kv:
        assert len(list(kv.keys("bench:"))) == 50
    assert run(capsys, "bench", "--connect", cluster.endpoint, "--threads", "0")[0] == 2


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_clear_asks_on_a_terminal(
    cluster: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ep = ["--connect", cluster.endpoint]
    assert run(capsys, "put", "cli:keep", "v", *ep)[0] == 0
    monkeypatch.setattr("sys.stdin", _Terminal("n\n"))
    code, out, _ = run(capsys, "clear", *ep)
    assert code == 0 and "delete all" in out and "[y/N]" in out and "not cleared" in out
    assert run(capsys, "exists", "cli:keep", *ep)[0] == 0


def test_status_watch_refreshes_until_ctrl_c(
    cluster: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("zkv.cli.ops._watch_sleep", sleep)
    code, out, _ = run(
        capsys, "status", "--watch", "--interval", "0.5", "--connect", cluster.endpoint
    )
    assert code == 0 and sleeps == [0.5, 0.5]
    assert out.count("NAME") == 2 and out.count("every 0.5 s, Ctrl-C stops") == 2
    assert "\x1b[" not in out  # not a terminal: no screen clearing


def test_status_shows_the_slot_map_version_and_a_reshard_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The header's slot map version, each primary's SLOTS, and one line on the reshard
    (in progress, between moves, done, stopped). A made-up status: no cluster."""
    node = {"role": "primary", "alive": True, "state": "serving", "pid": 7, "keys": 10}
    moving: dict[str, Any] = {
        "slots_total": 5461,
        "slots_done": 1792,
        "keys_copied": 2207,
        "moves_left": 12,
        "current": {
            "slots": "1792-1919",
            "from": "s0",
            "to": "s3",
            "phase": "copy",
            "keys": 31,
            "attempts": 0,
        },
        "failed": None,
        "longest_hold_ms": 1.2,
        "held": 0,
    }
    status: dict[str, Any] = {
        "cluster": "test",
        "slots": 16384,
        "slot_map_version": 7,
        "reshard": moving,
        "broker": {"pid": 1, "clients": "tcp://127.0.0.1:7400"},
        "nodes": [
            {**node, "name": "s0a", "shard": "s0", "slots": 3669, "slot_ranges": "1920-5460"},
            {**node, "name": "s0b", "shard": "s0", "role": "replica", "slots": 0},
            {**node, "name": "s3a", "shard": "s3", "slots": 1792, "slot_ranges": "0-1791"},
        ],
    }

    class FakeClient:
        def cluster_status(self) -> dict[str, Any]:
            return status

    monkeypatch.setattr(zkv.cli, "_client", lambda args: FakeClient())

    def status_lines() -> list[str]:
        code, out, _ = run(capsys, "status", "--connect", "tcp://127.0.0.1:1")
        assert code == 0
        return out.splitlines()

    lines = status_lines()
    assert lines[0] == (
        "cluster test: 16384 slots, slot map version 7, broker pid 1, "
        "clients at tcp://127.0.0.1:7400"
    )
    start = lines[1].index("SLOTS")
    slots = {line.split()[0]: line[start:].split()[0] for line in lines[2:5]}
    assert slots == {"s0a": "3669", "s0b": "0", "s3a": "1792"}  # a shard's, on its primary
    assert lines[5:] == [
        "reshard: 1792/5461 slots moved (12 moves left), 2,207 keys copied, "
        "now slots 1792-1919 s0 -> s3 (copy), longest hold 1.2 ms"
    ]

    # the switch of a second attempt, holding requests; then between two moves
    moving["current"].update(phase="final", attempts=1)
    moving.update(held=3, moves_left=1)
    assert status_lines()[5:] == [
        "reshard: 1792/5461 slots moved (1 move left), 2,207 keys copied, now slots "
        "1792-1919 s0 -> s3 (final, attempt 2), longest hold 1.2 ms, 3 requests held"
    ]
    moving.update(current=None, held=0, moves_left=11, longest_hold_ms=0.0)
    assert status_lines()[5:] == [
        "reshard: 1792/5461 slots moved (11 moves left), 2,207 keys copied, longest hold 0.0 ms"
    ]

    moving.update(slots_done=5461, moves_left=0)
    assert status_lines()[5:] == ["reshard: done, 5461 slots moved"]

    why = "moving slots 1792-1919 from s0 to s3 failed 3 times; the reshard stopped"
    moving.update(slots_done=1792, failed=why)
    assert status_lines()[5:] == [f"reshard: stopped: {why}"]

    # no reshard since the broker started: no line; --json has every field as it is
    status["reshard"] = None
    assert len(status_lines()) == 5
    code, out, _ = run(capsys, "status", "--json", "--connect", "tcp://127.0.0.1:1")
    assert code == 0 and json.loads(out) == status


def test_completion_scripts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, script, _ = run(capsys, "completion", "bash")
    assert code == 0
    (tmp_path / "zkv.bash").write_text(script)
    probe = (
        f"source {tmp_path / 'zkv.bash'}\n"
        'COMP_WORDS=(zkv pu); COMP_CWORD=1; _zkv; echo "${COMPREPLY[*]}"\n'
        'COMP_WORDS=(zkv put k v --j); COMP_CWORD=4; _zkv; echo "${COMPREPLY[*]}"\n'
        'COMP_WORDS=(zkv status --w); COMP_CWORD=2; _zkv; echo "${COMPREPLY[*]}"\n'
    )
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["put", "--json", "--watch"]
    code, script, _ = run(capsys, "completion", "zsh")
    assert code == 0 and script.startswith("#compdef zkv") and "'put:set a key" in script
    if shutil.which("zsh"):
        (tmp_path / "_zkv").write_text(script)
        done = subprocess.run(["zsh", "-n", str(tmp_path / "_zkv")], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert run(capsys, "completion", "fish")[0] == 2


def test_every_command_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    from zkv.cli import _parser

    parser = _parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sub in subparsers.choices.items():
        if "example" not in sub.format_help():
            missing.append(name)
    assert missing == []
