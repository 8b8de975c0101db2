"""The FT-Transformer of its authors' package (``rtdl_revisiting_models``), with ECA swapped into its attention.

FT-Transformer (Gorishniy et al. 2021): each numeric feature x_j -> x_j·W_j + b_j and each category
-> an embedding, a [CLS] token in front, pre-norm blocks (the first without its attention norm),
ReGLU feed-forward, and in the last block only [CLS] queries the tokens. A variant of
:mod:`eca_core.variants` swaps every block's attention by :func:`eca_core.swap_attention`; ``softmax``
keeps the model exactly as the package builds it.
"""

from __future__ import annotations


from torch import nn

from eca_core.variants import layer_config
from eca_tab.configs import FTConfig


def build_ft_transformer(n_num: int, cat_cardinalities: list[int], cfg: FTConfig, variant: str = "softmax",
                         tau_min: float = 0.3, beta: float = 1.0, lambda_max: float = 2.0) -> nn.Module:
    """``rtdl_revisiting_models.FTTransformer`` with one output; every attention is ECA unless ``variant`` is softmax."""
    try:
        from rtdl_revisiting_models import FTTransformer
    except ImportError as exc:  # the [tab] extra
        raise ImportError("the FT-Transformer needs rtdl_revisiting_models: pip install 'eca-pipelines[tab]'") from exc
    from eca_core.convert import swap_attention

    model = FTTransformer(
        n_cont_features=n_num, cat_cardinalities=list(cat_cardinalities), d_out=1,
        n_blocks=cfg.n_blocks, d_block=cfg.d_block, attention_n_heads=cfg.attention_n_heads,
        attention_dropout=cfg.attention_dropout, ffn_d_hidden=None, ffn_d_hidden_multiplier=cfg.ffn_d_hidden_multiplier,
        ffn_dropout=cfg.ffn_dropout, residual_dropout=cfg.residual_dropout,
    )
    layer = layer_config(variant, tau_min=tau_min, beta=beta, lambda_max=lambda_max)
    if layer.mode == "eca":
        swap_attention(model, layer)
    return model


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The package's own groups (``make_parameter_groups``: no weight decay on embeddings, norms and biases), with
    ``weight_decay`` on the rest; on a swapped model ECA's λ MLP weights are decayed like the other linear weights."""
    groups = model.make_parameter_groups()
    groups[0]["weight_decay"] = weight_decay
    return groups
