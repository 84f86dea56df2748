"""Training and inference on a CUDA GPU (skipped where PyTorch sees none, as on CI).

Run on a GPU machine with `pytest tests/train/test_cuda.py`; the results of
the last such run are in benchmarks/results/gpu_tests-*.log (docs/deployment.md).
"""

import numpy as np
import pytest
import torch

from medk2n.config import preset
from medk2n.models import build_model
from medk2n.train.checkpoint import load_checkpoint
from medk2n.train.loop import train
from test_loop import tiny_cfg

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _cfg(amp: str):
    cfg = tiny_cfg()
    cfg.train.val_every = 3
    cfg.train.warmup_steps = 1
    cfg.train.amp = amp
    return cfg


@pytest.mark.parametrize("amp", ["bf16", "fp16", "none"])
def test_cuda_training_with_mixed_precision_writes_a_cpu_loadable_checkpoint(phantom, tmp_path, amp):
    result = train(_cfg(amp), phantom, tmp_path / "run", max_steps=6, device="cuda", progress=False)
    losses = [row["loss"] for row in result.history]
    assert result.step == 6 and np.all(np.isfinite(losses))
    model, cfg, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last")
    assert meta["step"] == 6 and cfg.train.amp == amp
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in model.parameters())


def test_cuda_resume_continues_the_schedule(phantom, tmp_path):
    cfg = _cfg("none")
    part = train(cfg, phantom, tmp_path / "run", max_steps=6, stop_at_step=3, device="cuda", progress=False)
    resumed = train(cfg, phantom, tmp_path / "run", max_steps=6, resume=True, device="cuda", progress=False)
    assert part.step == 3 and resumed.history[0]["step"] == 4 and resumed.step == 6


def test_cuda_forward_matches_cpu():
    cfg = preset("tiny").model
    torch.manual_seed(0)
    model = build_model(cfg, pretrained=False).eval()
    x = torch.rand(2, 2, cfg.image_size, cfg.image_size)
    src, tgt, avail = torch.tensor([[0, 3], [1, 2]]), torch.tensor([[2, 4], [5, 0]]), torch.ones(2, 2)
    with torch.inference_mode():
        cpu_images, cpu_conf = model(x, src, tgt, avail)
        model.cuda()
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        gpu_images, gpu_conf = model(x.cuda(), src.cuda(), tgt.cuda(), avail.cuda())
    torch.testing.assert_close(gpu_images.cpu(), cpu_images, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(gpu_conf.cpu(), cpu_conf, atol=2e-4, rtol=1e-3)
