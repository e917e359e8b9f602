"""A minimal streaming chat client for the OpenAI API that vLLM serves (`reconciler chat`).

Standard library only (urllib, no proxies from the environment: engines are reached
directly). Streams with ``stream=True`` and measures the time to the first token as the
time to the first non-empty content delta.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from reconciler.core.errors import TemporaryError

__all__ = ["ChatError", "ChatResult", "chat"]


class ChatError(TemporaryError):
    """The engine could not be reached or answered with an error."""

    reason = "ChatFailed"


@dataclass(frozen=True)
class ChatResult:
    text: str
    ttft_s: float | None  # None when no content came at all
    total_s: float
    finish_reason: str | None = None
    chunks: int = 0
    completion_tokens: int | None = None  # from the usage chunk, when the server sends one
    replica: str | None = None  # which replica answered, when a gateway says so

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed: tokens after the first over the time after the first token."""
        if self.ttft_s is None or self.completion_tokens is None or self.completion_tokens < 2:
            return None
        decode = self.total_s - self.ttft_s
        return (self.completion_tokens - 1) / decode if decode > 0 else None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def chat(
    base_url: str,
    model: str,
    prompt: str,
    timeout: float,
    *,
    max_tokens: int = 64,
    temperature: float = 0.0,
    api_key: str | None = None,
) -> ChatResult:
    """Send one user message to ``{base_url}/v1/chat/completions`` and stream the answer.

    ``timeout`` bounds the connection and each wait for the next chunk. Raises
    :class:`ChatError` on connection failures, HTTP errors and malformed streams.
    """
    url = base_url.rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    url += "/chat/completions"
    if not url.startswith(("http://", "https://")):
        raise ChatError(f"not an http(s) URL: {base_url!r}")
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url,
        data=body,
        method="POST",
        headers=headers,
    )
    t0 = time.monotonic()
    ttft: float | None = None
    parts: list[str] = []
    finish: str | None = None
    chunks = 0
    tokens: int | None = None
    replica: str | None = None
    try:
        with _OPENER.open(request, timeout=timeout) as resp:
            replica = resp.headers.get("X-Reconciler-Replica")
            for raw in resp:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue  # blank separators, comments, event names
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = _parse_chunk(data)
                chunks += 1
                usage = chunk.get("usage")
                if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                    tokens = usage["completion_tokens"]
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if ttft is None:
                            ttft = time.monotonic() - t0
                        parts.append(str(content))
                    if choice.get("finish_reason"):
                        finish = str(choice["finish_reason"])
    except urllib.error.HTTPError as exc:
        detail = exc.read(2000).decode("utf-8", "replace").strip()
        exc.close()
        raise ChatError(f"{url}: HTTP {exc.code}: {detail}") from exc
    except urllib.error.URLError as exc:
        raise ChatError(f"cannot reach {url}: {exc.reason}") from exc
    except TimeoutError as exc:
        raise ChatError(f"{url}: no answer within {timeout:g}s") from exc
    except OSError as exc:
        raise ChatError(f"{url}: {exc}") from exc
    return ChatResult("".join(parts), ttft, time.monotonic() - t0, finish, chunks, tokens,
                      replica)


def _parse_chunk(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise ChatError(f"malformed stream chunk: {data[:200]!r}") from exc
    if not isinstance(chunk, dict):
        raise ChatError(f"malformed stream chunk: {data[:200]!r}")
    if "error" in chunk:
        raise ChatError(f"engine error: {chunk['error']}")
    return chunk
