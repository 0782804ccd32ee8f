"""What every router of the server shares: errors in OpenAI's shape, and what the routes serve from
(catalog, keys, avatar memory, soups) with the key check as FastAPI dependencies.

Errors come back as `{"error": {"message", "type", "code"}}` with a 4xx status for anything the
client got wrong; the only 5xx is a failed generation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from personalm.errors import PersonalmError
from personalm.serve.auth import KeyStore, Principal
from personalm.serve.catalog import Catalog

if TYPE_CHECKING:
    from personalm.avatars.api import AvatarMemory
    from personalm.serve.soups import SoupModels


class ApiError(HTTPException):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(status, message)
        self.code = code


def error_response(status: int, message: str, code: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status)


def _validation_message(err: RequestValidationError) -> str:
    parts = []
    for issue in err.errors()[:5]:
        where = ".".join(str(p) for p in issue.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {issue.get('msg', 'invalid')}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Invalid requests (schema, JSON, path or query) answer 400; every HTTP error in OpenAI's shape."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(400, _validation_message(err), "invalid_request_error")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, err: HTTPException) -> JSONResponse:
        return error_response(err.status_code, str(err.detail), getattr(err, "code", "http_error"))


@dataclass
class Served:
    """What the routers answer from, all owned by the caller of `create_app`. `principal` and
    `admin` are the key checks, used as FastAPI dependencies. `critic_loader` loads the preference
    critic (default: the trained one in PERSONALM_HOME/critic) on the first request that asks."""

    catalog: Catalog
    keys: KeyStore
    memory: AvatarMemory | None = None
    soups: SoupModels | None = None
    embedder_factory: Callable[[], Any] | None = None
    critic_loader: Callable[[], Any] | None = None
    _critic: Any = field(default=None, init=False, repr=False)
    _critic_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def preference_critic(self) -> Any:
        """The critic, loaded once; without a trained one, a 400 that says how to train it."""
        from personalm.avatars.preferences import load_critic

        with self._critic_lock:
            if self._critic is None:
                try:
                    self._critic = (self.critic_loader or load_critic)()
                except PersonalmError as err:
                    raise ApiError(400, f"preferences: {err}", "critic_unavailable") from None
            return self._critic

    def principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key")
        who = self.keys.authenticate(key)
        if who is None:
            raise ApiError(401, "missing or unknown API key (send 'Authorization: Bearer KEY')", "invalid_api_key")
        return who

    def admin(self, request: Request) -> Principal:
        who = self.principal(request)
        if not who.is_admin:
            raise ApiError(403, "this needs the admin key", "permission_denied")
        return who
