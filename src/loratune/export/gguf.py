"""Export a run for llama.cpp and Ollama: the merged model as a GGUF (+ an Ollama Modelfile), or the
adapter alone in llama.cpp's LoRA GGUF layout.

The flow reads top to bottom: check (cheap, no writes), merge (`lora.merge_adapter` into a temporary
directory), convert (tensors renamed through gguf-py's name tables, tokenizer and chat template into
the metadata), record (the Modelfile). Conventions follow llama.cpp's `convert_hf_to_gguf.py` and
`convert_lora_to_gguf.py`, so the files load in llama.cpp and in transformers' GGUF reader alike.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gguf
import numpy as np

from loratune.errors import ExportError
from loratune.export.modelfile import generation_settings, modelfile_text
from loratune.models.load import resolve_source
from loratune.models.lora import adapter_and_base, merge_adapter

FORMATS = ("gguf", "gguf-lora")
OUTTYPES = ("f32", "f16", "q8_0")


@dataclass(frozen=True)
class ArchSpec:
    """How one transformers `model_type` becomes a llama.cpp architecture."""

    gguf_arch: str  # the gguf-py MODEL_ARCH member, e.g. "LLAMA"
    # HF Llama pairs rotary dimensions (i, i + d/2), llama.cpp's llama graph (2i, 2i + 1): q/k rows are
    # reordered within each head (llama.cpp's LlamaModel.permute, which transformers' GGUF reader undoes).
    permute_qk: bool


# One entry per supported transformers model_type. Gemma-3 would add an entry here, plus a
# SentencePiece vocabulary writer and its norm-weight convention (llama.cpp stores 1 + w).
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(gguf_arch="LLAMA", permute_qk=True),
}

# tokenizer.json pre-tokenizers that llama.cpp reproduces, keyed by their shape; the value is the
# `tokenizer.ggml.pre` name whose regexes split text the same way (see llama-vocab.cpp).
BYTE_LEVEL_PRE_TOKENIZERS: dict[tuple[str, ...], str] = {
    ("ByteLevel",): "gpt-2",
    ("Digits(individual)", "ByteLevel"): "smollm",
}


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the GGUF, the Modelfile beside it (None for an adapter), the tensor count."""

    path: Path
    modelfile: Path | None
    tensors: int


@contextlib.contextmanager
def _gguf_file(output: Path, arch: Any) -> Iterator[Any]:
    """A GGUFWriter whose file appears at `output` only once complete: a failed export leaves nothing."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), gguf.MODEL_ARCH_NAMES[arch])
    try:
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        partial.replace(output)
    finally:
        writer.close()
        partial.unlink(missing_ok=True)


def check_options(fmt: str, outtype: str, output: Path) -> None:
    """Reject bad options before any model is loaded; messages name the flag at fault."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if outtype not in OUTTYPES:
        raise ExportError(f"--outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    if output.suffix.lower() != ".gguf":
        raise ExportError(f"--output {output}: the file name must end in .gguf")
    if output.exists():
        raise ExportError(f"--output {output}: already exists; choose another name or delete it")
    if fmt == "gguf" and (output.parent / "Modelfile").exists():
        raise ExportError(f"{output.parent / 'Modelfile'}: already exists; export into another folder")


def arch_spec(model_type: str) -> ArchSpec:
    """The architecture entry for `model_type`, or an ExportError listing what is supported."""
    if model_type not in ARCHITECTURES:
        raise ExportError(
            f"model_type {model_type!r} cannot be exported to GGUF yet; supported: {', '.join(sorted(ARCHITECTURES))} "
            "(use `loratune merge` for a safetensors model instead)"
        )
    return ARCHITECTURES[model_type]


def export_run(
    run: str | Path, output: str | Path, *, fmt: str = "gguf", outtype: str = "f16", base: str | None = None
) -> ExportResult:
    """Export a run's adapter: merged into its base as a GGUF with a Modelfile (`gguf`), or alone (`gguf-lora`)."""
    from transformers import AutoConfig, AutoTokenizer


    output = Path(output)
    check_options(fmt, outtype, output)
    adapter_dir, meta, base_source = adapter_and_base(run, base)
    resolved = resolve_source(base_source)
    config = AutoConfig.from_pretrained(
        resolved.path, gguf_file=resolved.gguf_file, local_files_only=resolved.local_files_only)
    spec = arch_spec(config.model_type)
    name = meta.get("name") or Path(run).resolve().name

    if fmt == "gguf-lora":
        count = write_lora_gguf(adapter_dir, config, spec, output, outtype, name=name)
        return ExportResult(output, None, count)
    # The merged safetensors model is written next to the output so a full disk fails early, and
    # removed afterwards: the GGUF is the product.
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".loratune-export-") as tmp:
        merged = merge_adapter(run, Path(tmp) / "merged", base=base)
        count = write_gguf(merged, output, outtype, name=name)
        text = modelfile_text(AutoTokenizer.from_pretrained(merged), output.name, meta, generation_settings(adapter_dir))
    modelfile = output.parent / "Modelfile"
    modelfile.write_text(text, encoding="utf-8")
    return ExportResult(output, modelfile, count)


# --- tensors ------------------------------------------------------------------------------------


def _permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's rows from HF's (i, i + d/2) rotary pairing to llama.cpp's (2i, 2i + 1)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _encode(data: np.ndarray, outtype: str) -> tuple[np.ndarray, Any]:
    """(array, ggml type) for one tensor. Vectors stay f32 as llama.cpp keeps them; a matrix whose
    rows are not a multiple of Q8_0's 32-value block falls back to f16, as llama.cpp's converter does."""
    types = gguf.GGMLQuantizationType
    data = np.ascontiguousarray(data, dtype=np.float32)
    if outtype == "f32" or data.ndim < 2:
        return data, types.F32
    if outtype == "q8_0":
        try:
            return gguf.quants.quantize(data, types.Q8_0), types.Q8_0
        except gguf.quants.QuantError:
            pass
    return data.astype(np.float16), types.F16


class _Names:
    """HF tensor name -> (MODEL_TENSOR, llama.cpp name) through gguf-py's tables, and the q/k head counts."""

    def __init__(self, spec: ArchSpec, config: Any) -> None:
        self.arch = gguf.MODEL_ARCH[spec.gguf_arch]
        self.table = gguf.get_tensor_name_map(self.arch, config.num_hidden_layers)
        self.allowed = set(gguf.MODEL_TENSORS[self.arch])
        self.heads = {gguf.MODEL_TENSOR.ATTN_Q: config.num_attention_heads,
                      gguf.MODEL_TENSOR.ATTN_K: config.num_key_value_heads} if spec.permute_qk else {}

    def lookup(self, hf_name: str) -> tuple[str, int | None]:
        """(llama.cpp name, heads to permute rows by, or None)."""
        found = self.table.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if found is None or found[0] not in self.allowed:
            raise ExportError(f"tensor {hf_name!r} has no llama.cpp name in architecture "
                              f"{gguf.MODEL_ARCH_NAMES[self.arch]}; cannot export it")
        return found[1], self.heads.get(found[0])


def write_gguf(model_dir: str | Path, output: str | Path, outtype: str = "f16", *, name: str | None = None) -> int:
    """Convert a transformers model directory (a merged run, or any supported model) into one GGUF file.

    Written to `<output>.partial` and renamed at the end, so a failed export leaves no half file.
    Returns the number of tensors written.
    """
    from safetensors.numpy import load_file
    from transformers import AutoConfig

    model_dir, output = Path(model_dir), Path(output)
    config = AutoConfig.from_pretrained(model_dir)
    names = _Names(arch_spec(config.model_type), config)
    tensors = {k: v for file in sorted(model_dir.glob("*.safetensors")) for k, v in load_file(str(file)).items()}
    file_type = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}[outtype]
    count = 0
    with _gguf_file(output, names.arch) as writer:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or model_dir.name)
        writer.add_file_type(gguf.LlamaFileType[file_type])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _write_llama_hparams(writer, config)
        _write_bpe_vocab(writer, model_dir, config.vocab_size)
        for hf_name, data in tensors.items():
            # Tied models share the embedding; llama.cpp (and transformers' reader) tie when output.weight is absent.
            if hf_name == "lm_head.weight" and config.tie_word_embeddings:
                continue
            gguf_name, heads = names.lookup(hf_name)
            encoded, ggml_type = _encode(data if heads is None else _permute_qk(data, heads), outtype)
            writer.add_tensor(gguf_name, encoded, raw_dtype=ggml_type)
            count += 1
    return count


def _write_llama_hparams(writer: Any, config: Any) -> None:
    # Only plain RoPE: scaled variants (llama3, yarn) need keys and a rope_freqs tensor not written here.
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ExportError(f"rope type {rope.get('rope_type', rope.get('type'))!r} is not exported yet; "
                          "only default RoPE is supported")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)


# --- tokenizer ----------------------------------------------------------------------------------


def _pre_tokenizer_name(tokenizer_json: dict[str, Any], where: Path) -> str:
    """The llama.cpp `tokenizer.ggml.pre` that splits text as this byte-level BPE does, or an ExportError."""
    model = tokenizer_json.get("model", {})
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    shape = []
    for step in steps:
        if step.get("type") == "ByteLevel" and step.get("use_regex", True) and not step.get("add_prefix_space"):
            shape.append("ByteLevel")
        elif step.get("type") == "Digits" and step.get("individual_digits"):
            shape.append("Digits(individual)")
        else:
            shape.append(json.dumps(step, sort_keys=True))
    name = BYTE_LEVEL_PRE_TOKENIZERS.get(tuple(shape))
    if model.get("type") != "BPE" or tokenizer_json.get("normalizer") or name is None:
        raise ExportError(
            f"{where}: only byte-level BPE tokenizers (GPT-2 style, as SmolLM2's) are exported to GGUF yet; "
            f"this one has model {model.get('type')!r} and pre-tokenizer {' + '.join(shape) or 'none'}"
        )
    return name


def _write_bpe_vocab(writer: Any, model_dir: Path, vocab_size: int) -> None:
    """Tokens, types, merges, special ids and chat template, as llama.cpp's `_set_vocab_gpt2` writes them."""
    from transformers import AutoTokenizer

    pre = _pre_tokenizer_name(json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8")), model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for index in range(vocab_size):
        if index not in by_id:  # embedding rows past the tokenizer (padding) must still be named
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    if not special.merges:  # llama.cpp refuses a gpt2 vocabulary without tokenizer.ggml.merges
        raise ExportError(f"{model_dir}/tokenizer.json: a BPE tokenizer without merges cannot be exported to GGUF")
    # Whether a BOS is prepended is what transformers does when encoding, not what a config claims.
    ids = tokenizer("a")["input_ids"]
    special.add_special_token["bos"] = tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
    special.add_special_token["eos"] = tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id
    special.add_to_gguf(writer, quiet=True)


# --- adapter alone ------------------------------------------------------------------------------


def write_lora_gguf(
    adapter_dir: Path, config: Any, spec: ArchSpec, output: Path, outtype: str = "f32", *, name: str = "adapter"
) -> int:
    """The adapter in llama.cpp's LoRA layout: `<tensor>.lora_a` (r x in), `<tensor>.lora_b` (out x r),
    `adapter.lora.alpha`; llama.cpp scales by alpha / r as peft does. q/k's B rows are permuted like
    the base weights, since W + B A permuted row-wise is W' + (P B) A."""
    from safetensors.numpy import load_file

    lora = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    unsupported = [key for key in ("use_dora", "use_rslora", "rank_pattern", "alpha_pattern", "modules_to_save")
                   if lora.get(key)]
    if lora.get("bias", "none") != "none":
        unsupported.append(f"bias={lora['bias']}")
    if unsupported:
        raise ExportError(
            f"{adapter_dir}: llama.cpp's LoRA format cannot express {', '.join(unsupported)}; "
            "use --format gguf to export the merged model instead"
        )
    names = _Names(spec, config)
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in weights.items():
        part = next((p for p in ("lora_A", "lora_B") if f".{p}." in key), None)
        if part is None:
            raise ExportError(f"{adapter_dir}: tensor {key!r} is not a LoRA A/B matrix; use --format gguf")
        pairs.setdefault(key.replace("base_model.model.", "", 1).replace(f".{part}", ""), {})[part] = value

    with _gguf_file(output, names.arch) as writer:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(lora["lora_alpha"]))
        writer.add_name(name)
        for base_name, pair in sorted(pairs.items()):
            gguf_name, heads = names.lookup(base_name)
            lora_b = pair["lora_B"] if heads is None else _permute_qk(pair["lora_B"], heads)
            for suffix, data in ((".lora_a", pair["lora_A"]), (".lora_b", lora_b)):
                encoded, ggml_type = _encode(data, outtype)
                writer.add_tensor(gguf_name + suffix, encoded, raw_dtype=ggml_type)
    return 2 * len(pairs)
