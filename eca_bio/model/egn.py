"""EGN (Yang et al., WACV 2023; Yan98/EGN v1/egn.py): a ViT on a spot-centred image window whose blocks are bridged
to the spot's exemplars (their embeddings and expression) every ``bfre`` blocks, pooled by CSRA and read out with
the bridged spot query. The paper's spatial-transcriptomics host of ECA (its Table 3).

Written from EGN's code, parameter for parameter (the tests pin the published size's count, 133,356,794, as EGN's own
``v1/egn.py`` computes it). ECA in EGN, two switches for its two softmax attentions: ``vit_attention="eca"`` swaps the
ViT's self-attention for ECA (``eca_core.swap_attention`` on timm's ``Attention``, which is EGN's ``Attention`` with
its weights named ``qkv``/``proj``), ``pool="eca"`` puts ECA in CSRA's token softmax (:class:`ECACSRA`). EGN's
exemplar bridge gates with sigmoids, not a softmax: there is no convex aggregation there for ECA to replace.
Shapes: B spots, N = (image_size / patch_size)² tokens, K exemplars, G genes, M the exemplar-embedding size (mdim).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from eca_core.attention import DispersionTemperature, ResidualScale, record_lambda, set_dispersion
from eca_core.eca_config import ECAConfig

# EGN's input normalisation (its main.py: torchvision Normalize with these, measured on 10xProteomic's images)
EGN_MEAN = (0.5476, 0.5218, 0.6881)
EGN_STD = (0.2461, 0.2101, 0.1649)


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.norm(x))


def feed_forward(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout))


class Projector(nn.Module):
    """The spot's and its exemplars' embeddings into the ViT width, refined together; exemplar expression -> values."""

    def __init__(self, mdim: int, dim: int, player: int, linear_projection: bool, n_genes: int, dropout: float) -> None:
        super().__init__()
        self.proq = nn.Linear(mdim, dim)
        self.proe = nn.Linear(mdim + n_genes, dim)
        self.layers = nn.ModuleList([PreNorm(dim, feed_forward(dim, dim, dropout)) for _ in range(player)])
        self.to_v = nn.Linear(n_genes, dim) if linear_projection else \
            nn.Sequential(nn.Linear(n_genes, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, q: Tensor, oq: Tensor, oq_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # q (B,1,M) spot embedding  oq (B,K,M) exemplar embeddings  oq_v (B,K,G) exemplar expression
        exp = self.proe(torch.cat((oq, oq_v), -1))                       # (B,K,dim)
        x = torch.cat((self.proq(q), exp), 1)                            # (B,1+K,dim)
        for ff in self.layers:
            x = ff(x) + x
        q, oq = x.split([q.size(1), exp.size(1)], 1)
        return q, oq, self.to_v(oq_v)


class CSRA(nn.Module):
    """Class-specific residual attention pooling (Zhu & Wu 2021): mean + lam · softmax(T · score)-weighted score."""

    def __init__(self, dim: int, temperature: float = 0.1, lam: float = 0.5) -> None:
        super().__init__()
        self.temperature, self.lam = temperature, lam
        self.head = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        score = self.head(x)                                             # (B,N,dim)
        weights = torch.softmax(score * self.temperature, dim=1)          # over the N tokens
        return score.mean(1) + self.lam * (score * weights).sum(1)        # (B,dim)


class ECACSRA(CSRA):
    """CSRA with ECA in its token softmax: DATS sets the temperature from the tokens' dispersion, and SRA extrapolates
    the attention read-out from the token mean, ``att' = s̄ + λ·(Σ α s − s̄)``; the head is ``s̄ + lam·att'``. With both
    switched off (τ = 1, λ = 1) it is CSRA. λ reaches ``collect_lambdas`` (the SRA penalty) like any ECA layer's."""

    def __init__(self, dim: int, cfg: ECAConfig, temperature: float = 0.1, lam: float = 0.5) -> None:
        super().__init__(dim, temperature, lam)
        self.dats = DispersionTemperature(cfg) if cfg.use_dats else None
        self.residual_scale = ResidualScale(dim, cfg) if cfg.use_sra else None

    def forward(self, x: Tensor) -> Tensor:
        score = self.head(x)                                              # (B,N,dim)
        keep = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        _, d = set_dispersion(x.detach(), keep, with_radius=False)  # a statistic, as in every ECA layer
        tau = self.dats(d) if self.dats is not None else None
        scale = self.temperature / tau.view(-1, 1, 1) if tau is not None else self.temperature
        att = (score * torch.softmax(score * scale, dim=1)).sum(1)          # (B,dim)
        base = score.mean(1)
        if self.residual_scale is not None:
            lam = self.residual_scale(x.mean(1)).squeeze(-1)               # (B,)
            att = torch.lerp(base, att, lam.to(att.dtype).unsqueeze(1))
            record_lambda(lam, tau)
        return base + self.lam * att


class Update(nn.Module):
    """The spot query and the exemplar keys updated from their difference (EGN's exemplar bridging, first half)."""

    def __init__(self, dim: int, dim_head: int) -> None:
        super().__init__()
        inner = dim_head * 4
        self.query = nn.Sequential(nn.Linear(dim * 2, inner), nn.SiLU(True), nn.Linear(inner, dim * 2))
        self.value = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # q (B,1,dim)  k, v (B,K,dim)
        value = self.value(v)
        query, key = self.query(torch.cat((q - k, k), 2)).chunk(2, 2)  # (B,K,dim) each
        return (query.sigmoid() * value).mean(1, True) + q, self.norm(key.sigmoid() * value + k)


class ExemplarBridge(nn.Module):
    """EGN's EB block: the bridged spot query gates the image tokens per head and grid cell (sigmoid, not softmax)."""

    def __init__(self, dim: int, heads: int, dim_head: int, grid: int) -> None:
        super().__init__()
        inner = dim_head * heads
        self.heads, self.grid = heads, grid
        self.update = Update(dim, dim_head)
        self.to_x = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner))
        self.to_k = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, grid * grid * heads))
        self.to_v = nn.Linear(inner, dim, bias=False)
        self.to_n = nn.Linear(inner, dim, bias=False)
        self.to_out = nn.Linear(inner, dim)  # in EGN's block and its parameter count, unused by its forward

    def forward(self, x: Tensor, q: Tensor, oq: Tensor, oq_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # x (B,N,dim) tokens, N = grid²  q (B,1,dim)  oq, oq_v (B,K,dim)
        b, g, h = x.shape[0], self.grid, self.heads
        new_q, new_k = self.update(q, oq, oq_v)
        key = self.to_k(new_q).view(b, 1, h, g, g).transpose(1, 2)                      # (B,h,1,g,g)
        value = self.to_x(x).view(b, g, g, h, -1).permute(0, 3, 4, 1, 2) * key.sigmoid()  # (B,h,c,g,g)
        x = self.to_v(value.permute(0, 3, 4, 1, 2).reshape(b, g * g, -1)) + x
        q = self.to_n(value.mean((3, 4)).reshape(b, 1, -1)) + q
        return x, q, new_k


class EGN(nn.Module):
    """EGN as published: ``EGN()`` is the size of EGN's README command (image 256, patch 32, dim 1024, depth 8,
    16 heads, mlp 4096, an exemplar bridge every 2 blocks with 8 heads of 64, mdim 2048, player 2, 250 genes)."""

    def __init__(self, image_size: int = 256, patch_size: int = 32, n_genes: int = 250, dim: int = 1024, depth: int = 8,
                 heads: int = 16, mlp_dim: int = 4096, bhead: int = 8, bdim: int = 64, bfre: int = 2, mdim: int = 2048,
                 player: int = 2, linear_projection: bool = True, channels: int = 3, dropout: float = 0.0,
                 emb_dropout: float = 0.0, vit_attention: Literal["softmax", "eca"] = "softmax",
                 pool: Literal["csra", "eca"] = "csra", eca: ECAConfig | None = None) -> None:
        super().__init__()
        from timm.layers import Attention  # EGN's Attention: qkv without bias, an output projection with one

        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads} (EGN's dim_head is dim / heads)")
        self.image_size, self.patch_size, self.grid = image_size, patch_size, image_size // patch_size
        self.register_buffer("mean", torch.tensor(EGN_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(EGN_STD).view(1, 3, 1, 1), persistent=False)
        self.patch_embed = nn.Linear(channels * patch_size * patch_size, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, self.grid * self.grid + 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.projector = Projector(mdim, dim, player, linear_projection, n_genes, dropout)
        self.blocks = nn.ModuleList([nn.ModuleDict({
            "attn": PreNorm(dim, Attention(dim, num_heads=heads, qkv_bias=False, proj_drop=dropout)),
            **({"bridge": ExemplarBridge(dim, bhead, bdim, self.grid)} if (i + 1) % bfre == 0 else {}),
            "ff": PreNorm(dim, feed_forward(dim, mlp_dim, dropout)),
        }) for i in range(depth)])
        if pool not in ("csra", "eca"):
            raise ValueError(f"pool must be 'csra' or 'eca', got {pool!r}")
        self.pool = ECACSRA(dim, eca or ECAConfig(mode="eca")) if pool == "eca" else CSRA(dim)
        self.head = nn.Sequential(nn.LayerNorm(dim * 2), nn.Linear(dim * 2, n_genes))
        if vit_attention == "eca":
            from eca_core.convert import swap_attention

            swap_attention(self.blocks, eca or ECAConfig(mode="eca"))
        elif vit_attention != "softmax":
            raise ValueError(f"vit_attention must be 'softmax' or 'eca', got {vit_attention!r}")

    def prepare(self, windows: Tensor) -> Tensor:
        """Stored uint8 windows (B,S,S,3) -> the model's input (B,3,image_size,image_size): resized (antialiased)
        when S differs, scaled to [0, 1] and normalised as EGN's ToTensor + Normalize."""
        x = windows.permute(0, 3, 1, 2).to(self.mean.dtype) / 255.0
        if x.shape[-1] != self.image_size:
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                                          align_corners=False)
        return (x - self.mean) / self.std

    def tokens(self, image: Tensor) -> Tensor:
        """Image (B,C,H,W) -> patch rows (B,N,p·p·C), in EGN's order (row-major patches, then p1, p2, channel)."""
        b, c, hgt, wid = image.shape
        p = self.patch_size
        x = image.view(b, c, hgt // p, p, wid // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (hgt // p) * (wid // p), p * p * c)

    def forward(self, image: Tensor, embedding: Tensor, ex_emb: Tensor, ex_expr: Tensor) -> Tensor:
        # image (B,3,S,S)  embedding (B,1,M) the spot's retrieval embedding  ex_emb (B,K,M)  ex_expr (B,K,G) -> (B,G)
        x = self.patch_embed(self.tokens(image))
        pos = self.pos_embedding[:, : x.shape[1]]
        x = self.dropout(x + pos)
        q, oq, oq_v = self.projector(embedding, ex_emb, ex_expr)
        for block in self.blocks:
            x = block["attn"](x + pos) + x
            if "bridge" in block:
                x, q, oq = block["bridge"](x, q, oq, oq_v)
            x = block["ff"](x) + x
        return self.head(torch.cat((self.pool(x), q.squeeze(1)), 1))
