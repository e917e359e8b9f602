"""Test rigs: real git servers, network-namespace test hosts, daemon rigs and stand-in
engines, shared by tests/ and bench/ (installed with the package, so no sys.path edits)."""
