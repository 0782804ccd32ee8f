"""Voice adapter versions over the API: GET /v1/avatars/NAME/versions, `avatar:NAME` following the
latest version, `avatar:NAME@vN` pinning one and `@base` answering without an adapter, each scoped
like every avatar route (another avatar's key gets the same 403 for any name and any version)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from personalm.avatars.api import AvatarMemory
from personalm.avatars.preferences import VOICE_CANDIDATES, VOICE_FUSION
from personalm.avatars.voice import AdapterVersion, record
from personalm.errors import PersonalmError
from personalm.models.registry import DEFAULT_MODEL, resolve_local
from personalm.serve.app import create_app
from personalm.serve.auth import KeyStore
from personalm.serve.catalog import Catalog
from personalm.serve.routes import avatars as avatar_routes

ADMIN = "admin-secret"


def version(number: int, path: str, base: str = "smollm2-135m-instruct") -> AdapterVersion:
    return AdapterVersion(version=number, path=path, base=base, rank=4, alpha=8, parent=number - 1 or None,
                          created_at=time.time(), sources=[f"/data/part{number}.txt"], utterances=10, trained=8,
                          replayed=2 if number > 1 else 0, heldout=2, first_id=10 * number - 9, last_id=10 * number,
                          time_range=None, steps=3, seconds=1.0, final_loss=2.0)  # fmt: skip


def clients_for(app, memory: AvatarMemory):
    admin = TestClient(app, base_url="http://localhost", headers={"Authorization": f"Bearer {ADMIN}"})
    for name in ("alice", "bob"):
        assert (
            admin.post(f"/v1/avatars/{name}/memories", json={"text": f"I am {name}. I love the sea."}).status_code
            == 201
        )
    key = admin.post("/admin/keys", json={"name": "k-alice", "scope": "avatar:alice"}).json()["key"]
    return admin, TestClient(app, base_url="http://localhost", headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
def clients(tmp_path, word_hash_embedder):
    memory = AvatarMemory(tmp_path / "memory.db", word_hash_embedder())
    catalog = Catalog(slots=1, max_len=64)
    app = create_app(catalog, KeyStore(tmp_path / "keys.db", ADMIN), word_hash_embedder, memory)
    with TestClient(app, base_url="http://localhost"):
        admin, alice = clients_for(app, memory)
        for number in (1, 2):
            record(memory.store, "alice", version(number, str(tmp_path / f"alice-v{number}")))
        record(memory.store, "bob", version(1, str(tmp_path / "bob-v1")))
        yield admin, alice
    catalog.close()
    memory.close()


def test_versions_are_listed_with_their_windows_and_only_to_their_avatar(clients):
    admin, alice = clients
    listed = alice.get("/v1/avatars/alice/versions").json()
    assert listed["latest"] == "v2" and [(v["id"], v["latest"]) for v in listed["data"]] == [("v1", False),
                                                                                           ("v2", True)]  # fmt: skip
    v2 = listed["data"][1]
    assert (v2["parent"], v2["sources"], v2["first_id"], v2["last_id"], v2["replayed"]) == (1, ["/data/part2.txt"],
                                                                                            11, 20, 2)  # fmt: skip
    assert "path" not in v2  # where the server keeps its files is not the client's business
    assert [m["adapter_versions"] for m in alice.get("/v1/models").json()["data"]] == [["v1", "v2"]]
    for path in ("/v1/avatars/bob/versions", "/v1/avatars/nobody/versions"):
        assert alice.get(path).status_code == 403, path
    assert admin.get("/v1/avatars/bob/versions").json()["latest"] == "v1"
    assert admin.get("/v1/avatars/nobody/versions").status_code == 404
    assert admin.get("/v1/avatars/..%2Fbob/versions").status_code in (400, 404)


def test_another_avatars_versions_cannot_be_pinned_and_unknown_versions_are_404(clients):
    admin, alice = clients
    ask = {"messages": [{"role": "user", "content": "Do you love the sea?"}], "max_tokens": 4}
    for model in ("avatar:bob@v1", "avatar:bob@v9", "avatar:bob@base", "avatar:bob", "avatar:nobody@v1"):
        refused = alice.post("/v1/chat/completions", json=ask | {"model": model})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied", model
    for model in ("avatar:alice@v3", "avatar:alice@v0", "avatar:alice@2", "avatar:alice@x"):
        missing = alice.post("/v1/chat/completions", json=ask | {"model": model})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found", model
    assert admin.post("/v1/completions", json={"model": "avatar:alice@v1", "prompt": "hi"}).status_code == 404


@pytest.mark.slow
def test_pinned_and_latest_versions_answer_with_their_adapters(tmp_path, embedded_model, embedder, soups_folder,
                                                                monkeypatch):  # fmt: skip
    """Two random adapters on the real model as v1 and v2: `avatar:alice` answers with v2 until v3
    is recorded, `@v1` stays on v1, `@base` uses no adapter; each version loads once. A voice answers
    by proxy-tuned decoding with the served base (no copy of it loaded), or, with fusion off, as the
    best of n by voice likelihood."""
    memory = AvatarMemory(tmp_path / "memory.db", embedder)
    catalog = Catalog(slots=2, max_len=256)
    catalog.attach("smollm2-135m-instruct", embedded_model)
    app = create_app(catalog, KeyStore(tmp_path / "keys.db", ADMIN), lambda: embedder, memory)
    folders = soups_folder(embedded_model.model, tmp_path / "versions", ["v1", "v2", "v3"], pmorl=False)
    try:
        with TestClient(app, base_url="http://localhost"):
            admin, alice = clients_for(app, memory)
            for number in (1, 2):
                record(memory.store, "alice", version(number, str(folders / f"v{number}")))
            ask = {"messages": [{"role": "user", "content": "Do you love the sea?"}], "max_tokens": 6,
                   "temperature": 0}  # fmt: skip

            def answer(model: str) -> dict:
                reply = alice.post("/v1/chat/completions", json=ask | {"model": model})
                assert reply.status_code == 200, reply.text
                body = reply.json()
                assert body["model"] == model and body["choices"][0]["message"]["content"].strip()
                return body

            fused = answer("avatar:alice")
            assert fused["adapter_version"] == "v2" and fused["voice"]["fusion"] == VOICE_FUSION == 1.0
            assert fused["voice"]["candidates"] == 1 and "preferences" not in fused
            assert answer("avatar:alice@v1")["adapter_version"] == "v1"
            assert answer("avatar:alice@base")["adapter_version"] is None and "voice" not in answer("avatar:alice@base")
            record(memory.store, "alice", version(3, str(folders / "v3")))
            assert answer("avatar:alice")["adapter_version"] == "v3"  # following the latest
            assert answer("avatar:alice@v1")["adapter_version"] == "v1"  # pinned
            assert set(catalog._voices) == {folders / "v1", folders / "v2", folders / "v3"}
            assert not catalog._bases  # the fused base is the served one: no copy loaded
            sampled = alice.post("/v1/chat/completions", json=ask | {"model": "avatar:alice", "temperature": 0.8,
                                                                     "stream": True})  # fmt: skip
            assert sampled.status_code == 200 and '"fusion": 1.0' in sampled.text and "[DONE]" in sampled.text
            assert VOICE_CANDIDATES == 1 and not catalog._bases
            # Fusion off, voice ranking on: the best of n answers by voice likelihood (adapter over base).
            monkeypatch.setattr(avatar_routes, "VOICE_FUSION", None)
            sampled = alice.post("/v1/chat/completions", json=ask | {"model": "avatar:alice", "temperature": 0.8})
            assert sampled.status_code == 200 and "voice" not in sampled.json()  # one sample, the adapter reads all
            monkeypatch.setattr(avatar_routes, "VOICE_CANDIDATES", 4)
            reply = alice.post("/v1/chat/completions", json=ask | {"model": "avatar:alice", "temperature": 0.8,
                                                                   "max_tokens": 8})  # fmt: skip
            assert reply.status_code == 200, reply.text
            voice = reply.json()["voice"]
            likelihoods = {int(i): v for i, v in voice["likelihoods"].items()}
            assert voice["candidates"] == 4 and len(likelihoods) == 4 and voice["fusion"] is None
            assert likelihoods[voice["chosen"]] == max(likelihoods.values()) and "preferences" not in reply.json()
            assert reply.json()["usage"]["completion_tokens"] >= 4
            assert catalog.voice_base("smollm2-135m-instruct") is embedded_model and not catalog._bases  # no copy
            plain = alice.post("/v1/chat/completions", json=ask | {"model": "avatar:alice@base", "temperature": 0.8})
            assert plain.status_code == 200 and "voice" not in plain.json()
    finally:
        catalog.close()
        memory.close()


def test_a_voice_base_the_server_does_not_serve_is_loaded_once_for_scoring():
    """A base named otherwise than any catalog entry (here the embedded model's directory) gets one
    scoring-only copy; an unknown base is one clear error."""
    catalog = Catalog(slots=1, max_len=64)
    path = str(resolve_local(DEFAULT_MODEL))
    try:
        first = catalog.voice_base(path)
        assert catalog.voice_base(path) is first and list(catalog._bases) == [path] and not catalog._loaded
        with pytest.raises(PersonalmError, match="not available on this server"):
            catalog.voice_base("no-such-model")
    finally:
        catalog.close()
