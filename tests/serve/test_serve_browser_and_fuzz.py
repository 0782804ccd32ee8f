"""The web chat page in headless Chromium, and schemathesis against the served OpenAPI document."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from personalm.avatars.api import AvatarMemory
from personalm.serve.app import create_app
from personalm.serve.auth import KeyStore
from personalm.serve.background import BackgroundServer
from personalm.serve.catalog import Catalog
from personalm.serve.soups import SoupModels

pytestmark = pytest.mark.slow
ADMIN = "admin-secret"
CHROMIUM = os.environ.get("PERSONALM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"
PREFERENCE = "I prefer organic vegetables grown without pesticides."


@pytest.fixture(scope="module")
def small_server(tmp_path_factory, embedded_model, embedder):
    """A server whose answers stay short (max_len 96), so fuzzed requests finish quickly."""
    catalog = Catalog(slots=4, max_len=96)
    catalog.attach("smollm2-135m-instruct", embedded_model)
    keys = KeyStore(tmp_path_factory.mktemp("serve") / "keys.db", ADMIN)
    with BackgroundServer(create_app(catalog, keys, embedder_factory=lambda: embedder)) as url:
        yield url
    catalog.close()


@pytest.fixture(scope="module")
def page_server(tmp_path_factory, embedded_model, embedder, soups_folder, keyword_critic_type):
    """A server with soups (tiny random pole adapters), an avatar with memories and a stated
    preference, and a stand-in preference critic, for the page."""
    root = tmp_path_factory.mktemp("page")
    catalog = Catalog(slots=4, max_len=512)
    catalog.attach("smollm2-135m-instruct", embedded_model)
    poles = ["expertise.elementary", "expertise.phd", "style.friendly"]
    soups = SoupModels(soups_folder(embedded_model.model, root / "soups", poles), "smollm2-135m-instruct", slots=4,
                       max_len=512)  # fmt: skip
    soups.register(catalog)
    memory = AvatarMemory(root / "memory.db", embedder)
    app = create_app(catalog, KeyStore(root / "keys.db", ADMIN), lambda: embedder, memory=memory, soups=soups,
                     critic=keyword_critic_type)  # fmt: skip
    with BackgroundServer(app) as url:
        text = "I grow tomatoes and basil on my balcony every summer. I reread Middlemarch every winter."
        admin = {"Authorization": f"Bearer {ADMIN}"}
        r = httpx.post(f"{url}/v1/avatars/alice/ingest", json={"filename": "alice.txt", "content": text},
                       headers=admin, timeout=120)  # fmt: skip
        assert r.status_code == 201, r.text
        r = httpx.post(f"{url}/v1/avatars/alice/memories", json={"text": PREFERENCE}, headers=admin, timeout=120)
        assert r.status_code == 201, r.text
        for said in ("I live in Paris.", "I moved to Lisbon."):  # a fact that replaced an older one
            r = httpx.post(f"{url}/v1/avatars/alice/memories", json={"text": said, "extract": True},
                           headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120)  # fmt: skip
            assert r.status_code == 201, r.text
        yield url
    catalog.close()
    soups.close()
    memory.close()


@contextmanager
def chat_page(url: str) -> Iterator:
    """The chat page in headless Chromium, logged in with the admin key; page errors fail the test."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt install chromium, or set PERSONALM_CHROMIUM)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(url + "/")
            page.fill("#key", ADMIN)
            page.press("#key", "Tab")  # leaving the field fires its change event: the page lists the models
            page.wait_for_function("document.querySelectorAll('#model option').length > 0")
            yield page
            assert not errors, errors
        finally:
            browser.close()


def ask(page, text: str, answers: int) -> str:
    """Send `text` and wait for the `answers`-th assistant turn to finish streaming."""
    page.fill("#message", text)
    page.click("#send")
    page.wait_for_selector(f".turn.assistant[data-done='1'] >> nth={answers - 1}", timeout=120_000)
    return page.locator(".turn.assistant").nth(answers - 1).text_content()


def test_chat_page_streams_an_answer_in_chromium(small_server):
    with chat_page(small_server) as page:
        assert page.input_value("#model") == "smollm2-135m-instruct"
        assert page.is_hidden("#weights-panel") and page.is_hidden("#memory-panel")
        answer = ask(page, "Name a fruit.", 1)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "chat_page.png"), full_page=True)
    assert answer and answer.strip()
    assert (ARTIFACTS / "chat_page.png").stat().st_size > 1000


def test_chat_page_soup_sliders_and_avatar_memories_in_chromium(page_server):
    with chat_page(page_server) as page:
        page.select_option("#model", "soup")
        assert page.is_visible("#weights-panel") and page.is_hidden("#memory-panel")
        sliders = page.locator("#weights input[data-pole]")
        assert sliders.count() == 3
        page.locator("input[data-pole='style.friendly']").fill("0.8")
        assert (
            page.locator(
                "input[data-pole='style.friendly'] ~ output, label:has(input[data-pole='style.friendly']) output"
            ).first.text_content()
            == "0.8"
        )
        soup_answer = ask(page, "Name a fruit.", 1)
        page.wait_for_function("document.getElementById('status').textContent.includes('style.friendly=0.8')")
        status = page.text_content("#status")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "chat_page_soup.png"), full_page=True)

        page.select_option("#model", "avatar:alice")
        assert page.is_hidden("#weights-panel") and page.is_visible("#memory-panel")
        assert page.locator(".turn").count() == 0  # another model: a new conversation
        ask(page, "What do you grow on your balcony?", 1)
        memories = page.locator("#memories li").all_text_contents()
        page.screenshot(path=str(ARTIFACTS / "chat_page_avatar.png"), full_page=True)
        assert page.locator(".applied").count() == 0  # preferences off: nothing applied, nothing shown
        page.check("#prefs")
        page.fill("#candidates", "3")
        ask(page, "Which vegetables do you grow on your balcony?", 2)
        page.wait_for_selector(".applied li")
        applied = page.locator(".applied").last.text_content()
        page.screenshot(path=str(ARTIFACTS / "chat_page_preferences.png"), full_page=True)
        page.uncheck("#prefs")
        ask(page, "Where do you live?", 3)
        page.wait_for_selector("#memories .replaced", timeout=30_000)
        replaced = page.locator("#memories li:has(.replaced)").first.text_content()
    assert "best of 3 answers" in applied and PREFERENCE in applied, applied
    assert soup_answer is not None
    assert status.startswith("soup with expertise.elementary=0.5, expertise.phd=0, style.friendly=0.8")
    assert memories and any("tomatoes" in m for m in memories), memories
    assert "I moved to Lisbon." in replaced and 'replaced "I live in Paris."' in replaced and "learned 20" in replaced
    for name in ("chat_page_soup.png", "chat_page_avatar.png", "chat_page_preferences.png"):
        assert (ARTIFACTS / name).stat().st_size > 1000


def test_schemathesis_finds_no_server_errors(small_server):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(small_server + "/openapi.json")
    auth = {"Authorization": f"Bearer {ADMIN}"}
    failures: list[str] = []
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode, headers=auth))
            def check(case) -> None:
                response = case.call(timeout=60)
                calls[case.path] = calls.get(case.path, 0) + 1
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.path}: {response.status_code} {response.text[:200]}")

            try:
                check()
            except Unsatisfiable:
                continue  # no invalid input exists for an operation without parameters or body
    with_bodies = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/admin/keys")
    assert all(calls.get(path, 0) >= 20 for path in with_bodies), calls
    assert not failures, failures[:5]
