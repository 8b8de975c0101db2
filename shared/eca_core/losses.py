"""Training objectives: MSE, batch PCC per output, DNPL, the SRA regulariser and their combination (DESIGN §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eca_core.loss_config import LossConfig
from eca_core.metrics import CONSTANT_RTOL

__all__ = ["ECAObjective", "LossConfig", "dnpl_loss", "pcc_loss", "pcc_per_dim", "sra_penalty"]

_EPS = 1e-8


def _as_2d(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if pred.dim() == 1:
        return pred[:, None], target[:, None]
    if pred.dim() != 2:
        raise ValueError(f"expected (batch,) or (batch, outputs), got {tuple(pred.shape)}")
    return pred, target


def pcc_per_dim(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Batch Pearson ρ_k per output column, with σ_ŷk and σ_yk (population std), all (K,) float32."""
    pred, target = _as_2d(pred.float(), target.float())
    pc = pred - pred.mean(0, keepdim=True)
    tc = target - target.mean(0, keepdim=True)
    sp = pc.pow(2).mean(0).add(_EPS).sqrt()
    st = tc.pow(2).mean(0).add(_EPS).sqrt()
    rho = (pc * tc).mean(0) / (sp * st)
    return rho, sp, st


def _valid_columns(target: Tensor) -> Tensor:
    target = target if target.dim() == 2 else target[:, None]
    target = target.float()
    return target.std(0, unbiased=False) > CONSTANT_RTOL * target.abs().amax(0).clamp_min(1.0)  # metrics' rule, no host sync


def _mean_over_valid(per_column: Tensor, valid: Tensor, pred: Tensor) -> Tensor:
    """Mean of ``per_column`` over the valid columns, 0 when there is none; no host sync (no boolean indexing)."""
    w = valid.to(per_column.dtype)
    return (per_column * w).sum() / w.sum().clamp_min(1.0) + pred.sum() * 0.0


def pcc_loss(pred: Tensor, target: Tensor) -> Tensor:
    """mean_k (1 − ρ_k) over columns whose target varies in the batch (0 if none or batch < 2)."""
    if pred.shape[0] < 2:
        return pred.sum() * 0.0
    rho, _, _ = pcc_per_dim(pred, target)
    return _mean_over_valid(1.0 - rho, _valid_columns(target), pred)


def dnpl_loss(pred: Tensor, target: Tensor) -> Tensor:
    """DNPL: mean_k sg(σ_ŷk / σ_yk)·(1 − ρ_k). Same stationary points as 1 − ρ, no 1/σ_ŷ attenuation."""
    if pred.shape[0] < 2:
        return pred.sum() * 0.0
    rho, sp, st = pcc_per_dim(pred, target)
    scale = (sp / st).detach()
    return _mean_over_valid(scale * (1.0 - rho), _valid_columns(target), pred)


def sra_penalty(lambdas: Tensor | list[Tensor]) -> Tensor:
    """R = mean (λ − 1)² over the λ of a forward's ECA layers (from :func:`eca_core.attention.collect_lambdas`)."""
    lams = [lambdas] if isinstance(lambdas, Tensor) else list(lambdas)
    if not lams:
        return torch.zeros(())
    return torch.stack([((lam.float() - 1.0) ** 2).mean() for lam in lams]).mean()


class ECAObjective(nn.Module):
    """The combined objective; returns the total and its parts (for logging)."""

    def __init__(self, cfg: LossConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or LossConfig()

    def forward(self, pred: Tensor, target: Tensor, lambdas: list[Tensor] | Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """MSE + weighted PCC term (+ weighted SRA penalty of ``lambdas``, the forward's :func:`collect_lambdas`)."""
        mse = F.mse_loss(pred.float(), target.float())
        parts = {"mse": mse}
        total = mse
        if self.cfg.pcc != "none" and self.cfg.pcc_weight:
            corr = dnpl_loss(pred, target) if self.cfg.pcc == "dnpl" else pcc_loss(pred, target)
            parts[self.cfg.pcc] = corr
            total = total + self.cfg.pcc_weight * corr
        if lambdas is not None and self.cfg.sra_weight:
            reg = sra_penalty(lambdas).to(total.device)
            parts["sra"] = reg
            total = total + self.cfg.sra_weight * reg
        parts["loss"] = total
        return total, parts
