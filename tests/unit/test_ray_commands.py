"""Unit tests for reconciler.core.ray_argv and the pure parts of reconciler.ports.ray_nodes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.core.ray_argv import (
    MIN_WORKER_PORTS,
    RESERVED_PORTS,
    gcs_address,
    ray_driver_env,
    ray_head_argv,
    ray_node_env,
    ray_port_plan,
    ray_worker_argv,
)
from reconciler.ports.ray_nodes import (
    RayQueryError,
    parse_ray_nodes_output,
    ray_nodes_query_argv,
    ray_nodes_query_env,
)

NODE_PORT_FLAGS = (
    "--node-manager-port",
    "--object-manager-port",
    "--metrics-export-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--min-worker-port",
    "--max-worker-port",
)


def _flag(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, f"{flag} appears {argv.count(flag)} times in {argv}"
    return argv[argv.index(flag) + 1]


def test_port_plan_layout() -> None:
    p = ray_port_plan(20000, 20100)
    assert (p.gcs, p.ray_client_server, p.dashboard) == (20000, 20001, 20002)
    assert (p.dashboard_agent_listen, p.dashboard_agent_grpc) == (20004, 20005)
    assert (p.metrics_export, p.node_manager, p.object_manager) == (20006, 20007, 20008)
    assert p.runtime_env_agent == 20009
    assert (p.min_worker, p.max_worker) == (20010, 20100)
    assert p.worker_port_count == 91


def test_port_plan_smallest_range() -> None:
    p = ray_port_plan(30000, 30000 + RESERVED_PORTS + MIN_WORKER_PORTS - 1)
    assert p.worker_port_count == MIN_WORKER_PORTS
    with pytest.raises(ValueError, match="needs at least"):
        ray_port_plan(30000, 30000 + RESERVED_PORTS + MIN_WORKER_PORTS - 2)


@pytest.mark.parametrize(
    ("start", "end"), [(0, 100), (500, 2000), (65500, 65600), (20100, 20000), (20000, 20000)]
)
def test_port_plan_rejects_bad_ranges(start: int, end: int) -> None:
    with pytest.raises(ValueError):
        ray_port_plan(start, end)


@given(st.integers(1024, 65535), st.integers(0, 5000))
def test_port_plan_ports_distinct_and_inside(start: int, extra: int) -> None:
    end = start + RESERVED_PORTS + MIN_WORKER_PORTS - 1 + extra
    if end > 65535:
        with pytest.raises(ValueError):
            ray_port_plan(start, end)
        return
    p = ray_port_plan(start, end)
    fixed = p.all_fixed()
    assert len(set(fixed)) == len(fixed)
    assert all(start <= port < p.min_worker for port in fixed)
    assert p.min_worker <= p.max_worker == end


def test_overlaps() -> None:
    p = ray_port_plan(32000, 32100)
    assert p.overlaps(32768, 60999) is False
    assert ray_port_plan(40000, 40100).overlaps(32768, 60999) is True


def test_head_argv_pins_every_port() -> None:
    p = ray_port_plan(21000, 21040)
    argv = ray_head_argv("/e/bin/ray", "198.18.0.11", p, 2, "/tmp/r1")
    assert argv[:3] == ["/e/bin/ray", "start", "--head"]
    assert "--block" in argv
    assert "stop" not in argv
    assert _flag(argv, "--port") == "21000"
    assert _flag(argv, "--ray-client-server-port") == "21001"
    for flag in NODE_PORT_FLAGS:
        assert _flag(argv, flag).isdigit()
    assert _flag(argv, "--node-manager-port") == "21007"
    assert _flag(argv, "--max-worker-port") == "21040"
    assert _flag(argv, "--node-ip-address") == "198.18.0.11"
    assert _flag(argv, "--num-gpus") == "2"
    assert _flag(argv, "--temp-dir") == "/tmp/r1"
    assert "--include-dashboard=false" in argv
    assert "--dashboard-port" not in argv
    assert "--disable-usage-stats" in argv


def test_head_argv_dashboard_and_options() -> None:
    p = ray_port_plan(21000, 21040)
    argv = ray_head_argv(
        "ray", "10.0.0.1", p, 0, "/t", include_dashboard=True, num_cpus=4,
        object_store_memory=1 << 30, labels={"b": "2", "a": "1"},
    )  # fmt: skip
    assert "--include-dashboard=true" in argv
    assert _flag(argv, "--dashboard-port") == "21002"
    assert _flag(argv, "--dashboard-host") == "127.0.0.1"
    assert _flag(argv, "--num-cpus") == "4"
    assert _flag(argv, "--object-store-memory") == str(1 << 30)
    assert _flag(argv, "--labels") == "a=1,b=2"


@pytest.mark.parametrize("labels", [{"bad key": "x"}, {"k": "a,b"}, {"k": "x" * 64}, {"": "v"}])
def test_labels_validated(labels: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="label"):
        ray_head_argv("ray", "10.0.0.1", ray_port_plan(21000, 21040), 0, "/t", labels=labels)


def test_worker_argv() -> None:
    p = ray_port_plan(21000, 21040)
    head = gcs_address("198.18.0.11", p)
    assert head == "198.18.0.11:21000"
    argv = ray_worker_argv("ray", head, "198.18.0.12", p, 4, temp_dir="/t/w")
    assert argv[:4] == ["ray", "start", "--address", head]
    assert "--head" not in argv
    assert "--port" not in argv
    assert "--ray-client-server-port" not in argv
    assert "--include-dashboard=false" not in argv
    for flag in NODE_PORT_FLAGS:
        assert _flag(argv, flag).isdigit()
    assert _flag(argv, "--node-ip-address") == "198.18.0.12"
    assert _flag(argv, "--num-gpus") == "4"
    assert _flag(argv, "--temp-dir") == "/t/w"
    assert "--block" in argv
    assert "--temp-dir" not in ray_worker_argv("ray", head, "198.18.0.12", p, 4)


def test_worker_argv_rejects_bad_input() -> None:
    p = ray_port_plan(21000, 21040)
    with pytest.raises(ValueError):
        ray_worker_argv("ray", "198.18.0.11", "198.18.0.12", p, 1)
    with pytest.raises(ValueError):
        ray_worker_argv("ray", "198.18.0.11:21000", "198.18.0.12", p, -1)


def test_node_env() -> None:
    base = {
        "PATH": "/bin",
        "RAY_ADDRESS": "elsewhere:6379",
        "VLLM_PORT": "1234",
        "NCCL_IB_HCA": "stale",
        "CUDA_VISIBLE_DEVICES": "7",
    }
    env = ray_node_env(base, "198.18.0.12", [2, 3], nccl_ifname="eth0", gloo_ifname="eth1")
    assert env == {
        "PATH": "/bin",
        "VLLM_HOST_IP": "198.18.0.12",
        "CUDA_VISIBLE_DEVICES": "2,3",
        "NCCL_SOCKET_IFNAME": "eth0",
        "GLOO_SOCKET_IFNAME": "eth1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    assert base["RAY_ADDRESS"] == "elsewhere:6379"  # input untouched
    env2 = ray_node_env({}, "10.0.0.1", "GPU-uuid-a", nccl_ifname=None, gloo_ifname=None,
                        nccl_ib_hca="mlx5_0,mlx5_1")  # fmt: skip
    assert env2["CUDA_VISIBLE_DEVICES"] == "GPU-uuid-a"
    assert env2["NCCL_IB_HCA"] == "mlx5_0,mlx5_1"
    assert "NCCL_SOCKET_IFNAME" not in env2
    assert (
        ray_node_env({}, "10.0.0.1", [], nccl_ifname=None, gloo_ifname=None)["CUDA_VISIBLE_DEVICES"]
        == ""
    )


@pytest.mark.parametrize("devices", [[0, 0], [-1]])
def test_node_env_rejects_bad_devices(devices: list[int]) -> None:
    with pytest.raises(ValueError):
        ray_node_env({}, "10.0.0.1", devices, nccl_ifname=None, gloo_ifname=None)


def test_node_env_rejects_bad_ifname() -> None:
    with pytest.raises(ValueError):
        ray_node_env({}, "10.0.0.1", [0], nccl_ifname="eth 0", gloo_ifname=None)


def test_driver_env() -> None:
    env = ray_driver_env({"VLLM_PORT": "1", "X": "y"}, "198.18.0.11:21000", "198.18.0.11")
    assert env == {
        "X": "y",
        "RAY_ADDRESS": "198.18.0.11:21000",
        "VLLM_HOST_IP": "198.18.0.11",
        "RAY_USAGE_STATS_ENABLED": "0",
    }


# -- ray_nodes (pure parts) ------------------------------------------------------------


def _doc(nodes: list[dict[str, object]]) -> str:
    return "some ray log line\n" + json.dumps(
        {
            "ok": True,
            "client_ray_version": "2.60.0",
            "client_python_version": "3.11.7",
            "cluster_ray_version": "2.60.0",
            "cluster_python_version": "3.11.7",
            "nodes": nodes,
        }
    )


def test_parse_nodes() -> None:
    out = _doc(
        [
            {"node_id": "b", "ip": "198.18.0.12", "alive": False, "is_head": False,
             "resources": {"GPU": 2.0}, "labels": {}, "start_time_ms": 1,
             "death_reason": "UNEXPECTED_TERMINATION", "death_message": "gone"},
            {"node_id": "c", "ip": "198.18.0.12", "alive": True, "is_head": False,
             "resources": {"GPU": 2.0, "CPU": 2}, "labels": {"gitops-spec-hash": "h"},
             "start_time_ms": 5},
            {"node_id": "a", "ip": "198.18.0.11", "alive": True, "is_head": True,
             "resources": {"GPU": 1.0}, "labels": {}},
        ]
    )  # fmt: skip
    view = parse_ray_nodes_output(out)
    assert [n.node_id for n in view.nodes] == ["a", "c", "b"]
    assert view.head() is not None
    assert view.alive_ips() == frozenset({"198.18.0.11", "198.18.0.12"})
    assert view.alive_gpus_by_ip() == {"198.18.0.11": 1.0, "198.18.0.12": 2.0}
    dead = view.nodes[2]
    assert dead.death_reason == "UNEXPECTED_TERMINATION"
    assert view.nodes[1].labels == {"gitops-spec-hash": "h"}
    assert view.cluster_ray_version == "2.60.0"


@pytest.mark.parametrize(
    "out",
    [
        "",
        "not json",
        json.dumps({"ok": False, "error": "RpcError: Timed out"}),
        json.dumps({"ok": True}),
        json.dumps({"ok": True, "nodes": [{"ip": "x"}]}),
        json.dumps({"ok": True, "nodes": [{"node_id": "a", "ip": "x", "alive": True,
                                           "resources": {"GPU": "many"}}]}),
        json.dumps([1, 2]),
    ],
)  # fmt: skip
def test_parse_nodes_errors(out: str) -> None:
    with pytest.raises(RayQueryError):
        parse_ray_nodes_output(out)


def test_query_argv_and_env() -> None:
    argv = ray_nodes_query_argv("/e/bin/python", "198.18.0.11:21000", connect_timeout_ms=1500)
    assert argv[:3] == ["/e/bin/python", "-I", "-c"]
    assert argv[-2:] == ["198.18.0.11:21000", "1500"]
    env = ray_nodes_query_env({"RAY_ADDRESS": "x", "PATH": "/bin"}, connect_timeout_ms=1500)
    assert env == {
        "PATH": "/bin",
        "RAY_gcs_rpc_server_connect_timeout_s": "2",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    with pytest.raises(ValueError):
        ray_nodes_query_argv("p", "a:1", connect_timeout_ms=0)
