"""GET /v1/models: the model ids this key may use (base models, adapters, soups, avatars)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends

from personalm.avatars.voice import adapter_versions
from personalm.serve.auth import Principal
from personalm.serve.http import Served
from personalm.serve.routes.avatars import AVATAR_PREFIX


def router(served: Served) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/models")
    async def models(who: Principal = Depends(served.principal)) -> dict[str, Any]:
        visible = [e for e in served.catalog.entries.values() if who.may_use_model()]
        data = [{"id": e.id, "object": "model", "created": 0, "owned_by": "personalm", "kind": e.kind} | e.meta
                for e in visible]  # fmt: skip
        if served.memory is not None:
            names = [n for n in await asyncio.to_thread(served.memory.names) if who.may_use_avatar(n)]
            for name in names:
                labels = [v.label for v in await asyncio.to_thread(adapter_versions, served.memory.store, name)]
                data.append({"id": f"{AVATAR_PREFIX}{name}", "object": "model", "created": 0, "owned_by": "personalm",
                             "kind": "avatar", "avatar": name, "adapter_versions": labels})  # fmt: skip
        return {"object": "list", "data": data}

    return routes
