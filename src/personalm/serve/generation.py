"""Generating an answer for the completion routes: streamed (server-sent events in OpenAI's chunk
format) or whole, on a model's batch worker or, for architectures without the batching kernel,
with transformers' generate in a worker thread."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from personalm.errors import PersonalmError
from personalm.models.base import SamplingParams, prompt_key
from personalm.models.sampling import row_generator
from personalm.serve.batch_worker import GenerationError
from personalm.serve.catalog import Catalog
from personalm.serve.http import ApiError
from personalm.serve.schemas import ChatRequest, SamplingFields
from personalm.serve.text_stream import TextStream

if TYPE_CHECKING:
    from personalm.serve.soups import SoupModels

DEFAULT_MAX_TOKENS = 256
DISCONNECT_POLL_S = 0.25


@dataclass
class Target:
    """What answers a request: the model (to encode and decode), its token budget, whether a
    batch worker runs it, and `session()`, held while generating, which yields that worker."""

    model: Any
    budget: int
    batched: bool
    session: Callable[[], AbstractAsyncContextManager]


@asynccontextmanager
async def _given(worker) -> AsyncIterator[Any]:
    yield worker


async def model_target(catalog: Catalog, model_id: str) -> Target:
    model, worker = await asyncio.to_thread(catalog.load, model_id)
    budget = worker.max_len if worker else model.context_length
    return Target(model, budget, worker is not None, lambda: _given(worker))


async def voice_target(catalog: Catalog, base: str, adapter: Path, name: str) -> Target:
    """An avatar's voice adapter version (see Catalog.load_voice)."""
    try:
        model, worker = await asyncio.to_thread(catalog.load_voice, base, adapter, name)
    except PersonalmError as err:
        raise ApiError(500, f"the voice adapter cannot be served: {err}", "engine_error") from None
    budget = worker.max_len if worker else model.context_length
    return Target(model, budget, worker is not None, lambda: _given(worker))


def fused_target(voice: Target, base: Any, weight: float) -> Target:
    """An avatar's voice answering by proxy-tuned decoding (models.fusion.ProxyTuned: `base` reads
    the served chat, the voice adapter's shift over it is added at `weight`); its prompts are
    (served, plain) chat pairs, generated in a worker thread beside the voice's batch worker."""
    from personalm.models.fusion import ProxyTuned

    model = ProxyTuned(base, voice.model, weight)
    return Target(model, min(voice.budget, model.context_length), False, voice.session)


async def soup_target(soups: SoupModels, weights: dict[str, float]) -> Target:
    try:
        model = await asyncio.to_thread(soups.model)
    except PersonalmError as err:
        raise ApiError(500, f"the soup cannot be served: {err}", "engine_error") from err
    return Target(model, soups.budget, soups.batched, lambda: soups.session(weights))


async def complete(
    request: Request,
    run: Target,
    prompts: list[tuple[list[int], Any]],
    body: SamplingFields,
    limit: int | None,
    chat: bool,
    shown_id: str,
    extra: dict[str, Any] | None = None,
):
    """Generate for (token ids, prompt) pairs on `run`; responses name `shown_id` (an avatar answers
    through its base model) and carry `extra` fields (an avatar's retrieved memories, a soup's weights)."""
    model, budget, extra = run.model, run.budget, extra or {}
    for ids, _ in prompts:
        if not ids:
            raise ApiError(400, "prompt is empty: give at least one token of text")
        if len(ids) >= budget:
            raise ApiError(400, f"prompt of {len(ids)} tokens does not fit the {budget}-token context")
    runs = []
    for ids, prompt in prompts:
        max_tokens = min(limit or DEFAULT_MAX_TOKENS, budget - len(ids))
        params = SamplingParams(
            max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed or 0, stop=body.stop
        )
        generator = None if params.greedy else row_generator(params.seed, prompt_key(prompt), 0)
        runs.append((ids, params, generator))
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    if not run.batched:
        async with run.session():
            generations = await _complete_unbatched(model, shown_id, [p for _, p in prompts], runs[0][1], rid, chat)
        return generations | extra
    if body.stream:
        ids, params, generator = runs[0]
        usage = body.stream_options is not None and body.stream_options.include_usage

        async def events() -> AsyncIterator[str]:
            try:
                async with run.session() as worker:  # held to the end of the stream (a soup keeps its weights)
                    stream = worker.stream(ids, params, generator)
                    async for event in _sse(stream, model, shown_id, rid, params, chat, usage, len(ids), extra):
                        yield event
            except GenerationError as err:
                yield _sse_error(err)
                yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    results = await _generate_all(request, run, runs)
    choices = [_choice(i, text, reason, chat) for i, (text, reason, _) in enumerate(results)]
    usage = _usage(sum(len(r[0]) for r in runs), sum(r[2] for r in results))
    kind = "chat.completion" if chat else "text_completion"
    head = {"id": rid, "object": kind, "created": int(time.time()), "model": shown_id, "choices": choices}
    return head | usage | extra


async def _generate_all(request: Request, run: Target, runs: list) -> list[tuple[str, str, int]]:
    """Every (ids, params, generator) run on the target's worker at once, so they batch together;
    a client that goes away cancels them. Returns (text, finish_reason, completion tokens) each."""

    async def generate() -> list[tuple[str, str, int]]:
        async with run.session() as worker:  # a soup request may wait here for its weights
            return await asyncio.gather(*(_collect(worker, run.model, *r) for r in runs))

    done = asyncio.ensure_future(generate())
    while not done.done():
        await asyncio.wait({done}, timeout=DISCONNECT_POLL_S)
        if not done.done() and await request.is_disconnected():
            done.cancel()  # waiting or generating, the request stops here
            raise ApiError(499, "client closed the request", "client_closed")
    try:
        return done.result()
    except GenerationError as err:
        raise ApiError(500, f"generation failed: {err}", "engine_error") from err


async def sample(
    request: Request, run: Target, ids: list[int], prompt: Any, body: SamplingFields, limit: int | None, n: int
) -> list[tuple[str, str, int]]:
    """n answers to one prompt in one batch, row i seeded by (seed, prompt, i): the candidates
    `model.generate([prompt] * n)` gives. Returns (text, finish_reason, completion tokens) each."""
    if not ids:
        raise ApiError(400, "prompt is empty: give at least one token of text")
    if len(ids) >= run.budget:
        raise ApiError(400, f"prompt of {len(ids)} tokens does not fit the {run.budget}-token context")
    params = SamplingParams(max_tokens=min(limit or DEFAULT_MAX_TOKENS, run.budget - len(ids)),
                            temperature=body.temperature, top_p=body.top_p, seed=body.seed or 0, stop=body.stop)  # fmt: skip
    if not run.batched:
        async with run.session():
            generations = await asyncio.to_thread(run.model.generate, [prompt] * n, params)
        return [(g.text, g.finish_reason, g.completion_tokens) for g in generations]
    key = prompt_key(prompt)
    runs = [(ids, params, None if params.greedy else row_generator(params.seed, key, i)) for i in range(n)]
    return await _generate_all(request, run, runs)


async def _complete_unbatched(model, model_id, prompts, params, rid, chat):
    """Architectures without the batching kernel: transformers' generate in a worker thread."""
    generations = await asyncio.to_thread(model.generate, prompts, params)
    choices = [_choice(i, g.text, g.finish_reason, chat) for i, g in enumerate(generations)]
    usage = _usage(sum(g.prompt_tokens for g in generations), sum(g.completion_tokens for g in generations))
    kind = "chat.completion" if chat else "text_completion"
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model_id, "choices": choices} | usage


def fixed_reply(
    text: str,
    body: ChatRequest,
    extra: dict[str, Any],
    final: dict[str, Any] | None = None,
    reason: str = "stop",
    tokens: tuple[int, int] = (0, 0),
):
    """A reply whose text is decided before it is sent (an avatar's "I don't know", the answer kept
    among candidates), streamed or not: `extra` goes in the first chunk, `final` (the preferences
    applied) in the last; `tokens` is the (prompt, completion) usage it cost."""
    rid, created, final = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time()), final or {}
    if not body.stream:
        return {"id": rid, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [_choice(0, text, reason, True)]} | _usage(*tokens) | extra | final  # fmt: skip
    usage = body.stream_options is not None and body.stream_options.include_usage

    async def events() -> AsyncIterator[str]:
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model}
        deltas = [({"role": "assistant", "content": ""}, None), ({"content": text}, None), ({}, reason)]
        for n, (delta, finish) in enumerate(deltas):
            chunk = head | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            yield f"data: {json.dumps(chunk | (extra if n == 0 else final if n == len(deltas) - 1 else {}))}\n\n"
        if usage:
            yield f"data: {json.dumps(head | {'choices': []} | _usage(*tokens))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def _collect(worker, model, ids, params, generator) -> tuple[str, str, int]:
    """Run one request to the end: (text, finish_reason, completion tokens)."""
    stream = TextStream(model.decode_ids, params.stop)
    async for event in worker.stream(ids, params, generator):
        if event.finish_reason is not None:
            stream.delta(event.token_ids, True)
            return stream.text, event.finish_reason, len(event.token_ids)
    raise GenerationError("the batch worker ended the request without a result")


def _sse_error(err: GenerationError) -> str:
    return f"data: {json.dumps({'error': {'message': str(err), 'type': 'server_error'}})}\n\n"


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
    except GenerationError as err:
        yield _sse_error(err)
    yield "data: [DONE]\n\n"


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
