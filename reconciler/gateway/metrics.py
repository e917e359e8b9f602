"""Prometheus metrics of the gateway, in a registry of its own.

Labels stay bounded: `model` only takes served names some daemon reports (anything else a
client sends is counted as `_unknown`), `replica` is deployment/index, `code` an HTTP
status, `kind` a fixed set. Every metric is documented in docs/metrics.md.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "UPSTREAM_ERROR_KINDS", "GatewayMetrics"]

UNKNOWN_MODEL = "_unknown"
# connect: refused/unreachable; disconnected: hung up before answering; timeout: no first
# byte in time; status_503: answered 503; cut: the stream broke after bytes went out
UPSTREAM_ERROR_KINDS = ("connect", "disconnected", "timeout", "status_503", "cut")
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
            120, 300)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "reconciler_gateway_requests", "Requests answered, by model and HTTP status.",
            ["model", "code"], registry=r,
        )
        self.ttfb = Histogram(
            "reconciler_gateway_time_to_first_byte_seconds",
            "From the request's arrival to the first byte of the answer sent to the client.",
            ["model"], buckets=_LATENCY, registry=r,
        )
        self.duration = Histogram(
            "reconciler_gateway_request_duration_seconds",
            "From the request's arrival to the last byte of the answer.",
            ["model"], buckets=_LATENCY, registry=r,
        )
        self.in_flight = Gauge(
            "reconciler_gateway_requests_in_flight", "Client requests being answered.",
            ["model"], registry=r,
        )
        self.upstream_in_flight = Gauge(
            "reconciler_gateway_upstream_requests_in_flight",
            "Requests this gateway has outstanding at each replica (what balancing uses).",
            ["model", "replica"], registry=r,
        )
        self.upstream_errors = Counter(
            "reconciler_gateway_upstream_errors",
            "Failed attempts at a replica, by kind (connect, disconnected, timeout, "
            "status_503, cut).",
            ["model", "replica", "kind"], registry=r,
        )
        self.retries = Counter(
            "reconciler_gateway_retries", "Attempts repeated on another replica.",
            ["model"], registry=r,
        )
        self.client_gone = Counter(
            "reconciler_gateway_client_disconnects",
            "Clients that went away or stopped reading mid-answer (upstream cancelled).",
            ["model", "reason"], registry=r,
        )
        self.replicas = Gauge(
            "reconciler_gateway_replicas", "Ready replicas in the routing table, by model.",
            ["model"], registry=r,
        )
        self.source_up = Gauge(
            "reconciler_gateway_status_source_up",
            "1 when the last read of a daemon's /status succeeded.", ["source"], registry=r,
        )

    def set_replicas(self, counts: dict[str, int]) -> None:
        self.replicas.clear()
        for model, n in counts.items():
            self.replicas.labels(model).set(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
