"""Prometheus metrics of the HTTP gateway and of the cluster behind it.

Each app gets its own ``CollectorRegistry`` (never the process-wide default one), so any
number of apps can live in one process. ``/metrics`` renders, with prometheus-client:

The gateway itself (updated on every request)
    ``zkv_http_requests_total{operation, outcome}`` counter: ``operation`` is the route's
    operation (``set`` for ``POST /api/kv``, ``/put`` and ``/set``; ``put``, ``get``,
    ``delete``, ``list``, ``batch``, ``mget``, ``status``, ``openapi``, ``metrics``,
    ``page`` for ``GET /`` and ``static`` for ``GET /static/{name}``; and
    ``unmatched`` for unknown paths and methods), ``outcome`` is ``ok`` or the error code of
    the answer (``KeyNotFound``, ``InvalidRequest``, ``Timeout``, ``NotFound``, ...).

    ``zkv_http_request_duration_seconds{route, method, status}`` histogram: ``route`` is the
    route's path template (``/api/kv/{key}``; ``unmatched`` for unknown paths), ``status``
    the HTTP status code.

The cluster (read with ``cluster_status()`` at each scrape)
    Per node, labelled ``node`` and ``shard``: gauges ``zkv_node_alive``, ``zkv_node_keys``,
    ``zkv_node_seq``, ``zkv_node_lag``, ``zkv_node_epoch``, ``zkv_node_primary`` (1 for the
    node in the primary role), ``zkv_node_in_sync``, ``zkv_node_log_bytes``,
    ``zkv_node_max_stall_seconds``, ``zkv_node_failed`` (1 for a node ``zkv up`` gave up
    restarting: its state is ``failed``), ``zkv_node_free_bytes`` (free bytes on the
    volume of the node's data folder), ``zkv_node_storage_state{node, shard, state}`` (a
    state set: one sample per state ``ok``, ``low``, ``full``, ``error``, 1 for the node's
    storage state and 0 for the others, so an alert can watch ``state="ok"`` being 0),
    ``zkv_node_used_bytes`` (bytes the node's data takes by its accounting: keys, values
    and per-key overhead) and ``zkv_node_max_bytes`` (its ``memory.max_bytes``, 0 for no
    limit); counters ``zkv_node_requests_total``,
    ``zkv_node_errors_total``, ``zkv_node_fsyncs_total``, ``zkv_node_compactions_total``,
    ``zkv_node_evictions_total`` (keys its ``memory.policy`` evicted; on a replica, its
    primary's evictions it applied), ``zkv_node_resync_full_total`` and
    ``zkv_node_resync_partial_total`` (snapshots and catch-ups from its backlog it started
    for its replicas, as a primary) and ``zkv_node_resync_bytes_total`` (bytes it sent for
    them): cumulative counts kept by the node, so they restart
    from 0 when the node does, which ``rate()`` allows for. A value the broker does not
    know yet (a node that never reported, free bytes it could not read) is left out rather
    than exported as 0.

    Per shard: ``zkv_shard_epoch{shard}``, ``zkv_shard_serving{shard}``.
    The broker: counters ``zkv_broker_failovers_total``, ``zkv_broker_requests_total``,
    ``zkv_broker_errors_total``.

    ``zkv_cluster_status_up`` is 1 when the scrape could read the cluster's status, 0 when
    it could not (the cluster metrics are then absent; the gateway's own are still there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

__all__ = ["STORAGE_STATES", "ClusterCollector", "GatewayMetrics"]

#: Latency buckets (seconds) of the gateway's histogram: 0.5 ms to 10 s.
BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_NODE_GAUGES: Final[tuple[tuple[str, str, str, float], ...]] = (
    # (metric name, status field, help, scale)
    ("zkv_node_keys", "keys", "Live keys held by the node.", 1.0),
    ("zkv_node_seq", "seq", "Sequence number of the node's last logged record.", 1.0),
    ("zkv_node_lag", "lag", "Records the node is behind its shard's primary.", 1.0),
    ("zkv_node_epoch", "epoch", "The shard epoch the node last reported.", 1.0),
    ("zkv_node_log_bytes", "log_bytes", "Bytes in the node's log segments.", 1.0),
    (
        "zkv_node_max_stall_seconds",
        "max_stall_ms",
        "Longest stall of the node's loop (compaction steps), in seconds.",
        0.001,
    ),
    (
        "zkv_node_used_bytes",
        "used_bytes",
        "Bytes the node's data takes by its accounting (keys, values, per-key overhead).",
        1.0,
    ),
    ("zkv_node_max_bytes", "max_bytes", "The node's memory.max_bytes (0: no limit).", 1.0),
)
_NODE_COUNTERS: Final[tuple[tuple[str, str, str], ...]] = (
    ("zkv_node_requests", "requests", "Requests the node has handled since it started."),
    ("zkv_node_errors", "errors", "Requests the node answered with an error since it started."),
    ("zkv_node_fsyncs", "fsyncs", "fsync calls the node has made since it started."),
    ("zkv_node_compactions", "compactions", "Compactions the node has run since it started."),
    (
        "zkv_node_evictions",
        "evictions",
        "Keys evicted since the node started (a replica: its primary's evictions it applied).",
    ),
    ("zkv_node_resync_full", "resync_full", "Snapshots the node sent its replicas as primary."),
    (
        "zkv_node_resync_partial",
        "resync_partial",
        "Catch-ups from its backlog the node sent its replicas as primary.",
    ),
    (
        "zkv_node_resync_bytes",
        "resync_bytes",
        "Bytes the node sent its replicas for snapshots and catch-ups as primary.",
    ),
)
#: The storage states a node reports (``NodeInfo.storage``), each a sample of
#: ``zkv_node_storage_state``; a state not listed here is exported too, as it comes.
STORAGE_STATES: Final = ("ok", "low", "full", "error")
_BROKER_COUNTERS: Final[tuple[tuple[str, str, str], ...]] = (
    ("zkv_broker_failovers", "failovers", "Shard primaries the broker has replaced."),
    ("zkv_broker_requests", "requests", "Client requests the broker has handled."),
    ("zkv_broker_errors", "errors", "Client requests the broker answered with an error."),
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


class ClusterCollector:
    """A prometheus-client collector of the last ``cluster_status()`` it was given.

    ``/metrics`` awaits the status, stores it with ``update`` and renders at once (with no
    ``await`` in between, so concurrent scrapes cannot mix two statuses).
    """

    def __init__(self) -> None:
        self.status: dict[str, Any] | None = None

    def update(self, status: dict[str, Any] | None) -> None:
        """Export ``status`` (a ``cluster_status()`` result), or None if it could not be read."""
        self.status = status

    def describe(self) -> Iterable[Metric]:
        """The metric families this collector exports (without samples)."""
        return list(self._families(None))

    def collect(self) -> Iterable[Metric]:
        """The metric families of the stored status."""
        return list(self._families(self.status))

    def _families(self, status: dict[str, Any] | None) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "zkv_cluster_status_up", "1 if the last scrape read the cluster's status, else 0."
        )
        up.add_metric([], 0.0 if status is None else 1.0)
        yield up
        nodes: list[dict[str, Any]] = []
        shards: dict[str, Any] = {}
        broker: dict[str, Any] = {}
        if status is not None:
            nodes = [n for n in status.get("nodes") or [] if isinstance(n, dict)]
            shards = status.get("shards") or {}
            broker = status.get("broker") or {}
        labels = ["node", "shard"]

        def per_node(
            family: GaugeMetricFamily | CounterMetricFamily, field: str, scale: float
        ) -> Metric:
            for node in nodes:
                value = _number(node.get(field))
                if value is not None:
                    family.add_metric(
                        [str(node.get("name")), str(node.get("shard"))], value * scale
                    )
            return family

        yield per_node(
            GaugeMetricFamily(
                "zkv_node_alive", "1 if the broker sees the node alive.", labels=labels
            ),
            "alive",
            1.0,
        )
        primary = GaugeMetricFamily(
            "zkv_node_primary", "1 if the node is in the primary role, else 0.", labels=labels
        )
        for node in nodes:
            if node.get("role") is not None:
                primary.add_metric(
                    [str(node.get("name")), str(node.get("shard"))],
                    1.0 if node.get("role") == "primary" else 0.0,
                )
        yield primary
        failed = GaugeMetricFamily(
            "zkv_node_failed",
            "1 if the launcher (zkv up) gave up restarting the node, else 0.",
            labels=labels,
        )
        for node in nodes:
            failed.add_metric(
                [str(node.get("name")), str(node.get("shard"))],
                1.0 if node.get("state") == "failed" else 0.0,
            )
        yield failed
        free = GaugeMetricFamily(
            "zkv_node_free_bytes",
            "Free bytes on the volume of the node's data folder.",
            labels=labels,
        )
        storage = GaugeMetricFamily(
            "zkv_node_storage_state",
            "1 for the node's storage state (ok, low, full, error), 0 for the others.",
            labels=[*labels, "state"],
        )
        for node in nodes:
            name, shard = str(node.get("name")), str(node.get("shard"))
            free_bytes = node.get("free_bytes")  # -1: the node could not read it
            if isinstance(free_bytes, int) and not isinstance(free_bytes, bool) and free_bytes >= 0:
                free.add_metric([name, shard], float(free_bytes))
            state = node.get("storage")
            if isinstance(state, str) and state:
                for known in dict.fromkeys((*STORAGE_STATES, state)):
                    storage.add_metric([name, shard, known], 1.0 if known == state else 0.0)
        yield free
        yield storage
        yield per_node(
            GaugeMetricFamily(
                "zkv_node_in_sync", "1 if the node is in its primary's in-sync set.", labels=labels
            ),
            "in_sync",
            1.0,
        )
        for name, field, text, scale in _NODE_GAUGES:
            yield per_node(GaugeMetricFamily(name, text, labels=labels), field, scale)
        for name, field, text in _NODE_COUNTERS:
            yield per_node(CounterMetricFamily(name, text, labels=labels), field, 1.0)

        epoch = GaugeMetricFamily("zkv_shard_epoch", "The shard's epoch.", labels=["shard"])
        serving = GaugeMetricFamily(
            "zkv_shard_serving", "1 if the shard's primary is alive.", labels=["shard"]
        )
        for shard, info in sorted(shards.items()):
            if isinstance(info, dict):
                if (value := _number(info.get("epoch"))) is not None:
                    epoch.add_metric([str(shard)], value)
                if (value := _number(info.get("serving"))) is not None:
                    serving.add_metric([str(shard)], value)
        yield epoch
        yield serving
        for name, field, text in _BROKER_COUNTERS:
            family = CounterMetricFamily(name, text)
            if (value := _number(broker.get(field))) is not None:
                family.add_metric([], value)
            yield family


class GatewayMetrics:
    """The metrics of one app: its own registry, request counters and latency histogram."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "zkv_http_requests",
            "HTTP requests handled by the gateway, by operation and outcome.",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "zkv_http_request_duration_seconds",
            "Time the gateway took to answer, by route, method and status.",
            ["route", "method", "status"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.cluster = ClusterCollector()
        self.registry.register(self.cluster)

    def observe(
        self,
        *,
        operation: str,
        outcome: str,
        route: str,
        method: str,
        status: int,
        seconds: float,
    ) -> None:
        """Count one answered request and its latency."""
        self.requests.labels(operation, outcome).inc()
        self.latency.labels(route, method, str(status)).observe(seconds)

    def render(self, status: dict[str, Any] | None, accept: str = "") -> tuple[bytes, str]:
        """``(body, content type)`` of a scrape, the cluster part from ``status``.

        ``accept`` is the request's Accept header: the Prometheus text format unless it
        asks for OpenMetrics.
        """
        encoder: Callable[[CollectorRegistry], bytes]
        encoder, content_type = choose_encoder(accept)
        self.cluster.update(status)
        return encoder(self.registry), content_type
