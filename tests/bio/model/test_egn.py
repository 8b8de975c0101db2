"""EGN as published: its parameter count, its forward, ECA in its ViT self-attention, and (where EGN's own code is at
hand: EGN_V1_DIR=<a copy of Yan98/EGN v1/> and einops installed) the same outputs as EGN's model with the same weights."""

import importlib.util
import os
import sys

import pytest
import torch

from eca_core.eca_config import ECAConfig
from eca_bio.model.egn import EGN

TINY = dict(image_size=32, patch_size=8, n_genes=7, dim=32, depth=4, heads=4, mlp_dim=64, bhead=2, bdim=8, bfre=2, mdim=12, player=2)


def _inputs(b=3, k=4, cfg=TINY, seed=0):
    g = torch.Generator().manual_seed(seed)
    s, m, n = cfg["image_size"], cfg["mdim"], cfg["n_genes"]
    return (torch.randn(b, 3, s, s, generator=g), torch.randn(b, 1, m, generator=g), torch.randn(b, k, m, generator=g),
            torch.rand(b, k, n, generator=g))


def test_published_size_has_egns_parameter_count():
    # EGN's v1/egn.py with its README's flags (--size 256 --dim 1024 --heads 16 --mlp_dim 4096 --depth 8 --bhead 8
    # --bdim 64 --bfre 2 --player 2 --linear_projection True --mdim 2048), counted by running that file: 133,356,794
    from eca_bio.model.egn_presets import PRESETS

    with torch.device("meta"):
        model, preset = EGN(), EGN(**PRESETS["egn-10xproteomic"]["model"])
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in preset.parameters()) == 133_356_794
    small = EGN(**{**PRESETS["egn-cpu-small"]["model"], "mdim": 16})
    assert small.grid == 8 and small(*_inputs(b=2, cfg={"image_size": 64, "mdim": 16, "n_genes": 250})).shape == (2, 250)


def test_forward_backward_and_shapes():
    torch.manual_seed(0)
    model = EGN(**TINY)
    out = model(*_inputs())
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    unused = {name for name, p in model.named_parameters() if p.grad is None}
    last = f"blocks.{TINY['depth'] - 1}.bridge"  # as in EGN: EB's to_out is never called, the last bridge's new keys never read
    assert unused == {f"blocks.{i}.bridge.to_out.{w}" for i in (1, 3) for w in ("weight", "bias")} | {f"{last}.update.norm.{w}" for w in ("weight", "bias")}
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        EGN(**{**TINY, "image_size": 30})


def test_eca_in_the_vit_self_attention_is_one_switch():
    from eca_core.convert import ECATimmAttention

    torch.manual_seed(0)
    soft = EGN(**TINY).eval()
    off = EGN(**TINY, vit_attention="eca", eca=ECAConfig(mode="softmax")).eval()
    missing, unexpected = off.load_state_dict(soft.state_dict(), strict=False)
    assert not missing and not unexpected
    x = _inputs()
    torch.testing.assert_close(off(*x), soft(*x), rtol=1e-4, atol=1e-5)  # ECA switched off is EGN
    eca = EGN(**TINY, vit_attention="eca")
    assert sum(isinstance(m, ECATimmAttention) for m in eca.modules()) == TINY["depth"]
    missing, unexpected = eca.load_state_dict(soft.state_dict(), strict=False)
    assert not unexpected and missing and all("residual_scale" in k or "temperature" in k for k in missing)


def _reference():
    folder = os.environ.get("EGN_V1_DIR")
    if not folder or importlib.util.find_spec("einops") is None:
        pytest.skip("EGN's own v1/egn.py not given (EGN_V1_DIR) or einops missing")
    spec = importlib.util.spec_from_file_location("egn_v1", os.path.join(folder, "egn.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["egn_v1"] = module
    spec.loader.exec_module(module)
    return module.EGN


def test_same_outputs_as_egns_own_model():
    RefEGN = _reference()
    torch.manual_seed(0)
    cfg = {**TINY, "n_genes": 250, "image_size": 64}  # EGN's bridge is written for an 8 x 8 token grid
    ours = EGN(**cfg).eval()
    ref = RefEGN(image_size=64, patch_size=8, num_classes=250, dim=32, depth=4, heads=4, mlp_dim=64, bhead=2, bdim=8, bfre=2,
                 mdim=12, player=2, linear_projection=True, dim_head=8).eval()
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters())
    mapping = {"to_patch_embedding.1": "patch_embed", "transformer.encoder": "projector", "transformer.pool": "pool",
               "mlp_head": "head", ".fn.net.": ".fn.", ".fn.to_qkv": ".fn.qkv", ".fn.to_out.0": ".fn.proj", "transformer.layers.": "blocks."}
    state = {}
    for name, value in ref.state_dict().items():
        for a, b in mapping.items():
            name = name.replace(a, b)
        if name.startswith("blocks."):  # blocks.i.{0,1,2}.rest -> blocks.i.{attn,bridge,ff}.rest
            _, i, j, rest = name.split(".", 3)
            name = f"blocks.{i}.{['attn', 'bridge', 'ff'][int(j)]}.{rest}"
            rest_map = {"to_x.1.": "to_x.1.", "to_k.1.": "to_k.1.", "to_v.1.": "to_v.", "to_n.1.": "to_n."}
            for a, b in rest_map.items():
                name = name.replace(a, b)
        state[name] = value
    ours.load_state_dict(state)
    img, emb, ex_emb, ex_expr = _inputs(cfg=cfg)
    want = ref({"img": img, "p_feature": emb, "op_feature": ex_emb, "op_count": ex_expr})
    torch.testing.assert_close(ours(img, emb, ex_emb, ex_expr), want, rtol=1e-4, atol=1e-5)


def test_eca_in_the_csra_pooling_head_is_the_other_switch():
    from eca_core.attention import collect_lambdas
    from eca_core.losses import sra_penalty

    torch.manual_seed(0)
    csra = EGN(**TINY).eval()
    off = EGN(**TINY, pool="eca", eca=ECAConfig(mode="softmax")).eval()
    assert not off.load_state_dict(csra.state_dict(), strict=False).missing_keys
    x = _inputs()
    torch.testing.assert_close(off(*x), csra(*x), rtol=1e-5, atol=1e-6)  # switched off: CSRA
    eca = EGN(**TINY, pool="eca").train()
    missing = eca.load_state_dict(csra.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("pool.") and ("residual_scale" in k or "dats" in k) for k in missing)
    with collect_lambdas() as lams:
        out = eca(*x)
    (lam,) = lams  # the head's λ (B,) reaches the SRA penalty like any ECA layer's
    assert lam.shape == (3,) and torch.all(lam >= 1.0)
    (out.square().mean() + sra_penalty(lams)).backward()
    assert eca.pool.residual_scale.mlp[0].weight.grad is not None
    assert not torch.allclose(eca.eval()(*x), csra(*x), atol=1e-4)  # DATS sharpens the token softmax
    with pytest.raises(ValueError, match="pool must be 'csra' or 'eca'"):
        EGN(**TINY, pool="mean")
