"""POST /v1/chat/completions and /v1/completions: base models, adapters, soups (`soup`, `pmorl`,
which take `preference_weights`) and avatars (`avatar:NAME`, answered by the avatar chat). Chat takes
`preferences` (preference-aware answering): an avatar reads its own memory, another model the memory
of the avatar that `preferences.avatar` names."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from personalm.avatars.preferences import DEFAULT_CANDIDATES, with_preferences
from personalm.errors import PersonalmError
from personalm.serve.auth import Principal
from personalm.serve.catalog import Entry, UnknownModel
from personalm.serve.generation import complete, model_target, soup_target
from personalm.serve.http import ApiError, Served
from personalm.serve.routes.avatars import AVATAR_PREFIX, avatar_chat, memory_preferences, preference_reply
from personalm.serve.schemas import ChatRequest, CompletionRequest, SamplingFields

PREFERENCE_KINDS = ("soup", "pmorl")


def router(served: Served) -> APIRouter:
    routes = APIRouter()
    catalog, soups = served.catalog, served.soups

    def entry_for(model_id: str, who: Principal) -> Entry:
        """The catalog entry; a key that may use no model hears 403 whether the id exists or not."""
        if not who.may_use_model():
            raise ApiError(403, f"this key may not use model '{model_id}'", "permission_denied")
        try:
            return catalog.get(model_id)
        except UnknownModel:
            raise ApiError(
                404, f"model '{model_id}' does not exist; GET /v1/models lists them", "model_not_found"
            ) from None

    def preference_weights(entry: Entry | None, body: SamplingFields) -> dict[str, float] | None:
        """The checked weights for `soup`/`pmorl`; other models refuse them rather than ignore them."""
        if entry is None or entry.kind not in PREFERENCE_KINDS:
            if body.preference_weights is not None:
                raise ApiError(400, f"preference_weights: model '{body.model}' takes none (models soup and pmorl do)")
            return None
        try:
            return soups.weights(entry.id, body.preference_weights)
        except PersonalmError as err:
            raise ApiError(400, f"preference_weights: {err}") from None

    @routes.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request, who: Principal = Depends(served.principal)):
        messages = [m.model_dump() for m in body.messages]
        limit = body.max_completion_tokens or body.max_tokens
        if body.model.startswith(AVATAR_PREFIX):
            preference_weights(None, body)
            return await avatar_chat(served, request, body, messages, limit, who)
        entry = entry_for(body.model, who)
        weights = preference_weights(entry, body)
        if body.preferences is not None and body.preferences.apply:
            if weights is not None or entry.kind in PREFERENCE_KINDS:
                raise ApiError(400, f"preferences: model '{entry.id}' takes preference_weights; use a base model, "
                               "an adapter or an avatar")  # fmt: skip
            preferences, critic = await memory_preferences(served, body, messages, who)
            run = await model_target(catalog, entry.id)
            n = body.preferences.candidates or DEFAULT_CANDIDATES
            return await preference_reply(request, run, with_preferences(messages, preferences),
                                          messages[-1]["content"], preferences, critic, n, body, limit)  # fmt: skip
        if weights is None:
            run = await model_target(catalog, entry.id)
            ids = run.model.encode_prompt(messages)
            return await complete(request, run, [(ids, messages)], body, limit, chat=True, shown_id=entry.id)
        prompt = soups.prompt(weights)
        if entry.kind == "pmorl" and not (prompt and body.preference_prompt):
            raise ApiError(400, "model 'pmorl' learned the preferences from its system prompt: give a positive "
                           "weight to at least one pole and keep preference_prompt on")  # fmt: skip
        if body.preference_prompt:
            messages = soups.with_system(messages, prompt)
        run = await (soup_target(soups, weights) if entry.kind == "soup" else model_target(catalog, entry.id))
        ids = run.model.encode_prompt(messages)
        return await complete(request, run, [(ids, messages)], body, limit, chat=True, shown_id=entry.id,
                              extra={"preference_weights": weights})  # fmt: skip

    @routes.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request, who: Principal = Depends(served.principal)):
        entry = entry_for(body.model, who)
        if entry.kind == "pmorl":
            raise ApiError(400, "model 'pmorl' learned the preferences from a system prompt: use /v1/chat/completions")
        weights = preference_weights(entry, body)
        if body.stream and len(body.prompt) > 1:
            raise ApiError(400, "stream supports one prompt per request")
        run = await (model_target(catalog, entry.id) if weights is None else soup_target(soups, weights))
        prompts = [(run.model.encode_prompt(p), p) for p in body.prompt]
        extra = None if weights is None else {"preference_weights": weights}
        return await complete(request, run, prompts, body, body.max_tokens, chat=False, shown_id=entry.id,
                              extra=extra)  # fmt: skip

    return routes
