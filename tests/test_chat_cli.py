"""`hf-nanochat chat`: one-shot -p and an interactive session fed through stdin."""
import io
import subprocess
import sys

import pytest
from chat_helpers import save_tiny_chat_model

from hf_nanochat.cli import main
from hf_nanochat.serve.engine import Engine, parse_rendered_reply

GREEDY = ["--temperature", "0", "--max-tokens", "12", "--device", "cpu"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat_model")
    save_tiny_chat_model(folder)
    return folder


@pytest.fixture(scope="module")
def engine(model_dir):
    from hf_nanochat.serve.engine import load_chat_model

    return Engine(*load_chat_model(str(model_dir), device="cpu"))


def expected_reply(engine, messages):
    return "".join(engine.chat(messages, temperature=0, max_tokens=12))


def test_one_shot_prompt_from_the_console_script(model_dir, engine):
    result = subprocess.run(
        [sys.executable, "-m", "hf_nanochat.cli", "chat", "--model", str(model_dir), "-p", "Why is the sky blue?", *GREEDY],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    want = expected_reply(engine, [{"role": "user", "content": "Why is the sky blue?"}])
    assert want and result.stdout == want + "\n"


def test_interactive_session_keeps_history_clears_and_exits(model_dir, engine, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\nHow are you?\n/clear\nHow are you?\n/exit\nnever read\n"))
    assert main(["chat", "--model", str(model_dir), *GREEDY]) == 0
    out = capsys.readouterr().out
    replies = [part.split("\n")[0] for part in out.split("Assistant: ")[1:]]
    assert len(replies) == 3 and "(conversation cleared)" in out
    first = expected_reply(engine, [{"role": "user", "content": "Hello"}])
    second = expected_reply(
        engine,
        [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": parse_rendered_reply(first)},
            {"role": "user", "content": "How are you?"},
        ],
    )
    fresh = expected_reply(engine, [{"role": "user", "content": "How are you?"}])
    assert replies == [first, second, fresh]
    assert second != fresh  # the history reached the model before /clear, not after


def test_end_of_input_exits_cleanly_and_unknown_commands_help(model_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("/help\n"))
    assert main(["chat", "--model", str(model_dir), *GREEDY]) == 0
    assert "unknown command /help; commands: /clear" in capsys.readouterr().out


def test_over_long_conversation_is_an_error_message_not_a_crash(model_dir, monkeypatch, capsys):
    long = "blue sky " * 200  # > the tiny model's 256-token context
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{long}\nHello\n/exit\n"))
    assert main(["chat", "--model", str(model_dir), *GREEDY]) == 0
    captured = capsys.readouterr()
    assert "error: prompt has" in captured.err and "context is 256" in captured.err
    assert captured.out.count("Assistant: ") == 2
    assert main(["chat", "--model", str(model_dir), "-p", long, *GREEDY]) == 1


class SlowEngine:
    """Streams a long reply slowly; warns mid-reply like a dependency's FutureWarning would."""

    def __init__(self, words=200, delay=0.02):
        self.words, self.delay = words, delay

    def chat(self, messages, **sampling):
        import time
        import warnings

        for i in range(self.words):
            if i == 2:
                warnings.warn("`past_key_values` is deprecated", FutureWarning)
            time.sleep(self.delay)
            yield f"w{i} "


def test_ctrl_c_stops_the_reply_and_a_second_quits(monkeypatch):
    import os
    import signal
    import threading

    from hf_nanochat.serve import chat

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", out)
    prompts = iter(["Hello"])

    def read_line(prompt):
        print(prompt, end="")
        try:
            return next(prompts)
        except StopIteration:
            raise KeyboardInterrupt from None  # Ctrl-C at the prompt

    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))  # Ctrl-C during the reply
    timer.start()
    try:
        assert chat.interactive(SlowEngine(), {}, read_line=read_line) == 0
    finally:
        timer.cancel()
    text = out.getvalue()
    assert "(reply stopped; Ctrl-C again at the prompt quits)" in text and "Traceback" not in text
    shown = text.split("Assistant: ")[1].split("\n")[0]
    assert shown.startswith("w0 w1 ") and "w199" not in shown  # stopped early, what was shown kept
    assert text.count("User: ") == 2  # back at the prompt after the stopped reply, then quit


def test_dependency_warnings_wait_until_the_reply_is_done(monkeypatch):
    from hf_nanochat.serve import chat

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", out)
    monkeypatch.setattr(chat, "_SHOWN", set())
    assert chat.reply(SlowEngine(words=5, delay=0), [{"role": "user", "content": "hi"}], {}) == "w0 w1 w2 w3 w4 "
    assert chat.reply(SlowEngine(words=5, delay=0), [{"role": "user", "content": "hi"}], {}) == "w0 w1 w2 w3 w4 "
    assert out.getvalue() == "w0 w1 w2 w3 w4 \nFutureWarning: `past_key_values` is deprecated\nw0 w1 w2 w3 w4 \n"  # once


@pytest.mark.slow
def test_ctrl_c_at_the_prompt_of_the_real_command_exits_without_traceback(model_dir):
    import os
    import select
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "hf_nanochat.cli", "chat", "--model", str(model_dir), *GREEDY],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen, deadline = b"", time.time() + 240
    while b"User: " not in seen:
        assert time.time() < deadline and proc.poll() is None, seen + proc.stderr.read()
        if select.select([proc.stdout], [], [], 0.5)[0]:
            seen += os.read(proc.stdout.fileno(), 4096)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"Traceback" not in err, err.decode()[-2000:]
