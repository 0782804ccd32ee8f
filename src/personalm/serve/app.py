"""`personalm serve`: an OpenAI-compatible API and the web chat page, in one FastAPI app.

Errors come back in OpenAI's shape (`{"error": {"message", "type", "code"}}`) with a 4xx status
for anything the client got wrong; the only 5xx is a failure of the engine itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from personalm.errors import PersonalmError
from personalm.models.base import SamplingParams, prompt_key
from personalm.models.sampling import row_generator
from personalm.serve.auth import KeyStore, Principal
from personalm.serve.catalog import Catalog, UnknownModel
from personalm.serve.batch_worker import EngineError
from personalm.serve.limits import BodySizeLimit
from personalm.serve.schemas import ChatRequest, CompletionRequest, EmbeddingRequest, KeyRequest
from personalm.serve.text_stream import TextStream

DEFAULT_MAX_TOKENS = 256
AVATAR_PREFIX = "avatar:"
DISCONNECT_POLL_S = 0.25
PREFERENCE_KINDS = ("soup", "pmorl")


@dataclass
class Target:
    """What answers a request: the model (to encode and decode), its token budget, whether the
    batching engine runs it, and `session()`, held while generating, which yields that engine."""

    model: Any
    budget: int
    batched: bool
    session: Callable[[], AbstractAsyncContextManager]


@asynccontextmanager
async def _given(engine) -> AsyncIterator[Any]:
    yield engine


class ApiError(HTTPException):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(status, message)
        self.code = code


def _error(status: int, message: str, code: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status)


def _validation_message(err: RequestValidationError) -> str:
    parts = []
    for issue in err.errors()[:5]:
        where = ".".join(str(p) for p in issue.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {issue.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(catalog: Catalog, keys: KeyStore, embedder_factory=None, memory=None, soups=None) -> FastAPI:
    """Build the app around a model catalog, a key store and (optionally) avatar memory and soups,
    all owned by the caller. With memory, every avatar is the model `avatar:NAME`; with soups
    (a SoupModels, registered in the catalog), `soup` and `pmorl` take `preference_weights`."""
    app = FastAPI(title="personalm", version="0.1.0", description="OpenAI-compatible API of personalm")
    app.add_middleware(BodySizeLimit)
    state: dict[str, Any] = {}

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return _error(400, _validation_message(err), "invalid_request_error")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, err: HTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail), getattr(err, "code", "http_error"))

    def principal(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key")
        who = keys.authenticate(key)
        if who is None:
            raise ApiError(401, "missing or unknown API key (send 'Authorization: Bearer KEY')", "invalid_api_key")
        return who

    def admin(who: Principal = Depends(principal)) -> Principal:
        if not who.is_admin:
            raise ApiError(403, "this needs the admin key", "permission_denied")
        return who

    def entry_for(model_id: str, who: Principal):
        try:
            entry = catalog.get(model_id)
        except UnknownModel:
            raise ApiError(
                404, f"model '{model_id}' does not exist; GET /v1/models lists them", "model_not_found"
            ) from None
        if not who.may_use_model():
            raise ApiError(403, f"this key may not use model '{model_id}'", "permission_denied")
        return entry

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return resources.files("personalm.serve").joinpath("page/index.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(who: Principal = Depends(principal)) -> dict[str, Any]:
        visible = [e for e in catalog.entries.values() if who.may_use_model()]
        data = [{"id": e.id, "object": "model", "created": 0, "owned_by": "personalm", "kind": e.kind} | e.meta
                for e in visible]  # fmt: skip
        if memory is not None:
            names = await asyncio.to_thread(memory.names)
            data += [{"id": f"{AVATAR_PREFIX}{n}", "object": "model", "created": 0, "owned_by": "personalm",
                      "kind": "avatar", "avatar": n} for n in names if who.may_use_avatar(n)]  # fmt: skip
        return {"object": "list", "data": data}

    async def target(model_id: str) -> Target:
        model, engine = await asyncio.to_thread(catalog.load, model_id)
        budget = engine.max_len if engine else model.context_length
        return Target(model, budget, engine is not None, lambda: _given(engine))

    async def soup_target(weights: dict[str, float]) -> Target:
        try:
            model = await asyncio.to_thread(soups.model)
        except PersonalmError as err:
            raise ApiError(500, f"the soup cannot be served: {err}", "engine_error") from err
        return Target(model, soups.budget, soups.batched, lambda: soups.session(weights))

    def preference_weights(entry, body) -> dict[str, float] | None:
        """The checked weights for `soup`/`pmorl`; other models refuse them rather than ignore them."""
        if entry is None or entry.kind not in PREFERENCE_KINDS:
            if body.preference_weights is not None:
                raise ApiError(400, f"preference_weights: model '{body.model}' takes none (models soup and pmorl do)")
            return None
        try:
            return soups.weights(entry.id, body.preference_weights)
        except PersonalmError as err:
            raise ApiError(400, f"preference_weights: {err}") from None

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request, who: Principal = Depends(principal)):
        messages = [m.model_dump() for m in body.messages]
        limit = body.max_completion_tokens or body.max_tokens
        if body.model.startswith(AVATAR_PREFIX):
            preference_weights(None, body)
            return await _avatar_chat(request, body, messages, limit, who)
        entry = entry_for(body.model, who)
        weights = preference_weights(entry, body)
        if weights is None:
            run = await target(entry.id)
            ids = run.model.encode_prompt(messages)
            return await _complete(request, run, [(ids, messages)], body, limit, chat=True, shown_id=entry.id)
        prompt = soups.prompt(weights)
        if entry.kind == "pmorl" and not (prompt and body.preference_prompt):
            raise ApiError(400, "model 'pmorl' learned the preferences from its system prompt: give a positive "
                           "weight to at least one pole and keep preference_prompt on")  # fmt: skip
        if body.preference_prompt:
            messages = soups.with_system(messages, prompt)
        run = await (soup_target(weights) if entry.kind == "soup" else target(entry.id))
        ids = run.model.encode_prompt(messages)
        return await _complete(request, run, [(ids, messages)], body, limit, chat=True, shown_id=entry.id,
                               extra={"preference_weights": weights})  # fmt: skip

    async def _avatar_chat(request: Request, body: ChatRequest, messages, limit, who: Principal):
        """Retrieval in the store (scoped to this avatar), then the base model answers in their voice."""
        from personalm.avatars.chat import DONT_KNOW, AvatarChat, is_question
        from personalm.serve.avatar_routes import hit_json

        name = body.model[len(AVATAR_PREFIX) :]
        if memory is None or name not in await asyncio.to_thread(memory.names):
            raise ApiError(404, f"model '{body.model}' does not exist; GET /v1/models lists them", "model_not_found")
        if not who.may_use_avatar(name):
            raise ApiError(403, f"this key may not use model '{body.model}'", "permission_denied")
        if messages[-1]["role"] != "user":
            raise ApiError(400, "messages: an avatar answers the last message, which must be the user's")
        base = await target(next(e.id for e in catalog.entries.values() if e.kind == "base"))
        talk = AvatarChat(memory, name, base.model)
        talk.history = [m for m in messages[:-1] if m["role"] in ("user", "assistant")]
        question = messages[-1]["content"]
        recall = await asyncio.to_thread(memory.recall, name, question, talk.exemplars, talk.facts)
        retrieved = [hit_json(h) | {"role": "exemplar"} for h in recall.exemplars]
        retrieved += [hit_json(h) | {"role": "fact"} for h in recall.facts]
        supported = recall.support >= talk.min_support or not is_question(question)
        extra = {"retrieved": retrieved, "supported": supported}
        if not supported:
            return _fixed_reply(DONT_KNOW, body, extra)
        composed = await asyncio.to_thread(talk.compose, question, recall)  # reads the profile from the store
        ids = base.model.encode_prompt(composed)
        return await _complete(request, base, [(ids, composed)], body, limit, chat=True, shown_id=body.model,
                               extra=extra)  # fmt: skip

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request, who: Principal = Depends(principal)):
        entry = entry_for(body.model, who)
        if entry.kind == "pmorl":
            raise ApiError(400, "model 'pmorl' learned the preferences from a system prompt: use /v1/chat/completions")
        weights = preference_weights(entry, body)
        if body.stream and len(body.prompt) > 1:
            raise ApiError(400, "stream supports one prompt per request")
        run = await (target(entry.id) if weights is None else soup_target(weights))
        prompts = [(run.model.encode_prompt(p), p) for p in body.prompt]
        extra = None if weights is None else {"preference_weights": weights}
        return await _complete(request, run, prompts, body, body.max_tokens, chat=False, shown_id=entry.id,
                               extra=extra)  # fmt: skip

    async def _complete(request: Request, run: Target, prompts, body, limit: int | None, chat: bool, shown_id: str,
                        extra: dict[str, Any] | None = None):  # fmt: skip
        """Generate for prompts on `run`; responses name `shown_id` (an avatar answers through its base
        model) and carry `extra` fields (an avatar's retrieved memories, a soup's weights)."""
        model, budget, shown, extra = run.model, run.budget, shown_id, extra or {}
        for ids, _ in prompts:
            if len(ids) >= budget:
                raise ApiError(400, f"prompt of {len(ids)} tokens does not fit the {budget}-token context")
        runs = []
        for ids, prompt in prompts:
            max_tokens = min(limit or DEFAULT_MAX_TOKENS, budget - len(ids))
            params = SamplingParams(
                max_tokens=max_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                seed=body.seed or 0,
                stop=body.stop,
            )
            generator = None if params.greedy else row_generator(params.seed, prompt_key(prompt), 0)
            runs.append((ids, params, generator))
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if not run.batched:
            async with run.session():
                generations = await _complete_unbatched(model, shown, [p for _, p in prompts], runs[0][1], rid, chat)
            return generations | extra
        if body.stream:
            ids, params, generator = runs[0]
            usage = body.stream_options is not None and body.stream_options.include_usage

            async def events() -> AsyncIterator[str]:
                try:
                    async with run.session() as engine:  # held to the end of the stream (a soup keeps its weights)
                        stream = engine.stream(ids, params, generator)
                        async for event in _sse(stream, model, shown, rid, params, chat, usage, len(ids), extra):
                            yield event
                except EngineError as err:
                    yield f"data: {json.dumps({'error': {'message': str(err), 'type': 'server_error'}})}\n\n"
                    yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        async def generate() -> list[tuple[str, str, int]]:
            async with run.session() as engine:  # a soup request may wait here for its weights
                return await asyncio.gather(*(_collect(engine, model, *r) for r in runs))

        done = asyncio.ensure_future(generate())
        while not done.done():
            await asyncio.wait({done}, timeout=DISCONNECT_POLL_S)
            if not done.done() and await request.is_disconnected():
                done.cancel()  # waiting or generating, the request stops here
                raise ApiError(499, "client closed the request", "client_closed")
        try:
            results = done.result()
        except EngineError as err:
            raise ApiError(500, f"generation failed: {err}", "engine_error") from err
        choices = [_choice(i, text, reason, chat) for i, (text, reason, _) in enumerate(results)]
        usage = _usage(sum(len(r[0]) for r in runs), sum(r[2] for r in results))
        kind = "chat.completion" if chat else "text_completion"
        return (
            {"id": rid, "object": kind, "created": int(time.time()), "model": shown, "choices": choices} | usage | extra
        )

    async def _complete_unbatched(model, model_id, prompts, params, rid, chat):
        """Architectures without the batching kernel: transformers' generate in a worker thread."""
        generations = await asyncio.to_thread(model.generate, prompts, params)
        choices = [_choice(i, g.text, g.finish_reason, chat) for i, g in enumerate(generations)]
        usage = _usage(sum(g.prompt_tokens for g in generations), sum(g.completion_tokens for g in generations))
        kind = "chat.completion" if chat else "text_completion"
        return {"id": rid, "object": kind, "created": int(time.time()), "model": model_id, "choices": choices} | usage

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, who: Principal = Depends(principal)) -> dict[str, Any]:
        if "embedder" not in state:
            from personalm.models.embedder import Embedder

            state["embedder"] = await asyncio.to_thread(embedder_factory or Embedder)
        embedder = state["embedder"]
        if body.model not in (embedder.name, "default"):
            raise ApiError(
                404, f"embedding model '{body.model}' does not exist; use '{embedder.name}'", "model_not_found"
            )
        vectors = await asyncio.to_thread(embedder.embed, body.input)
        encode = _base64_floats if body.encoding_format == "base64" else (lambda v: v.tolist())
        tokens = sum(len(t.split()) for t in body.input)
        return {
            "object": "list",
            "model": embedder.name,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.get("/admin/keys")
    async def list_keys(_: Principal = Depends(admin)) -> dict[str, Any]:
        return {"data": keys.list()}

    @app.post("/admin/keys", status_code=201)
    async def create_key(body: KeyRequest, _: Principal = Depends(admin)) -> dict[str, str]:
        if any(k["name"] == body.name for k in keys.list()):
            raise ApiError(409, f"a key named '{body.name}' exists", "conflict")
        return {"name": body.name, "scope": body.scope, "key": keys.create(body.name, body.scope)}

    @app.delete("/admin/keys/{name}")
    async def delete_key(name: str, _: Principal = Depends(admin)) -> dict[str, Any]:
        if not keys.delete(name):
            raise ApiError(404, f"no key named '{name}'", "not_found")
        return {"deleted": name}

    if memory is not None:
        from personalm.serve.avatar_routes import avatar_router

        app.include_router(avatar_router(memory, principal, ApiError))
    app.state.catalog, app.state.keys, app.state.memory, app.state.soups = catalog, keys, memory, soups
    return app


def _fixed_reply(text: str, body: ChatRequest, extra: dict[str, Any]):
    """A reply decided without the model (an avatar's "I don't know"), streamed or not."""
    rid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
    if not body.stream:
        return {"id": rid, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [_choice(0, text, "stop", True)]} | _usage(0, 0) | extra  # fmt: skip

    async def events() -> AsyncIterator[str]:
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model}
        deltas = [({"role": "assistant", "content": ""}, None), ({"content": text}, None), ({}, "stop")]
        for n, (delta, reason) in enumerate(deltas):
            chunk = head | {"choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
            yield f"data: {json.dumps(chunk | extra if n == 0 else chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def _collect(engine, model, ids, params, generator) -> tuple[str, str, int]:
    """Run one request to the end: (text, finish_reason, completion tokens)."""
    stream = TextStream(model.decode_ids, params.stop)
    async for event in engine.stream(ids, params, generator):
        if event.finish_reason is not None:
            stream.delta(event.token_ids, True)
            return stream.text, event.finish_reason, len(event.token_ids)
    raise EngineError("the engine ended the request without a result")


async def _sse(
    events: AsyncIterator,
    model,
    model_id: str,
    rid: str,
    params,
    chat: bool,
    usage: bool,
    prompt_tokens: int,
    extra: dict[str, Any] | None = None,
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]` (after a usage chunk
    when `stream_options.include_usage` asked for one)."""
    stream = TextStream(model.decode_ids, params.stop)
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str, reason: str | None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "finish_reason": reason}
        body = {"id": rid, "object": kind, "created": created, "model": model_id, "choices": [choice]}
        return f"data: {json.dumps(body | (extra or {}) if first else body)}\n\n"

    if chat or extra:
        yield chunk("", None, first=True)
    try:
        async for event in events:
            finished = event.finish_reason is not None
            text = stream.delta(event.token_ids, finished)
            if finished:
                yield chunk(text, "length" if event.finish_reason == "length" else "stop")
                if usage:
                    tail = {"id": rid, "object": kind, "created": created, "model": model_id, "choices": []}
                    yield f"data: {json.dumps(tail | _usage(prompt_tokens, len(event.token_ids)))}\n\n"
                break
            if text:
                yield chunk(text, None)
    except EngineError as err:
        yield f"data: {json.dumps({'error': {'message': str(err), 'type': 'server_error'}})}\n\n"
    yield "data: [DONE]\n\n"


def _base64_floats(vector) -> str:
    """OpenAI's base64 encoding: little-endian float32 bytes."""
    return base64.b64encode(vector.astype("<f4").tobytes()).decode()


def _choice(index: int, text: str, reason: str, chat: bool) -> dict[str, Any]:
    if chat:
        return {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
    return {"index": index, "text": text, "finish_reason": reason, "logprobs": None}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
    }
