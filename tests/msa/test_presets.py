"""Presets: the published ALMT per data set (parameter count, forward), options, explicit keys, provenance."""

import copy

import pytest
import torch

from eca_core.runner.config import from_dict
from eca_core.errors import ConfigError
from eca_msa.almt import ALMT, Attention
from eca_msa.datasets import DATASETS
from eca_msa.train import MSATrainConfig, setting_configs

MOSI_SHAPES = dict(text_len=50, text_dim=768, audio_len=375, audio_dim=5, vision_len=500, vision_dim=20)
# The reference ALMT (Haoyu-ha/ALMT models/almt.py, configs/mosi.yaml) has 2,603,649 parameters besides its BERT.
PUBLISHED_MOSI_PARAMS = 2_603_649


@pytest.fixture(scope="module")
def tiny_bert_768(tmp_path_factory):
    """A 1-layer random BERT with BERT-base's hidden size 768 (so the text projection is the published 768 → 128)."""
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("bert") / "tiny_bert_768"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=64, hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(path)
    return path


def _published(preset: str, bert_path, setting: str = "almt") -> ALMT:
    cfg = from_dict(MSATrainConfig, {"preset": preset, "model": {"text_model": str(bert_path)}})
    spec = DATASETS[cfg.dataset]
    shapes = dict(text_len=spec.text[0], text_dim=spec.text[1], audio_len=spec.audio[0], audio_dim=spec.audio[1],
                  vision_len=spec.vision[0], vision_dim=spec.vision[1])
    model_cfg, _ = setting_configs(cfg, setting, shapes)
    torch.manual_seed(0)
    return ALMT(model_cfg).eval()


def test_published_mosi_preset_has_the_reference_parameter_count(tiny_bert_768):
    model = _published("almt-mosi", tiny_bert_768)
    own = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("bert."))
    print(f"published ALMT (MOSI) parameters without BERT: {own:,}")
    assert own == PUBLISHED_MOSI_PARAMS
    cfg = model.cfg
    assert cfg.fusion_depth == 2 and not cfg.mask_padding and cfg.video_attention.mode == "softmax"
    attn = model.video_stream.attn.attn
    assert attn.q_proj.bias is None and attn.k_proj.bias is None and attn.v_proj.bias is None  # as published
    assert model.bert is not None and model.proj_text.in_features == 768


def test_published_preset_forward_equals_plain_softmax_almt(tiny_bert_768):
    model = _published("almt-mosi", tiny_bert_768)
    plain = copy.deepcopy(model)
    eca_attn = model.video_stream.attn.attn
    softmax_attn = Attention(128, eca_attn.num_heads, eca_attn.head_dim)
    for ours, theirs in ((eca_attn.q_proj, softmax_attn.to_q), (eca_attn.k_proj, softmax_attn.to_k),
                         (eca_attn.v_proj, softmax_attn.to_v), (eca_attn.out_proj, softmax_attn.to_out[0])):
        theirs.load_state_dict(ours.state_dict())
    plain.video_stream.attn.attn = softmax_attn
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 64, (3, 50), generator=g)
    mask = (torch.arange(50)[None] < torch.tensor([50, 20, 9])[:, None]).long()
    batch = {"text_bert": torch.stack([ids * mask, mask, torch.zeros_like(ids)], 1).float(),
             "text": torch.zeros(3, 50, 768), "audio": torch.randn(3, 375, 5, generator=g),
             "vision": torch.randn(3, 500, 20, generator=g),
             # lengths are present in the batch, but the published model attends to the padding anyway
             "audio_mask": torch.arange(375)[None] < 100, "vision_mask": torch.arange(500)[None] < 200}
    with torch.no_grad():
        ours, ref = model(batch), plain(batch)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    batch["vision"][:, 300:] += 5.0  # padding frames change the published model's output
    with torch.no_grad():
        assert (model(batch) - ours).abs().max() > 1e-4


def test_mosei_and_sims_presets_follow_the_published_configs():
    mosei = from_dict(MSATrainConfig, {"preset": "almt-mosei"})
    sims = from_dict(MSATrainConfig, {"preset": "almt-sims"})
    assert (mosei.dataset, mosei.model.fusion_depth, mosei.model.text_model) == ("mosei", 4, "bert-base-uncased")
    assert (sims.dataset, sims.model.fusion_depth, sims.model.text_model) == ("sims", 4, "bert-base-chinese")
    for cfg in (mosei, sims, MSATrainConfig()):
        assert (cfg.epochs, cfg.patience, cfg.lr, cfg.weight_decay, cfg.batch_size) == (200, 32, 1e-4, 1e-4, 64)
        assert cfg.schedule == "warmup-cosine" and cfg.select_metric == "Loss" and not cfg.model.mask_padding
        assert (cfg.model.dim, cfg.model.tokens, cfg.model.hyper_depth, cfg.model.hyper_dim_head) == (128, 8, 3, 16)


def test_options_then_explicit_keys_are_laid_over_the_preset():
    cfg = from_dict(MSATrainConfig, {"preset": "almt-sims", "options": ["frozen-text", "mask-padding", "select-mae"],
                                  "epochs": 30, "model": {"dim": 64}})
    assert cfg.model.text_model is None and cfg.model.mask_padding and cfg.select_metric == "MAE"
    assert cfg.model.fusion_depth == 4 and cfg.dataset == "sims"  # the rest of the preset stays
    assert cfg.epochs == 30 and cfg.model.dim == 64
    line = cfg.provenance()
    assert line.startswith("preset `almt-sims`") and "`frozen-text`" in line and "`mask-padding`" in line
    assert "also set: epochs=30, model.dim=64" in line
    # an explicit key beats an option
    assert from_dict(MSATrainConfig, {"options": ["select-mae"], "select_metric": "Corr"}).select_metric == "Corr"
    # re-reading a written config gives the same config
    from eca_core.runner.config import to_dict

    assert from_dict(MSATrainConfig, to_dict(cfg)) == cfg
    assert MSATrainConfig().provenance() == "preset `almt-mosi` (published ALMT on CMU-MOSI (fusion depth 2, bert-base-uncased)); no options"


def test_unknown_preset_or_option_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"preset 'almt-iemocap' is not one of \['almt-mosi', 'almt-mosei', 'almt-sims'\]"):
        from_dict(MSATrainConfig, {"preset": "almt-iemocap"})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['fast'\]"):
        from_dict(MSATrainConfig, {"options": ["fast"]})


def test_train_help_lists_presets_and_options(capsys):
    from eca_msa.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--preset" in out and "almt-mosei" in out and "--options" in out and "frozen-text" in out
