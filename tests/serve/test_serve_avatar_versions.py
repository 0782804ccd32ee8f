"""Versions of avatar memories over the API: as_of reads, histories, undo and learning from a
message, each scoped like every other avatar route (another avatar's key gets 403)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from personalm.avatars.api import AvatarMemory
from personalm.serve.app import create_app
from personalm.serve.auth import KeyStore
from personalm.serve.catalog import Catalog

ADMIN = "admin-secret"


@pytest.fixture
def clients(tmp_path, word_hash_embedder):
    memory = AvatarMemory(tmp_path / "memory.db", word_hash_embedder())
    catalog = Catalog(slots=1, max_len=64)
    app = create_app(catalog, KeyStore(tmp_path / "keys.db", ADMIN), word_hash_embedder, memory)
    with TestClient(app, base_url="http://localhost") as admin:
        admin.headers["Authorization"] = f"Bearer {ADMIN}"
        for name in ("alice", "bob"):
            assert admin.post(f"/v1/avatars/{name}/memories", json={"text": f"I am {name}."}).status_code == 201
        key = admin.post("/admin/keys", json={"name": "k-alice", "scope": "avatar:alice"}).json()["key"]
        alice = TestClient(app, base_url="http://localhost", headers={"Authorization": f"Bearer {key}"})
        yield admin, alice
    catalog.close()
    memory.close()


def test_learning_from_a_message_as_of_history_and_undo(clients):
    admin, _ = clients
    said = admin.post("/v1/avatars/alice/memories", json={"text": "What a nice day!", "extract": True})
    assert said.status_code == 201 and said.json() | {"changes": []} == {
        "avatar": "alice", "added": False, "extracted": [], "extractor": "rules", "changes": []}  # fmt: skip
    first = admin.post("/v1/avatars/alice/memories", json={"text": "I live in Paris.", "extract": True}).json()
    assert first["extracted"] == ["I live in Paris."] and first["changes"][0]["op"] == "ADD"
    paris = first["changes"][0]["memory_id"]
    time.sleep(0.01)
    between = time.time()
    time.sleep(0.01)
    moved = admin.post("/v1/avatars/alice/memories", json={"text": "Actually I live in Rome now.", "extract": True})
    change = moved.json()["changes"][0]
    assert (change["op"], change["target"], change["target_text"]) == ("UPDATE", paris, "I live in Paris.")
    rome = change["memory_id"]
    again = admin.post("/v1/avatars/alice/memories", json={"text": "I live in Rome now.", "extract": True}).json()
    assert [c["op"] for c in again["changes"]] == ["NONE"] and not again["added"]  # a duplicate records nothing

    now = {m["text"] for m in admin.get("/v1/avatars/alice/memories").json()["data"]}
    then = admin.get("/v1/avatars/alice/memories", params={"as_of": str(between)}).json()
    assert "I live in Rome now." in now and "I live in Paris." not in now
    assert {m["text"] for m in then["data"]} == {"I am alice.", "I live in Paris."} and then["as_of"] == between
    searched = admin.get("/v1/avatars/alice/search", params={"q": "where do you live", "as_of": str(between)}).json()
    assert "I live in Paris." in [h["text"] for h in searched["data"]]
    assert admin.get("/v1/avatars/alice/memories", params={"as_of": "2000-01-01"}).json()["total"] == 0

    history = admin.get(f"/v1/avatars/alice/memories/{rome}/history").json()["data"]
    assert [(m["text"], m["status"]) for m in history] == [("I live in Paris.", "superseded"),
                                                           ("I live in Rome now.", "current")]  # fmt: skip
    assert history[1]["replaces"] == paris and history[0]["superseded_by"] == rome
    assert history[1]["origin"] == "chat: Actually I live in Rome now." and "single-valued" in history[1]["rule"]

    undone = admin.post(f"/v1/avatars/alice/memories/{rome}/undo").json()
    assert undone["action"] == "reverted" and undone["memory"]["text"] == "I live in Paris."
    assert admin.post("/v1/avatars/alice/undo").json()["action"] == "reverted"  # the last change, undone again
    assert "I live in Rome now." in {m["text"] for m in admin.get("/v1/avatars/alice/memories").json()["data"]}
    assert admin.delete(f"/v1/avatars/alice/memories/{paris}").status_code == 404  # not current: nothing to retract
    assert admin.get("/v1/avatars/alice/memories/99999/history").status_code == 404
    assert admin.post("/v1/avatars/alice/memories/99999/undo").status_code == 404
    assert admin.post("/v1/avatars/nobody/undo").status_code == 404


def test_bad_version_requests_are_4xx(clients):
    admin, _ = clients
    for as_of in ("yesterday", "nan", "inf", "1e999", "2024-13-01", "x" * 41):
        assert admin.get("/v1/avatars/alice/memories", params={"as_of": as_of}).status_code in (400, 422), as_of
    assert admin.get("/v1/avatars/alice/memories/-1/history").status_code in (400, 422)
    assert admin.get(f"/v1/avatars/alice/memories/{2**63}/history").status_code in (400, 422)
    extract = {"text": "I like tea.", "kind": "utterance", "extract": True}
    assert admin.post("/v1/avatars/alice/memories", json=extract).status_code == 400
    assert admin.post("/v1/avatars/alice/memories", json={"text": "x", "extract": "yes"}).status_code in (400, 422)


def test_another_avatars_key_gets_403_on_every_version_route(clients):
    admin, alice = clients
    bob = admin.get("/v1/avatars/bob/memories").json()["data"][0]["id"]
    for method, path in (("GET", "/v1/avatars/bob/memories?as_of=2030-01-01"),
                         ("GET", f"/v1/avatars/bob/memories/{bob}/history"),
                         ("GET", "/v1/avatars/bob/search?q=bob&as_of=2030-01-01"),
                         ("POST", "/v1/avatars/bob/undo"), ("POST", f"/v1/avatars/bob/memories/{bob}/undo"),
                         ("POST", "/v1/avatars/nosuch/undo")):  # fmt: skip
        body = {"text": "x"} if path.endswith("/memories") else None
        response = alice.request(method, path, json=body)
        assert response.status_code == 403, (path, response.text)
    assert admin.get("/v1/avatars/bob/memories").json()["total"] == 1  # untouched
    assert alice.get(f"/v1/avatars/alice/memories/{bob}/history").status_code == 404  # bob's id is not alice's
