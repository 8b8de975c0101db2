"""Extrapolative Correlation Attention (ECA): layers, losses, metrics, diagnostics and the staged-pipeline runner."""

from eca_core.attention import ECAConfig, ECACrossAttention, ECAPooling, AttentionAux
from eca_core.losses import ECAObjective, LossConfig, dnpl_loss, pcc_loss, pcc_per_dim, sra_penalty
from eca_core.metrics import pearson_per_column, regression_report

__all__ = [
    "AttentionAux",
    "ECAConfig",
    "ECACrossAttention",
    "ECAObjective",
    "ECAPooling",
    "LossConfig",
    "dnpl_loss",
    "pcc_loss",
    "pcc_per_dim",
    "pearson_per_column",
    "regression_report",
    "sra_penalty",
]
