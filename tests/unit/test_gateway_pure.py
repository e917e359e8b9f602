"""Tables for the gateway's pure parts: routing table from status documents, balancing,
the retry decision, API keys, error bodies."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from reconciler.gateway import errors
from reconciler.gateway.auth import KeyRing, bearer, entry
from reconciler.gateway.balance import pick, tie_hash
from reconciler.gateway.discovery import peer_sources
from reconciler.gateway.retry import may_retry
from reconciler.gateway.routing import Upstream, build_table
from schemas.status import NodeStatus
from testrigs.gateway_rig import replica_entry, status_doc

NODES = [("a", "198.18.0.11", 9400), ("b", "198.18.0.12", 9400)]


def doc(node: str, replicas: list[dict[str, Any]], deployments: dict[str, str] | None = None
        ) -> NodeStatus:
    addr = dict((n, a) for n, a, _ in NODES)[node]
    return NodeStatus.model_validate(
        status_doc(node, addr, deployments or {"d": "m", "e": "em"}, replicas, NODES))


# --- routing ------------------------------------------------------------------------------------


def test_ready_replicas_of_both_nodes_route_with_their_node_address() -> None:
    t = build_table([doc("a", [replica_entry("d", 0, "a", 8000)]),
                     doc("b", [replica_entry("d", 1, "b", 8001)])])
    ups = t.upstreams("m")
    assert [(u.host, u.port, u.node) for u in ups] == [
        ("198.18.0.11", 8000, "a"), ("198.18.0.12", 8001, "b")]
    assert t.served() == ["m"]
    assert t.known == {"m", "em"}


@pytest.mark.parametrize(("change", "routed"), [
    ({}, True),
    ({"state": "Starting"}, False),
    ({"state": "Draining"}, False),
    ({"state": "CrashLoopBackOff"}, False),
    ({"state": "Failed"}, False),
    ({"port": None}, False),
    ({"role": "follower"}, False),
    ({"role": "leader"}, True),
    ({"nodes": ["b", "a"]}, False),  # led by b: only b's own status counts
    ({"deployment": "unknown"}, False),  # no served name for it
])
def test_only_ready_replicas_a_node_leads_are_routed(change: dict[str, Any],
                                                      routed: bool) -> None:
    r = {**replica_entry("d", 0, "a", 8000), **change}
    t = build_table([doc("a", [r, replica_entry("e", 0, "a", 8005)])])
    assert bool(t.upstreams("m")) is routed
    assert len(t.upstreams("em")) == 1


def test_a_replica_planned_by_a_non_leader_is_taken_from_its_leader_only() -> None:
    # node b plans a's replica too (it reports every replica of the revision) but does not
    # observe it: b's "Pending" must not shadow a's "Ready", nor b's word route it
    t = build_table([doc("a", [replica_entry("d", 0, "a", 8000)]),
                     doc("b", [replica_entry("d", 0, "a", 8000, state="Pending")])])
    assert len(t.upstreams("m")) == 1
    t2 = build_table([doc("b", [replica_entry("d", 0, "a", 8000)])])
    assert t2.upstreams("m") == ()


def test_old_and_surged_replica_of_one_index_are_two_upstreams() -> None:
    t = build_table([doc("a", [replica_entry("d", 0, "a", 8000, spec_hash="old1"),
                               replica_entry("d", 0, "a", 8001, spec_hash="new2")])])
    assert {u.port for u in t.upstreams("m")} == {8000, 8001}


def _surge(health: str = "ready", running: bool = True) -> dict[str, Any]:
    return {"role": "surge", "specHash": "new", "running": running, "health": health,
            "pid": 7, "gpus": [1], "port": 8001}


@pytest.mark.parametrize(("state", "surge", "ports"), [
    ("Ready", _surge(), [8000]),  # the replica's own engine serves: the surge is retiring
    ("Draining", _surge(), [8001]),  # the old one is drained: the surge takes the traffic
    ("Starting", _surge(), [8001]),  # the new one loads in place
    ("Starting", _surge("starting"), []),
    ("Draining", _surge(running=False), []),
])
def test_a_surge_engine_serves_for_its_replica_only_while_that_is_not_ready(
        state: str, surge: dict[str, Any], ports: list[int]) -> None:
    r = {**replica_entry("d", 0, "a", 8000, state=state), "members": [surge]}
    t = build_table([doc("a", [r])])
    assert [u.port for u in t.upstreams("m")] == ports
    assert all(u.replica_label == "d/0" for u in t.upstreams("m"))


def test_node_without_a_known_address_is_skipped() -> None:
    d = doc("a", [replica_entry("d", 0, "a", 8000)]).model_copy(update={"cluster": None})
    assert build_table([d]).upstreams("m") == ()


def test_peer_sources_from_the_cluster_document() -> None:
    local = doc("a", [])
    assert peer_sources(local, "cluster", "http://127.0.0.1:9400/") == [
        "http://127.0.0.1:9400", "http://198.18.0.12:9400"]
    assert peer_sources(None, "cluster", "http://x:1") == ["http://x:1"]
    assert peer_sources(local, ["h:1", "http://h:2", "h:1"], "http://x:1") == [
        "http://x:1", "http://h:1", "http://h:2"]


# --- balancing ----------------------------------------------------------------------------------


def ups(n: int) -> list[Upstream]:
    return [Upstream("m", "d", i, "a", "10.0.0.1", 8000 + i) for i in range(n)]


@pytest.mark.parametrize(("load", "want"), [
    ({"d/0@a": 3, "d/1@a": 1, "d/2@a": 2}, 1),
    ({"d/0@a": 0, "d/1@a": 1, "d/2@a": 1}, 0),
    ({"d/0@a": 5, "d/1@a": 5, "d/2@a": 0}, 2),
])
def test_least_outstanding_wins(load: dict[str, int], want: int) -> None:
    chosen = pick(ups(3), load, "client")
    assert chosen is not None and chosen.index == want


def test_ties_are_stable_per_client_and_spread_across_clients() -> None:
    cands = ups(4)
    first = pick(cands, {}, "alice")
    assert all(pick(list(reversed(cands)), {}, "alice") == first for _ in range(5))
    spread = Counter(pick(cands, {}, f"user{i}").index for i in range(400))  # type: ignore[union-attr]
    assert set(spread) == {0, 1, 2, 3} and min(spread.values()) > 50
    assert tie_hash("a", "x") == tie_hash("a", "x") != tie_hash("b", "x")


def test_removing_a_replica_moves_only_its_clients() -> None:
    cands = ups(4)
    before = {f"u{i}": pick(cands, {}, f"u{i}") for i in range(200)}
    after = {k: pick(cands[:3], {}, k) for k in before}
    moved = [k for k in before if before[k] != after[k]]
    assert all(before[k].index == 3 for k in moved)  # type: ignore[union-attr]


def test_excluded_replicas_are_never_picked() -> None:
    cands = ups(2)
    assert pick(cands, {}, "c", exclude={"d/0@a"}) == cands[1]
    assert pick(cands, {}, "c", exclude={"d/0@a", "d/1@a"}) is None
    assert pick([], {}, "c") is None


# --- retry --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("failure", "status", "sent", "attempt", "want"), [
    ("connect", None, False, 1, True),
    ("disconnected", None, False, 1, True),
    ("status", 503, False, 1, True),
    ("status", 503, False, 3, False),  # out of attempts
    ("status", 500, False, 1, False),
    ("status", 429, False, 1, False),
    ("timeout", None, False, 1, False),  # the engine may still be working on it
    ("connect", None, True, 1, False),  # never after the first byte went out
    ("disconnected", None, True, 1, False),
    ("status", 503, True, 1, False),
])
def test_retry_only_before_the_first_byte(failure: Any, status: int | None, sent: bool,
                                          attempt: int, want: bool) -> None:
    assert may_retry(failure, status=status, sent_to_client=sent, attempt=attempt,
                     max_attempts=3) is want


# --- API keys -----------------------------------------------------------------------------------

RING = KeyRing([entry("alice", "sk-alice"), entry("bob", "sk-bob", ["m1"])])


@pytest.mark.parametrize(("header", "model", "status", "who"), [
    ("Bearer sk-alice", "m2", 200, "alice"),
    ("bearer  sk-alice ", "m2", 200, "alice"),
    ("Bearer sk-bob", "m1", 200, "bob"),
    ("Bearer sk-bob", "m2", 403, "bob"),
    ("Bearer sk-nobody", "m1", 401, None),
    ("Basic sk-alice", "m1", 401, None),
    ("Bearer ", "m1", 401, None),
    (None, "m1", 401, None),
])
def test_keys(header: str | None, model: str, status: int, who: str | None) -> None:
    d = RING.authorize(header, model)
    assert d.status == status
    assert (d.key.name if d.key else None) == who
    assert "sk-" not in d.message  # a key never appears in an answer


def test_only_digests_are_held_and_open_ring_admits_all() -> None:
    e = entry("k", "secret-value")
    assert b"secret-value" not in repr(e).encode() and len(e.digest) == 32
    assert KeyRing().authorize(None, "m").ok
    assert RING.visible("Bearer sk-bob", ["m1", "m2"]) == ["m1"]
    assert RING.visible("Bearer wrong", ["m1"]) is None
    assert bearer("Bearer  x ") == "x"
    with pytest.raises(ValueError, match="empty"):
        entry("k", "")


# --- error bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (413, "invalid_request_error"), (503, "service_unavailable"),
    (599, "api_error"),
])
def test_error_bodies_in_openai_format(status: int, kind: str) -> None:
    body = errors.error_body(status, "msg")
    assert body == {"error": {"message": "msg", "type": kind, "param": None,
                              "code": str(status)}}


def test_unknown_model_names_the_models_there_are() -> None:
    status, msg = errors.unknown_model("x", ["b", "a"])
    assert status == 404 and "'a', 'b'" in msg
    assert "none" in errors.unknown_model("x", [])[1]
    assert "and 5 more" in errors.unknown_model("x", [f"m{i}" for i in range(25)])[1]
