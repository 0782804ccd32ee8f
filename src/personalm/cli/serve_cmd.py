"""`personalm serve`: the OpenAI-compatible API and the web chat page."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import typer

from personalm.errors import PersonalmError
from personalm.paths import home


def _adapters(specs: list[str]) -> dict[str, Path]:
    adapters = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise PersonalmError(f"--adapter {spec}: expected NAME=DIR")
        adapters[name] = Path(path)
    return adapters


def _keys(path: Path, admin_key: str | None):
    """The API key store, or one line saying why the file cannot be one (a folder, not SQLite)."""
    import sqlite3

    from personalm.serve.auth import KeyStore

    try:
        return KeyStore(path, admin_key)
    except (sqlite3.Error, OSError) as err:
        raise PersonalmError(f"not a usable API key store ({err})", source=str(path)) from None


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, min=1, max=65535),
    model: list[str] = typer.Option(None, "--model", "-m", help="Base model(s) to serve (default: the embedded one)."),
    adapter: list[str] = typer.Option(
        None, help="NAME=DIR of a PEFT adapter to serve as model NAME (adapters under PERSONALM_HOME/adapters too)."
    ),
    admin_key: str = typer.Option(
        None, envvar="PERSONALM_ADMIN_KEY", help="Admin API key; without it the server is open (loopback only)."
    ),
    keys_db: Path = typer.Option(None, help="SQLite file of API keys (default: PERSONALM_HOME/serve/keys.db)."),
    max_batch: int = typer.Option(32, min=1, help="Sequences decoded together per model."),
    max_len: int = typer.Option(1024, min=16, help="Longest prompt + answer in tokens."),
    avatar_store: str = typer.Option(
        None,
        envvar="PERSONALM_AVATAR_STORE",
        help="Avatar memory: a SQLite file or postgresql://... (default PERSONALM_HOME/avatars/memory.db).",
    ),
    soups: Path = typer.Option(
        None,
        help="Folder written by `personalm soups train` (an adapter per pole, optionally pmorl): "
        "serves models `soup` and `pmorl`, which take `preference_weights`.",
    ),
    preferences: Path = typer.Option(None, help="YAML/JSON of extra preference dimensions (as for `soups train`)."),
    critic: Path = typer.Option(
        None,
        help="Preference critic (`personalm critic train`) for chat requests with `preferences` "
        "(default PERSONALM_HOME/critic, loaded on first use; a given one is checked at start).",
    ),
) -> None:
    """Serve models, adapters, soups and avatars over an OpenAI-compatible API, with a chat page at /."""
    if not admin_key and not _loopback(host):
        raise PersonalmError(f"--host {host}: an open server (no --admin-key) may only listen on loopback")
    from personalm.avatars.preferences import load_critic

    loaded = load_critic(critic) if critic is not None else None
    import uvicorn

    from personalm.avatars.api import AvatarMemory
    from personalm.serve.app import create_app
    from personalm.serve.catalog import Catalog

    catalog = Catalog(model or None, _adapters(adapter or []), slots=max_batch, max_len=max_len)
    soup_models = None
    if soups is not None:
        from personalm.serve.soups import SoupModels
        from personalm.soups.preferences import Preferences

        base = next(iter(catalog.entries))
        soup_models = SoupModels(soups, base, Preferences.load(preferences), slots=max_batch, max_len=max_len)
        soup_models.register(catalog)
    keys = _keys(keys_db or home() / "serve" / "keys.db", admin_key or os.environ.get("PERSONALM_ADMIN_KEY"))
    memory = AvatarMemory(avatar_store)
    try:
        app = create_app(catalog, keys, memory=memory, soups=soup_models,
                         critic=(lambda: loaded) if loaded is not None else None)  # fmt: skip
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        catalog.close()
        if soup_models is not None:
            soup_models.close()
        memory.close()
