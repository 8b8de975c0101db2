"""ECA layers: exact softmax reduction, masking, edge cases, shape errors, dtypes."""

import pytest
import torch
from torch import nn

from eca_core.attention import ECAConfig, ECACrossAttention, ECAPooling, set_dispersion
from eca_core.losses import sra_penalty
from eca_core.variants import layer_config


def _softmax_reference(q, k, v, mask):
    # q (B,H,L,dh) k,v (B,H,N,dh) mask (B,N)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, -1) @ v


def _copy(dst: nn.Module, src: nn.Module) -> None:
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected


@pytest.fixture
def batch():
    torch.manual_seed(0)
    x = torch.randn(5, 9, 16)
    mask = torch.ones(5, 9, dtype=torch.bool)
    mask[1, 6:] = False
    mask[3, 2:] = False
    return x, mask


def test_cross_attention_matches_manual_softmax(batch):
    x, mask = batch
    layer = ECACrossAttention(16, num_heads=4, cfg=ECAConfig(mode="softmax")).eval()
    query = torch.randn(5, 3, 16)
    b = 5
    q = layer.q_proj(query).view(b, 3, 4, 4).transpose(1, 2)
    k = layer.k_proj(x).view(b, 9, 4, 4).transpose(1, 2)
    v = layer.v_proj(x).view(b, 9, 4, 4).transpose(1, 2)
    ref = layer.out_proj(_softmax_reference(q, k, v, mask).transpose(1, 2).reshape(b, 3, 16))
    torch.testing.assert_close(layer(query, x, context_mask=mask), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", ["pool", "cross"])
def test_lambda_one_tau_one_reproduces_softmax(batch, cls):
    """λ = 1 (λ_max = 1) and τ = 1 (τ_min = 1) with both components active equal the softmax layer."""
    x, mask = batch
    torch.manual_seed(1)
    pinned = ECAConfig(mode="eca", tau_min=1.0, lambda_max=1.0)
    if cls == "pool":
        soft = ECAPooling(16, num_queries=2, num_heads=4, cfg=ECAConfig(mode="softmax"))
        eca = ECAPooling(16, num_queries=2, num_heads=4, cfg=pinned)
        _copy(eca, soft)
        out_s, out_e = soft(x, mask), eca(x, mask, return_aux=True)
    else:
        soft = ECACrossAttention(16, num_heads=4, cfg=ECAConfig(mode="softmax"))
        eca = ECACrossAttention(16, num_heads=4, cfg=pinned)
        _copy(eca, soft)
        query = torch.randn(5, 3, 16)
        out_s, out_e = soft(query, x, context_mask=mask), eca(query, x, context_mask=mask, return_aux=True)
    out_e, aux = out_e
    assert torch.equal(aux.lam, torch.ones(5)) and torch.equal(aux.tau, torch.ones(5))
    torch.testing.assert_close(out_e, out_s, atol=1e-6, rtol=1e-6)


def test_switches_off_is_softmax_code_path(batch):
    x, mask = batch
    soft = ECAPooling(16, num_heads=2, cfg=ECAConfig(mode="softmax"))
    off = ECAPooling(16, num_heads=2, cfg=ECAConfig(mode="eca", dats=False, sra=False))
    _copy(off, soft)
    assert torch.equal(soft(x, mask), off(x, mask))


@pytest.mark.parametrize("mode", ["softmax", "eca"])
def test_only_sra_leaves_the_convex_hull(mode):
    """‖z − x̄‖ ≤ R for any convex aggregation; with λ = 2 and sharp attention SRA exceeds R."""
    torch.manual_seed(0)
    x = torch.randn(64, 6, 3)
    layer = ECAPooling(3, value_proj=False, out_proj=False, cfg=ECAConfig(mode=mode, dats=False))
    with torch.no_grad():
        layer.query.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
        layer.k_proj.weight.copy_(20.0 * torch.eye(3))
        layer.k_proj.bias.zero_()
        if mode == "eca":
            layer.residual_scale.mlp[2].bias.fill_(5.0)  # λ -> λ_max = 2
    out, aux = layer(x, return_aux=True)
    xbar, _, radius = set_dispersion(x, torch.ones(64, 6, dtype=torch.bool))
    dist = (out[:, 0] - xbar).norm(dim=-1)
    if mode == "softmax":
        assert torch.all(dist <= radius + 1e-4)
    else:
        assert torch.allclose(aux.lam, torch.full((64,), 2.0))
        assert (dist > radius * 1.2).float().mean() > 0.5
        convex = (x * aux.weights[:, 0, 0, :, None]).sum(1)
        torch.testing.assert_close(out[:, 0], xbar + 2.0 * (convex - xbar), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["softmax", "eca"])
def test_padding_gets_zero_weight_and_does_not_change_output(batch, mode):
    x, mask = batch
    layer = ECACrossAttention(16, num_heads=4, cfg=ECAConfig(mode=mode)).eval()
    query = torch.randn(5, 2, 16)
    out, aux = layer(query, x, context_mask=mask, return_aux=True)
    assert torch.all(aux.weights[1, :, :, 6:] == 0) and torch.all(aux.weights[3, :, :, 2:] == 0)
    x2 = x.clone()
    x2[1, 6:] = 1e3 * torch.randn(3, 16)
    x2[3, 2:] = -7.0
    out2 = layer(query, x2, context_mask=mask)
    torch.testing.assert_close(out, out2, atol=1e-5, rtol=1e-5)
    # a padded sample equals the same sample given alone without padding
    alone = layer(query[3:4], x[3:4, :2])
    torch.testing.assert_close(out[3:4], alone, atol=1e-5, rtol=1e-5)


def test_weights_path_equals_fused_path(batch):
    x, mask = batch
    layer = ECAPooling(16, num_queries=3, num_heads=4, cfg=ECAConfig()).eval()
    out, aux = layer(x, mask, need_weights=True)  # weights asked for are returned, not dropped
    torch.testing.assert_close(layer(x, mask), out, atol=1e-5, rtol=1e-5)
    assert aux.weights.shape == (x.shape[0], 4, 3, x.shape[1])
    torch.testing.assert_close(aux.weights.sum(-1), torch.ones(x.shape[0], 4, 3))


def test_dats_sharpens_homogeneous_samples():
    """Lower dispersion -> lower τ; in eval d_ref is frozen."""
    torch.manual_seed(0)
    layer = ECAPooling(8, cfg=ECAConfig(tau_min=0.2, beta=1.0))
    spread = torch.randn(16, 10, 8)
    layer.train()
    layer(spread)
    d_ref = layer.temperature.d_ref.clone()
    layer.eval()
    tight = spread.mean(1, keepdim=True) + 0.01 * torch.randn(16, 10, 8)
    _, aux_t = layer(tight, return_aux=True)
    _, aux_s = layer(spread, return_aux=True)
    assert torch.equal(layer.temperature.d_ref, d_ref)
    assert aux_t.tau.max() < aux_s.tau.min()
    assert aux_t.tau.min() >= 0.2 - 1e-6


@pytest.mark.parametrize("mode", ["softmax", "eca"])
def test_no_nan_on_degenerate_sets(mode):
    cfg = ECAConfig(mode=mode, tau_min=0.0)
    layer = ECAPooling(8, num_heads=2, cfg=cfg)
    cases = [torch.ones(3, 5, 8), torch.randn(3, 1, 8), torch.randn(2, 4, 8)]
    for x in cases:
        x = x.clone().requires_grad_(True)
        out = layer(x)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)
        layer.zero_grad()


def test_shape_errors_name_the_shapes():
    layer = ECACrossAttention(16, num_heads=4)
    x = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match=r"mask shape \(2, 4\).*\(2, 5, 16\)"):
        layer(x, x, context_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"key \(2, 5, 8\).*\(B, N, 16\)"):
        layer(x, x[..., :8])
    with pytest.raises(ValueError, match="no valid element"):
        layer(x, x, context_mask=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(3, 5, 16\)"):
        layer(torch.randn(3, 5, 16), x)
    with pytest.raises(ValueError, match=r"\(5, 16\)"):
        ECAPooling(16)(torch.randn(5, 16))


def test_bf16_forward_backward():
    layer = ECACrossAttention(16, num_heads=4, cfg=ECAConfig()).to(torch.bfloat16)
    x = torch.randn(3, 7, 16, dtype=torch.bfloat16, requires_grad=True)
    out = layer(x, x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert torch.isfinite(x.grad.float()).all()


def test_sra_penalty_of_the_collected_lambdas():
    from eca_core.attention import collect_lambdas

    host = nn.Sequential(nn.Linear(8, 8))
    host.add_module("pool", ECAPooling(8, cfg=ECAConfig()))
    x = torch.randn(4, 5, 8)
    with collect_lambdas() as lams:
        host.pool(host[0](x))
    (lam,) = lams
    assert lam.shape == (4,) and lam.requires_grad
    torch.testing.assert_close(sra_penalty(lams), ((lam - 1) ** 2).mean())
    torch.testing.assert_close(sra_penalty(lam), ((lam - 1) ** 2).mean())
    assert not hasattr(host.pool, "last_lambda")  # no layer keeps a λ (or its graph) between steps


def test_set_dispersion_matches_definition():
    x = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])
    xbar, d, r = set_dispersion(x, mask)
    torch.testing.assert_close(xbar, torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(d, torch.tensor([1.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(r, torch.tensor([1.0]), atol=1e-3, rtol=0)


def test_variant_names():
    assert layer_config("softmax").use_sra is False
    assert layer_config("no_sra").use_dats and not layer_config("no_sra").use_sra
    assert layer_config("no_dats").use_sra and not layer_config("no_dats").use_dats
    with pytest.raises(ValueError, match="unknown ECA variant"):
        layer_config("bogus")


def test_fast_set_statistics_match_careful_form():
    from eca_core.attention import _set_statistics

    torch.manual_seed(0)
    x = 3.0 + 0.05 * torch.randn(6, 11, 32)  # homogeneous sets far from the origin
    mask = torch.ones(6, 11, dtype=torch.bool)
    mask[2, 4:] = False
    xbar, d_careful = set_dispersion(x, mask, with_radius=False)
    fast_xbar, fast_d = _set_statistics(x, mask, with_dispersion=True)
    assert fast_xbar.shape == (6, 32) and fast_d.shape == (6, 1, 1)  # d in the shape τ scales the queries with
    torch.testing.assert_close(fast_xbar, xbar)
    torch.testing.assert_close(fast_d.view(6), d_careful, rtol=2e-3, atol=1e-4)
    only_xbar, no_d = _set_statistics(x, mask, with_dispersion=False)
    assert no_d is None
    torch.testing.assert_close(only_xbar, xbar)


def test_lambda_of_a_layer_that_did_not_run_is_never_reused():
    """Layer A in one step, layer B in the next: the penalty sees only this step's λ (no stale graph)."""
    from eca_core.attention import collect_lambdas

    host = nn.ModuleDict({"a": ECAPooling(8, cfg=ECAConfig()), "b": ECAPooling(8, cfg=ECAConfig())})
    x = torch.randn(4, 5, 8)
    for name in ("a", "b"):
        with collect_lambdas() as lams:
            out = host[name](x)
        assert len(lams) == 1
        (out.sum() + sra_penalty(lams)).backward()
    with collect_lambdas() as lams:
        host["a"](x)
        host["b"](x)
    assert len(lams) == 2 and all(lam.shape == (4,) for lam in lams)
    with collect_lambdas() as lams, torch.no_grad():
        host["a"](x)
    assert lams == []  # a no-grad forward gives the penalty nothing


def test_configuration_mistakes_are_errors():
    with pytest.raises(ValueError, match="dim 10 is not divisible by num_heads 4"):
        ECACrossAttention(10, num_heads=4)
    with pytest.raises(ValueError, match="mode='softmax'.*dats/sra need mode='eca'"):
        ECAConfig(mode="softmax", sra=True)
    assert not ECAConfig(mode="softmax").use_sra and ECAConfig().use_sra and not ECAConfig(sra=False).use_sra
    layer = ECACrossAttention(16, num_heads=2, qkv_bias=False, proj_bias=True)
    assert layer.q_proj.bias is None and layer.v_proj.bias is None and layer.out_proj.bias is not None


def test_key_padding_mask_has_pytorch_meaning():
    layer = ECACrossAttention(8, num_heads=2, cfg=ECAConfig()).eval()
    q, x = torch.randn(3, 2, 8), torch.randn(3, 6, 8)
    keep = torch.ones(3, 6, dtype=torch.bool)
    keep[0, 4:] = False
    torch.testing.assert_close(layer(q, x, key_padding_mask=~keep), layer(q, x, context_mask=keep))
    with pytest.raises(ValueError, match="not both"):
        layer(q, x, context_mask=keep, key_padding_mask=~keep)


def test_compiles_as_one_graph():
    layer = ECACrossAttention(16, num_heads=2, cfg=ECAConfig())
    q, x = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    mask = torch.ones(2, 7, dtype=torch.bool)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")  # fullgraph: any graph break is an error
    torch.testing.assert_close(compiled(q, x, context_mask=mask), layer(q, x, context_mask=mask), atol=1e-6, rtol=1e-6)


def test_eca_gradients_match_finite_differences_in_float64():
    """gradcheck: the SRA path (x̄ → λ, v̄ = v_proj(x̄), the lerp) through x and every parameter, and the full layer
    through its parameters (τ's d is a statistic with no gradient by design, so x is held fixed there)."""
    from torch.func import functional_call

    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 3:] = False
    sra = ECAPooling(8, num_heads=2, cfg=ECAConfig(mode="eca", dats=False)).double().train()
    assert torch.autograd.gradcheck(lambda t: sra(t, context_mask=mask), (x.clone().requires_grad_(),))
    full = ECAPooling(8, num_heads=2, cfg=ECAConfig(mode="eca")).double().eval()  # eval: d_ref holds still between calls
    names = [n for n, _ in full.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in full.parameters())

    def of_params(*ps):
        return functional_call(full, dict(zip(names, ps)), (x,), {"context_mask": mask})

    assert torch.autograd.gradcheck(of_params, params)
