"""The completion loss: cross-entropy over the answer tokens, projected to the vocabulary in chunks.

A causal row is a prompt (labels -100) and an answer; only the answer has a loss. Projecting every
position to a 49k vocabulary and taking `cross_entropy` of the result materialises logits of
batch x width x vocabulary several times over (bf16 logits, their fp32 copy, the log-softmax, its
gradient, the zeros that gradient is scattered into): 100 MB apiece for a batch of 8 with 64 answer
positions. Tensors that big are above glibc's mmap threshold (32 MB at most), so every one is fresh
memory from the kernel, zeroed page by page on first touch, on every step.

`vocab_cross_entropy` takes the hidden states of the answer positions only and projects them a
chunk of rows at a time (each chunk's logits stay under 16 MB), computing each chunk's gradient
with respect to the hidden states in the forward pass, as Liger-Kernel's fused linear
cross-entropy does on GPUs: the backward is then one multiplication. No more FLOPs than the plain
path (fewer: answer positions only), the same dtypes (the projection in the autocast dtype, the
softmax in fp32), no logits kept.

It needs a frozen, bias-free output projection applied to the hidden states as they are
(`fused_loss_supported`); other models keep the plain path.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

# fp32 logits per chunk: as many as fit under glibc's largest mmap threshold (32 MiB, less 64 KiB
# for the allocator's headers and page rounding), so chunks are served from the heap and reused
# step after step instead of being mapped and zeroed afresh: 170 answer rows for SmolLM2's 49,152
# words. Each chunk reads the whole frozen head (113 MB in fp32), so fewer, larger chunks pay: in
# fp32 1.041x useful tok/s against 4M elements (16 MB, 85 rows; 1.025x in a first script), bf16
# 1.004x and 0.997x (bench/fused_loss.py --against-chunk 4194304; 2-core AMD EPYC, 2026-11-26,
# commit fad0b59).
CHUNK_ELEMENTS = (32 * 1024 * 1024 - 64 * 1024) // 4
# On a GPU there are no page faults to avoid (PyTorch's caching allocator reuses its blocks) but
# every chunk costs kernel launches, and a 135M model's step is launch-bound: 64M elements (256 MB)
# per chunk. Measured on an H200 (bench/cuda_check.py --fused-loss, 64 rows x 256 tokens, 8,320
# answer tokens): plain 208.7 ms per step, 20.5 GB peak; 4M chunks 239.2 ms, 16.4 GB; 64M 203.8 ms, 16.2 GB.
DEVICE_CHUNK_ELEMENTS = 64 * 1024 * 1024

# Model types whose forward is `logits = lm_head(hidden_states[:, kept])` with nothing after it
# (no soft-capping, logit scaling or bias): the hidden states can stand in for the logits.
PLAIN_HEAD_MODELS = {"llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3", "gpt2"}


def fused_loss_supported(model: Any) -> bool:
    """Whether `model`'s vocabulary projection can be bypassed and done by `vocab_cross_entropy`."""
    config = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return (getattr(config, "model_type", None) in PLAIN_HEAD_MODELS and type(head) is torch.nn.Linear
            and head.bias is None and not head.weight.requires_grad)


@contextmanager
def head_bypassed(model: Any) -> Iterator[torch.nn.Linear]:
    """Within the block the output projection returns its input: the model's `logits` are then the
    hidden states it would have projected. The model is still called as a whole, so wrappers around
    it (DistributedDataParallel's gradient hooks, peft) see an ordinary forward."""
    head = model.get_output_embeddings()
    head.forward = lambda hidden: hidden
    try:
        yield head
    finally:
        del head.forward


_cast: dict[str, Any] = {}


def _cast_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`weight` in `dtype`, cast once and reused while the weight is the same, unchanged tensor.

    The head is frozen, so the bf16 copy autocast would make on every step (56 MB for SmolLM2,
    mapped and zeroed afresh each time) is made once."""
    if weight.dtype == dtype:
        return weight
    key = (weight._version, dtype)
    if _cast.get("ref") is None or _cast["ref"]() is not weight or _cast["key"] != key:
        _cast.update(ref=weakref.ref(weight), key=key, tensor=weight.detach().to(dtype))
    return _cast["tensor"]


class _VocabCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                dtype: torch.dtype, chunk: int) -> torch.Tensor:
        w = _cast_weight(weight, dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk].to(dtype)
            t = targets[start:start + chunk]
            logits = (h @ w.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if grad is not None:
                # d(loss)/d(logits) = softmax - one_hot(target), computed in place in the logits.
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(t.shape[0], device=t.device), t] -= 1
                grad[start:start + chunk] = (probs.to(dtype) @ w).to(hidden.dtype)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None, None


def vocab_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                        dtype: torch.dtype | None = None, chunk_elements: int | None = None) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T` against `targets` (every one a real target),
    projected a chunk of rows at a time; the gradient flows to `hidden` only (`weight` is frozen).

    The projection runs in `dtype` (the model's compute dtype: bf16 where the Trainer runs the
    model under bf16 autocast, as `nn.Linear` then would); None: autocast's dtype where autocast
    is on here, else the weight's. The softmax and the sum are always fp32."""
    device = hidden.device.type
    if dtype is None:
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    if chunk_elements is None:
        chunk_elements = CHUNK_ELEMENTS if device == "cpu" else DEVICE_CHUNK_ELEMENTS
    chunk = max(1, chunk_elements // weight.shape[0])
    with torch.autocast(device, enabled=False):
        return _VocabCrossEntropy.apply(hidden, weight, targets, dtype, chunk)


def completion_loss_sum(model: Any, inputs: dict[str, torch.Tensor], fuse_head_of: Any = None,
                        dtype: torch.dtype | None = None) -> tuple[torch.Tensor, Any, int]:
    """(summed cross-entropy over the answer tokens, the model's outputs, answer tokens).

    Position p predicts token p + 1; the model is asked for outputs from the earliest answer
    position of the batch on (`logits_to_keep`). `fuse_head_of`: the unwrapped model, whose
    vocabulary projection `vocab_cross_entropy` then does on the answer positions only (the
    outputs' `logits` hold hidden states) in `dtype` (see there); None: `cross_entropy` of the
    model's own logits."""
    labels = inputs["labels"]
    width = labels.shape[1]
    first = int((labels[:, 1:] != -100).any(dim=0).nonzero()[0])
    targets = labels[:, first + 1:]
    answer = targets != -100
    forward_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    if fuse_head_of is not None:
        with head_bypassed(fuse_head_of) as head:
            outputs = model(**forward_inputs, logits_to_keep=width - first)
        hidden = outputs.logits[:, :-1][answer]
        loss = vocab_cross_entropy(hidden, head.weight, targets[answer], dtype)
    else:
        outputs = model(**forward_inputs, logits_to_keep=width - first)
        logits = outputs.logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum")
    return loss, outputs, int(answer.sum())
