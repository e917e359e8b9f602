"""Gateway benchmarks; prints Markdown tables (medians from one run).

1. Time to first token through the gateway vs straight to the engine: real vLLM on the CPU
   with the tiny model (`--engine vllm`, the default when the engine environment exists)
   or the stand-in engine (`--engine stand-in`, 20 ms to first token). Requests alternate
   between the two paths, one at a time, `--requests` each.
2. `--concurrent` (1,000) streaming requests at once through the gateway against the fast
   stand-in engine (testrigs/engines/stream_engine.py: 16 chunks 20 ms apart): errors,
   wall time, and the gateway process's CPU seconds and peak RSS.

Run: .venv/bin/python bench/gateway_bench.py [--requests 100] [--concurrent 1000]
"""

from __future__ import annotations

import argparse
import asyncio
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


def start_vllm(tmp: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    from reconciler.demo.tinymodel import make_tiny_model

    model = make_tiny_model(tmp / "model")
    port = free_port()
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1"}
    log = (tmp / "vllm.log").open("wb")
    proc = subprocess.Popen(
        [str(ENGINE_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
         "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", "512", "--enforce-eager"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_port("127.0.0.1", port, timeout=600)
    return proc, port, "tiny"


def ttft_table(tmp: Path, engine: str, n: int) -> None:
    if engine == "vllm":
        proc, port, model = start_vllm(tmp)

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
        direct: list[float] = []
        via: list[float] = []
        for _ in range(n):
            for base, out in ((direct_url, direct), (gw_url, via)):
                r = chat(base, model, "hello there", timeout=120, max_tokens=4)
                assert r.ttft_s is not None
                out.append(r.ttft_s * 1000)
        md, mg = statistics.median(direct), statistics.median(via)
        q = lambda xs: statistics.quantiles(xs, n=10)[-1]  # noqa: E731
        print(f"\nTime to first token, {engine} engine, {n} requests per path, one at a time\n")
        print("| path | median ms | p90 ms |")
        print("|---|---:|---:|")
        print(f"| direct to the engine | {md:.2f} | {q(direct):.2f} |")
        print(f"| through the gateway | {mg:.2f} | {q(via):.2f} |")
        print(f"\nratio of medians {mg / md:.3f}; added at the median {mg - md:.2f} ms")
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
    p.add_argument("--concurrent", type=int, default=1000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp:
        if args.requests:
            ttft_table(Path(tmp), args.engine, args.requests)
        if args.concurrent:
            concurrency_table(Path(tmp), args.concurrent)


if __name__ == "__main__":
    sys.exit(main())
