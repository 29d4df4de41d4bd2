"""`loratune chat RUN_DIR | --base MODEL`: talk to an adapter (or a base model) in the terminal.

The answer streams token by token. Chat models (the base model with a chat template, adapters
trained on chat conversations) see the conversation so far; task adapters (SQL, finance QA)
see each message on its own, rendered into their training prompt, exactly as the server does.
`/reset` forgets the conversation, `/exit` (or Ctrl-D) quits, Ctrl-C stops an answer.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from loratune.errors import RequestError, ServeError
from loratune.inference.answers import present_answer
from loratune.inference.jobs import Job, JobEvent, Sampling
from loratune.serve.prompts import build_chat_prompt, check_length
from loratune.serve.registry import BASE_NAME, open_registry

ADAPTER_NAME = "chat"

HELP = "commands: /reset clears the conversation, /exit quits (Ctrl-D too), Ctrl-C stops an answer"


def chat_loop(
    run_dir: str | None,
    base: str | None,
    *,
    input_fn: Callable[[str], str] = input,
    out: TextIO | None = None,
    max_tokens: int = 256,
    temperature: float = 0.0,
) -> None:
    """Run the interactive chat until /exit or end of input.

    `input_fn` and `out` exist for tests; `temperature` 0 is greedy, as evaluation generates.
    """
    out = out or sys.stdout
    if not run_dir and not base:
        raise ServeError("pass a run directory (loratune chat runs/NAME) or a base model (--base MODEL)")
    registry = open_registry(base, [f"{ADAPTER_NAME}={run_dir}"] if run_dir else [])
    name = ADAPTER_NAME if run_dir else BASE_NAME
    profile = registry.profile(name)
    what = run_dir or registry.base_source
    if run_dir and profile.task:
        what = f"adapter {run_dir} (task {profile.task.name})"
    mode = "the conversation is remembered" if profile.multi_turn else "each message is answered on its own"
    print(f"loratune chat: {what} on {registry.base_source}; {mode}.\n{HELP}", file=out, flush=True)

    history: list[dict[str, str]] = []
    while True:
        try:
            line = input_fn("you> ")
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return
        message = line.strip()
        if not message:
            continue
        if message in ("/exit", "/quit"):
            return
        if message == "/reset":
            history.clear()
            print("(conversation cleared)", file=out, flush=True)
            continue
        if message.startswith("/"):
            print(f"unknown command {message.split()[0]}; {HELP}", file=out, flush=True)
            continue
        answer = _answer(registry, name, history, message, out, max_tokens=max_tokens, temperature=temperature)
        if answer is not None and profile.multi_turn:
            history += [{"role": "user", "content": message}, {"role": "assistant", "content": answer}]


def _answer(registry, name: str, history: list[dict[str, str]], message: str, out: TextIO, *,
            max_tokens: int, temperature: float) -> str | None:
    """Stream one answer to `out`; returns it (None when the prompt cannot be answered)."""
    profile = registry.profile(name)
    turns = list(history)
    while True:
        try:
            messages = turns + [{"role": "user", "content": message}]
            built = build_chat_prompt(profile, registry.tokenizer, registry.model_type, messages)
            budget = check_length(len(built.ids), None, model_type=registry.model_type, limit=registry.context,
                                  default_max_tokens=max_tokens)
            break
        except RequestError as exc:
            if exc.code == "context_length_exceeded" and turns:
                turns = turns[2:]  # forget the oldest exchange and try again
                continue
            print(f"error: {exc.message}", file=out, flush=True)
            return None
    if len(turns) < len(history):
        print(f"(the conversation is over the model's context; dropped {(len(history) - len(turns)) // 2} "
              "oldest exchanges)", file=out, flush=True)
    for warning in built.warnings:
        print(f"(note: {warning})", file=out, flush=True)

    def sink(event: JobEvent) -> None:
        if event.type == "delta":
            out.write(event.text)
            out.flush()
        elif event.type == "error":
            out.write(f"\nerror: {event.text}")

    job = Job(name, built.ids, max_tokens=budget, sampling=Sampling(temperature=temperature), strip=True, sink=sink)
    out.write("assistant> ")
    out.flush()
    try:
        registry.run_jobs([job])
    except KeyboardInterrupt:
        out.write(" (stopped)")
    out.write("\n")
    out.flush()
    if job.error:
        return None
    return present_answer(job.text, built.task_family)
