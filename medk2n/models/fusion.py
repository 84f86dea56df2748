"""Quality-driven sequential fusion of the source frames (the SAM2-style frame sequence of the paper).

Like SAM2 reading video frames, the sources are taken one at a time. Slot 0
is the *base* frame and must be a present source (`avail[:, 0] == 1`); it
starts the fused state. Each auxiliary slot k = 1..K-1 then proposes an
update for every target task j:

    candidate = SharedEnc(f, w_eff * x_task-aware(F_k), c_task)
    dQ        = Q(f) - Q(candidate)       predicted error before minus after
    a_k       = avail_k * sigmoid(dQ / T) soft step, in training and in eval
    f        <- f + a_k * (candidate - f)

so a frame is kept only as far as it does not make the predicted quality
worse, and an absent source (avail 0) is ignored exactly: a K=2 model serves
one source. The loop runs over the static K, with no Python branching on
tensor values, so tracing unrolls it into one graph for fixed K.

Which weight w_eff is applied follows the ablation ladder (config.ABLATIONS):
B1 none (1), B2 PreWeightNet's w, B3 w thresholded by ThresholdNet's tau,
B4/B5 EffiWeightNet's spatial map, filtered by the same threshold step as B3
(tau is the bar w has to clear, not only one more input of EffiWeightNet).
The share of the frame the fusion takes, accept x w_eff, also weighs its
pixels in the decoder's fine-scale paths (heads.mix_slots), so a frame the
gates turn down does not leak back there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medk2n.models.blocks import FiLM
from medk2n.models.gates import (
    EffiWeightNet,
    PreWeightNet,
    ThresholdNet,
    conflict_statistics,
    threshold_filter,
    threshold_weight,
)
from medk2n.models.prototypes import TaskPrototypes

# Width of the soft acceptance step in units of predicted mean absolute error
# (intensities are in [0,1]): a 0.02 predicted improvement gives ~0.9.
QUALITY_GATE_TEMPERATURE = 0.01


class SharedEncoder(nn.Module):
    """SharedEnc(f, weighted aux, c_task): a residual update of the fused state, conditioned on the task.

    Nothing normalises after the weighted auxiliary features enter, so w_eff
    scales their contribution as it says (a norm there would undo it). The
    output projection starts at zero, so an untrained block proposes no change.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mix = nn.Conv2d(2 * dim, dim, kernel_size=1)
        self.spatial = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.film = FiLM(dim, dim)
        self.act = nn.GELU()
        self.out = nn.Conv2d(dim, dim, kernel_size=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, state: torch.Tensor, aux: torch.Tensor, c_task: torch.Tensor) -> torch.Tensor:
        h = self.spatial(self.mix(torch.cat([state, aux], dim=1)))
        return state + self.out(self.act(self.film(h, c_task)))


class QualityEstimator(nn.Module):
    """Q: predicted per-pixel absolute error (in [0,1]) of the synthesis a fused state would give.

    Trained against the real error of the final synthesis (losses.quality);
    its spatial mean is the quality score compared before/after each frame.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.hidden = nn.Conv2d(dim, dim, kernel_size=1)
        self.task = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.out = nn.Conv2d(dim, 1, kernel_size=1)

    def forward(self, state: torch.Tensor, c_task: torch.Tensor) -> torch.Tensor:
        """[M,D,h,w], [M,D] -> [M,1,h,w]."""
        h = self.act(self.hidden(state) + self.task(c_task).unsqueeze(-1).unsqueeze(-1))
        return torch.sigmoid(self.out(h))


@dataclass
class FusionResult:
    features: torch.Tensor  # [M,D,h,w] task-aware fused state (eq. 3 applied to the final state)
    error_map: torch.Tensor  # [M,1,h,w] Q of the final state
    gates: dict[str, torch.Tensor]  # each [M,K-1] (w_eff: [M,K-1,h,w])


class SequentialFusion(nn.Module):
    """Fuse K frames per target task; modules passed in are the ones the ablation switched on."""

    def __init__(
        self,
        dim: int,
        prototypes: TaskPrototypes,
        preweight: PreWeightNet | None,
        threshold: ThresholdNet | None,
        effiweight: EffiWeightNet | None,
    ) -> None:
        super().__init__()
        self.prototypes = prototypes
        self.preweight = preweight
        self.threshold = threshold
        self.effiweight = effiweight
        self.shared = SharedEncoder(dim)
        self.quality = QualityEstimator(dim)

    def forward(
        self,
        feats: torch.Tensor,
        src: torch.Tensor,
        tgt: torch.Tensor,
        avail: torch.Tensor,
        c_task: torch.Tensor,
        c_modal: torch.Tensor,
    ) -> FusionResult:
        """feats [M,K,D,h,w], src [M,K], tgt [M], avail [M,K], c_task [M,D], c_modal [M,K,D]."""
        state = feats[:, 0]
        trace: dict[str, list[torch.Tensor]] = {}
        for k in range(1, feats.shape[1]):
            gates, candidate = self._propose(state, feats[:, k], src[:, k], tgt, c_task, c_modal[:, k])
            dq = self._score(state, c_task) - self._score(candidate, c_task)
            gates["accept"] = self._accept(dq) * avail[:, k]
            state = state + gates["accept"].view(-1, 1, 1, 1) * (candidate - state)
            for name, value in gates.items():
                trace.setdefault(name, []).append(value)
        return FusionResult(
            features=self.prototypes(state, tgt),
            error_map=self.quality(state, c_task),
            gates={name: torch.stack(values, dim=1) for name, values in trace.items()},
        )

    def _propose(self, state, aux, aux_src, tgt, c_task, c_modal) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Gate values for one auxiliary frame ([M] or [M,h,w]) and the fused state it would give."""
        aux_task = self.prototypes(aux, tgt)
        memory_read = self.prototypes.read(state, tgt)
        gates: dict[str, torch.Tensor] = {}
        w = aux_task.new_ones(aux_task.shape[0], 1)  # B1 has no PreWeightNet
        if self.preweight is not None:
            w = self.preweight(aux_task, memory_read)
            gates["w_global"] = w[:, 0]
        tau = None
        if self.threshold is not None:
            tau = self.threshold(w, memory_read, conflict_statistics(state, aux_task), aux_src, tgt)
            gates["tau"] = tau[:, 0]
        if self.effiweight is not None:
            w_eff = self.effiweight(w, tau, memory_read, aux_task, c_task, c_modal)
            if tau is not None:  # ThresholdNet filters here as in B3: below its bar the frame fades out
                w_eff = w_eff * threshold_filter(w, tau).view(-1, 1, 1, 1)
        elif tau is not None:
            w_eff = threshold_weight(w, tau).view(-1, 1, 1, 1)
        else:
            w_eff = w.view(-1, 1, 1, 1)
        gates["w_eff"] = w_eff.expand(-1, 1, *aux.shape[2:])[:, 0]
        return gates, self.shared(state, w_eff * aux_task, c_task)

    def _score(self, state: torch.Tensor, c_task: torch.Tensor) -> torch.Tensor:
        """Predicted mean absolute error of a state -> [M]."""
        return self.quality(state, c_task).mean(dim=(1, 2, 3))

    def _accept(self, dq: torch.Tensor) -> torch.Tensor:
        """The soft step in training and in eval: the gate that is evaluated and exported is the one that
        was trained. The paper's hard step (dQ >= 0) turned near-ties of a gate trained soft into 0 or 1
        at random: on the blob test it rejected an informative frame outright."""
        return torch.sigmoid(dq / QUALITY_GATE_TEMPERATURE)
