"""Scenarios 1 and 2 of the GPU check: one daemon on the machine's root namespace.

s1 (one GPU): the daemon manages GPU 0 only (`managedGpus: [0]`); deploy -> Ready -> chat;
its own GPU processes are never foreign; the same vLLM command run by hand on GPU 1 at the
same time gives the by-hand time to Ready (and, on an unmanaged GPU, is not foreign
either); kill -9 of the process holding the GPU -> restart with the true reason; a change
-> replacement; delete -> GPU memory back to its baseline.

s2 (two GPUs): a foreign process holds GPU 0 -> a TP 1 replica lands on GPU 1, and
`reconciler plan` on the node says the same; a TP 2 replica waits (Pending) while the
stranger holds GPU 0 and starts on both GPUs once it leaves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from reconciler.ports.processes import read_environ
from testrigs.gpucheck.common import (
    REPO,
    ClusterRepo,
    Daemon,
    Env,
    Run,
    chat,
    cluster_yaml,
    deployment_yaml,
    gpus_idle,
    http_json,
    nvml,
    session_pids,
    wait,
)

READY_S = 400.0
HOLDER = r"""
import os, sys, time, torch
x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda:0"); x.fill_(1)
torch.cuda.synchronize(); print(os.getpid(), flush=True); time.sleep(float(sys.argv[1]))
"""
CPU_HOLDER = "import os, sys, time; print(os.getpid(), flush=True); time.sleep(float(sys.argv[1]))"


def _record(d: Daemon, slug: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((d.state / "engines" / f"{slug}.json").read_text())
    return data


def _by_hand(env: Env, d: Daemon, engine_pid: int, gpu: int, port: int, log: Path
             ) -> subprocess.Popen[bytes]:
    """The daemon's own engine command and environment, on another GPU and port."""
    argv = [str(a) for a in _record(d, "chat.0.engine")["argv"]]  # type: ignore[attr-defined]
    argv[argv.index("--port") + 1] = str(port)
    penv = {k: v for k, v in (read_environ(engine_pid) or {}).items()
            if not k.startswith("RECONCILER_")}
    penv["CUDA_VISIBLE_DEVICES"] = str(gpu)
    with log.open("wb") as fh:
        return subprocess.Popen(argv, env=penv, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _served(port: int, served: str) -> bool:
    code, _ = http_json("127.0.0.1", port, "/health", timeout=3)
    if code != 200:
        return False
    code, models = http_json("127.0.0.1", port, "/v1/models", timeout=3)
    return code == 200 and any(m.get("id") == served for m in models.get("data", []))


def _gpu_pids(index: int) -> set[int]:
    for g in nvml().gpus:
        if g.index == index:
            return set(g.process_pids)
    return set()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def scenario_one_gpu(env: Env, run: Run, model: Path) -> None:
    gpu = env.mode == "gpu"
    gpus_idle(env, run)
    repo = ClusterRepo(env.work / "s1")
    d = Daemon(env, "gpu-node", repo, managed=[0], tag="s1")
    base_mib = nvml().gpus[0].memory_used_mib if gpu else 0
    files: dict[str, str | None] = {
        "cluster.yaml": cluster_yaml(env, [("gpu-node", "127.0.0.1", 1)]),
        "chat.yaml": deployment_yaml("chat", model, nodes=["gpu-node"], port=8000),
    }
    d.start()
    hand: subprocess.Popen[bytes] | None = None
    try:
        wait("the daemon's /status", 60, d.status)
        t_push = time.time()
        repo.push(files, "chat: one GPU")
        engine = wait("the engine started", 60, lambda: d.member_pid("chat", "engine"))
        run.time("push -> engine started (daemon)", time.time() - t_push)
        if env.gpus >= 2:  # by hand, the very same command, on GPU 1 at the same time
            t_hand = time.time()
            hand = _by_hand(env, d, engine, 1, 8050, env.work / "by-hand.log")
        wait("chat Ready", READY_S, lambda: d.ready("chat"), interval=0.5)
        t_ready = time.time()
        rec = _record(d, "chat.0.engine")
        run.time("push -> Ready (daemon)", t_ready - t_push)
        run.time("engine start -> Ready (daemon)", t_ready - float(rec["started_at"]))  # type: ignore[arg-type]
        if hand is not None:
            wait("by-hand engine serving", READY_S, lambda: _served(8050, "chat-model"), 0.5)
            run.time("start -> Ready (by hand, same command, GPU 1)", time.time() - t_hand)
        ok, detail = chat("127.0.0.1", 8000, "chat-model")
        run.check(ok, "s1 chat answers", detail)
        st = d.status()
        states = {g["index"]: g["state"] for g in st["gpus"]["observed"]["devices"]}
        run.check(states.get(0) == "assigned", "GPU 0 assigned", json.dumps(states))
        if env.gpus >= 2:
            run.check(states.get(1) == "unmanaged",
                      "GPU 1 unmanaged (managedGpus: [0]) though a process holds it",
                      json.dumps(states))
        run.check(st["gpus"]["foreignPids"] == [], "no foreign pids (own EngineCore included)",
                  json.dumps(st["gpus"]["foreignPids"]))
        if gpu:
            holders = _gpu_pids(0)
            ours = session_pids(engine)
            run.check(bool(holders) and holders <= ours,
                      "every process on GPU 0 is in the engine's session",
                      f"NVML pids {sorted(holders)}, session {sorted(ours)}")
        # kill -9 of the GPU-holding process (EngineCore, not the API server)
        victim = min(_gpu_pids(0)) if gpu else engine
        t_kill = time.time()
        os.kill(victim, signal.SIGKILL)
        new = wait("a replacement engine", 120,
                   lambda: (p := d.member_pid("chat", "engine")) is not None and p != engine
                   and p, interval=0.2)
        run.time("kill -9 GPU holder -> replacement started", time.time() - t_kill)
        reaped = wait("the exit reaped", 30, lambda: [
            r for r in d.log_lines('"reaped"') if r.get("member") == "chat/0/engine"])
        reason = str(reaped[-1].get("reason", ""))
        run.note("s1 crash reason (daemon log)", reason)
        said = reason.split(": ", 1)[-1]  # after "chat/0/engine: "
        # GPU: EngineCore killed, the API server exits 0 after EngineDeadError; CPU
        # rehearsal: the API server itself killed
        cause = said.split("; last log line:")[0]  # the port adds it when no line says why
        run.check(not cause.startswith("last log line") and "resource_tracker" not in cause
                  and ("engine core died" in cause or "killed by signal 9" in cause),
                  "the crash reason names the engine's death, not the last log line", reason)
        r = wait("chat Ready again", READY_S, lambda: d.ready("chat"))
        run.time("kill -9 -> Ready again", time.time() - t_kill)
        run.check(int(r["restarts"]) >= 1, "restart counted", f"restarts {r['restarts']}")
        _ = new
        # a change -> replacement
        old_hash = str(r["specHash"])
        files["chat.yaml"] = deployment_yaml("chat", model, nodes=["gpu-node"], port=8000,
                                             max_model_len=2048)
        t_change = time.time()
        repo.push({"chat.yaml": files["chat.yaml"]}, "chat: maxModelLen 2048")
        r = wait("the changed chat Ready", READY_S, lambda: d.ready("chat", spec_hash=old_hash))
        run.time("change pushed -> Ready", time.time() - t_change)
        run.check(r["specHash"] != old_hash, "replaced at the new spec hash",
                  f"{old_hash} -> {r['specHash']}")
        ok, detail = chat("127.0.0.1", 8000, "chat-model")
        run.check(ok, "s1 chat answers after the change", detail)
        # delete -> memory back
        last = d.member_pid("chat", "engine") or 0
        t_del = time.time()
        repo.push({"chat.yaml": None}, "chat: delete")
        if gpu:
            wait("GPU 0 memory back to its baseline", 120,
                 lambda: (g := nvml().gpus[0]).memory_used_mib <= base_mib + 256
                 and not g.process_pids, interval=0.1)
            run.time("delete pushed -> GPU memory freed", time.time() - t_del,
                     f"baseline {base_mib} MiB")
        wait("the replica gone", 60, lambda: d.replica("chat") is None)
        run.time("delete pushed -> replica gone from status", time.time() - t_del)
        left = session_pids(last)
        if left:  # stop confirmed the engine; give stragglers of its session a moment
            time.sleep(5)
            left = session_pids(last)
        run.check(not left, "no process of the engine's session left", f"left: {sorted(left)}")
    finally:
        if hand is not None:
            _kill_group(hand)
        d.stop()
        if gpu:  # the by-hand engine's EngineCore outlives its group leader by a moment
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(g.process_pids for g in nvml().gpus):
                time.sleep(0.5)


def _plan_on_node(env: Env, d: Daemon, repo: ClusterRepo) -> str:
    """`reconciler plan` run on the node: it must read NVML and the state dir like the
    daemon (the node config's managedGpus and state dir come with --config)."""
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler", "plan", "--repo", str(repo.op.dir),
         "--node", d.name, "--config", str(d.config_path)],
        env=env.daemon_env, cwd=str(REPO), capture_output=True, text=True, timeout=120,
        check=False)
    return f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}"


def scenario_two_gpus(env: Env, run: Run, model: Path) -> None:
    gpu = env.mode == "gpu"
    gpus_idle(env, run)
    repo = ClusterRepo(env.work / "s2")
    d = Daemon(env, "gpu-node", repo, status_port=9401, tag="s2")
    holder_env = {**env.daemon_env, "CUDA_VISIBLE_DEVICES": "0"}
    holder = subprocess.Popen([env.engine_python if not gpu else sys.executable, "-c",
                               HOLDER if gpu else CPU_HOLDER, "600"], env=holder_env,
                              stdout=subprocess.PIPE, start_new_session=True)
    d.start()
    try:
        assert holder.stdout is not None
        holder_pid = int(holder.stdout.readline())
        if gpu:
            wait("the stranger on GPU 0", 60, lambda: holder_pid in _gpu_pids(0))
        wait("the daemon's /status", 60, d.status)
        files: dict[str, str | None] = {
            "cluster.yaml": cluster_yaml(env, [("gpu-node", "127.0.0.1", env.gpus)]),
            "one.yaml": deployment_yaml("one", model, nodes=["gpu-node"], port=8001),
        }
        repo.push(files, "one: TP 1 beside a stranger")
        r = wait("one started", 120, lambda: (x := d.replica("one")) and x["members"] and x)
        run.check(r["gpus"] == [1] if gpu else True,
                  "TP 1 placed on GPU 1, away from the stranger's GPU 0", json.dumps(r["gpus"]))
        plan_out = _plan_on_node(env, d, repo)
        run.note("s2 reconciler plan on the node (one running)", plan_out)
        said = next((ln for ln in plan_out.splitlines() if ln.startswith("node gpu-node:")), "")
        run.check(("GPUs read from NVML on this node" in said) if gpu
                  else ("GPUs read from simulated" in said),
                  "plan on the node reads the node's GPUs like the daemon", said)
        ones = [ln.strip() for ln in plan_out.splitlines() if "one/0 engine" in ln]
        run.check(any(" gpus 1 " in ln for ln in ones) if gpu else bool(ones),
                  "plan on the node keeps one on GPU 1, as the daemon did", " / ".join(ones))
        if gpu:
            pid = r["members"][0]["pid"]
            wait("one's engine on GPU 1 (NVML)", 180,
                 lambda: bool(_gpu_pids(1) & session_pids(pid)), interval=0.5)
            run.check(not (_gpu_pids(0) & session_pids(pid)), "nothing of one's on GPU 0")
        t_two = time.time()
        repo.push({"one.yaml": None,
                   "two.yaml": deployment_yaml("two", model, nodes=["gpu-node"], port=8002,
                                               tensor=2)},
                  "two: TP 2 while the stranger holds GPU 0")
        if gpu:
            pending = wait("two Pending", 90, lambda: (x := d.replica("two"))
                           and x["state"] == "Pending" and x)
            run.check("we don't own" in pending["reason"] and str(holder_pid) in pending["reason"],
                      "TP 2 waits, naming the stranger", pending["reason"])
            time.sleep(3)
            r2 = d.replica("two")
            run.check(r2 is not None and r2["state"] == "Pending" and not r2["members"],
                      "still Pending 3 s later, nothing started", json.dumps(r2)[:300])
            plan_out = _plan_on_node(env, d, repo)
            run.note("s2 reconciler plan on the node (two waiting)", plan_out)
            run.check("waiting for GPUs" in plan_out and str(holder_pid) in plan_out,
                      "plan on the node says Pending for the same reason", plan_out[-400:])
        t_leave = time.time()
        holder.kill()
        holder.wait(30)
        r = wait("two Ready on both GPUs", READY_S, lambda: d.ready("two"))
        run.time("stranger left -> TP 2 Ready", time.time() - t_leave)
        run.check(r["gpus"] == [0, 1] if gpu else True, "TP 2 on GPUs 0 and 1",
                  json.dumps(r["gpus"]))
        ok, detail = chat("127.0.0.1", 8002, "two-model")
        run.check(ok, "s2 TP 2 chat answers", detail)
        _ = t_two
        repo.push({"two.yaml": None}, "two: delete")
        wait("two gone", 120, lambda: d.replica("two") is None)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(30)
        if holder.stdout is not None:
            holder.stdout.close()
        d.stop()
