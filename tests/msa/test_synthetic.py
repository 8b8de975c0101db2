"""Schema-faithful synthetic MMSA data for MOSI, MOSEI and CH-SIMS, and the published SIMS preset trained on it."""

import json
import math

import numpy as np
import pytest
import torch

from eca_core.runner.config import from_dict
from eca_core.errors import InputError
from eca_msa.data import from_mmsa_dict
from eca_msa.synthetic import SyntheticConfig, generate_mmsa
from eca_msa.train import MSATrainConfig, train_one

SMALL_MODEL = {"dim": 32, "heads": 2, "dim_head": 16, "mlp_dim": 32, "hyper_heads": 2, "hyper_dim_head": 16}


@pytest.mark.parametrize("dataset, splits, text, audio, vision", [
    ("mosi", (1284, 229, 686), (50, 768), (375, 5), (500, 20)),
    ("mosei", (16326, 1871, 4659), (50, 768), (500, 74), (500, 35)),
    ("sims", (1368, 456, 457), (39, 768), (400, 33), (55, 709)),
])
def test_defaults_follow_each_data_sets_release(dataset, splits, text, audio, vision):
    cfg = SyntheticConfig(dataset=dataset)
    assert (cfg.n_train, cfg.n_valid, cfg.n_test) == splits
    assert (cfg.text_len, cfg.text_dim, cfg.audio_len, cfg.audio_dim, cfg.vision_len, cfg.vision_dim) == (*text, *audio, *vision)


@pytest.fixture(scope="module")
def tiny_sims():
    return generate_mmsa(SyntheticConfig(dataset="sims", n_train=16, n_valid=8, n_test=8, seed=1))


def test_sims_fixture_has_the_release_schema(tiny_sims):
    train = tiny_sims["train"]
    assert train["text"].shape == (16, 39, 768) and train["text_bert"].shape == (16, 3, 39)
    assert train["audio"].shape == (16, 400, 33) and train["vision"].shape == (16, 55, 709)
    for key in ("regression_labels", "regression_labels_T", "regression_labels_A", "regression_labels_V"):
        y = np.concatenate([tiny_sims[s][key] for s in ("train", "valid", "test")])
        assert y.dtype == np.float32 and np.abs(y).max() <= 1.0
        np.testing.assert_allclose(y / 0.2, np.round(y / 0.2), atol=1e-4)  # averages of five ratings
    data = from_mmsa_dict(tiny_sims, "sims.pkl")
    assert data.shapes() == dict(text_len=39, text_dim=768, audio_len=400, audio_dim=33, vision_len=55, vision_dim=709)


def test_mosei_fixture_has_the_release_schema():
    d = generate_mmsa(SyntheticConfig(dataset="mosei", n_train=6, n_valid=4, n_test=4, seed=2))
    assert d["valid"]["audio"].shape == (4, 500, 74) and d["valid"]["vision"].shape == (4, 500, 35)
    y = np.concatenate([d[s]["regression_labels"] for s in ("train", "valid", "test")])
    assert np.abs(y).max() <= 3.0
    np.testing.assert_allclose(y * 3, np.round(y * 3), atol=1e-4)  # averages of three ratings


def test_labels_outside_the_data_sets_range_are_refused(tiny_mmsa, tmp_path):
    cfg = from_dict(MSATrainConfig, {"preset": "almt-sims", "options": ["frozen-text"], "epochs": 1})
    with pytest.raises(InputError, match=r"labels span \[.*\] but sims labels lie in \[-1, 1\]; set dataset"):
        train_one(from_mmsa_dict(tiny_mmsa, "mosi_like.pkl"), cfg, "almt", 0, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_published_sims_preset_fine_tunes_a_local_bert(tiny_sims, tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                         max_position_embeddings=64)).save_pretrained(tmp_path / "bert")
    cfg = from_dict(MSATrainConfig, {"preset": "almt-sims", "epochs": 3, "batch_size": 8, "seeds": [0], "progress_bar": False,
                                  "model": SMALL_MODEL | {"text_model": str(tmp_path / "bert")}})
    result = train_one(from_mmsa_dict(tiny_sims, "sims.pkl"), cfg, "almt", 0, tmp_path / "run", {"accelerator": "cpu", "devices": 1})
    lrs = [h["lr"] for h in result["history"]]
    # ALMT's schedule for 3 epochs: warm-up from 0 over 0.3 epochs, then cosine with T_max = 2.7 epochs
    assert lrs == pytest.approx([0.0, 1e-4, 0.5e-4 * (1 + math.cos(math.pi / 2.7))], abs=1e-9)
    assert "lowest validation Loss (MMSA's validation loss" in result["selection"]
    assert set(result["test"]) >= {"Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"}
    assert result["model"]["fusion_depth"] == 4 and not result["model"]["mask_padding"]
    state = torch.load(tmp_path / "run" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("model.bert.encoder.") for k in state)  # the fine-tuned BERT is part of the checkpoint
    again = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert again["best_epoch"] == int(np.argmin([h["Loss"] for h in again["history"]]))


def test_sims_shaped_data_under_a_mosi_preset_is_warned_about(tiny_sims):
    from eca_msa.train import check_data

    cfg = from_dict(MSATrainConfig, {"options": ["frozen-text"]})
    with pytest.warns(UserWarning, match=r"audio 33 / vision 709 features look like sims, but dataset is mosi"):
        check_data(from_mmsa_dict(tiny_sims, "sims.pkl"), cfg)
