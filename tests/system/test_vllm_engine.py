"""Real vLLM on the CPU, started, probed and stopped through LocalProcessPort.

One vLLM start-up for the module (about a minute on 2 cores with the tiny model). The
engine python comes from $RECONCILER_ENGINE_PYTHON, else /work/main/.venv-engine/bin/python.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.core.vocabulary import LaunchSpec, MemberKey, ProcessObservation, ReplicaKey
from reconciler.demo.tinymodel import make_tiny_model
from reconciler.ports.openai_client import chat
from reconciler.ports.processes import LocalProcessPort, read_stat

pytestmark = [pytest.mark.system, pytest.mark.vllm]

ENGINE_PYTHON = Path(
    os.environ.get("RECONCILER_ENGINE_PYTHON", "/work/main/.venv-engine/bin/python")
)
READY_BUDGET_S = 180.0
SERVED = "tiny-llama"
MEMBER = MemberKey(ReplicaKey("tiny", 0), "engine")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Engine:
    port: LocalProcessPort
    launch: LaunchSpec
    ready: ProcessObservation
    ready_after_s: float
    health_seen: list[str]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.launch.port}"


def vllm_launch(model: Path, member: MemberKey, spec_hash: str) -> LaunchSpec:
    net_port = _free_port()
    return LaunchSpec(
        member=member,
        spec_hash=spec_hash,
        argv=(
            str(ENGINE_PYTHON),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--served-model-name",
            SERVED,
            "--host",
            "127.0.0.1",
            "--port",
            str(net_port),
            "--max-model-len",
            "512",
            "--enforce-eager",  # no torch.compile warm-up: ready ~60 s sooner on 2 cores
            "--disable-access-log-for-endpoints",
            "/health,/v1/models",
        ),
        env={
            "RECONCILER_MEMBER": member.slug,
            "RECONCILER_SPEC_HASH": spec_hash,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        },
        port=net_port,
        gpus=(),
        startup_timeout_s=READY_BUDGET_S,
        served_name=SERVED,
        host="127.0.0.1",
        probe_timeout_s=2.0,
    )


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not ENGINE_PYTHON.exists():
        pytest.skip(
            f"no vLLM engine environment at {ENGINE_PYTHON} (set RECONCILER_ENGINE_PYTHON, "
            "or run scripts/install-engine-env.sh)"
        )
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny-llama")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Engine]:
    root = tmp_path_factory.mktemp("vllm")
    launch = vllm_launch(tiny_model, MEMBER, "sys1")
    port = LocalProcessPort(
        root / "state", log_max_bytes=4 << 20, log_backups=2, probe_interval_s=0.5
    )
    t0 = time.monotonic()
    port.start(launch)
    seen: list[str] = []
    obs: ProcessObservation | None = None
    try:
        while time.monotonic() - t0 < READY_BUDGET_S:
            (obs,) = port.list()
            if not seen or seen[-1] != obs.health:
                seen.append(obs.health)
            if not obs.running or obs.health == "ready":
                break
            time.sleep(0.5)
        assert obs is not None and obs.running, (
            f"vLLM exited (code {obs and obs.exit_code}); log tail:\n"
            + port.log_path(MEMBER).read_text()[-4000:]
        )
        assert obs.health == "ready", (
            f"vLLM not ready after {READY_BUDGET_S:.0f}s ({obs.detail}); log tail:\n"
            + port.log_path(MEMBER).read_text()[-4000:]
        )
        yield Engine(port, launch, obs, time.monotonic() - t0, seen)
    finally:
        for o in port.list():
            if o.running:
                port.stop(o.member, 5.0)
            else:
                port.forget(o.member)
        port.close()


def test_vllm_becomes_ready_through_starting(engine: Engine) -> None:
    assert engine.health_seen[0] == "starting"
    assert engine.health_seen[-1] == "ready"
    assert engine.ready.running and engine.ready.pid > 0
    print(f"vLLM ready after {engine.ready_after_s:.1f}s; health seen {engine.health_seen}")


def test_chat_completion_answers(engine: Engine) -> None:
    result = chat(engine.base_url, SERVED, "Hello! How are you today?", timeout=60.0, max_tokens=16)
    assert result.chunks > 0
    assert result.ttft_s is None or result.ttft_s <= result.total_s
    print(f"chat: ttft {result.ttft_s}s total {result.total_s:.2f}s text {result.text!r}")


def test_stop_frees_the_port(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    port, launch = engine.port, engine.launch
    pids = port.owned_pids()
    assert engine.ready.pid in pids
    caplog.set_level(logging.INFO, logger="reconciler.ports.processes")
    t0 = time.monotonic()
    assert port.stop(MEMBER, grace_s=10.0)
    took = time.monotonic() - t0
    for pid in pids:
        st = read_stat(pid)
        assert st is None or st.gone, f"pid {pid} survived the stop"
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", launch.port))
    assert port.list() == []
    sigkill = any("SIGKILL" in r.getMessage() for r in caplog.records)
    codes = [getattr(r, "code", None) for r in caplog.records if r.getMessage() == "member exited"]
    print(f"stop took {took:.1f}s for {len(pids)} pids; SIGKILL needed: {sigkill}; exit {codes}")


def test_stop_while_loading_needs_sigkill(
    tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Second (and last) vLLM start-up: stop it while the engine core loads. Runs after
    the module's engine is stopped (file order), so the two don't share the 2 cores."""
    member = MemberKey(ReplicaKey("tiny", 1), "engine")
    launch = vllm_launch(tiny_model, member, "sys2")
    port = LocalProcessPort(tmp_path / "state", 4 << 20, 1, probe_interval_s=0.5)
    try:
        port.start(launch)
        deadline = time.monotonic() + 90
        while len(port.owned_pids()) < 3:  # API server + EngineCore (+ tracker, worker)
            assert time.monotonic() < deadline, "vLLM never started its engine core"
            (obs,) = port.list()
            assert obs.running, port.log_path(member).read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(2.0)
        (obs,) = port.list()
        assert obs.health == "starting"
        pids = port.owned_pids()
        caplog.set_level(logging.INFO, logger="reconciler.ports.processes")
        t0 = time.monotonic()
        assert port.stop(member, grace_s=3.0)
        took = time.monotonic() - t0
        for pid in pids:
            st = read_stat(pid)
            assert st is None or st.gone, f"pid {pid} survived the stop"
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", launch.port))
        sigkill = any("SIGKILL" in r.getMessage() for r in caplog.records)
        print(f"stop while loading took {took:.1f}s for {len(pids)} pids; SIGKILL: {sigkill}")
    finally:
        for o in port.list():
            if o.running:
                port.stop(o.member, 0.0)
            else:
                port.forget(o.member)
        port.close()
