"""The expression model as a Lightning module (DESIGN §2 objective, per-epoch scores): the per-fit training loop's task."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch

from eca_core.attention import collect_attention_stats, collect_lambdas
from eca_core.runner.config import from_dict
from eca_core.losses import ECAObjective, LossConfig
from eca_core.metrics import finite_score
from eca_bio.model.expression import ExpressionModel, ModelConfig
from eca_bio.training.spots import epoch_scores


class ExpressionTask(L.LightningModule):
    """Lightning wrapper: the DESIGN §2 objective, per-epoch PCC@M / MSE for train and validation."""

    def __init__(self, in_dim: int, n_genes: int, model: dict[str, Any], loss: dict[str, Any], lr: float = 1e-3,
                 weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = ExpressionModel(in_dim, n_genes, from_dict(ModelConfig, model, "model"))
        self.objective = ECAObjective(from_dict(LossConfig, loss, "loss"))
        self.history: list[dict[str, float]] = []
        self._buf: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "val": []}
        self._stats: dict[str, list[torch.Tensor]] = {"lambda": [], "tau": []}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch["features"], batch.get("tokens"), batch.get("ex_emb"), batch.get("ex_expr"))

    def training_step(self, batch: dict[str, torch.Tensor], _: int) -> torch.Tensor:
        with collect_attention_stats() as stats, collect_lambdas() as lams:
            pred = self(batch)
        for name in ("lambda", "tau"):
            self._stats[name] += [t.float().cpu() for t in stats[name]]
        total, parts = self.objective(pred, batch["y"], lams)
        self.log_dict({f"train_{k}": v for k, v in parts.items()}, on_step=False, on_epoch=True, batch_size=len(pred))
        self._buf["train"].append((pred.detach().float().cpu().numpy(), batch["y"].float().cpu().numpy()))
        return total

    def validation_step(self, batch: dict[str, torch.Tensor], _: int) -> None:
        pred = self(batch)
        self._buf["val"].append((pred.float().cpu().numpy(), batch["y"].float().cpu().numpy()))

    def _scores(self, split: str) -> dict[str, float]:
        buf, self._buf[split] = self._buf[split], []
        if not buf:
            return {}
        pcc, mse = epoch_scores(np.concatenate([b[0] for b in buf]), np.concatenate([b[1] for b in buf]))
        return {f"{split}_pcc": pcc, f"{split}_mse": mse}

    def on_validation_epoch_end(self) -> None:
        scores = self._scores("val")
        if scores and not self.trainer.sanity_checking:
            self.log("val_pcc", finite_score(scores["val_pcc"]))
            self._pending = scores

    def _attention_stats(self) -> dict[str, float]:
        """Mean / min / max over the epoch's spots of λ (SRA) and τ (DATS) of the ECA layer, if it has them."""
        out = {}
        for name, values in self._stats.items():
            if values:
                v = torch.cat(values)
                out |= {f"{name}_mean": float(v.mean()), f"{name}_min": float(v.min()), f"{name}_max": float(v.max())}
        self._stats = {"lambda": [], "tau": []}
        return out

    def on_train_epoch_end(self) -> None:
        row = {"epoch": self.current_epoch + 1, **self._scores("train"), **getattr(self, "_pending", {}), **self._attention_stats()}
        self._pending = {}
        self.history.append(row)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
