"""Refuse HTTP request bodies over a size limit before anything parses them.

Every Gradio event posts its inputs as one JSON body, the chat history included, and several
of ChatInterface's UI events (history sync, append, save) run Gradio's own parsing and
validation on that history without reaching our handler. A crafted 20 MB history costs seconds
of CPU and gigabytes of memory there, so the bound has to sit in front: this ASGI middleware
reads at most `max_bytes` of a body (by Content-Length when given, else by counting chunks) and
answers 413 otherwise. Hand-written: neither Starlette nor Gradio has a request-size limit for
JSON bodies (Gradio's max_file_size covers uploads only).
"""
from __future__ import annotations

import json


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send) -> None:
        body = json.dumps({"error": f"request body over {self.max_bytes:,} bytes; the chat is too long, clear it to start a new one"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                too_big = True
            if too_big:
                return await self._refuse(send)
            return await self.app(scope, receive, send)
        # No Content-Length (chunked): buffer up to the limit, then replay it to the app.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._refuse(send)
            chunks.append(message)
            more = message.get("more_body", False)
        return await self.app(scope, _replay(chunks, receive), send)


def _replay(messages: list[dict], then=None):
    queue = list(messages)

    async def receive():
        if queue:
            return queue.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


__all__ = ["BodyLimitMiddleware"]
