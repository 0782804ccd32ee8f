"""Soups through the server: `soup` merges pole adapters by the request's preference_weights
(checked against a directly merged model), `pmorl` gets the combined preference prompt, bad
weights are 400s, and requests with different weights never see each other's merge."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from personalm.adapters import exact_factors, load_adapter, soup_applied
from personalm.models.base import SamplingParams
from personalm.serve.app import create_app
from personalm.serve.auth import KeyStore
from personalm.serve.background import BackgroundServer
from personalm.serve.catalog import Catalog
from personalm.serve.soups import SoupModels, WeightGate

ADMIN = "admin-secret"
BASE = "smollm2-135m-instruct"
POLES = ["expertise.elementary", "expertise.phd", "style.friendly"]
CHAT = [{"role": "user", "content": "Name a fruit."}]
W1 = {"expertise.elementary": 1.0}
W2 = {"style.friendly": 1.0}
W3 = {"expertise.elementary": 0.5, "style.friendly": 0.5}


def test_the_gate_never_mixes_weights_and_serves_them_in_arrival_order():
    async def scenario() -> tuple[list[str], list[str]]:
        switches: list[str] = []
        inside: dict[str, int] = {}
        overlaps: list[str] = []

        async def switch(key: str, _payload) -> None:
            assert not any(inside.values()), "weights changed under a running request"
            await asyncio.sleep(0.01)
            switches.append(key)

        gate = WeightGate(switch)

        async def request(key: str, delay: float) -> None:
            await asyncio.sleep(delay)
            async with gate.hold(key, None):
                inside[key] = inside.get(key, 0) + 1
                if sum(1 for n in inside.values() if n) > 1:
                    overlaps.append(key)
                await asyncio.sleep(0.05)
                inside[key] -= 1

        arrivals = [("a", 0.0), ("a", 0.001), ("b", 0.002), ("a", 0.003), ("b", 0.004), ("c", 0.005)]
        await asyncio.gather(*(request(k, d) for k, d in arrivals))
        return switches, overlaps

    switches, overlaps = asyncio.run(scenario())
    assert overlaps == []
    # the two early "a" share one merge; the later "a" waits behind the first "b" (no starvation)
    assert switches == ["a", "b", "a", "b", "c"]


@pytest.mark.parametrize(("make", "message"), [(None, "soups folder not found"), ("empty", "no pole adapters")])
def test_serve_refuses_a_bad_soups_folder_in_one_line(tmp_path, make, message, cli):
    folder = tmp_path / "soups"
    if make:
        folder.mkdir()
    proc = cli.run("serve", "--soups", str(folder), "--port", "9", timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_cancelled_waiter_leaves_the_gate_usable():
    async def scenario() -> list[str]:
        switches: list[str] = []

        async def switch(key: str, _payload) -> None:
            switches.append(key)

        gate = WeightGate(switch)
        async with gate.hold("a", None):
            waiter = asyncio.ensure_future(_enter(gate, "b"))
            await asyncio.sleep(0.01)
            waiter.cancel()
        await _enter(gate, "c")
        return switches

    async def _enter(gate: WeightGate, key: str) -> None:
        async with gate.hold(key, None):
            pass

    assert asyncio.run(scenario()) == ["a", "c"]


@pytest.fixture(scope="module")
def soup_server(tmp_path_factory, embedded_model, embedder, soups_folder):
    root = soups_folder(embedded_model.model, tmp_path_factory.mktemp("soups"), POLES)
    catalog = Catalog(slots=4, max_len=256)
    catalog.attach(BASE, embedded_model)
    soups = SoupModels(root, BASE, slots=4, max_len=256)
    soups.register(catalog)
    keys = KeyStore(tmp_path_factory.mktemp("serve") / "keys.db", ADMIN)
    app = create_app(catalog, keys, embedder_factory=lambda: embedder, soups=soups)
    with BackgroundServer(app) as url:
        yield url, soups, catalog
    catalog.close()
    soups.close()


@pytest.fixture(scope="module")
def client(soup_server):
    from openai import OpenAI

    return OpenAI(base_url=f"{soup_server[0]}/v1", api_key=ADMIN, max_retries=0)


@pytest.fixture(scope="module")
def merged_answers(soup_server, embedded_model):
    """Greedy answers of the base with each soup merged into it directly (no server involved)."""
    _, soups, _ = soup_server
    adapters = {pole: load_adapter(soups.root / pole, pole) for pole in POLES}
    params = SamplingParams(max_tokens=12)
    answers = {}
    for name, weights in (("w1", W1), ("w2", W2), ("w3", W3)):
        prompted = soups.with_system(CHAT, soups.prompt(weights))
        with soup_applied(embedded_model, exact_factors(adapters, weights), name):
            bare, with_prompt = embedded_model.generate([CHAT, prompted], params)
        answers[name] = bare.text
        answers[name + "+prompt"] = with_prompt.text
    answers["base"] = embedded_model.generate([CHAT], params)[0].text
    return answers


@pytest.mark.slow
def test_models_lists_soup_and_pmorl_with_their_poles(client):
    models = {m.id: m for m in client.models.list().data}
    assert {BASE, "soup", "pmorl"} <= set(models)
    soup = models["soup"].model_extra
    assert soup["kind"] == "soup" and soup["preference_poles"] == POLES
    assert soup["preference_dimensions"] == {"expertise": POLES[:2], "style": POLES[2:]}
    assert models["pmorl"].model_extra["kind"] == "pmorl"


@pytest.mark.slow
def test_soup_answers_exactly_like_the_directly_merged_model(client, merged_answers, soup_server):
    def ask(weights, **extra):
        reply = client.chat.completions.create(
            model="soup", messages=CHAT, max_tokens=12, temperature=0,
            extra_body={"preference_weights": weights, **extra},
        )  # fmt: skip
        assert reply.model == "soup" and reply.model_extra["preference_weights"] == weights
        return reply.choices[0].message.content

    assert ask(W1, preference_prompt=False) == merged_answers["w1"]
    assert ask(W2, preference_prompt=False) == merged_answers["w2"]
    assert ask(W3) == merged_answers["w3+prompt"]
    # the weights are what changed the answer: the three soups and the base all differ
    assert len({merged_answers[k] for k in ("w1", "w2", "w3", "base")}) == 4
    assert len(soup_server[1]._factors) == 3  # one cached merge per weight vector


@pytest.mark.slow
def test_soup_streams_and_completes_text_with_the_same_weights(client, merged_answers, soup_server):
    chunks = client.chat.completions.create(
        model="soup", messages=CHAT, max_tokens=12, temperature=0, stream=True,
        extra_body={"preference_weights": W2, "preference_prompt": False},
    )  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == merged_answers["w2"]
    text = client.completions.create(
        model="soup", prompt="The sky is", max_tokens=6, temperature=0, extra_body={"preference_weights": W1}
    )
    assert text.choices[0].text and text.model == "soup"


@pytest.mark.slow
def test_concurrent_requests_with_different_weights_do_not_see_each_others_merge(soup_server, merged_answers):
    url = soup_server[0]

    async def ask(client: httpx.AsyncClient, name: str, weights: dict[str, float]) -> tuple[str, str]:
        body = {"model": "soup", "messages": CHAT, "max_tokens": 12, "temperature": 0,
                "preference_weights": weights, "preference_prompt": False}  # fmt: skip
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return name, response.json()["choices"][0]["message"]["content"]

    async def burst() -> list[tuple[str, str]]:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as client:
            plan = [("w1", W1), ("w2", W2), ("w1", W1), ("w3", W3), ("w2", W2), ("w1", W1)]
            return await asyncio.gather(*(ask(client, n, w) for n, w in plan))

    for name, text in asyncio.run(burst()):
        assert text == merged_answers[name], name


@pytest.mark.slow
def test_pmorl_answers_with_the_combined_preference_prompt(client, soup_server):
    _, soups, catalog = soup_server
    reply = client.chat.completions.create(
        model="pmorl", messages=CHAT, max_tokens=12, temperature=0,
        extra_body={"preference_weights": {"expertise.phd": 0.7, "expertise.elementary": 0.3, "style.friendly": 1}},
    )  # fmt: skip
    prompt = soups.prompt({"expertise.phd": 0.7, "expertise.elementary": 0.3, "style.friendly": 1})
    assert prompt == soups.prefs.combined_prompt(
        [soups.prefs.pole("expertise.phd"), soups.prefs.pole("style.friendly")]
    )
    model, _ = catalog.load("pmorl")
    expected = model.generate([soups.with_system(CHAT, prompt)], SamplingParams(max_tokens=12))[0].text
    assert reply.choices[0].message.content == expected


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "soup", "preference_weights": {"expertise.toddler": 1}}, "unknown preference 'expertise.toddler'"),
        ({"model": "soup", "preference_weights": {"style.friendly": "lots"}}, "valid number"),
        (
            {"model": "soup", "preference_weights": {"style.friendly": 0, "expertise.phd": 0}},
            "all merge weights are zero",
        ),
        ({"model": "soup", "preference_weights": {"style.friendly": 1e9}}, "less than or equal to 10"),
        ({"model": "soup", "preference_weights": [1]}, "valid dictionary"),
        ({"model": "soup"}, "needs preference_weights"),
        ({"model": "pmorl", "preference_weights": {"style.friendly": -1}}, "positive"),
        ({"model": BASE, "preference_weights": {"style.friendly": 1}}, "takes none"),
    ],
)
def test_bad_weights_are_400_with_a_clear_message(soup_server, body, message):
    response = httpx.post(
        f"{soup_server[0]}/v1/chat/completions",
        json=body | {"messages": CHAT, "max_tokens": 4},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


@pytest.mark.slow
def test_the_openai_client_sees_bad_weights_as_a_bad_request(client):
    from openai import BadRequestError

    with pytest.raises(BadRequestError, match="unknown preference"):
        client.chat.completions.create(
            model="soup", messages=CHAT, max_tokens=4, extra_body={"preference_weights": {"tone.grumpy": 1}}
        )
    with pytest.raises(BadRequestError, match="/v1/chat/completions"):
        client.completions.create(model="pmorl", prompt="Hi", max_tokens=4, extra_body={"preference_weights": W1})


@pytest.mark.slow
def test_fuzzed_preference_weights_never_cause_a_server_error(soup_server):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    names = st.sampled_from([*POLES, "tone.grumpy", "", "expertise", "x" * 300])
    values = st.one_of(
        st.floats(),
        st.integers(-(10**20), 10**20),
        st.booleans(),
        st.text(max_size=4),
        st.none(),
        st.lists(st.integers(), max_size=2),
    )
    valid = st.dictionaries(st.sampled_from(POLES), st.floats(-10, 10), min_size=1)
    weights = st.one_of(
        valid, st.dictionaries(names, values, max_size=4), st.none(), st.integers(), st.text(max_size=4)
    )
    statuses: list[int] = []

    @settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(model=st.sampled_from(["soup", "pmorl"]), weights=weights, prompt=st.booleans(), stream=st.booleans())
    def check(model, weights, prompt, stream) -> None:
        body = {"model": model, "messages": CHAT, "max_tokens": 2, "stream": stream, "preference_weights": weights,
                "preference_prompt": prompt}  # fmt: skip
        response = httpx.post(f"{soup_server[0]}/v1/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120)  # fmt: skip
        statuses.append(response.status_code)
        assert response.status_code < 500, response.text
        assert '"server_error"' not in response.text

    check()
    assert {200, 400} <= set(statuses), statuses


@pytest.mark.slow
def test_a_soup_request_abandoned_while_waiting_for_its_weights_never_runs(soup_server):
    url, soups, _ = soup_server
    headers = {"Authorization": f"Bearer {ADMIN}"}
    holding = {"model": "soup", "prompt": "Once upon a time", "max_tokens": 150, "temperature": 0, "stream": True,
               "preference_weights": W1}  # fmt: skip
    waiting = {"model": "soup", "messages": CHAT, "max_tokens": 4, "preference_weights": W2}
    w1_key = soups.key(W1)
    with httpx.stream("POST", f"{url}/v1/completions", json=holding, headers=headers, timeout=300) as stream:
        lines = stream.iter_lines()
        assert next(line for line in lines if '"text": "' in line and '"text": ""' not in line)
        with pytest.raises(httpx.ReadTimeout):  # W2 must wait for the W1 stream: the client gives up
            httpx.post(f"{url}/v1/chat/completions", json=waiting, headers=headers, timeout=1.0)
        time.sleep(1.0)  # the server notices the closed connection within its poll interval
        assert soups._gate._queue == []
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    time.sleep(0.5)
    assert soups._gate.current == w1_key and soups._gate.inside == 0  # the W2 merge never happened
