"""The node daemon: the loop, the wiring of ports and config, HTTP API, status, metrics, logs."""
