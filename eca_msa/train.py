"""Train ALMT in the three settings of the paper over several seeds with Lightning; model selection on validation.

Settings (each one config flag away from the one before):
  (i)   ``almt``      ALMT, MSE only (the original)
  (ii)  ``almt_pcc``  + plain PCC loss (``loss.pcc = "plain"``)
  (iii) ``almt_eca``  + ECA in the video stream (``video_attention.mode = "eca"``) and DNPL (``loss.pcc = "dnpl"``)

Selection rule: after every epoch the whole validation split is scored with MMSA's metrics; the
epoch with the best ``select_metric`` (published ALMT: lowest validation loss as MMSA computes it;
option ``select-mae``: lowest validation MAE) is kept, training stops after ``patience`` epochs
without improvement, and every reported test metric comes from that one epoch's checkpoint. The
test split is never used for selection (ALMT's own script reports the best test epoch; we do not). Each (setting, seed) run writes ``<setting>/seed<k>/metrics.json``; a finished
run with the same configuration is not repeated, so a crash loses at most the run in flight.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from eca_core.runner import distributed
from eca_core.runner.config import from_dict, to_dict
from eca_core.errors import InputError
from eca_core.io import read_json, write_json_atomic
from eca_core.attention import collect_lambdas
from eca_core.losses import ECAObjective, LossConfig
from eca_core.metrics import finite_score
from eca_core.runner.pipeline import StageContext, digest
from eca_core.runner.resume import item_is_current, write_item_marker
from eca_core.runner.trainer import call_trainer, make_trainer
from eca_core.runner.runtime import Runtime
from eca_msa.almt import ALMT, ALMTConfig
from eca_msa.datasets import DATASETS, dataset_spec
from eca_msa.metrics import HIGHER_IS_BETTER, mmsa_loss, regression_metrics
from eca_msa.schedule import lr_factor
from eca_msa.configs import SETTINGS, MSATrainConfig




def setting_configs(cfg: MSATrainConfig, setting: str, shapes: dict[str, int]) -> tuple[ALMTConfig, LossConfig]:
    """The model and loss of one setting, built for the data's lengths and feature sizes."""
    flags = SETTINGS[setting]
    softmax = flags["video_attention"] == "softmax"  # plain softmax: the DATS/SRA switches do not apply
    video = replace(cfg.model.video_attention, mode=flags["video_attention"], **({"dats": None, "sra": None} if softmax else {}))
    model = replace(cfg.model, video_attention=video, **shapes)
    loss = LossConfig(pcc=flags["pcc"], pcc_weight=cfg.pcc_weight if flags["pcc"] != "none" else 0.0,
                      sra_weight=cfg.sra_weight if flags["video_attention"] == "eca" else 0.0)
    return model, loss


class ALMTRegressor(L.LightningModule):
    """ALMT + the ECA objective; scores whole validation/test splits with MMSA's metrics."""

    def __init__(self, model_cfg: dict, loss_cfg: dict, lr: float, weight_decay: float, dataset: str,
                 schedule: str = "constant", epochs: int = 1, batch_size: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = ALMT(from_dict(ALMTConfig, model_cfg, "model"))
        self.objective = ECAObjective(from_dict(LossConfig, loss_cfg, "loss"))
        self.history: list[dict[str, float]] = []
        self.test_metrics: dict[str, float] = {}
        self.test_pred: np.ndarray | None = None
        self._outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._train_loss = [0.0, 0]
        self.step_seconds: list[float] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        with collect_lambdas() as lams:
            pred = self.model(batch)
        total, parts = self.objective(pred, batch["label"], lams)
        self.log_dict({f"train/{k}": v.detach() for k, v in parts.items()}, on_step=False, on_epoch=True, batch_size=len(pred))
        self._train_loss[0] += float(total.detach()) * len(pred)
        self._train_loss[1] += len(pred)
        return total

    def _collect(self, batch: dict[str, torch.Tensor]) -> None:
        self._outputs.append((self.model(batch).detach().float(), batch["label"].float()))

    def _scores(self) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        pred = torch.cat([p for p, _ in self._outputs])
        truth = torch.cat([t for _, t in self._outputs])
        self._outputs.clear()
        pred, truth = self.all_gather(pred).reshape(-1), self.all_gather(truth).reshape(-1)
        p, t = pred.cpu().numpy().astype(np.float64), truth.cpu().numpy().astype(np.float64)
        metrics = regression_metrics(p, t, dataset_spec(self.hparams.dataset).metrics)
        metrics["Loss"] = mmsa_loss(p, t, self.hparams.batch_size)
        metrics["loss_mse"] = float(np.mean((p - t) ** 2))
        return metrics, p, t

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._collect(batch)

    def on_validation_epoch_end(self) -> None:
        metrics, _, _ = self._scores()
        if self.trainer.sanity_checking:
            return
        logged = {f"val/{k}": finite_score(v, HIGHER_IS_BETTER.get(k, False)) for k, v in metrics.items()}
        self.log_dict(logged, sync_dist=False)
        n = max(self._train_loss[1], 1)
        self.history.append({"epoch": int(self.current_epoch), "lr": getattr(self, "_lr", float("nan")),
                             "train_loss": self._train_loss[0] / n, **metrics})
        self._train_loss = [0.0, 0]

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._collect(batch)

    def on_test_epoch_end(self) -> None:
        self.test_metrics, self.test_pred, _ = self._scores()

    def on_train_epoch_start(self) -> None:
        self._lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.step_seconds.append(time.perf_counter() - self._step_start)  # forward + backward + optimizer step

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(self.hparams.schedule, self.hparams.epochs))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def _run_key(cfg: MSATrainConfig, setting: str, seed: int, shapes: dict[str, int], data_source: str) -> str:
    payload = {"cfg": to_dict(cfg), "setting": setting, "seed": seed, "shapes": shapes, "data": data_source}
    for name in (*MSATrainConfig.RUNTIME_FIELDS, *MSATrainConfig.LABEL_FIELDS):
        payload["cfg"].pop(name, None)
    return digest(payload)[:16]


def check_data(data, cfg: MSATrainConfig) -> None:
    """The data fit the config: labels within the data set's range, ``text_bert`` ids when BERT is fine-tuned."""
    spec = dataset_spec(cfg.dataset)
    labels = np.concatenate([s.labels for s in data.splits.values()])
    lo, hi = float(labels.min()), float(labels.max())
    if max(-lo, hi) > spec.label_max + 1e-4:
        raise InputError(f"{data.source}: labels span [{lo:g}, {hi:g}] but {cfg.dataset} labels lie in "
                         f"[-{spec.label_max:g}, {spec.label_max:g}]; set dataset (or preset) to the data's")
    shapes = data.shapes()
    looks_like = [d.name for d in DATASETS.values() if (d.audio[1], d.vision[1]) == (shapes["audio_dim"], shapes["vision_dim"])]
    if looks_like and cfg.dataset not in looks_like:
        warnings.warn(f"{data.source}: audio {shapes['audio_dim']} / vision {shapes['vision_dim']} features look like "
                      f"{looks_like[0]}, but dataset is {cfg.dataset} (its metrics and label range are used); "
                      f"set the preset almt-{looks_like[0]} or dataset: {looks_like[0]} if that is the data", stacklevel=2)
    if cfg.model.text_model and any(s.text_bert is None for s in data.splits.values()):
        raise InputError(f"{data.source}: model.text_model={cfg.model.text_model!r} fine-tunes BERT but the data has no "
                         f"'text_bert' ids (add option frozen-text to use the precomputed 'text' features)")


def train_one(data, cfg: MSATrainConfig, setting: str, seed: int, out_dir: Path, runtime: Runtime | None = None) -> dict[str, Any]:
    """Fit one (setting, seed), pick the epoch on validation, test that epoch; write and return metrics.json."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from eca_msa.data import MSADataModule

    runtime = Runtime.of(runtime)
    out_dir = Path(out_dir)
    shapes = data.shapes()
    check_data(data, cfg)
    key = _run_key(cfg, setting, seed, shapes, data.content_key or data.source)
    done_path = out_dir / "metrics.json"
    if item_is_current(out_dir / "done.json", key):
        return read_json(done_path)
    if out_dir.exists():  # an unfinished or outdated run: start it afresh
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_cfg, loss_cfg = setting_configs(cfg, setting, shapes)
    L.seed_everything(seed, workers=True, verbose=False)
    module = ALMTRegressor(to_dict(model_cfg), to_dict(loss_cfg), cfg.lr, cfg.weight_decay, cfg.dataset,
                           cfg.schedule, cfg.epochs, cfg.batch_size)
    dm = MSADataModule(data, cfg.batch_size, runtime.workers(0), seed)
    monitor, mode = f"val/{cfg.select_metric}", "max" if HIGHER_IS_BETTER[cfg.select_metric] else "min"
    ckpt = ModelCheckpoint(dirpath=out_dir, filename="best", monitor=monitor, mode=mode, save_top_k=1, save_weights_only=True, enable_version_counter=False)
    trainer = make_trainer(runtime, max_epochs=cfg.epochs, enable_progress_bar=cfg.progress_bar, default_root_dir=out_dir,
                           callbacks=[ckpt, EarlyStopping(monitor=monitor, mode=mode, patience=cfg.patience)])
    start = time.time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*sync_dist.*")
        call_trainer(trainer.fit, module, datamodule=dm)
        fit_s = time.time() - start
        call_trainer(trainer.test, module, datamodule=dm, ckpt_path=ckpt.best_model_path, verbose=False, weights_only=True)
    history = module.history
    higher = HIGHER_IS_BETTER[cfg.select_metric]
    scores = [finite_score(h[cfg.select_metric], higher) for h in history]
    best = int(np.argmax(scores) if higher else np.argmin(scores))
    ckpt_epoch = int(torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)["epoch"])
    if ckpt_epoch != history[best]["epoch"]:
        raise RuntimeError(f"{out_dir}: checkpoint holds epoch {ckpt_epoch} but validation picks epoch {history[best]['epoch']}")
    result = {
        "key": key, "setting": setting, "seed": seed,
        "selection": f"epoch with the {'highest' if higher else 'lowest'} validation {cfg.select_metric}"
                     + (" (MMSA's validation loss: mean of the batch MSEs, 4 decimals)" if cfg.select_metric == "Loss" else ""),
        "best_epoch": history[best]["epoch"], "epochs_run": len(history),
        "valid": {k: v for k, v in history[best].items() if k != "epoch"},
        "test": module.test_metrics,
        "history": history,
        "fit_seconds": fit_s,
        "train_steps": int(trainer.global_step),
        "step_seconds_median": float(np.median(module.step_seconds)) if module.step_seconds else float("nan"),
        "checkpoint": str(Path(ckpt.best_model_path).name),
        "model": to_dict(model_cfg), "loss": to_dict(loss_cfg),
    }
    write_json_atomic(out_dir / "test_predictions.json", {"pred": module.test_pred.tolist(), "truth": data.splits["test"].labels.tolist(),
                                                           "id": data.splits["test"].ids})
    write_json_atomic(done_path, result)
    write_item_marker(out_dir / "done.json", key, [done_path, out_dir / "test_predictions.json", Path(ckpt.best_model_path)])
    return result


def train_all(data, cfg: MSATrainConfig, out_dir: Path, runtime: Runtime | None = None, log=print) -> dict[str, Any]:
    """Every (setting, seed); writes ``results.json`` with all runs and returns it.

    With several ranks the runs are spread over them (run i on rank i mod world size), each on its
    rank's own device: validation and test metrics are computed once, over exactly the real clips.
    """
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    out_dir = Path(out_dir)
    runtime = distributed.on_this_rank(runtime)
    runs = [(s, k) for s in cfg.settings for k in cfg.seeds]
    mine, error = [], None
    bar = tqdm(distributed.shard(runs), desc="training runs", unit="run", disable=not distributed.is_main())
    try:
        for setting, seed in bar:
            bar.set_postfix_str(f"{setting} seed {seed}")
            r = train_one(data, cfg, setting, seed, out_dir / setting / f"seed{seed}", runtime)
            log(f"{setting} seed {seed}: best epoch {r['best_epoch']}/{r['epochs_run']}  test Corr {r['test']['Corr']:.4f}  "
                f"MAE {r['test']['MAE']:.4f}  F1 {r['test'].get('Non0_F1_score', r['test'].get('F1_score', float('nan'))):.4f}")
            mine.append({k: v for k, v in r.items() if k != "history"} | {"dir": f"{setting}/seed{seed}"})
    except Exception as exc:  # noqa: BLE001 - every rank must hear about it
        error = exc
    distributed.raise_if_any_failed(error)
    by_dir = {r["dir"]: r for part in distributed.all_gather(mine) for r in part}
    summary = {"config": to_dict(cfg), "data": data.summary(), "runs": [by_dir[f"{s}/seed{k}"] for s, k in runs]}
    if distributed.is_main():
        write_json_atomic(out_dir / "results.json", summary)
    distributed.barrier()
    return summary


def run_stage(ctx: StageContext) -> dict[str, Any]:
    from eca_msa.data import load_cache

    data = load_cache(ctx.stage_dir("preprocess"))
    summary = train_all(data, ctx.config, ctx.out_dir, ctx.runtime)
    return {"runs": len(summary["runs"]), "results": str(ctx.out_dir / "results.json")}
