"""A PyTorch model behind the runtime's runner interface.

`medk2n-eval` on a checkpoint and the torch-eager row of the latency
benchmark go through exactly the same slice inferer and volume pipeline as the
exported bundles; only the runner differs, so differences are the model's.
"""

from __future__ import annotations

import numpy as np
import torch

from medk2n.models.medk2n import graph_outputs
from medk2n.runtime.bundle import OUTPUT_NAMES, SOURCE_CHECK
from medk2n.runtime.runners import Runner

GRAPH_OUTPUT_NAMES = (*OUTPUT_NAMES, SOURCE_CHECK)  # in the order graph_outputs returns them


class TorchRunner(Runner):
    def __init__(self, model: torch.nn.Module, device: str = "cpu", name: str = "torch-eager"):
        super().__init__(name)
        self.model = model
        self.device = torch.device(device)

    def _activate(self) -> None:
        self.model.to(self.device).eval()

    def _deactivate(self) -> None:
        pass

    @torch.inference_mode()
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in feed.items()}
        outputs = graph_outputs(self.model, tensors["x"], tensors["src"], tensors["tgt"], tensors["avail"])
        return {name: tensor.float().cpu().numpy() for name, tensor in zip(GRAPH_OUTPUT_NAMES, outputs)}

    @property
    def providers(self) -> list[str]:
        return [f"torch:{self.device.type}"]
