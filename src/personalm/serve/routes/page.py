"""The web chat page at / and the health check."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse


def router() -> APIRouter:
    routes = APIRouter()

    @routes.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return resources.files("personalm.serve").joinpath("page/index.html").read_text(encoding="utf-8")

    @routes.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return routes
