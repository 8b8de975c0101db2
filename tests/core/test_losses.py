"""Losses: PCC, DNPL gradient behaviour, constant columns, objective parts."""

import numpy as np
import pytest
import torch

from eca_core.losses import ECAObjective, LossConfig, dnpl_loss, pcc_loss, pcc_per_dim


def test_pcc_per_dim_matches_numpy():
    torch.manual_seed(0)
    p, t = torch.randn(50, 4), torch.randn(50, 4)
    rho, _, _ = pcc_per_dim(p, t)
    ref = [np.corrcoef(p[:, k].numpy(), t[:, k].numpy())[0, 1] for k in range(4)]
    np.testing.assert_allclose(rho.numpy(), ref, atol=1e-5)


def _grad_norm(loss_fn, pred, target):
    pred = pred.clone().requires_grad_(True)
    loss_fn(pred, target).backward()
    return pred.grad.norm().item()


def test_dnpl_gradient_does_not_shrink_when_predictions_scale_up():
    """Plain PCC's gradient falls as 1/scale; DNPL's sg(σ_ŷ/σ_y) factor cancels it."""
    torch.manual_seed(0)
    target = torch.randn(64, 3)
    pred = 0.5 * target + torch.randn(64, 3)
    plain = [_grad_norm(pcc_loss, s * pred, target) for s in (1.0, 10.0, 100.0)]
    dnpl = [_grad_norm(dnpl_loss, s * pred, target) for s in (1.0, 10.0, 100.0)]
    assert plain[1] == pytest.approx(plain[0] / 10, rel=1e-3)
    assert plain[2] == pytest.approx(plain[0] / 100, rel=1e-3)
    assert dnpl[1] == pytest.approx(dnpl[0], rel=1e-3)
    assert dnpl[2] == pytest.approx(dnpl[0], rel=1e-3)


def test_dnpl_has_same_stationary_direction_as_pcc():
    torch.manual_seed(1)
    target, pred = torch.randn(32, 2), torch.randn(32, 2)
    g1 = torch.autograd.grad(pcc_loss(pred.requires_grad_(True), target), pred)[0]
    g2 = torch.autograd.grad(dnpl_loss(pred, target), pred)[0]
    cos = torch.nn.functional.cosine_similarity(g1.flatten(), g2.flatten(), dim=0)
    assert cos > 0.5


def test_constant_target_column_is_skipped_not_zeroed():
    torch.manual_seed(0)
    target = torch.randn(16, 3)
    target[:, 1] = 2.0
    pred = torch.randn(16, 3, requires_grad=True)
    loss = pcc_loss(pred, target)
    rho, _, _ = pcc_per_dim(pred, target)
    expected = (1 - rho[[0, 2]]).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and torch.all(pred.grad[:, 1] == 0)


@pytest.mark.parametrize("fn", [pcc_loss, dnpl_loss])
def test_batch_of_one_and_two(fn):
    p1 = torch.randn(1, 3, requires_grad=True)
    assert fn(p1, torch.randn(1, 3)).item() == 0.0
    p2 = torch.randn(2, 3, requires_grad=True)
    loss = fn(p2, torch.randn(2, 3))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p2.grad).all()


def test_objective_parts_and_switches():
    torch.manual_seed(0)
    pred, target = torch.randn(20, 5), torch.randn(20, 5)
    total, parts = ECAObjective(LossConfig(pcc="dnpl", pcc_weight=0.5, sra_weight=0.0))(pred, target)
    torch.testing.assert_close(total, parts["mse"] + 0.5 * parts["dnpl"])
    total, parts = ECAObjective(LossConfig(pcc="plain", pcc_weight=0.3))(pred, target)
    torch.testing.assert_close(total, parts["mse"] + 0.3 * parts["plain"])
    total, parts = ECAObjective(LossConfig(pcc="none"))(pred, target)
    torch.testing.assert_close(total, torch.nn.functional.mse_loss(pred, target))
    with pytest.raises(ValueError, match="pcc must be"):
        LossConfig(pcc="spearman")


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"\(4, 2\).*\(4, 3\)"):
        pcc_loss(torch.randn(4, 2), torch.randn(4, 3))
