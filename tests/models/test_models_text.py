import sys

import torch

from medk2n.config import DEFAULT_MODALITIES, preset
from medk2n.models.text import describe, modality_text_embeddings


def test_real_sentence_embeddings_of_the_vocabulary():
    emb = modality_text_embeddings(list(DEFAULT_MODALITIES))
    assert emb.shape == (7, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(7), atol=1e-5, rtol=0)
    cos = emb @ emb.t()
    assert cos.fill_diagonal_(0).max() < 0.98  # seven different descriptions, seven different vectors
    assert torch.equal(modality_text_embeddings(list(DEFAULT_MODALITIES)), emb)  # cached, same result
    assert "torchvision" not in sys.modules or sys.modules["torchvision"] is not None


def test_vocabulary_order_and_unknown_modalities():
    default = modality_text_embeddings(list(DEFAULT_MODALITIES))
    custom = modality_text_embeddings(["adc", "t1", "swi"])
    torch.testing.assert_close(custom[0], default[6])
    torch.testing.assert_close(custom[1], default[0])
    assert describe("swi") == "swi MRI contrast"


def test_build_model_stores_the_embeddings_as_a_buffer():
    import warnings

    from medk2n.models import build_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(preset("tiny").model)
    torch.testing.assert_close(model.text_embeddings, modality_text_embeddings(list(DEFAULT_MODALITIES)))
    assert "text_embeddings" in model.state_dict()
