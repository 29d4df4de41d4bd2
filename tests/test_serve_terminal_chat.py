"""`loratune chat`: scripted terminal sessions on the tiny Llama, answers checked against offline
generation, with history for chat models, /reset and /exit."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from serve_helpers import make_adapter_run, offline_answers, training_prompt

from loratune.cli import main as cli_main
from loratune.errors import ServeError
from loratune.models.load import load_model
from loratune.serve.terminal_chat import chat_loop


def scripted(lines: list[str]):
    """An `input` replacement that answers with `lines`, then Ctrl-D; `remaining` shows what was unread."""
    queue = list(lines)

    def read(prompt: str) -> str:
        if not queue:
            raise EOFError
        return queue.pop(0)

    read.remaining = queue  # type: ignore[attr-defined]
    return read


class Terminal(io.StringIO):
    """Captures the chat's output and splits out each streamed answer (they may hold newlines)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)

    def answers(self) -> list[str]:
        found, current = [], None
        for text in self.writes:
            if text == "assistant> ":
                current = []
            elif current is not None and text == "\n":
                found.append("".join(current))
                current = None
            elif current is not None:
                current.append(text)
        return found


def test_base_chat_keeps_history_until_reset(tiny_llama_dir: Path):
    read = scripted(["hello", "and then?", "/reset", "  hello  ", "/bogus", "/exit", "never read"])
    out = Terminal()
    chat_loop(None, str(tiny_llama_dir), input_fn=read, out=out, max_tokens=20)
    text = out.getvalue()
    first, second, third = out.answers()
    tokenizer = load_model(str(tiny_llama_dir)).tokenizer

    def template(messages: list[dict]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    hello = {"role": "user", "content": "hello"}
    assert first == offline_answers(tiny_llama_dir, None, [template([hello])], 20)[0]
    followup = [hello, {"role": "assistant", "content": first}, {"role": "user", "content": "and then?"}]
    assert second == offline_answers(tiny_llama_dir, None, [template(followup)], 20)[0]
    assert third == first  # /reset forgot the conversation
    assert "the conversation is remembered" in text and "(conversation cleared)" in text
    assert "unknown command /bogus" in text
    assert read.remaining == ["never read"]  # /exit stopped the loop


def test_adapter_chat_answers_each_message_on_its_own(tiny_llama_dir: Path, tmp_path: Path):
    run = make_adapter_run(tiny_llama_dir, tmp_path / "fin1", task="finance-alpaca", seed=2)
    out = Terminal()
    chat_loop(str(run), None, input_fn=scripted(["What is a bond?", "What is a stock?"]), out=out, max_tokens=16)
    text = out.getvalue()
    assert "task finance-alpaca" in text and "each message is answered on its own" in text
    prompts = [training_prompt(tiny_llama_dir, "finance-alpaca", q) for q in ("What is a bond?", "What is a stock?")]
    assert out.answers() == offline_answers(tiny_llama_dir, run, prompts, 16)
    assert text.endswith("\n")  # Ctrl-D ends the session cleanly


def test_chat_needs_a_run_or_a_base(capsys):
    with pytest.raises(ServeError, match="pass a run directory"):
        chat_loop(None, None)
    assert cli_main(["chat"]) == 1
    assert "pass a run directory" in capsys.readouterr().err
