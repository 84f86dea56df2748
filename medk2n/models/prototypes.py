"""Task prototypes: the paper's "task memory" (eq. 2-3), named for what it is.

Each target modality j owns a learnable bank M_j in R^{D x S} (S slots). A
feature map reads it by attention, pixel by pixel:
    m_j = softmax(q(x) k(M_j)^T / sqrt(D)) v(M_j)        (eq. 2)
    x_task-aware = x + m_j                                (eq. 3)
so the same source features become specific to what is being synthesised.
Nothing writes the bank at run time or from the fusions: it is a set of
per-target prototypes learnt by gradient descent like any weight. A written
memory (slots updated from accepted fused states) would make a prediction
depend on the cases served before it, which a deployed synthesis must not,
so the name says what the module does.
The bank for each sample is gathered by target id, which keeps the target an
input of the exported graph rather than a constant.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TaskPrototypes(nn.Module):
    def __init__(self, num_tasks: int, dim: int, slots: int) -> None:
        super().__init__()
        self.bank = nn.Parameter(torch.randn(num_tasks, slots, dim) * dim**-0.5)
        self.query = nn.Conv2d(dim, dim, kernel_size=1)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Conv2d(dim, dim, kernel_size=1)
        self.scale = 1.0 / math.sqrt(dim)

    def read(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """m_j (eq. 2): x [M,D,h,w], task [M] target ids -> readout [M,D,h,w]."""
        bank = self.bank[task]  # [M,S,D]
        q = self.query(x).flatten(2).transpose(1, 2)  # [M,hw,D]
        attn = torch.softmax(torch.bmm(q, self.key(bank).transpose(1, 2)) * self.scale, dim=-1)  # [M,hw,S]
        read = torch.bmm(attn, self.value(bank)).transpose(1, 2)  # [M,D,hw]
        return self.out(read.reshape(x.shape))

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """x_task-aware (eq. 3)."""
        return x + self.read(x, task)
