"""The expression model: shapes, every attention is an eca_core layer switched by one flag, ridge baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eca_core.attention import ECACrossAttention, ECAPooling
from eca_core.attention import collect_lambdas
from eca_core.losses import sra_penalty
from eca_bio.model.expression import ExpressionModel, ModelConfig, RidgeBaseline


def _inputs(b=6, t=4, d=12, k=5, g=7):
    torch.manual_seed(0)
    return torch.randn(b, d), torch.randn(b, t, d), torch.randn(b, k, d), torch.rand(b, k, g)


@pytest.mark.parametrize("attention", ["softmax", "eca", "no_sra", "no_dats", "no_dnpl"])
def test_attention_variants_are_one_flag(attention):
    f, t, e, y = _inputs()
    model = ExpressionModel(12, 7, ModelConfig(attention=attention, hidden=16, heads=2))
    with collect_lambdas() as lams:
        out = model(f, t, e, y)
    assert out.shape == (6, 7) and torch.isfinite(out).all()
    layers = [m for m in model.modules() if isinstance(m, (ECAPooling, ECACrossAttention))]
    assert len(layers) == 2
    for layer in layers:
        assert (layer.temperature is not None) == (attention in ("eca", "no_sra", "no_dnpl"))
        assert (layer.residual_scale is not None) == (attention in ("eca", "no_dats", "no_dnpl"))
    # SRA layers expose λ for the regulariser; λ starts close to 1
    if attention in ("eca", "no_dats", "no_dnpl"):
        assert len(lams) == 2 and 0 <= float(sra_penalty(lams)) < 1e-3
    else:
        assert lams == [] and float(sra_penalty(lams)) == 0.0


def test_mean_pool_baseline_has_no_attention_and_uses_exemplars():
    f, t, e, y = _inputs()
    model = ExpressionModel(12, 7, ModelConfig(pool="mean", hidden=16, heads=2)).eval()
    assert not any(isinstance(m, (ECAPooling, ECACrossAttention)) for m in model.modules())
    base = model(f, t, e, y)
    changed = model(f, t, e, y + 1.0)
    assert not torch.allclose(base, changed)  # exemplar expression reaches the output
    with pytest.raises(ValueError, match="uses exemplars"):
        model(f, t)


def test_token_order_does_not_matter_and_gradients_flow():
    f, t, e, y = _inputs()
    model = ExpressionModel(12, 7, ModelConfig(hidden=16, heads=2, dropout=0.0)).eval()
    perm = torch.randperm(t.shape[1])
    torch.testing.assert_close(model(f, t, e, y), model(f, t[:, perm], e, y))
    model.train()
    model(f, t, e, y).pow(2).mean().backward()
    assert model.token_pool.k_proj.weight.grad is not None and model.exemplar_attn.q_proj.weight.grad.abs().sum() > 0


def test_ridge_recovers_a_linear_map_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 40))
    w = rng.normal(size=(40, 6))
    y = x @ w + 0.01 * rng.normal(size=(300, 6))
    ridge = RidgeBaseline(n_components=256).fit(x[:200], y[:200])
    assert ridge.params["components"].shape == (40, 40)  # min(256, n-1, D)
    pred = ridge.predict(x[200:])
    r = [np.corrcoef(pred[:, j], y[200:, j])[0, 1] for j in range(6)]
    assert min(r) > 0.99
    assert float(ridge.params["alpha"]) == pytest.approx(100 / (40 * 6))
    ridge.save(tmp_path / "r.npz")
    np.testing.assert_allclose(RidgeBaseline.load(tmp_path / "r.npz").predict(x[200:]), pred)
