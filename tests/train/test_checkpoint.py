import json

from medk2n.config import preset
from medk2n.train.checkpoint import FORMAT_VERSION, LATER_OPTIONS, read_checkpoint_config


def _write(folder, experiment):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "experiment": experiment}))
    return folder


def test_a_checkpoint_from_before_a_later_term_reads_it_as_off(tmp_path):
    experiment = preset("tiny").to_dict()
    for section, key in LATER_OPTIONS:
        del experiment[section][key]
    cfg, _ = read_checkpoint_config(_write(tmp_path / "old", experiment))
    assert cfg.loss.lesion == 0.0 and cfg.loss.histogram == 0.0 and cfg.train.lesion_oversample == 0.0
    assert cfg.model.encoder_windows == "sam2"  # the padded windows it was trained with
    # Everything the old run did record is kept.
    assert cfg.loss.l1 == experiment["loss"]["l1"] and cfg.train.lr == experiment["train"]["lr"]


def test_a_checkpoint_that_records_the_terms_keeps_their_values(tmp_path):
    experiment = preset("tiny").to_dict()
    experiment["loss"]["histogram"] = 0.7
    cfg, _ = read_checkpoint_config(_write(tmp_path / "new", experiment))
    assert cfg.loss.histogram == 0.7
    assert cfg.model.encoder_windows == "tile"
    assert cfg.loss.lesion == preset("tiny").loss.lesion > 0


def test_a_broken_trainer_state_names_its_file(tmp_path):
    import pytest
    import torch
    from safetensors.torch import save_file

    from medk2n.errors import CheckpointError
    from medk2n.train.checkpoint import TRAINER_STATE, load_trainer_state

    folder = tmp_path / "last"
    folder.mkdir()
    save_file({"optimizer/state/0/exp_avg": torch.ones(3)}, str(folder / "trainer.safetensors"))
    (folder / TRAINER_STATE).write_text('{"step": 3, "optimizer": {"__tensor__": "optimizer/state/0/exp_avg"}}')
    assert load_trainer_state(folder)["step"] == 3
    data = (folder / "trainer.safetensors").read_bytes()
    (folder / "trainer.safetensors").write_bytes(data[: len(data) // 2])  # truncated by a full disk
    with pytest.raises(CheckpointError, match=r"trainer\.safetensors: unreadable trainer state"):
        load_trainer_state(folder)
    (folder / TRAINER_STATE).write_text('{"step": 3,')  # broken JSON
    with pytest.raises(CheckpointError, match=f"{TRAINER_STATE}: unreadable trainer state"):
        load_trainer_state(folder)


def test_a_config_value_of_the_wrong_type_is_a_one_line_error(tmp_path):
    import pytest

    from medk2n.errors import CheckpointError

    experiment = preset("tiny").to_dict()
    experiment["model"]["image_size"] = "sixty-four"
    with pytest.raises(CheckpointError, match=r"model\.image_size: expected int, got 'sixty-four'"):
        read_checkpoint_config(_write(tmp_path / "bad", experiment))
    experiment["model"]["image_size"] = 64
    experiment["train"]["lr"] = True
    with pytest.raises(CheckpointError, match=r"train\.lr: expected float, got True"):
        read_checkpoint_config(_write(tmp_path / "bad2", experiment))


def test_an_edited_vocabulary_is_refused_and_files_share_one_mode(tmp_path):
    import pytest
    import torch

    from medk2n.errors import CheckpointError
    from medk2n.models import build_model
    from medk2n.train.checkpoint import load_checkpoint, save_checkpoint

    cfg = preset("tiny")
    cfg.model.image_size = 32
    torch.manual_seed(0)
    folder = save_checkpoint(tmp_path / "ckpt", build_model(cfg.model), cfg, {"step": 0},
                             trainer_state={"step": 0, "t": torch.ones(2)})
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert len(set(modes.values())) == 1, modes
    load_checkpoint(folder)
    doc = json.loads((folder / "config.json").read_text())
    doc["experiment"]["model"]["modalities"] = doc["experiment"]["model"]["modalities"][::-1]
    (folder / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"config\.json: modality vocabulary .* differs from the one the weights"):
        load_checkpoint(folder)
