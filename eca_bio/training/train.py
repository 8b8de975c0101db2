"""Train expression models with slide-level cross-validation (Lightning), for every method and target transform.

For each transform and fold the targets (genes, min–max) and the exemplar bank are fitted on the
fold's training slides only. Neural methods hold out one training slide for early stopping on
validation PCC@M, then (``refit``) retrain on all training slides for the best number of epochs.
Neural methods run once per seed (``seeds``); ridge, being deterministic, once. Everything a
fold/method/seed produces lands in ``<out>/<transform>/fold_<i>/<method>/seed_<k>/`` atomically,
so an interrupted run resumes at the first unfinished item. ``final_method`` is also trained on all
ST slides (``<out>/final/``) for ``eca-bio predict``.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from eca_core.runner import distributed
from eca_core.runner.config import to_dict
from eca_core.io import atomic_dir, read_json, write_json_atomic
from eca_core.runner.pipeline import StageContext, digest
from eca_core.runner.resume import RunLock, clean_temp_files, content_hash, item_is_current, write_item_marker
from eca_core.runner.trainer import quiet_lightning
from eca_core.runner.runtime import Runtime
from eca_bio.training import tuning
from eca_bio.configs import BioTrainConfig
from eca_bio.training.engine import FitJob, RunFit, RunSpec, best_validation, fit_early, fit_refits
from eca_bio.training.folds import plan_study
from eca_bio.methods import EGN_METHODS, METHOD_LABELS, METHODS, is_ridge, method_seeds
from eca_bio.model.expression import RidgeBaseline, model_from_hparams
from eca_bio.training.spots import FoldSpots, SpotSet, fold_spots, predict_spots, set_homogeneity
from eca_bio.features.feature_set import EmbeddingSpec, FeatureSet, SlideData
from eca_bio.training.targets import TargetSpec, fit_targets, make_targets
from eca_bio.training.tuning import select_ridge_alpha

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- the CV run

def _digest(obj: Any) -> str:
    return digest(obj)[:16]


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    cols = ["epoch", "train_pcc", "train_mse", "val_pcc", "val_mse"]
    cols += [c for c in ("lambda_mean", "lambda_min", "lambda_max", "tau_mean", "tau_min", "tau_max") if any(c in r for r in history)]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({c: row.get(c, "") for c in cols})


def _save_predictions(path: Path, pred: np.ndarray, spots: SpotSet) -> None:
    np.savez_compressed(path, pred=pred, truth=spots.targets, slide_ids=spots.slide_ids,
                        barcodes=np.asarray(spots.barcodes), centres=spots.centres)


def _result(method: str, key: str, spec: TargetSpec, val_id: str | None, test_sl: list[SlideData], seed: int,
            tuned: dict[str, float] | None) -> dict[str, Any]:
    return {"method": method, "key": key, "transform": spec.transform, "train": spec.train_slides, "val": val_id,
            "test": [s.slide_id for s in test_sl], "seed": seed, "tuned": dict(tuned or {})}


def _write_neural(tmp: Path, method: str, cfg: BioTrainConfig, fs: FoldSpots, spec: TargetSpec, embedding: EmbeddingSpec, result: dict[str, Any],
                  state: dict[str, torch.Tensor], hparams: dict[str, Any], history: list[dict[str, float]], best_epoch: int) -> np.ndarray | None:
    """History, ``model.pt`` and the result fields of a neural item; returns its test predictions."""
    _write_history(tmp / "history.csv", history)
    torch.save({"state_dict": state, "hparams": hparams, "targets": spec.to_dict(), "embedding": embedding.key(),
                "k": cfg.k, "use_tokens": fs.everything.tokens is not None, "method": method}, tmp / "model.pt")
    pred = predict_spots(model_from_hparams(hparams, state), fs.test, fs.bank) if fs.test is not None else None
    result.update(epochs=best_epoch, epochs_run=len(history), refit=cfg.refit)
    if fs.test is not None and result["seed"] == cfg.seeds[0]:
        result["homogeneity"] = set_homogeneity(fs.test, fs.bank)
    at_best = history[best_epoch - 1] if 0 < best_epoch <= len(history) else {}
    if "lambda_mean" in at_best or "tau_mean" in at_best:  # λ / τ at the selected epoch (early-stopping run)
        result["lambda_tau"] = {k: v for k, v in at_best.items() if k.startswith(("lambda_", "tau_"))}
    return pred


def _finish_item(tmp: Path, key: str, result: dict[str, Any], pred: np.ndarray | None, fs: FoldSpots, spec: TargetSpec,
                 embedding: EmbeddingSpec, extra: dict[str, Any] | None) -> None:
    """Predictions, (final model) bank and targets, extra JSON files, result.json and the item's done marker."""
    if pred is not None:
        _save_predictions(tmp / "predictions.npz", pred, fs.test)
    if fs.test is None:
        fs.bank.save(tmp / "bank.npz")
        write_json_atomic(tmp / "targets.json", spec.to_dict())
    result["embedding"] = embedding.key()
    result["exemplars_from"] = fs.exemplars_from
    for name, content in (extra or {}).items():
        write_json_atomic(tmp / name, content)
    write_json_atomic(tmp / "result.json", result)
    write_item_marker(tmp / "done.json", key, [p for p in tmp.rglob("*") if p.is_file()])


def train_method(method: str, cfg: BioTrainConfig, train_sl: list[SlideData], val_id: str | None, test_sl: list[SlideData],
                 spec: TargetSpec, embedding: EmbeddingSpec, out: Path, runtime: Runtime, key: str,
                 extra: dict[str, Any] | None = None, seed: int = 0, tuned: dict[str, float] | None = None) -> dict[str, Any]:
    """Train one method on one fold alone (ridge, or a neural method in the per-fit Lightning loop) and write model,
    history and test predictions into ``out`` atomically; ``tuned`` holds the validation-slide search's choice."""
    cfg = cfg.for_method(method)
    if tuned:
        cfg = tuning.apply(cfg, tuned)
    fs = fold_spots(cfg, train_sl, val_id, test_sl, spec, embedding, use_windows=method in EGN_METHODS)
    result = _result(method, key, spec, val_id, test_sl, seed, tuned)
    with atomic_dir(out) as tmp:
        if method in ("ridge", "ridge_cv"):
            alpha = cfg.ridge_alpha if method == "ridge" else select_ridge_alpha(cfg, train_sl, val_id, spec, result)
            ridge = RidgeBaseline(cfg.ridge_components, alpha).fit(fs.everything.features, fs.everything.targets)
            ridge.save(tmp / "ridge.npz")
            pred = ridge.predict(fs.test.features) if fs.test is not None else None
            result.update(epochs=0, alpha=float(ridge.params["alpha"]), components=int(ridge.params["components"].shape[0]))
        else:
            from eca_bio.training.fit import fit_neural

            task, history, best_epoch = fit_neural(method, cfg, fs.fit, fs.val, fs.everything, fs.bank, tmp, runtime, seed)
            if method in EGN_METHODS:
                result["egn"] = {"preset": cfg.egn.preset, "parameters": sum(p.numel() for p in task.model.parameters()),
                                 "window_px": int(fs.everything.windows.shape[1]), **cfg.egn.train_settings()}
            for stale in tmp.glob("best*.ckpt"):
                stale.rename(tmp / "early_stopping.ckpt")
            pred = _write_neural(tmp, method, cfg, fs, spec, embedding, result, task.model.state_dict(), dict(task.hparams),
                                 history, best_epoch)
        _finish_item(tmp, key, result, pred, fs, spec, embedding, extra)
    return result


def write_run(out: Path, method: str, cfg: BioTrainConfig, fs: FoldSpots, spec: TargetSpec, embedding: EmbeddingSpec, key: str, val_id: str | None,
              test_sl: list[SlideData], run: RunSpec, fitted: RunFit, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write one run of the training engine as an item folder (the same files as :func:`train_method`), atomically."""
    result = _result(method, key, spec, val_id, test_sl, run.seed, run.overrides)
    with atomic_dir(out) as tmp:
        torch.save({"state_dict": fitted.early_state, "hparams": fitted.hparams}, tmp / "early_stopping.pt")
        pred = _write_neural(tmp, method, cfg, fs, spec, embedding, result, fitted.state, fitted.hparams, fitted.history,
                             fitted.best_epoch)
        _finish_item(tmp, key, result, pred, fs, spec, embedding, extra)
    return result


def _search_record(method: str, cfg: BioTrainConfig, val_id: str, trials: list[dict[str, Any]], chosen: dict[str, float]) -> dict[str, Any]:
    return {"method": method, "val": val_id, "knobs": list(tuning.method_knobs(method)),
            "grid": {k: cfg.tune_grid[k] for k in tuning.method_knobs(method) if k in cfg.tune_grid},
            "trials": trials, "chosen": chosen, "seed": cfg.seeds[0]}


def _best_trial(trials: list[dict[str, Any]]) -> dict[str, Any]:
    return max(trials, key=lambda t: -np.inf if not np.isfinite(t["val_pcc_m"]) else t["val_pcc_m"])


@dataclass
class RunGroup:
    """The seeds of one neural method on one fold (or the final model): its slides, item folders and keys."""

    train_sl: list[SlideData]
    val_id: str
    test_sl: list[SlideData]
    spec: TargetSpec
    embedding: EmbeddingSpec
    items: dict[int, Path]  # seed -> item folder
    key_of: Callable[[int, dict[str, float]], str]  # (seed, chosen search overrides) -> item key
    tune_path: Path
    tune_key: str
    extra: dict[str, Any] | None = None
    chosen: dict[str, float] | None = None
    spots: FoldSpots | None = None

    def todo(self, seeds: list[int]) -> list[int]:
        return [s for s in seeds if self.chosen is None or not _is_done(self.items[s], self.key_of(s, self.chosen))]

    def fold(self, cfg: BioTrainConfig) -> FoldSpots:
        if self.spots is None:
            self.spots = fold_spots(cfg, self.train_sl, self.val_id, self.test_sl, self.spec, self.embedding)
        return self.spots

    def job(self, cfg: BioTrainConfig, runs: list[RunSpec]) -> FitJob:
        fs = self.fold(cfg)
        return FitJob(runs, fs.fit, fs.val, fs.everything if cfg.refit else None, fs.bank)

    def write(self, method: str, cfg: BioTrainConfig, run: RunSpec, fitted: RunFit) -> None:
        write_run(self.items[run.seed], method, cfg, self.fold(cfg), self.spec, self.embedding, self.key_of(run.seed, run.overrides),
                  self.val_id, self.test_sl, run, fitted, self.extra)


def train_groups(method: str, cfg: BioTrainConfig, groups: list[RunGroup], device: torch.device) -> tuple[int, int]:
    """Every seed of a neural method on every fold given, with the training engine, all folds in one ensemble: the
    validation-slide search (each trial with the first seed; the chosen one is the first seed's run), the other seeds'
    early-stopped runs, then every seed's refit for its best epoch count. Returns (trained, up to date)."""
    search = cfg.tune_trials > 1
    for g in groups:
        current = search and item_is_current(g.tune_path.with_name("tuning.done.json"), g.tune_key)
        g.chosen = read_json(g.tune_path)["chosen"] if current else None if search else {}
    total = sum(len(g.items) for g in groups)
    groups = [g for g in groups if g.todo(list(g.items))]
    first = cfg.seeds[0]
    fitted: dict[tuple[int, int], RunFit] = {}  # (group, seed) -> its early-stopped run
    searching = [g for g in groups if g.chosen is None]
    if searching:
        candidates = tuning.candidates(method, cfg)
        results = fit_early(method, cfg, [g.job(cfg, [RunSpec(first, c) for c in candidates]) for g in searching], device)
        for g, fits in zip(searching, results):
            trials = [dict(zip(("overrides", "val_pcc_m", "epochs"), (c, *best_validation(f.history)))) for c, f in zip(candidates, fits)]
            g.chosen = _best_trial(trials)["overrides"]
            write_json_atomic(g.tune_path, _search_record(method, cfg, g.val_id, trials, g.chosen))
            write_item_marker(g.tune_path.with_name("tuning.done.json"), g.tune_key, [g.tune_path])
            if first in g.items and first in g.todo([first]):
                fitted[(id(g), first)] = fits[candidates.index(g.chosen)]
    rest = [(g, [s for s in g.todo(list(g.items)) if (id(g), s) not in fitted]) for g in groups]
    rest = [(g, seeds) for g, seeds in rest if seeds]
    for (g, seeds), fits in zip(rest, fit_early(method, cfg, [g.job(cfg, [RunSpec(s, g.chosen) for s in seeds]) for g, seeds in rest],
                                                device)):
        fitted.update({(id(g), s): f for s, f in zip(seeds, fits)})
    todo = [(g, [s for s in g.items if (id(g), s) in fitted]) for g in groups]
    todo = [(g, seeds) for g, seeds in todo if seeds]
    if cfg.refit:  # every seed's refit on all training slides for its best epoch count, all folds together
        jobs = [replace(g.job(cfg, [RunSpec(s, g.chosen) for s in seeds]), refit_epochs=[fitted[(id(g), s)].best_epoch for s in seeds])
                for g, seeds in todo]
        for (g, seeds), states in zip(todo, fit_refits(method, cfg, jobs, device)):
            for s, state in zip(seeds, states):
                fitted[(id(g), s)] = replace(fitted[(id(g), s)], state=state)
    for g, seeds in todo:
        for s in seeds:
            g.write(method, cfg, RunSpec(s, g.chosen), fitted[(id(g), s)])
    trained = sum(len(seeds) for _, seeds in todo)
    return trained, total - trained


def tune_method(method: str, cfg: BioTrainConfig, train_sl: list[SlideData], val_id: str, spec: TargetSpec, embedding: EmbeddingSpec,
                path: Path, runtime: Runtime, key: str) -> dict[str, float]:
    """Try the method's candidate configurations on the validation slide; write ``tuning.json``; return the choice."""
    if item_is_current(path.with_name("tuning.done.json"), key):
        return read_json(path)["chosen"]
    from eca_bio.training.fit import validation_score

    fs = fold_spots(cfg, train_sl, val_id, [], spec, embedding)
    trials = []
    for overrides in tuning.candidates(method, cfg):
        score, epoch = validation_score(method, tuning.apply(cfg, overrides), fs.fit, fs.val, fs.bank, runtime, cfg.seeds[0])
        trials.append({"overrides": overrides, "val_pcc_m": score, "epochs": epoch})
    chosen = _best_trial(trials)["overrides"]
    write_json_atomic(path, _search_record(method, cfg, val_id, trials, chosen))
    write_item_marker(path.with_name("tuning.done.json"), key, [path])
    return chosen


def train_all(cfg: BioTrainConfig, pre_dir: Path, out_dir: Path, runtime: Runtime | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Cross-validate every method under every transform; write ``folds.json`` and per-item folders.

    Holds the lock on ``out_dir`` and first removes what a killed run left (``.tmp-*`` item folders).
    """
    with RunLock(out_dir):
        if distributed.is_main():
            clean_temp_files(out_dir)
        distributed.barrier()
        return _train_all(cfg, Path(pre_dir), Path(out_dir), runtime, progress and distributed.is_main())


def _train_all(cfg: BioTrainConfig, pre_dir: Path, out_dir: Path, runtime: Runtime | None, progress: bool) -> dict[str, Any]:
    """Items (transform × fold × method, then the final model) are spread over the ranks, each trained on
    its rank's own device, so every item's folder is written by one rank and its validation-based early
    stopping sees exactly what a single-process run sees."""
    runtime = distributed.on_this_rank(runtime)
    main = distributed.is_main()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    quiet_lightning()
    features = FeatureSet(pre_dir)
    end_to_end = any(m in EGN_METHODS for m in cfg.methods)
    slides = features.slides(require_expression=True, with_tokens=cfg.use_tokens, with_windows=end_to_end)
    by_id = {s.slide_id: s for s in slides}
    windows_key = {e["slide_id"]: content_hash(features.root / e["windows"]) for e in features.entries
                   if end_to_end and e["slide_id"] in by_id}
    patients, folds, grouping, same_image = plan_study(cfg, slides, features.entries, features.patients())  # validates first
    if progress:
        print(f"train: {grouping}", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    embedding = features.spec
    base_key = {"embedding": embedding.key(), "slides": {s.slide_id: _slide_key(s) for s in slides}}
    if patients:  # exemplars from other patients: another model than the slides-only rule's
        base_key["patients"] = patients
    specs: dict[tuple[str, int], TargetSpec] = {}
    for transform in cfg.transforms:
        for fold in folds:
            train_sl = [by_id[s] for s in fold["train"]]
            spec = specs[(transform, fold["fold"])] = fit_targets(train_sl, transform, cfg.n_genes)
            if main:
                missing = {s.slide_id: miss for s in train_sl + [by_id[t] for t in fold["test"]]
                           if (miss := make_targets(s, spec)[1])}
                write_json_atomic(out_dir / transform / f"fold_{fold['fold']}" / "targets.json",
                                  {**spec.to_dict(), "missing_genes": missing, "fold": fold})
    if main:
        write_json_atomic(out_dir / "folds.json", {"cv": cfg.cv, "folds": folds, "patients": patients, "grouping": grouping,
                                                   "same_image": same_image,
                                                   "encoder": embedding.encoder,
                                                   "feature_dim": int(slides[0].features.shape[1]),
                                                   "config": to_dict(cfg), "labels": METHOD_LABELS})
    # one group per (transform, fold, method): its tuning, then its seeds, on one rank
    groups: list[list[tuple[str, Any, str, int]]] = [[(t, f, m, k) for k in method_seeds(cfg.seeds, m)]
                                                     for t in cfg.transforms for f in folds for m in cfg.methods]
    if cfg.final_method is not None:
        groups.append([("final", None, cfg.final_method, cfg.seeds[0])])
    done, skipped, error = 0, 0, None
    mine = distributed.shard(groups)
    device = distributed.torch_device(runtime)
    bar = tqdm(total=sum(len(g) for g in mine), desc="train", disable=not progress)
    stacked: dict[str, list[RunGroup]] = {}  # neural methods on the engine: every fold of a method in one ensemble
    try:
        for group in mine:
            transform, fold, method, _ = group[0]
            engine = method in METHODS and not is_ridge(method) and cfg.engine == "vectorised"
            if transform == "final":
                if engine:
                    stacked.setdefault(method, []).append(final_group(cfg, slides, features, out_dir / "final", base_key))
                    continue
                bar.set_postfix_str(f"final {method}")
                trained = train_final(cfg, slides, features, out_dir / "final", runtime, base_key)
                done, skipped = done + trained, skipped + (not trained)
                bar.update(1)
                continue
            item_key = {**base_key, "config": item_config(cfg, method), "fold": fold, "transform": transform, "method": method}
            if method in EGN_METHODS:  # it trains on the windows: their content is part of what it is
                item_key["windows"] = windows_key
            method_dir = out_dir / transform / f"fold_{fold['fold']}" / method
            train_sl, test_sl = [by_id[s] for s in fold["train"]], [by_id[t] for t in fold["test"]]
            spec = specs[(transform, fold["fold"])]
            tune_key = _digest({**item_key, "tune": True})
            if engine:
                stacked.setdefault(method, []).append(RunGroup(
                    train_sl, fold["val"], test_sl, spec, embedding, {k: method_dir / f"seed_{k}" for _, _, _, k in group},
                    lambda seed, chosen, item_key=item_key: _digest({**item_key, "seed": seed, "tuned": chosen}),
                    method_dir / "tuning.json", tune_key))
                continue
            bar.set_postfix_str(f"{transform} fold {fold['fold']} {method}")
            # EGN trains with its published optimisation: no validation-slide search
            tuned = {} if is_ridge(method) or method in EGN_METHODS or cfg.tune_trials <= 1 else tune_method(
                method, cfg, train_sl, fold["val"], spec, embedding, method_dir / "tuning.json", runtime, tune_key)
            for _, _, _, seed in group:
                key = _digest({**item_key, "seed": seed, "tuned": tuned})
                if _is_done(method_dir / f"seed_{seed}", key):
                    skipped += 1
                else:
                    train_method(method, cfg, train_sl, fold["val"], test_sl, spec, embedding, method_dir / f"seed_{seed}", runtime, key,
                                 seed=seed, tuned=tuned)
                    done += 1
                bar.update(1)
        for method, run_groups in stacked.items():
            bar.set_postfix_str(f"{method}: {len(run_groups)} fold(s) × seeds × trials together")
            trained, up_to_date = train_groups(method, cfg, run_groups, device)
            done, skipped = done + trained, skipped + up_to_date
            bar.update(trained + up_to_date)
    except Exception as exc:  # noqa: BLE001 - every rank must hear about it
        error = exc
    distributed.raise_if_any_failed(error)
    counts = distributed.all_gather((done, skipped))
    return {"trained": sum(c[0] for c in counts), "skipped": sum(c[1] for c in counts), "folds": len(folds),
            "methods": cfg.methods, "transforms": cfg.transforms,
            "final": str(out_dir / "final") if cfg.final_method is not None else None}


def _final_key(cfg: BioTrainConfig, features: FeatureSet, base_key: dict[str, Any]) -> str:
    transform = cfg.final_transform or cfg.transforms[0]
    return _digest({**base_key, "config": item_config(cfg, cfg.final_method), "final": cfg.final_method, "transform": transform,
                    "seed": cfg.seeds[0], "preprocess": features.manifest.get("params", {})})


def _final_setup(cfg: BioTrainConfig, slides: list[SlideData], features: FeatureSet) -> tuple[list[str], TargetSpec, dict[str, Any]]:
    """The final model's slide ids (the last one early-stops it), targets and the ``preprocess.json`` new slides must match."""
    ids = sorted(s.slide_id for s in slides)
    spec = fit_targets(slides, cfg.final_transform or cfg.transforms[0], cfg.n_genes)
    extra = {"preprocess.json": {"embedding": features.spec.to_dict(), "encoder": features.spec.encoder,
                                 "params": features.manifest.get("params", {}), "train_inputs": features.inputs(ids)}}
    return ids, spec, extra


def final_group(cfg: BioTrainConfig, slides: list[SlideData], features: FeatureSet, out: Path, base_key: dict[str, Any]) -> RunGroup:
    """The final model (``final_method`` on every ST slide) as a run group of the training engine."""
    key = _final_key(cfg, features, base_key)
    ids, spec, extra = _final_setup(cfg, slides, features)
    return RunGroup(slides, ids[-1], [], spec, features.spec, {cfg.seeds[0]: out}, lambda *_: key,
                    out.with_name("final_tuning.json"), _digest({"final_tuning": key}), extra)


def train_final(cfg: BioTrainConfig, slides: list[SlideData], features: FeatureSet, out: Path, runtime: Runtime,
                base_key: dict[str, Any]) -> bool:
    """``final_method`` trained on every ST slide (early stopping on one of them) alone, with its exemplar bank and the
    embedding (encoder, patch size) that new slides must be embedded with. Returns whether it was trained."""
    key = _final_key(cfg, features, base_key)
    if _is_done(out, key):
        return False
    ids, spec, extra = _final_setup(cfg, slides, features)
    tune_path, tune_key = out.with_name("final_tuning.json"), _digest({"final_tuning": key})
    chosen = {}
    if not is_ridge(cfg.final_method) and cfg.tune_trials > 1:
        chosen = tune_method(cfg.final_method, cfg, slides, ids[-1], spec, features.spec, tune_path, runtime, tune_key)
    train_method(cfg.final_method, cfg, slides, ids[-1], [], spec, features.spec, out, runtime, key, seed=cfg.seeds[0],
                 tuned=chosen, extra=extra)
    return True


_RUN_FIELDS = ("methods", "transforms", "final_method", "final_transform", "threads", "engine")
_RIDGE_FIELDS = ("n_genes", "cv", "n_folds", "test_slides", "ridge_components", "ridge_alpha", "ridge_alphas")


def item_config(cfg: BioTrainConfig, method: str) -> dict[str, Any]:
    """The config fields that determine one method's outputs (so adding a method or changing another's
    settings retrains nothing else)."""
    d = to_dict(cfg.for_method(method))
    if is_ridge(method):
        return {k: d[k] for k in _RIDGE_FIELDS if method == "ridge_cv" or k != "ridge_alphas"}
    unused = ("tune_trials", "tune_grid") if method in EGN_METHODS else ("egn",)  # EGN: no search; others: no EGN
    fields = {k: v for k, v in d.items() if k not in (*_RUN_FIELDS, "seeds", *unused) and not k.startswith("ridge_")}
    return {**fields, "dropout_draws": DROPOUT_DRAWS}


DROPOUT_DRAWS = "member-stream"  # neural items' keys name how dropout is drawn (eca_bio.training.members): items trained before it retrain


def _is_done(item_dir: Path, key: str) -> bool:
    """An item is done when its marker holds ``key`` and every file it recorded is present and unchanged."""
    return item_is_current(item_dir / "done.json", key)


def _slide_key(s: SlideData) -> dict[str, Any]:
    """Content key of a preprocessed slide: its embeddings and (ST) counts."""
    files = [s.h5] + ([s.h5.with_suffix(".h5ad")] if s.h5.with_suffix(".h5ad").is_file() else [])
    return {"n_spots": s.n_spots, "content": [content_hash(f) for f in files]}


# ---------------------------------------------------------------------------------------- stage / CLI

def run_stage(ctx: StageContext) -> dict[str, Any]:
    return train_all(ctx.config, ctx.stage_dir("preprocess"), ctx.out_dir, ctx.runtime)


def report(summary: dict[str, Any], args: Any) -> None:
    print(json.dumps(summary, indent=2))
    print(f"models and predictions: {Path(args.out).resolve()}")
