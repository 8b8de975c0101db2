"""Model inputs of a set of spots (features, tokens, targets, exemplar rows), the exemplar bank, and a model's scores on them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from eca_core.metrics import pearson_per_column
from eca_bio.model.exemplars import ExemplarBank, ExemplarIndex
from eca_bio.features.feature_set import EmbeddingSpec, SlideData
from eca_bio.training.targets import TargetSpec, make_targets

if TYPE_CHECKING:
    from eca_bio.configs import BioTrainConfig


class WindowRows:
    """The image windows (N, S, S, 3) uint8 of a spot set as the slides' own arrays, in the set's order: a batch gathers
    its rows, the set never copies them whole (a fold's fit, validation, all-training and test sets share the slides'
    windows: 2 GB per 10k spots at 256 px, once)."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0, *(len(p) for p in parts)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.parts[0].shape[1:])

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The windows of ``rows`` (indices into the set), gathered from their slides."""
        rows = np.asarray(rows, dtype=np.int64)
        part = np.searchsorted(self.offsets, rows, side="right") - 1
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.parts[0].dtype)
        for k in np.unique(part):
            sel = part == k
            out[sel] = self.parts[k][rows[sel] - self.offsets[k]]
        return out


@dataclass
class SpotSet:
    """Model inputs of a set of spots: features, tokens, targets, exemplar rows into a bank (and, for EGN, windows)."""

    features: np.ndarray
    tokens: np.ndarray | None
    targets: np.ndarray
    exemplars: np.ndarray  # (N, k) rows of the bank
    slide_ids: np.ndarray
    barcodes: list[str]
    centres: np.ndarray
    windows: WindowRows | None = None  # (N, S, S, 3) uint8 image windows (end-to-end models), the slides' arrays


class SpotDataset(Dataset):
    """Torch view of a :class:`SpotSet`; exemplar embeddings/targets are gathered from the bank per item."""

    def __init__(self, spots: SpotSet, bank: ExemplarBank) -> None:
        self.f = torch.from_numpy(spots.features)
        self.t = torch.from_numpy(spots.tokens) if spots.tokens is not None else None
        self.y = torch.from_numpy(spots.targets)
        self.ex = torch.from_numpy(spots.exemplars)
        self.bank_e = torch.from_numpy(bank.embeddings)
        self.bank_y = torch.from_numpy(bank.targets)
        self.w = spots.windows

    def __len__(self) -> int:
        return self.f.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"features": self.f[i], "ex_emb": self.bank_e[self.ex[i]], "ex_expr": self.bank_y[self.ex[i]], "y": self.y[i]}
        if self.t is not None:
            item["tokens"] = self.t[i]
        if self.w is not None:
            rows = self.w.take(np.atleast_1d(np.asarray(i)))
            item["image"] = torch.from_numpy(rows if np.ndim(i) else rows[0])
        return item


def spot_forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Predictions (B, G) of either model on a batch: EGN reads the window, with the spot's embedding as its query;
    the frozen-feature model reads the embedding (and tokens)."""
    if "image" in batch:
        return model(model.prepare(batch["image"]), batch["features"].unsqueeze(1), batch["ex_emb"], batch["ex_expr"])
    return model(batch["features"], batch.get("tokens"), batch["ex_emb"], batch["ex_expr"])


def build_spots(slides: list[SlideData], spec: TargetSpec, index: ExemplarIndex | None, use_tokens: bool,
                missing_report: dict[str, list[str]] | None = None, use_windows: bool = False) -> SpotSet:
    """Targets and exemplars of all spots of ``slides``; each spot's own slide is never an exemplar source."""
    ys, feats, toks, sids, bcs, cen = [], [], [], [], [], []
    for s in slides:
        y, missing = make_targets(s, spec)
        if missing and missing_report is not None:
            missing_report[s.slide_id] = missing
        ys.append(y)
        feats.append(s.features)
        toks.append(s.tokens)
        sids += [s.slide_id] * s.n_spots
        bcs += list(s.counts.obs_names) if s.counts is not None else [str(i) for i in range(s.n_spots)]
        cen.append(s.centres)
    features = np.concatenate(feats).astype(np.float32)
    tokens = np.concatenate(toks).astype(np.float32) if use_tokens and all(t is not None for t in toks) else None
    sid_arr = np.asarray(sids)
    ex = index.query(features, sid_arr)[0] if index is not None else np.zeros((len(sids), 1), dtype=np.int64)
    windows = WindowRows([s.windows for s in slides]) if use_windows else None
    return SpotSet(features, tokens, np.concatenate(ys), ex, sid_arr, bcs, np.concatenate(cen), windows)


def make_bank(slides: list[SlideData], spec: TargetSpec, embedding: EmbeddingSpec) -> ExemplarBank:
    """Exemplar bank of the training slides under a target spec."""
    emb = np.concatenate([s.features for s in slides])
    y = np.concatenate([make_targets(s, spec)[0] for s in slides])
    sids = np.concatenate([[s.slide_id] * s.n_spots for s in slides])
    return ExemplarBank(emb, y, sids, spec.genes, embedding.key())


@dataclass
class FoldSpots:
    """A fold's exemplar bank and spot sets: fitting, early-stopping (val), all training slides, test (None: final model)."""

    bank: ExemplarBank
    fit: SpotSet
    val: SpotSet
    everything: SpotSet
    test: SpotSet | None
    exemplars_from: str = "other slides"  # or "other patients" (EGN's rule, when patients are known)


def fold_spots(cfg: BioTrainConfig, train_sl: list[SlideData], val_id: str | None, test_sl: list[SlideData], spec: TargetSpec,
               embedding: EmbeddingSpec, use_windows: bool = False) -> FoldSpots:
    """Bank, k-NN exemplars and spot sets of one fold: the held-out training slide ``val_id`` early-stops, the others
    fit; each spot's exemplars come from other training slides, and from other patients when the slides' patients are
    known and the training slides hold at least two (with one, no training spot would have an exemplar).
    ``use_windows``: the sets carry the slides' image windows (EGN)."""
    bank = make_bank(train_sl, spec, embedding)
    patients = {s.slide_id: s.patient for s in [*train_sl, *test_sl] if s.patient is not None}
    by_patient = len({patients.get(s.slide_id) for s in train_sl} - {None}) >= 2
    index = ExemplarIndex(bank, cfg.k, cfg.exemplar_backend, groups=patients if by_patient else None)

    def spots(slides: list[SlideData]) -> SpotSet:
        return build_spots(slides, spec, index, cfg.use_tokens and not use_windows, use_windows=use_windows)

    fit = spots([s for s in train_sl if s.slide_id != val_id])
    val = spots([s for s in train_sl if s.slide_id == val_id])
    return FoldSpots(bank, fit, val, spots(train_sl), spots(test_sl) if test_sl else None,
                     "other patients" if by_patient else "other slides")


def set_homogeneity(spots: SpotSet, bank: ExemplarBank) -> dict[str, Any]:
    """Homogeneity of the test spots' sets (``eca diagnose``): patch tokens and exemplar embeddings, with the
    Theorem 2.2 r against the targets (median over genes) and the share of genes where the bound applies."""
    from eca_core.diagnostics import homogeneity_report

    out = {}
    sets = {"exemplars": bank.embeddings[spots.exemplars]}
    if spots.tokens is not None:
        sets["tokens"] = spots.tokens
    for name, x in sets.items():
        rep = homogeneity_report(np.asarray(x, dtype=np.float64), y=spots.targets)
        r = np.array([o.r for o in rep.outputs], dtype=float)
        out[name] = {"sets": rep.n_sets, "elements": rep.max_elements, "d_rms": rep.d_rms, "R_rms": rep.R_rms,
                     "cross_dispersion": rep.cross_dispersion, "homogeneity_ratio": rep.homogeneity_ratio,
                     "r_median": float(np.median(r)) if r.size else float("nan"),
                     "bound_applies": float(np.mean(r < 1)) if r.size else float("nan")}
    return out


def epoch_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(PCC@M over genes with a defined PCC, MSE) of a set of predictions."""
    r = pearson_per_column(pred, truth)
    pcc = float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")
    return pcc, float(np.mean((pred - truth) ** 2))


@torch.no_grad()
def predict_spots(model: torch.nn.Module, spots: SpotSet, bank: ExemplarBank, batch_size: int | None = None) -> np.ndarray:
    """Predicted targets (N, G) of a spot set by a trained model (the frozen-feature model or EGN; eval mode, on its device)."""
    model.eval()
    device = next(model.parameters()).device
    ds = SpotDataset(spots, bank)
    batch_size = batch_size or (64 if spots.windows is not None else 512)  # windows: a ViT's activations per spot
    out = []
    for start in range(0, len(ds), batch_size):
        batch = {k: v.to(device) for k, v in ds[torch.arange(start, min(start + batch_size, len(ds)))].items()}  # the rows at once
        out.append(spot_forward(model, batch).float().cpu().numpy())
    pred = np.concatenate(out)
    if not np.isfinite(pred).all():
        raise FloatingPointError("model produced NaN/inf predictions")
    return pred
