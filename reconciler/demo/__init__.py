"""The embedded default behind scripts/demo.sh: one node, a local repo, a small model on the CPU."""
