"""Quality-driven sequential fusion of the source frames (the SAM2-style frame sequence of the paper).

Like SAM2 reading video frames, the sources are taken one at a time. The
first frame is the *base*: it starts the fused state and no gate weighs it.
By default it is the request's first source (which must be present,
`avail[:, 0] == 1`), so a degraded first source goes straight through. With
`model.base_by_quality` the frames are taken in order of their predicted
quality instead: Q (below) scores each present frame alone, per target, as
the error of the synthesis that frame alone would give, and the best one
becomes the base; the rest follow best first. The fusion then does not
depend on the order the sources were named in, and a degraded source ends up
as a frame the gates can turn down. Each later frame k = 1..K-1 then proposes
an update for every target task j:

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

With `model.source_check`, a trust s_k in (0,1) that frame k holds the
contrast it is named as (gates.SourceCheckNet, supervised by the training
'contrast' artefact; medk2n.SOURCE_CHECK_TEMPERATURE) enters twice: the order
score is Q + (1 - s_k), so a frame that fails the check is fused last whatever
Q says of it, and its acceptance is a_k * s_k. s is detached here: the check is
trained to detect, and the fusion obeys it, rather than the synthesis loss
bending it into one more free gate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
Q_FIT_GRADIENT_SHARE = 0.1  # the share of Q's regression gradient that flows on into the fused state


def scale_gradient(t: torch.Tensor, share: float) -> torch.Tensor:
    """`t` unchanged in the forward pass; its gradient multiplied by `share` in the backward pass."""
    return share * t + (1.0 - share) * t.detach()


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
        """[M,D,h,w], [M,D] -> Q [M,1,h,w]."""
        return torch.sigmoid(self.logits(state, c_task))

    def logits(self, state: torch.Tensor, c_task: torch.Tensor) -> torch.Tensor:
        h = self.act(self.hidden(state) + self.task(c_task).unsqueeze(-1).unsqueeze(-1))
        return self.out(h)


@dataclass
class FusionResult:
    features: torch.Tensor  # [M,D,h,w] task-aware fused state (eq. 3 applied to the final state)
    log_error_map: torch.Tensor  # [M,1,h,w] log Q of the final state (the loss fits Q in log space)
    gates: dict[str, torch.Tensor]  # each [M,K-1] (w_eff: [M,K-1,h,w]), frames in fusion order
    order: torch.Tensor | None = None  # [M,K,K] one-hot: order[m, i, k] = 1 if slot k is the i-th frame fused


class SequentialFusion(nn.Module):
    """Fuse K frames per target task; modules passed in are the ones the ablation switched on."""

    def __init__(
        self,
        dim: int,
        prototypes: TaskPrototypes,
        preweight: PreWeightNet | None,
        threshold: ThresholdNet | None,
        effiweight: EffiWeightNet | None,
        base_by_quality: bool = False,
    ) -> None:
        super().__init__()
        self.base_by_quality = base_by_quality
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
        trust: torch.Tensor | None = None,
    ) -> FusionResult:
        """feats [M,K,D,h,w], src [M,K], tgt [M], avail [M,K], c_task [M,D], c_modal [M,K,D];
        trust [M,K] in (0,1) from SourceCheckNet (None: no check, every frame trusted)."""
        order = None
        if trust is not None:
            trust = trust.detach()
        if self.base_by_quality and feats.shape[1] > 1:
            order = self.quality_order(feats, avail, c_task, trust)
            feats, c_modal = (torch.einsum("mik,mk...->mi...", order, t) for t in (feats, c_modal))
            avail = torch.einsum("mik,mk->mi", order, avail)
            if trust is not None:
                trust = torch.einsum("mik,mk->mi", order, trust)
            src = (order.long() * src.unsqueeze(1)).sum(dim=2)
        state = feats[:, 0]
        trace: dict[str, list[torch.Tensor]] = {}
        for k in range(1, feats.shape[1]):
            gates, candidate = self._propose(state, feats[:, k], src[:, k], tgt, c_task, c_modal[:, k])
            dq = self._score(state, c_task) - self._score(candidate, c_task)
            gates["accept"] = self._accept(dq) * avail[:, k]
            if trust is not None:
                gates["accept"] = gates["accept"] * trust[:, k]
            state = state + gates["accept"].view(-1, 1, 1, 1) * (candidate - state)
            for name, value in gates.items():
                trace.setdefault(name, []).append(value)
        return FusionResult(
            features=self.prototypes(state, tgt),
            # Q's fit to the real error (losses.quality) reaches the state and the task embedding with a tenth
            # of its gradient: at full strength it reshaped the encoder features the source check reads (the
            # check's AUC against a wrong contrast fell from 0.94-0.99 to 0.39-0.85); cut off entirely, the
            # gates died again on the blob test (docs/experiments.md, 2026-12-03, evening).
            log_error_map=F.logsigmoid(self.quality.logits(scale_gradient(state, Q_FIT_GRADIENT_SHARE),
                                                           scale_gradient(c_task, Q_FIT_GRADIENT_SHARE))),
            gates={name: torch.stack(values, dim=1) for name, values in trace.items()},
            order=order,
        )

    def quality_order(self, feats: torch.Tensor, avail: torch.Tensor, c_task: torch.Tensor,
                      trust: torch.Tensor | None = None) -> torch.Tensor:
        """[M,K,K] one-hot permutation putting the frames best predicted quality first, absent ones last.

        Each frame is scored by Q as if it were the fused state alone (the state a one-source request
        ends with, so Q is trained on exactly this), plus 1 - trust when a source check is given. The
        rank is counted with comparisons, not a sort: ties keep slot order, and the graph exports to any
        ONNX opset as plain elementwise ops.
        """
        m, k = feats.shape[:2]
        score = self._score(feats.flatten(0, 1), c_task.repeat_interleave(k, dim=0)).view(m, k)
        score = score.detach() + (1.0 - avail) * 1e3  # absent frames go last; Q in [0,1]
        if trust is not None:
            score = score + (1.0 - trust)
        before = score.unsqueeze(1) < score.unsqueeze(2)  # [M,K(k),K(j)]: frame j ranks before k
        slot = torch.arange(k, device=feats.device)
        tie_before = (score.unsqueeze(1) == score.unsqueeze(2)) & (slot.view(1, 1, k) < slot.view(1, k, 1))
        rank = (before | tie_before).sum(dim=2)  # [M,K] position of each slot
        return (rank.unsqueeze(1) == slot.view(1, k, 1)).to(feats.dtype)

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
