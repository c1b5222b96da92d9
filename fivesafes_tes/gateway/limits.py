"""Refuse requests no route should see: oversized bodies before they are read into memory, and URLs
holding a NUL character (PostgreSQL cannot store one in text, and no id, name or filter needs one)."""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Pure ASGI middleware: 413 on a Content-Length over the cap, and on a body (chunked or not) that
    grows past it.

    A body that grows past the cap is answered here, and the route is told the client went away: the
    route's own answer to the cut body (a 400 for unreadable JSON) is dropped, never sent.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, streamed_paths: re.Pattern[str] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.streamed_paths = streamed_paths  # routes that stream their body to disk themselves

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.streamed_paths and self.streamed_paths.match(scope["path"])):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        seen = 0
        started = cut = refused = False

        async def limited_receive() -> Message:
            nonlocal seen, cut, refused
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    cut = True
                    if not started:
                        refused = True
                        await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, tracking_send)

    async def _refuse(self, send: Send) -> None:
        await _answer(
            send,
            413,
            f"request body over this server's {self.max_bytes}-byte limit; send a smaller one (a large "
            "task input belongs in the project's input store, named by its url)",
        )


class NulFreeUrl:
    """Pure ASGI middleware: 400 for a path or query string holding a NUL character (%00)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = scope.get("query_string", b"").lower()
            if "\x00" in scope["path"] or b"%00" in query or b"\x00" in query:
                await _answer(
                    send,
                    400,
                    "the URL holds a NUL character (%00), which is not accepted anywhere; remove it",
                )
                return
        await self.app(scope, receive, send)
