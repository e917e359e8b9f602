"""The pure core: the vocabulary, placement, launch specs, lifecycle, restarts, rollout and plan().

No I/O and no port imports (checked by the layer contract): every test of a decision is a table.
"""
