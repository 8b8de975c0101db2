"""Put ECA into models you already have, keeping their trained weights.

- :func:`from_timm` turns a timm ``Attention`` (ViT, DeiT, DINOv2, UNI, ...) into :class:`ECATimmAttention`.
- :func:`swap_attention` walks a model and swaps every ``nn.MultiheadAttention``
  (→ :class:`~eca_core.mha.ECAMultiheadAttention`, e.g. inside ``nn.TransformerEncoder``), every timm
  ``Attention``, every ``MultiheadAttention`` of the FT-Transformer authors' package
  ``rtdl_revisiting_models`` (→ :class:`ECARTDLAttention`), and every Hugging Face transformers
  self-attention that dispatches through
  ``ALL_ATTENTION_FUNCTIONS`` (BERT, ViT, ...: an :class:`~eca_core.attention.ECAAggregation` is attached
  to the module and the model's attention implementation is set to ``"eca"``).

With ``ECAConfig(mode="softmax")`` a swapped model reproduces the original outputs (to float
tolerance); with ``mode="eca"`` DATS starts at τ = τ_min + (1 − τ_min)·tanh β and SRA at λ ≈ 1, so
fine-tuning starts close to the original model. timm, transformers and rtdl_revisiting_models are
imported only when used.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import torch
from torch import Tensor, nn

from eca_core.attention import ECAAggregation, ECAConfig
from eca_core.mha import ECAMultiheadAttention


class ECATimmAttention(ECAAggregation):
    """timm's ``Attention`` (fused qkv, optional q/k norm, scale norm, gate) with ECA aggregation.

    Same forward as timm's: ``forward(x, attn_mask=None, is_causal=False)``; ``attn_mask`` follows
    ``F.scaled_dot_product_attention`` (bool True = may attend, or float added to the logits).
    """

    def __init__(self, src: nn.Module, cfg: ECAConfig | None = None) -> None:
        dim = src.qkv.in_features
        super().__init__(dim, src.num_heads, src.head_dim, src.attn_drop.p, cfg)
        self.attn_dim = src.num_heads * src.head_dim
        self.scale = float(src.scale)
        for name in ("qkv", "q_norm", "k_norm", "norm", "proj", "proj_drop"):
            setattr(self, name, copy.deepcopy(getattr(src, name)))
        self.gate = copy.deepcopy(getattr(src, "gate", None))
        ref = next(src.parameters())
        self.to(device=ref.device, dtype=ref.dtype)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        b, n, _ = x.shape                                                            # (B, N, C)
        keep = torch.ones(b, n, dtype=torch.bool, device=x.device)                  # self-attention over all tokens
        stats = self._statistics(x, keep, False)                                     # before the projections: x is in cache
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                                      # (B, H, N, dh)
        q, k = self.q_norm(q), self.k_norm(k)
        bias = None
        if attn_mask is not None:
            bias = attn_mask.to(q.dtype) if attn_mask.dtype != torch.bool else \
                torch.zeros(attn_mask.shape, dtype=q.dtype, device=x.device).masked_fill(~attn_mask, float("-inf"))
        elif is_causal:
            bias = torch.zeros(n, n, dtype=q.dtype, device=x.device).masked_fill(
                torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        out, _ = self._aggregate(q, k, v, x, keep, False, bias, stats=stats)
        out = self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))


def from_timm(attn: nn.Module, cfg: ECAConfig | None = None) -> ECATimmAttention:
    """ECA version of a timm ``Attention`` module, its weights copied."""
    return ECATimmAttention(attn, cfg).train(attn.training)


class ECARTDLAttention(ECAAggregation):
    """``rtdl_revisiting_models.MultiheadAttention`` (FT-Transformer) with ECA aggregation.

    Same forward as the original: ``forward(x_q, x_kv)``; the set is ``x_kv`` (the feature tokens and
    [CLS]), so its dispersion sets τ and its mean feeds λ. The last FT-Transformer block queries with
    [CLS] alone (``x_q = x[:, :1]``): that is ECA pooling the feature tokens into the prediction.
    Parameter names stay ``W_q``, ``W_k``, ``W_v``, ``W_out``. Linformer compression is not supported.
    """

    def __init__(self, src: nn.Module, cfg: ECAConfig | None = None) -> None:
        if getattr(src, "key_compression", None) is not None:
            raise ValueError("rtdl MultiheadAttention with Linformer key/value compression: ECA needs the full set of tokens")
        dim, heads = src.W_q.in_features, src._n_heads
        super().__init__(dim, heads, dim // heads, src.dropout.p if src.dropout is not None else 0.0, cfg)
        for name in ("W_q", "W_k", "W_v", "W_out"):
            setattr(self, name, copy.deepcopy(getattr(src, name)))
        ref = next(src.parameters())
        self.to(device=ref.device, dtype=ref.dtype)

    @property
    def v_proj(self) -> nn.Linear:  # v̄ = W_v(x̄) (see ECAAggregation._value_mean); not a second registration
        return self.W_v

    def forward(self, x_q: Tensor, x_kv: Tensor) -> Tensor:
        b, l, _ = x_q.shape                                                          # (B, L, D), L = N or 1 ([CLS])
        keep = torch.ones(x_kv.shape[:2], dtype=torch.bool, device=x_kv.device)     # every token is real
        stats = self._statistics(x_kv, keep, False)                                  # before the projections: x_kv is in cache
        q = self._split(self.W_q(x_q))                                               # (B, H, L, dh)
        k, v = self._split(self.W_k(x_kv)), self._split(self.W_v(x_kv))              # (B, H, N, dh)
        out, _ = self._aggregate(q, k, v, x_kv, keep, False, stats=stats)
        out = out.transpose(1, 2).reshape(b, l, -1)                                  # (B, L, D)
        return self.W_out(out) if self.W_out is not None else out


def from_rtdl(attn: nn.Module, cfg: ECAConfig | None = None) -> ECARTDLAttention:
    """ECA version of an ``rtdl_revisiting_models.MultiheadAttention``, its weights copied."""
    return ECARTDLAttention(attn, cfg).train(attn.training)


def _eca_hf_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                      scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
    """transformers attention function: q, k, v (B, H, L|S, dh) → ((B, L, H, dh), weights)."""
    eca: ECAAggregation = module.eca
    b, _, l, _ = query.shape
    s = key.shape[2]
    elements = getattr(module, "_eca_elements", None)
    if elements is None or elements.shape[:2] != (b, s):
        raise RuntimeError("ECA attention needs the layer's input (set by swap_attention's pre-hook)")
    keep = torch.ones(b, s, dtype=torch.bool, device=query.device)
    bias = None
    if attention_mask is not None:
        m = attention_mask[..., :s]
        if m.dtype == torch.bool:  # sdpa-style: True = may attend
            keep = m.any(dim=-2).reshape(b, s) if m.shape[0] == b else keep
            bias = torch.zeros(m.shape, dtype=query.dtype, device=query.device).masked_fill(~m, float("-inf"))
        else:  # eager-style: large negative = masked
            bias = m.to(query.dtype)
            keep = (m > torch.finfo(m.dtype).min / 2).any(dim=-2).reshape(b, s) if m.shape[0] == b else keep
    eca.scale = scaling
    eca.dropout = dropout
    out, aux = eca._aggregate(query, key, value, elements, keep, bool(kwargs.get("output_attentions")), bias)
    return out.transpose(1, 2).contiguous(), aux.weights if aux is not None else None


def _register_hf() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("eca", _eca_hf_attention)
    AttentionMaskInterface.register("eca", sdpa_mask)


def _stash_elements(module: nn.Module, args: tuple, kwargs: dict) -> None:
    module._eca_elements = args[0] if args else kwargs["hidden_states"]


def _is_hf_attention(m: nn.Module) -> bool:
    return getattr(m, "config", None) is not None and hasattr(m.config, "_attn_implementation") and (
        (hasattr(m, "query") and hasattr(m, "value")) or (hasattr(m, "q_proj") and hasattr(m, "v_proj")))


def swap_attention(model: nn.Module, cfg: ECAConfig | None = None) -> nn.Module:
    """Swap the attention layers of ``model`` for ECA ones in place (weights kept); returns the model.

    Handles ``nn.MultiheadAttention`` (incl. inside ``nn.TransformerEncoderLayer``), timm ``Attention``,
    FT-Transformer's (``rtdl_revisiting_models``) ``MultiheadAttention`` and transformers self-attention
    modules. Raises if nothing was swapped.
    """
    cfg = cfg or ECAConfig()
    swapped = 0
    timm_attention = _timm_attention_class()
    rtdl = sys.modules.get("rtdl_revisiting_models")  # a model holding its attention has imported it
    rtdl_attention = getattr(rtdl, "MultiheadAttention", None)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            replacement = None
            if isinstance(child, nn.MultiheadAttention):
                replacement = ECAMultiheadAttention.from_torch(child, cfg)
            elif timm_attention is not None and type(child) is timm_attention:
                replacement = from_timm(child, cfg)
            elif rtdl_attention is not None and type(child) is rtdl_attention:
                replacement = from_rtdl(child, cfg)
            if replacement is not None:
                setattr(module, child_name, replacement)
                swapped += 1
        if isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False  # PyTorch's fused fast path would bypass the swapped attention
    hf = [m for m in model.modules() if _is_hf_attention(m) and not hasattr(m, "eca")]
    if hf:
        _register_hf()
        for m in hf:
            dim = (m.value if hasattr(m, "value") else m.v_proj).in_features
            heads = getattr(m, "num_attention_heads", None) or getattr(m.config, "num_attention_heads")
            head_dim = getattr(m, "attention_head_size", None) or getattr(m, "head_dim")
            m.eca = ECAAggregation(dim, heads, head_dim, 0.0, cfg).to(next(m.parameters()).device)
            m.register_forward_pre_hook(_stash_elements, with_kwargs=True)
            swapped += 1
        for m in model.modules():
            config = getattr(m, "config", None)
            if config is not None and hasattr(config, "_attn_implementation"):
                config._attn_implementation = "eca"
    if not swapped:
        raise ValueError(f"{type(model).__name__}: no nn.MultiheadAttention, timm Attention, rtdl (FT-Transformer) "
                         f"MultiheadAttention or transformers attention found")
    return model


def _timm_attention_class():
    try:
        from timm.layers.attention import Attention
    except ImportError:
        try:
            from timm.models.vision_transformer import Attention
        except ImportError:
            return None
    return Attention
