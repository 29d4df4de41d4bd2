"""Tiny models with fixed weights, built on CPU in about a second, for every test.

T5 and Llama use byte-level tokenizers, so any text (SQL, finance questions, unicode) round-trips
without a vocabulary file or a network download. The Llama one has a ChatML chat template whose
end-of-turn token is its eos, like SmolLM2, so chat-template code paths run in tests. For the GGUF
export: a Llama with a few BPE merges (llama.cpp needs them) and a Gemma-3 whose tokenizer has
Gemma's SentencePiece-style shape (BPE with byte fallback).
"""

from __future__ import annotations

import json
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


BPE_MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "s")]
"""The merges of `build_tiny_bpe_llama`: llama.cpp refuses a gpt2 vocabulary without any."""

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_tiny_bpe_llama(path: Path, *, hidden_size: int = 32) -> Path:
    """The tiny Llama with 8 BPE merges added to its byte vocabulary (259 + 8 = 267 tokens).

    `hidden_size` 256 (intermediate 512) gives rows that llama.cpp's k-quants take whole (blocks of 256).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

    build_tiny_llama(path)
    byte_tokenizer = AutoTokenizer.from_pretrained(path)
    vocab = dict(byte_tokenizer.backend_tokenizer.get_vocab())
    for left, right in BPE_MERGES:
        vocab[left + right] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=BPE_MERGES))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    bos, start, eos = LLAMA_SPECIAL_TOKENS
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, additional_special_tokens=[start],
        chat_template=byte_tokenizer.chat_template,
    )
    assert sorted(ByteLevel.alphabet()) == sorted(t for t in vocab if len(t) == 1)
    if hidden_size == 32:
        model = AutoModelForCausalLM.from_pretrained(path)
    else:
        config = LlamaConfig.from_pretrained(path)
        config.hidden_size, config.intermediate_size = hidden_size, 2 * hidden_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model = AutoModelForCausalLM.from_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


GEMMA_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")
GEMMA_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n'"
    " + message['content'] + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
"""Gemma's turn markers; the tokenizer adds <bos>, so the template does not."""
GEMMA_MERGES = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("i", "n"), ("▁", "a"), ("e", "r"), ("o", "n"), ("▁", "s"),
                ("▁the", "r")]


def build_tiny_gemma3(path: Path) -> Path:
    """Save a 6-layer Gemma3ForCausalLM (hidden 64, 2 heads of 32, 1 kv head; layers 0-4 sliding over
    16 tokens, layer 5 global, as Gemma-3's pattern of 6; an untied output layer) with a tokenizer in
    Gemma-3's tokenizer.json shape: BPE with byte fallback, spaces as '▁', <bos> prepended.

    Vocabulary: 6 specials + 256 byte tokens + '▁' and printable ASCII + 9 merges.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    path = Path(path)
    vocab = {token: i for i, token in enumerate(GEMMA_SPECIAL_TOKENS)}
    for symbol in [f"<0x{b:02X}>" for b in range(256)] + ["▁"] + [chr(c) for c in range(33, 127)]:
        vocab[symbol] = len(vocab)
    for left, right in GEMMA_MERGES:
        vocab[left + right] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=GEMMA_MERGES, unk_token="<unk>", byte_fallback=True,
                                   fuse_unk=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    pad, eos, bos, unk, start, end = GEMMA_SPECIAL_TOKENS
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=unk, pad_token=pad,
        additional_special_tokens=[start, end], chat_template=GEMMA_TEMPLATE,
    )
    config = Gemma3TextConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
        sliding_window=16, max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        # Untied (Gemma-3 ties them): a random model with tied embeddings scaled by sqrt(hidden) repeats
        # its last input token, which no comparison can tell apart from a broken one.
        tie_word_embeddings=False, initializer_range=0.2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = Gemma3ForCausalLM(config)
        # Gemma's norms multiply by (1 + w) and start at w = 0; random w checks the export's + 1.
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.data.normal_(0.0, 0.2)
    model.generation_config.max_length = 64
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def add_random_adapter(model_dir: Path, run_dir: Path, r: int = 4, alpha: int = 8) -> Path:
    """A run directory whose adapter has non-zero A and B on every projection (as after training)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        peft_model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=LORA_TARGETS,
                                                     init_lora_weights=False))
    peft_model.save_pretrained(str(run_dir / "adapter"))
    (run_dir / "adapter" / "loratune.json").write_text(json.dumps({"base_model": str(model_dir)}))
    return run_dir
