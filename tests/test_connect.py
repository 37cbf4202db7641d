"""Endpoints (HOST:PORT or tcp://HOST:PORT) and the connect timeout of Client and AsyncClient."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import free_port

import zkv
from zkv.client._sync import parse_endpoint, parse_endpoints


def test_endpoints_are_parsed() -> None:
    assert parse_endpoint("127.0.0.1:7400") == "tcp://127.0.0.1:7400"
    assert parse_endpoint("tcp://127.0.0.1:7400") == "tcp://127.0.0.1:7400"
    assert parse_endpoint("localhost:1") == "tcp://localhost:1"
    assert parse_endpoint("[::1]:7400") == "tcp://[::1]:7400"
    assert parse_endpoint("ipc:///tmp/zkv.sock") == "ipc:///tmp/zkv.sock"
    for bad in ("", "nonsense", "127.0.0.1", "tcp://h:0", "h:65536", "udp://h:1", "tcp://*:1"):
        with pytest.raises(zkv.InvalidRequest, match="bad endpoint"):
            parse_endpoint(bad)


def test_several_brokers_are_a_list_or_commas() -> None:
    both = ("tcp://127.0.0.1:7400", "tcp://127.0.0.1:7500")
    assert parse_endpoints("127.0.0.1:7400, tcp://127.0.0.1:7500") == both
    assert parse_endpoints(["127.0.0.1:7400", "127.0.0.1:7500", "127.0.0.1:7400"]) == both
    assert parse_endpoints("127.0.0.1:7400") == both[:1]
    for bad in ([], "127.0.0.1:7400,nonsense"):
        with pytest.raises(zkv.InvalidRequest):
            parse_endpoints(bad)


def test_a_client_of_several_brokers_uses_those_that_answer(cluster: Any) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: never sent a request
    with zkv.Client([dead, cluster.endpoint], timeout_s=5.0) as kv:
        assert kv.endpoint == f"tcp://{dead},{cluster.endpoint}"
        for i in range(20):
            kv.put(f"several-{i}", i)
        assert kv.mget([f"several-{i}" for i in range(20)]) == {
            f"several-{i}": i for i in range(20)
        }


async def test_an_async_client_of_several_brokers(cluster: Any) -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with zkv.AsyncClient(f"{cluster.endpoint},{dead}", timeout_s=5.0) as kv:
        await kv.put("several-async", 1)
        assert await kv.get("several-async") == 1


def test_bad_endpoints_raise_a_zkv_error() -> None:
    for bad in ("nonsense", "tcp://no such host:1"):
        with pytest.raises(zkv.InvalidRequest, match="bad endpoint"):
            zkv.Client(bad)
        with pytest.raises(zkv.InvalidRequest, match="bad endpoint"):
            zkv.AsyncClient(bad)
    with pytest.raises(zkv.InvalidRequest, match="connect_timeout_s"):
        zkv.Client("127.0.0.1:1", connect_timeout_s=0)


def test_unreachable_cluster_fails_within_the_connect_timeout() -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    with zkv.Client(endpoint, timeout_s=30.0, connect_timeout_s=0.5) as kv:
        assert kv.endpoint == f"tcp://{endpoint}"
        started = time.monotonic()
        with pytest.raises(zkv.Unavailable, match=f"cannot reach the cluster at tcp://{endpoint}"):
            kv.get("k")
        assert 0.4 < time.monotonic() - started < 2.0
        assert not kv.reached


async def test_async_unreachable_cluster_fails_within_the_connect_timeout() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    async with zkv.AsyncClient(endpoint, timeout_s=30.0, connect_timeout_s=0.5) as kv:
        started = time.monotonic()
        with pytest.raises(zkv.Unavailable, match="cannot reach the cluster"):
            await kv.get("k")
        assert 0.4 < time.monotonic() - started < 2.0


def test_host_port_reaches_a_cluster(cluster: Any) -> None:
    with zkv.Client(cluster.endpoint.removeprefix("tcp://")) as kv:
        kv.put("connect:a", 1)
        assert kv.get("connect:a") == 1
        assert kv.reached


async def test_async_host_port_reaches_a_cluster(cluster: Any) -> None:
    async with zkv.AsyncClient(cluster.endpoint.removeprefix("tcp://")) as kv:
        await kv.put("connect:b", 2)
        assert await kv.get("connect:b") == 2
        assert kv.reached
