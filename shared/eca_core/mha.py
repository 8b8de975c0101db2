"""``ECAMultiheadAttention``: ``nn.MultiheadAttention``'s constructor, forward and return, with ECA inside.

Swap one for the other (or convert a trained one with :meth:`ECAMultiheadAttention.from_torch`)::

    attn = ECAMultiheadAttention(256, 8, batch_first=True, cfg=ECAConfig(mode="eca"))
    out, weights = attn(query, key, value, key_padding_mask=pad)   # pad: True = padding, as in PyTorch

With ``cfg=ECAConfig(mode="softmax")`` a converted layer reproduces the original module's output.
The set statistics of DATS/SRA (x̄, d) are taken over the value elements that ``key_padding_mask``
keeps; ``attn_mask`` (per query) only shapes the attention weights, as in PyTorch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from eca_core.attention import ECAAggregation, ECAConfig, _head_dim, context_keep_mask


class ECAMultiheadAttention(ECAAggregation):
    """Multi-head attention with ``nn.MultiheadAttention``'s interface; softmax or ECA aggregation."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device=None,
        dtype=None,
        cfg: ECAConfig | None = None,
    ) -> None:
        if add_bias_kv or add_zero_attn:
            raise ValueError("ECAMultiheadAttention does not support add_bias_kv / add_zero_attn (they add fake elements to the set)")
        head_dim = _head_dim(embed_dim, num_heads, None)
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        super().__init__(self.vdim, num_heads, head_dim, dropout, cfg)
        dd = {"device": device, "dtype": dtype}
        self.embed_dim, self.batch_first = embed_dim, batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **dd)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias, **dd)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias, **dd)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **dd)
        # what nn.TransformerEncoderLayer reads of its self_attn: no fused in-projection, so never its fast path
        self._qkv_same_embed_dim = self.kdim == embed_dim == self.vdim
        self.in_proj_weight = self.in_proj_bias = None
        if self.residual_scale is not None:
            self.residual_scale.to(**dd)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention, cfg: ECAConfig | None = None) -> "ECAMultiheadAttention":
        """A copy of a (trained) ``nn.MultiheadAttention`` with ECA aggregation; its weights are copied."""
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("cannot convert an nn.MultiheadAttention with add_bias_kv / add_zero_attn")
        w = mha.out_proj.weight
        layer = cls(mha.embed_dim, mha.num_heads, mha.dropout, bias=mha.in_proj_bias is not None, kdim=mha.kdim,
                    vdim=mha.vdim, batch_first=mha.batch_first, device=w.device, dtype=w.dtype, cfg=cfg)
        e = mha.embed_dim
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                for i, proj in enumerate((layer.q_proj, layer.k_proj, layer.v_proj)):
                    proj.weight.copy_(mha.in_proj_weight[i * e:(i + 1) * e])
            else:
                layer.q_proj.weight.copy_(mha.q_proj_weight)
                layer.k_proj.weight.copy_(mha.k_proj_weight)
                layer.v_proj.weight.copy_(mha.v_proj_weight)
            if mha.in_proj_bias is not None:
                for i, proj in enumerate((layer.q_proj, layer.k_proj, layer.v_proj)):
                    proj.bias.copy_(mha.in_proj_bias[i * e:(i + 1) * e])
            layer.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                layer.out_proj.bias.copy_(mha.out_proj.bias)
        return layer.train(mha.training)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """As ``nn.MultiheadAttention.forward``: (L, B, E) or batch-first (B, L, E) or unbatched (L, E)
        → (attn_output, attn_weights (B, L, S), per head (B, H, L, S) without averaging, or None)."""
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, l, _ = query.shape                                               # (B, L, E)
        s = key.shape[1]
        keep = context_keep_mask(value, None, key_padding_mask, "value")    # (B, S) True = a real element
        bias = _additive(attn_mask, b, self.num_heads, l, s, query.dtype, query.device)
        if bias is None and is_causal:
            bias = _additive(torch.ones(l, s, dtype=torch.bool, device=query.device).triu(1), b, self.num_heads, l, s,
                             query.dtype, query.device)
        stats = self._statistics(value, keep, need_weights)  # before the projections: value is in cache
        q, k, v = self._split(self.q_proj(query)), self._split(self.k_proj(key)), self._split(self.v_proj(value))
        out, aux = self._aggregate(q, k, v, value, keep, need_weights, bias, stats=stats)
        out = self.out_proj(out.transpose(1, 2).reshape(b, l, self.embed_dim))
        weights = aux.weights if aux is not None else None
        if weights is not None and average_attn_weights:
            weights = weights.mean(1)                                       # (B, L, S)
        if unbatched:
            out = out.squeeze(0)
            weights = None if weights is None else weights.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, (weights if need_weights else None)


def _additive(attn_mask: Tensor | None, b: int, h: int, l: int, s: int, dtype, device) -> Tensor | None:
    """PyTorch's ``attn_mask`` ((L, S) or (B·H, L, S); bool True = not allowed, or float added) as (B|1, H|1, L, S) floats."""
    if attn_mask is None:
        return None
    m = attn_mask.to(device)
    if m.dtype == torch.bool:
        m = torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(m, float("-inf"))
    else:
        m = m.to(dtype)
    if m.dim() == 2:
        return m.view(1, 1, l, s)
    if m.dim() == 3 and m.shape[0] == b * h:
        return m.view(b, h, l, s)
    raise ValueError(f"attn_mask shape {tuple(attn_mask.shape)}: expected ({l}, {s}) or ({b * h}, {l}, {s})")
