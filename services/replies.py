"""Answers the protocol server gives itself, when no worker's answer can be relayed."""

from __future__ import annotations

from typing import Any

Send = Any


REASONS = {
    500: b"internal server error\n",
    502: b"the worker serving this request went away\n",
    503: b"no worker picked the request up in time\n",
}


async def plain(send: Send, status: int, body: bytes, retry: bool = False) -> int:
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if retry:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return status


async def refuse(send: Send, why: str) -> int:
    """503 with ``Retry-After``: the work channel did not take the request (``why``)."""
    return await plain(send, 503, why.encode() + b"\n", retry=True)


async def failure(send: Send, status: int) -> int:
    """The plain-text error page for ``status`` (one of :data:`REASONS`); a 503 (no worker
    took it in time) says when to retry, as the refusal of a full queue does."""
    return await plain(send, status, REASONS.get(status, REASONS[500]), retry=status == 503)


async def ws_refuse(send: Send, code: int, reason: str) -> int:
    """Accept then close, so the client sees the close code (a refusal would be a bare 403)."""
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": code, "reason": reason})
    return code
