"""The web chat page end to end in headless Chromium (Debian's package, driven by Playwright):
pick an adapter, type, watch the answer stream, and get what the API gives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from serve_helpers import SQL_MESSAGE, BackgroundServer, client_for, make_adapter_run

from loratune.serve.app import ServeSettings, create_app
from loratune.serve.registry import open_registry

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
]
SCREENSHOT = Path(os.environ.get("LORATUNE_SCREENSHOT", "/tmp/loratune_chat.png"))


def streamed_answer(client, model: str, messages: list[dict], max_tokens: int) -> str:
    chunks = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                                            stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.fixture(scope="module")
def server(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    runs = tmp_path_factory.mktemp("page-runs")
    sql = make_adapter_run(tiny_llama_dir, runs / "sql1", task="sql-create-context", seed=1)
    talk = make_adapter_run(tiny_llama_dir, runs / "talk1", task="messages", seed=3)
    settings = ServeSettings(api_key="page-key", max_context=300)
    app = create_app(open_registry(None, [f"sql={sql}", f"talk={talk}"]), settings)
    with BackgroundServer(app) as running:
        yield running


def test_chat_page_streams_answers(server):
    if not Path(CHROMIUM).is_file():
        why = f"{CHROMIUM} is missing and could not be installed (see .ci/install-browser)"
        if os.environ.get("CI") == "true":  # CI installs it: a missing browser there is a failure
            pytest.fail(why)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    client = client_for(server.url, "page-key")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(server.url + "/")
            # The server wants a key: the page asks for it, then lists the models.
            page.wait_for_selector("#key-label:not([hidden])")
            page.fill("#key", "page-key")
            page.dispatch_event("#key", "change")
            page.wait_for_function("document.querySelectorAll('#model option').length === 3")
            assert page.eval_on_selector_all("#model option", "els => els.map(e => e.value)") == ["base", "sql", "talk"]
            assert page.input_value("#model") == "sql"  # an adapter is chosen first
            assert "CREATE TABLE" in page.text_content("#hint")

            page.fill("#max-tokens", "40")
            page.fill("#input", SQL_MESSAGE)
            page.press("#input", "Enter")
            page.wait_for_selector(".msg.assistant[data-state=done]", timeout=30_000)
            shown = page.text_content(".msg.assistant .content")
            assert shown == streamed_answer(client, "sql", [{"role": "user", "content": SQL_MESSAGE}], 40)
            assert "40 tokens" in page.text_content(".msg.assistant .meta")
            assert page.input_value("#input") == ""

            # A chat adapter: the second question carries the first exchange.
            page.select_option("#model", "talk")
            assert page.locator(".msg").count() == 0  # switching models starts a new chat
            page.fill("#max-tokens", "40")
            page.fill("#input", "hello")
            page.click("#send")
            page.wait_for_function(
                "() => { const m = document.querySelector('.msg.assistant');"
                " return m && (m.dataset.state === 'streaming' && m.querySelector('.content').textContent.length > 0"
                " || m.dataset.state === 'done'); }")
            page.wait_for_selector(".msg.assistant[data-state=done]", timeout=30_000)
            first = page.text_content(".msg.assistant .content")
            page.fill("#input", "tell me more")
            page.click("#send")
            page.wait_for_function("document.querySelectorAll('.msg.assistant[data-state=done]').length === 2",
                                   timeout=30_000)
            second = page.locator(".msg.assistant .content").nth(1).text_content()
            history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first},
                       {"role": "user", "content": "tell me more"}]
            assert first and first == streamed_answer(client, "talk", history[:1], 40)
            assert second and second == streamed_answer(client, "talk", history, 40)
            assert second != streamed_answer(client, "talk", history[2:], 40)  # the history mattered
            # When the conversation outgrows the context, the page drops the oldest exchanges.
            long_question = "and now, " + "please say more " * 9
            page.fill("#max-tokens", "100")
            page.fill("#input", long_question)
            page.click("#send")
            page.wait_for_function("document.querySelectorAll('.msg.assistant[data-state=done]').length === 3",
                                   timeout=30_000)
            last = page.locator(".msg.assistant").nth(2)
            note = last.locator(".note").all_text_contents()
            assert len(note) == 1 and note[0].startswith("note: the conversation no longer fits the model's context")
            assert "100 tokens" in last.locator(".meta").text_content()
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
