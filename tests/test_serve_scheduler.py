"""The batching engine: streamed text pieces, stop strings and limits per job, mixed-adapter
batches equal to one-at-a-time generation, and the queue's grouping and bounds."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from serve_helpers import agrees_up_to_bf16_ties, make_adapter_run, sequential_logits

from loratune.errors import QueueFull
from loratune.inference.encoding import prompt_ids
from loratune.inference.engine import DecodeEngine
from loratune.inference.jobs import Job, JobEvent, Sampling, choose_tokens
from loratune.models.load import load_model
from loratune.serve.registry import open_registry
from loratune.serve.scheduler import Scheduler


@pytest.fixture(scope="module")
def llama_tokenizer(tiny_llama_dir: Path):
    return load_model(str(tiny_llama_dir)).tokenizer


def feed(job: Job, tokenizer, text: str, *, eos: bool = True) -> list[JobEvent]:
    events: list[JobEvent] = []
    job.sink = events.append
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])
    for token in ids:
        job.push_token(token, tokenizer, {tokenizer.eos_token_id})
    return events


def deltas(events: list[JobEvent]) -> list[str]:
    return [e.text for e in events if e.type == "delta"]


def test_stream_pieces_join_to_the_stripped_answer(llama_tokenizer):
    text = "  Grüße, 世界! SELECT 1  \n"
    job = Job("base", [1], max_tokens=100, strip=True)
    events = feed(job, llama_tokenizer, text)
    pieces = deltas(events)
    assert "".join(pieces) == text.strip() == job.text
    assert len(pieces) > 5 and not any("\ufffd" in p for p in pieces)  # half characters are held back
    assert events[-1].type == "done" and events[-1].finish_reason == "stop"
    assert job.completion_tokens == len(llama_tokenizer(text, add_special_tokens=False)["input_ids"]) + 1


def test_stop_string_across_tokens_is_never_sent(llama_tokenizer):
    job = Job("base", [1], max_tokens=100, stop=["STOP", "never"])
    events = feed(job, llama_tokenizer, "abc STOP def")
    assert "".join(deltas(events)) == "abc " and job.finish_reason == "stop"
    assert not any("S" in piece for piece in deltas(events))
    assert job.completion_tokens == len("abc STOP")  # one byte per token; nothing after the stop


def test_max_tokens_and_cancel(llama_tokenizer):
    job = Job("base", [1], max_tokens=3)
    events = feed(job, llama_tokenizer, "abcdef", eos=False)
    assert "".join(deltas(events)) == "abc" and job.finish_reason == "length" and job.completion_tokens == 3
    cancelled = Job("base", [1], max_tokens=10)
    cancelled.cancel()
    assert deltas(feed(cancelled, llama_tokenizer, "abc")) == [] and cancelled.finish_reason == "cancelled"


@pytest.fixture(scope="module")
def adapters(tiny_llama_dir: Path, tiny_t5_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("batching-runs")
    return {
        family: (base, [make_adapter_run(base, root / f"{family}{i}", task=None, seed=i) for i in (1, 2)])
        for family, base in (("llama", tiny_llama_dir), ("t5", tiny_t5_dir))
    }


def _jobs(registry, rows: list[tuple[str, str, int]]) -> list[Job]:
    return [Job(name, prompt_ids(registry.tokenizer, registry.model_type, prompt), max_tokens=n)
            for name, prompt, n in rows]


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_mixed_adapter_batch_equals_one_at_a_time(adapters, family):
    base_dir, (run_a, run_b) = adapters[family]
    registry = open_registry(str(base_dir), [f"a={run_a}", f"b={run_b}"])
    assert registry.mixed_batching()
    rows = [("a", "hello there", 12), ("b", "what is the capital of France?", 8), ("base", "x", 12),
            ("b", "hello there", 12), ("a", "what is the capital of France?", 5)]
    alone = []
    for row in rows:
        (job,) = _jobs(registry, [row])
        registry.run_jobs([job])
        alone.append(job)
    together = _jobs(registry, rows)
    registry.run_jobs(together)
    assert_same_answers(registry, together, [j.tokens for j in alone])
    if not registry.bf16:
        assert [j.finish_reason for j in together] == [j.finish_reason for j in alone]
        assert [j.completion_tokens for j in together] == [j.completion_tokens for j in alone]
    # Each adapter changes the answer: the same prompt through a, b and no adapter.
    assert len({tuple(alone[0].tokens), tuple(alone[3].tokens)}) == 2
    assert all(job.adapter in ("a", "b", "base") for job in together)  # names restored after the batch


def test_requests_join_and_leave_a_running_batch(adapters):
    """Continuous batching: a request that arrives mid-generation joins the running rows at the next
    step, a short one leaves as soon as it is done, and nobody's answer changes."""
    base_dir, (run_a, run_b) = adapters["llama"]
    registry = open_registry(str(base_dir), [f"a={run_a}", f"b={run_b}"])
    rows = [("a", "hello there", 24), ("b", "what is the capital of France?", 4), ("base", "x", 10)]
    alone = []
    for row in rows:
        (job,) = _jobs(registry, [row])
        registry.run_jobs([job])
        alone.append(job.tokens)
    batch = DecodeEngine(registry)
    first = _jobs(registry, rows[:1])
    batch.admit(first)
    for _ in range(5):
        batch.step()
    late = _jobs(registry, rows[1:])
    batch.admit(late)  # joins a row that is 6 tokens in, with a longer prompt
    sizes = [batch.running]
    while batch.running:
        batch.step()
        sizes.append(batch.running)
    assert sizes[0] == 3 and sizes == sorted(sizes, reverse=True) and 2 in sizes  # "b" left first
    assert batch.prefills == 2
    assert_same_answers(registry, first + late, alone)


def assert_same_answers(registry, jobs: list[Job], alone: list[list[int]]) -> None:
    """The serving promise: equal to one-at-a-time in fp32, equal up to near-ties in bf16."""
    if not registry.bf16:
        assert [job.tokens for job in jobs] == alone
        return
    for job, expected in zip(jobs, alone, strict=True):
        if job.tokens == expected:
            continue
        logits = sequential_logits(registry, job.adapter, job.prompt_ids, expected)
        assert agrees_up_to_bf16_ties(job.tokens, expected, logits, registry.tokenizer.eos_token_id)


def test_greedy_rows_keep_their_answer_beside_sampled_rows(adapters):
    base_dir, (run_a, _) = adapters["llama"]
    registry = open_registry(str(base_dir), [f"a={run_a}"])
    (greedy,) = _jobs(registry, [("a", "hello there", 12)])
    registry.run_jobs([greedy])
    torch.manual_seed(0)
    jobs = _jobs(registry, [("a", "hello there", 12), ("base", "hello there", 12), ("a", "hi", 12)])
    jobs[1].sampling = Sampling(temperature=1.5, top_p=0.9)
    jobs[2].sampling = Sampling(temperature=1.0)
    registry.run_jobs(jobs)
    assert_same_answers(registry, jobs[:1], [greedy.tokens])
    assert all(job.finish_reason in ("length", "stop") for job in jobs)


def test_choose_tokens_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.manual_seed(0)
    draws = {choose_tokens(logits, [Sampling(temperature=1.0, top_p=0.7)])[0] for _ in range(200)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.7; the tail is never drawn
    assert choose_tokens(logits, [Sampling()]) == [0]


def test_dora_adapters_fall_back_to_one_adapter_per_batch(tiny_llama_dir: Path, tmp_path: Path):
    """peft cannot mix DoRA adapters in one batch; the registry then activates one at a time."""
    run = make_adapter_run(tiny_llama_dir, tmp_path / "dora", task=None, seed=5)
    config_path = run / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["use_dora"] = True
    config_path.write_text(json.dumps(config))
    plain = make_adapter_run(tiny_llama_dir, tmp_path / "plain", task=None, seed=6)
    registry = open_registry(str(tiny_llama_dir), [f"d={run}", f"p={plain}"])
    assert not registry.mixed_batching()
    rows = [("d", "hello", 6), ("p", "hello", 6), ("base", "hello", 6)]
    singles = []
    for row in rows:
        (job,) = _jobs(registry, [row])
        registry.run_jobs([job])
        singles.append(job.tokens)
    assert len({tuple(t) for t in singles}) == 3
    same_adapter = _jobs(registry, [("d", "hello", 6), ("d", "hello there", 6)])
    registry.run_jobs(same_adapter)
    assert_same_answers(registry, same_adapter[:1], [singles[0]])


class RecordingEngine:
    """A decode loop that records who joins together and finishes each job at its next step."""

    def __init__(self, mixed: bool) -> None:
        self.mixed = mixed
        self.jobs: list[Job] = []
        self.admitted: list[list[str]] = []
        self.prefills = 0
        self.gate = threading.Event()

    @property
    def running(self) -> int:
        return len(self.jobs)

    def can_join(self, job: Job, joining: list[Job]) -> bool:
        rows = self.jobs + joining
        return self.mixed or not rows or job.adapter == rows[0].adapter

    def admit(self, jobs: list[Job]) -> None:
        self.gate.wait(5)
        self.admitted.append([job.adapter for job in jobs])
        self.jobs += jobs

    def step(self) -> None:
        for job in self.jobs:
            job.close()
        self.jobs = []

    def fail_all(self, message: str, status: int = 500) -> None:
        self.jobs = []


def _run_queue(engine: RecordingEngine, names: list[str], **kwargs) -> None:
    scheduler = Scheduler(engine, batch_wait_s=0.0, **kwargs)
    jobs = [Job(n, [1], max_tokens=1) for n in names]
    for job in jobs:
        scheduler.submit(job)
    scheduler.start()
    engine.gate.set()
    deadline = time.monotonic() + 5
    while not all(job.finished for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.005)
    scheduler.stop()


def test_scheduler_mixes_adapters_when_peft_can():
    engine = RecordingEngine(mixed=True)
    _run_queue(engine, ["a", "b", "a", "base", "b"])
    assert engine.admitted == [["a", "b", "a", "base", "b"]]


def test_scheduler_without_mixing_serves_the_oldest_request_first():
    engine = RecordingEngine(mixed=False)
    _run_queue(engine, ["a", "b", "a", "b", "c", "a"], max_batch_size=2)
    assert engine.admitted == [["a", "a"], ["b", "b"], ["c"], ["a"]]


def test_queue_is_bounded():
    scheduler = Scheduler(RecordingEngine(mixed=True), queue_size=2)
    scheduler.submit(Job("a", [1], max_tokens=1))
    scheduler.submit(Job("a", [1], max_tokens=1))
    with pytest.raises(QueueFull):
        scheduler.submit(Job("a", [1], max_tokens=1))
    scheduler.stop()  # waiting jobs are failed with 503, not left hanging
    assert scheduler.queued == 0


def test_sampled_generation_respects_limits(tiny_llama_dir: Path):
    registry = open_registry(str(tiny_llama_dir), [])
    torch.manual_seed(0)
    jobs = _jobs(registry, [("base", "hello", 7), ("base", "hi", 3)])
    for job in jobs:
        job.sampling = Sampling(temperature=1.5, top_p=0.95)
    registry.run_jobs(jobs)
    assert len(jobs[0].tokens) <= 7 and len(jobs[1].tokens) <= 3
    assert all(j.finish_reason in ("length", "stop") for j in jobs)
