"""ECA attention layers: attention pooling and multi-head cross-attention, softmax or ECA.

Both layers compute ``z = v̄ + λ·(Σ_j α_j v_j − v̄)`` with ``α = softmax(s / τ)`` (DESIGN §2):

* softmax mode (or both switches off): τ = 1, λ = 1, i.e. plain softmax attention;
* DATS: τ_i = τ_min + (1 − τ_min)·tanh(β·d_i / d_ref), d_i the in-sample dispersion of the
  aggregated elements (a statistic: no gradient flows through it), d_ref a running mean of d over
  training batches (frozen in eval);
* SRA: λ_i = min(λ_max, 1 + softplus(MLP(x̄_i))), starting near 1.

Masks have explicit names: ``context_mask`` (B, N) with **True = a real element**, or
``key_padding_mask`` with ``nn.MultiheadAttention``'s meaning (**True = padding**, ignored); never a
bare ``mask``. λ for the SRA penalty is collected per forward: :func:`collect_lambdas` gathers the λ
of every layer run inside it (for :func:`eca_core.losses.sra_penalty`), so only layers that ran in this
step contribute, and no layer keeps a λ (or its graph) between steps.
``return_aux=True`` (or ``need_weights=True``) also returns weights and temperatures.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eca_core.eca_config import ECAConfig

__all__ = ["AttentionAux", "ECAAggregation", "ECAConfig", "ECACrossAttention", "ECAPooling", "collect_attention_stats", "collect_lambdas",
           "record_lambda"]

_TAU_FLOOR = 1e-2
_EPS = 1e-6


class AttentionAux(NamedTuple):
    """Per-sample quantities of one forward: λ (B,), τ (B,), weights (B, H, L, N), dispersion d (B,).

    ``weights`` and ``dispersion`` are filled when ``return_aux``/``need_weights`` asked for them.
    """

    lam: Tensor
    tau: Tensor
    weights: Tensor | None
    dispersion: Tensor


def check_set(x: Tensor, mask: Tensor | None, name: str = "x") -> Tensor:
    """Validate a set ``x`` (B, N, D) and its mask (B, N); return a boolean mask (all True if None)."""
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape (batch, elements, dim), got {tuple(x.shape)}")
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match {name} shape {tuple(x.shape)}: expected {tuple(x.shape[:2])}")
    mask = mask.to(device=x.device, dtype=torch.bool)
    if x.device.type == "cpu" and not torch.compiler.is_compiling():  # a descriptive error costs nothing on the CPU
        if not bool(mask.any(dim=1).all()):
            empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
            raise ValueError(f"mask leaves samples {empty[:10]} with no valid element")
    elif not torch.compiler.is_compiling():  # on an accelerator: checked without a host sync
        torch._assert_async(mask.any(dim=1).all(), "context mask leaves a sample with no valid element")
    return mask


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the element axis (dim 1) of ``x`` (B, N, ...) counting only ``mask`` (B, N)."""
    w = mask.to(x.dtype)
    count = w.sum(1).clamp_min(1.0)
    if x.dim() == 3:  # a batched matmul is cheaper than a full elementwise product, forward and backward
        return torch.bmm(w.unsqueeze(1), x).squeeze(1) / count.unsqueeze(1)
    w = w.view(*w.shape, *([1] * (x.dim() - 2)))
    return (x * w).sum(1) / count.view(-1, *([1] * (x.dim() - 2)))


def _set_statistics(x: Tensor, mask: Tensor, with_dispersion: bool) -> tuple[Tensor, Tensor | None]:
    """x̄ (B, D) of a masked set (differentiable) and, if asked, d (B, 1, 1) = sqrt(max(mean_j ‖x_ij‖² − ‖x̄_i‖², eps))
    without autograd: the cheap forms used for λ's input and τ, d in the shape τ scales the queries with (each op here
    is ECA's fixed cost on small sets). Every set has a real element (``check_set``)."""
    w = mask.to(x.dtype)
    w = w.div_(w.sum(1, keepdim=True)).unsqueeze(1)  # (B,1,N) weights of the masked mean
    xbar = torch.bmm(w, x)  # (B,1,D)
    if not with_dispersion:
        return xbar.view(xbar.shape[0], -1), None
    with torch.no_grad():
        sq = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square()  # (B,N,1) ‖x_ij‖² (out of place: vmap has no square_ rule)
        var = torch.baddbmm(torch.bmm(w, sq), xbar, xbar.transpose(1, 2), alpha=-1.0)  # (B,1,1) mean ‖x‖² − ‖x̄‖²
        d = var.clamp_min_(_EPS).sqrt_()  # ≥ sqrt(eps): rounding can make the difference slightly negative
    return xbar.view(xbar.shape[0], -1), d


def set_dispersion(x: Tensor, mask: Tensor, with_radius: bool = True, eps: float = _EPS) -> tuple[Tensor, ...]:
    """In-sample mean x̄ (B, D), dispersion d (B,) and, if asked, hull radius R (B,) of a masked set.

    The numerically careful form (centred before squaring), in float32, or float64 for float64 input;
    ``eps`` inside the square roots keeps gradients finite (diagnostics pass 0 for exact values).
    """
    x = x if x.dtype == torch.float64 else x.float()
    xbar = masked_mean(x, mask)
    sq = ((x - xbar[:, None, :]) ** 2).sum(-1)  # (B, N)
    sq = sq.masked_fill(~mask, 0.0)
    d = torch.sqrt((sq.sum(1) / mask.sum(1).clamp_min(1)) + eps)
    if not with_radius:
        return xbar, d
    return xbar, d, torch.sqrt(sq.max(1).values + eps)


class DispersionTemperature(nn.Module):
    """DATS: τ_i = τ_min + (1 − τ_min)·tanh(β·d_i / d_ref), d_ref a running mean of d in training.

    In eval d_ref is frozen; a layer that never trained uses d_ref = d_i (τ = τ_min + (1 − τ_min)·tanh β).
    τ is a constant for autograd (d is a statistic and DATS has no parameters), so it runs without a graph.
    """

    def __init__(self, cfg: ECAConfig) -> None:
        super().__init__()
        self.tau_min, self.beta, self.momentum = cfg.tau_min, cfg.beta, cfg.d_ref_momentum
        self.register_buffer("d_ref", torch.zeros(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def forward(self, d: Tensor) -> Tensor:
        d = d if d.dtype == torch.float32 else d.float()
        ref = self.d_ref
        if self.training:  # running mean, the first batch copied; tensor ops only (no host sync, compiles whole)
            mean, weight = d.mean(), torch.where(self.initialised, self.momentum, 1.0)  # weight 1: replace d_ref
            ref.lerp_(mean, weight) if ref.dtype == torch.float32 else ref.lerp_(mean.to(ref.dtype), weight.to(ref.dtype))
            self.initialised.fill_(True)
        else:  # frozen; an untrained layer uses each sample's own d so samples never affect each other
            ref = torch.where(self.initialised, ref, d)
        tau = d / (ref + _EPS) if ref.dtype == torch.float32 else d / (ref.float() + _EPS)  # a fresh tensor: d is kept
        tau = tau.tanh_() if self.beta == 1.0 else tau.mul_(self.beta).tanh_()
        tau = tau.mul_(1.0 - self.tau_min).add_(self.tau_min)
        return tau.clamp_min_(_TAU_FLOOR) if self.tau_min < _TAU_FLOOR else tau  # tanh >= 0, so τ >= τ_min


class ResidualScale(nn.Module):
    """SRA: λ_i = min(λ_max, 1 + softplus(MLP(x̄_i))), initialised so that λ ≈ 1; x̄ (..., D) -> λ (..., 1)."""

    def __init__(self, dim: int, cfg: ECAConfig) -> None:
        super().__init__()
        self.lambda_max = cfg.lambda_max
        # tanh-GELU: within 1e-3 of erf-GELU, and a third of its cost on these (B, hidden) inputs on CPUs
        self.mlp = nn.Sequential(nn.Linear(dim, cfg.lambda_hidden), nn.GELU(approximate="tanh"), nn.Linear(cfg.lambda_hidden, 1))
        nn.init.normal_(self.mlp[2].weight, std=0.01)
        nn.init.constant_(self.mlp[2].bias, cfg.lambda_bias_init)

    def forward(self, xbar: Tensor) -> Tensor:
        first, last = self.mlp[0], self.mlp[2]  # the MLP unrolled: three module calls cost more than its math here
        xbar = xbar if xbar.dtype == first.weight.dtype else xbar.to(first.weight.dtype)
        raw = F.linear(F.gelu(F.linear(xbar, first.weight, first.bias), approximate="tanh"), last.weight, last.bias)
        raw = raw if raw.dtype in (torch.float32, torch.float64) else raw.float()  # half precision: λ in float32
        return F.softplus(raw).add_(1.0).clamp_max_(self.lambda_max)  # in place: softplus/clamp backward need no output


def _head_dim(dim: int, num_heads: int, head_dim: int | None) -> int:
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    if head_dim is None:
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}; pass head_dim explicitly")
        return dim // num_heads
    return head_dim


def context_keep_mask(x: Tensor, context_mask: Tensor | None, key_padding_mask: Tensor | None, name: str) -> Tensor:
    """One boolean (B, N) keep-mask from either convention: ``context_mask`` True = a real element, or
    ``key_padding_mask`` with ``nn.MultiheadAttention``'s meaning (True = padding, ignored)."""
    if context_mask is not None and key_padding_mask is not None:
        raise ValueError("give context_mask (True = keep) or key_padding_mask (True = ignore), not both")
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:  # a float mask: -inf (or any negative) marks padding
            key_padding_mask = key_padding_mask < 0
        context_mask = ~key_padding_mask.to(torch.bool)
    return check_set(x, context_mask, name)


class ECAAggregation(nn.Module):
    """The ECA part of any attention layer: DATS and SRA around a (masked) softmax aggregation.

    A host layer projects q, k, v itself and calls :meth:`_aggregate`; the converters in
    :mod:`eca_core.convert` attach one of these to timm and transformers attention modules.
    """

    def __init__(self, set_dim: int, num_heads: int, head_dim: int, dropout: float, cfg: ECAConfig | None) -> None:
        super().__init__()
        self.cfg = cfg or ECAConfig()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.attn_drop = nn.Dropout(dropout)  # timm's name; another module here (a training engine's) takes the unfused path
        self.temperature = DispersionTemperature(self.cfg) if self.cfg.use_dats else None
        self.residual_scale = ResidualScale(set_dim, self.cfg) if self.cfg.use_sra else None
        self.scale: float | None = None  # logit scale; None: 1/sqrt(head_dim)

    @property
    def dropout(self) -> float:
        """Attention-weight dropout probability (held by ``attn_drop``)."""
        return self.attn_drop.p

    @dropout.setter
    def dropout(self, p: float) -> None:
        self.attn_drop.p = p

    def _statistics(self, elements: Tensor, mask: Tensor, need_weights: bool) -> tuple[Tensor | None, Tensor | None]:
        """(x̄ (B,D), d (B,1,1)) of the set, each only where it is used: x̄, differentiable, is λ's MLP input; d, a
        statistic (no gradient flows through τ's d), sets τ (and fills the aux of need_weights/return_aux calls). Hosts
        call it on their input before projecting it, while the elements are still in cache."""
        temperature = self.temperature is not None or need_weights
        if not temperature and self.residual_scale is None:
            return None, None
        x = elements if elements.dtype in (torch.float32, torch.float64) else elements.float()
        return _set_statistics(x, mask, temperature)

    def _aggregate(self, q: Tensor, k: Tensor, v: Tensor, elements: Tensor | None, mask: Tensor, need_weights: bool,
                   attn_bias: Tensor | None = None, stats: tuple[Tensor | None, Tensor | None] | None = None
                   ) -> tuple[Tensor, AttentionAux | None]:
        # q (B,H,L,dh)  k, v (B,H,N,dh)  elements (B,N,D)  mask (B,N) keep  attn_bias (B|1,H|1,L,N) additive
        # stats: the host's _statistics(elements, mask, need_weights) (None: computed here from elements)
        # -> out (B,H,L,dh), and the aux only for need_weights (the host returns it); λ (B,1), τ and d (B,1,1) till then
        temperature, residual_scale = self.temperature, self.residual_scale
        xbar, d = stats if stats is not None else self._statistics(elements, mask, need_weights)
        tau = temperature(d) if temperature is not None else None
        lam = residual_scale(xbar) if residual_scale is not None else None
        if tau is not None:
            q = q / (tau if tau.dtype == q.dtype else tau.to(q.dtype)).unsqueeze(1)  # (B,1,1,1)
        attn_mask = mask[:, None, None, :]  # (B,1,1,N), True = attend
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(self.head_dim)
        if attn_bias is not None:  # an extra additive / boolean mask (nn.MultiheadAttention's attn_mask)
            attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~attn_mask, float("-inf")) + attn_bias
        weights = None
        if need_weights or type(self.attn_drop) is not nn.Dropout:
            scores = (q @ k.transpose(-1, -2)) * scale
            scores = scores.float().masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                else scores.float() + attn_mask.float()
            weights = torch.softmax(scores, dim=-1).to(v.dtype)
            out = self.attn_drop(weights) @ v
            weights = weights if need_weights else None
        else:
            p = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, scale=self.scale)
        if lam is not None:  # v̄ + λ·(Σα v − v̄), one kernel; v̄ (B,H,1,dh) broadcasts over the queries
            weight = (lam if lam.dtype == out.dtype else lam.to(out.dtype)).view(-1, 1, 1, 1)
            out = torch.lerp(self._value_mean(xbar, v, mask), out, weight)
            if torch.is_grad_enabled():  # collected for sra_penalty, (B,); never from a no-grad forward
                _record_lambda(lam.view(-1))
        if _STAT_COLLECTORS:  # collect_attention_stats(): λ and τ for logs, detached
            _record_stats(None if lam is None else lam.view(-1), None if tau is None else tau.view(-1))
        if not need_weights:
            return out, None
        b = q.shape[0]
        ones = q.new_ones(b, dtype=torch.float32)
        return out, AttentionAux(ones if lam is None else lam.view(b), ones if tau is None else tau.view(b), weights,
                                 q.new_full((b,), float("nan"), dtype=torch.float32) if d is None else d.view(b))

    def _value_mean(self, xbar: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """v̄ (B,H,1,dh): the mean of the values over the real elements. A host whose ``v_proj`` is an
        ``nn.Linear`` on the elements gets it as ``v_proj(x̄)`` (exact: the projection is affine, and cheaper)."""
        proj = getattr(self, "v_proj", None)
        if isinstance(proj, (nn.Linear, nn.Identity)):  # (B, H·dh) is (B,H,1,dh) in memory: one view
            return proj(xbar if xbar.dtype == v.dtype else xbar.to(v.dtype)).view(xbar.shape[0], self.num_heads, 1, self.head_dim)
        w = mask.to(v.dtype)
        return (torch.einsum("bn,bhnd->bhd", w, v) / w.sum(1).clamp_min(1.0).view(-1, 1, 1)).unsqueeze(2)

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)


class ECAPooling(ECAAggregation):
    """Attention pooling: ``num_queries`` learned queries attend over a set → (B, Q, out_dim).

    With ``value_proj=False`` and ``out_proj=False`` the output is a weighted combination of the
    elements themselves (the paper's gating-attention regressor).
    """

    def __init__(
        self,
        dim: int,
        num_queries: int = 1,
        num_heads: int = 1,
        head_dim: int | None = None,
        value_proj: bool = True,
        out_proj: bool = True,
        out_dim: int | None = None,
        dropout: float = 0.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        cfg: ECAConfig | None = None,
    ) -> None:
        head_dim = _head_dim(dim, num_heads, head_dim)
        inner = num_heads * head_dim
        if not value_proj and inner != dim:
            raise ValueError(f"value_proj=False needs num_heads*head_dim == dim, got {num_heads}*{head_dim} != {dim}")
        super().__init__(dim, num_heads, head_dim, dropout, cfg)
        self.dim, self.num_queries = dim, num_queries
        self.query = nn.Parameter(torch.randn(num_queries, inner) * 0.02)
        self.k_proj = nn.Linear(dim, inner, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, inner, bias=qkv_bias) if value_proj else nn.Identity()
        self.out_proj = nn.Linear(inner, out_dim or dim, bias=proj_bias) if out_proj else nn.Identity()

    def forward(self, x: Tensor, context_mask: Tensor | None = None, key_padding_mask: Tensor | None = None,
                return_aux: bool = False, need_weights: bool = False):
        """x (B, N, dim); ``context_mask`` (B, N) True = a real element, or ``key_padding_mask`` True = padding
        → (B, Q, out_dim) [, AttentionAux]; with ``need_weights`` the aux holds the weights (B, H, Q, N)."""
        mask = context_keep_mask(x, context_mask, key_padding_mask, "x")
        if x.shape[-1] != self.dim:
            raise ValueError(f"x has feature dim {x.shape[-1]}, layer expects {self.dim} (shape {tuple(x.shape)})")
        b = x.shape[0]
        stats = self._statistics(x, mask, need_weights or return_aux)  # before the projections: x is in cache
        q = self.query.to(x.dtype).expand(b, -1, -1)  # (B,Q,inner)
        out, aux = self._aggregate(self._split(q), self._split(self.k_proj(x)), self._split(self.v_proj(x)), x, mask,
                                   need_weights or return_aux, stats=stats)
        out = self.out_proj(out.transpose(1, 2).reshape(b, self.num_queries, -1))
        return (out, aux) if (return_aux or need_weights) else out


class ECACrossAttention(ECAAggregation):
    """Multi-head cross-attention (query attends over key/value set) with softmax or ECA aggregation.

    ``forward(query, key, value=None, context_mask=None)``: query (B, L, dim), key/value (B, N, kv_dim),
    ``context_mask`` (B, N) True = a real element (or ``key_padding_mask`` True = padding, PyTorch's
    meaning) → (B, L, dim). Self-attention is ``forward(x, x)``. For ``nn.MultiheadAttention``'s exact
    signature and return use :class:`eca_core.mha.ECAMultiheadAttention`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        head_dim: int | None = None,
        kv_dim: int | None = None,
        dropout: float = 0.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        cfg: ECAConfig | None = None,
    ) -> None:
        head_dim = _head_dim(dim, num_heads, head_dim)
        kv_dim = kv_dim or dim
        super().__init__(kv_dim, num_heads, head_dim, dropout, cfg)
        inner = num_heads * head_dim
        self.dim, self.kv_dim = dim, kv_dim
        self.q_proj = nn.Linear(dim, inner, bias=qkv_bias)
        self.k_proj = nn.Linear(kv_dim, inner, bias=qkv_bias)
        self.v_proj = nn.Linear(kv_dim, inner, bias=qkv_bias)
        self.out_proj = nn.Linear(inner, dim, bias=proj_bias)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor | None = None,
        context_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        return_aux: bool = False,
        need_weights: bool = False,
    ):
        value = key if value is None else value
        mask = context_keep_mask(value, context_mask, key_padding_mask, "value")
        if query.dim() != 3 or query.shape[0] != key.shape[0] or query.shape[-1] != self.dim:
            raise ValueError(f"query shape {tuple(query.shape)} incompatible: expected (B={key.shape[0]}, L, {self.dim})")
        if key.shape[:2] != value.shape[:2] or key.shape[-1] != self.kv_dim or value.shape[-1] != self.kv_dim:
            raise ValueError(f"key {tuple(key.shape)} / value {tuple(value.shape)} must be (B, N, {self.kv_dim}) with the same B, N")
        b, l, _ = query.shape
        stats = self._statistics(value, mask, need_weights or return_aux)  # before the projections: value is in cache
        q, k, v = self._split(self.q_proj(query)), self._split(self.k_proj(key)), self._split(self.v_proj(value))
        out, aux = self._aggregate(q, k, v, value, mask, need_weights or return_aux, stats=stats)
        out = self.out_proj(out.transpose(1, 2).reshape(b, l, -1))
        return (out, aux) if (return_aux or need_weights) else out


# ----------------------------------------------------------------------------------------- λ collection

_COLLECTORS: list[list[Tensor]] = []
_STAT_COLLECTORS: list[dict[str, list[Tensor]]] = []


def _record_stats(lam: Tensor | None, tau: Tensor | None) -> None:
    for bucket in _STAT_COLLECTORS:
        if lam is not None:
            bucket["lambda"].append(lam.detach())
        if tau is not None:
            bucket["tau"].append(tau.detach())


@contextmanager
def collect_attention_stats() -> Iterator[dict[str, list[Tensor]]]:
    """Detached λ (SRA) and τ (DATS) of every ECA layer that runs inside the block, for logging::

        with collect_attention_stats() as stats:
            model(x)
        torch.cat(stats["lambda"]).mean(), torch.cat(stats["tau"]).min()
    """
    bucket: dict[str, list[Tensor]] = {"lambda": [], "tau": []}
    _STAT_COLLECTORS.append(bucket)
    try:
        yield bucket
    finally:
        _STAT_COLLECTORS.remove(bucket)


def record_lambda(lam: Tensor, tau: Tensor | None = None) -> None:
    """Hand this forward's λ (B,) (and τ) to the active collectors: for an ECA component of one's own (a pooling head
    that extrapolates like SRA), so ``collect_lambdas`` / ``sra_penalty`` and ``collect_attention_stats`` see it."""
    if torch.is_grad_enabled():
        _record_lambda(lam)
    if _STAT_COLLECTORS:
        _record_stats(lam, tau)


def _record_lambda(lam: Tensor) -> None:
    for bucket in _COLLECTORS:
        bucket.append(lam)


@contextmanager
def collect_lambdas() -> Iterator[list[Tensor]]:
    """The λ (B,) of every ECA layer that runs inside the block, in call order (for ``sra_penalty``)::

        with collect_lambdas() as lams:
            pred = model(x)
        loss = mse + gamma * sra_penalty(lams)
    """
    bucket: list[Tensor] = []
    _COLLECTORS.append(bucket)
    try:
        yield bucket
    finally:
        _COLLECTORS.remove(bucket)
