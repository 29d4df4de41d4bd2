"""Server prompts equal training prompts; base models get their chat template; length limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from loratune.config import DataSettings
from loratune.data import eval_prompts
from loratune.errors import RequestError
from loratune.models.load import load_model
from loratune.serve.prompts import (
    PromptProfile,
    base_profile,
    build_chat_prompt,
    check_length,
    context_limit,
    profile_from_meta,
)
from loratune.tasks import get_task


@pytest.fixture(scope="module")
def llama(tiny_llama_dir: Path):
    return load_model(str(tiny_llama_dir))


@pytest.fixture(scope="module")
def t5(tiny_t5_dir: Path):
    return load_model(str(tiny_t5_dir))


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("task_name,message", [
    ("sql-create-context", "Which ships are red? CREATE TABLE ship (name TEXT, color TEXT);"),
    ("llama2-sql", "Which ships are red? CREATE TABLE ship (name TEXT, color TEXT)"),
    ("finance-alpaca", "What is a bond?"),
    ("prompt-completion", "Once upon a time"),
])
def test_adapter_prompt_is_the_training_prompt(llama, t5, task_name, message):
    meta = {"task": task_name, "use_chat_template": None, "system_prompt": "Be exact.", "max_source_tokens": 512}
    for loaded in (llama, t5):
        profile = profile_from_meta(meta, loaded.tokenizer, loaded.model_type)
        built = build_chat_prompt(profile, loaded.tokenizer, loaded.model_type,
                                  [{"role": "system", "content": "ignored"}, *user("an earlier question"),
                                   {"role": "assistant", "content": "an earlier answer"}, *user(message)])
        task = get_task(task_name)
        cfg = DataSettings(max_source_tokens=512, system_prompt="Be exact.")
        assert built.text == eval_prompts([task.row_from_message(message)], task, loaded.tokenizer, loaded.model_type, cfg)[0]
        assert built.task_family == task.family and built.warnings == []
        assert "earlier" not in built.text  # task adapters answer the latest message alone
        assert ("<|im_start|>" in built.text) == (loaded.model_type == "causal")  # T5 has no chat template


def test_sql_message_without_tables_gets_a_warning(llama):
    profile = profile_from_meta({"task": "sql-create-context", "max_source_tokens": 512}, llama.tokenizer, llama.model_type)
    built = build_chat_prompt(profile, llama.tokenizer, llama.model_type, user("How many ships?"))
    assert any("no CREATE TABLE" in w for w in built.warnings)


def test_chat_task_and_base_keep_the_conversation(llama, t5):
    conversation = [*user("hello"), {"role": "assistant", "content": "hi!"}, *user("how are you?")]
    chat_profile = profile_from_meta({"task": "messages"}, llama.tokenizer, llama.model_type)
    expected = llama.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert chat_profile.multi_turn and base_profile(llama.tokenizer, llama.model_type).multi_turn
    assert build_chat_prompt(chat_profile, llama.tokenizer, llama.model_type, conversation).text == expected
    llama_base = base_profile(llama.tokenizer, llama.model_type)
    assert build_chat_prompt(llama_base, llama.tokenizer, llama.model_type, conversation).text == expected
    t5_base = base_profile(t5.tokenizer, t5.model_type)
    assert not t5_base.multi_turn
    assert build_chat_prompt(t5_base, t5.tokenizer, t5.model_type, user("summarize: a b c")).text == "summarize: a b c"
    assert build_chat_prompt(t5_base, t5.tokenizer, t5.model_type, conversation).text == (
        "user: hello\nassistant: hi!\nuser: how are you?\nassistant: ")


def test_content_parts_and_unknown_tasks(llama):
    profile = base_profile(llama.tokenizer, llama.model_type)
    parts = [{"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}]
    assert build_chat_prompt(profile, llama.tokenizer, llama.model_type, parts).text == build_chat_prompt(
        profile, llama.tokenizer, llama.model_type, user("hello")).text
    with pytest.raises(RequestError, match="only text content"):
        build_chat_prompt(profile, llama.tokenizer, llama.model_type, [{"role": "user", "content": [{"type": "image_url"}]}])
    assert profile_from_meta({"task": "from-the-future"}, llama.tokenizer, llama.model_type).task is None


def test_truncation_matches_training_and_is_reported(llama):
    profile = PromptProfile(task=get_task("finance-alpaca"), use_chat_template=True, max_source_tokens=20)
    message = "Explain in detail how bond prices move when interest rates rise."
    built = build_chat_prompt(profile, llama.tokenizer, llama.model_type, user(message))
    task = get_task("finance-alpaca")
    expected = eval_prompts([task.row_from_message(message)], task, llama.tokenizer, llama.model_type,
                            DataSettings(max_source_tokens=20))[0]
    assert built.text == expected
    original = len(llama.tokenizer(task.prompt(task.row_from_message(message)), add_special_tokens=False)["input_ids"])
    assert built.warnings == [f"the prompt was truncated to 20 tokens (it had {original}), the adapter's "
                              "max_source_tokens from training"]


def test_length_limits(llama, t5):
    assert context_limit(llama.model, llama.tokenizer) == 512
    assert context_limit(llama.model, llama.tokenizer, 100) == 100
    assert check_length(10, None, model_type="causal", limit=512, default_max_tokens=256) == 256
    assert check_length(400, None, model_type="causal", limit=512, default_max_tokens=256) == 112
    assert check_length(400, 300, model_type="seq2seq", limit=512, default_max_tokens=256) == 300
    with pytest.raises(RequestError, match="lower max_tokens to at most 112") as caught:
        check_length(400, 113, model_type="causal", limit=512, default_max_tokens=256)
    assert caught.value.code == "context_length_exceeded" and caught.value.param == "max_tokens"
    with pytest.raises(RequestError, match="the prompt has 512 tokens"):
        check_length(512, None, model_type="causal", limit=512, default_max_tokens=256)
    with pytest.raises(RequestError, match="over this model's context"):
        check_length(513, 5, model_type="seq2seq", limit=512, default_max_tokens=256)
