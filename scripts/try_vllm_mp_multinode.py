"""Try vLLM's Ray-free multi-node mode on the CPU across 2 network-namespace test hosts.

    sudo .venv/bin/python scripts/try_vllm_mp_multinode.py tp   # --tensor-parallel-size 2
    sudo .venv/bin/python scripts/try_vllm_mp_multinode.py dp   # --data-parallel-size 2

Node rank 0 (198.18.1.11) serves HTTP; node rank 1 runs `--headless`. Both run
`scripts/vllm_serve.py serve` (vLLM's CLI; the api_server module has no --headless) with the
tiny random model, --enforce-eager, and `--nnodes 2 --node-rank R --master-addr 198.18.1.11
--master-port 29511`. Waits for /health 200 on rank 0, asks for a 5-token completion, prints
the outcome; logs in a new /tmp/mpx-*/<mode>/. Results: docs/ray-notes.md, section
"vLLM mp multi-node on CPU".
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from reconciler.demo.tinymodel import make_tiny_model
from testrigs.netns import NetnsHarness

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r: print(r.status)
except Exception as e: print(0, type(e).__name__)
"""


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "tp"
    budget = float(sys.argv[2]) if len(sys.argv) > 2 else 300.0
    py = str(REPO / ".venv-engine" / "bin" / "python")
    root = Path(tempfile.mkdtemp(prefix="mpx-"))
    out = root / mode
    out.mkdir()
    model = make_tiny_model(root / "model")
    with NetnsHarness(2, subnet="198.18.1") as net:
        h1, _ = net.hosts
        procs = []
        t0 = time.monotonic()
        for rank, h in enumerate(net.hosts):
            argv = [py, str(REPO / "scripts" / "vllm_serve.py"), "serve", str(model),
                    "--served-model-name", "tiny", "--max-model-len", "512", "--enforce-eager",
                    "--nnodes", "2", "--node-rank", str(rank), "--master-addr", h1.ip,
                    "--master-port", "29511", "--distributed-executor-backend", "mp"]
            if mode == "tp":
                argv += ["--tensor-parallel-size", "2"]
            else:
                argv += ["--data-parallel-size", "2", "--data-parallel-backend", "mp"]
            argv += ["--host", h1.ip, "--port", "8000"] if rank == 0 else ["--headless"]
            env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
                   "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1",
                   "HF_HUB_OFFLINE": "1", "VLLM_HOST_IP": h.ip, "GLOO_SOCKET_IFNAME": "eth0",
                   "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
            (out / f"argv{rank}.txt").write_text(" ".join(argv) + "\n")
            with (out / f"rank{rank}.log").open("wb") as log:
                procs.append(net.popen(h, argv, env, stdout=log))
        result = f"not ready after {budget:.0f} s"
        while time.monotonic() - t0 < budget:
            if any(p.poll() is not None for p in procs):
                result = f"exited {[p.poll() for p in procs]}"
                break
            probe = net.run(h1, [py, "-I", "-c", PROBE, f"http://{h1.ip}:8000/health"],
                            timeout=10)
            if probe.stdout.strip().startswith("200"):
                result = f"ready after {time.monotonic() - t0:.1f} s"
                body = json.dumps({"model": "tiny", "prompt": "hello", "max_tokens": 5})
                done = net.run(h1, ["curl", "-s", "-m", "60",
                                    f"http://{h1.ip}:8000/v1/completions", "-H",
                                    "Content-Type: application/json", "-d", body], timeout=70)
                result += "; completion: " + done.stdout[:200]
                break
            time.sleep(3)
        print(f"{result} (logs: {out})")
        return 0 if result.startswith("ready") else 1


if __name__ == "__main__":
    sys.exit(main())
