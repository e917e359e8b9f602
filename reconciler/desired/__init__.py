"""The desired state: YAML with positions, one validation (cross-checks, fit), source sync."""
