"""The engine's readiness probe: `GET /health`, then `GET /v1/models` lists the served name.

http.client, not urllib: urllib would send probes through $http_proxy.
"""

from __future__ import annotations

import http.client
import json

__all__ = ["probe_engine"]


def _http_get(host: str, port: int, path: str, timeout: float,
              api_key: str | None = None) -> tuple[int, bytes]:
    # http.client, not urllib: urllib would send probes through $http_proxy.
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(1 << 20)
    finally:
        conn.close()


def probe_engine(
    host: str, port: int, served_name: str, timeout: float, *, models: bool = True,
    api_key: str | None = None,
) -> tuple[bool, str]:
    """(ready, detail): `GET /health` is 200 and `GET /v1/models` lists `served_name`
    (the second request only when `models`). `api_key`: the engine's own key (vLLM
    guards /v1 with VLLM_API_KEY; /health stays open)."""
    try:
        status, _ = _http_get(host, port, "/health", timeout)
        if status != 200:
            return False, f"/health answered {status}"
        if not models:
            return True, ""
        status, body = _http_get(host, port, "/v1/models", timeout, api_key)
    except TimeoutError:
        return False, f"no answer from {host}:{port} within {timeout:g}s"
    except ConnectionRefusedError:
        return False, f"nothing listening on {host}:{port}"
    except (OSError, http.client.HTTPException) as exc:
        return False, f"probe of {host}:{port} failed: {type(exc).__name__}: {exc}"
    if status != 200:
        return False, f"/v1/models answered {status}"
    try:
        ids = [str(m.get("id")) for m in json.loads(body)["data"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        return False, "/v1/models answered something that is not a model list"
    if served_name and served_name not in ids:
        return False, f"/v1/models lists {ids}, not {served_name!r}"
    return True, ""

