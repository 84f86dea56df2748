"""Low-rank adapters (LoRA) on the Hiera attention projections.

`LoRALinear` *is* an `nn.Linear`: it keeps the base parameters under the names
`weight` and `bias`, so official SAM2 state-dict keys
(`...attn.qkv.weight`) load into an adapted encoder unchanged. The adapter is
`y = W x + b + (alpha / r) * B A x` with `B` zero-initialised, so an untrained
adapter leaves the pretrained encoder exactly as it was. At export, `merge()`
folds `B A` into `W` and drops the adapter, leaving a plain linear layer whose
state-dict keys are SAM2's again.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.hieradet import MultiScaleAttention
from torch import nn


class LoRALinear(nn.Linear):
    """`nn.Linear` plus a rank-`rank` update scaled by `alpha / rank`."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.rank = rank
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @classmethod
    def from_linear(cls, base: nn.Linear, rank: int, alpha: float) -> "LoRALinear":
        """Wrap an existing layer, sharing nothing: its weights are copied in."""
        layer = cls(base.in_features, base.out_features, rank, alpha, bias=base.bias is not None)
        with torch.no_grad():
            layer.weight.copy_(base.weight)
            if base.bias is not None:
                layer.bias.copy_(base.bias)
        return layer.to(base.weight.device, base.weight.dtype)

    @property
    def merged(self) -> bool:
        return self.lora_A is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        return out + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold `scaling * B @ A` into `weight` and remove the adapter parameters."""
        if self.merged:
            return
        self.weight += (self.lora_B @ self.lora_A) * self.scaling
        self.lora_A = None
        self.lora_B = None

    def extra_repr(self) -> str:
        state = "merged" if self.merged else f"rank={self.rank}, scaling={self.scaling:g}"
        return f"{super().extra_repr()}, lora({state})"


def apply_lora(
    module: nn.Module, rank: int, alpha: float, targets: tuple[str, ...] = ("qkv", "proj")
) -> int:
    """Replace the `targets` linears of every Hiera `MultiScaleAttention` in `module`; return how many."""
    count = 0
    for attn in module.modules():
        if not isinstance(attn, MultiScaleAttention):
            continue
        for name in targets:
            base = getattr(attn, name)
            if isinstance(base, nn.Linear) and not isinstance(base, LoRALinear):
                setattr(attn, name, LoRALinear.from_linear(base, rank, alpha))
                count += 1
    return count


def merge_lora(module: nn.Module) -> int:
    """Merge every adapter in `module` in place; return how many were merged."""
    layers = [m for m in module.modules() if isinstance(m, LoRALinear) and not m.merged]
    for layer in layers:
        layer.merge()
    return len(layers)


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (A and B of every unmerged `LoRALinear`)."""
    return [
        p for m in module.modules() if isinstance(m, LoRALinear) and not m.merged for p in (m.lora_A, m.lora_B)
    ]
