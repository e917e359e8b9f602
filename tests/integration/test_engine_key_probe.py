"""Engines protected by a key only gateways hold (VLLM_API_KEY from
engine.secretEnvFiles): the daemon's readiness probe reads the key from the engine's own
environment and sends it, so a protected engine still becomes Ready; without the key the
probe says why it is not."""

from __future__ import annotations

import os

from reconciler.ports.processes.probe import probe_engine
from reconciler.ports.processes.tracking import engine_api_key
from testrigs.gateway_rig import start_engine


def test_probe_sends_the_engine_key_read_from_the_engine_environment() -> None:
    os.environ["VLLM_API_KEY"] = "engine-secret"  # the stand-in reads it like vLLM does
    try:
        e = start_engine("m1")
    finally:
        del os.environ["VLLM_API_KEY"]
    try:
        key = engine_api_key(e.proc.pid)
        assert key == "engine-secret"
        ok, detail = probe_engine(e.host, e.port, "m1", 5.0)
        assert not ok and detail == "/v1/models answered 401"
        assert probe_engine(e.host, e.port, "m1", 5.0, api_key=key) == (True, "")
        assert engine_api_key(os.getpid()) is None  # no key in the environment: none sent
    finally:
        e.stop()
