"""Bad checkpoints and impossible requests end in one clear error and write nothing."""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from medk2n.errors import CheckpointError, ExportError
from medk2n.export.exporter import ExportOptions, export_bundle
from medk2n.export.source import check_task_size


def _export(checkpoint, tmp_path, **kw):
    out = tmp_path / "out" / "bundle"
    options = ExportOptions(checkpoint=checkpoint, out=out, **{"k": 2, "n": 4, **kw})
    try:
        export_bundle(options)
    finally:
        assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.fixture
def ckpt_copy(tiny_checkpoint, tmp_path):
    return shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        _export(tmp_path / "nope", tmp_path)


def test_missing_weights(ckpt_copy, tmp_path):
    (ckpt_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing weights"):
        _export(ckpt_copy, tmp_path)


def test_corrupt_weights(ckpt_copy, tmp_path):
    (ckpt_copy / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        _export(ckpt_copy, tmp_path)


def test_weights_with_wrong_keys(ckpt_copy, tmp_path):
    state = load_file(str(ckpt_copy / "model.safetensors"))
    removed = sorted(state)[-1]
    del state[removed]
    state["stray.weight"] = torch.zeros(1)
    save_file(state, str(ckpt_copy / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"weights do not match.*{re.escape(removed)}.*stray\.weight"):
        _export(ckpt_copy, tmp_path)


def test_unreadable_config(ckpt_copy, tmp_path):
    (ckpt_copy / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="config.json: unreadable"):
        _export(ckpt_copy, tmp_path)


def test_config_with_unknown_keys(ckpt_copy, tmp_path):
    doc = json.loads((ckpt_copy / "config.json").read_text())
    doc["experiment"]["model"]["bogus"] = 1
    (ckpt_copy / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="unknown keys \\['bogus'\\]"):
        _export(ckpt_copy, tmp_path)


def test_task_larger_than_vocabulary(tiny_checkpoint, tmp_path):
    with pytest.raises(ExportError, match="needs 8 distinct modalities but the checkpoint's vocabulary has 7"):
        _export(tiny_checkpoint, tmp_path, k=2, n=6)


@pytest.mark.parametrize("k, n", [(0, 1), (1, 0)])
def test_task_size_must_be_positive(k, n, tmp_path):
    with pytest.raises(ExportError, match="at least 1"):
        check_task_size(["t1", "t2"], k, n, tmp_path)


@pytest.mark.parametrize(
    "kw, message",
    [(dict(engine="tensorrt"), "--engine"), (dict(precision="int4"), "--precision"),
     (dict(calib_slices=0), "--calib-slices"), (dict(batch="2:1:4"), "--batch")],
)
def test_bad_options_fail_before_loading(kw, message, tmp_path):
    with pytest.raises(ExportError, match=message):
        _export(tmp_path / "never-read", tmp_path, **kw)
