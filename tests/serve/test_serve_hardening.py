"""Hostile input against the server (issue 17): each request here is refused before any model
loads, so it runs on a real port without generating; the one test that generates is marked slow."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator

import httpx
import pytest

from personalm.avatars.api import AvatarMemory
from personalm.models.base import SamplingParams
from personalm.serve.app import create_app
from personalm.serve.auth import KeyStore
from personalm.serve.background import BackgroundServer
from personalm.serve.catalog import Catalog
from personalm.serve.limits import is_loopback_host

ADMIN = "admin-secret"
MODEL = "smollm2-135m-instruct"
ASK = [{"role": "user", "content": "Name a colour."}]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, word_hash_embedder) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """An admin client and alice's avatar-key client; avatars alice and bob hold one memory each."""
    root = tmp_path_factory.mktemp("hardening")
    memory = AvatarMemory(root / "memory.db", word_hash_embedder())
    app = create_app(Catalog(), KeyStore(root / "keys.db", ADMIN), embedder_factory=word_hash_embedder, memory=memory)
    with BackgroundServer(app) as url, httpx.Client(base_url=url, headers=bearer(ADMIN), timeout=60) as admin:
        for name, text in (("alice", "I like tea."), ("bob", "My PIN is 4321.")):
            assert admin.post(f"/v1/avatars/{name}/memories", json={"text": text}).status_code == 201
        key = admin.post("/admin/keys", json={"name": "k-alice", "scope": "avatar:alice"}).json()["key"]
        with httpx.Client(base_url=url, headers=bearer(key), timeout=60) as alice:
            yield admin, alice
    memory.close()


def assert_refused(res: httpx.Response, status: int | tuple[int, ...], needle: str = "") -> None:
    assert res.status_code in (status if isinstance(status, tuple) else (status,)), res.text
    assert needle in res.json()["error"]["message"]


@pytest.mark.parametrize("prompt", ["", ["The sky is", ""]])
def test_an_empty_prompt_is_a_400(served, prompt):
    admin, _ = served
    assert_refused(admin.post("/v1/completions", json={"model": MODEL, "prompt": prompt}), 400, "prompt")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/avatars/alice/memories?offset=9223372036854775808"),
        ("GET", "/v1/avatars/alice/memories?limit=1180591620717411303424"),
        ("GET", "/v1/avatars/alice/search?q=tea&k=1180591620717411303424"),
        ("DELETE", "/v1/avatars/alice/memories/1180591620717411303424"),
        ("DELETE", "/v1/avatars/alice/memories/-9223372036854775809"),
    ],
)
def test_integers_past_int64_are_a_4xx(served, method, path):
    admin, _ = served
    assert_refused(admin.request(method, path), 400)


def test_avatar_names_with_a_trailing_newline_are_refused(served):
    admin, _ = served
    assert_refused(admin.post("/v1/avatars/alice%0A/memories", json={"text": "x"}), 400, "avatar name")
    assert_refused(admin.get("/v1/avatars/alice%0A/memories"), 400, "avatar name")
    assert_refused(admin.post("/admin/keys", json={"name": "k-nl", "scope": "avatar:alice\n"}), 400, "scope")
    assert all("\n" not in m["id"] for m in admin.get("/v1/models").json()["data"])


def test_an_avatar_key_learns_nothing_about_other_models_and_cannot_embed(served):
    _, alice = served
    answers = []
    for model in ("avatar:bob", "avatar:nosuch", "no-such-model", MODEL):
        res = alice.post("/v1/chat/completions", json={"model": model, "messages": ASK})
        assert_refused(res, 403)
        answers.append(res.json()["error"]["message"].replace(model, "MODEL"))
    assert answers[0] == answers[1] and answers[2] == answers[3]
    assert_refused(alice.post("/v1/embeddings", json={"model": "default", "input": "hi"}), 403)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/chat/completions", {"model": MODEL, "messages": ASK, "max_tokens": "10"}, "max_tokens"),
        ("/v1/chat/completions", {"model": MODEL, "messages": ASK, "stream": "yes"}, "stream"),
        ("/v1/chat/completions", {"model": MODEL, "messages": ASK, "seed": 1.5}, "seed"),
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "temperature": "0.5"}, "temperature"),
        ("/v1/embeddings", {"model": "default", "input": "hi", "encoding_format": 1}, "encoding_format"),
        ("/v1/avatars/alice/memories", {"text": "x", "kind": 1}, "kind"),
    ],
)
def test_types_are_strict(served, path, body, field):
    admin, _ = served
    assert_refused(admin.post(path, json=body), 400, field)


def test_a_chunked_body_over_1_mib_is_a_413(served):
    admin, _ = served

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "x", "pad": "'
        for _ in range(20):
            yield b"a" * 65536
        yield b'"}'

    res = admin.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert "chunked" in res.request.headers.get("transfer-encoding", "")
    assert_refused(res, 413, "request body over")


def test_ingest_errors_name_the_upload_not_a_server_path(served):
    admin, _ = served
    res = admin.post("/v1/avatars/alice/ingest", json={"filename": "log.jsonl", "content": "{oops"})
    assert_refused(res, 400, "log.jsonl")
    assert tempfile.gettempdir() not in res.json()["error"]["message"]


def test_keys_minted_while_open_stop_working_once_an_admin_key_is_set(tmp_path):
    with BackgroundServer(create_app(Catalog(), KeyStore(tmp_path / "keys.db", None))) as url:
        early = httpx.post(f"{url}/admin/keys", json={"name": "early", "scope": "user"}).json()["key"]
    keys = KeyStore(tmp_path / "keys.db", ADMIN)
    later = keys.create("later", "user")
    with BackgroundServer(create_app(Catalog(), keys)) as url:
        assert httpx.get(f"{url}/v1/models", headers=bearer(early)).status_code == 401
        assert httpx.get(f"{url}/v1/models", headers=bearer(later)).status_code == 200
        listed = httpx.get(f"{url}/admin/keys", headers=bearer(ADMIN)).json()["data"]
    assert {k["name"]: k["minted_open"] for k in listed} == {"early": True, "later": False}


def test_an_open_server_answers_loopback_host_names_only(tmp_path):
    with BackgroundServer(create_app(Catalog(), KeyStore(tmp_path / "keys.db", None))) as url:
        assert httpx.get(f"{url}/v1/models").status_code == 200
        assert httpx.get(f"{url}/v1/models", headers={"host": "localhost:8000"}).status_code == 200
        assert_refused(httpx.get(f"{url}/v1/models", headers={"host": "rebound.example:8000"}), 403, "loopback")
    with BackgroundServer(create_app(Catalog(), KeyStore(tmp_path / "keys.db", ADMIN))) as url:
        assert httpx.get(f"{url}/health", headers={"host": "api.example"}).status_code == 200


def test_loopback_host_names():
    good = ["127.0.0.1", "127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]:8000", "[::1]", "127.3.4.5"]
    bad = ["", "example.com", "127.0.0.1.example.com", "localhost.example", "10.0.0.1:80", "[::2]:80", "0.0.0.0"]
    assert all(is_loopback_host(h) for h in good) and not any(is_loopback_host(h) for h in bad)


@pytest.mark.slow
def test_a_request_that_fails_in_the_worker_ends_alone(embedded_model):
    """A prompt whose prefill fails (as an empty one did) errs; the stream running beside it finishes."""
    from personalm.serve.batch_worker import BatchWorker, GenerationError

    worker = BatchWorker(embedded_model, slots=4, max_len=128)
    prefill = worker.batcher.kernel.prefill
    poison = embedded_model.encode_prompt("Poisoned prompt.")

    def failing(first_slot: int, sequences: list[list[int]], offset: int = 0):
        if poison in sequences:
            raise IndexError("index is out of bounds for dimension with size 0")
        return prefill(first_slot, sequences, offset)

    worker.batcher.kernel.prefill = failing

    async def main() -> tuple[str | None, str]:
        events = worker.stream(embedded_model.encode_prompt(ASK), SamplingParams(max_tokens=24))
        first = await anext(events)
        with pytest.raises(GenerationError, match="out of bounds") as failed:
            async for _ in worker.stream(poison, SamplingParams(max_tokens=24)):
                pass
        last = first
        async for last in events:  # noqa: B007 - the last event is read after the loop
            pass
        return last.finish_reason, str(failed.value)

    try:
        reason, _ = asyncio.run(main())
    finally:
        worker.close()
    assert reason in ("stop", "length")
