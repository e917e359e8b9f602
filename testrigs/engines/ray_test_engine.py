"""A multi-node *test engine*: a tiny Ray driver that behaves like ``vllm serve`` over Ray.

vLLM on the CPU has no Ray executor, so system tests run this instead, with the engine
environment's python (it imports ray; the daemon does not)::

    RAY_ADDRESS=198.18.0.11:21000 python testrigs/engines/ray_test_engine.py \
        --world-size 2 --strategy SPREAD --host 198.18.0.11 --port 8000 \
        --served-model-name tiny

It also takes the command line the daemon builds for vLLM (``engine.apiServerModule:
testrigs.engines.ray_test_engine`` in a node config, run as ``python -m
testrigs.engines.ray_test_engine`` with the repository on ``PYTHONPATH`` through the node
config's ``engine.env``): ``--model``, ``--served-model-name``, ``--host``, ``--port``,
``--tensor-parallel-size``, ``--pipeline-parallel-size``, ``--distributed-executor-backend``
(must be ``ray``), ``--max-model-len``, ``--dtype``, ``--gpu-memory-utilization``; other
arguments are ignored. Without ``--world-size`` the world size is TP x PP, as in vLLM.

What it does, like vLLM's Ray executor:
- attaches to the cluster named by ``RAY_ADDRESS`` (refuses to start without it: a bare
  ``ray.init()`` would quietly start a private one-node cluster);
- reserves one ``{"GPU": 1}`` bundle per rank in a placement group (PACK or SPREAD) and waits
  up to ``--pg-timeout`` seconds for it (exit 2 when it can't be placed);
- starts one actor per rank on its bundle; each reports its node IP, pid and the
  ``CUDA_VISIBLE_DEVICES`` / ``VLLM_HOST_IP`` / ``*_SOCKET_IFNAME`` it inherited;
- serves ``GET /health`` (200 while every rank answered the last ping round, else 503),
  ``GET /v1/models`` (the OpenAI list with ``--served-model-name``) and ``GET /ranks``
  (what each rank reported, for tests);
- exits 3 shortly after a rank dies (``--exit-grace`` seconds of 503 first, so a prober can
  see it) and 4 after ``--max-missed`` ping rounds time out, so a supervisor sees the death.
SIGTERM/SIGINT end it with status 0; with ``--shutdown-timeout`` (vLLM's drain) and the
test-only ``--drain-seconds`` it first keeps pinging every rank for the shorter of the two,
as vLLM's engine still needs every Ray node while requests in flight finish, logging
``drained`` (or ``rank died during the drain`` and exit 3).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EXIT_PG_TIMEOUT = 2
EXIT_RANK_DIED = 3
EXIT_RANKS_UNRESPONSIVE = 4
EXIT_NO_ADDRESS = 5


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world-size", type=int, default=None, help="default: TP x PP")
    # vLLM's flags (what the daemon passes); the model itself is never loaded
    p.add_argument("--model", default="")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    p.add_argument("--distributed-executor-backend", default=None)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--strategy", choices=["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"],
                   default="PACK")  # fmt: skip
    p.add_argument("--pg-timeout", type=float, default=60.0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default="ray-test-model")
    p.add_argument("--ping-interval", type=float, default=0.5)
    p.add_argument("--ping-timeout", type=float, default=5.0)
    p.add_argument("--max-missed", type=int, default=6)
    p.add_argument("--exit-grace", type=float, default=1.0)
    p.add_argument("--gpus-per-rank", type=float, default=1.0)
    # vLLM's drain on SIGTERM (requests in flight get up to this long)
    p.add_argument("--shutdown-timeout", type=float, default=0.0)
    # test only: how long requests stay in flight after SIGTERM; the ranks (on every Ray
    # node of the replica) keep answering through it, or it exits 3 like any rank death
    p.add_argument("--drain-seconds", type=float, default=0.0)
    args, ignored = p.parse_known_args(argv)
    if ignored:
        _log("ignoring arguments", args=ignored)
    if args.world_size is None:
        args.world_size = args.tensor_parallel_size * args.pipeline_parallel_size
    return args


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.healthy = False
        self.ranks: list[dict[str, Any]] = []
        self.reason = "starting"
        self.created = int(time.time())


def _log(msg: str, **kv: Any) -> None:
    print(json.dumps({"msg": msg, **kv}), file=sys.stderr, flush=True)


def _make_handler(
    state: _State, model: str, max_model_len: int = 2048, root: str = ""
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            with state.lock:
                healthy, ranks, reason = state.healthy, list(state.ranks), state.reason
            if self.path == "/health":
                self._send(200 if healthy else 503, {"healthy": healthy, "reason": reason})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{
                    "id": model, "object": "model", "created": state.created,
                    "owned_by": "ray-test-engine", "root": root or model,
                    "max_model_len": max_model_len,
                }]})  # fmt: skip
            elif self.path == "/ranks":
                self._send(200, {"healthy": healthy, "reason": reason, "ranks": ranks})
            else:
                self._send(404, {"error": "not found"})

    return Handler


def _serve_local(args: argparse.Namespace) -> int:
    """World size 1 without an executor flag: serve at once, no Ray (until SIGTERM)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    signal.signal(signal.SIGINT, lambda _s, _f: stop.set())
    state = _State()
    state.healthy, state.reason = True, "ok (single rank, no Ray)"
    state.ranks = [{"rank": 0, "pid": os.getpid(), "env": {
        k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "VLLM_HOST_IP")}}]
    server = ThreadingHTTPServer(
        (args.host, args.port),
        _make_handler(state, args.served_model_name, args.max_model_len, args.model),
    )
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    _log("http listening (local)", host=args.host, port=args.port)
    stop.wait()
    server.shutdown()
    _log("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.distributed_executor_backend not in (None, "ray"):
        _log("only --distributed-executor-backend ray is supported",
             got=args.distributed_executor_backend)
        return EXIT_NO_ADDRESS
    if args.distributed_executor_backend is None and args.world_size == 1:
        return _serve_local(args)  # a single-GPU replica: vLLM needs no Ray for it either
    address = os.environ.get("RAY_ADDRESS", "")
    if not address:
        _log("RAY_ADDRESS is not set; refusing to start a private Ray instance")
        return EXIT_NO_ADDRESS

    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RaySystemError
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    state = _State()
    server = ThreadingHTTPServer(
        (args.host, args.port),
        _make_handler(state, args.served_model_name, args.max_model_len, args.model),
    )
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    _log("http listening", host=args.host, port=args.port)

    t0 = time.monotonic()
    ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    # ray.init installs its own (abseil) SIGTERM handler, which dumps a stack and kills
    # the process: ours again, so SIGTERM stops cleanly (and drains, as vLLM does)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    _log("attached", address=address, seconds=round(time.monotonic() - t0, 2))

    bundles = [{"GPU": args.gpus_per_rank} for _ in range(args.world_size)]
    pg = placement_group(bundles, strategy=args.strategy)
    try:
        ray.get(pg.ready(), timeout=args.pg_timeout)
    except GetTimeoutError:
        _log("placement group not ready", timeout=args.pg_timeout, bundles=bundles)
        remove_placement_group(pg)
        return EXIT_PG_TIMEOUT
    _log("placement group ready", seconds=round(time.monotonic() - t0, 2))

    @ray.remote(num_cpus=0, max_restarts=0)
    class Rank:
        def __init__(self, rank: int) -> None:
            self.rank = rank

        def ping(self) -> dict[str, Any]:
            import socket

            return {
                "rank": self.rank,
                "node_ip": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id(),
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "env": {k: os.environ.get(k) for k in (
                    "CUDA_VISIBLE_DEVICES", "VLLM_HOST_IP", "NCCL_SOCKET_IFNAME",
                    "GLOO_SOCKET_IFNAME", "NCCL_IB_HCA",
                )},
            }  # fmt: skip

    actors = [
        Rank.options(  # type: ignore[attr-defined]
            num_gpus=args.gpus_per_rank,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=i
            ),
        ).remote(i)
        for i in range(args.world_size)
    ]

    missed = 0
    code = 0
    drain_until: float | None = None
    drained_rounds = 0
    while True:
        if stop.is_set():
            if drain_until is None:
                hold = min(args.drain_seconds, args.shutdown_timeout)
                drain_until = time.monotonic() + hold
                if hold > 0:
                    _log("draining", seconds=hold)
            if time.monotonic() >= drain_until:
                if drained_rounds:
                    _log("drained", rounds=drained_rounds, ranks=len(actors))
                break
        try:
            ranks = ray.get([a.ping.remote() for a in actors], timeout=args.ping_timeout)
        except (RayActorError, RaySystemError) as exc:
            with state.lock:
                state.healthy = False
                state.reason = f"rank died: {type(exc).__name__}"
            _log("rank died during the drain" if drain_until is not None else "rank died",
                 error=str(exc)[:500])
            code = EXIT_RANK_DIED
            break
        except GetTimeoutError:
            missed += 1
            with state.lock:
                state.healthy = False
                state.reason = f"{missed} ping rounds timed out"
            _log("ping round timed out", missed=missed)
            if missed >= args.max_missed:
                code = EXIT_RANKS_UNRESPONSIVE
                break
            continue
        if missed or not state.healthy:
            _log("all ranks answered", ranks=[(r["rank"], r["node_ip"]) for r in ranks])
        missed = 0
        with state.lock:
            state.healthy = True
            state.reason = "ok"
            state.ranks = ranks
        if drain_until is not None:
            drained_rounds += 1  # every rank answered, during the drain
            time.sleep(args.ping_interval)
        else:
            stop.wait(args.ping_interval)

    if code:
        # Let a prober see the 503 before the process disappears.
        time.sleep(args.exit_grace)
        server.shutdown()
        _log("exiting", code=code)
        sys.stdout.flush()
        # Ray's shutdown can hang on a half-dead cluster; the exit status is what matters.
        os._exit(code)
    server.shutdown()
    try:
        remove_placement_group(pg)
        ray.shutdown()
    except Exception as exc:  # best effort on a clean stop
        _log("shutdown error", error=str(exc)[:300])
    _log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
