"""``eca-tab train``: FT-Transformer and its ECA variants × seeds on a prepared table, early stopping on validation.

Each (method, seed) is one fit in a small plain-PyTorch loop: the split's tensors sit on the device,
batches are index slices of a seeded permutation, validation is one pass per epoch, the best state
is kept in memory and written once. The loss is the variant's (:mod:`eca_core.variants`): MSE +
pcc_weight · (plain PCC | DNPL) + sra_weight · (λ − 1)², on the target standardised with the training
rows' mean and std. The epoch with the lowest validation MSE is kept; training stops after
``patience`` epochs without improvement (the FT-Transformer paper's rule). The test split is scored
once, with that epoch's weights. With several ranks, fits are spread over them (fit i on rank i mod
world size), each on its rank's own device, so every fit is the one a single process makes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eca_core.runner import distributed
from eca_core.runner.config import to_dict
from eca_core.io import read_json, write_json_atomic
from eca_core.attention import collect_lambdas
from eca_core.losses import ECAObjective, LossConfig
from eca_core.metrics import pearson_per_column
from eca_core.runner.pipeline import StageContext, digest
from eca_core.runner.resume import content_hash, item_is_current, write_item_marker
from eca_core.variants import get_variant, layer_config
from eca_core.runner.runtime import Runtime
from eca_tab.model import build_ft_transformer, parameter_groups
from eca_tab.table import PREPARED, Prepared
from eca_tab.configs import TabTrainConfig

METHOD_LABELS = {"softmax": "FT-Transformer", "eca": "+ ECA (full)", "no_sra": "+ ECA (w/o SRA)",
                 "no_dats": "+ ECA (w/o DATS)", "no_dnpl": "+ ECA (w/o DNPL)"}


def _metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    pcc = pearson_per_column(pred, truth)[0]
    return {"mae": float(np.mean(np.abs(pred - truth))), "mse": float(np.mean((pred - truth) ** 2)),
            "pcc": float(pcc) if np.isfinite(pcc) else float("nan")}


class _Split:
    """One split's tensors on the device (categorical codes None when the table has none)."""

    def __init__(self, data: Prepared, split: str, device: torch.device) -> None:
        self.x_num = torch.as_tensor(data.x_num[split], dtype=torch.float32, device=device)
        cat = data.x_cat[split]
        self.x_cat = torch.as_tensor(cat, dtype=torch.long, device=device) if cat.shape[1] else None
        self.y = data.y[split].astype(np.float64)
        self.n = len(self.y)

    def inputs(self, idx: torch.Tensor | slice) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x_num = self.x_num[idx] if self.x_num.shape[1] else None
        return x_num, (self.x_cat[idx] if self.x_cat is not None else None)


@torch.no_grad()
def _predict(model: torch.nn.Module, split: _Split, batch: int, mean: float, std: float) -> np.ndarray:
    model.eval()
    out = [model(*split.inputs(slice(i, i + batch))).squeeze(-1).float() for i in range(0, split.n, batch)]
    return torch.cat(out).cpu().numpy().astype(np.float64) * std + mean


def fit(data: Prepared, cfg: TabTrainConfig, method: str, seed: int, device: torch.device) -> tuple[dict[str, Any], dict, dict]:
    """One (method, seed) fit: its result (history, selected epoch, val/test metrics), best state and predictions."""
    variant = get_variant(method)
    mean, std = data.schema["target_train"]["mean"], max(data.schema["target_train"]["std"], 1e-12)
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    cats = [c["cardinality"] for c in data.schema["categorical"]]
    model = build_ft_transformer(len(data.schema["numeric"]), cats, cfg.model, method, cfg.tau_min, cfg.beta, cfg.lambda_max).to(device)
    uses_sra = layer_config(method).use_sra
    objective = ECAObjective(LossConfig(pcc=variant.pcc, pcc_weight=cfg.pcc_weight, sra_weight=cfg.sra_weight if uses_sra else 0.0))
    opt = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr)
    train, val, test = (_Split(data, s, device) for s in ("train", "val", "test"))
    y_train = torch.as_tensor((train.y - mean) / std, dtype=torch.float32, device=device)
    history, best, best_state, since = [], None, None, 0
    for epoch in range(cfg.epochs):
        model.train()
        start = time.perf_counter()
        perm = torch.randperm(train.n, generator=order).to(device)
        seen, preds = [], []
        for i in range(0, train.n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            if len(idx) < 2:  # a correlation needs two rows
                continue
            with collect_lambdas() as lams:
                pred = model(*train.inputs(idx)).squeeze(-1)
            loss, _ = objective(pred, y_train[idx], lams)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen.append(idx)
            preds.append(pred.detach())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        rows = torch.cat(seen).cpu().numpy()
        train_m = _metrics(torch.cat(preds).float().cpu().numpy().astype(np.float64) * std + mean, train.y[rows])
        val_m = _metrics(_predict(model, val, cfg.eval_batch_size, mean, std), val.y)
        history.append({"epoch": epoch, "seconds": seconds, **{f"train_{k}": v for k, v in train_m.items()},
                        **{f"val_{k}": v for k, v in val_m.items()}})
        if best is None or val_m["mse"] < best["val_mse"]:
            best, since = history[-1], 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since += 1
            if since >= cfg.patience:
                break
    model.load_state_dict(best_state)
    val_pred = _predict(model, val, cfg.eval_batch_size, mean, std)
    test_pred = _predict(model, test, cfg.eval_batch_size, mean, std)
    result = {
        "method": method, "seed": seed, "best_epoch": best["epoch"], "epochs_run": len(history),
        "selection": f"epoch with the lowest validation MSE (patience {cfg.patience})",
        "val": _metrics(val_pred, val.y), "test": _metrics(test_pred, test.y),
        "epoch_seconds_median": float(np.median([h["seconds"] for h in history])),
        "parameters": int(sum(p.numel() for p in model.parameters())), "history": history,
    }
    preds = {"val_pred": val_pred, "val_truth": val.y, "test_pred": test_pred, "test_truth": test.y,
             "test_rows": data.rows["test"]}
    return result, {k: v.cpu() for k, v in best_state.items()}, preds


def _fit_key(cfg: TabTrainConfig, method: str, seed: int, data_key: str) -> str:
    payload = {"cfg": to_dict(cfg), "method": method, "seed": seed, "data": data_key}
    for name in (*TabTrainConfig.RUNTIME_FIELDS, *TabTrainConfig.LABEL_FIELDS):
        payload["cfg"].pop(name, None)
    return digest(payload)[:16]


def train_one(data: Prepared, data_key: str, cfg: TabTrainConfig, method: str, seed: int, out_dir: Path,
              device: torch.device) -> dict[str, Any]:
    """Fit one (method, seed) unless an unchanged finished fit is there; write result.json, predictions, weights."""
    key = _fit_key(cfg, method, seed, data_key)
    if item_is_current(out_dir / "done.json", key):
        return read_json(out_dir / "result.json")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "done.json").unlink(missing_ok=True)
    result, state, preds = fit(data, cfg, method, seed, device)
    from eca_core.io import atomic_path

    with atomic_path(out_dir / "predictions.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **preds)
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save(state, tmp)
    write_json_atomic(out_dir / "result.json", result | {"key": key})
    write_item_marker(out_dir / "done.json", key, ["result.json", "predictions.npz", "model.pt"])
    return result | {"key": key}


def train_all(data: Prepared, data_key: str, cfg: TabTrainConfig, out_dir: Path, runtime: Runtime | None = None,
              log=print) -> dict[str, Any]:
    """Every (method, seed), spread over the ranks; rank 0 writes ``results.json`` (without the histories)."""
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = distributed.torch_device(runtime)
    fits = [(m, k) for m in cfg.methods for k in cfg.seeds]
    mine, error = [], None
    bar = tqdm(distributed.shard(fits), desc="fits", unit="fit", disable=not (cfg.progress_bar and distributed.is_main()))
    try:
        for method, seed in bar:
            bar.set_postfix_str(f"{method} seed {seed}")
            r = train_one(data, data_key, cfg, method, seed, out_dir / method / f"seed{seed}", device)
            t = r["test"]
            log(f"{method} seed {seed}: epoch {r['best_epoch']}/{r['epochs_run']}  test MAE {t['mae']:.4g}  "
                f"MSE {t['mse']:.4g}  PCC {t['pcc']:.4f}")
            mine.append({k: v for k, v in r.items() if k != "history"} | {"dir": f"{method}/seed{seed}"})
    except Exception as exc:  # noqa: BLE001 - every rank must hear about it
        error = exc
    distributed.raise_if_any_failed(error)
    by_dir = {r["dir"]: r for part in distributed.all_gather(mine) for r in part}
    summary = {"config": to_dict(cfg), "data": data.schema, "device": device.type,
               "fits": [by_dir[f"{m}/seed{k}"] for m, k in fits]}
    if distributed.is_main():
        write_json_atomic(out_dir / "results.json", summary)
    distributed.barrier()
    return summary


def run_stage(ctx: StageContext) -> dict[str, Any]:
    from eca_tab.preprocess import load_prepared

    folder = ctx.stage_dir("preprocess")
    data = load_prepared(folder)
    data_key = digest({"prepared": content_hash(folder / PREPARED), "schema": data.schema})
    summary = train_all(data, data_key, ctx.config, ctx.out_dir, ctx.runtime)
    return {"fits": len(summary["fits"]), "results": str(ctx.out_dir / "results.json")}
