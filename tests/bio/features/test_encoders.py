"""Frozen timm encoders: shapes, token-grid pooling, normalisation, local weights files, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eca_bio.features.encoders import EncoderConfig, EncoderError, build_encoder, create_model, resolve_normalisation

from tests.bio.conftest import TINY_ENCODER


def tiny(**over) -> EncoderConfig:
    d = {**TINY_ENCODER, **over}
    return EncoderConfig(d["name"], d["pretrained"], d.get("weights"), dict(d["kwargs"]), d.get("seed", 0))


def test_vit_pooled_and_tokens():
    enc, norm, info = build_encoder(tiny(), 32)
    assert info == {"feature_dim": 64, "num_tokens": 4}  # 32 px / 16 px patches -> 2 x 2 tokens
    x = torch.randn(3, 3, 32, 32)
    pooled, tokens = enc(x)
    assert pooled.shape == (3, 64) and tokens.shape == (3, 4, 64)
    feats = enc.model.forward_features(x)
    torch.testing.assert_close(pooled, feats[:, 0])                 # CLS token (after the final norm)
    torch.testing.assert_close(tokens, feats[:, enc.num_prefix_tokens:])
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not enc.model.training


def test_token_grid_pooling_matches_average_pooling():
    cfg = tiny(kwargs={**TINY_ENCODER["kwargs"], "img_size": 64})
    full, _, info_full = build_encoder(cfg, 64)
    pooled_enc, _, info = build_encoder(cfg, 64, token_grid=2)
    assert info_full["num_tokens"] == 16 and info["num_tokens"] == 4
    x = torch.randn(2, 3, 64, 64)
    _, tokens = full(x)
    _, grid = pooled_enc(x)
    ref = F.avg_pool2d(tokens.transpose(1, 2).reshape(2, 64, 4, 4), 2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(grid, ref)


def test_cnn_encoder_tokens_are_feature_map_positions():
    enc, _, info = build_encoder(EncoderConfig("resnet18", pretrained=False), 64, token_grid=1)
    pooled, tokens = enc(torch.randn(2, 3, 64, 64))
    assert info == {"feature_dim": 512, "num_tokens": 1}
    torch.testing.assert_close(tokens[:, 0], pooled)  # global average == 1 x 1 grid of the feature map


def test_random_init_is_seeded():
    a, _, _ = build_encoder(tiny(), 32)
    b, _, _ = build_encoder(tiny(), 32)
    c, _, _ = build_encoder(tiny(seed=1), 32)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(a(x)[0], b(x)[0])
    assert not torch.allclose(a(x)[0], c(x)[0])


def test_normalisation_is_the_encoders_own():
    from timm.data import resolve_data_config

    model = create_model(EncoderConfig("resnet18", pretrained=False))
    norm = resolve_normalisation(model)
    dc = resolve_data_config({}, model=model)
    assert norm.mean == tuple(dc["mean"]) and norm.std == tuple(dc["std"])
    img = np.full((4, 4, 3), 255, dtype=np.uint8)
    np.testing.assert_allclose(norm(img)[:, 0, 0].numpy(), (1 - np.array(dc["mean"])) / np.array(dc["std"]), rtol=1e-6)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file(tmp_path, suffix):
    source = create_model(tiny(seed=7))
    path = tmp_path / f"enc{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    enc, _, _ = build_encoder(tiny(seed=0, weights=str(path)), 32)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(enc(x)[0], source.forward_head(source.forward_features(x), pre_logits=True))


def test_weights_that_do_not_fit(tmp_path):
    other = create_model(tiny(kwargs={**TINY_ENCODER["kwargs"], "embed_dim": 32}))
    path = tmp_path / "wrong.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(EncoderError, match="wrong.pth"):
        build_encoder(tiny(weights=str(path)), 32)
    with pytest.raises(EncoderError, match="not found"):
        build_encoder(tiny(weights=str(tmp_path / "missing.safetensors")), 32)


def test_unknown_model_and_wrong_input_size():
    with pytest.raises(EncoderError, match="not a timm model"):
        build_encoder(EncoderConfig("no_such_model_xyz", pretrained=False), 32)
    with pytest.raises(EncoderError, match="img_size"):
        build_encoder(tiny(), 48)  # a ViT built for 32 px


def test_hub_download_failure_names_the_model(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(EncoderError) as err:
        build_encoder(EncoderConfig("hf-hub:MahmoodLab/UNI", pretrained=True), 224)
    assert "hf-hub:MahmoodLab/UNI" in str(err.value) and "pretrained=false" in str(err.value)


def test_transformers_vit_encoder_from_a_local_folder(tmp_path):
    """A Phikon-class encoder (transformers ViTModel) from a folder the test writes: CLS pooled, patch tokens, its processor."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    from eca_bio.features.encoders import EncoderConfig, build_encoder

    torch.manual_seed(0)
    folder = tmp_path / "tiny_phikon"
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                       patch_size=8), add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25], size={"height": 32, "width": 32}).save_pretrained(folder)
    encoder, norm, info = build_encoder(EncoderConfig(name=str(folder), backend="transformers"), patch_px=32, token_grid=2)
    assert info == {"feature_dim": 32, "num_tokens": 4} and norm.mean == (0.5, 0.5, 0.5) and norm.std == (0.25, 0.25, 0.25)
    x = torch.randn(3, 3, 32, 32)
    pooled, tokens = encoder(x)
    hidden = ViTModel.from_pretrained(folder)(pixel_values=x).last_hidden_state
    torch.testing.assert_close(pooled, hidden[:, 0])  # the CLS token, as Phikon's users take it
    grid = hidden[:, 1:].transpose(1, 2).reshape(3, 32, 4, 4)
    torch.testing.assert_close(tokens, torch.nn.functional.adaptive_avg_pool2d(grid, 2).flatten(2).transpose(1, 2))
    # a larger patch than the model's image size: positions are interpolated, as timm's dynamic_img_size does
    assert build_encoder(EncoderConfig(name=str(folder), backend="transformers"), patch_px=64)[2]["num_tokens"] == 64
    random, _, _ = build_encoder(EncoderConfig(name=str(folder), backend="transformers", pretrained=False, seed=1), patch_px=32)
    assert not torch.allclose(random(x)[0], pooled)  # pretrained=False: same architecture, random weights


def test_the_backends_table_is_the_configs_choice():
    import typing

    from eca_bio.configs import EncoderConfig as Cfg
    from eca_bio.features.encoders import BACKENDS

    assert set(typing.get_args(typing.get_type_hints(Cfg)["backend"])) == set(BACKENDS)
    with pytest.raises(EncoderError, match="encoder.backend 'onnx': choose from"):
        create_model(Cfg("x", backend="onnx"))
