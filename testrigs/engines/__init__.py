"""Stand-in engines run as real processes by tests and benchmarks."""
