"""Generation: batching and padding do not change answers; SQL is cut to its first statement; the
bf16-weight path gives bit-for-bit the answers of plain bf16 autocast and leaves the model as it was."""

import pytest
import torch

from loratune.config import GenerationSettings
from loratune.data import encode_prompt, render_prompt
from loratune.inference.answers import extract_sql
from loratune.inference.encoding import encode_batch, prompt_ids
from loratune.inference.generate import generate_texts
from loratune.models.load import load_model
from loratune.models.precision import generation_precision


@pytest.mark.parametrize("text,expected", [
    ("SELECT a FROM t;", "SELECT a FROM t"),
    ("```sql\nSELECT a\nFROM t\n```\nThis query selects a.", "SELECT a FROM t"),
    ("Here is the query: SELECT count(*) FROM singer; SELECT 2", "SELECT count(*) FROM singer"),
    ("SELECT a FROM t\n\nExplanation: ...", "SELECT a FROM t"),
    ("with x as (select 1) select * from x", "with x as (select 1) select * from x"),
    ("I don't know", "I don't know"),
])
def test_extract_sql(text, expected):
    assert extract_sql(text) == expected


@pytest.mark.parametrize("which,kind", [("tiny_llama_dir", "causal"), ("tiny_t5_dir", "seq2seq")])
def test_batched_equals_one_by_one(which, kind, request):
    loaded = load_model(str(request.getfixturevalue(which)), device="cpu")
    questions = ["a", "a much longer prompt than the first one", "mid length prompt"]
    prompts = [render_prompt(loaded.tokenizer, q, use_chat_template=kind == "causal", system_prompt=None)
               for q in questions]
    settings = GenerationSettings(max_new_tokens=12)
    batched = generate_texts(loaded.model, loaded.tokenizer, kind, prompts, settings, batch_size=3)
    single = [generate_texts(loaded.model, loaded.tokenizer, kind, [p], settings, batch_size=1)[0] for p in prompts]
    assert batched == single
    # causal outputs never echo the prompt
    if kind == "causal":
        assert not any(out.startswith("<|im_start|>") for out in batched)


def test_encode_batch_pads_causal_left_and_seq2seq_right(tiny_llama_dir, tiny_t5_dir):
    llama = load_model(str(tiny_llama_dir)).tokenizer
    long, short = "<|im_start|>user\nhello<|im_end|>\n", "hi"
    batch = encode_batch(llama, "causal", [long, prompt_ids(llama, "causal", short)])
    ids = encode_prompt(llama, short)
    pad = batch["input_ids"].shape[1] - len(ids)
    assert batch["input_ids"][1].tolist() == [llama.pad_token_id] * pad + ids  # ids pass through as given
    assert batch["attention_mask"][1].tolist() == [0] * pad + [1] * len(ids)
    assert batch["input_ids"][0].tolist() == encode_prompt(llama, long)  # no BOS added before the template's own
    t5 = load_model(str(tiny_t5_dir)).tokenizer
    batch = encode_batch(t5, "seq2seq", ["a longer input", "ab"])
    assert batch["attention_mask"][1].tolist() == [1] * 3 + [0] * (batch["input_ids"].shape[1] - 3)  # a, b, eos


def test_bf16_weights_answer_as_plain_autocast(tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("LORATUNE_PRECISION", "bf16")  # emulated (slowly) where bf16 is not native
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    model = loaded.model.eval()
    inputs = encode_batch(loaded.tokenizer, "causal", ["hello there", "what is a bond?"])
    kwargs = dict(max_new_tokens=16, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    before = {name: (p.data_ptr(), p.dtype) for name, p in model.named_parameters()}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # what generation did before
        reference = model.generate(**inputs, **kwargs, output_logits=True, return_dict_in_generate=True)
    with torch.inference_mode(), generation_precision(model):
        assert model.lm_head.weight.dtype == torch.bfloat16 and model.model.embed_tokens.weight.dtype == torch.float32
        fast = model.generate(**inputs, **kwargs, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(fast.sequences, reference.sequences)
    assert all(torch.equal(a, b) for a, b in zip(fast.logits, reference.logits, strict=True))
    assert {name: (p.data_ptr(), p.dtype) for name, p in model.named_parameters()} == before  # restored
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied


def _sql_prompts(tokenizer, n):
    questions = [f"question {i}: " + "how many rows " * (i % 5) for i in range(n)]
    return [render_prompt(tokenizer, q, use_chat_template=True, system_prompt=None) for q in questions]


@pytest.mark.parametrize("family", ["sql", "text"])
def test_continuous_batching_answers_as_generate_one_by_one(tiny_llama_dir, monkeypatch, family):
    # fp32, so other rows in the batch cannot move a logit by bf16 rounding: answers must be equal.
    monkeypatch.setenv("LORATUNE_PRECISION", "fp32")
    from loratune.inference.generate import _generate_static, continuous_batching

    loaded = load_model(str(tiny_llama_dir), device="cpu")
    prompts = _sql_prompts(loaded.tokenizer, 9)
    settings = GenerationSettings(max_new_tokens=10)
    assert continuous_batching("causal", settings) and not continuous_batching("seq2seq", settings)
    seen = []
    # batch 4 with 9 prompts: rows finish at different steps and later prompts join the running batch
    got = generate_texts(loaded.model, loaded.tokenizer, "causal", prompts, settings, batch_size=4,
                         task_family=family, on_answer=lambda i, text: seen.append((i, text)))
    with torch.inference_mode():
        one_by_one = _generate_static(loaded.model.eval(), loaded.tokenizer, "causal", prompts, settings, 1, family,
                                      None, None)
    assert got == one_by_one
    assert sorted(seen) == sorted(enumerate(got))  # every answer reported once, with its index


def test_static_batches_report_each_answer(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    prompts = _sql_prompts(loaded.tokenizer, 5)
    settings = GenerationSettings(max_new_tokens=6, num_beams=2)  # beams: `model.generate`, not the decode loop
    seen = {}
    got = generate_texts(loaded.model, loaded.tokenizer, "causal", prompts, settings, batch_size=2,
                         on_answer=seen.__setitem__)
    assert seen == dict(enumerate(got))


def test_a_failing_forward_pass_fails_the_generation(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("simulated out of memory")
        return original(*args, **kwargs)

    original = loaded.model.forward
    loaded.model.forward = broken
    with pytest.raises(RuntimeError, match="simulated out of memory"):
        generate_texts(loaded.model, loaded.tokenizer, "causal", _sql_prompts(loaded.tokenizer, 4),
                       GenerationSettings(max_new_tokens=20), batch_size=2)


def test_a_tatqa_chat_answer_is_the_computed_value_with_its_calculation():
    from loratune.inference.answers import present_answer

    assert present_answer("calculation: 109.0 - 58.3\nscale: million", "tat-qa") == \
        "50.7 million (calculation: 109.0 - 58.3)"
    assert present_answer("answer: 2019 | 2018\nscale: none", "tat-qa") == "2019 | 2018"
    assert present_answer("calculation: (104 - 89) / 89 * 100\nscale: percent", "tat-qa") == \
        "16.85% (calculation: (104 - 89) / 89 * 100)"
    assert present_answer("no idea", "tat-qa") == "no idea"  # shown as written
    assert present_answer("  SELECT 1; -- x", "sql") == "SELECT 1"
