"""The reconciler: a GitOps daemon for GPU clusters that serve LLMs with vLLM over Ray.

Wings, top to bottom (arrows only point down; pyproject's import-linter contract checks it):
cli > demo > daemon | gateway > control > testing > desired > ports > core > schemas.
"""
