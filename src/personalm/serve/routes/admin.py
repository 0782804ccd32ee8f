"""/admin/keys: list, create and delete API keys (admin key only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from personalm.serve.auth import Principal
from personalm.serve.http import ApiError, Served
from personalm.serve.schemas import KeyRequest


def router(served: Served) -> APIRouter:
    routes = APIRouter(prefix="/admin/keys")
    keys = served.keys

    @routes.get("")
    async def list_keys(_: Principal = Depends(served.admin)) -> dict[str, Any]:
        return {"data": keys.list()}

    @routes.post("", status_code=201)
    async def create_key(body: KeyRequest, _: Principal = Depends(served.admin)) -> dict[str, str]:
        if any(k["name"] == body.name for k in keys.list()):
            raise ApiError(409, f"a key named '{body.name}' exists", "conflict")
        return {"name": body.name, "scope": body.scope, "key": keys.create(body.name, body.scope)}

    @routes.delete("/{name}")
    async def delete_key(name: str, _: Principal = Depends(served.admin)) -> dict[str, Any]:
        if not keys.delete(name):
            raise ApiError(404, f"no key named '{name}'", "not_found")
        return {"deleted": name}

    return routes
