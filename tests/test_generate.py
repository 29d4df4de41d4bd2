"""Generation: batching and padding do not change answers; SQL is cut to its first statement."""

import pytest

from loratune.config import GenerationSettings
from loratune.data import render_prompt
from loratune.generate import extract_sql, generate_texts
from loratune.models import load_model


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
    loaded = load_model(str(request.getfixturevalue(which)))
    questions = ["a", "a much longer prompt than the first one", "mid length prompt"]
    prompts = [render_prompt(loaded.tokenizer, q, use_chat_template=kind == "causal", system_prompt=None)
               for q in questions]
    settings = GenerationSettings(max_new_tokens=12)
    batched = generate_texts(loaded.model, loaded.tokenizer, kind, prompts, settings, batch_size=3)
    single = [generate_texts(loaded.model, loaded.tokenizer, kind, [p], settings, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert all(isinstance(t, str) for t in batched)
    # causal outputs never echo the prompt
    if kind == "causal":
        assert not any(out.startswith("<|im_start|>") for out in batched)
