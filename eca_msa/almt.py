"""ALMT (Zhang et al., EMNLP 2023) with ECA in the video stream's frame aggregation.

Forward (B = batch, T = 8 learned tokens, D = 128):

    text (B,Lt,768) | BERT(text_bert) ─ Linear → TokenStream → h_l (B,T,D) ─ TextEncoder → [h_t⁰, h_t¹, h_t²]
    audio (B,La,Da) ─────────────────── Linear → TokenStream → h_a (B,T,D) ┐
    vision (B,Lv,Dv) ────────────────── Linear → TokenStream → h_v (B,T,D) ┴→ HyperLayers(h_t^i, h_a, h_v) → H (B,T,D)
    CrossFusion(query = [CLS; h_t²], key/value = [CLS; H]) → CLS (B,D) → Linear → ŷ (B,)

A TokenStream is ALMT's 1-layer pre-norm transformer over [T learned tokens; sequence] with
learned positions whose first T outputs are the modality's tokens. Only those T outputs are used,
so only the token positions are computed as queries; keys/values are all positions (masked by the
lengths when ``mask_padding``). This is exactly ALMT's output for the tokens. In the video stream
this attention is :class:`eca_core.attention.ECACrossAttention`: ``video_attention.mode="softmax"``
is plain ALMT, ``"eca"`` adds DATS + SRA where the tokens aggregate the (homogeneous) frames.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eca_core.attention import ECACrossAttention
from eca_core.errors import InputError
from eca_msa.configs import ALMTConfig


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, L, heads·dh) → (B, heads, L, dh)."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


class FeedForward(nn.Module):
    """Linear → GELU → Linear (with dropout), ALMT's MLP."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Attention(nn.Module):
    """ALMT's multi-head softmax attention: ``attn(q, k, v, context_mask)``, context_mask (B, N) True = attend."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float = 0.0, qkv_bias: bool = False) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dropout = heads, dropout
        self.to_q = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, q: Tensor, k: Tensor, v: Tensor, context_mask: Tensor | None = None) -> Tensor:
        b, lq, _ = q.shape
        q, k, v = (split_heads(t, self.heads) for t in (self.to_q(q), self.to_k(k), self.to_v(v)))  # (B,h,L,dh)
        attn_mask = None if context_mask is None else context_mask[:, None, None, :].to(torch.bool)  # (B,1,1,N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(b, lq, -1))  # (B,Lq,D)


class PreNormAttention(nn.Module):
    """Separate LayerNorms on q, k, v, then attention (ALMT)."""

    def __init__(self, dim: int, attn: nn.Module) -> None:
        super().__init__()
        self.norm_q, self.norm_k, self.norm_v = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = attn

    def forward(self, q: Tensor, k: Tensor, v: Tensor, context_mask: Tensor | None = None) -> Tensor:
        return self.attn(self.norm_q(q), self.norm_k(k), self.norm_v(v), context_mask)


class PreNormFeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm, self.ff = nn.LayerNorm(dim), FeedForward(dim, hidden, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.ff(self.norm(x))


class TokenStream(nn.Module):
    """One modality's 1-layer pre-norm transformer over [T tokens; sequence]; returns the T token outputs."""

    def __init__(self, seq_len: int, cfg: ALMTConfig, attn: nn.Module) -> None:
        super().__init__()
        self.seq_len, self.num_tokens = seq_len, cfg.tokens
        self.tokens = nn.Parameter(torch.zeros(1, cfg.tokens, cfg.dim))
        self.pos = nn.Parameter(torch.randn(1, cfg.tokens + seq_len, cfg.dim))
        self.attn = PreNormAttention(cfg.dim, attn)
        self.ff = PreNormFeedForward(cfg.dim, cfg.mlp_dim, cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, N, D), mask (B, N) True = real frame or None → tokens (B, T, D)."""
        b, n, _ = x.shape
        if n > self.seq_len:
            raise ValueError(f"sequence of {n} steps is longer than the model's {self.seq_len} positions")
        x = torch.cat([self.tokens.expand(b, -1, -1), x], dim=1) + self.pos[:, : self.num_tokens + n]  # (B,T+N,D)
        if mask is not None:
            mask = torch.cat([torch.ones(b, self.num_tokens, dtype=torch.bool, device=x.device), mask.to(torch.bool)], dim=1)
        h = x[:, : self.num_tokens]  # (B,T,D): only the token positions' outputs are used
        h = self.attn(h, x, x, mask) + h  # tokens attend over [tokens; frames]
        return self.ff(h) + h  # (B,T,D)


class TextEncoder(nn.Module):
    """Learned positions + (hyper_depth − 1) pre-norm self-attention layers; keeps every hidden state."""

    def __init__(self, cfg: ALMTConfig) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, cfg.tokens, cfg.dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PreNormAttention(cfg.dim, Attention(cfg.dim, cfg.heads, cfg.dim_head, cfg.dropout)),
                           PreNormFeedForward(cfg.dim, cfg.mlp_dim, cfg.dropout)])
            for _ in range(cfg.hyper_depth - 1)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        """x (B, T, D) → hyper_depth states, each (B, T, D)."""
        x = x + self.pos[:, : x.shape[1]]
        states = [x]
        for attn, ff in self.layers:
            x = attn(x, x, x) + x
            x = ff(x) + x
            states.append(x)
        return states


class HyperLayer(nn.Module):
    """H ← LN(H) + W_o(Attn(h_t → h_a) + Attn(h_t → h_v)); separate LayerNorms on h_t, h_a, h_v, H (ALMT's AHL)."""

    def __init__(self, cfg: ALMTConfig) -> None:
        super().__init__()
        d, heads, dh = cfg.dim, cfg.hyper_heads, cfg.hyper_dim_head
        inner = heads * dh
        self.heads = heads
        self.norm_t, self.norm_a, self.norm_v, self.norm_h = (nn.LayerNorm(d) for _ in range(4))
        self.to_q = nn.Linear(d, inner, bias=False)
        self.to_k_a, self.to_v_a = nn.Linear(d, inner, bias=False), nn.Linear(d, inner, bias=False)
        self.to_k_v, self.to_v_v = nn.Linear(d, inner, bias=False), nn.Linear(d, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, d), nn.Dropout(cfg.dropout))

    def forward(self, h_t: Tensor, h_a: Tensor, h_v: Tensor, hyper: Tensor) -> Tensor:
        # all (B,T,D)
        h_t, h_a, h_v, hyper = self.norm_t(h_t), self.norm_a(h_a), self.norm_v(h_v), self.norm_h(hyper)
        b, n, _ = h_t.shape
        q = split_heads(self.to_q(h_t), self.heads)  # (B,h,T,dh)
        out_a = F.scaled_dot_product_attention(q, split_heads(self.to_k_a(h_a), self.heads), split_heads(self.to_v_a(h_a), self.heads))
        out_v = F.scaled_dot_product_attention(q, split_heads(self.to_k_v(h_v), self.heads), split_heads(self.to_v_v(h_v), self.heads))
        shift = self.to_out((out_a + out_v).transpose(1, 2).reshape(b, n, -1))  # (B,T,D)
        return hyper + shift


class CrossFusion(nn.Module):
    """Cross-transformer: [CLS; text] queries attend to [CLS; H]; returns the CLS output (B, D)."""

    def __init__(self, cfg: ALMTConfig) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_source = nn.Parameter(torch.randn(1, cfg.tokens + 1, cfg.dim))
        self.pos_target = nn.Parameter(torch.randn(1, cfg.tokens + 1, cfg.dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PreNormAttention(cfg.dim, Attention(cfg.dim, cfg.heads, cfg.dim_head, cfg.dropout)),
                           PreNormFeedForward(cfg.dim, cfg.mlp_dim, cfg.dropout)])
            for _ in range(cfg.fusion_depth)
        )

    def forward(self, source: Tensor, target: Tensor) -> Tensor:
        b = source.shape[0]
        cls = self.cls.expand(b, -1, -1)
        source = torch.cat([cls, source], 1) + self.pos_source[:, : source.shape[1] + 1]  # (B,T+1,D)
        target = torch.cat([cls, target], 1) + self.pos_target[:, : target.shape[1] + 1]  # (B,T+1,D)
        for attn, ff in self.layers:
            target = attn(target, source, source) + target
            target = ff(target) + target
        return target[:, 0]  # (B,D)


def load_text_model(name: str) -> nn.Module:
    """A transformers encoder (BERT) from a hub name or a local folder; one-line InputError if it cannot be had."""
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(name)
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise InputError(f"model.text_model={name!r}: cannot load a transformers model from it ({reason}); give a local "
                         f"folder holding config.json and the weights, or add option frozen-text to use the precomputed "
                         f"'text' features") from exc
    return model.train()  # from_pretrained returns eval mode; fine-tuning runs BERT's dropout as ALMT does


class ALMT(nn.Module):
    """Adaptive Language-guided Multimodal Transformer regressor; ``forward(batch) → (B,)`` sentiment."""

    def __init__(self, cfg: ALMTConfig | None = None) -> None:
        super().__init__()
        cfg = self.cfg = cfg or ALMTConfig()
        d = cfg.dim
        self.bert = None
        text_in = cfg.text_dim
        if cfg.text_model:
            self.bert = load_text_model(cfg.text_model)
            text_in = self.bert.config.hidden_size
        self.hyper = nn.Parameter(torch.ones(1, cfg.tokens, d))
        self.proj_text, self.proj_audio, self.proj_vision = nn.Linear(text_in, d), nn.Linear(cfg.audio_dim, d), nn.Linear(cfg.vision_dim, d)
        self.text_stream = TokenStream(cfg.text_len, cfg, Attention(d, cfg.heads, cfg.dim_head, cfg.dropout))
        self.audio_stream = TokenStream(cfg.audio_len, cfg, Attention(d, cfg.heads, cfg.dim_head, cfg.dropout))
        video_attn = ECACrossAttention(d, num_heads=cfg.heads, head_dim=cfg.dim_head, dropout=cfg.dropout, qkv_bias=False,
                                       cfg=cfg.video_attention)  # ALMT's q/k/v projections have no bias
        self.video_stream = TokenStream(cfg.vision_len, cfg, video_attn)
        self.text_encoder = TextEncoder(cfg)
        self.hyper_layers = nn.ModuleList(HyperLayer(cfg) for _ in range(cfg.hyper_depth))
        self.fusion = CrossFusion(cfg)
        self.head = nn.Linear(d, 1)

    def encode_text(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, Lt, text_dim) features: the precomputed ``text`` or a fine-tuned BERT on ``text_bert``."""
        if self.bert is None:
            return batch["text"]
        if "text_bert" not in batch:
            raise KeyError("the model fine-tunes BERT but the batch has no 'text_bert' ids")
        ids, att, seg = batch["text_bert"].long().unbind(1)  # each (B, Lt)
        return self.bert(input_ids=ids, attention_mask=att, token_type_ids=seg).last_hidden_state

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        masks = {k: batch.get(f"{k}_mask") if self.cfg.mask_padding else None for k in ("text", "audio", "vision")}
        h_l = self.text_stream(self.proj_text(self.encode_text(batch)), masks["text"])  # (B,T,D)
        h_a = self.audio_stream(self.proj_audio(batch["audio"]), masks["audio"])  # (B,T,D)
        h_v = self.video_stream(self.proj_vision(batch["vision"]), masks["vision"])  # (B,T,D), ECA here
        h_t = self.text_encoder(h_l)  # hyper_depth × (B,T,D)
        hyper = self.hyper.expand(h_l.shape[0], -1, -1)  # (B,T,D)
        for layer, h in zip(self.hyper_layers, h_t):
            hyper = layer(h, h_a, h_v, hyper)
        cls = self.fusion(hyper, h_t[-1])  # (B,D)
        return self.head(cls).squeeze(-1)  # (B,)
