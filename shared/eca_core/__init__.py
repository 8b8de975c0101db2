"""Extrapolative Correlation Attention (ECA): layers, converters, losses, metrics (torch + numpy only).

The pipelines (runner, CLIs, diagnostics, synthetic benchmark) live in submodules that need the
``[pipeline]`` extra; importing ``eca_core`` itself never imports them.
"""

from eca_core.attention import AttentionAux, ECAAggregation, ECAConfig, ECACrossAttention, ECAPooling, collect_attention_stats, collect_lambdas
from eca_core.convert import ECARTDLAttention, ECATimmAttention, from_rtdl, from_timm, swap_attention
from eca_core.losses import ECAObjective, LossConfig, dnpl_loss, pcc_loss, pcc_per_dim, sra_penalty
from eca_core.metrics import pearson_per_column, regression_report
from eca_core.mha import ECAMultiheadAttention
from eca_core.variants import VARIANTS, layer_config

__all__ = [
    "AttentionAux",
    "ECAAggregation",
    "ECAConfig",
    "ECACrossAttention",
    "ECAMultiheadAttention",
    "ECAObjective",
    "ECAPooling",
    "ECARTDLAttention",
    "ECATimmAttention",
    "LossConfig",
    "VARIANTS",
    "collect_attention_stats",
    "collect_lambdas",
    "dnpl_loss",
    "from_rtdl",
    "from_timm",
    "layer_config",
    "pcc_loss",
    "pcc_per_dim",
    "pearson_per_column",
    "regression_report",
    "sra_penalty",
    "swap_attention",
]
