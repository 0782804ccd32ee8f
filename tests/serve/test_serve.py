"""The server on a real port: the official `openai` client, our own OpenAI backend, keys, bad input."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest

from personalm.models.base import SamplingParams
from personalm.serve.app import create_app
from personalm.serve.auth import KeyStore
from personalm.serve.background import BackgroundServer
from personalm.serve.catalog import Catalog

pytestmark = pytest.mark.slow
ADMIN = "admin-secret"
CHAT = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory, embedded_model, embedder):
    catalog = Catalog(slots=8, max_len=256)
    catalog.attach("smollm2-135m-instruct", embedded_model)
    keys = KeyStore(tmp_path_factory.mktemp("serve") / "keys.db", ADMIN)
    app = create_app(catalog, keys, embedder_factory=lambda: embedder)
    with BackgroundServer(app) as url:
        yield url, app, keys
    catalog.close()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    url, _, _ = server
    return OpenAI(base_url=f"{url}/v1", api_key=ADMIN, max_retries=0)


def test_openai_client_lists_models_and_chats_like_the_library(client, embedded_model):
    assert [m.id for m in client.models.list().data] == ["smollm2-135m-instruct"]
    reply = client.chat.completions.create(model="smollm2-135m-instruct", messages=CHAT, max_tokens=12, temperature=0)
    expected = embedded_model.generate([CHAT], SamplingParams(max_tokens=12))[0]
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.completion_tokens == expected.completion_tokens
    assert reply.usage.prompt_tokens == expected.prompt_tokens


def test_streaming_chunks_add_up_to_the_full_answer(client):
    kwargs = dict(model="smollm2-135m-instruct", messages=CHAT, max_tokens=20, temperature=0)
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full
    assert chunks[-2].choices[0].finish_reason in {"stop", "length"}
    assert chunks[-1].choices == [] and 0 < chunks[-1].usage.completion_tokens <= 20


def test_stop_strings_never_leak_into_the_stream(client):
    kwargs = dict(model="smollm2-135m-instruct", messages=CHAT, max_tokens=30, temperature=0)
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    streamed = "".join(
        c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, stop=[stop], **kwargs)
    )
    assert streamed == full[: full.index(stop)]


def test_text_completions_and_embeddings(client, embedder):
    out = client.completions.create(model="smollm2-135m-instruct", prompt=["The sky is", "Water is"], max_tokens=5)
    assert len(out.choices) == 2 and all(c.text for c in out.choices)
    emb = client.embeddings.create(model="all-minilm-l6-v2", input=["hello there", "good bye"])
    got = np.array([d.embedding for d in emb.data])
    np.testing.assert_allclose(got, embedder.embed(["hello there", "good bye"]), atol=1e-5)


def test_our_openai_backend_talks_to_our_server(server, embedded_model):
    from personalm.models.openai_compat import OpenAICompatModel

    url, _, _ = server
    prompts = [CHAT, [{"role": "user", "content": "Say hi."}]]
    with OpenAICompatModel(base_url=f"{url}/v1", model="smollm2-135m-instruct", api_key=ADMIN) as remote:
        got = remote.generate(prompts, SamplingParams(max_tokens=10))
    assert [g.text for g in got] == [g.text for g in embedded_model.generate(prompts, SamplingParams(max_tokens=10))]


def test_concurrent_requests_share_decode_steps(server):
    url, app, _ = server
    engine = app.state.catalog.load("smollm2-135m-instruct")[1]
    sizes = []
    original = engine.batcher.kernel.decode

    def spy(tokens, positions):
        sizes.append(tokens.shape[0])
        return original(tokens, positions)

    engine.batcher.kernel.decode = spy
    try:

        async def ask(i: int, http: httpx.AsyncClient) -> str:
            body = {"model": "smollm2-135m-instruct", "max_tokens": 16, "temperature": 0,
                    "messages": [{"role": "user", "content": f"Count to {i}."}]}  # fmt: skip
            res = await http.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {ADMIN}"})
            return res.json()["choices"][0]["message"]["content"]

        async def main() -> list[str]:
            async with httpx.AsyncClient(timeout=120) as http:
                return await asyncio.gather(*(ask(i, http) for i in range(6)))

        answers = asyncio.run(main())
    finally:
        engine.batcher.kernel.decode = original
    assert all(answers)
    assert max(sizes) >= 4, f"requests did not share decode steps: batch sizes {sizes}"


def test_an_abandoned_stream_stops_consuming_compute(server):
    url, app, _ = server
    engine = app.state.catalog.load("smollm2-135m-instruct")[1]
    body = {"model": "smollm2-135m-instruct", "max_tokens": 200, "temperature": 0.8, "seed": 3, "stream": True,
            "messages": [{"role": "user", "content": "Tell me a very long story."}]}  # fmt: skip
    with httpx.Client(timeout=60) as http:
        with http.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {ADMIN}"}
        ) as res:
            lines = res.iter_lines()
            seen = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: ") for line in seen)
            assert engine.batcher.busy
    deadline = time.monotonic() + 10
    while engine.batcher.busy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine.batcher.busy, "the engine kept decoding for a client that left"


def _post(url: str, path: str, body, key: str | None = ADMIN, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, (bytes, str)):
        return httpx.post(url + path, content=body, headers=headers | {"content-type": "application/json"}, timeout=60)
    return httpx.post(url + path, json=body, headers=headers, timeout=60, **kwargs)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "JSON"),
        ({"model": "smollm2-135m-instruct", "messages": "hi"}, 400, "messages"),
        ({"model": "smollm2-135m-instruct", "messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
        ({"model": "smollm2-135m-instruct", "messages": CHAT, "max_tokens": 100000}, 400, "max_tokens"),
        ({"model": "smollm2-135m-instruct", "messages": CHAT, "temperature": "hot"}, 400, "temperature"),
        ({"model": "smollm2-135m-instruct", "messages": CHAT, "n": 3}, 400, "n"),
        ({"model": "no-such-model", "messages": CHAT}, 404, "no-such-model"),
        ({"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "word " * 600}]}, 400, "context"),
    ],
)
def test_bad_requests_get_a_clear_4xx(server, body, status, needle):
    url, _, _ = server
    res = _post(url, "/v1/chat/completions", body)
    assert res.status_code == status, res.text
    assert needle in res.json()["error"]["message"]


def test_oversized_bodies_are_refused_before_reading(server):
    url, _, _ = server
    res = _post(url, "/v1/chat/completions", json.dumps({"model": "x", "messages": [], "pad": "a" * (2 << 20)}))
    assert res.status_code == 413
    assert "request body over" in res.json()["error"]["message"]


def test_keys_and_scopes(server):
    url, _, _ = server
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    user = _post(url, "/admin/keys", {"name": "alice", "scope": "user"}).json()["key"]
    avatar = _post(url, "/admin/keys", {"name": "bob-avatar", "scope": "avatar:bob"}).json()["key"]
    assert _post(url, "/admin/keys", {"name": "alice", "scope": "user"}).status_code == 409
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {user}"}).status_code == 200
    assert _post(url, "/admin/keys", {"name": "mallory", "scope": "user"}, key=user).status_code == 403
    chat = {"model": "smollm2-135m-instruct", "messages": CHAT, "max_tokens": 2}
    assert _post(url, "/v1/chat/completions", chat, key=user).status_code == 200
    assert _post(url, "/v1/chat/completions", chat, key=avatar).status_code == 403
    listed = httpx.get(f"{url}/admin/keys", headers={"Authorization": f"Bearer {ADMIN}"}).json()["data"]
    assert {k["name"] for k in listed} >= {"alice", "bob-avatar"} and all("key" not in k for k in listed)
    assert httpx.delete(f"{url}/admin/keys/alice", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {user}"}).status_code == 401


def test_openapi_document_is_served(server):
    url, _, _ = server
    spec = httpx.get(f"{url}/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"} <= set(spec["paths"])
