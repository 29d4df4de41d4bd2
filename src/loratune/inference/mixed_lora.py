"""Several LoRA adapters in one decode batch, in two stacked matmuls per layer.

peft runs a batch whose rows use different adapters (`adapter_names`) by sub-batching in every
adapted layer: it gathers each adapter's rows, runs its LoRA on them and scatters the result back,
about nine small kernels per adapter and layer. A decode step of SmolLM2 with LoRA on all 210
projections took 111 ms for 8 rows of two adapters against 69 ms for 8 rows of one
(`bench/serve_speed.py` setting, 2-core CPU): the mixed batch paid 60% more for the same matmuls.

Here the adapters of a layer are stacked once (A: [sum of r, in], B: [out, sum of r]), and a step
runs all of them on every row in two matmuls: `result += B((A x) * columns) * scaling`, where
`columns` keeps each row's own adapter's columns of A x and zeroes the others. For the small batches
a server decodes, the extra columns cost less than the gathers and scatters they replace (r is 8-64
against hidden sizes in the hundreds or thousands). The base layer's output is the tensor peft
computes, and each row gets its own adapter's update (the other adapters add exact zeros).
"""

from __future__ import annotations

import functools
from typing import Any

import torch


class MixedLoraForward:
    """The replacement for peft's `Linear._mixed_batch_forward`, shared by every layer of a model:
    the row masks are built once per batch, not once per layer."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._masks: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._base_key: tuple | None = None
        self._only_base = False

    def install(self, model: Any) -> int:
        """Route every plain LoRA Linear layer of `model` through this; returns how many newly routed.

        Call after every adapter load: it also drops each layer's stacked weights, so an adapter
        loaded again under a name it had before is stacked from its new weights."""
        from peft.tuners.lora.layer import Linear

        count = 0
        for module in model.modules():
            if type(module) is Linear:  # quantized and other subclasses keep peft's own path
                module.__dict__.pop("_loratune_stacked", None)
                original = module._mixed_batch_forward
                if getattr(original, "func", None) == self.forward:
                    continue  # installed when an earlier adapter was loaded
                module._mixed_batch_forward = functools.partial(self.forward, module, original)
                count += 1
        return count

    def only_base(self, rows: list[str]) -> bool:
        key = tuple(rows)
        if key != self._base_key:
            self._base_key, self._only_base = key, all(row == "__base__" for row in rows)
        return self._only_base

    @staticmethod
    def stacked(layer: Any) -> tuple[tuple, torch.Tensor, torch.Tensor] | None:
        """Every adapter of `layer` side by side: (layout, A [sum r, in], B [out, sum r]); None when
        an adapter has biases or a variant (DoRA), which peft's own path handles. Rebuilt when the
        layer's adapters change (load, unload)."""
        names = tuple(sorted(layer.lora_A.keys()))
        cached = getattr(layer, "_loratune_stacked", None)
        if cached is not None and cached[0] == names:
            return cached[1]
        stacked = None
        if not any(name in layer.lora_variant or layer.lora_A[name].bias is not None
                   or layer.lora_B[name].bias is not None for name in names):
            layout = tuple((name, layer.lora_A[name].weight.shape[0], float(layer.scaling[name])) for name in names)
            a = torch.cat([layer.lora_A[name].weight for name in names])
            b = torch.cat([layer.lora_B[name].weight for name in names], dim=1)
            stacked = (layout, a, b)
        layer._loratune_stacked = (names, stacked)
        return stacked

    def masks(self, rows: list[str], layout: tuple, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([rows, 1, sum r]: 1 on the columns of each row's own adapter, else 0;
        [rows, 1, 1]: each row's adapter scaling, 0 for rows without an adapter in this layer)."""
        key = (tuple(rows), like.device, like.dtype)
        if key != self._key:
            self._key, self._masks = key, {}
        found = self._masks.get(layout)
        if found is None:
            columns = [[1.0 if row == name else 0.0 for name, r, _ in layout for _ in range(r)] for row in rows]
            scaling = {name: s for name, _, s in layout}
            found = (torch.tensor(columns, dtype=like.dtype, device=like.device).unsqueeze(1),
                     torch.tensor([scaling.get(row, 0.0) for row in rows], dtype=like.dtype,
                                  device=like.device).view(-1, 1, 1))
            self._masks[layout] = found
        return found

    def forward(self, layer: Any, original: Any, x: torch.Tensor, *args: Any, adapter_names: list[str],
                **kwargs: Any) -> torch.Tensor:
        from peft.tuners.lora.layer import VARIANT_KWARG_KEYS

        if self.only_base(adapter_names):  # base rows alone: peft's `disable_adapter` toggles every layer twice
            for key in VARIANT_KWARG_KEYS:
                kwargs.pop(key, None)
            return layer.base_layer(x, *args, **kwargs)
        stacked = self.stacked(layer) if x.dim() == 3 and not layer.training else None
        if stacked is None:  # biases, DoRA, dropout in training: peft's own path
            return original(x, *args, adapter_names=adapter_names, **kwargs)
        for key in VARIANT_KWARG_KEYS:
            kwargs.pop(key, None)
        result = layer.base_layer(x, *args, **kwargs)
        layout, a, b = stacked
        hidden = torch.nn.functional.linear(x.to(a.dtype), a)  # every adapter's A at once
        columns, scaling = self.masks(adapter_names, layout, hidden)
        update = torch.nn.functional.linear(hidden * columns, b) * scaling  # each row: its own B, its scaling
        return result + update.to(result.dtype)
