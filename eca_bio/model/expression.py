"""The exemplar expression model (EGN-style, on frozen encoder features) and its baselines.

One spot ↦ 250 genes:

    tokens (B,T,D) ──LN·Linear──► (B,T,H) ──pool──► spot (B,H)  (+ Linear(CLS feature))
    exemplars: k nearest spots of other training slides, embedding (B,K,D) and expression (B,K,G)
        ──► [Linear(LN(emb)) ‖ expr] (B,K,H+G) ──cross-attention(query = spot)──► ctx (B,H)
    [spot ‖ ctx] ──MLP──► genes (B,G)

``pool="attention"`` uses :class:`eca_core.attention.ECAPooling` and :class:`ECACrossAttention`,
so ``attention = softmax | eca | no_sra | no_dats | no_dnpl`` switches every attention at once;
``pool="mean"`` replaces both by masked means (the mean-pool MLP baseline, same code path).
:class:`RidgeBaseline` is the HEST-Benchmark linear probe: PCA-256 of the pooled embeddings → ridge.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from eca_core.attention import ECACrossAttention, ECAPooling
from eca_core.runner.config import from_dict
from eca_core.variants import layer_config
from eca_bio.configs import ModelConfig
from eca_bio.model.egn import EGN


class ExpressionModel(nn.Module):
    """Token pooling + exemplar cross-attention + MLP head; see the module docstring for shapes."""

    def __init__(self, in_dim: int, n_genes: int, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ModelConfig()
        self.in_dim, self.n_genes = in_dim, n_genes
        h = cfg.hidden
        self.token_proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, h))
        self.feature_proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, h))
        self.token_pool = ECAPooling(h, num_queries=1, num_heads=cfg.heads, cfg=cfg.eca_config()) if cfg.pool == "attention" else None
        head_in = h
        if cfg.use_exemplars:
            self.exemplar_proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, h))
            kv = h + n_genes
            if cfg.pool == "attention":
                self.exemplar_attn = ECACrossAttention(h, num_heads=cfg.heads, kv_dim=kv, dropout=cfg.dropout, cfg=cfg.eca_config())
            else:
                self.exemplar_mean = nn.Linear(kv, h)
            head_in = 2 * h
        self.head = nn.Sequential(nn.LayerNorm(head_in), nn.Linear(head_in, h), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(h, n_genes))

    def dropout_modules(self) -> list[str]:
        """Names of the dropout modules that ``cfg.dropout`` sets: the exemplar attention's weights, the head."""
        return (["exemplar_attn.attn_drop"] if hasattr(self, "exemplar_attn") else []) + ["head.3"]

    def forward(self, features: Tensor, tokens: Tensor | None = None, ex_emb: Tensor | None = None,
                ex_expr: Tensor | None = None) -> Tensor:
        """features (B,D), tokens (B,T,D), ex_emb (B,K,D), ex_expr (B,K,G) → predicted targets (B,G)."""
        tokens = features[:, None] if tokens is None else tokens
        t = self.token_proj(tokens)  # (B,T,H)
        spot = self.token_pool(t)[:, 0] if self.token_pool is not None else t.mean(1)  # (B,H)
        spot = spot + self.feature_proj(features)
        if not self.cfg.use_exemplars:
            return self.head(spot)
        if ex_emb is None or ex_expr is None:
            raise ValueError("this model uses exemplars: pass ex_emb (B,K,D) and ex_expr (B,K,G)")
        e = torch.cat([self.exemplar_proj(ex_emb), ex_expr.to(spot.dtype)], dim=-1)  # (B,K,H+G)
        if self.cfg.pool == "attention":
            ctx = self.exemplar_attn(spot[:, None], e)[:, 0]  # (B,H)
        else:
            ctx = self.exemplar_mean(e.mean(1))
        return self.head(torch.cat([spot, ctx], dim=-1))


def model_from_hparams(hparams: dict[str, Any], state: dict[str, Tensor] | None = None) -> nn.Module:
    """The model the ``hparams`` of a ``model.pt`` describe (an :class:`ExpressionModel`, or EGN when they hold its
    keyword arguments), with its weights."""
    if "egn" in hparams:
        model = EGN(**{**hparams["egn"], "mdim": hparams["in_dim"], "n_genes": hparams["n_genes"]},
                    eca=layer_config("eca", **hparams["eca"]))
    else:
        model = ExpressionModel(hparams["in_dim"], hparams["n_genes"], from_dict(ModelConfig, hparams["model"], "model"))
    if state is not None:
        model.load_state_dict(state)
    return model.eval()


class RidgeBaseline:
    """HEST-Benchmark linear probe: standardise, PCA to ``n_components``, ridge (alpha = 100 / (P·G) by default)."""

    def __init__(self, n_components: int = 256, alpha: float | None = None) -> None:
        self.n_components, self.alpha = n_components, alpha
        self.params: dict[str, np.ndarray] = {}

    def fit(self, x: np.ndarray, y: np.ndarray) -> "RidgeBaseline":
        from sklearn.decomposition import PCA
        from sklearn.linear_model import Ridge

        x = np.asarray(x, dtype=np.float64)
        mean, std = x.mean(0), x.std(0)
        std = np.where(std > 1e-8, std, 1.0)
        z = (x - mean) / std
        n = min(self.n_components, z.shape[0] - 1, z.shape[1])
        pca = PCA(n_components=n, random_state=0).fit(z)
        p = pca.transform(z)
        alpha = self.alpha if self.alpha is not None else 100.0 / (p.shape[1] * y.shape[1])
        ridge = Ridge(alpha=alpha, solver="lsqr", max_iter=1000, random_state=0).fit(p, y)
        self.params = {"mean": mean, "std": std, "pca_mean": pca.mean_, "components": pca.components_,
                       "coef": ridge.coef_, "intercept": np.atleast_1d(ridge.intercept_), "alpha": np.asarray(alpha)}
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        p = self.params
        z = (np.asarray(x, dtype=np.float64) - p["mean"]) / p["std"]
        proj = (z - p["pca_mean"]) @ p["components"].T
        return (proj @ p["coef"].T + p["intercept"]).astype(np.float32)

    def save(self, path) -> None:
        np.savez(path, n_components=self.n_components, **self.params)

    @classmethod
    def load(cls, path) -> "RidgeBaseline":
        with np.load(path) as z:
            obj = cls(int(z["n_components"]), float(z["alpha"]))
            obj.params = {k: z[k] for k in z.files if k != "n_components"}
        return obj
