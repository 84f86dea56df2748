"""The module that gets traced: a Med-K2N model pinned to fixed K sources and N targets.

In eval mode head selection is a one-hot argmin of predicted error and the
acceptance gates are the soft step they were trained with (models.fusion), so
there is no Python branching on tensor values; its loops over
the K-1 auxiliary frames (sequential fusion, paper eqs. 4-11) has a trip count
fixed by K and unrolls into one static graph. The N targets are no loop: they
are flattened into the batch after the encoder, so N stays a symbolic axis
(1..N): a request for one target runs the fusion and heads once, not N times.
Modality identities stay inputs (`src`, `tgt`), and `avail` turns one K-source
graph into every 1..K-source task, so a single K=2/N=4 graph serves all 2->1..4
and 1->1..4 combinations.

A model with a source check (model.source_check) gets a third output,
`source_check [B,K]`: per source slot, the probability that the frame holds
the contrast `src` names it as, so the runtime can tell a user their series
is mislabelled instead of silently fusing it last.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from medk2n.errors import ExportError
from medk2n.export.spec import GraphSpec
from medk2n.models.medk2n import graph_outputs


class FixedKN(nn.Module):
    """`(x, src, tgt, avail) -> (images, scale[, source_check])` with every input required: K sources,
    1..N targets; the third output exists when the model has a source check."""

    def __init__(self, model: nn.Module, k: int, n: int) -> None:
        super().__init__()
        self.model = model
        self.k = k
        self.n = n

    def forward(
        self, x: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor, avail: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        # `> n`, not `!= n`: under torch.export the target count is symbolic, and an equality test
        # would pin it to the traced N.
        if x.shape[1] != self.k or src.shape[1] != self.k or avail.shape[1] != self.k or tgt.shape[1] > self.n:
            raise ExportError(
                f"graph is fixed to K={self.k}, at most N={self.n}; got x {tuple(x.shape)}, tgt {tuple(tgt.shape)}"
            )
        return graph_outputs(self.model, x, src, tgt, avail)


def prepare_for_export(model: nn.Module, spec: GraphSpec) -> tuple[FixedKN, nn.Module]:
    """Return (graph to trace, PyTorch reference with the same outputs).

    The reference wraps an untouched eval-mode copy, so the parity check also
    covers the LoRA merge that only the traced copy receives.
    """
    reference = FixedKN(copy.deepcopy(model).eval(), spec.k, spec.n).eval()
    merged = model.eval()
    merged.merge_lora()
    for param in merged.parameters():
        param.requires_grad_(False)
    return FixedKN(merged, spec.k, spec.n).eval(), reference


def example_inputs(spec: GraphSpec, vocab_size: int, batch: int) -> tuple[torch.Tensor, ...]:
    """Valid inputs of the traced shape: distinct source ids, targets from the rest."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, spec.k, spec.size, spec.size, generator=generator)
    ids = torch.stack([torch.randperm(vocab_size, generator=generator) for _ in range(batch)])
    src = ids[:, : spec.k]
    rest = ids[:, spec.k :]
    tgt = rest[:, torch.arange(spec.n) % rest.shape[1]]
    avail = torch.ones(batch, spec.k)
    return x, src.contiguous(), tgt.contiguous(), avail
