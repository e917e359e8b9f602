"""Gateway benchmarks; prints Markdown tables (medians from one run).

1. Time to first token through the gateway vs straight to the engine: real vLLM on the CPU
   with the tiny model (`--engine vllm`, the default when the engine environment exists)
   or the stand-in engine (`--engine stand-in`, 20 ms to first token). Requests alternate
   between the two paths, one at a time and `--gap-ms` apart, each path over one kept-alive
   connection, `--requests` each, for a short and a long prompt; `--wire` adds where the
   gateway's share goes, read off the loopback wire with tcpdump (bench/wire_capture.py).
2. `--concurrent` (1,000) streaming requests at once through the gateway against the fast
   stand-in engine (testrigs/engines/stream_engine.py: 16 chunks 20 ms apart): errors,
   wall time, and the gateway process's CPU seconds and peak RSS.

Run: .venv/bin/python bench/gateway_bench.py [--requests 100] [--wire] [--concurrent 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import wire_capture

from reconciler.ports.openai_client import chat
from testrigs.gateway_rig import (
    REPO,
    StatusServer,
    free_port,
    replica_entry,
    start_engine,
    start_gateway,
    status_doc,
    wait_port,
)

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
ENGINE_PY = Path(os.environ.get("RECONCILER_ENGINE_PYTHON", REPO / ".venv-engine/bin/python"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


def start_vllm(tmp: Path, extra_env: dict[str, str],
               model_dir: Path | None) -> tuple[subprocess.Popen[bytes], int, str]:
    from reconciler.demo.tinymodel import make_tiny_model

    model = model_dir or make_tiny_model(tmp / "model")
    port = free_port()
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1", **extra_env}
    log = (tmp / "vllm.log").open("wb")
    proc = subprocess.Popen(
        [str(ENGINE_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
         "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", "2048", "--enforce-eager", "--no-enable-prefix-caching"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_port("127.0.0.1", port, timeout=600)
    return proc, port, "tiny"


# the short prompt is the worst case for the ratio (the smallest TTFT to compare against);
# the long one (~500 tokens of the tiny model's vocabulary) is closer to a real chat turn
PROMPTS = {"short": "hello there", "long": " ".join(f"word{i}" for i in range(150))}


class KeepAliveClient:
    """One persistent HTTP/1.1 connection, as OpenAI's SDKs keep one: what is compared is
    then the gateway's hop, not a TCP connection set up per request on one path only."""

    def __init__(self, base_url: str) -> None:
        host, port = base_url.removeprefix("http://").rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)

    def ttft_ms(self, model: str, prompt: str) -> float | None:
        """Time to the first non-empty content delta; None when the answer had none."""
        body = json.dumps({"model": model, "stream": True, "max_tokens": 8,
                           "temperature": 0.0,
                           "messages": [{"role": "user", "content": prompt}]})
        t0 = time.perf_counter()
        self.conn.request("POST", "/v1/chat/completions", body=body,
                          headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
        ttft = None
        for raw in resp:
            line = raw.strip()
            if ttft is None and line.startswith(b"data: {"):
                for choice in json.loads(line[6:]).get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        ttft = (time.perf_counter() - t0) * 1000
        resp.read()  # to the end, so the connection is reused
        return ttft

    def close(self) -> None:
        self.conn.close()


def _measure(direct_url: str, gw_url: str, model: str, prompt: str, n: int,
             gap_s: float) -> tuple[list[float], list[float], int]:
    direct: list[float] = []
    via: list[float] = []
    empty = 0
    clients = ((KeepAliveClient(direct_url), direct), (KeepAliveClient(gw_url), via))
    try:
        for i in range(n):
            for client, out in clients:
                # the same prompt on both paths (greedy decoding: the same answer, so the
                # first token with text comes at the same step; a prompt naming its path
                # changed the answer and moved TTFT by ms); vLLM runs without its prefix
                # cache, which would answer the second path's copy from the first's
                ms = client.ttft_ms(model, f"{i} {prompt}")
                if ms is None:
                    empty += 1  # the random-weight model answered no text at all
                else:
                    out.append(ms)
                time.sleep(gap_s)
    finally:
        for client, _ in clients:
            client.close()
    return direct, via, empty


def ttft_table(tmp: Path, engine: str, n: int, gap_ms: float, engine_env: dict[str, str],
               wire: bool, model_dir: Path | None) -> None:
    if engine == "vllm":
        proc, port, model = start_vllm(tmp, engine_env, model_dir)

        def stop() -> None:
            # the whole session: vLLM's EngineCore and workers outlive a killed API server
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    else:
        e = start_engine("tiny", extra=["--ttft", "0.02", "--tokens", "8"])
        port, model, stop = e.port, "tiny", e.stop
    status = StatusServer(status_doc("n1", "127.0.0.1", {"d": model},
                                     [replica_entry("d", 0, "n1", port)]))
    g = start_gateway(tmp, status.url)
    try:
        g.wait_models({model}, timeout=30)
        direct_url, gw_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{g.port}"
        for base in (direct_url, gw_url):  # warm-up (first-request compilation, pools)
            for _ in range(3):
                chat(base, model, "hello", timeout=120, max_tokens=4)
        env = " ".join(f"{k}={v}" for k, v in engine_env.items()) or "default env"
        what = model_dir.name if model_dir else "tiny random-weight Llama"
        print(f"\nTime to first token, {engine} engine, {what} ({env}), {n} requests per path and "
              f"prompt, alternating, {gap_ms:g} ms apart\n")
        print("| prompt | direct median ms | via gateway median ms | added ms | ratio | "
              "direct p90 | via p90 | answers without text |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        parts: list[str] = []
        for name, prompt in PROMPTS.items():
            pcap = tmp / f"{name}.pcap"
            with (wire_capture.capture(pcap, (port, g.port)) if wire
                  else contextlib.nullcontext()):
                direct, via, empty = _measure(direct_url, gw_url, model, prompt, n,
                                              gap_ms / 1000)
            md, mg = statistics.median(direct), statistics.median(via)
            q = lambda xs: statistics.quantiles(xs, n=10)[-1]  # noqa: E731
            print(f"| {name} | {md:.2f} | {mg:.2f} | {mg - md:+.2f} | {mg / md:.3f} | "
                  f"{q(direct):.2f} | {q(via):.2f} | {empty} |")
            if wire:
                m = wire_capture.breakdown(wire_capture.read_pcap(pcap), port, g.port).medians()
                nan = float("nan")
                hop = m.get("inbound_ms", nan) + m.get("relay_ms", nan)
                engine_ms = m.get("engine_direct_ms", nan)
                parts.append(
                    f"| {name} | {m.get('inbound_ms', nan):.3f} | {m.get('relay_ms', nan):.3f} | "
                    f"{engine_ms:.2f} | {m.get('engine_behind_gateway_ms', nan):.2f} | "
                    f"{(engine_ms + hop) / engine_ms:.3f} |")
        if parts:
            print("\nOn the wire (tcpdump on lo, medians): the gateway's own share\n")
            print("| prompt | gateway inbound ms (client POST -> engine POST) | relay ms "
                  "(engine's first token -> client) | engine ms, direct | engine ms, "
                  "behind the gateway | hop ratio (engine + inbound + relay) / engine |")
            print("|---|---:|---:|---:|---:|---:|")
            print("\n".join(parts))
    finally:
        g.stop()
        status.close()
        stop()


async def _one_stream(session: aiohttp.ClientSession, url: str, i: int) -> str | None:
    body = {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "x"}],
            "user": f"c{i}"}
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                return f"HTTP {resp.status}"
            data = b""
            async for chunk in resp.content.iter_any():
                data += chunk
            return None if data.rstrip().endswith(b"data: [DONE]") else "short stream"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__


async def _storm(port: int, n: int) -> tuple[list[str | None], float]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        t0 = time.monotonic()
        results = await asyncio.gather(*(_one_stream(session, url, i) for i in range(n)))
        return list(results), time.monotonic() - t0


def concurrency_table(tmp: Path, n: int) -> None:
    e = start_engine("fast", extra=["--tokens", "16", "--token-delay", "0.02"])
    status = StatusServer(status_doc("n1", "127.0.0.1", {"d": "fast"},
                                     [replica_entry("d", 0, "n1", e.port)]))
    g = start_gateway(tmp, status.url)
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib(g.proc.pid))
            time.sleep(0.05)

    try:
        g.wait_models({"fast"})
        idle_rss = rss_mib(g.proc.pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu0 = cpu_seconds(g.proc.pid)
        results, wall = asyncio.run(_storm(g.port, n))
        cpu = cpu_seconds(g.proc.pid) - cpu0
        done.set()
        sampler.join()
        errors = [r for r in results if r is not None]
        print(f"\n{n} concurrent streaming requests through the gateway, stand-in engine "
              "(16 chunks, 20 ms apart)\n")
        print("| requests | errors | wall s | gateway CPU s | gateway CPU ms/request | "
              "RSS idle MiB | RSS peak MiB |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| {n} | {len(errors)} | {wall:.2f} | {cpu:.2f} | {cpu * 1000 / n:.2f} | "
              f"{idle_rss:.1f} | {peak[0]:.1f} |")
        if errors:
            print(f"\nfirst errors: {errors[:5]}")
    finally:
        done.set()
        g.stop()
        status.close()
        e.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", choices=["vllm", "stand-in"],
                   default="vllm" if ENGINE_PY.exists() else "stand-in")
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--gap-ms", type=float, default=50.0,
                   help="pause after each request (default 50): back to back, vLLM's "
                        "post-request work on a 2-core machine overlaps the next request")
    p.add_argument("--engine-env", action="append", default=[], metavar="K=V",
                   help="extra environment for vLLM, e.g. OMP_WAIT_POLICY=PASSIVE")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="a prepared model to serve instead of the tiny random-weight one, "
                        "e.g. the demo's SmolLM2 (scripts/prepare-model.sh prints where)")
    p.add_argument("--wire", action="store_true",
                   help="also split the gateway's share off the loopback wire (tcpdump)")
    p.add_argument("--concurrent", type=int, default=1000)
    args = p.parse_args()
    if args.wire and not wire_capture.available():
        p.error("--wire needs tcpdump (apt-get install tcpdump) and root")
    engine_env = dict(kv.split("=", 1) for kv in args.engine_env)
    with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp:
        if args.requests:
            ttft_table(Path(tmp), args.engine, args.requests, args.gap_ms, engine_env,
                       args.wire, args.model_dir)
        if args.concurrent:
            concurrency_table(Path(tmp), args.concurrent)


if __name__ == "__main__":
    sys.exit(main())
