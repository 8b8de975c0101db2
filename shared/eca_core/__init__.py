"""Extrapolative Correlation Attention (ECA): layers, converters, losses, metrics (torch + numpy only).

The pipelines (runner, CLIs, diagnostics, synthetic benchmark) live in submodules that need the
``[pipeline]`` extra; importing ``eca_core`` itself never imports them.
"""

# name -> module: the layers, losses and converters load (with torch) on first use, so the command-line
# tools that import eca_core submodules answer --help without importing torch
_EXPORTS = {
    "AttentionAux": "eca_core.attention",
    "ECAAggregation": "eca_core.attention",
    "ECAConfig": "eca_core.eca_config",
    "ECACrossAttention": "eca_core.attention",
    "ECAPooling": "eca_core.attention",
    "collect_attention_stats": "eca_core.attention",
    "collect_lambdas": "eca_core.attention",
    "ECARTDLAttention": "eca_core.convert",
    "ECATimmAttention": "eca_core.convert",
    "from_rtdl": "eca_core.convert",
    "from_timm": "eca_core.convert",
    "swap_attention": "eca_core.convert",
    "ECAObjective": "eca_core.losses",
    "LossConfig": "eca_core.loss_config",
    "dnpl_loss": "eca_core.losses",
    "pcc_loss": "eca_core.losses",
    "pcc_per_dim": "eca_core.losses",
    "sra_penalty": "eca_core.losses",
    "pearson_per_column": "eca_core.metrics",
    "regression_report": "eca_core.metrics",
    "ECAMultiheadAttention": "eca_core.mha",
    "VARIANTS": "eca_core.variants",
    "layer_config": "eca_core.variants",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'eca_core' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


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
