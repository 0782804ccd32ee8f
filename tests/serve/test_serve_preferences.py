"""Preference-aware answering over the API: the `preferences` option of /v1/chat/completions, the
avatar's default under /v1/avatars/NAME/preferences, and their refusals. The refusals come before
any model loads; the answering itself runs on the real embedded model with a stand-in critic (slow)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from personalm.avatars.api import AvatarMemory
from personalm.avatars.preferences import load_critic
from personalm.serve.app import create_app
from personalm.serve.auth import KeyStore
from personalm.serve.background import BackgroundServer
from personalm.serve.catalog import Catalog

ADMIN = "admin-secret"
MODEL = "smollm2-135m-instruct"
DAIRY = "I avoid dairy products because of lactose intolerance."


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(model: str, text: str, **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **fields}


@pytest.fixture(scope="module")
def untrained(tmp_path_factory, word_hash_embedder) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """A server without a trained critic: an admin client and alice's avatar-key client."""
    root = tmp_path_factory.mktemp("prefs")
    memory = AvatarMemory(root / "memory.db", word_hash_embedder())
    app = create_app(Catalog(), KeyStore(root / "keys.db", ADMIN), embedder_factory=word_hash_embedder,
                     memory=memory, critic=lambda: load_critic(root / "no-critic"))  # fmt: skip
    with BackgroundServer(app) as url, httpx.Client(base_url=url, headers=bearer(ADMIN), timeout=60) as admin:
        for name, text in (("alice", DAIRY), ("bob", "I love jazz.")):
            assert admin.post(f"/v1/avatars/{name}/memories", json={"text": text}).status_code == 201
        key = admin.post("/admin/keys", json={"name": "k-alice", "scope": "avatar:alice"}).json()["key"]
        with httpx.Client(base_url=url, headers=bearer(key), timeout=60) as alice:
            yield admin, alice
    memory.close()


def refused(res: httpx.Response, status: int, needle: str) -> None:
    assert res.status_code == status, res.text
    error = res.json()["error"]
    assert set(error) == {"message", "type", "code"} and needle in error["message"], error
    assert "\n" not in error["message"]


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"candidates": 0}, "preferences.candidates"),
        ({"candidates": -3}, "preferences.candidates"),
        ({"candidates": 17}, "preferences.candidates"),
        ({"candidates": "4"}, "preferences.candidates"),
        ({"candidates": 2.0}, "preferences.candidates"),
        ({"apply": "yes"}, "preferences.apply"),
        ({"n": 4}, "preferences.n"),
        ({"avatar": "../bob"}, "preferences.avatar"),
        ([4], "preferences"),
    ],
)
def test_bad_preference_options_are_a_400(untrained, options, needle):
    admin, _ = untrained
    for model in ("avatar:alice", MODEL):
        refused(admin.post("/v1/chat/completions", json=chat(model, "Snacks?", preferences=options)), 400, needle)


def test_without_a_trained_critic_the_option_is_one_clear_400(untrained):
    admin, alice = untrained
    for client, body in ((alice, chat("avatar:alice", "Snacks?", preferences={"candidates": 4})),
                         (admin, chat(MODEL, "Snacks?", preferences={"avatar": "alice"}))):  # fmt: skip
        refused(client.post("/v1/chat/completions", json=body), 400, "personalm critic train")


def test_a_model_served_with_memory_needs_an_allowed_avatar(untrained):
    admin, alice = untrained
    ask = chat(MODEL, "Snacks?", preferences={"candidates": 2})
    refused(admin.post("/v1/chat/completions", json=ask), 400, "preferences.avatar")
    refused(admin.post("/v1/chat/completions", json=ask | {"preferences": {"avatar": "nobody"}}), 404, "nobody")
    assert alice.post("/v1/chat/completions", json=ask | {"preferences": {"avatar": "bob"}}).status_code == 403
    other = chat("avatar:alice", "Snacks?", preferences={"avatar": "bob"})
    refused(alice.post("/v1/chat/completions", json=other), 400, "own memory")
    soup = chat("soup", "Snacks?", preferences={"avatar": "alice"})
    assert admin.post("/v1/chat/completions", json=soup).status_code in (400, 404)


def test_the_avatar_default_is_stored_and_applies_to_its_chats(untrained):
    admin, alice = untrained
    assert admin.get("/v1/avatars/alice/preferences").json() == {"avatar": "alice", "apply": False, "candidates": 4}
    put = alice.put("/v1/avatars/alice/preferences", json={"apply": True, "candidates": 3})
    assert put.status_code == 200 and put.json() == {"avatar": "alice", "apply": True, "candidates": 3}
    assert admin.get("/v1/avatars/alice/preferences").json()["candidates"] == 3
    # the default is on: a plain chat asks for the critic, and a request can turn it off again
    refused(alice.post("/v1/chat/completions", json=chat("avatar:alice", "Snacks?")), 400, "personalm critic train")
    for bad, needle in (({"apply": True, "candidates": 0}, "candidates"), ({"apply": True, "extra": 1}, "extra"),
                        ({"candidates": 2}, "apply"), ({"apply": 1}, "apply")):  # fmt: skip
        refused(alice.put("/v1/avatars/alice/preferences", json=bad), 400, needle)
    assert alice.put("/v1/avatars/bob/preferences", json={"apply": False}).status_code == 403
    refused(admin.put("/v1/avatars/nobody/preferences", json={"apply": False}), 404, "nobody")
    assert admin.put("/v1/avatars/alice/preferences", json={"apply": False}).json()["apply"] is False
    assert "nobody" not in [a["name"] for a in admin.get("/v1/avatars").json()["data"]]


@pytest.mark.slow
def test_preference_aware_answers_on_the_embedded_model(tmp_path, embedded_model, embedder, keyword_critic):
    """Four candidates in one batch; the response (and a stream's final chunk) names the preference
    the critic applied, and the answer is a candidate it ranked highest."""
    catalog = Catalog(slots=8, max_len=512)
    catalog.attach(MODEL, embedded_model)
    memory = AvatarMemory(tmp_path / "memory.db", embedder)
    app = create_app(catalog, KeyStore(tmp_path / "keys.db", ADMIN), embedder_factory=lambda: embedder,
                     memory=memory, critic=lambda: keyword_critic)  # fmt: skip
    try:
        with BackgroundServer(app) as url, httpx.Client(base_url=url, headers=bearer(ADMIN), timeout=300) as admin:
            assert admin.post("/v1/avatars/alice/memories", json={"text": DAIRY}).status_code == 201
            ask = chat("avatar:alice", "Which dairy products do you like to eat?", max_tokens=24, temperature=0.9,
                       seed=3, preferences={"candidates": 4})  # fmt: skip
            body = admin.post("/v1/chat/completions", json=ask).json()
            applied = body["preferences"]
            assert applied["applied"] == [DAIRY] and applied["candidates"] == 4 and len(applied["scores"]) == 4
            assert applied["scores"][applied["chosen"]] == max(applied["scores"])
            preferences, question, answers = keyword_critic.calls[-1]
            assert preferences == [DAIRY] and question == ask["messages"][0]["content"] and len(answers) == 4
            assert body["choices"][0]["message"]["content"] == answers[applied["chosen"]]
            assert body["retrieved"] and body["usage"]["completion_tokens"] >= 4
            again = admin.post("/v1/chat/completions", json=ask).json()  # seeded: the same candidates
            assert again["choices"] == body["choices"] and again["preferences"] == applied

            with admin.stream("POST", "/v1/chat/completions", json=ask | {"stream": True}) as r:
                events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
            assert events[0]["retrieved"] and "preferences" not in events[0]
            assert events[-1]["preferences"] == applied and events[-1]["choices"][0]["finish_reason"]
            assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == answers[applied["chosen"]]

            served = chat(MODEL, ask["messages"][0]["content"], max_tokens=24, temperature=0.9,
                          preferences={"avatar": "alice", "candidates": 3})  # fmt: skip
            plain = admin.post("/v1/chat/completions", json=served).json()
            assert plain["preferences"]["applied"] == [DAIRY] and plain["preferences"]["candidates"] == 3
            assert plain["model"] == MODEL and "retrieved" not in plain
            greedy = admin.post("/v1/chat/completions", json=served | {"temperature": 0}).json()
            assert greedy["preferences"]["candidates"] == 1  # one greedy answer: nothing to choose among
    finally:
        catalog.close()
        memory.close()
