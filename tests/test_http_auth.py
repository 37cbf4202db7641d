"""The HTTP gateway over TLS with bearer tokens: 401, 403 and 200 by token, and SIGHUP.

One secured cluster (one shard) and one ``zkv http`` process for the module, serving HTTPS
with a certificate of a test CA (trustme) and asking for tokens of each role. Requests go
over real TLS connections that trust only that CA. The route -> operation mapping is also
checked without a cluster: the app refuses before it asks one, so a dead endpoint serves.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml
from aiohttp.test_utils import TestServer
from conftest import Cluster, Proc

import zkv
from zkv.access import ClientRole
from zkv.cli import main
from zkv.config import TokenConfig, load_config
from zkv.http import create_app
from zkv.http.auth import Tokens

pytestmark = pytest.mark.timeout(60)

#: The shards of a config file that no process runs (start-up errors, ``zkv token``).
SHARDS = {"s0": [{"name": "s0a", "publish": "tcp://127.0.0.1:0", "sync": "tcp://127.0.0.1:0"}]}

#: name -> (role, prefixes)
GRANTS: dict[str, tuple[str, list[str]]] = {
    "reader": ("read", []),
    "writer": ("write", ["app:"]),
    "admin": ("admin", []),
    "doomed": ("read", []),
}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_entries(tokens: dict[str, str]) -> dict[str, Any]:
    """``http.tokens`` for ``tokens`` (name -> token text), with ``GRANTS``' roles."""
    entries = {}
    for name, token in tokens.items():
        role, prefixes = GRANTS.get(name, ("read", []))
        entries[name] = {"sha256": digest(token), "role": role, "prefixes": prefixes}
    return entries


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any


@dataclass
class Gateway:
    """The cluster, the ``zkv http`` process serving it over TLS, and the tokens it knows."""

    cluster: Cluster
    proc: Proc
    url: str
    config: Path
    doc: dict[str, Any]
    tls: ssl.SSLContext
    ca: trustme.CA
    tmp: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def call(
        self, method: str, path: str, token: str | None = None, body: Any = ..., name: str = ""
    ) -> Reply:
        """One request on a new TLS connection; ``name`` picks a token of ``tokens``."""
        if name:
            token = self.tokens[name]
        headers = {}
        data = None
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if body is not ...:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.tls) as r:
                return Reply(r.status, _parse(r.read(), r.headers), r.headers)
        except urllib.error.HTTPError as e:
            return Reply(e.code, _parse(e.read(), e.headers), e.headers)

    def write_config(self, tokens: dict[str, str], **http: Any) -> None:
        """Rewrite the gateway's config file with ``tokens`` (and other http settings,
        ``entries`` for raw ``http.tokens``)."""
        doc = json.loads(json.dumps(self.doc))
        doc["http"]["tokens"] = http.pop("entries", None) or token_entries(tokens)
        doc["http"].update(http)
        self.config.write_text(yaml.safe_dump(doc))

    def log(self) -> str:
        return self.proc.log_file.read_text(errors="replace")


def _parse(raw: bytes, headers: Any) -> Any:
    if (headers.get("Content-Type") or "").startswith("application/json"):
        return json.loads(raw)
    return raw.decode(errors="replace")


def error_code(reply: Reply) -> str:
    assert set(reply.body) == {"error"}, reply.body
    code: str = reply.body["error"]["code"]
    assert reply.body["error"]["message"]
    return code


def write_cert(ca: trustme.CA, tmp: Path, stem: str) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp / f"{stem}.pem", tmp / f"{stem}.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_file))
    return cert_file, key_file


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("https")
    ca = trustme.CA()
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert_file, key_file = write_cert(ca, tmp, "gateway")
    tokens = {name: secrets.token_urlsafe(32) for name in GRANTS}
    http_doc = {
        "listen": "127.0.0.1:0",
        "client": "gateway",
        "tls": {"cert": str(cert_file), "key": str(key_file)},
        "tokens": token_entries(tokens),
    }
    c = Cluster(
        tmp,
        {"s0": ["s0a"]},
        security={"keys": str(tmp / "keys"), "clients": ["admin", "gateway"]},
        http=http_doc,
    )
    try:
        doc = json.loads(json.dumps(c.doc))
        config = tmp / "http.yaml"  # the gateway's own copy, rewritten by the SIGHUP test
        config.write_text(yaml.safe_dump(doc))
        proc = Proc(
            "http",
            [sys.executable, "-m", "zkv", "http", "--config", str(config)],
            tmp / "http.ready.json",
            tmp / "http.log",
        )
        c.procs["http"] = proc  # stopped by PID with the cluster
        proc.start()
        info = proc.wait_ready()
        assert info["url"].startswith("https://"), info
        tls = ssl.create_default_context(cafile=str(ca_file))
        yield Gateway(c, proc, info["url"], config, doc, tls, ca, tmp, tokens)
    finally:
        c.stop()


# --------------------------------------------------------------------------- 401


def test_no_token_or_an_unknown_one_is_401(gw: Gateway) -> None:
    for token in [None, "wrong", secrets.token_urlsafe(32)]:
        for method, path in [("GET", "/api/kv/k"), ("GET", "/get?key=k"), ("GET", "/api/status")]:
            reply = gw.call(method, path, token)
            assert reply.status == 401, (token, path, reply.body)
            assert error_code(reply) == "Unauthorized"
            assert reply.headers["WWW-Authenticate"] == 'Bearer realm="zkv"'
    # another scheme, or the token's digest instead of the token: 401 all the same
    request = urllib.request.Request(
        gw.url + "/api/kv/k", headers={"Authorization": f"Basic {gw.tokens['admin']}"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10, context=gw.tls)
    assert refused.value.code == 401
    assert gw.call("GET", "/api/kv/k", digest(gw.tokens["admin"])).status == 401
    # a write without a token changes nothing
    assert gw.call("PUT", "/api/kv/app:nope", None, 1).status == 401
    assert gw.call("GET", "/api/kv/app:nope", name="admin").status == 404
    # the page, its files and the OpenAPI document hold no data: open to all
    for path in ["/", "/static/status.js", "/openapi.json"]:
        assert gw.call("GET", path).status == 200, path
    doc = gw.call("GET", "/openapi.json").body
    assert doc["components"]["securitySchemes"]["bearerToken"]["scheme"] == "bearer"
    get = doc["paths"]["/api/kv/{key}"]["get"]
    assert get["security"] == [{"bearerToken": []}] and {"401", "403"} <= set(get["responses"])
    assert doc["paths"]["/"]["get"]["security"] == []


def test_metrics_need_a_token(gw: Gateway) -> None:
    assert gw.call("GET", "/metrics").status == 401
    reply = gw.call("GET", "/metrics", name="reader")
    assert reply.status == 200 and "zkv_http_requests_total" in reply.body
    assert 'outcome="Unauthorized"' in reply.body


def test_plain_http_to_the_tls_port_fails(gw: Gateway) -> None:
    plain = gw.url.replace("https://", "http://")
    with pytest.raises((OSError, http.client.HTTPException)):
        urllib.request.urlopen(plain + "/api/status", timeout=10)
    # and a client that does not trust the test CA refuses the certificate
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(gw.url + "/", timeout=10, context=ssl.create_default_context())


# --------------------------------------------------------------------------- roles


def test_a_read_token_reads_and_writes_nothing(gw: Gateway) -> None:
    assert gw.call("PUT", "/api/kv/r:k", body={"v": 1}, name="admin").status == 200
    reply = gw.call("GET", "/api/kv/r:k", name="reader")
    assert (reply.status, reply.body) == (200, {"key": "r:k", "value": {"v": 1}})
    assert gw.call("GET", "/get?key=r:k", name="reader").status == 200
    assert gw.call("POST", "/api/kv/mget", body={"keys": ["r:k"]}, name="reader").status == 200
    assert gw.call("GET", "/api/kv?prefix=r:", name="reader").body["keys"] == ["r:k"]
    status = gw.call("GET", "/api/status", name="reader")
    assert status.status == 200 and [n["name"] for n in status.body["nodes"]] == ["s0a"]
    for method, path, body in [
        ("PUT", "/api/kv/r:k", 2),
        ("POST", "/api/kv", {"key": "r:k", "value": 2}),
        ("POST", "/api/kv", {"key": "r:new", "value": 2, "create": True}),
        ("POST", "/put", {"key": "r:k", "value": 2}),
        ("POST", "/set", {"key": "r:k", "value": 2}),
        ("POST", "/api/kv/batch", {"items": {"r:k": 2}}),
        ("DELETE", "/api/kv/r:k", ...),
        ("DELETE", "/delete?key=r:k", ...),
    ]:
        reply = gw.call(method, path, body=body, name="reader")
        assert reply.status == 403, (method, path, reply.body)
        assert error_code(reply) == "PermissionDenied"
        assert "read" in reply.body["error"]["message"]
    assert gw.call("GET", "/api/kv/r:k", name="admin").body["value"] == {"v": 1}
    assert gw.call("GET", "/api/kv/r:new", name="admin").status == 404


def test_a_write_token_stays_inside_its_prefix(gw: Gateway) -> None:
    assert gw.call("PUT", "/api/kv/app:x", body=1, name="writer").status == 200
    assert gw.call("GET", "/api/kv/app:x", name="writer").body["value"] == 1
    created = gw.call("POST", "/api/kv", body={"key": "app:y", "value": 2}, name="writer")
    assert created.status == 201
    assert gw.call("DELETE", "/api/kv/app:y", name="writer").status == 200
    assert gw.call("PUT", "/api/kv/other:x", body=1, name="admin").status == 200
    for method, path, body in [
        ("PUT", "/api/kv/other:x", 2),
        ("GET", "/api/kv/other:x", ...),
        ("GET", "/get?key=other:x", ...),
        ("DELETE", "/api/kv/other:x", ...),
        ("POST", "/api/kv", {"key": "other:x", "value": 2}),
        ("POST", "/api/kv/mget", {"keys": ["app:x", "other:x"]}),
        ("GET", "/api/kv?prefix=other:", ...),
        ("GET", "/api/kv", ...),  # every key: wider than app:
        ("GET", "/api/kv?prefix=ap", ...),
    ]:
        reply = gw.call(method, path, body=body, name="writer")
        assert reply.status == 403, (method, path, reply.body)
        assert error_code(reply) == "PermissionDenied"
        assert "app:" in reply.body["error"]["message"]
    # a batch with one key outside: refused whole, the inside key not written
    batch = {"items": {"app:in": 1, "other:out": 2}}
    reply = gw.call("POST", "/api/kv/batch", body=batch, name="writer")
    assert reply.status == 403 and error_code(reply) == "PermissionDenied", reply.body
    assert gw.call("GET", "/api/kv/app:in", name="admin").status == 404
    with gw.cluster.client() as kv:
        assert kv.get("app:in", None) is None and kv.get("other:out", None) is None
        assert kv.get("other:x") == 1
    ok = gw.call("POST", "/api/kv/batch", body={"items": {"app:in": 1}}, name="writer")
    assert ok.status == 200
    listing = gw.call("GET", "/api/kv?prefix=app:", name="writer")
    assert listing.status == 200 and {"app:x", "app:in"} <= set(listing.body["keys"])
    assert gw.call("GET", "/api/status", name="writer").status == 200


def test_an_admin_token_can_do_everything(gw: Gateway) -> None:
    calls = [
        ("POST", "/api/kv", {"key": "adm:a", "value": "x"}, 201),
        ("PUT", "/api/kv/adm:b", [1, 2], 200),
        ("POST", "/api/kv/batch", {"items": {"adm:c": 3, "zz": 4}}, 200),
        ("POST", "/api/kv/mget", {"keys": ["adm:a", "zz"]}, 200),
        ("GET", "/api/kv/adm:b", ..., 200),
        ("GET", "/api/kv?prefix=adm:", ..., 200),
        ("GET", "/api/kv", ..., 200),
        ("DELETE", "/delete?key=zz", ..., 200),
        ("GET", "/api/status", ..., 200),
        ("GET", "/metrics", ..., 200),
    ]
    for method, path, body, status in calls:
        reply = gw.call(method, path, body=body, name="admin")
        assert reply.status == status, (method, path, reply.body)
    assert gw.call("POST", "/api/kv/mget", body={"keys": ["adm:c"]}, name="admin").body == {
        "values": {"adm:c": 3}
    }


# --------------------------------------------------------------------------- SIGHUP


def _peer_cert(gw: Gateway) -> bytes:
    host, port = urllib.parse.urlsplit(gw.url).netloc.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), timeout=10, context=gw.tls)
    try:
        conn.connect()
        assert conn.sock is not None
        cert = conn.sock.getpeercert(binary_form=True)
        assert cert is not None
        return cert
    finally:
        conn.close()


def test_sighup_swaps_tokens_and_certificate_keeping_connections(gw: Gateway) -> None:
    host, port = urllib.parse.urlsplit(gw.url).netloc.rsplit(":", 1)
    keep = http.client.HTTPSConnection(host, int(port), timeout=10, context=gw.tls)
    headers = {"Authorization": f"Bearer {gw.tokens['reader']}"}

    def keep_alive_get() -> int:
        keep.request("GET", "/api/status", headers=headers)
        response = keep.getresponse()
        response.read()
        return response.status

    try:
        assert keep_alive_get() == 200
        sock = keep.sock
        assert gw.call("GET", "/api/status", name="doomed").status == 200
        old_cert = _peer_cert(gw)

        # a file that cannot be used: one log line, the old settings stay
        gw.write_config(gw.tokens, entries={"x": {"sha256": "nope", "role": "read"}})
        os.kill(gw.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "failed, the old settings stay" not in gw.log():
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.05)
        assert "http.tokens.x.sha256" in gw.log()
        assert gw.call("GET", "/api/status", name="doomed").status == 200

        # add "fresh", remove "doomed", and a new certificate (same names, new key)
        fresh = secrets.token_urlsafe(32)
        tokens = {n: t for n, t in gw.tokens.items() if n != "doomed"} | {"fresh": fresh}
        cert_file, key_file = write_cert(gw.ca, gw.tmp, "gateway2")
        gw.write_config(tokens, tls={"cert": str(cert_file), "key": str(key_file)})
        start = time.monotonic()
        os.kill(gw.proc.pid, signal.SIGHUP)
        while True:
            added = gw.call("GET", "/api/status", fresh).status
            removed = gw.call("GET", "/api/status", name="doomed").status
            if (added, removed) == (200, 401):
                break
            assert time.monotonic() - start < 20, (added, removed, gw.log())
            time.sleep(0.05)
        print(f"tokens swapped {time.monotonic() - start:.2f} s after SIGHUP")
        assert f"reloaded {gw.config}: {len(tokens)} tokens" in gw.log()
        gw.tokens = tokens
        new_cert = _peer_cert(gw)
        assert new_cert != old_cert
        assert new_cert == ssl.PEM_cert_to_DER_cert(cert_file.read_text().split("\n\n")[0])

        # the keep-alive connection opened before the reloads still serves, unchanged
        assert keep_alive_get() == 200
        assert keep.sock is sock
    finally:
        keep.close()


# --------------------------------------------------------------------------- start-up errors


def run_http(config: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zkv", "http", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp,
    )


def test_a_bad_certificate_or_key_is_one_line_and_exit_2(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert_file, key_file = write_cert(ca, tmp_path, "good")
    _, other_key = write_cert(ca, tmp_path, "other")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cases = [
        (tmp_path / "missing.pem", key_file, "http.tls.cert"),
        (cert_file, tmp_path / "missing.key", "http.tls.key"),
        (junk, key_file, "PEM"),
        (cert_file, other_key, "KEY_VALUES_MISMATCH"),
    ]
    for cert, key, words in cases:
        doc = {
            "broker": {"clients": "tcp://127.0.0.1:9", "nodes": "tcp://127.0.0.1:9"},
            "storage": {"dir": str(tmp_path / "data")},
            "http": {"listen": "127.0.0.1:0", "tls": {"cert": str(cert), "key": str(key)}},
            "shards": SHARDS,
        }
        config = tmp_path / "bad-tls.yaml"
        config.write_text(yaml.safe_dump(doc))
        done = run_http(config, tmp_path)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("zkv: "), done.stderr
        assert words in lines[0] and "Traceback" not in done.stderr, lines


def test_off_loopback_a_secured_gateway_needs_tls_and_tokens(tmp_path: Path) -> None:
    doc = {
        "broker": {"clients": "tcp://127.0.0.1:9", "nodes": "tcp://127.0.0.1:9"},
        "storage": {"dir": str(tmp_path / "data")},
        "http": {"listen": "0.0.0.0:0", "client": "gateway"},
        "security": {"keys": str(tmp_path / "keys"), "clients": ["gateway"]},
        "shards": SHARDS,
    }
    config = tmp_path / "open.yaml"
    config.write_text(yaml.safe_dump(doc))
    done = run_http(config, tmp_path)
    assert done.returncode == 2, done.stderr
    assert "http.tls" in done.stderr and "http.tokens" in done.stderr, done.stderr
    assert "zkv token" in done.stderr and len(done.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- zkv token


def test_zkv_token_prints_a_token_and_its_config_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["token", "--name", "ci", "--role", "write", "--prefix", "app:"]) == 0
    out = capsys.readouterr().out.splitlines()
    token = out[0]
    assert len(token) >= 40 and token == token.strip()
    assert any("shown once" in line for line in out)
    entry = yaml.safe_load(out[-1])
    assert entry == {"ci": {"sha256": digest(token), "role": "write", "prefixes": ["app:"]}}
    doc = {
        "broker": {"clients": "tcp://127.0.0.1:9", "nodes": "tcp://127.0.0.1:9"},
        "http": {"tokens": yaml.safe_load("\n".join(out[1:]))},
        "shards": SHARDS,
    }
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(doc))
    grant = Tokens(load_config(config).http.tokens).authenticate(f"Bearer {token}")
    assert (grant.name, grant.role.value, grant.prefixes) == ("ci", "write", (b"app:",))
    assert main(["token", "--name", "ci", "--role", "read"]) == 0
    assert capsys.readouterr().out.splitlines()[0] != token  # a new one each time
    assert main(["token", "--name", "no spaces", "--role", "read"]) == 2


# --------------------------------------------------------------------------- the mapping


@pytest.fixture
async def unit() -> AsyncIterator[Any]:
    """The app with tokens over a client of a dead endpoint: refusals need no cluster."""
    tokens = {
        "reader": secrets.token_urlsafe(16),
        "writer": secrets.token_urlsafe(16),
    }
    table = Tokens(
        {
            name: TokenConfig(
                name, digest(token), ClientRole(GRANTS[name][0]), tuple(GRANTS[name][1])
            )
            for name, token in tokens.items()
        }
    )
    async with zkv.AsyncClient("tcp://127.0.0.1:9", timeout_s=0.05) as client:
        server = TestServer(create_app(client, tokens=table), host="127.0.0.1", port=0)
        await server.start_server()
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as session:

            async def call(method: str, path: str, name: str | None, body: Any = ...) -> int:
                headers = {"Authorization": f"Bearer {tokens[name]}"} if name else {}
                data = None if body is ... else json.dumps(body)
                async with session.request(method, path, data=data, headers=headers) as r:
                    await r.read()
                    return r.status

            try:
                yield call
            finally:
                await server.close()


ROUTE_CASES = [
    # (method, path, body, reader's status, writer's (prefix app:) status); 0: passed on
    ("GET", "/api/kv/app:a", ..., 0, 0),
    ("GET", "/api/kv/b", ..., 0, 403),
    ("GET", "/get?key=b", ..., 0, 403),
    ("PUT", "/api/kv/app:a", 1, 403, 0),
    ("PUT", "/api/kv/b", 1, 403, 403),
    ("POST", "/api/kv", {"key": "app:a", "value": 1, "create": True}, 403, 0),
    ("POST", "/set", {"key": "b", "value": 1}, 403, 403),
    ("DELETE", "/api/kv/app:a", ..., 403, 0),
    ("DELETE", "/delete?key=b", ..., 403, 403),
    ("POST", "/api/kv/batch", {"items": {"app:a": 1, "b": 2}}, 403, 403),
    ("POST", "/api/kv/batch", {"items": {"app:a": 1}}, 403, 0),
    ("POST", "/api/kv/mget", {"keys": ["app:a", "b"]}, 0, 403),
    ("POST", "/api/kv/mget", {"keys": ["app:a"]}, 0, 0),
    ("GET", "/api/kv?prefix=app:x", ..., 0, 0),
    ("GET", "/api/kv?prefix=b", ..., 0, 403),
    ("GET", "/api/status", ..., 0, 0),
]


async def test_each_route_is_checked_as_its_operation(unit: Any) -> None:
    for method, path, body, reader, writer in ROUTE_CASES:
        assert await unit(method, path, None, body) == 401, (method, path)
        for name, expected in [("reader", reader), ("writer", writer)]:
            status = await unit(method, path, name, body)
            if expected:
                assert status == expected, (name, method, path)
            else:  # allowed: on to the (dead) cluster
                assert status in (503, 504), (name, method, path, status)
    assert await unit("GET", "/openapi.json", None) == 200
    assert await unit("GET", "/no/such/route", None) == 404


# --------------------------------------------------------------------------- the page


def test_the_status_page_asks_for_a_token(gw: Gateway, tmp_path: Path) -> None:
    """Over HTTPS with tokens: the page asks, the token entered shows the nodes, the form
    says 403 for a read token's put, and "Forget token" asks again."""
    from test_status_page import CHROMEDRIVER, CHROMIUM, _missing_browser, node_rows, wait_until

    reason = _missing_browser()
    if reason is not None:
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.set_capability("acceptInsecureCerts", True)  # the test CA is not the system's
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(10)
        driver.get(gw.url + "/")
        wait_until("the token prompt", lambda: driver.find_element(By.ID, "token").is_displayed())
        assert "token" in driver.find_element(By.ID, "auth-message").text
        field = driver.find_element(By.ID, "token")
        field.send_keys(gw.tokens["reader"])
        driver.find_element(By.ID, "token-use").click()
        wait_until("the node listed", lambda: "s0a" in node_rows(driver))
        assert not driver.find_element(By.ID, "auth").is_displayed()
        stored = driver.execute_script(
            "return [sessionStorage.getItem('zkv.token'), localStorage.length, location.href]"
        )
        assert stored[0] == gw.tokens["reader"] and stored[1] == 0
        assert gw.tokens["reader"] not in stored[2]
        # a read token's put is refused, and the page says so
        driver.find_element(By.ID, "kv-key").send_keys("page:k")
        driver.find_element(By.ID, "kv-value").send_keys("1")
        driver.find_element(By.ID, "kv-put").click()
        text = wait_until(
            "the 403 shown", lambda: driver.find_element(By.ID, "kv-result").text or None
        )
        assert "403" in text and "PermissionDenied" in text, text
        # forgetting the token asks for one again
        driver.find_element(By.ID, "token-forget").click()
        wait_until("the prompt again", lambda: driver.find_element(By.ID, "token").is_displayed())
        assert driver.execute_script("return sessionStorage.getItem('zkv.token')") is None
    finally:
        driver.quit()
