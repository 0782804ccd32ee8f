"""OpenAICompatModel against a real llama.cpp server and against small scripted HTTP servers."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from personalm.errors import PersonalmError
from personalm.models.base import Message, SamplingParams
from personalm.models.openai_compat import OpenAICompatModel, list_server_models

Reply = tuple[int, dict[str, str], Any]
"""status, headers, JSON payload"""


class ScriptedServer:
    """A loopback HTTP server whose answers a test scripts; it records every request it gets."""

    def __init__(self, respond: Callable[[int, str, dict[str, Any]], Reply]):
        self.respond = respond
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    index = len(server.requests)
                    server.requests.append((self.path, body))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, headers, payload = server.respond(index, self.path, body)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> ScriptedServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def chat_reply(text: str, finish_reason: str = "stop") -> Reply:
    return (
        200,
        {},
        {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
            ],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        },
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fast_model(url: str, **kwargs: Any) -> OpenAICompatModel:
    return OpenAICompatModel(url, "test-model", api_key="sk-test", **({"backoff": 0.01} | kwargs))


HELLO: list[Message] = [{"role": "user", "content": "Say hello."}]


# -- retries and errors (scripted servers) -------------------------------------------------


def test_retries_server_errors_then_succeeds() -> None:
    def respond(index: int, path: str, body: dict[str, Any]) -> Reply:
        return (503, {}, {"error": {"message": "overloaded"}}) if index < 2 else chat_reply("hi")

    with ScriptedServer(respond) as server, fast_model(server.url) as model:
        [generation] = model.generate([HELLO])
    assert generation.text == "hi"
    assert (generation.prompt_tokens, generation.completion_tokens) == (7, 3)
    assert len(server.requests) == 3


def test_numeric_retry_after_is_respected() -> None:
    def respond(index: int, path: str, body: dict[str, Any]) -> Reply:
        return (429, {"Retry-After": "1"}, {"error": "slow down"}) if index == 0 else chat_reply("ok")

    with ScriptedServer(respond) as server, fast_model(server.url, backoff=0.001) as model:
        start = time.monotonic()
        assert model.generate([HELLO])[0].text == "ok"
        assert time.monotonic() - start >= 1.0
    assert len(server.requests) == 2


def test_client_error_is_not_retried_and_reported_on_one_line() -> None:
    def respond(index: int, path: str, body: dict[str, Any]) -> Reply:
        return 400, {}, {"error": {"message": "model 'test-model' does not exist", "type": "invalid_request"}}

    with ScriptedServer(respond) as server, fast_model(server.url) as model:
        with pytest.raises(PersonalmError) as caught:
            model.generate([HELLO])
    message = str(caught.value)
    assert "HTTP 400" in message and "model 'test-model' does not exist" in message
    assert f"{server.url}/chat/completions" in message and "\n" not in message
    assert len(server.requests) == 1


def test_closed_port_cannot_reach() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with fast_model(url, max_retries=1) as model, pytest.raises(PersonalmError, match="cannot reach"):
        model.generate(["hello"])
    with pytest.raises(PersonalmError, match="cannot reach"):
        list_server_models(url)


def test_timeout_gives_up_after_retries() -> None:
    def respond(index: int, path: str, body: dict[str, Any]) -> Reply:
        time.sleep(0.5)
        return chat_reply("too late")

    with ScriptedServer(respond) as server, fast_model(server.url, timeout=0.1, max_retries=1) as model:
        with pytest.raises(PersonalmError, match=r"timed out after 0\.1 s \(gave up after 2 attempts\)"):
            model.generate([HELLO])
    assert len(server.requests) == 2


# -- request mapping (scripted servers) ----------------------------------------------------


def test_sampling_params_map_to_request_and_stop_is_applied_client_side() -> None:
    def respond(index: int, path: str, body: dict[str, Any]) -> Reply:
        if path.endswith("/chat/completions"):
            return chat_reply("Hello END ignored", finish_reason="length")
        return 200, {}, {"choices": [{"text": "plain", "finish_reason": "length"}]}

    params = SamplingParams(max_tokens=9, temperature=0.7, top_p=0.9, top_k=5, seed=3, stop=("END",))
    with ScriptedServer(respond) as server, fast_model(server.url) as model:
        chat, plain = model.generate([HELLO, "Once upon"], params)
        model.generate(["Once upon"], SamplingParams(max_tokens=4))
    assert (chat.text, chat.finish_reason) == ("Hello ", "stop")
    assert (plain.text, plain.finish_reason, plain.prompt_tokens) == ("plain", "length", 0)
    by_path = {path: body for path, body in server.requests[:2]}
    chat_body, plain_body = by_path["/v1/chat/completions"], by_path["/v1/completions"]
    assert chat_body["messages"] == HELLO and plain_body["prompt"] == "Once upon"
    assert {k: chat_body[k] for k in ("model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop")} == {
        "model": "test-model", "max_tokens": 9, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "seed": 3,
        "stop": ["END"],
    }  # fmt: skip
    defaults = server.requests[2][1]
    assert "top_k" not in defaults and "stop" not in defaults


def test_concurrency_is_bounded_order_kept_and_progress_reported() -> None:
    four_at_once = threading.Barrier(4, timeout=5)  # breaks, failing the test, unless 4 run together

    def respond(index: int, path: str, body: dict[str, Any]) -> Reply:
        four_at_once.wait()
        time.sleep(0.05 * (index % 3))  # finish out of order
        return 200, {}, {"choices": [{"text": body["prompt"].upper(), "finish_reason": "stop"}]}

    prompts = [f"prompt {i}" for i in range(8)]
    done: list[int] = []
    with ScriptedServer(respond) as server, fast_model(server.url, max_concurrency=4) as model:
        generations = model.generate(prompts, progress=done.append)
    assert [g.text for g in generations] == [p.upper() for p in prompts]
    assert server.max_in_flight == 4
    assert sum(done) == len(prompts)


def test_async_api_and_sync_call_inside_running_loop() -> None:
    with ScriptedServer(lambda i, p, b: chat_reply(f"reply {i}")) as server, fast_model(server.url) as model:

        async def main() -> tuple[str, str]:
            [awaited] = await model.agenerate([HELLO])
            [blocking] = model.generate([HELLO])  # a notebook calls the sync API from a running loop
            return awaited.text, blocking.text

        assert asyncio.run(main()) == ("reply 0", "reply 1")


# -- scoring (scripted servers) ------------------------------------------------------------


def echo_reply(tokens: list[str], logprobs: list[float | None], generated: str) -> Reply:
    offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    return 200, {}, {
        "choices": [{
            "text": "The capital is Paris" + generated,
            "logprobs": {"tokens": tokens, "token_logprobs": logprobs, "text_offset": offsets},
            "finish_reason": "length",
        }]
    }  # fmt: skip


def test_score_picks_continuation_tokens_from_vllm_style_echo() -> None:
    # vLLM echoes BOS as text, so text_offset is shifted against our string; the last token is generated.
    replies = [
        echo_reply(["<s>", "The", " capital", " is", " Par", "is", "."], [None, -3, -2, -1, -0.5, -0.25, -0.1], "."),
        echo_reply(["The", " capital", " is", " Paris", "</s>"], [None, -2, -1, -0.75, -0.2], ""),
    ]
    with ScriptedServer(lambda i, p, b: replies[i]) as server, fast_model(server.url, max_concurrency=1) as model:
        split, eos = model.score(["The capital is", "The capital is"], [" Paris", " Paris"])
        assert model.score(["x"], [""])[0].tokens == []
    assert (split.tokens, split.logprobs) == ([" Par", "is"], [-0.5, -0.25])
    assert (eos.tokens, eos.logprobs) == ([" Paris"], [-0.75])
    body = server.requests[0][1]
    assert body["prompt"] == "The capital is Paris" and body["echo"] is True and body["max_tokens"] == 1


def test_score_without_prompt_logprobs_is_a_clear_error() -> None:
    reply: Reply = 200, {}, {"choices": [{"text": " Paris", "logprobs": None, "finish_reason": "length"}]}
    with ScriptedServer(lambda i, p, b: reply) as server, fast_model(server.url) as model:
        with pytest.raises(PersonalmError, match="does not support prompt log-probabilities") as caught:
            model.score(["The capital is"], [" Paris"])
    assert f"{server.url}/completions" in str(caught.value)


def test_scoring_a_chat_needs_a_renderer() -> None:
    with ScriptedServer(lambda i, p, b: chat_reply("unused")) as server, fast_model(server.url) as model:
        with pytest.raises(PersonalmError, match="needs a chat renderer"):
            model.score([HELLO], ["Hello!"])
    assert server.requests == []


# -- a real llama.cpp server ---------------------------------------------------------------


def render_chatml(messages: list[Message]) -> str:
    """SmolLM2's chat template, ending with the assistant turn opened."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def llamacpp(llamacpp_server: str) -> Iterator[OpenAICompatModel]:
    [name] = list_server_models(llamacpp_server)
    with OpenAICompatModel(llamacpp_server, name, render_chat=render_chatml, max_concurrency=4) as model:
        yield model


@pytest.mark.llamacpp
def test_llamacpp_lists_the_served_model(llamacpp_server: str) -> None:
    assert [name.endswith(".gguf") for name in list_server_models(llamacpp_server)] == [True]


@pytest.mark.llamacpp
def test_llamacpp_generates_chat_and_plain(llamacpp: OpenAICompatModel) -> None:
    params = SamplingParams(max_tokens=8)
    chat, plain = llamacpp.generate([HELLO, "The capital of France is"], params)
    for generation in (chat, plain):
        assert generation.text.strip()
        assert generation.finish_reason in {"stop", "length"}
        assert generation.prompt_tokens > 0 and 1 <= generation.completion_tokens <= 8
    assert chat.prompt_tokens > plain.prompt_tokens  # the chat template adds tokens
    assert llamacpp.generate([HELLO], params) == [chat]  # greedy is deterministic


@pytest.mark.llamacpp
def test_llamacpp_stop_strings_cut_the_text(llamacpp: OpenAICompatModel) -> None:
    [free] = llamacpp.generate([HELLO], SamplingParams(max_tokens=16))
    stop = free.text.split()[2]
    [stopped] = llamacpp.generate([HELLO], SamplingParams(max_tokens=16, stop=(stop,)))
    assert stopped.text == free.text[: free.text.index(stop)]
    assert stopped.finish_reason == "stop"


@pytest.mark.llamacpp
def test_llamacpp_concurrent_results_keep_input_order(llamacpp: OpenAICompatModel) -> None:
    prompts = ["Count: " + "one, " * i for i in range(8)]
    generations = llamacpp.generate(prompts, SamplingParams(max_tokens=2))
    counts = [g.prompt_tokens for g in generations]
    assert counts == sorted(counts) and len(set(counts)) == len(prompts)


@pytest.mark.llamacpp
def test_llamacpp_scores_chat_continuations(llamacpp: OpenAICompatModel) -> None:
    question: list[Message] = [{"role": "user", "content": "What is the capital of France?"}]
    likely, unlikely = llamacpp.score(
        [question, question], ["The capital of France is Paris.", "The capital of France is banana."]
    )
    for scores, text in ((likely, "The capital of France is Paris."), (unlikely, "The capital of France is banana.")):
        assert "".join(scores.tokens) == text
        assert all(math.isfinite(v) and v <= 0 for v in scores.logprobs)
    assert likely.total > unlikely.total


@pytest.mark.llamacpp
def test_llamacpp_plain_text_scores_are_refused_as_misaligned(llamacpp: OpenAICompatModel) -> None:
    # SmolLM2 has no BOS token for plain text, and llama-cpp-python then shifts echoed log-probs by one.
    with pytest.raises(PersonalmError, match="shifted by one token"):
        llamacpp.score(["1, 2, 3, 4,"], [" 5,"])
