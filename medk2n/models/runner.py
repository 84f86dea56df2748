"""A PyTorch model behind the runtime's runner interface.

`medk2n-eval` on a checkpoint and the torch-eager row of the latency
benchmark go through exactly the same slice inferer and volume pipeline as the
exported bundles; only the runner differs, so differences are the model's.
"""

from __future__ import annotations

import numpy as np
import torch

from medk2n.models.medk2n import has_source_check
from medk2n.runtime.runners import Runner


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
        args = (tensors["x"], tensors["src"], tensors["tgt"], tensors["avail"])
        if not has_source_check(self.model):
            images, scale = self.model(*args)
            return {"images": images.float().cpu().numpy(), "scale": scale.float().cpu().numpy()}
        out = self.model.synthesize(*args)  # the outputs an exported graph of this model has
        return {"images": out.images.float().cpu().numpy(), "scale": out.scale.float().cpu().numpy(),
                "source_check": torch.sigmoid(out.source_check).float().cpu().numpy()}

    @property
    def providers(self) -> list[str]:
        return [f"torch:{self.device.type}"]
