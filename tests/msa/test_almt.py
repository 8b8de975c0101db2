"""ALMT: ECA off is exactly ALMT's forward, masking by lengths, ECA on differs, BERT fine-tuning path."""

import copy
import math

import pytest
import torch

from eca_core.attention import ECAConfig
from eca_core.attention import collect_lambdas
from eca_core.losses import sra_penalty
from eca_msa.almt import ALMT, ALMTConfig, Attention

SMALL = dict(text_dim=32, text_len=12, audio_len=20, vision_len=40, text_model=None)


def _batch(b=4, seed=0, cfg=ALMTConfig(**SMALL)):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([40, 25, 10, 33])[:b]
    vision_mask = torch.arange(cfg.vision_len)[None] < lengths[:, None]
    return {
        "text": torch.randn(b, cfg.text_len, cfg.text_dim, generator=g),
        "text_mask": torch.arange(cfg.text_len)[None] < torch.tensor([12, 5, 8, 3])[:b, None],
        "audio": torch.randn(b, cfg.audio_len, cfg.audio_dim, generator=g),
        "audio_mask": torch.arange(cfg.audio_len)[None] < torch.tensor([20, 7, 15, 2])[:b, None],
        "vision": torch.randn(b, cfg.vision_len, cfg.vision_dim, generator=g),
        "vision_mask": vision_mask,
    }


def _model(mode="softmax", seed=0, **kw):
    torch.manual_seed(seed)
    return ALMT(ALMTConfig(**SMALL, video_attention=ECAConfig(mode=mode), **kw)).eval()


def _reference_video_tokens(model: ALMT, vision: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """ALMT's full 1-layer pre-norm transformer over all [tokens; frames] with plain softmax; first T outputs."""
    stream = model.video_stream
    att = stream.attn.attn
    x = model.proj_vision(vision)
    b, n, _ = x.shape
    t = stream.num_tokens
    z = torch.cat([stream.tokens.expand(b, -1, -1), x], 1) + stream.pos[:, : t + n]
    heads = att.num_heads
    split = lambda u: u.view(b, t + n, heads, -1).transpose(1, 2)
    q = split(att.q_proj(stream.attn.norm_q(z)))
    k = split(att.k_proj(stream.attn.norm_k(z)))
    v = split(att.v_proj(stream.attn.norm_v(z)))
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        full = torch.cat([torch.ones(b, t, dtype=torch.bool), mask], 1)
        s = s.masked_fill(~full[:, None, None, :], float("-inf"))
    o = att.out_proj((s.softmax(-1) @ v).transpose(1, 2).reshape(b, t + n, -1))
    z = z + o
    z = z + stream.ff(z)
    return z[:, :t]


@pytest.mark.parametrize("masked", [True, False])
def test_video_stream_with_eca_off_is_almt_block(masked):
    model = _model("softmax")
    batch = _batch()
    mask = batch["vision_mask"] if masked else None
    with torch.no_grad():
        ours = model.video_stream(model.proj_vision(batch["vision"]), mask)
        ref = _reference_video_tokens(model, batch["vision"], mask)
    assert ours.shape == (4, 8, 128)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_whole_model_with_eca_off_equals_plain_softmax_attention():
    model = _model("softmax")
    plain = copy.deepcopy(model)
    eca_attn = model.video_stream.attn.attn
    softmax_attn = Attention(128, eca_attn.num_heads, eca_attn.head_dim)  # as published: no q/k/v bias, like ours
    for ours, theirs in ((eca_attn.q_proj, softmax_attn.to_q), (eca_attn.k_proj, softmax_attn.to_k),
                         (eca_attn.v_proj, softmax_attn.to_v), (eca_attn.out_proj, softmax_attn.to_out[0])):
        theirs.load_state_dict(ours.state_dict())
    plain.video_stream.attn.attn = softmax_attn
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(model(batch), plain(batch), atol=1e-5, rtol=1e-5)


def test_masking_by_lengths_ignores_padding_frames():
    batch = _batch()
    changed = {k: v.clone() for k, v in batch.items()}
    pad = ~batch["vision_mask"]
    changed["vision"][pad] = 5.0 + 3.0 * torch.randn(int(pad.sum()), 20)
    changed["audio"][~batch["audio_mask"]] = 7.0
    changed["text"][~batch["text_mask"]] = -4.0
    masked = _model("eca", mask_padding=True)
    with torch.no_grad():
        torch.testing.assert_close(masked(batch), masked(changed), atol=1e-5, rtol=1e-5)
    unmasked = _model("eca", mask_padding=False)
    with torch.no_grad():
        diff = (unmasked(batch) - unmasked(changed)).abs()
    assert diff[1:].min() > 1e-4  # rows 1..3 have padding; without the mask it changes their output
    assert diff[0] < 1e-5  # row 0 has no padding in any modality


def test_eca_on_changes_output_and_trains_lambda():
    soft, eca = _model("softmax"), _model("eca")
    missing, unexpected = eca.load_state_dict(soft.state_dict(), strict=False)
    assert not unexpected and all("residual_scale" in k or "temperature" in k for k in missing)
    batch = _batch()
    eca.train()
    with collect_lambdas() as lams:
        out = eca(batch)
    with torch.no_grad():
        base = soft(batch)
    assert (out - base).abs().max() > 1e-4  # DATS sharpens the frame attention
    (lam,) = lams  # the one ECA layer: the video stream's
    assert lam.shape == (4,) and torch.all(lam >= 1.0) and torch.all(lam <= 2.0)
    assert sra_penalty(lams) > 0
    out.sum().backward()
    grad = eca.video_stream.attn.attn.residual_scale.mlp[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_sequence_longer_than_positions_is_an_error():
    model = _model("softmax")
    batch = _batch()
    batch["vision"] = torch.randn(4, 41, 20)
    batch["vision_mask"] = torch.ones(4, 41, dtype=torch.bool)
    with pytest.raises(ValueError, match="longer than the model's 40 positions"):
        model(batch)


def test_bert_fine_tuning_from_local_tiny_model(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=120, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(tmp_path / "tiny_bert")
    torch.manual_seed(0)
    model = ALMT(ALMTConfig(**(SMALL | {"text_model": str(tmp_path / "tiny_bert")})))
    assert model.proj_text.in_features == 24 and model.bert.training  # fine-tuned with its dropout on, as ALMT does
    batch = _batch()
    ids = torch.randint(1, 120, (4, 12))
    batch["text_bert"] = torch.stack([ids, batch["text_mask"].long(), torch.zeros_like(ids)], 1).float()
    out = model(batch)
    assert out.shape == (4,) and torch.isfinite(out).all()
    out.sum().backward()
    assert model.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    del batch["text_bert"]
    with pytest.raises(KeyError, match="text_bert"):
        model(batch)
