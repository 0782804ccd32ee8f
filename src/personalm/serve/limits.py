"""Guards in front of every route (pure ASGI middleware, OpenAI-shaped errors): bodies over a size
limit are refused before they are read into memory (413), and an open server (no admin key)
answers only requests addressed to a loopback host name, so a web page whose domain was rebound
to 127.0.0.1 (DNS rebinding) cannot use it from the visitor's browser."""

from __future__ import annotations

import ipaddress
import json

from starlette.exceptions import HTTPException

MAX_BODY_BYTES = 1 << 20
LOOPBACK_NAMES = ("localhost",)


class BodyTooLarge(HTTPException):
    """Raised while the body is read; an HTTPException, so FastAPI's body parsing passes it on as 413."""

    def __init__(self, max_bytes: int):
        super().__init__(413, f"request body over {max_bytes} bytes")
        self.code = "request_too_large"


class BodySizeLimit:
    """Checks Content-Length, and counts bytes of chunked bodies as they come."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await _refuse(send, 413, f"request body over {self.max_bytes} bytes", "request_too_large")
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        started = False

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked_send)
        except BodyTooLarge as err:
            if not started:
                await _refuse(send, 413, err.detail, err.code)


class LoopbackHostOnly:
    """Refuses (403) requests whose Host header names anything but localhost or a loopback address."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if not is_loopback_host(host):
                message = (
                    f"Host {host!r} is not a loopback name; this server runs without an admin key, so it answers "
                    "only http://127.0.0.1 or http://localhost (give it an admin key to serve others)"
                )
                return await _refuse(send, 403, message, "host_not_allowed")
        return await self.app(scope, receive, send)


def is_loopback_host(host: str) -> bool:
    """Whether a Host header (name or address, with or without a port) names this machine."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name[1 : name.index("]")] if name.startswith("[") and "]" in name else name
    if name.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


async def _refuse(send, status: int, message: str, code: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": code}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
