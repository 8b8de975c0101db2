"""The bio models as Lightning modules (DESIGN §2 objective, per-epoch scores): the per-fit training loop's tasks.

:class:`ExpressionTask` trains the frozen-feature model, :class:`EGNTask` EGN end to end on spot windows; both share
the objective, the per-epoch PCC@M / MSE rows and the λ / τ statistics of their ECA layers."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch

from eca_core.attention import collect_attention_stats, collect_lambdas
from eca_core.runner.config import from_dict
from eca_core.losses import ECAObjective, LossConfig
from eca_core.metrics import finite_score
from eca_bio.model.expression import model_from_hparams
from eca_bio.training.spots import epoch_scores, spot_forward


class SpotTask(L.LightningModule):
    """What both tasks share: the objective, per-epoch scores for train and validation, λ / τ per epoch, AdamW."""

    model: torch.nn.Module

    def __init__(self, loss: dict[str, Any]) -> None:
        super().__init__()
        self.objective = ECAObjective(from_dict(LossConfig, loss, "loss"))
        self.history: list[dict[str, float]] = []
        self._buf: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "val": []}
        self._stats: dict[str, list[torch.Tensor]] = {"lambda": [], "tau": []}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return spot_forward(self.model, batch)

    def training_step(self, batch: dict[str, torch.Tensor], _: int) -> torch.Tensor:
        with collect_attention_stats() as stats, collect_lambdas() as lams:
            pred = self(batch)
        for name in ("lambda", "tau"):
            self._stats[name] += [t.float().cpu() for t in stats[name]]
        total, parts = self.objective(pred.float(), batch["y"], lams)
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
        """Mean / min / max over the epoch's spots of λ (SRA) and τ (DATS) of the ECA layers, if they have them."""
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


class ExpressionTask(SpotTask):
    """The frozen-feature expression model (:class:`~eca_bio.model.expression.ExpressionModel`) under the DESIGN §2
    objective."""

    def __init__(self, in_dim: int, n_genes: int, model: dict[str, Any], loss: dict[str, Any], lr: float = 1e-3,
                 weight_decay: float = 1e-4) -> None:
        super().__init__(loss)
        self.save_hyperparameters()
        self.model = model_from_hparams(dict(self.hparams)).train()  # the one builder model.pt is loaded with


def egn_lr_factor(step: int, cycle: int, warmup: int, floor: float = 0.2) -> float:
    """EGN's schedule (``CosineAnnealingWarmupRestarts``, cycle_mult 1, min_lr = lr/5) as a factor of lr at optimizer
    step ``step``: each cycle warms up linearly from the floor, then falls to it along a cosine."""
    s = step % cycle
    if s < warmup:
        return floor + (1 - floor) * s / warmup
    return floor + (1 - floor) * (1 + math.cos(math.pi * (s - warmup) / (cycle - warmup))) / 2


class EGNTask(SpotTask):
    """EGN (:mod:`eca_bio.model.egn`) trained end to end on spot windows; ``hparams`` rebuild it without this class."""

    def __init__(self, in_dim: int, n_genes: int, egn: dict[str, Any], eca: dict[str, Any], loss: dict[str, Any],
                 lr: float = 5e-4, weight_decay: float = 1e-4, schedule: str = "egn") -> None:
        super().__init__(loss)
        self.save_hyperparameters()
        self.model = model_from_hparams(dict(self.hparams)).train()

    def configure_optimizers(self):
        opt = super().configure_optimizers()
        if self.hparams.schedule != "egn":
            return opt
        # EGN: a cycle every half epoch (its first_cycle_steps = steps per epoch // 2), 100 warm-up steps; warm-up at
        # most half a cycle here, as EGN's scheduler refuses a warm-up as long as the cycle (small sections)
        per_epoch = max(1, int(self.trainer.estimated_stepping_batches) // max(1, self.trainer.max_epochs))
        cycle = max(2, per_epoch // 2)
        warmup = min(100, cycle // 2)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: egn_lr_factor(step, cycle, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
