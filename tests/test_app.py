"""The Gradio app: request limits, an API client, and the real page in headless Chromium."""
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from chat_helpers import ScriptedModel, save_tiny_chat_model, tiny_model, tiny_tokenizer

from hf_nanochat.serve.app import EXAMPLES, LIMIT_PREFIX, ChatLimits, LimitExceeded, build_app, checked_request, history_to_messages
from hf_nanochat.data.tokenizer import render_for_completion

REPLY = "Hello from the tiny model! It streams 🙂."
CHROMIUM = "/usr/bin/chromium"
LIMITS = ChatLimits(max_message_chars=60, max_turns=3, max_total_tokens=200, max_new_tokens=64)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


# --- limits (fast) --------------------------------------------------------------------------------


def test_limits_refuse_with_messages_for_people(tokenizer):
    ok = ("Why is the sky blue?", [], 0.6, 50, 32)
    ids, sampling = checked_request(LIMITS, tokenizer, *ok)
    assert ids == render_for_completion(tokenizer, [{"role": "user", "content": "Why is the sky blue?"}])
    assert sampling == {"temperature": 0.6, "top_k": 50, "max_tokens": 32}
    with pytest.raises(LimitExceeded, match="61 characters long; the limit is 60"):
        checked_request(LIMITS, tokenizer, "x" * 61, [], 0.6, 50, 32)
    with pytest.raises(LimitExceeded, match="type a message"):
        checked_request(LIMITS, tokenizer, "   ", [], 0.6, 50, 32)
    three_turns = [{"role": r, "content": "hi"} for r in ("user", "assistant") * 3]
    with pytest.raises(LimitExceeded, match="limit of 3 turns"):
        checked_request(LIMITS, tokenizer, "hi", three_turns, 0.6, 50, 32)
    long_history = [{"role": r, "content": "The sky is blue " * 3} for r in ("user", "assistant")] * 2
    with pytest.raises(LimitExceeded, match="tokens long; the limit is 200"):
        checked_request(ChatLimits(max_total_tokens=200, max_message_chars=10_000), tokenizer, "why " * 60, long_history, 0.6, 50, 32)
    with pytest.raises(LimitExceeded, match="Temperature must be a number"):
        checked_request(LIMITS, tokenizer, "hi", [], "hot", 50, 32)


def test_sampling_settings_are_clamped(tokenizer):
    _, sampling = checked_request(LIMITS, tokenizer, "hi", [], 99.0, 10_000, 10_000)
    assert sampling == {"temperature": 2.0, "top_k": 200, "max_tokens": 64}
    _, sampling = checked_request(LIMITS, tokenizer, "hi", [], -1, -5, 0)
    assert sampling == {"temperature": 0.0, "top_k": None, "max_tokens": 1}
    # The reply budget shrinks to what the total-token limit leaves after the prompt.
    ids, sampling = checked_request(ChatLimits(max_total_tokens=20, max_new_tokens=64), tokenizer, "hi", [], 1, 1, 64)
    assert sampling["max_tokens"] == 20 - len(ids)


def test_history_from_gradio_becomes_the_conversation():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "What is 12*7+3?"}]},
        {"role": "assistant", "content": "It is 🧮 `12*7+3` → `87`."},
        {"role": "user", "content": "x" * 100},
        {"role": "assistant", "content": LIMIT_PREFIX + "Your message is too long."},
    ]
    assert history_to_messages(history, "Thanks") == [
        {"role": "user", "content": "What is 12*7+3?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "It is "},
                {"type": "python", "text": "12*7+3"},
                {"type": "python_output", "text": "87"},
                {"type": "text", "text": "."},
            ],
        },
        {"role": "user", "content": "Thanks"},  # the refused message and its notice are left out
    ]


# --- the running app (slow) -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tokenizer):
    model = tiny_model(len(tokenizer))
    script = tokenizer(REPLY, add_special_tokens=False)["input_ids"]
    # A short pause per token so the page (and the client) can watch the reply grow.
    scripted = ScriptedModel(model, script, tokenizer.convert_tokens_to_ids("<|assistant_end|>"), delay=0.04)
    demo = build_app(scripted, tokenizer, LIMITS, model_name="tiny-test")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.mark.slow
def test_gradio_client_streams_and_gets_limit_messages(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    assert client.predict("Why is the sky blue?", 0.6, 50, 64, api_name="/chat") == REPLY
    updates = list(client.submit("Why is the sky blue?", 0.6, 50, 64, api_name="/chat"))
    assert updates[-1] == REPLY and len(updates) > 5
    assert all(REPLY.startswith(u) for u in updates)  # growing prefixes: streamed
    refused = client.predict("x" * 100, 0.6, 50, 64, api_name="/chat")
    assert refused == LIMIT_PREFIX + "Your message is 100 characters long; the limit is 60. Please shorten it."
    # Out-of-range settings from an API client: Gradio's sliders refuse them with a message
    # (checked_request's clamping is the second line, tested above).
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="greater than maximum value 2.0"):
        client.predict("hi", 1e9, 5, 10, api_name="/chat")


@pytest.mark.slow
def test_browser_chat_streams_and_shows_limits(app_url, tmp_path):
    if not shutil.which("chromium") and not os.path.exists(CHROMIUM):
        message = f"Debian's chromium is not installed ({CHROMIUM}); run `apt-get install -y chromium`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page()
            page.goto(app_url, wait_until="load")
            box = page.locator("textarea").first
            box.wait_for(timeout=30_000)
            assert page.get_by_text("tiny-test").is_visible()  # model name and size shown
            assert page.get_by_text("parameters").first.is_visible()
            assert page.get_by_text(EXAMPLES[1]).first.is_visible()  # example prompts on an empty chat

            box.fill("Why is the sky blue?")
            box.press("Enter")
            bot = page.locator("[data-testid='bot']")
            seen = []
            deadline = time.time() + 30
            while time.time() < deadline and (not seen or seen[-1] != REPLY):
                if bot.count():
                    seen.append(bot.last.inner_text().strip())
                time.sleep(0.03)
            assert seen and seen[-1] == REPLY
            partial = [s for s in seen if s and s != REPLY]
            assert partial and all(REPLY.startswith(s) for s in partial)  # it grew on screen
            page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)

            box.fill("x" * 100)
            box.press("Enter")
            notice = page.get_by_text("the limit is 60")
            notice.wait_for(timeout=30_000)
            assert bot.last.inner_text().strip().startswith(LIMIT_PREFIX.strip())
            assert page.get_by_text(REPLY).is_visible()  # the conversation stays on screen
            page.screenshot(path=str(tmp_path / "limit.png"), full_page=True)

            page.get_by_label("Clear").first.click()  # the chatbot's clear-history action
            page.wait_for_function("document.querySelectorAll(\"[data-testid='bot']\").length === 0", timeout=10_000)
        finally:
            browser.close()
    assert (tmp_path / "chat.png").stat().st_size > 10_000
    assert (tmp_path / "limit.png").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["module", "cli"])
def test_command_line_launches_serve_the_app(entry, tmp_path):
    from gradio_client import Client

    save_tiny_chat_model(tmp_path)
    port = free_port()
    command = {
        "module": [sys.executable, "-m", "hf_nanochat.serve.app", "--model", str(tmp_path), "--max-message-chars", "10"],
        "cli": [sys.executable, "-m", "hf_nanochat.cli", "chat", "--web", "--model", str(tmp_path)],
    }[entry] + ["--port", str(port), "--device", "cpu"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and server.poll() is None:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # not listening yet
                time.sleep(0.5)
        else:
            pytest.fail(f"app did not start: {server.stdout.read() if server.poll() is not None else 'timeout'}")
        answer = client.predict("Hi", 0.0, 0, 8, api_name="/chat")
        assert isinstance(answer, str) and answer and not answer.startswith(LIMIT_PREFIX)
        if entry == "module":  # --max-message-chars reached the app
            assert client.predict("x" * 11, 0.0, 0, 8, api_name="/chat").startswith(LIMIT_PREFIX)
    finally:
        server.terminate()
        server.wait(timeout=30)
