"""The gateway's status page in a real browser: Debian's Chromium, headless, via selenium.

It starts a real cluster and the gateway (``zkv.http.serve`` in a thread, on a free port of
127.0.0.1), loads ``/``, and checks what a person would: every node listed, a key put and
read back through the page's form, a killed node turning red within seconds. A screenshot
is saved under the test's ``tmp_path`` and copied to ``$ZKV_ARTIFACTS`` when that is set.

The browser is the system's (``/usr/bin/chromium`` with ``/usr/bin/chromedriver``): never
a download, never Selenium Manager. Without them the test is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import zkv
from zkv.http import serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Every wait on the page is bounded by this (seconds), unless it says otherwise.
WAIT_S = 10.0
SHARDS = {"s0": ["s0a", "s0b"], "s1": ["s1a"]}

T = TypeVar("T")


def _missing_browser() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (path.is_file() and os.access(path, os.X_OK)):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    return None


class GatewayThread:
    """``zkv.http.serve`` on 127.0.0.1, a free port, in a thread with its own event loop."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="zkv-http", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start()
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()

        def ready(port: int) -> None:
            self.port = port
            self._ready.set()

        with contextlib.suppress(asyncio.CancelledError):
            await serve(self.endpoint, "127.0.0.1", 0, ready=ready)

    def start(self) -> str:
        """Start serving; the page's URL."""
        self._thread.start()
        if not self._ready.wait(WAIT_S) or not self.port:
            raise RuntimeError(f"the gateway did not start: {self._error!r}")
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive(), "the gateway thread did not stop"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium driven by the system's chromedriver; quit at teardown."""
    reason = _missing_browser()
    if reason is not None:
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(WAIT_S)
        driver.set_script_timeout(WAIT_S)
        yield driver
    finally:
        driver.quit()


def wait_until(what: str, probe: Callable[[], T | None], timeout: float = WAIT_S) -> T:
    """Poll ``probe()`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
        time.sleep(0.05)


def node_rows(driver: Any) -> dict[str, dict[str, Any]]:
    """The page's node table: name -> its cells, class and background colour."""
    rows: list[dict[str, Any]] = driver.execute_script(
        """
        return Array.from(document.querySelectorAll('#nodes tbody tr'), (tr) => ({
          name: tr.dataset.node,
          alive: tr.dataset.alive,
          down: tr.classList.contains('down'),
          background: getComputedStyle(tr).backgroundColor,
          cells: Object.fromEntries(Array.from(tr.cells, (c) => [c.dataset.label, c.textContent])),
        }));
        """
    )
    return {row["name"]: row for row in rows}


def text_of(driver: Any, element_id: str) -> str:
    """The text content of the page's element ``element_id``."""
    text: str = driver.execute_script(
        "return document.getElementById(arguments[0]).textContent", element_id
    )
    return text


def is_red(css_color: str) -> bool:
    """``rgb(...)``/``rgba(...)`` that is clearly red (red well above green and blue)."""
    match = re.match(r"rgba?\((\d+), (\d+), (\d+)", css_color)
    assert match, css_color
    r, g, b = (int(x) for x in match.groups())
    return r > g + 20 and r > b + 20


def use_form(driver: Any, action: str, key: str, value: str | None = None) -> tuple[str, str]:
    """Fill the key form, press ``action``'s button; the answer (class, text) once shown."""
    from selenium.webdriver.common.by import By

    driver.execute_script("document.getElementById('kv-result').replaceChildren()")
    key_input = driver.find_element(By.ID, "kv-key")
    key_input.clear()
    key_input.send_keys(key)
    if value is not None:
        value_input = driver.find_element(By.ID, "kv-value")
        value_input.clear()
        value_input.send_keys(value)
    driver.find_element(By.ID, f"kv-{action}").click()
    shown: tuple[str, str] = wait_until(
        f"the answer to {action} {key!r}",
        lambda: driver.execute_script(
            """
            const box = document.getElementById('kv-result');
            return box.textContent ? [box.className, box.innerText] : null;
            """
        ),
    )
    return shown


def save_screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    """Save a PNG of the page in ``tmp_path`` (and in ``$ZKV_ARTIFACTS`` if set)."""
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), "no screenshot"
    print(f"screenshot: {path}")
    artifacts = os.environ.get("ZKV_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        copy = Path(shutil.copy(path, Path(artifacts) / name))
        print(f"screenshot copied to: {copy}")
    return path


def test_static_files_are_served_without_path_traversal(cluster_factory: Any) -> None:
    """The page and its files come from the gateway; nothing outside ``static/`` does."""
    c = cluster_factory({"s0": ["s0a"]})
    gateway = GatewayThread(c.endpoint)
    try:
        base = gateway.start()

        def fetch(path: str) -> tuple[int, str, bytes]:
            try:
                with urllib.request.urlopen(base.rstrip("/") + path, timeout=WAIT_S) as r:
                    return r.status, r.headers["Content-Type"], r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.headers["Content-Type"], e.read()

        status, content_type, page = fetch("/")
        assert status == 200 and content_type.startswith("text/html")
        assert b'name="viewport"' in page and b"/static/status.js" in page
        assert b"http://" not in page and b"https://" not in page  # no CDN
        for name, kind in [("status.css", "text/css"), ("status.js", "text/javascript")]:
            status, content_type, body = fetch(f"/static/{name}")
            assert status == 200 and content_type.startswith(kind), (name, content_type)
            assert b"https://" not in body
        for path in [
            "/static/../app.py",
            "/static/..%2Fapp.py",
            "/static/%2e%2e%2fapp.py",
            "/static/.hidden",
            "/static/nope.js",
            "/static/",
            "/static/a/b.css",
        ]:
            status, content_type, body = fetch(path)
            assert status == 404, path
            assert json.loads(body)["error"]["code"] == "NotFound", path
    finally:
        gateway.stop()


def test_status_page_in_a_browser(browser: Any, cluster_factory: Any, tmp_path: Path) -> None:
    """Nodes listed, a key through the form, a killed node red within seconds."""
    c = cluster_factory(SHARDS)
    gateway = GatewayThread(c.endpoint)
    try:
        url = gateway.start()
        browser.get(url)
        assert "zkv" in browser.title

        # every node is listed, alive, with its shard and role
        names = {n for nodes in SHARDS.values() for n in nodes}
        rows = wait_until(
            "every node listed and up",
            lambda: (
                (r := node_rows(browser)).keys() == names
                and all(row["cells"]["Alive"] == "up" for row in r.values())
                and r
            ),
        )
        for shard, members in SHARDS.items():
            for name in members:
                assert rows[name]["cells"]["Shard"] == shard
                assert not rows[name]["down"] and not is_red(rows[name]["background"])
        assert rows["s0a"]["cells"]["Role"] == "primary"
        assert rows["s0b"]["cells"]["Role"] == "replica"
        # no memory.max_bytes: used bytes "of no limit", the default policy, no evictions
        memory = rows["s0a"]["cells"]["Memory"]
        assert re.fullmatch(r"\d+(\.\d)? k?B / no limitnoeviction \u00b7 0 evicted", memory), memory
        assert int(rows["s1a"]["cells"]["Slots"].split()[0].replace(",", "")) > 0
        shards = browser.execute_script(
            "return Array.from(document.querySelectorAll('#shards tbody tr'), r=>r.dataset.shard)"
        )
        assert shards == sorted(SHARDS)
        wait_until("the connection marked live", lambda: text_of(browser, "connection") == "live")

        # a key put through the form is in the cluster, and the form reads it back
        key, value = "page/key 1", {"n": 1, "s": "h\u00e9llo", "list": [1, 2]}
        kind, text = use_form(browser, "put", key, json.dumps(value, ensure_ascii=False))
        assert "ok" in kind and "created" in text, text
        with zkv.Client(c.endpoint, timeout_s=5.0) as kv:
            assert kv.get(key) == value
            kv.put("page/from-client", [True, None])
        kind, text = use_form(browser, "get", key)
        assert "ok" in kind, text
        assert json.loads(text_of(browser, "kv-output")) == value
        use_form(browser, "get", "page/from-client")
        assert json.loads(text_of(browser, "kv-output")) == [True, None]
        # errors are shown too
        kind, text = use_form(browser, "delete", "page/from-client")
        assert "ok" in kind and "deleted" in text, text
        kind, text = use_form(browser, "get", "page/from-client")
        assert "error" in kind and "KeyNotFound" in text, text

        # some load: the page's operations per second go above 0
        with zkv.Client(c.endpoint, timeout_s=5.0) as kv:

            def ops_per_second() -> float:
                for i in range(20):
                    kv.put(f"page/load{i}", i)
                text = text_of(browser, "ops")
                return 0.0 if text == "\u2013" else float(text.replace(",", ""))

            assert wait_until("operations per second above 0", ops_per_second) > 0

        # a killed node turns red within a few seconds
        killed_at = time.monotonic()
        c.procs["s1a"].signal(signal.SIGKILL)
        rows = wait_until(
            "s1a marked down",
            lambda: (r := node_rows(browser))["s1a"]["down"] and r,
            timeout=8.0,
        )
        print(f"s1a shown down {time.monotonic() - killed_at:.1f} s after SIGKILL")
        down = rows["s1a"]
        assert down["alive"] == "false" and down["cells"]["Alive"] == "DOWN"
        assert is_red(down["background"]), down["background"]
        assert not rows["s0a"]["down"] and not rows["s0b"]["down"]
        assert text_of(browser, "nodes-up") == "2 / 3"
        save_screenshot(browser, tmp_path, "status-page.png")

        # and on a phone-sized screen the nodes are still all there, as cards
        browser.set_window_size(390, 3000)
        wait_until(
            "the phone layout",
            lambda: (
                browser.execute_script(
                    "return getComputedStyle(document.querySelector('#nodes tbody tr')).display"
                )
                == "block"
            ),
        )
        assert set(node_rows(browser)) == names
        save_screenshot(browser, tmp_path, "status-page-phone.png")
    finally:
        gateway.stop()


def test_status_page_shows_a_failed_node(browser: Any, tmp_path: Path) -> None:
    """A node ``zkv up`` gave up on: red, a FAILED badge and its error line, as text.

    No cluster: the page's ``fetch`` of ``/api/status`` is replaced (before the page's own
    script runs) by one answering a made-up status, so only the page is under test.
    """
    error = "zkv: node s1a cannot start: <img src=x onerror=alert(1)> & Address in use"
    node = {
        "shard": "s0",
        "role": "primary",
        "alive": True,
        "state": "serving",
        "epoch": 1,
        "seq": 5,
        "lag": 0,
        "in_sync": True,
        "keys": 3,
        "slots": 16384,
        "slot_ranges": "0-16383",
        "requests": 10,
        "errors": 0,
    }
    status = {
        "cluster": "fake",
        "slots": 16384,
        "shards": {"s0": {"primary": "s0a", "epoch": 1, "serving": True}},
        "broker": {"failovers": 0},
        "nodes": [
            {**node, "name": "s0a"},
            {
                **node,
                "name": "s1a",
                "shard": "s1",
                "alive": False,
                "state": "failed",
                "error": error,
            },
            # given up on, though the broker has not noticed it is gone yet: red all the same
            {**node, "name": "s2a", "shard": "s2", "state": "failed", "error": None},
        ],
    }
    fake_fetch = f"const status = {json.dumps(status)};" + (
        """
        const realFetch = window.fetch.bind(window);
        window.fetch = (url, init) => String(url).startsWith("/api/status")
          ? Promise.resolve(new Response(JSON.stringify(status),
              {status: 200, headers: {"Content-Type": "application/json"}}))
          : realFetch(url, init);
        """
    )
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": fake_fetch})
    gateway = GatewayThread("tcp://127.0.0.1:9")  # never asked: the status is the fake one
    try:
        browser.get(gateway.start())
        rows = wait_until(
            "the nodes listed",
            lambda: (r := node_rows(browser)).keys() == {"s0a", "s1a", "s2a"} and r,
        )
        failed = rows["s1a"]
        assert failed["cells"]["Alive"] == "FAILED"
        assert failed["down"] and is_red(failed["background"]), failed
        assert failed["cells"]["State"] == "failed" + error  # the text, never markup
        details = browser.execute_script(
            """
            const tr = document.querySelector('#nodes tr[data-node="s1a"]');
            const badge = tr.cells[3], line = tr.querySelector('.error-line');
            return {
              failedClass: tr.classList.contains('failed'),
              badgeClass: badge.className,
              badgeBackground: getComputedStyle(badge).backgroundColor,
              line: line && line.textContent,
              images: document.querySelectorAll('#nodes img').length,
              title: tr.title,
            };
            """
        )
        assert details["failedClass"] and details["badgeClass"] == "badge failed", details
        assert is_red(details["badgeBackground"]), details
        assert details["line"] == error and details["images"] == 0, details
        assert error in details["title"], details
        assert rows["s2a"]["cells"]["Alive"] == "FAILED" and is_red(rows["s2a"]["background"])
        assert rows["s2a"]["cells"]["State"] == "failedno error line recorded"
        assert rows["s0a"]["cells"]["Alive"] == "up" and not is_red(rows["s0a"]["background"])
        assert rows["s0a"]["cells"]["State"] == "serving"
        assert text_of(browser, "nodes-up") == "1 / 3"
        save_screenshot(browser, tmp_path, "status-page-failed.png")

        browser.set_window_size(390, 2000)  # a phone: the error line is on the node's card
        wait_until(
            "the phone layout",
            lambda: (
                browser.execute_script(
                    "return getComputedStyle(document.querySelector('#nodes tbody tr')).display"
                )
                == "block"
            ),
        )
        assert node_rows(browser)["s1a"]["cells"]["State"] == "failed" + error
        save_screenshot(browser, tmp_path, "status-page-failed-phone.png")
    finally:
        gateway.stop()


def test_status_page_shows_each_disk_low_in_amber_full_in_red(browser: Any, tmp_path: Path) -> None:
    """Each node's disk: free bytes and storage state; "low" amber, "full" and "error" red
    with the node's error as text. A made-up status, as in the test above (no cluster)."""
    error = "[Errno 28] No space left on device: <img src=x onerror=alert(1)> & more"
    node = {
        "shard": "s0",
        "role": "primary",
        "alive": True,
        "state": "serving",
        "epoch": 1,
        "seq": 5,
        "lag": 0,
        "in_sync": True,
        "keys": 3,
        "slots": 16384,
        "slot_ranges": "0-16383",
        "requests": 10,
        "errors": 0,
    }
    status = {
        "cluster": "fake",
        "slots": 16384,
        "shards": {"s0": {"primary": "s0a", "epoch": 1, "serving": True}},
        "broker": {"failovers": 0},
        "nodes": [
            {**node, "name": "s0a", "storage": "ok", "storage_error": "", "free_bytes": 12_345_678},
            {**node, "name": "s0b", "role": "replica", "storage": "low", "free_bytes": 50_000_000},
            {**node, "name": "s1a", "storage": "full", "storage_error": error, "free_bytes": 0},
            {
                **node,
                "name": "s2a",
                "storage": "error",
                "storage_error": "[Errno 5] Input/output error",
                "free_bytes": -1,
            },
            {**node, "name": "s3a", "storage": None, "storage_error": None, "free_bytes": None},
        ],
    }
    fake_fetch = f"const status = {json.dumps(status)};" + (
        """
        const realFetch = window.fetch.bind(window);
        window.fetch = (url, init) => String(url).startsWith("/api/status")
          ? Promise.resolve(new Response(JSON.stringify(status),
              {status: 200, headers: {"Content-Type": "application/json"}}))
          : realFetch(url, init);
        """
    )
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": fake_fetch})
    gateway = GatewayThread("tcp://127.0.0.1:9")  # never asked: the status is the fake one
    disks_js = """
        return Object.fromEntries(Array.from(document.querySelectorAll('#nodes tbody tr'),
          (tr) => {
            const cell = tr.querySelector('td[data-label="Disk"]');
            const line = cell.querySelector('.error-line');
            return [tr.dataset.node, {
              text: cell.textContent,
              cls: cell.className,
              color: getComputedStyle(cell).color,
              background: getComputedStyle(cell).backgroundColor,
              line: line && line.textContent,
              title: cell.title,
            }];
          }));
    """
    try:
        browser.get(gateway.start())
        wait_until("the nodes listed", lambda: len(node_rows(browser)) == 5)
        disks = browser.execute_script(disks_js)
        assert disks["s0a"]["text"] == "ok12.3 MB free" and disks["s0a"]["cls"] == "disk-ok"
        assert not is_red(disks["s0a"]["color"]), disks["s0a"]
        low = disks["s0b"]
        assert low["text"] == "low50.0 MB free" and low["cls"] == "disk-low", low
        assert not is_red(low["background"]), low
        for color in (low["background"], low["color"]):  # amber: red and green above blue
            r, g, b = (int(x) for x in re.findall(r"\d+", color)[:3])
            assert r > b + 20 and g > b + 20, low
        full = disks["s1a"]
        assert full["cls"] == "disk-bad" and is_red(full["background"]), full
        assert is_red(full["color"]), full
        assert full["text"] == "full0 B free" + error and full["line"] == error, full  # text
        assert error in full["title"], full
        assert browser.execute_script("return document.querySelectorAll('#nodes img').length") == 0
        failing = disks["s2a"]
        assert failing["cls"] == "disk-bad" and is_red(failing["background"]), failing
        assert failing["text"] == "error[Errno 5] Input/output error", failing  # free unknown
        assert disks["s3a"]["text"] == "\u2013" and disks["s3a"]["cls"] == "", disks["s3a"]
        # the node itself is up: only its disk is red
        rows = node_rows(browser)
        assert not rows["s1a"]["down"] and rows["s1a"]["cells"]["Alive"] == "up"
        save_screenshot(browser, tmp_path, "status-page-disk.png")

        browser.set_window_size(390, 2400)  # a phone: the disk and its error on the card
        wait_until(
            "the phone layout",
            lambda: (
                browser.execute_script(
                    "return getComputedStyle(document.querySelector('#nodes tbody tr')).display"
                )
                == "block"
            ),
        )
        disks = browser.execute_script(disks_js)
        assert disks["s1a"]["text"] == "full0 B free" + error
        assert is_red(disks["s1a"]["background"])
        save_screenshot(browser, tmp_path, "status-page-disk-phone.png")
    finally:
        gateway.stop()


def test_status_page_shows_memory_used_of_the_limit_amber_at_90_red_at_100(
    browser: Any, tmp_path: Path
) -> None:
    """Each node's memory: used of ``memory.max_bytes`` ("no limit" for 0), its policy and
    evictions beneath and in the tooltip; amber from 90% of the limit, red at 100%. A
    made-up status, as in the tests above (no cluster)."""
    node = {
        "shard": "s0",
        "role": "primary",
        "alive": True,
        "state": "serving",
        "keys": 3,
        "storage": "ok",
        "free_bytes": 12_345_678,
    }
    status = {
        "cluster": "fake",
        "slots": 16384,
        "shards": {"s0": {"primary": "s0a", "epoch": 1, "serving": True}},
        "broker": {"failovers": 0},
        "nodes": [
            {
                **node,
                "name": "s0a",
                "used_bytes": 1_200_000,
                "max_bytes": 3_000_000,
                "evictions": 0,
                "policy": "allkeys-lru",
            },
            {
                **node,
                "name": "s0b",
                "role": "replica",
                "used_bytes": 2_700_000,  # exactly 90%
                "max_bytes": 3_000_000,
                "evictions": 1234,
                "policy": "allkeys-lru",
            },
            {
                **node,
                "name": "s1a",
                "used_bytes": 3_000_000,
                "max_bytes": 3_000_000,
                "evictions": 0,
                "policy": "noeviction",
            },
            {
                **node,
                "name": "s2a",
                "used_bytes": 1_200_000,
                "max_bytes": 0,
                "evictions": 0,
                "policy": "noeviction",
            },
            {**node, "name": "s3a", "used_bytes": None, "max_bytes": None, "evictions": None},
        ],
    }
    fake_fetch = f"const status = {json.dumps(status)};" + (
        """
        const realFetch = window.fetch.bind(window);
        window.fetch = (url, init) => String(url).startsWith("/api/status")
          ? Promise.resolve(new Response(JSON.stringify(status),
              {status: 200, headers: {"Content-Type": "application/json"}}))
          : realFetch(url, init);
        """
    )
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": fake_fetch})
    gateway = GatewayThread("tcp://127.0.0.1:9")  # never asked: the status is the fake one
    memory_js = """
        return Object.fromEntries(Array.from(document.querySelectorAll('#nodes tbody tr'),
          (tr) => {
            const cell = tr.querySelector('td[data-label="Memory"]');
            const used = cell.querySelector('.memory-used');
            const policy = cell.querySelector('.memory-policy');
            return [tr.dataset.node, {
              used: used && used.textContent,
              policy: policy && policy.textContent,
              text: cell.textContent,
              cls: cell.className,
              color: getComputedStyle(cell).color,
              background: getComputedStyle(cell).backgroundColor,
              title: cell.title,
            }];
          }));
    """

    def is_amber(css_color: str) -> bool:
        r, g, b = (int(x) for x in re.findall(r"\d+", css_color)[:3])
        return r > b + 20 and g > b + 20

    try:
        browser.get(gateway.start())
        wait_until("the nodes listed", lambda: len(node_rows(browser)) == 5)
        memory = browser.execute_script(memory_js)
        ok = memory["s0a"]
        assert ok["used"] == "1.2 MB / 3.0 MB" and ok["cls"] == "memory-ok", ok
        assert ok["policy"] == "allkeys-lru \u00b7 0 evicted", ok
        assert not is_red(ok["background"]) and not is_amber(ok["background"]), ok
        assert "allkeys-lru" in ok["title"] and "40% of the limit" in ok["title"], ok
        high = memory["s0b"]
        assert high["used"] == "2.7 MB / 3.0 MB" and high["cls"] == "memory-high", high
        assert high["policy"] == "allkeys-lru \u00b7 1,234 evicted", high
        assert not is_red(high["background"]), high
        assert is_amber(high["background"]) and is_amber(high["color"]), high
        assert "applied" in high["title"], high  # a replica's evictions are its primary's
        full = memory["s1a"]
        assert full["used"] == "3.0 MB / 3.0 MB" and full["cls"] == "memory-full", full
        assert is_red(full["background"]) and is_red(full["color"]), full
        assert full["policy"] == "noeviction \u00b7 0 evicted", full
        unlimited = memory["s2a"]
        assert unlimited["used"] == "1.2 MB / no limit" and unlimited["cls"] == "", unlimited
        assert "no limit" in unlimited["title"], unlimited
        assert memory["s3a"]["text"] == "\u2013" and memory["s3a"]["cls"] == "", memory["s3a"]
        # only the memory cell is coloured: the node itself is up and not red
        rows = node_rows(browser)
        assert not rows["s1a"]["down"] and not is_red(rows["s1a"]["background"])
        save_screenshot(browser, tmp_path, "status-page-memory.png")
    finally:
        gateway.stop()


def test_status_page_shows_slots_and_the_moves_of_a_reshard(browser: Any, tmp_path: Path) -> None:
    """Each shard's slots (count and ranges), the slot map version, and while slots move
    the "Moving slots" panel: its bar, keys copied, the move in progress, the longest hold
    and the requests held; a reshard that stopped in red with its reason, as text; no panel
    once there is no reshard. A made-up status, swapped between polls (no cluster); the page
    polls every 0.1 s instead of every second here, to keep the test short."""
    node = {"role": "primary", "alive": True, "state": "serving", "keys": 10, "slots": 0}
    s3_ranges = "0-1279,1408-1535,1664-1791,2048-2175,2304-2431"
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
        "held": 3,
    }
    status: dict[str, Any] = {
        "cluster": "fake",
        "slots": 16384,
        "slot_map_version": 7,
        "reshard": moving,
        "shards": {
            "s0": {"primary": "s0a", "epoch": 1, "serving": True},
            "s1": {"primary": "s1a", "epoch": 2, "serving": False},
            "s3": {"primary": "s3a", "epoch": 1, "serving": True},
        },
        "broker": {"failovers": 0},
        "nodes": [
            {**node, "name": "s0a", "shard": "s0", "slots": 3669, "slot_ranges": "1920-5588"},
            {**node, "name": "s0b", "shard": "s0", "role": "replica"},
            {**node, "name": "s1a", "shard": "s1", "alive": False},
            {**node, "name": "s3a", "shard": "s3", "slots": 1792, "slot_ranges": s3_ranges},
        ],
    }
    fake_fetch = f"window.zkvStatus = {json.dumps(status)};" + (
        """
        const realFetch = window.fetch.bind(window);
        window.fetch = (url, init) => String(url).startsWith("/api/status")
          ? Promise.resolve(new Response(JSON.stringify(window.zkvStatus),
              {status: 200, headers: {"Content-Type": "application/json"}}))
          : realFetch(url, init);
        const realSetTimeout = window.setTimeout.bind(window);
        window.setTimeout = (f, ms, ...rest) => realSetTimeout(f, ms === 1000 ? 100 : ms, ...rest);
        """
    )
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": fake_fetch})
    gateway = GatewayThread("tcp://127.0.0.1:9")  # never asked: the status is the fake one
    moves_js = """
        const $ = (id) => document.getElementById(id);
        const slots = (table) => Object.fromEntries(Array.from(
          document.querySelectorAll('#' + table + ' tbody tr'), (tr) => {
            const cell = tr.querySelector('td[data-label="Slots"]');
            return [tr.dataset.node || tr.dataset.shard, [cell.textContent, cell.title]];
          }));
        const bar = $('moves-bar'), fill = $('moves-fill');
        return {
          version: $('slot-map-version').textContent,
          shards: slots('shards'),
          nodes: slots('nodes'),
          shown: !$('moves').hidden && $('moves').offsetHeight > 0,
          state: $('moves-state').textContent,
          progress: $('moves-progress').textContent,
          valuenow: bar.getAttribute('aria-valuenow'),
          valuemax: bar.getAttribute('aria-valuemax'),
          filled: fill.getBoundingClientRect().width / bar.clientWidth,
          fillColor: getComputedStyle(fill).backgroundColor,
          keys: $('moves-keys').textContent,
          left: $('moves-left').textContent,
          current: Array.from($('moves-current').children, (s) => s.textContent),
          currentText: $('moves-current').textContent,
          hold: $('moves-hold').textContent,
          held: $('moves-held').textContent,
          failedShown: !$('moves-failed').hidden && $('moves-failed').offsetHeight > 0,
          failed: $('moves-failed').textContent,
          failedColor: getComputedStyle($('moves-failed')).color,
          failedBackground: getComputedStyle($('moves-failed')).backgroundColor,
          images: document.querySelectorAll('#moves img').length,
        };
    """

    def shown(what: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        page: dict[str, Any] = wait_until(
            what, lambda: (p := browser.execute_script(moves_js)) and check(p) and p
        )
        return page

    def swap(new: dict[str, Any]) -> None:
        browser.execute_script("window.zkvStatus = arguments[0]", new)

    try:
        browser.get(gateway.start())
        page = shown("the reshard in progress", lambda p: p["shown"] and p["version"] == "7")
        summary = "1,792 (0-1279,1408-1535,1664-1791, +2 more)"  # the rest in the tooltip
        assert page["shards"] == {
            "s0": ["3,669 (1920-5588)", "slots 1920-5588"],
            "s1": ["\u2013", ""],  # no serving primary: the broker cannot say
            "s3": [summary, "slots " + s3_ranges],
        }, page["shards"]
        # the node table's Slots: the same text, on the primary that serves the slots
        assert page["nodes"]["s0a"] == page["shards"]["s0"] and page["nodes"]["s0b"][0] == "0"
        assert page["nodes"]["s3a"] == [summary, "slots " + s3_ranges]
        assert page["nodes"]["s1a"] == ["\u2013", ""]
        assert page["state"] == "in progress"
        assert page["progress"] == "1,792 / 5,461 slots moved (32%)"
        assert (page["valuenow"], page["valuemax"]) == ("1792", "5461")
        assert abs(page["filled"] - 1792 / 5461) < 0.02, page["filled"]
        assert (page["keys"], page["left"]) == ("2,207", "12")
        assert page["current"] == ["slots 1792-1919", "s0 \u2192 s3", "copy", "31 keys"]
        assert (page["hold"], page["held"]) == ("1.2 ms", "3")
        assert not page["failedShown"] and not is_red(page["fillColor"])
        save_screenshot(browser, tmp_path, "status-page-moves.png")

        # the move failed three times: the reshard stopped, in red, its reason as text
        why = "moving slots 1792-1919 from s0 to s3 failed 3 times: <img src=x onerror=alert(1)>"
        swap(
            {
                **status,
                "slot_map_version": 8,
                "reshard": {**moving, "current": None, "moves_left": 0, "held": 0, "failed": why},
            }
        )
        page = shown("the reshard stopped", lambda p: p["failedShown"])
        assert page["failed"] == why and page["images"] == 0, page
        assert is_red(page["failedColor"]) and is_red(page["failedBackground"]), page
        assert page["state"] == "stopped" and is_red(page["fillColor"]), page
        assert (page["version"], page["left"], page["held"]) == ("8", "0", "0")
        assert page["current"] == [] and page["currentText"] == "\u2013"
        assert page["progress"] == "1,792 / 5,461 slots moved (32%)"
        save_screenshot(browser, tmp_path, "status-page-moves-stopped.png")

        swap({**status, "reshard": None})  # a broker restarted since: no panel
        shown("no moves panel", lambda p: not p["shown"])
    finally:
        gateway.stop()
