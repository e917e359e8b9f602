"""Ports: one door per outside system (git, NVML, engine processes, Ray, peers, state dir, clock).

Each is a Protocol with its real implementation here and a stateful fake in reconciler/testing,
checked against each other by tests/contract.
"""
