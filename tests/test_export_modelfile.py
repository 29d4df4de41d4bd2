"""The Ollama Modelfile: chat template -> Go TEMPLATE, system prompt, stops, decoding settings.
(The file written by a real export is checked in test_export_gguf.py.)"""

from __future__ import annotations

import pytest
import yaml

from loratune.errors import ExportError
from loratune.export.modelfile import generation_settings, modelfile_text

GREEDY = {"max_new_tokens": 32, "do_sample": False, "temperature": 1.0, "top_k": None, "top_p": None,
          "repetition_penalty": 1.0}
# SmolLM2's template: inserts its own system prompt when the conversation has none.
SMOLLM_LIKE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are SmolLM.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture
def tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = SMOLLM_LIKE
    return tok


def test_default_system_prompt_and_sampling(tokenizer):
    sampling = {"max_new_tokens": 64, "do_sample": True, "temperature": 0.7, "top_k": 30, "top_p": None,
                "repetition_penalty": 1.2}
    text = modelfile_text(tokenizer, "m.gguf", {}, sampling)
    assert 'SYSTEM """You are SmolLM."""' in text
    assert "PARAMETER temperature 0.7\nPARAMETER top_k 30\nPARAMETER repeat_penalty 1.2\nPARAMETER num_predict 64" in text
    trained = modelfile_text(tokenizer, "m.gguf", {"system_prompt": "Write SQL."}, sampling)
    assert 'SYSTEM """Write SQL."""' in trained and "SmolLM" not in trained
    plain = modelfile_text(tokenizer, "m.gguf", {"use_chat_template": False}, sampling)
    assert 'TEMPLATE """{{ .Prompt }}"""' in plain and "SYSTEM" not in plain


def test_template_that_is_not_a_concatenation_is_left_to_ollama(tokenizer):
    # The user turn renders differently when it is the last message: no fixed prefix/suffix per role.
    tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.last %}[LAST]{% endif %}<{{ m['role'] }}>{{ m['content'] }}</s>"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    text = modelfile_text(tokenizer, "m.gguf", {}, GREEDY)
    assert "TEMPLATE" not in text and "too complex to translate" in text
    assert "PARAMETER temperature 0" in text and "PARAMETER num_predict 32" in text


def test_triple_quotes_cannot_be_written(tokenizer):
    with pytest.raises(ExportError, match='"""'):
        modelfile_text(tokenizer, "m.gguf", {"system_prompt": 'Say """hi"""'}, GREEDY)


def test_generation_settings_come_from_the_runs_config(tmp_path):
    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    assert generation_settings(adapter)["do_sample"] is False  # no config.yaml: the defaults
    (adapter.parent / "config.yaml").write_text(yaml.safe_dump(
        {"eval": {"generation": {"max_new_tokens": 160, "do_sample": True, "temperature": 0.3}}}))
    settings = generation_settings(adapter)
    assert (settings["max_new_tokens"], settings["do_sample"], settings["temperature"]) == (160, True, 0.3)
    assert "PARAMETER temperature 0.3" in modelfile_text_for(settings)


def modelfile_text_for(settings):
    class Plain:  # a tokenizer without a chat template: the prompt goes through as is
        eos_token = "</s>"
        chat_template = None
        all_special_tokens = ["</s>"]

    return modelfile_text(Plain(), "m.gguf", {}, settings)
