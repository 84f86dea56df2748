"""The eval-mode tiny models export to ONNX as one static graph and onnxruntime reproduces them.

Uses the `torch.export`-based exporter (`dynamo=True`), the one export/ uses.
"""

import contextlib
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

K, N = 2, 4


@pytest.mark.slow
@pytest.mark.parametrize("arch,ordered", [("medk2n", False), ("medk2n", True), ("unet", False)],
                         ids=["medk2n", "medk2n-base-by-quality", "unet"])
def test_onnx_export_matches_pytorch(make_model, make_inputs, tmp_path, arch, ordered):
    model = make_model(arch=arch, lora_rank=4, base_by_quality=ordered).eval()
    with torch.no_grad():  # as after training: adapters, fusion update and FiLMs are non-zero
        for name, p in model.named_parameters():
            if "lora_B" in name or "shared.out.weight" in name or "film" in name:
                p.normal_(std=0.05)
    x, src, tgt = make_inputs(b=2, k=K, n=N)
    avail = torch.ones(2, K)
    with torch.no_grad():
        reference = model(x, src, tgt, avail)
    model.merge_lora()
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x, src, tgt, avail), str(path), dynamo=True, opset_version=18, external_data=False,
            input_names=["x", "src", "tgt", "avail"], output_names=["images", "scale"],
        )
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert not {node.op_type for node in graph.graph.node} & {"If", "Loop", "Scan"}  # one static graph
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"x": x.numpy(), "src": src.numpy(), "tgt": tgt.numpy(), "avail": avail.numpy()}
    for got, want in zip(session.run(None, feeds), reference):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)

    # The same graph serves other modality combinations and a missing source.
    x2, src2, tgt2 = make_inputs(b=2, k=K, n=N, seed=3)
    avail2 = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    with torch.no_grad():
        want2 = model(x2, src2, tgt2, avail2)
    feeds2 = {"x": x2.numpy(), "src": src2.numpy(), "tgt": tgt2.numpy(), "avail": avail2.numpy()}
    for got, want in zip(session.run(None, feeds2), want2):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)
