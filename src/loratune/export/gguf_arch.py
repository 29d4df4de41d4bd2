"""How a transformers architecture becomes a llama.cpp one: the gguf-py architecture, the hyperparameter
keys llama.cpp reads for it, tensor names (gguf-py's tables) and the weight conventions that differ
(Llama's rotary row order, Gemma's `1 + w` RMSNorm). Conventions follow llama.cpp's
`convert_hf_to_gguf.py` (`LlamaModel`, `Gemma3Model`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import gguf
import numpy as np

from loratune.errors import ExportError


def _rope_theta(rope: dict[str, Any], config: Any, default: float) -> float:
    return float(rope.get("rope_theta", getattr(config, "rope_theta", None) or default))


def _check_default_rope(rope: dict[str, Any], where: str) -> None:
    # Only plain RoPE: scaled variants (llama3, yarn, linear) need keys and tensors not written here.
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ExportError(f"{where}rope type {kind!r} is not exported yet; only default RoPE is supported")


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _write_common_hparams(writer: Any, config: Any) -> None:
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(_head_dim(config))
    writer.add_value_length(_head_dim(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)


def write_llama_hparams(writer: Any, config: Any) -> None:
    """The `llama.*` keys of LlamaModel in convert_hf_to_gguf.py."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    _check_default_rope(rope, "")
    _write_common_hparams(writer, config)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(_head_dim(config))
    writer.add_rope_freq_base(_rope_theta(rope, config, 10000.0))


# llama.cpp's gemma3 graph fixes what the config could vary: every 6th layer global, the others sliding
# with RoPE base 10000, attention scaled by 1/sqrt(head_dim), GELU (tanh) MLP. A config that differs
# would load and answer differently, so it is refused rather than written.
GEMMA3_SLIDING_PATTERN = 6
GEMMA3_LOCAL_ROPE_THETA = 10000.0


def write_gemma3_hparams(writer: Any, config: Any) -> None:
    """The `gemma3.*` keys of Gemma3Model in convert_hf_to_gguf.py, after checking the config is the
    Gemma-3 that llama.cpp's graph computes."""
    rope = getattr(config, "rope_parameters", None) or {}
    full = rope.get("full_attention", rope)
    local = rope.get("sliding_attention", {"rope_theta": getattr(config, "rope_local_base_freq", None)})
    for name, part in (("full_attention", full), ("sliding_attention", local)):
        _check_default_rope(part, f"rope_parameters.{name}: ")
    expected = ["full_attention" if (i + 1) % GEMMA3_SLIDING_PATTERN == 0 else "sliding_attention"
                for i in range(config.num_hidden_layers)]
    mismatches = {
        "layer_types": (list(getattr(config, "layer_types", expected)), expected),
        "rope_parameters.sliding_attention.rope_theta": (local.get("rope_theta"), GEMMA3_LOCAL_ROPE_THETA),
        "query_pre_attn_scalar": (getattr(config, "query_pre_attn_scalar", _head_dim(config)), _head_dim(config)),
        "hidden_activation": (getattr(config, "hidden_activation", "gelu_pytorch_tanh"), "gelu_pytorch_tanh"),
        "attn_logit_softcapping": (getattr(config, "attn_logit_softcapping", None), None),
        "use_bidirectional_attention": (bool(getattr(config, "use_bidirectional_attention", False)), False),
    }
    for key, (value, wanted) in mismatches.items():
        if value != wanted:
            raise ExportError(f"config.json {key} = {value!r}: llama.cpp's gemma3 computes {wanted!r}; "
                              "this model cannot be exported to GGUF")
    _write_common_hparams(writer, config)
    writer.add_rope_freq_base(_rope_theta(full, config, 1_000_000.0))  # the global layers'
    writer.add_sliding_window(config.sliding_window)
    if getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(config.final_logit_softcapping)


@dataclass(frozen=True)
class ArchSpec:
    """How one transformers `model_type` becomes a llama.cpp architecture."""

    gguf_arch: str  # the gguf-py MODEL_ARCH member, e.g. "LLAMA"
    # HF Llama pairs rotary dimensions (i, i + d/2), llama.cpp's llama graph (2i, 2i + 1): q/k rows are
    # reordered within each head (llama.cpp's LlamaModel.permute, which transformers' GGUF reader undoes).
    permute_qk: bool
    # Added to every RMSNorm weight: Gemma's norm multiplies by (1 + w), llama.cpp's by the stored weight.
    norm_shift: float
    write_hparams: Callable[[Any, Any], None]


# One entry per supported transformers model_type.
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(gguf_arch="LLAMA", permute_qk=True, norm_shift=0.0, write_hparams=write_llama_hparams),
    "gemma3_text": ArchSpec(gguf_arch="GEMMA3", permute_qk=False, norm_shift=1.0, write_hparams=write_gemma3_hparams),
}


def arch_spec(model_type: str) -> ArchSpec:
    """The architecture entry for `model_type`, or an ExportError listing what is supported."""
    if model_type not in ARCHITECTURES:
        raise ExportError(
            f"model_type {model_type!r} cannot be exported to GGUF yet; supported: {', '.join(sorted(ARCHITECTURES))} "
            "(use `loratune merge` for a safetensors model instead)"
        )
    return ARCHITECTURES[model_type]


def permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's rows from HF's (i, i + d/2) rotary pairing to llama.cpp's (2i, 2i + 1)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


class TensorNames:
    """HF tensor name -> llama.cpp name through gguf-py's tables, and each tensor's layout change."""

    def __init__(self, spec: ArchSpec, config: Any) -> None:
        self.spec = spec
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

    def convert(self, hf_name: str, data: np.ndarray) -> tuple[str, np.ndarray]:
        """(llama.cpp name, the weights in llama.cpp's layout) for one tensor of a full model."""
        name, heads = self.lookup(hf_name)
        if heads is not None:
            data = permute_qk(data, heads)
        if self.spec.norm_shift and hf_name.endswith("norm.weight"):
            data = data.astype(np.float32) + self.spec.norm_shift
        return name, data
