"""The per-fit Lightning loop: one ``Trainer`` per fit, early stopping on the held-out training slide, then the refit.

The reference the training engine (:mod:`eca_bio.training.engine`) is held to, ``train.engine: per_fit``, and the loop
EGN trains end to end in (``egn*`` methods: windows in, its precision, its learning-rate schedule)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from eca_core.runner.config import to_dict
from eca_core.runner.trainer import call_trainer, make_trainer
from eca_core.runner.runtime import Runtime
from eca_bio.training.engine import best_validation
from eca_bio.training.members import use_member_dropout
from eca_bio.model.exemplars import ExemplarBank
from eca_bio.methods import EGN_METHODS, METHODS
from eca_bio.training.spots import SpotDataset, SpotSet
from eca_bio.training.task import EGNTask, ExpressionTask, SpotTask

if TYPE_CHECKING:
    from eca_bio.configs import BioTrainConfig


def _trainer(cfg: BioTrainConfig, method: str, runtime: Runtime, max_epochs: int, callbacks: list, validate: bool,
             min_epochs: int = 1):
    precision = cfg.egn.precision if method in EGN_METHODS else "32-true"
    return make_trainer(runtime, max_epochs=max_epochs, min_epochs=min(min_epochs, max_epochs), callbacks=callbacks,
                        limit_val_batches=1.0 if validate else 0, deterministic=False, precision=precision)


def _loader(ds: Dataset, batch_size: int, shuffle: bool, runtime: Runtime, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    workers = Runtime.of(runtime).workers(0)
    # drop a trailing batch of 1 spot: batch PCC is undefined on one row
    drop_last = shuffle and len(ds) % batch_size == 1
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=workers, drop_last=drop_last)


def _new_task(method: str, cfg: BioTrainConfig, spots: SpotSet, seed: int) -> SpotTask:
    """A freshly seeded model of ``method`` for ``spots``' feature and gene dimensions (``cfg``: the method's own,
    :meth:`BioTrainConfig.for_method`)."""
    overrides, pcc = EGN_METHODS[method] if method in EGN_METHODS else METHODS[method]
    loss_cfg = {**to_dict(cfg.loss), "pcc": pcc}
    in_dim, n_genes = spots.features.shape[1], spots.targets.shape[1]
    L.seed_everything(seed, workers=True, verbose=False)
    if method in EGN_METHODS:
        eca = {k: getattr(cfg.model, k) for k in ("tau_min", "beta", "lambda_max")}
        task = EGNTask(in_dim, n_genes, {**cfg.egn.model_kwargs(), **overrides}, eca, loss_cfg, cfg.lr, cfg.weight_decay,
                       cfg.egn.schedule)
    else:
        task = ExpressionTask(in_dim, n_genes, {**to_dict(cfg.model), **overrides}, loss_cfg, cfg.lr, cfg.weight_decay)
        use_member_dropout(task.model, seed)  # the engine's dropout draws, so both loops fit the same model
    return task


def _early_stopped(method: str, task: SpotTask, cfg: BioTrainConfig, fit: SpotSet, val: SpotSet, bank: ExemplarBank,
                   runtime: Runtime, seed: int, callbacks: list) -> list[dict[str, float]]:
    """Train ``task`` on ``fit`` with early stopping on ``val``'s PCC@M; its per-epoch history."""
    stop = L.pytorch.callbacks.EarlyStopping(monitor="val_pcc", mode="max", patience=cfg.patience)
    trainer = _trainer(cfg, method, runtime, cfg.epochs, [*callbacks, stop], validate=True, min_epochs=cfg.min_epochs)
    call_trainer(trainer.fit, task, _loader(SpotDataset(fit, bank), cfg.batch_size, True, runtime, seed),
                 _loader(SpotDataset(val, bank), cfg.batch_size, False, runtime, seed))
    return task.history


def fit_neural(method: str, cfg: BioTrainConfig, fit: SpotSet, val: SpotSet | None, everything: SpotSet, bank: ExemplarBank,
               work: Path, runtime: Runtime, seed: int = 0) -> tuple[SpotTask, list[dict[str, float]], int]:
    """Early-stop on ``val`` (best validation PCC@M), then refit on ``everything`` for that many epochs; ``seed``
    sets the initialisation, dropout and batch order."""
    task = _new_task(method, cfg, fit, seed)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=work, filename="best", monitor="val_pcc", mode="max", save_top_k=1)
    history = _early_stopped(method, task, cfg, fit, val, bank, runtime, seed, [ckpt])
    _, best_epoch = best_validation(history)
    if not cfg.refit:
        best = type(task).load_from_checkpoint(ckpt.best_model_path, map_location="cpu", weights_only=True)
        return best, history, best_epoch
    final = _new_task(method, cfg, fit, seed)
    call_trainer(_trainer(cfg, method, runtime, best_epoch, [], validate=False).fit,
                 final, _loader(SpotDataset(everything, bank), cfg.batch_size, True, runtime, seed))
    return final, history, best_epoch


def validation_score(method: str, cfg: BioTrainConfig, fit: SpotSet, val: SpotSet, bank: ExemplarBank,
                     runtime: Runtime, seed: int = 0) -> tuple[float, int]:
    """(best validation PCC@M, its epoch) of one configuration trained with early stopping; nothing is kept."""
    return best_validation(_early_stopped(method, _new_task(method, cfg, fit, seed), cfg, fit, val, bank, runtime, seed, []))
