"""The training engine: every seed, search trial and refit of a method, on every fold, trained as one ensemble.

The members' parameters are stacked (``torch.func.stack_module_state``); one ``vmap``-ed ``functional_call``
forward and one backward update them all, with per-member learning rate, weight decay, dropout, τ_min, β,
λ_max and SRA weight (:mod:`eca_bio.training.members`). Data live on the device; a batch is an index slice;
validation is one forward per member; the best state is kept in memory. Members whose spot sets have one
size form a cohort (same batch shapes each step); folds of other sizes are cohorts of the same loop.

A *run* (a seed and a trial's overrides) is first an early-stopping member on the fitting slides
(:func:`fit_early`), then, with ``refit``, a member on all training slides trained for the best epoch count
(:func:`fit_refits`): two passes, so a search trial that is not chosen is never refitted. A member is the
same fit as one run of the per-fit Lightning loop (:mod:`eca_bio.training.fit`) with the same seed: same
initialisation, batch order (``DataLoader``'s generator consumption), dropout draws, AdamW and early
stopping (Lightning's ``EarlyStopping`` and ``min_epochs`` rules); ``tests/bio/test_engine.py`` holds the
two to 1e-4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eca_core.attention import collect_attention_stats, collect_lambdas
from eca_core.runner.config import from_dict, to_dict
from eca_core.losses import LossConfig, dnpl_loss, pcc_loss, sra_penalty
from eca_core.metrics import finite_score
from eca_bio.model.exemplars import ExemplarBank
from eca_bio.training.members import DropoutStream, knob_template, member_tape, stacked_adamw, use_member_dropout
from eca_bio.methods import METHODS
from eca_bio.model.expression import ExpressionModel, model_from_hparams
from eca_bio.training.spots import SpotSet, epoch_scores

if TYPE_CHECKING:
    from eca_bio.configs import BioTrainConfig

# ----------------------------------------------------------------------------------------- runs and members

@dataclass
class RunSpec:
    """One run: a seed and a search trial's overrides (lr, weight_decay, dropout, tau_min, beta, lambda_max, sra_weight)."""

    seed: int
    overrides: dict[str, float] = field(default_factory=dict)


@dataclass
class RunFit:
    """What a run leaves: the model to keep (refit snapshot, or the early-stopped best), the early-stopped best,
    the early-stopping history and its best epoch."""

    state: dict[str, Tensor]
    early_state: dict[str, Tensor]
    hparams: dict[str, Any]
    history: list[dict[str, float]]
    best_epoch: int

    def model(self) -> ExpressionModel:
        """The kept model, on CPU, in eval mode."""
        return model_from_hparams(self.hparams, self.state)


def run_hparams(method: str, cfg: BioTrainConfig, spots: SpotSet, overrides: dict[str, float]) -> dict[str, Any]:
    """The ``hparams`` of one run: what rebuilds its model (and what the per-fit loop's task saves)."""
    from eca_bio.training import tuning

    cfg = tuning.apply(cfg, overrides)
    model_overrides, pcc = METHODS[method]
    return {"in_dim": int(spots.features.shape[1]), "n_genes": int(spots.targets.shape[1]),
            "model": {**to_dict(cfg.model), **model_overrides},
            "loss": {**to_dict(cfg.loss), "pcc": pcc}, "lr": float(cfg.lr), "weight_decay": float(cfg.weight_decay)}


def new_model(hparams: dict[str, Any], seed: int) -> ExpressionModel:
    """A freshly initialised model of a run (``torch.manual_seed(seed)`` first, as ``L.seed_everything`` does)."""
    torch.manual_seed(seed)
    return use_member_dropout(model_from_hparams(hparams).train(), seed)


class _Member:
    """One member's bookkeeping: its data order, early-stopping state and kept states. An early-stopping member
    validates every epoch; a refit member trains for ``epochs`` (its partner's best epoch count) and keeps its end state."""

    def __init__(self, job: int, run: int, spec: RunSpec, hp: dict[str, Any], n: int, epochs: int | None = None) -> None:
        self.job, self.run, self.spec, self.hp, self.n = job, run, spec, hp, n
        self.refit, self.epochs = epochs is not None, epochs
        self.slot = 0  # the job's position in its cohort's data stack
        self.order = torch.Generator().manual_seed(spec.seed)  # DataLoader(shuffle, generator) consumption
        self.noise = DropoutStream(spec.seed)
        self.alive = True
        self.history: list[dict[str, float]] = []
        self.best32 = -math.inf  # Lightning's EarlyStopping/ModelCheckpoint compare the logged float32 value
        self.wait, self.stop = 0, False
        self.best64, self.best_epoch = -math.inf, 0  # best_validation(): first finite maximum
        self.best_state: dict[str, Tensor] | None = None  # early stopping: the best epoch's; refit: the last epoch's

    def permutation(self, batch_size: int) -> Tensor:
        """This epoch's spot order, drawn as a shuffling ``DataLoader`` run by Lightning draws it: the iterator's
        base seed, the permutation, and a second (empty) permutation when a partial last batch ends the sampler."""
        torch.empty((), dtype=torch.int64).random_(generator=self.order)
        order = torch.randperm(self.n, generator=self.order)
        if self.n % batch_size not in (0, 1):
            torch.randperm(self.n, generator=self.order)
        return order

    def knobs(self) -> dict[str, float]:
        m, loss = self.hp["model"], self.hp["loss"]
        p = float(m["dropout"])
        return {"dropout": p, "dropout_scale": 1.0 / (1.0 - p), "tau_min": float(m["tau_min"]),
                "one_minus_tau_min": 1.0 - float(m["tau_min"]), "beta": float(m["beta"]), "lambda_max": float(m["lambda_max"]),
                "sra_weight": float(loss["sra_weight"]), "lr": float(self.hp["lr"]), "weight_decay": float(self.hp["weight_decay"])}


class _Stack:
    """Spot sets of one size (one per job) stacked on the device, with their jobs' exemplar banks (padded to one size).

    A member of job slot ``j`` gathers its batch rows ``idx`` as ``f[j, idx]`` and its exemplars from bank ``j``.
    """

    def __init__(self, sets: list[SpotSet], banks: list[ExemplarBank], device: torch.device) -> None:
        def stack(arrays: list[np.ndarray]) -> Tensor:
            rows = max(a.shape[0] for a in arrays)
            out = np.zeros((len(arrays), rows, *arrays[0].shape[1:]), dtype=arrays[0].dtype)
            for i, a in enumerate(arrays):
                out[i, : a.shape[0]] = a
            return torch.from_numpy(out).to(device)

        self.f = stack([s.features for s in sets])
        self.t = stack([s.tokens for s in sets]) if sets[0].tokens is not None else None
        self.y = stack([s.targets for s in sets])
        self.ex = stack([s.exemplars for s in sets])
        self.bank_e, self.bank_y = stack([b.embeddings for b in banks]), stack([b.targets for b in banks])
        self.sizes = [s.features.shape[0] for s in sets]

    def batch(self, slot: Tensor, idx: Tensor) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor]:
        """features, tokens, exemplar embeddings, exemplar targets and targets of rows ``idx`` (M,B) of slots ``slot`` (M,)."""
        j = slot[:, None]
        ex = self.ex[j, idx]  # (M,B,k) rows of the member's bank
        jj = slot[:, None, None]
        return self.f[j, idx], (self.t[j, idx] if self.t is not None else None), self.bank_e[jj, ex], self.bank_y[jj, ex], self.y[j, idx]

    def rows(self, slot: int, start: int, stop: int) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """Model inputs of rows ``start:stop`` of one slot (shared by that job's members)."""
        ex = self.ex[slot, start:stop]
        return (self.f[slot, start:stop], self.t[slot, start:stop] if self.t is not None else None,
                self.bank_e[slot][ex], self.bank_y[slot][ex])


class _Group:
    """Members that train on spot sets of one size (a cohort: same batch shapes every step): their stacked
    parameters, buffers and AdamW state, and the stacked data of their jobs."""

    def __init__(self, members: list[_Member], models: list[ExpressionModel], data: _Stack, val: _Stack | None,
                 device: torch.device) -> None:
        self.members, self.data, self.val, self.device = members, data, val, device
        self.n = data.sizes[members[0].slot]
        self.refit = members[0].refit
        params, buffers = torch.func.stack_module_state(models)
        self.params = {k: v.detach().to(device).requires_grad_(True) for k, v in params.items()}
        self.buffers = {k: v.to(device) for k, v in buffers.items()}
        self.exp_avg = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.steps = torch.zeros(len(members), dtype=torch.float64)
        self._knobs: dict[str, Tensor] | None = None
        self._slots: Tensor | None = None

    def knobs(self) -> dict[str, Tensor]:
        if self._knobs is None:
            rows = [m.knobs() for m in self.members]
            self._knobs = {k: torch.tensor([r[k] for r in rows], dtype=torch.float32, device=self.device) for k in rows[0]}
        return self._knobs

    def slots(self) -> Tensor:
        if self._slots is None:
            self._slots = torch.tensor([m.slot for m in self.members], dtype=torch.long, device=self.device)
        return self._slots

    def state(self, i: int) -> dict[str, Tensor]:
        """Member ``i``'s parameters and buffers as a CPU state dict."""
        return {k: v[i].detach().to("cpu", copy=True) for k, v in (*self.params.items(), *self.buffers.items())}

    def keep(self, alive: list[int]) -> None:
        """Drop the members that stopped (their results are already kept)."""
        if len(alive) == len(self.members):
            return
        idx = torch.tensor(alive, dtype=torch.long, device=self.device)
        for d in (self.params, self.buffers, self.exp_avg, self.exp_avg_sq):
            for k in d:
                d[k] = d[k].detach().index_select(0, idx).requires_grad_(d is self.params)
        self.steps = self.steps[alive]
        self.members = [self.members[i] for i in alive]
        self._knobs = self._slots = None

    def adamw(self, grads: dict[str, Tensor]) -> None:
        """One AdamW step of every member (its own learning rate and weight decay)."""
        self.steps += 1
        k = self.knobs()
        stacked_adamw(self.params, grads, self.exp_avg, self.exp_avg_sq, self.steps, k["lr"], k["weight_decay"])


# ----------------------------------------------------------------------------------------- the vmapped step

def _objective(template: nn.Module, loss_cfg: LossConfig):
    """(params, buffers, knobs, noise, batch) -> (loss, (pred, λ, τ)) of one member, for vmap(grad(...))."""

    def loss_fn(params, buffers, knobs, noise, f, t, e, ey, y):
        with member_tape(knobs, noise), collect_attention_stats() as stats, collect_lambdas() as lams:
            pred = torch.func.functional_call(template, (params, buffers), (f, t, e, ey))
        mse = F.mse_loss(pred.float(), y.float())
        total = mse
        if loss_cfg.pcc != "none" and loss_cfg.pcc_weight:
            total = total + loss_cfg.pcc_weight * (dnpl_loss(pred, y) if loss_cfg.pcc == "dnpl" else pcc_loss(pred, y))
        total = total + knobs["sra_weight"] * sra_penalty(lams).to(total.device)
        lam = torch.cat(stats["lambda"]) if stats["lambda"] else pred.new_zeros(0)
        tau = torch.cat(stats["tau"]) if stats["tau"] else pred.new_zeros(0)
        return total, (pred.detach(), lam.detach(), tau.detach())

    return loss_fn


def _predict_fn(template: nn.Module):
    def predict(params, buffers, knobs, f, t, e, ey):
        with member_tape(knobs):
            return torch.func.functional_call(template, (params, buffers), (f, t, e, ey))

    return predict


@dataclass
class FitJob:
    """The runs of one method on one fold and the spot sets they share; ``refit_epochs`` (one per run) makes the
    runs refits on ``everything`` for that many epochs instead of early-stopped fits on ``fit``."""

    runs: list[RunSpec]
    fit: SpotSet
    val: SpotSet
    everything: SpotSet | None
    bank: ExemplarBank
    refit_epochs: list[int] | None = None


class _Engine:
    """The epoch loop over cohorts of members (see the module docstring)."""

    def __init__(self, method: str, cfg: BioTrainConfig, jobs: list[FitJob], device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.hparams = [[run_hparams(method, cfg, job.fit, r.overrides) for r in job.runs] for job in jobs]
        self.rows: list[list[_Member]] = []
        members, models = [], []
        for j, job in enumerate(jobs):
            spots = job.fit if job.refit_epochs is None else job.everything
            epochs = job.refit_epochs or [None] * len(job.runs)
            row = [_Member(j, i, r, hp, len(spots.targets), e) for i, (r, hp, e) in enumerate(zip(job.runs, self.hparams[j], epochs))]
            models += [new_model(hp, r.seed) for r, hp in zip(job.runs, self.hparams[j])]
            members += row
            self.rows.append(row)
        self.template = knob_template(models[0]).to(device)
        self.loss_cfg = from_dict(LossConfig, self.hparams[0][0]["loss"], "loss")
        self.groups = []
        for refit, n in sorted({(m.refit, m.n) for m in members}):  # cohorts: same batch shapes every step
            mine = [i for i, m in enumerate(members) if (m.refit, m.n) == (refit, n)]
            slots = sorted({members[i].job for i in mine})
            for i in mine:
                members[i].slot = slots.index(members[i].job)
            sets = [jobs[j].everything if refit else jobs[j].fit for j in slots]
            data = _Stack(sets, [jobs[j].bank for j in slots], device)
            val = None if refit else _Stack([jobs[j].val for j in slots], [jobs[j].bank for j in slots], device)
            self.groups.append(_Group([members[i] for i in mine], [models[i] for i in mine], data, val, device))
        self.noise_shapes: dict[int, list[torch.Size]] = {}
        # vmap over the members' forward only; autograd then runs one backward through the stacked ops
        step = _objective(self.template, self.loss_cfg)
        self._step = {True: torch.func.vmap(step, randomness="error"),  # with patch tokens / CLS feature only
                      False: torch.func.vmap(step, in_dims=(0, 0, 0, 0, 0, None, 0, 0, 0), randomness="error")}
        self._predict = torch.func.vmap(_predict_fn(self.template), in_dims=(0, 0, 0, None, None, None, None))

    def _shapes(self, group: _Group, b: int) -> list[torch.Size]:
        """The dropout draws of one member's forward on a batch of ``b`` spots, in call order (a dry forward)."""
        if b not in self.noise_shapes:
            record: list[torch.Size] = []
            knobs = {k: v[0] for k, v in group.knobs().items()}
            params = {k: v[0] for k, v in group.params.items()}
            buffers = {k: v[0].clone() for k, v in group.buffers.items()}
            f, t, e, ey, _ = group.data.batch(group.slots()[:1], torch.arange(b, device=self.device)[None])
            with torch.no_grad(), member_tape(knobs, record=record):
                torch.func.functional_call(self.template, (params, buffers), (f[0], None if t is None else t[0], e[0], ey[0]))
            self.noise_shapes[b] = record
        return self.noise_shapes[b]

    def _train_step(self, group: _Group, idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        noise = [torch.stack([m.noise.rand(shape, self.device) for m in group.members]) for shape in self._shapes(group, idx.shape[1])]
        f, t, e, ey, y = group.data.batch(group.slots(), idx)  # (M,B,...): each member's rows of its own job
        loss, (pred, lam, tau) = self._step[t is not None](group.params, group.buffers, group.knobs(), noise, f, t, e, ey, y)
        grads = torch.autograd.grad(loss.sum(), list(group.params.values()))  # members are independent: each gets its own
        group.adamw(dict(zip(group.params, grads)))
        return pred, y, lam, tau

    @torch.no_grad()
    def _validate(self, group: _Group) -> list[tuple[float, float]]:
        """(PCC@M, MSE) of every live member of an early-stopping cohort on its job's validation spots (eval mode)."""
        self.template.eval()
        scores: list[tuple[float, float]] = [(math.nan, math.nan)] * len(group.members)
        knobs = group.knobs()
        for slot in sorted({m.slot for m in group.members}):
            rows = [i for i, m in enumerate(group.members) if m.slot == slot]
            sel = torch.tensor(rows, dtype=torch.long, device=self.device)
            params = {k: v.detach().index_select(0, sel) for k, v in group.params.items()}
            buffers = {k: v.index_select(0, sel) for k, v in group.buffers.items()}
            kn = {k: v.index_select(0, sel) for k, v in knobs.items()}
            n = group.val.sizes[slot]
            chunk = max(16, int(2 ** 24 // max(1, len(rows) * group.val.f[0, 0].numel() * (group.val.t.shape[2] if group.val.t is not None else 1))))
            preds = [self._predict(params, buffers, kn, *group.val.rows(slot, a, min(a + chunk, n))).float().cpu()
                     for a in range(0, n, chunk)]
            pred, truth = torch.cat(preds, 1).numpy(), group.val.y[slot, :n].float().cpu().numpy()
            for r, i in enumerate(rows):
                scores[i] = epoch_scores(pred[r], truth)
        self.template.train()
        return scores

    def run(self) -> list[list[_Member]]:
        cfg = self.cfg
        min_epochs = min(cfg.min_epochs, cfg.epochs)
        bs = cfg.batch_size
        self.template.train()
        for epoch in range(1, cfg.epochs + 1):
            live = [g for g in self.groups if g.members]
            if not live:
                break
            orders = [torch.stack([m.permutation(bs) for m in g.members]).to(self.device) for g in live]
            logs = {id(m): {"pred": [], "y": [], "lambda": [], "tau": []} for g in live if not g.refit for m in g.members}
            n_batches = [math.ceil(g.n / bs) - (g.n % bs == 1) for g in live]
            for step in range(max(n_batches)):
                for g, order, nb in zip(live, orders, n_batches):
                    if step >= nb:
                        continue
                    pred, y, lam, tau = self._train_step(g, order[:, step * bs:(step + 1) * bs])
                    if not g.refit:
                        for i, m in enumerate(g.members):
                            log = logs[id(m)]
                            log["pred"].append(pred[i])
                            log["y"].append(y[i])
                            if lam.shape[-1]:
                                log["lambda"].append(lam[i])
                            if tau.shape[-1]:
                                log["tau"].append(tau[i])
            for g in live:
                if g.refit:
                    for i, m in enumerate(g.members):
                        if epoch >= m.epochs:  # a refit for the best epoch count: its state now
                            m.best_state, m.alive = g.state(i), False
                else:
                    self._end_epoch(g, epoch, logs, min_epochs)
            for g in self.groups:
                g.keep([i for i, m in enumerate(g.members) if m.alive])
        return self.rows

    def _end_epoch(self, early: _Group, epoch: int, logs: dict[int, dict[str, list[Tensor]]], min_epochs: int) -> None:
        scores = self._validate(early)
        for i, m in enumerate(early.members):
            log = logs[id(m)]
            pcc, mse = epoch_scores(torch.cat(log["pred"]).float().cpu().numpy(), torch.cat(log["y"]).float().cpu().numpy())
            row = {"epoch": epoch, "train_pcc": pcc, "train_mse": mse, "val_pcc": scores[i][0], "val_mse": scores[i][1]}
            for name in ("lambda", "tau"):
                if log[name]:
                    v = torch.cat(log[name]).float().cpu()
                    row |= {f"{name}_mean": float(v.mean()), f"{name}_min": float(v.min()), f"{name}_max": float(v.max())}
            m.history.append(row)
            val = scores[i][0]
            logged = np.float32(finite_score(val))  # what the per-fit loop logs
            if logged > m.best32:  # EarlyStopping (min_delta 0) and ModelCheckpoint(save_top_k=1): strictly better
                m.best32, m.wait = float(logged), 0
                m.best_state = early.state(i)
            else:
                m.wait += 1
                m.stop = m.stop or m.wait >= self.cfg.patience  # Lightning's should_stop stays set
            if math.isfinite(val) and val > m.best64:
                m.best64, m.best_epoch = val, epoch
            if (m.stop and epoch >= min_epochs) or epoch == self.cfg.epochs:
                m.alive = False


def best_validation(history: list[dict[str, float]]) -> tuple[float, int]:
    """(best validation PCC@M, its 1-based epoch) of a training history; (NaN, last epoch) if none is finite."""
    vals = np.array([h.get("val_pcc", np.nan) for h in history], dtype=float)
    if not np.isfinite(vals).any():
        return float("nan"), len(vals)
    return float(np.nanmax(vals)), int(np.nanargmax(vals)) + 1


def fit_early(method: str, cfg: BioTrainConfig, jobs: list[FitJob], device: torch.device | str = "cpu") -> list[list[RunFit]]:
    """Every run of every job trained together with early stopping on its job's ``val``; one list of :class:`RunFit`
    per job (runs in order) holding the best epoch's model, the history and the best epoch count (``refit`` next)."""
    if not any(job.runs for job in jobs):
        return [[] for _ in jobs]
    rows = _Engine(method, cfg, [replace(job, refit_epochs=None) for job in jobs], torch.device(device)).run()
    return [[RunFit(m.best_state, m.best_state, m.hp, m.history, m.best_epoch or len(m.history)) for m in row] for row in rows]


def fit_refits(method: str, cfg: BioTrainConfig, jobs: list[FitJob], device: torch.device | str = "cpu") -> list[list[dict[str, Tensor]]]:
    """Every run of every job retrained together on its job's ``everything`` for its ``refit_epochs``; the end states."""
    if not any(job.runs for job in jobs):
        return [[] for _ in jobs]
    return [[m.best_state for m in row] for row in _Engine(method, cfg, jobs, torch.device(device)).run()]


def fit_jobs(method: str, cfg: BioTrainConfig, jobs: list[FitJob], device: torch.device | str = "cpu") -> list[list[RunFit]]:
    """Early stopping, then (for jobs with ``everything``) the refit for the best epoch count, all jobs together."""
    early = fit_early(method, cfg, jobs, device)
    refit = [i for i, job in enumerate(jobs) if job.everything is not None and job.runs]
    states = fit_refits(method, cfg, [replace(jobs[i], refit_epochs=[f.best_epoch for f in early[i]]) for i in refit], device)
    for i, kept in zip(refit, states):
        early[i] = [replace(f, state=state) for f, state in zip(early[i], kept)]
    return early


def fit_runs(method: str, cfg: BioTrainConfig, runs: list[RunSpec], fit: SpotSet, val: SpotSet, everything: SpotSet | None,
             bank: ExemplarBank, device: torch.device | str = "cpu") -> list[RunFit]:
    """The runs of one job (see :func:`fit_jobs`)."""
    return fit_jobs(method, cfg, [FitJob(runs, fit, val, everything, bank)], device)[0]
