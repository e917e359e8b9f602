"""A 2-host network-namespace cluster (testrigs.multinode_cluster) running real vLLM on the
CPU with the tiny model, a daemon and a gateway on every host: for the gateway's system
tests and rollout checks.

Each host's node config gets a `gateway:` section (listen on the host's address, routes
from every node of the Cluster document); `start_gateways` runs `python -m reconciler
gateway` in every host. Requests are sent from a thread that joined the host's namespace.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
from pathlib import Path
from typing import Any

from reconciler.demo.tinymodel import make_tiny_model
from testrigs.multinode_cluster import (
    REPO,
    MultiNodeCluster,
    engine_python,
    in_netns,
)
from testrigs.netns import NetnsHost

GATEWAY_PORT = 9480
READY_S = 400.0  # two vLLM engines loading at once on a busy 2-core machine


def cluster_yaml(hosts: list[NetnsHost]) -> str:
    nodes = "".join(
        f"    - name: {h.name}\n"
        f"      address: {h.ip}\n"
        "      gpus: {count: 0, memoryGib: 1}\n"
        "      statusPort: 9400\n"
        for h in hosts
    )
    return (
        "apiVersion: reconciler.dev/v1alpha1\n"
        "kind: Cluster\n"
        "metadata: {name: gw}\n"
        "spec:\n"
        "  ports:\n"
        "    engine: {start: 8000, end: 8099}\n"
        "  nodes:\n" + nodes
    )


def tiny_yaml(model: Path, *, name: str = "tiny", replicas: int = 2, nodes: str = "h1, h2",
              max_model_len: int = 512, rollout: str = "") -> str:
    return (
        "apiVersion: reconciler.dev/v1alpha1\n"
        "kind: ModelDeployment\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        f"  model: {{path: {model}, servedName: {name}}}\n"
        f"  replicas: {replicas}\n"
        "  executor: mp\n"
        f"  placement: {{nodes: [{nodes}]}}\n"
        "  engine:\n"
        f"    maxModelLen: {max_model_len}\n"
        '    extraArgs: ["--enforce-eager"]\n'
        '    env: {VLLM_CPU_KVCACHE_SPACE: "1"}\n'
        "  port: 8000\n"
        f"  probes: {{startupTimeoutSeconds: {int(READY_S)}, periodSeconds: 1, "
        "timeoutSeconds: 5}\n" + rollout
    )


class GatewayCluster(MultiNodeCluster):
    def __init__(self) -> None:
        super().__init__(2, gpus_per_node=0, backoff_initial_s=3)
        self.model: Path | None = None

    def setup(self) -> GatewayCluster:
        super().setup()
        try:
            self.model = make_tiny_model(self.root / "model")
            for h in self.nodes:
                path = self.root / f"{h.name}.json"
                config = json.loads(path.read_text())
                engine = config["engine"]
                engine.pop("apiServerModule", None)  # real vLLM
                engine["allowedModelRoots"] = [str(self.root)]
                engine["stopGracePeriodSeconds"] = 10
                engine["env"] = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                                 "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                 "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
                config["gateway"] = {"listen": {"address": h.ip, "port": GATEWAY_PORT},
                                     "peers": "cluster", "statusIntervalSeconds": 0.5}
                path.write_text(json.dumps(config, indent=1))
        except BaseException:
            self.teardown()
            raise
        return self

    def start_gateways(self) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "HOME": os.environ.get("HOME", "/root"), "PYTHONPATH": str(REPO)}
        for h in self.nodes:
            with (self.root / f"{h.name}.gateway.log").open("ab") as log:
                self.net.popen(h, [sys.executable, "-m", "reconciler", "gateway", "--config",
                                   str(self.root / f"{h.name}.json")],
                               env, stdout=log, cwd=str(REPO))

    def gateway_log(self, h: NetnsHost) -> str:
        return (self.root / f"{h.name}.gateway.log").read_text(errors="replace")[-4000:]

    def ready_replicas(self, deployment: str = "tiny") -> dict[int, str]:
        """index -> node, for replicas their leader reports Ready."""
        out: dict[int, str] = {}
        for h in self.nodes:
            for r in self.status(h)["replicas"]:
                if (r["deployment"] == deployment and r["nodes"] and r["nodes"][0] == h.name
                        and r["state"] == "Ready"):
                    out[int(r["index"])] = h.name
        return out


def post(host: NetnsHost, body: dict[str, Any], *, port: int = GATEWAY_PORT,
         path: str = "/v1/chat/completions", timeout: float = 120.0
         ) -> tuple[int, dict[str, str], bytes]:
    def call() -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(host.ip, port, timeout=timeout)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, dict(resp.headers.items()), resp.read()
        finally:
            conn.close()

    return in_netns(host, call, timeout + 10)


def chat_body(model: str = "tiny", *, user: str = "", max_tokens: int = 4,
              stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": stream,
                            "messages": [{"role": "user", "content": "hello"}]}
    if user:
        body["user"] = user
    return body


__all__ = ["READY_S", "GatewayCluster", "chat_body", "cluster_yaml", "engine_python", "post",
           "tiny_yaml"]
