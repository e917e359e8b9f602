"""The gateway: one OpenAI-compatible endpoint per node for every model of the cluster.

Pure parts (routing table, balancing, retry decision, API keys, error bodies) live in small
modules of their own; `proxy` and `server` are the aiohttp side; `discovery` reads the
daemons' /status. `static/` is where the console's files go (served at `/`).
"""
