"""Tiny models with fixed weights, built on CPU in about a second, for every test.

Both use byte-level tokenizers, so any text (SQL, finance questions, unicode) round-trips without
a vocabulary file or a network download. The Llama one has a ChatML chat template whose
end-of-turn token is its eos, like SmolLM2, so chat-template code paths run in tests.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, as SmolLM2 uses (without its default system prompt)."""

LLAMA_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
"""Ids 0, 1, 2 of the tiny Llama tokenizer: bos, start of turn, end of turn (= eos)."""

SEED = 0


def build_tiny_t5(path: Path) -> Path:
    """Save a 2-layer T5ForConditionalGeneration (d_model 32) with a ByT5 byte tokenizer to `path`.

    Vocabulary: ByT5's 3 specials + 256 bytes + 125 sentinels = 384, which is the model's
    vocab_size. pad id 0 (also the decoder start), eos id 1.
    """
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    path = Path(path)
    tokenizer = ByT5Tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=2,
        num_decoder_layers=2, num_heads=2, relative_attention_num_buckets=8,
        relative_attention_max_distance=32, dropout_rate=0.0, feed_forward_proj="relu",
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = T5ForConditionalGeneration(config)
    model.generation_config.max_length = 64
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _byte_level_tokenizer() -> "object":
    """A `tokenizers` byte-level BPE with no merges: one token per UTF-8 byte, plus specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {token: i for i, token in enumerate(LLAMA_SPECIAL_TOKENS)}
    for symbol in sorted(ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def build_tiny_llama(path: Path) -> Path:
    """Save a 2-layer LlamaForCausalLM (hidden 32, 4 heads, 2 kv heads) with a byte tokenizer.

    The tokenizer has bos `<|endoftext|>`, eos `<|im_end|>` (end of turn) and no pad token, as
    many causal models ship; `load_model` then sets pad = eos. Vocabulary: 3 specials + 256.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    bos, start, eos = LLAMA_SPECIAL_TOKENS
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_tokenizer(), bos_token=bos, eos_token=eos,
        additional_special_tokens=[start], chat_template=CHATML_TEMPLATE,
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        # With the default 0.02 init a 32-wide model is so close to uniform that LoRA's low-rank
        # updates barely move the loss; 0.2 gives weights of a trained model's scale.
        initializer_range=0.2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config)
    model.generation_config.max_length = 64
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
