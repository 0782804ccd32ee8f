"""A `TextModel` served over HTTP by any OpenAI-compatible endpoint (vLLM, llama.cpp, Ollama, hosted APIs).

Requests run concurrently on a private event loop in a daemon thread, so the synchronous methods work
from any thread, including one that already runs an event loop (a notebook), and one HTTP client with
its connection pool lives as long as the model.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import httpx

from personalm.errors import PersonalmError
from personalm.models.base import (
    Generation,
    Message,
    ProgressCallback,
    Prompt,
    SamplingParams,
    TextModel,
    TokenScores,
    apply_stop,
)

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
"""Request timeout, rate limit and server errors; any other 4xx is the request's fault."""
MAX_SERVER_STOPS = 4
"""OpenAI rejects more than 4 stop strings; the rest are applied client-side only."""
MAX_DELAY_S = 60.0
"""The longest single wait between attempts, a server's Retry-After included."""
MAX_MESSAGE_CHARS = 200


class OpenAICompatModel(TextModel):
    """Generate and score through an OpenAI-compatible HTTP API.

    `render_chat` turns a chat into the model's prompt text, ending with the assistant turn opened;
    it is needed only to score chat contexts, because /completions takes text, not messages.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        max_concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        render_chat: Callable[[list[Message]], str] | None = None,
    ):
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.render_chat = render_chat
        self.model_id = f"openai:{self.base_url}#{model}"
        self._loop_thread: _LoopThread | None = None
        self._loop_lock = threading.Lock()
        # Created on the private loop, where every request runs.
        self._client: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None

    # -- public API -------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams | None = None,
        progress: ProgressCallback | None = None,
    ) -> list[Generation]:
        """Generate one completion per prompt, in input order. `progress` runs on the HTTP thread."""
        if not prompts:
            return []
        return self._loop().run(self._generate_all(prompts, params or SamplingParams(), progress))

    async def agenerate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams | None = None,
        progress: ProgressCallback | None = None,
    ) -> list[Generation]:
        """`generate` for callers already inside an event loop."""
        if not prompts:
            return []
        return await self._loop().wrap(self._generate_all(prompts, params or SamplingParams(), progress))

    def score(self, contexts: Sequence[Prompt], continuations: Sequence[str]) -> list[TokenScores]:
        texts = self._score_texts(contexts, continuations)
        return self._loop().run(self._score_all(texts, continuations)) if texts else []

    async def ascore(self, contexts: Sequence[Prompt], continuations: Sequence[str]) -> list[TokenScores]:
        """`score` for callers already inside an event loop."""
        texts = self._score_texts(contexts, continuations)
        return await self._loop().wrap(self._score_all(texts, continuations)) if texts else []

    def info(self) -> dict[str, Any]:
        return super().info() | {"base_url": self.base_url, "model": self.model}

    def close(self) -> None:
        with self._loop_lock:
            loop_thread, self._loop_thread = self._loop_thread, None
        if loop_thread is not None:
            loop_thread.run(self._close_client())
            loop_thread.stop()

    # -- generation -------------------------------------------------------------------------

    async def _generate_all(
        self, prompts: Sequence[Prompt], params: SamplingParams, progress: ProgressCallback | None
    ) -> list[Generation]:
        async def one(prompt: Prompt) -> Generation:
            generation = await self._generate_one(prompt, params)
            if progress is not None:
                progress(1)
            return generation

        return await _gather_or_cancel([one(p) for p in prompts])

    async def _generate_one(self, prompt: Prompt, params: SamplingParams) -> Generation:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
        }
        if params.top_k > 0:
            body["top_k"] = params.top_k  # not in OpenAI's spec; vLLM, llama.cpp and Ollama accept it
        if params.stop:
            body["stop"] = list(params.stop[:MAX_SERVER_STOPS])
        if isinstance(prompt, str):
            path, body["prompt"] = "/completions", prompt
        else:
            path, body["messages"] = "/chat/completions", list(prompt)
        data = await self._post(path, body)
        choice = _first_choice(data, self.base_url + path)
        if isinstance(prompt, str):
            raw = choice.get("text")
        else:
            raw = (choice.get("message") or {}).get("content")
        # The server may ignore stop strings, so cut again here.
        text, stopped = apply_stop(raw or "", params.stop)
        finish = "length" if choice.get("finish_reason") == "length" and not stopped else "stop"
        usage = data.get("usage") or {}
        return Generation(
            text=text,
            finish_reason=finish,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )

    # -- scoring ----------------------------------------------------------------------------

    def _score_texts(self, contexts: Sequence[Prompt], continuations: Sequence[str]) -> list[str]:
        """Render every context to text before any request, so a missing renderer fails fast."""
        if len(contexts) != len(continuations):
            raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
        texts = []
        for context in contexts:
            if isinstance(context, str):
                texts.append(context)
            elif self.render_chat is None:
                raise PersonalmError(
                    f"scoring a chat over HTTP ({self.base_url}) needs a chat renderer: the server scores "
                    "plain text only, so pass render_chat= (the model's chat template) to OpenAICompatModel"
                )
            else:
                texts.append(self.render_chat(list(context)))
        return texts

    async def _score_all(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[TokenScores]:
        return await _gather_or_cancel([self._score_one(c, k) for c, k in zip(contexts, continuations, strict=True)])

    async def _score_one(self, context: str, continuation: str) -> TokenScores:
        """Echo context+continuation with prompt log-probabilities and keep the continuation's tokens.

        One token is generated (max_tokens=0 means "no limit" on llama.cpp) and dropped again.
        """
        if not continuation:
            return TokenScores(tokens=[], logprobs=[])
        url = self.base_url + "/completions"
        full = context + continuation
        body = {
            "model": self.model,
            "prompt": full,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": True,
            "logprobs": 1,
        }
        choice = _first_choice(await self._post("/completions", body), url)
        return _continuation_scores(choice, full, continuation, url)

    # -- HTTP -------------------------------------------------------------------------------

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST with bounded concurrency, retrying 429, 5xx, timeouts and connection failures."""
        if self._client is None or self._semaphore is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.AsyncClient(
                headers=headers,
                timeout=self.timeout,
                limits=httpx.Limits(max_connections=self.max_concurrency),
            )
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        url = self.base_url + path
        attempts = self.max_retries + 1
        async with self._semaphore:
            for attempt in range(attempts):
                retry_after = None
                try:
                    response = await self._client.post(url, json=body)
                except httpx.TimeoutException:
                    failure = f"{url} timed out after {self.timeout:g} s"
                except httpx.ConnectError as exc:
                    failure = f"cannot reach {url}: {exc}"
                except httpx.TransportError as exc:
                    failure = f"request to {url} failed: {exc}"
                else:
                    if response.status_code < 400:
                        return _json(response, url)
                    failure = f"{url} returned HTTP {response.status_code}: {_server_message(response)}"
                    if response.status_code not in RETRYABLE_STATUS:
                        raise PersonalmError(failure)
                    retry_after = _retry_after(response)
                if attempt == attempts - 1:
                    break
                delay = retry_after if retry_after is not None else self.backoff * 2**attempt
                await asyncio.sleep(min(delay, MAX_DELAY_S) * random.uniform(1.0, 1.25))
        raise PersonalmError(failure if attempts == 1 else f"{failure} (gave up after {attempts} attempts)")

    async def _close_client(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        self._client = self._semaphore = None

    def _loop(self) -> _LoopThread:
        with self._loop_lock:
            if self._loop_thread is None:
                self._loop_thread = _LoopThread()
            return self._loop_thread


def list_server_models(base_url: str, api_key: str | None = None, timeout: float = 30.0) -> list[str]:
    """Model names an OpenAI-compatible server offers (GET /models), to pick one or check a name."""
    url = base_url.rstrip("/") + "/models"
    key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        raise PersonalmError(f"{url} timed out after {timeout:g} s") from None
    except httpx.ConnectError as exc:
        raise PersonalmError(f"cannot reach {url}: {exc}") from None
    except httpx.TransportError as exc:
        raise PersonalmError(f"request to {url} failed: {exc}") from None
    if response.status_code >= 400:
        raise PersonalmError(f"{url} returned HTTP {response.status_code}: {_server_message(response)}")
    models = _json(response, url).get("data")
    if not isinstance(models, list):
        raise PersonalmError(f"{url} answered without a 'data' list of models")
    return [str(m["id"]) for m in models if isinstance(m, dict) and "id" in m]


class _LoopThread:
    """An event loop running forever on a daemon thread; coroutines are submitted to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="personalm-http", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        finally:
            future.cancel()  # no-op when done; stops the requests if the caller was interrupted

    async def wrap(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


async def _gather_or_cancel(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Like gather, but the first failure cancels the rest instead of letting them run on."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def _continuation_scores(choice: dict[str, Any], full: str, continuation: str, url: str) -> TokenScores:
    """Pick the continuation's tokens out of an echoed prompt, matching token texts from the end.

    `text_offset` is not used: servers count special tokens differently (llama.cpp renders them as
    empty strings and skips BOS, vLLM counts BOS text), so offsets need not match our string.
    """
    unsupported = PersonalmError(
        f"{url} does not support prompt log-probabilities (completions with echo and logprobs), "
        "which scoring needs; use a server that does, such as vLLM"
    )
    logprobs = choice.get("logprobs") or {}
    tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    text = choice.get("text")
    if not tokens or not isinstance(values, list) or len(values) != len(tokens) or not isinstance(text, str):
        raise unsupported
    if not text.startswith(full):
        raise unsupported
    generated = text[len(full) :]
    # The echo normally ends with the generated token; if it is missing, try both ends.
    n = len(tokens)
    ends = (n - 1, n) if tokens[-1] == generated or not generated else (n, n - 1)
    for end in ends:
        start = _suffix_start(tokens[:end], continuation)
        if start is not None:
            break
    else:
        raise unsupported
    if end == n and generated:
        raise PersonalmError(
            f"{url} echoed the prompt's log-probabilities without the generated token's, a sign they are "
            "shifted by one token (llama-cpp-python does this for models without a BOS token); "
            "scoring needs a server that aligns them, such as vLLM"
        )
    picked = values[start:end]
    if any(v is None or not math.isfinite(float(v)) for v in picked):
        raise unsupported
    return TokenScores(tokens=[str(t) for t in tokens[start:end]], logprobs=[float(v) for v in picked])


def _suffix_start(tokens: Sequence[str], suffix: str) -> int | None:
    """Index of the first token of the shortest token run whose text ends with `suffix`, if any."""
    covered = ""
    for i in range(len(tokens) - 1, -1, -1):
        covered = str(tokens[i]) + covered
        if len(covered) >= len(suffix):
            return i if covered.endswith(suffix) else None
    return None


def _first_choice(data: dict[str, Any], url: str) -> dict[str, Any]:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise PersonalmError(f"{url} answered without any choices")
    return choices[0]


def _json(response: httpx.Response, url: str) -> dict[str, Any]:
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PersonalmError(f"{url} did not answer JSON: {_short(response.text)}") from None
    if not isinstance(data, dict):
        raise PersonalmError(f"{url} answered JSON that is not an object: {_short(response.text)}")
    return data


def _server_message(response: httpx.Response) -> str:
    """The error message out of the usual shapes: {"error": {"message"}}, {"error"}, {"detail"}."""
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _short(response.text) or response.reason_phrase
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return _short(str(error["message"]))
        for value in (error, data.get("detail"), data.get("message")):
            if value:
                return _short(value if isinstance(value, str) else json.dumps(value))
    return _short(json.dumps(data))


def _retry_after(response: httpx.Response) -> float | None:
    """A numeric Retry-After header in seconds (HTTP dates are ignored: backoff takes over)."""
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 3] + "..."
