"""Drop-in ECA: nn.MultiheadAttention's interface, and swaps in nn.TransformerEncoder, timm and transformers models.

With ECA off (mode="softmax") every converted layer must reproduce the original module; with it on,
the output changes and gradients reach DATS/SRA.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from eca_core.attention import ECAConfig
from eca_core.convert import ECATimmAttention, swap_attention
from eca_core.attention import collect_lambdas
from eca_core.losses import sra_penalty
from eca_core.mha import ECAMultiheadAttention

OFF = ECAConfig(mode="softmax")
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_first", [True, False])
def test_from_torch_reproduces_multihead_attention(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    eca = ECAMultiheadAttention.from_torch(mha, OFF).eval()
    b, l, s = 3, 5, 7
    q, k, v = torch.randn(b, l, 16), torch.randn(b, s, 16), torch.randn(b, s, 16)
    if not batch_first:
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    pad = torch.zeros(b, s, dtype=torch.bool)
    pad[0, 5:] = True
    blocked = torch.zeros(l, s, dtype=torch.bool)
    blocked[0, 1] = True
    for kwargs in ({}, {"key_padding_mask": pad}, {"key_padding_mask": pad, "attn_mask": blocked},
                   {"attn_mask": torch.randn(l, s)}, {"attn_mask": torch.randn(b * 4, l, s)},
                   {"need_weights": False}, {"key_padding_mask": pad, "average_attn_weights": False}):
        ref, ref_w = mha(q, k, v, **kwargs)
        out, w = eca(q, k, v, **kwargs)
        torch.testing.assert_close(out, ref, **TOL)
        assert (w is None) == (ref_w is None)
        if w is not None:
            torch.testing.assert_close(w, ref_w, **TOL)
    out, w = eca(q[:, 0] if batch_first else q[:, 0], k[:, 0], v[:, 0])  # unbatched (L, E) input
    assert out.dim() == 2 and w.dim() == 2


def test_kdim_vdim_and_eca_on():
    mha = nn.MultiheadAttention(16, 2, kdim=8, vdim=12, batch_first=True).eval()
    q, k, v = torch.randn(2, 3, 16), torch.randn(2, 5, 8), torch.randn(2, 5, 12)
    torch.testing.assert_close(ECAMultiheadAttention.from_torch(mha, OFF)(q, k, v)[0], mha(q, k, v)[0], **TOL)
    eca = ECAMultiheadAttention.from_torch(mha, ECAConfig(tau_min=0.1)).train()
    with collect_lambdas() as lams:
        out, _ = eca(q, k, v)
    assert not torch.allclose(out, mha(q, k, v)[0], atol=1e-4)
    (out.square().mean() + sra_penalty(lams)).backward()
    assert eca.residual_scale.mlp[0].weight.grad is not None


def test_transformer_encoder_swap():
    torch.manual_seed(1)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0), 2,
                                enable_nested_tensor=False).eval()
    x = torch.randn(3, 6, 16)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, 4:] = True
    with torch.no_grad():
        ref = enc(x, src_key_padding_mask=pad)
        swapped = swap_attention(copy.deepcopy(enc), OFF).eval()
        torch.testing.assert_close(swapped(x, src_key_padding_mask=pad)[~pad], ref[~pad], **TOL)
    assert isinstance(swapped.layers[0].self_attn, ECAMultiheadAttention)


def test_timm_vit_swap():
    timm = pytest.importorskip("timm")
    torch.manual_seed(2)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = vit(x)
        swapped = swap_attention(copy.deepcopy(vit), OFF).eval()
        torch.testing.assert_close(swapped(x), ref, **TOL)
    assert all(isinstance(b.attn, ECATimmAttention) for b in swapped.blocks)
    eca = swap_attention(copy.deepcopy(vit), ECAConfig(tau_min=0.05)).train()
    with collect_lambdas() as lams:
        out = eca(x)
    assert len(lams) == len(eca.blocks)
    loss = out.square().mean() + sra_penalty(lams)
    loss.backward()
    assert eca.blocks[0].attn.qkv.weight.grad is not None


def test_transformers_bert_and_vit_swap():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                          intermediate_size=64, max_position_embeddings=16)).eval()
    ids = torch.randint(0, 50, (3, 10))
    att = torch.ones(3, 10, dtype=torch.long)
    att[1, 7:] = 0
    with torch.no_grad():
        ref = bert(input_ids=ids, attention_mask=att).last_hidden_state
        swapped = swap_attention(copy.deepcopy(bert), OFF).eval()
        out = swapped(input_ids=ids, attention_mask=att).last_hidden_state
    torch.testing.assert_close(out[att.bool()], ref[att.bool()], **TOL)
    assert swapped.config._attn_implementation == "eca" and hasattr(swapped.encoder.layer[0].attention.self, "eca")
    vit = transformers.ViTModel(transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=4, intermediate_size=64)).eval()
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(swap_attention(copy.deepcopy(vit), OFF).eval()(pixel_values=px).last_hidden_state,
                                   vit(pixel_values=px).last_hidden_state, **TOL)


def test_rtdl_ft_transformer_swap():
    """The FT-Transformer of its authors' package: ECA off reproduces it (every block, incl. the [CLS]-only last one)."""
    rtdl = pytest.importorskip("rtdl_revisiting_models")
    from eca_core.convert import ECARTDLAttention

    torch.manual_seed(4)
    model = rtdl.FTTransformer(n_cont_features=5, cat_cardinalities=[3, 4], d_out=1,
                               **rtdl.FTTransformer.get_default_kwargs(n_blocks=2)).eval()
    x, c = torch.randn(16, 5), torch.randint(0, 3, (16, 2))
    with torch.no_grad():
        ref = model(x, c)
        swapped = swap_attention(copy.deepcopy(model), OFF).eval()
        out = swapped(x, c)
    torch.testing.assert_close(out, ref, **TOL)
    assert (out - ref).abs().max() < 1e-5
    assert all(isinstance(b["attention"], ECARTDLAttention) for b in swapped.backbone.blocks)
    assert set(swapped.state_dict()) == set(model.state_dict())  # W_q, W_k, W_v, W_out kept by name
    eca = swap_attention(copy.deepcopy(model), ECAConfig(tau_min=0.05)).train()
    with torch.no_grad():
        assert (eca.eval()(x, c) - ref).abs().max() > 1e-4  # DATS sharpens the attention
    with collect_lambdas() as lams:
        out = eca.train()(x, c)
    loss = out.square().mean() + sra_penalty(lams)
    loss.backward()
    block = eca.backbone.blocks[1]["attention"]
    assert block.W_q.weight.grad is not None and block.residual_scale.mlp[0].weight.grad is not None
    linformer = rtdl.MultiheadAttention(d_embedding=16, n_heads=2, dropout=0.0, n_tokens=6,
                                        linformer_kv_compression_ratio=0.5, linformer_kv_compression_sharing="headwise")
    with pytest.raises(ValueError, match="Linformer"):
        swap_attention(nn.Sequential(linformer))


def test_nothing_to_swap_is_an_error():
    with pytest.raises(ValueError, match="Linear: no nn.MultiheadAttention"):
        swap_attention(nn.Linear(2, 2))
