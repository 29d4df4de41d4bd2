"""The tokenizer inside a GGUF, in one of the two shapes llama.cpp tokenizes as transformers does:

- byte-level BPE (GPT-2 style, SmolLM2's): `tokenizer.ggml.model = gpt2`, tokens, merges and the
  `tokenizer.ggml.pre` name whose regexes split text the same way (llama.cpp's `_set_vocab_gpt2`);
- SentencePiece-style BPE with byte fallback (Gemma-3's): `tokenizer.ggml.model = llama`, tokens
  with scores and types (llama.cpp's `_set_vocab_sentencepiece`). llama.cpp merges the pair whose
  result scores highest; the score of a token is minus the rank of the first merge that makes it,
  so it merges in the order of tokenizer.json's merges.

Special token ids, whether BOS is added, and the chat template go in as well.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import gguf

from loratune.errors import ExportError

# tokenizer.json pre-tokenizers that llama.cpp reproduces, keyed by their shape; the value is the
# `tokenizer.ggml.pre` name whose regexes split text the same way (see llama-vocab.cpp).
BYTE_LEVEL_PRE_TOKENIZERS: dict[tuple[str, ...], str] = {
    ("ByteLevel",): "gpt-2",
    ("Digits(individual)", "ByteLevel"): "smollm",
}
SPACE = "\u2581"  # SentencePiece's visible space
_BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


def _steps(part: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    part = part or {}
    return part.get(key, []) if part.get("type") == "Sequence" else ([part] if part else [])


def pre_tokenizer_name(tokenizer_json: dict[str, Any], where: Path) -> str:
    """The llama.cpp `tokenizer.ggml.pre` that splits text as this byte-level BPE does, or an ExportError."""
    model = tokenizer_json.get("model", {})
    shape = []
    for step in _steps(tokenizer_json.get("pre_tokenizer"), "pretokenizers"):
        if step.get("type") == "ByteLevel" and step.get("use_regex", True) and not step.get("add_prefix_space"):
            shape.append("ByteLevel")
        elif step.get("type") == "Digits" and step.get("individual_digits"):
            shape.append("Digits(individual)")
        else:
            shape.append(json.dumps(step, sort_keys=True))
    name = BYTE_LEVEL_PRE_TOKENIZERS.get(tuple(shape))
    if model.get("type") != "BPE" or tokenizer_json.get("normalizer") or name is None:
        raise ExportError(
            f"{where}: only byte-level BPE tokenizers (GPT-2 style, as SmolLM2's) and SentencePiece-style BPE "
            f"(as Gemma-3's) are exported to GGUF; this one has model {model.get('type')!r} and pre-tokenizer "
            f"{' + '.join(shape) or 'none'}"
        )
    return name


def is_sentencepiece_bpe(tokenizer_json: dict[str, Any]) -> bool:
    """Gemma-3's shape: BPE with byte fallback over text whose spaces the normalizer turns into '▁',
    with no prefix space and no other splitting (a split on ' ' finds none after that)."""
    model = tokenizer_json.get("model", {})
    normalizers = _steps(tokenizer_json.get("normalizer"), "normalizers")
    pre = _steps(tokenizer_json.get("pre_tokenizer"), "pretokenizers")
    return (model.get("type") == "BPE" and bool(model.get("byte_fallback"))
            and normalizers == [{"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]
            and all(step.get("type") == "Split" and step.get("pattern") == {"String": " "} for step in pre))


def write_vocab(writer: Any, model_dir: Path, vocab_size: int) -> None:
    """The model directory's tokenizer into the GGUF metadata, or an ExportError naming its shape."""
    from transformers import AutoTokenizer

    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if is_sentencepiece_bpe(tokenizer_json):
        _write_sentencepiece_tokens(writer, tokenizer, tokenizer_json, vocab_size)
        load_merges = False
    else:
        pre = pre_tokenizer_name(tokenizer_json, model_dir)
        _write_byte_level_tokens(writer, tokenizer, vocab_size, pre)
        load_merges = True
    special = gguf.SpecialVocab(model_dir, load_merges=load_merges, n_vocab=vocab_size)
    if load_merges and not special.merges:  # llama.cpp refuses a gpt2 vocabulary without tokenizer.ggml.merges
        raise ExportError(f"{model_dir}/tokenizer.json: a BPE tokenizer without merges cannot be exported to GGUF")
    # Whether a BOS is prepended is what transformers does when encoding, not what a config claims.
    ids = tokenizer("a")["input_ids"]
    special.add_special_token["bos"] = tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
    special.add_special_token["eos"] = tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id
    special.add_to_gguf(writer, quiet=True)


def _tokens_by_id(tokenizer: Any, vocab_size: int) -> list[tuple[str, Any]]:
    """(text, added-token entry or None) per id; embedding rows past the tokenizer (padding) get a name."""
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    return [(by_id.get(index, f"[PAD{index}]"), added.get(index) if index in by_id else "pad")
            for index in range(vocab_size)]


def _write_byte_level_tokens(writer: Any, tokenizer: Any, vocab_size: int, pre: str) -> None:
    entries = _tokens_by_id(tokenizer, vocab_size)
    types = []
    for _, added in entries:
        if added == "pad":
            types.append(gguf.TokenType.UNUSED)
        elif added is not None:
            types.append(gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list([text for text, _ in entries])
    writer.add_token_types(types)


def _write_sentencepiece_tokens(writer: Any, tokenizer: Any, tokenizer_json: dict[str, Any], vocab_size: int) -> None:
    merges = tokenizer_json["model"].get("merges", [])
    rank: dict[str, int] = {}
    for index, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, index)
    tokens, scores, types = [], [], []
    for text, added in _tokens_by_id(tokenizer, vocab_size):
        tokens.append(text)
        # Tokens no merge makes (characters, bytes, specials) score below every merge result.
        scores.append(-float(rank.get(text, len(merges))))
        if added == "pad":
            types.append(gguf.TokenType.UNUSED)
        elif text == tokenizer.unk_token:
            types.append(gguf.TokenType.UNKNOWN)
        elif added is not None:
            types.append(gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED)
        elif _BYTE_TOKEN.fullmatch(text):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in tokenizer.get_vocab()]
    if missing:  # llama.cpp looks up every byte token (newline, byte fallback) and fails to load without one
        raise ExportError(f"tokenizer.json: a byte-fallback vocabulary lacks {len(missing)} byte tokens "
                          f"({', '.join(missing[:3])}...); cannot export it to GGUF")
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(False)
