"""Property-based fuzzing of every route in the served OpenAPI document (issue 17), beyond
schemathesis' schema cases: bodies built from each request schema's own fields, mixing valid values
with empty strings, huge integers, control characters and newlines, wrong types, arbitrary JSON and
non-JSON bytes; path and query parameters likewise; keys of every scope. No answer may be a 5xx or
carry a server error, and chat streams running the whole time, on the model the fuzzed requests
also use, must all finish normally."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personalm.avatars.api import AvatarMemory
from personalm.serve.app import create_app
from personalm.serve.auth import KeyStore
from personalm.serve.background import BackgroundServer
from personalm.serve.catalog import Catalog

pytestmark = pytest.mark.slow
ADMIN = "admin-secret"
MODEL = "smollm2-135m-instruct"
OTHER_MODELS = ["avatar:alice", "avatar:bob", "avatar:nosuch", "word-hash-512", "default"]
EXAMPLES_PER_OPERATION = 25
EXAMPLES_PER_BODY_OPERATION = 40

CONTROL_TEXT = st.sampled_from(
    ["", " ", "\n", "alice\n", "alice\r\n", "\nalice", "al\x00ice", "a\tb", "\x1b[2J", "../bob", "%0A", "alice/bob",
     "é", "😀", "\ud7ff", "x" * 70, "avatar:alice\n", "null", "-1", "9223372036854775808"]
)  # fmt: skip
HUGE_INT = st.sampled_from([2**31, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 2**70, 10**30, -1, 0])
WRONG_TYPE = st.sampled_from([None, True, False, 1.5, -0.0, "10", "yes", [], {}, [None], {"a": 1}, [[1]]])
EDGE = st.sampled_from(["", "alice\n", "\x00", 2**63, 2**70, -(2**63) - 1, -1, 0, "10", "yes", None, [], 1.5])
NASTY = st.one_of(EDGE, CONTROL_TEXT, HUGE_INT, WRONG_TYPE, st.integers(-3, 3), st.text(max_size=12))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system"]) | NASTY, "content": st.just("Name a colour.") | NASTY}
)
VALID = {
    # Field name -> values a well-meaning client sends (small answers: at most 3 tokens).
    "model": st.just(MODEL) | st.sampled_from(OTHER_MODELS),
    "messages": st.lists(MESSAGE, min_size=1, max_size=3) | st.just([{"role": "user", "content": "Hi?"}]),
    "prompt": st.sampled_from(["The sky is", ["Water is", "Fire is"]]),
    "max_tokens": st.integers(1, 3),
    "max_completion_tokens": st.integers(1, 3),
    "temperature": st.sampled_from([0, 0.7, 2]),
    "top_p": st.sampled_from([0.5, 1]),
    "seed": st.integers(0, 9),
    "stop": st.sampled_from(["\n", ["a", "b"]]),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "n": st.just(1),
    "user": st.just("someone"),
    "preference_weights": st.dictionaries(st.sampled_from(["style.friendly", "x"]), st.floats(-1, 1), max_size=2),
    "preference_prompt": st.booleans(),
    "input": st.sampled_from(["hello", ["a", "b"]]),
    "encoding_format": st.sampled_from(["float", "base64"]),
    "scope": st.sampled_from(["user", "avatar:alice", "avatar:nosuch"]),
    "filename": st.sampled_from(["a.txt", "log.jsonl", "chat.csv"]),
    "content": st.sampled_from(["I like tea.", "{oops", "speaker,text\nme,hi", '{"speaker": "me", "text": "hi"}']),
    "speakers": st.sampled_from([[], ["me"]]),
    "text": st.just("I grow basil."),
    "kind": st.sampled_from(["fact", "utterance"]),
    "q": st.just("tea"),
    "k": st.integers(1, 5),
    "limit": st.integers(1, 5),
    "offset": st.integers(0, 5),
    "memory_id": st.integers(1, 5),
    "as_of": st.sampled_from(["2024-03-01", "1700000000", "2999-12-31T23:59:59+02:00"]),
    "extract": st.booleans(),
    "name": st.sampled_from(["alice", "bob", "nosuch", "k-fuzz"]),  # avatars in paths, keys in /admin/keys
}
ALWAYS_SENT = {"max_tokens"}  # an answer's length stays bounded even when the rest is valid


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, embedded_model, word_hash_embedder):
    root = tmp_path_factory.mktemp("fuzz")
    catalog = Catalog(slots=8, max_len=128)
    catalog.attach(MODEL, embedded_model)
    memory = AvatarMemory(root / "memory.db", word_hash_embedder())
    app = create_app(catalog, KeyStore(root / "keys.db", ADMIN), embedder_factory=word_hash_embedder, memory=memory)
    with BackgroundServer(app) as url:
        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120)
        for name in ("alice", "bob"):
            assert admin.post(f"/v1/avatars/{name}/memories", json={"text": f"{name} likes tea."}).status_code == 201
        keys = [admin.post("/admin/keys", json={"name": n, "scope": s}).json()["key"]
                for n, s in (("k-user", "user"), ("k-alice", "avatar:alice"))]  # fmt: skip
        yield url, app.openapi(), [ADMIN, *keys, "pm-unknown", None]
        admin.close()
    catalog.close()
    memory.close()


class Streams(threading.Thread):
    """Streams chat answers back to back until stopped; keeps how each one ended."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop, self.started = url, threading.Event(), threading.Event()
        self.endings: list[tuple[int, str | None, bool, bool]] = []  # status, finish, server error, [DONE]

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=300) as http:
            seed = 0
            while not self.stop.is_set():
                seed += 1
                ask = [{"role": "user", "content": "Tell me a long story about a lighthouse."}]
                body = {"model": MODEL, "messages": ask, "max_tokens": 48, "temperature": 0.9, "seed": seed,
                        "stream": True}  # fmt: skip
                finish, failed, done = None, False, False
                with http.stream("POST", "/v1/chat/completions", json=body) as res:
                    for line in res.iter_lines():
                        self.started.set()
                        done = done or line == "data: [DONE]"
                        if line.startswith("data: {"):
                            chunk = json.loads(line[6:])
                            failed = failed or "error" in chunk
                            finish = next((c["finish_reason"] for c in chunk.get("choices", []) if c["finish_reason"]),
                                          finish)  # fmt: skip
                self.endings.append((res.status_code, finish, failed, done))


def operations(spec: dict) -> list[tuple[str, str, dict]]:
    return [(method.upper(), path, op) for path, item in spec["paths"].items() for method, op in item.items()]


def fields(names: list[str], required: set[str], nasty: str | None, chaos: bool) -> st.SearchStrategy:
    """A dict of these fields: valid ones (required always sent, the others at random) but for the
    `nasty` one, or with `chaos` each field valid, nasty or left out."""

    def value(name: str) -> st.SearchStrategy:
        if chaos:
            return (VALID[name] | NASTY) if name in VALID else NASTY
        return EDGE | NASTY if name == nasty or name not in VALID else VALID[name]

    always = {n for n in names if (n in required and not chaos) or n == nasty or n in ALWAYS_SENT}
    return st.fixed_dictionaries({n: value(n) for n in always},
                                 optional={n: value(n) for n in names if n not in always})  # fmt: skip


def request_strategy(spec: dict, path: str, operation: dict, keys: list) -> st.SearchStrategy:
    """(path values, query, body text or None, key): valid but for one nasty field of the path,
    the query or the body (to get deep into the handler), or chaos everywhere (non-JSON bodies too)."""
    parts: dict[str, tuple[list[str], set[str]]] = {}
    for where in ("path", "query"):
        mine = [p for p in operation.get("parameters", []) if p["in"] == where]
        parts[where] = ([p["name"] for p in mine], {p["name"] for p in mine if p.get("required")})
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if content is not None:
        schema = spec["components"]["schemas"][content["schema"]["$ref"].rsplit("/", 1)[1]]
        parts["body"] = (sorted(schema.get("properties", {})), set(schema.get("required", [])) | ALWAYS_SENT)
    targets = [(part, name) for part, (names, required) in parts.items()
               for name in [*names, *sorted(required & set(names)) * 2]]  # fmt: skip
    raw = st.one_of(JSON.map(json.dumps), st.binary(max_size=32), st.sampled_from(["", "{", "[]", '{"a": 1e999}']))

    def build(target: tuple[str, str] | None) -> st.SearchStrategy:
        chaos = target is None
        made = {part: fields(names, required, target[1] if target and target[0] == part else None, chaos)
                for part, (names, required) in parts.items()}  # fmt: skip
        body = st.none()
        if "body" in made:
            body = made["body"].map(json.dumps) | raw if chaos else made["body"].map(json.dumps)
        key = st.sampled_from(keys) if chaos else st.sampled_from(keys[:1] * 3 + keys)
        return st.tuples(made["path"], made["query"], body, key)

    return st.one_of(st.sampled_from(targets).flatmap(build), build(None)) if targets else build(None)


def as_text(value) -> str:
    return json.dumps(value) if isinstance(value, (dict, list, bool)) or value is None else str(value)


def openai_error(res: httpx.Response) -> bool:
    try:
        return isinstance(res.json()["error"]["message"], str)
    except (ValueError, KeyError, TypeError):
        return False


def fuzz(http: httpx.Client, spec: dict, method: str, path: str, operation: dict, keys: list) -> tuple[list, list]:
    """Send one operation's generated requests; (their statuses, what went wrong)."""
    sent: list[int] = []
    failures: list[str] = []
    examples = EXAMPLES_PER_BODY_OPERATION if "requestBody" in operation else EXAMPLES_PER_OPERATION

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=request_strategy(spec, path, operation, keys))
    def check(case) -> None:
        path_values, query, body, key = case
        target = path
        for name, value in path_values.items():
            target = target.replace("{" + name + "}", quote(as_text(value), safe=""))
        headers = {"content-type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
        res = http.request(method, target, params={n: as_text(v) for n, v in query.items()}, content=body,
                           headers=headers)  # fmt: skip
        sent.append(res.status_code)
        shown = f"{method} {target} {query} {str(body)[:120]} -> {res.status_code} {res.text[:200]}"
        if res.status_code >= 500 or '"server_error"' in res.text:
            failures.append(shown)
        elif res.status_code >= 400 and not openai_error(res):
            failures.append("not an OpenAI-shaped error: " + shown)

    check()
    return sent, failures


def test_no_fuzzed_request_gets_a_5xx_or_disturbs_a_running_stream(fuzzed):
    url, spec, keys = fuzzed
    streams = Streams(url)
    streams.start()
    assert streams.started.wait(120), "the background stream never started"
    failures: list[str] = []
    calls: dict[str, list[int]] = {}
    began = time.monotonic()
    with httpx.Client(base_url=url, timeout=120) as http:
        for method, path, operation in operations(spec):
            sent, failed = fuzz(http, spec, method, path, operation, keys)
            calls[path] = calls.get(path, []) + sent
            failures += failed
    fuzzing_s = time.monotonic() - began
    streams.stop.set()
    streams.join(timeout=300)
    assert all(calls.get(path) for path in spec["paths"]), calls
    assert not failures, failures[:5]
    assert streams.endings, f"no stream finished in the {fuzzing_s:.0f} s of fuzzing"
    assert all(status == 200 and finish in ("stop", "length") and not failed and done
               for status, finish, failed, done in streams.endings), streams.endings  # fmt: skip
    statuses = Counter(status for sent in calls.values() for status in sent)
    print(f"fuzzed {statuses.total()} requests in {fuzzing_s:.0f} s ({dict(statuses)}), {len(streams.endings)} streams")
