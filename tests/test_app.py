"""The Gradio app: request limits, an API client, and the real page in headless Chromium."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from chat_helpers import ScriptedModel, save_tiny_chat_model, tiny_model, tiny_tokenizer

from hf_nanochat.serve.app import (
    EXAMPLES,
    LIMIT_PREFIX,
    ChatLimits,
    LimitExceeded,
    build_app,
    checked_request,
    history_to_messages,
    resolved_limits,
    serve,
)
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


class NoTokenizing:
    """A tokenizer that fails the test if the request gets as far as tokenizing."""

    def __getattr__(self, name):
        raise AssertionError(f"tokenizer.{name} used: the request was not refused before tokenizing")


def test_history_is_bounded_before_it_is_tokenized():
    limits = ChatLimits(max_history_chars=10_000)
    huge = [{"role": r, "content": "x" * 2_000_000} for r in ("user", "assistant") * 5]  # 20 MB
    t0 = time.perf_counter()
    with pytest.raises(LimitExceeded, match="20,000,000 characters long; the limit is 10,000"):
        checked_request(limits, NoTokenizing(), "hi", huge, 0.6, 50, 32)
    assert time.perf_counter() - t0 < 1.0
    many = [{"role": "assistant", "content": ""}] * 100_000  # cheap in characters, not in entries
    with pytest.raises(LimitExceeded, match="100,000 messages; the limit is 20 turns"):
        checked_request(limits, NoTokenizing(), "hi", many, 0.6, 50, 32)
    with pytest.raises(LimitExceeded, match="Cannot read this conversation"):
        checked_request(limits, NoTokenizing(), "hi", ["not a message"], 0.6, 50, 32)


def test_derived_bounds_never_refuse_a_chat_that_fits(tokenizer):
    limits = resolved_limits(ChatLimits(max_total_tokens=200), tokenizer, context=2048)
    longest = max(map(len, tokenizer.get_vocab()))
    assert limits.max_history_chars == 200 * longest
    assert limits.max_request_bytes == 256 * 1024 + 12 * (200 * longest + limits.max_message_chars)
    assert resolved_limits(ChatLimits(max_total_tokens=4096), tokenizer, context=1024).max_total_tokens == 1024
    # Past the character bound the token bound is exceeded too: the early refusal changes nothing.
    text = "The sky is blue " * (limits.max_history_chars // 16 + 1)
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) > limits.max_total_tokens


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
    serve(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
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


# --- a served app under hostile input (slow) ------------------------------------------------------


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app as `python -m hf_nanochat.serve.app` runs it, in its own process (so its RSS is its own)."""
    import httpx

    folder = tmp_path_factory.mktemp("served_model")
    save_tiny_chat_model(folder)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "hf_nanochat.serve.app", "--model", str(folder), "--port", str(port), "--device", "cpu",
         "--concurrency", "1", "--max-queue", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert server.poll() is None, server.stdout.read()[-3000:]
            assert time.time() < deadline, "app did not start"
            try:
                config = httpx.get(f"{url}/config", timeout=5).json()
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield url, server, config
    finally:
        server.terminate()
        server.wait(timeout=30)


def _ui_events_taking_the_chatbot(config) -> list[tuple[int, bool]]:
    """(fn_index, queued) of the UI events whose inputs include the client-side chat history."""
    chatbots = {c["id"] for c in config["components"] if c.get("type") == "chatbot"}
    return [(d["id"], bool(d.get("queue"))) for d in config["dependencies"] if chatbots & set(d["inputs"])]


@pytest.mark.slow
def test_20_mb_history_through_the_ui_routes_is_refused_fast_with_flat_memory(served):
    import httpx

    url, server, config = served
    events = _ui_events_taking_the_chatbot(config)
    assert events  # the browser's history-sync, append and option events
    history = [{"role": r, "content": "The sky is blue because " * 45_000} for r in ("user", "assistant") * 10]
    body = json.dumps({"data": [history], "fn_index": events[0][0], "session_hash": "attacker", "event_data": None}).encode()
    assert len(body) > 20_000_000
    with httpx.Client(timeout=60) as client:
        client.get(f"{url}/config")  # warm
        before = _rss(server.pid)
        times = []
        for fn_index, queued in events[:3] * 2:
            route = "/gradio_api/queue/join" if queued else "/gradio_api/run/predict"
            payload = body.replace(f'"fn_index": {events[0][0]}'.encode(), f'"fn_index": {fn_index}'.encode())
            t0 = time.perf_counter()
            response = client.post(url + route, content=payload, headers={"content-type": "application/json"})
            times.append(time.perf_counter() - t0)
            assert response.status_code == 413, (route, response.status_code, response.text[:300])
            assert "too long" in response.json()["error"]
        after = _rss(server.pid)
    assert max(times) < 3.0, times  # was 23-27 s of server CPU per request
    assert after - before < 30 * 2**20, (before, after)  # was +5.3 GB over two requests
    from gradio_client import Client

    answer = Client(url + "/", verbose=False).predict("Hi", 0.0, 0, 4, api_name="/chat")  # still serving
    assert isinstance(answer, str) and answer and not answer.startswith(LIMIT_PREFIX)


@pytest.mark.slow
def test_flood_of_requests_gets_clean_refusals_and_the_server_stays_up(served):
    import asyncio

    import httpx

    url, server, config = served
    chat = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "chat")

    async def flood():
        async with httpx.AsyncClient(timeout=60) as client:
            async def join(i):
                body = {"data": ["Why is the sky blue?", None, 0.6, 50, 64], "fn_index": chat, "session_hash": f"flood{i}"}
                return (await client.post(f"{url}/gradio_api/queue/join", json=body)).status_code
            return await asyncio.gather(*(join(i) for i in range(150)))

    codes = asyncio.run(flood())
    assert set(codes) <= {200, 503}, sorted(set(codes))
    assert codes.count(200) >= 1 and codes.count(503) >= 100  # the queue holds 4 waiting + 1 running
    assert server.poll() is None
    from gradio_client import Client

    deadline = time.time() + 120
    while True:  # once the queued ones have drained, a new visitor is served
        try:
            answer = Client(url + "/", verbose=False).predict("Hi", 0.0, 0, 4, api_name="/chat")
            break
        except Exception:
            assert time.time() < deadline
            time.sleep(1)
    assert isinstance(answer, str) and answer
