"""`personalm serve`: an OpenAI-compatible API and the web chat page, in one FastAPI app.

The routes live in `serve/routes/` (page, models, completions, embeddings, admin keys, avatars), each
built around the `Served` it answers from; errors and the key check are in `serve/http.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from personalm.serve.auth import KeyStore
from personalm.serve.catalog import Catalog
from personalm.serve.http import Served, install_error_handlers
from personalm.serve.limits import BodySizeLimit, LoopbackHostOnly
from personalm.serve.routes import admin, avatars, completions, embeddings, models, page

if TYPE_CHECKING:
    from personalm.avatars.api import AvatarMemory
    from personalm.serve.soups import SoupModels


def create_app(
    catalog: Catalog,
    keys: KeyStore,
    embedder_factory: Callable[[], Any] | None = None,
    memory: AvatarMemory | None = None,
    soups: SoupModels | None = None,
    critic: Callable[[], Any] | None = None,
) -> FastAPI:
    """Build the app around a model catalog, a key store and (optionally) avatar memory and soups,
    all owned by the caller. With memory, every avatar is the model `avatar:NAME`, and chat requests
    may ask for preference-aware answering, whose critic `critic()` loads on first use (default: the
    trained one in PERSONALM_HOME/critic); with soups (a SoupModels, registered in the catalog),
    `soup` and `pmorl` take `preference_weights`. An open key store (no admin key) answers only
    requests addressed to a loopback host name."""
    app = FastAPI(title="personalm", version="0.1.0", description="OpenAI-compatible API of personalm")
    app.add_middleware(BodySizeLimit)
    if keys.open:
        app.add_middleware(LoopbackHostOnly)
    install_error_handlers(app)
    served = Served(catalog, keys, memory, soups, embedder_factory, critic)
    for router in (page.router(), models.router(served), completions.router(served), embeddings.router(served),
                   admin.router(served)):  # fmt: skip
        app.include_router(router)
    if memory is not None:
        app.include_router(avatars.router(served))
    app.state.catalog, app.state.keys, app.state.memory, app.state.soups = catalog, keys, memory, soups
    return app
