"""The web chat page in headless Chromium, and schemathesis against the served OpenAPI document."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from personalm.serve.app import create_app
from personalm.serve.auth import KeyStore
from personalm.serve.background import BackgroundServer
from personalm.serve.catalog import Catalog

pytestmark = pytest.mark.slow
ADMIN = "admin-secret"
CHROMIUM = os.environ.get("PERSONALM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[1] / ".artifacts"


@pytest.fixture(scope="module")
def small_server(tmp_path_factory, embedded_model, embedder):
    """A server whose answers stay short (max_len 96), so fuzzed requests finish quickly."""
    catalog = Catalog(slots=4, max_len=96)
    catalog.attach("smollm2-135m-instruct", embedded_model)
    keys = KeyStore(tmp_path_factory.mktemp("serve") / "keys.db", ADMIN)
    with BackgroundServer(create_app(catalog, keys, embedder_factory=lambda: embedder)) as url:
        yield url
    catalog.close()


def test_chat_page_streams_an_answer_in_chromium(small_server):
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt install chromium, or set PERSONALM_CHROMIUM)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(small_server + "/")
            page.fill("#key", ADMIN)
            page.dispatch_event("#key", "change")
            page.wait_for_function("document.querySelectorAll('#model option').length > 0")
            assert page.input_value("#model") == "smollm2-135m-instruct"
            page.fill("#message", "Name a fruit.")
            page.click("#send")
            page.wait_for_selector(".turn.assistant[data-done='1']", timeout=60_000)
            answer = page.text_content(".turn.assistant")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "chat_page.png"), full_page=True)
        finally:
            browser.close()
    assert answer and answer.strip()
    assert not errors, errors
    assert (ARTIFACTS / "chat_page.png").stat().st_size > 1000


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
