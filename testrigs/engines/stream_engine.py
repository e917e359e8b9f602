"""A fast stand-in for a vLLM OpenAI server (aiohttp, one event loop), for gateway tests
and benchmarks: many concurrent streams cost it little, so what is measured is the gateway.

Serves `GET /health`, `GET /v1/models`, `POST /v1/chat/completions` and `/v1/completions`
(streaming with `"stream": true`, else one JSON answer), `POST /v1/embeddings`, and
`GET /stats` (requests started, completed, aborted by the client, in flight) so tests can
see that a client's disconnect reached the engine.

  --tokens N --token-delay S --ttft S   the shape of an answer (N chunks, S apart)
  --chunk-bytes B        pad every chunk to about B bytes (a flood for slow-reader tests)
  --api-key K            answer 401 unless `Authorization: Bearer K` (as vLLM's --api-key)
  --answer-503           every model request gets 503 (a draining or dead engine)
  --shutdown-timeout S   on SIGTERM stop accepting, let streams in flight finish for up to
                         S s, then exit (vLLM's drain); 0: exit at once, streams cut
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from typing import Any

from aiohttp import web

STATS = {"started": 0, "completed": 0, "aborted": 0, "in_flight": 0}


def _chunk(args: argparse.Namespace, i: int, chat: bool) -> bytes:
    word = f" tok{i}"
    if chat:
        choice: dict[str, Any] = {"index": 0, "delta": {"content": word}, "finish_reason": None}
        obj = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": args.model,
               "choices": [choice]}
    else:
        obj = {"id": "cmpl-s", "object": "text_completion", "model": args.model,
               "choices": [{"index": 0, "text": word, "finish_reason": None}]}
    if args.chunk_bytes:
        obj["pad"] = "x" * args.chunk_bytes
    return f"data: {json.dumps(obj)}\n\n".encode()


def _auth_fails(request: web.Request, args: argparse.Namespace) -> bool:
    return bool(args.api_key) and request.headers.get("Authorization") != f"Bearer {args.api_key}"


async def completions(request: web.Request) -> web.StreamResponse:
    args: argparse.Namespace = request.app["args"]
    if _auth_fails(request, args):
        return web.json_response({"error": {"message": "Unauthorized"}}, status=401)
    if args.answer_503:
        return web.json_response({"error": {"message": "draining"}}, status=503)
    body = await request.json()
    if body.get("model") != args.model:
        return web.json_response({"error": {"message": "model unknown"}}, status=404)
    chat = request.path.endswith("/chat/completions")
    n = int(body.get("max_tokens") or args.tokens)
    STATS["started"] += 1
    STATS["in_flight"] += 1
    try:
        await asyncio.sleep(args.ttft)
        if not body.get("stream"):
            if args.token_delay:
                await asyncio.sleep(args.token_delay * n)
            text = "".join(f" tok{i}" for i in range(n))
            choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": "length"} if chat else
                      {"index": 0, "text": text, "finish_reason": "length"})
            STATS["completed"] += 1
            return web.json_response({"id": "x", "object": "chat.completion", "model":
                                      args.model, "choices": [choice],
                                      "usage": {"completion_tokens": n}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(n):
            await resp.write(_chunk(args, i, chat))
            if args.token_delay:
                await asyncio.sleep(args.token_delay)
        usage = {"id": "x", "object": "chat.completion.chunk", "model": args.model,
                 "choices": [], "usage": {"completion_tokens": n}}
        await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        await resp.write_eof()
        STATS["completed"] += 1
        return resp
    except (asyncio.CancelledError, ConnectionResetError):
        STATS["aborted"] += 1
        raise
    finally:
        STATS["in_flight"] -= 1


async def embeddings(request: web.Request) -> web.Response:
    args: argparse.Namespace = request.app["args"]
    if _auth_fails(request, args):
        return web.json_response({"error": {"message": "Unauthorized"}}, status=401)
    body = await request.json()
    return web.json_response({"object": "list", "model": body.get("model"),
                              "data": [{"object": "embedding", "index": 0,
                                        "embedding": [0.0, 1.0]}]})


async def models(request: web.Request) -> web.Response:
    args: argparse.Namespace = request.app["args"]
    if _auth_fails(request, args):
        return web.json_response({"error": {"message": "Unauthorized"}}, status=401)
    return web.json_response({"object": "list", "data": [{"id": args.model,
                                                           "object": "model"}]})


async def health(_r: web.Request) -> web.Response:
    return web.json_response({})


async def stats(_r: web.Request) -> web.Response:
    return web.json_response({**STATS, "pid": os.getpid()})


async def main_async(args: argparse.Namespace) -> None:
    app = web.Application()
    app["args"] = args
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=args.shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=4096, reuse_address=True)
    await site.start()
    print(f"{time.strftime('%H:%M:%S')} stream-engine: listening on {args.host}:{args.port}",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    if args.shutdown_timeout <= 0:
        os._exit(0)  # vLLM without --shutdown-timeout: requests in flight are aborted
    await runner.cleanup()  # stops listening, lets handlers finish for shutdown_timeout


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="fake-model")
    p.add_argument("--served-model-name", dest="model")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--token-delay", type=float, default=0.0)
    p.add_argument("--ttft", type=float, default=0.0)
    p.add_argument("--chunk-bytes", type=int, default=0)
    p.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"))
    p.add_argument("--answer-503", action="store_true")
    p.add_argument("--shutdown-timeout", type=float, default=0.0)
    args, _unknown = p.parse_known_args()  # a daemon may pass vLLM flags we ignore
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
