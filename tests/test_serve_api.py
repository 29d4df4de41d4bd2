"""The server through the official `openai` client: a real uvicorn server on 127.0.0.1, a tiny
Llama with two LoRA adapters (and a tiny T5 with one), outputs checked against offline generation."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
from serve_helpers import (
    FIN_MESSAGE,
    SQL_MESSAGE,
    BackgroundServer,
    agrees_up_to_bf16_ties,
    client_for,
    make_adapter_run,
    offline_answers,
    sequential_logits,
    training_prompt,
)

from loratune.models.load import load_model
from loratune.serve.app import ServeSettings, create_app
from loratune.serve.registry import open_registry


@pytest.fixture(scope="module")
def llama(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    runs = tmp_path_factory.mktemp("serve-runs")
    sql = make_adapter_run(tiny_llama_dir, runs / "sql1", task="sql-create-context", seed=1, max_source_tokens=256)
    fin = make_adapter_run(tiny_llama_dir, runs / "fin1", task="finance-alpaca", seed=2)
    registry = open_registry(None, [f"sql={sql}", f"fin={fin}"])
    app = create_app(registry, ServeSettings(batch_wait_s=0.05, adapter_roots=(runs,)))
    with BackgroundServer(app) as server:
        yield SimpleNamespace(url=server.url, app=app, base=tiny_llama_dir, runs={"sql": sql, "fin": fin},
                              client=client_for(server.url))


def chat(client: openai.OpenAI, model: str, message: str, max_tokens: int = 24, **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": message}],
                                          max_tokens=max_tokens, temperature=0, **kwargs)


def test_models_list(llama):
    models = llama.client.models.list().data
    assert [m.id for m in models] == ["base", "sql", "fin"]
    cards = {m.id: m for m in models}
    assert cards["sql"].task == "sql-create-context" and cards["sql"].task_family == "sql"
    assert cards["fin"].task == "finance-alpaca" and cards["fin"].multi_turn is False
    assert cards["base"].multi_turn is True  # the tiny Llama has a chat template


def test_chat_equals_offline_generation_per_adapter(llama):
    sql = chat(llama.client, "sql", SQL_MESSAGE)
    fin = chat(llama.client, "fin", FIN_MESSAGE)
    base = chat(llama.client, "base", FIN_MESSAGE)

    sql_prompt = training_prompt(llama.base, "sql-create-context", SQL_MESSAGE, max_source_tokens=256)
    fin_prompt = training_prompt(llama.base, "finance-alpaca", FIN_MESSAGE)
    assert "Question: How many singers are older than 30?" in sql_prompt and "<|im_start|>user" in sql_prompt
    base_prompt = load_model(str(llama.base)).tokenizer.apply_chat_template(
        [{"role": "user", "content": FIN_MESSAGE}], tokenize=False, add_generation_prompt=True)
    assert sql.choices[0].message.content == offline_answers(llama.base, llama.runs["sql"], [sql_prompt], 24, "sql")[0]
    assert fin.choices[0].message.content == offline_answers(llama.base, llama.runs["fin"], [fin_prompt], 24)[0]
    assert base.choices[0].message.content == offline_answers(llama.base, None, [base_prompt], 24)[0]
    # The adapters really change the model: three different answers to comparable prompts.
    raw = [chat(llama.client, m, FIN_MESSAGE).choices[0].message.content for m in ("base", "sql", "fin")]
    assert len(set(raw)) == 3
    assert fin.usage.prompt_tokens == len(load_model(str(llama.base)).tokenizer(fin_prompt)["input_ids"])
    reason, produced = fin.choices[0].finish_reason, fin.usage.completion_tokens
    assert (reason, produced == 24) in (("length", True), ("stop", False))


def test_completions_equal_offline_generation(llama):
    prompt = "The bond market"
    for model, run in (("fin", llama.runs["fin"]), ("base", None)):
        result = llama.client.completions.create(model=model, prompt=prompt, max_tokens=20, temperature=0)
        assert result.object == "text_completion"
        assert result.choices[0].text.strip() == offline_answers(llama.base, run, [prompt], 20)[0]
        assert result.usage.completion_tokens <= 20 and result.usage.prompt_tokens == len(prompt)  # a token per byte


def test_streaming_chat_and_completion(llama):
    whole = chat(llama.client, "fin", FIN_MESSAGE, max_tokens=30)
    chunks = list(chat(llama.client, "fin", FIN_MESSAGE, max_tokens=30, stream=True,
                       stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)

    def complete(**kwargs):
        return llama.client.completions.create(model="sql", prompt="SELECT", max_tokens=16, temperature=0, **kwargs)

    whole = complete()
    streamed = list(complete(stream=True))
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    assert streamed[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_stop_sequence_cuts_the_answer(llama):
    def complete(**kwargs):
        return llama.client.completions.create(model="fin", prompt="The bond market", max_tokens=20, temperature=0,
                                               **kwargs)

    full = complete().choices[0].text
    # A character that first appears after the start, so the cut is not empty.
    k = next(i for i in range(1, len(full)) if full.find(full[i]) == i and full[i] != "\ufffd")
    cut = complete(stop=["#never#", full[k]])
    assert cut.choices[0].text == full[:k] and cut.choices[0].finish_reason == "stop"
    streamed = list(complete(stop=full[k], stream=True))
    assert "".join(c.choices[0].text for c in streamed) == full[:k]
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_truncated_prompt_is_reported(llama):
    long_message = "How many singers are there? " * 10 + "CREATE TABLE singer (name TEXT, age INTEGER)"
    result = chat(llama.client, "sql", long_message)
    assert any("truncated to 256 tokens" in w for w in result.warnings)
    expected_prompt = training_prompt(llama.base, "sql-create-context", long_message, max_source_tokens=256)
    assert result.choices[0].message.content == offline_answers(
        llama.base, llama.runs["sql"], [expected_prompt], 24, "sql")[0]
    assert not getattr(chat(llama.client, "sql", SQL_MESSAGE), "warnings", None)


def test_concurrent_requests_equal_sequential_ones(llama):
    """What the server promises about batching (docs/serving.md, "Same answers?"): in fp32 a
    request's greedy answer is the same alone or among others; in bf16 it is the same up to the first
    near-tie, where bf16 rounding in a differently shaped batch may pick the other token."""
    registry = llama.app.state.registry
    requests = [(model, f"{FIN_MESSAGE} #{i}" if model != "sql" else f"SELECT -- {i}")
                for i, model in enumerate(["sql", "fin", "sql", "fin", "base", "sql", "fin", "fin"])]

    def complete(request: tuple[str, str]) -> str:
        model, prompt = request
        return llama.client.completions.create(model=model, prompt=prompt, max_tokens=24,
                                               temperature=0).choices[0].text

    sequential = [complete(r) for r in requests]
    scheduler = llama.app.state.scheduler
    before = scheduler.batches
    with ThreadPoolExecutor(len(requests)) as pool:
        concurrent = list(pool.map(complete, requests))
    # Requests for different adapters shared forward passes: fewer prefills than requests.
    assert scheduler.batches - before < len(requests)
    if not registry.bf16:
        assert concurrent == sequential
        return
    tokenizer = registry.tokenizer

    def ids(text: str) -> list[int]:  # the tiny Llama's tokens are bytes: text gives them back
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    for (model, prompt), alone, together in zip(requests, sequential, concurrent, strict=True):
        prompt_ids = tokenizer(prompt)["input_ids"]
        logits = sequential_logits(registry, model, prompt_ids, ids(alone))
        assert agrees_up_to_bf16_ties(ids(together), ids(alone), logits, tokenizer.eos_token_id), (model, prompt)


def test_health_answers_while_the_worker_generates(llama, monkeypatch):
    engine = llama.app.state.scheduler.engine
    admit, release, entered = engine.admit, threading.Event(), threading.Event()

    def slow_prefill(jobs):  # a prefill that takes as long as the test wants
        entered.set()
        release.wait(30)
        admit(jobs)

    monkeypatch.setattr(engine, "admit", slow_prefill)
    answer: dict = {}
    waiter = threading.Thread(target=lambda: answer.update(r=chat(llama.client, "fin", FIN_MESSAGE)))
    waiter.start()
    assert entered.wait(10)
    for _ in range(3):
        started = time.perf_counter()
        health = httpx.get(f"{llama.url}/health", timeout=5)
        assert time.perf_counter() - started < 1.0
        assert health.json() == {"status": "ok", "queued": 0, "running": 1}
    assert httpx.get(f"{llama.url}/v1/models", timeout=5).status_code == 200
    release.set()
    waiter.join(30)
    assert answer["r"].choices[0].message.content is not None
    monkeypatch.undo()

    # And during a real generation: /health stays quick while tokens stream.
    latencies = []
    for index, _ in enumerate(chat(llama.client, "fin", FIN_MESSAGE, max_tokens=300, stream=True)):
        if index < 5:
            started = time.perf_counter()
            assert httpx.get(f"{llama.url}/health", timeout=5).status_code == 200
            latencies.append(time.perf_counter() - started)
    assert max(latencies) < 1.0


def test_unload_then_load_again(llama):
    before = chat(llama.client, "fin", FIN_MESSAGE).choices[0].message.content
    assert httpx.delete(f"{llama.url}/v1/adapters/fin").json() == {"id": "fin", "object": "model", "deleted": True}
    assert [m.id for m in llama.client.models.list().data] == ["base", "sql"]
    with pytest.raises(openai.NotFoundError, match="'fin' does not exist"):
        chat(llama.client, "fin", FIN_MESSAGE)
    response = httpx.post(f"{llama.url}/v1/adapters", json={"name": "fin", "path": str(llama.runs["fin"])})
    assert response.status_code == 201 and response.json()["task"] == "finance-alpaca"
    assert chat(llama.client, "fin", FIN_MESSAGE).choices[0].message.content == before
    # Unloading every adapter leaves the plain base model, which still serves and takes adapters.
    base_answer = chat(llama.client, "base", FIN_MESSAGE).choices[0].message.content
    for name in ("sql", "fin"):
        assert httpx.delete(f"{llama.url}/v1/adapters/{name}").status_code == 200
    assert chat(llama.client, "base", FIN_MESSAGE).choices[0].message.content == base_answer
    for name in ("sql", "fin"):
        loaded = httpx.post(f"{llama.url}/v1/adapters", json={"name": name, "path": str(llama.runs[name])})
        assert loaded.status_code == 201
    assert chat(llama.client, "fin", FIN_MESSAGE).choices[0].message.content == before


def test_seq2seq_model_serves_chat_and_completions(tiny_t5_dir: Path, tmp_path: Path):
    run = make_adapter_run(tiny_t5_dir, tmp_path / "qa1", task="finance-alpaca", seed=3)
    app = create_app(open_registry(str(tiny_t5_dir), [f"qa={run}"]))
    with BackgroundServer(app) as server:
        client = client_for(server.url)
        answer = chat(client, "qa", FIN_MESSAGE, max_tokens=12).choices[0].message.content
        prompt = training_prompt(tiny_t5_dir, "finance-alpaca", FIN_MESSAGE)
        assert prompt == "What is a bond?\nAnswer: "  # no chat template on T5
        assert answer == offline_answers(tiny_t5_dir, run, [prompt], 12)[0]
        assert answer  # the adapter makes the tiny T5 say something
        text = client.completions.create(model="base", prompt="translate: hi", max_tokens=12, temperature=0)
        assert text.choices[0].text.strip() == offline_answers(tiny_t5_dir, None, ["translate: hi"], 12)[0]
        streamed = chat(client, "qa", FIN_MESSAGE, max_tokens=12, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == answer
