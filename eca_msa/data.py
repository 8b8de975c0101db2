"""MMSA feature pickles (CMU-MOSI, CMU-MOSEI, CH-SIMS): load, validate, mask, cache, and a LightningDataModule.

An MMSA pickle is ``{"train"|"valid"|"test": {key: array}}`` with ``text`` (N, Lt, 768) BERT
features, ``text_bert`` (N, 3, Lt) ids / attention mask / segment ids, ``audio`` (N, La, Da),
``vision`` (N, Lv, Dv), ``audio_lengths`` / ``vision_lengths`` (N,), ``regression_labels`` (N,),
``id`` and ``raw_text``. Frames past the lengths are padding and are masked (they are not always
zero in the released files); ``audio == -inf`` is set to 0 as MMSA does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from eca_core.errors import InputError, UnsafeFileError
from eca_core.io import atomic_path
from eca_core.safe_pickle import load_restricted

SPLITS = ("train", "valid", "test")
REQUIRED_KEYS = ("text", "audio", "vision", "regression_labels")
CACHE_NAME = "mmsa_cache.pt"
CACHE_VERSION = 1


class MMSAFormatError(InputError):
    """The file is not a valid MMSA feature pickle; the message names the file, split, key and problem."""


@dataclass
class MSASplit:
    """One split as arrays: features, boolean masks (True = a real frame/token) and labels."""

    text: np.ndarray  # (N, Lt, Dt) float32
    text_mask: np.ndarray  # (N, Lt) bool
    audio: np.ndarray  # (N, La, Da) float32
    audio_mask: np.ndarray  # (N, La) bool
    vision: np.ndarray  # (N, Lv, Dv) float32
    vision_mask: np.ndarray  # (N, Lv) bool
    labels: np.ndarray  # (N,) float32
    ids: list[str] = field(default_factory=list)
    text_bert: np.ndarray | None = None  # (N, 3, Lt) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class MSAData:
    """The three splits of one data set and where they came from."""

    splits: dict[str, MSASplit]
    source: str = ""
    content_key: str = ""  # content hash of the file the data came from (keys the training runs)

    def shapes(self) -> dict[str, int]:
        """Sequence lengths and feature sizes per modality (what the model is built for)."""
        s = self.splits["train"]
        return {
            "text_len": s.text.shape[1], "text_dim": s.text.shape[2],
            "audio_len": s.audio.shape[1], "audio_dim": s.audio.shape[2],
            "vision_len": s.vision.shape[1], "vision_dim": s.vision.shape[2],
        }

    def summary(self) -> dict[str, Any]:
        """Split sizes, shapes and mean valid lengths, for logs and done-markers."""
        out: dict[str, Any] = {"source": self.source, **self.shapes()}
        for name, s in self.splits.items():
            out[name] = {
                "n": len(s),
                "label_mean": float(s.labels.mean()),
                "label_std": float(s.labels.std()),
                "mean_audio_len": float(s.audio_mask.sum(1).mean()),
                "mean_vision_len": float(s.vision_mask.sum(1).mean()),
                "has_text_bert": s.text_bert is not None,
                **video_homogeneity(s),
            }
        return out


def video_homogeneity(split: MSASplit) -> dict[str, float]:
    """In-sample dispersion of the video frames (RMS over clips of d_i, masked) vs the spread of clip means across clips."""
    from eca_core.attention import set_dispersion

    x = torch.from_numpy(split.vision)
    mask = torch.from_numpy(split.vision_mask)
    xbar, d, r = set_dispersion(x, mask)
    cross = torch.sqrt(((xbar - xbar.mean(0)) ** 2).sum(1).mean())
    return {"vision_dispersion_rms": float(d.pow(2).mean().sqrt()), "vision_hull_radius_rms": float(r.pow(2).mean().sqrt()),
            "vision_cross_sample_rms": float(cross)}


def lengths_to_mask(lengths: np.ndarray, max_len: int) -> np.ndarray:
    """(N,) lengths → (N, max_len) bool mask, lengths clamped to [1, max_len] so no sample is empty."""
    lengths = np.clip(np.asarray(lengths).astype(np.int64).reshape(-1), 1, max_len)
    return np.arange(max_len)[None, :] < lengths[:, None]


def _array(split: Mapping[str, Any], key: str, where: str) -> np.ndarray:
    try:
        return np.asarray(split[key])
    except Exception as exc:  # ragged lists and the like
        raise MMSAFormatError(f"{where}, key '{key}': cannot be read as an array ({exc})") from exc


def _check_rank(arr: np.ndarray, rank: int, key: str, where: str, layout: str) -> None:
    if arr.ndim != rank:
        raise MMSAFormatError(f"{where}, key '{key}': expected rank {rank} {layout}, got shape {tuple(arr.shape)}")


def validate_split(split: Any, where: str) -> None:
    """Check one split's keys, ranks and sample counts; raise MMSAFormatError naming the key and the shape."""
    if not isinstance(split, Mapping):
        raise MMSAFormatError(f"{where}: expected a dict of arrays, got {type(split).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in split]
    if missing:
        raise MMSAFormatError(f"{where}: missing key(s) {missing}; present: {sorted(split)}")
    layouts = {"text": "(samples, tokens, features)", "audio": "(samples, frames, features)", "vision": "(samples, frames, features)"}
    arrays = {}
    for key, layout in layouts.items():
        arrays[key] = _array(split, key, where)
        _check_rank(arrays[key], 3, key, where, layout)
    labels = _array(split, "regression_labels", where)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    _check_rank(labels, 1, "regression_labels", where, "(samples,)")
    n = labels.shape[0]
    for key in ("text", "audio", "vision"):
        if arrays[key].shape[0] != n:
            raise MMSAFormatError(f"{where}, key '{key}': {arrays[key].shape[0]} samples but regression_labels has {n}")
    for key, seq in (("audio_lengths", "audio"), ("vision_lengths", "vision")):
        if key in split:
            lengths = _array(split, key, where)
            _check_rank(lengths, 1, key, where, "(samples,)")
            if lengths.shape[0] != n:
                raise MMSAFormatError(f"{where}, key '{key}': {lengths.shape[0]} entries but {n} samples")
    if "text_bert" in split:
        tb = _array(split, "text_bert", where)
        _check_rank(tb, 3, "text_bert", where, "(samples, 3 [ids, attention mask, segment ids], tokens)")
        if tb.shape[0] != n or tb.shape[1] != 3:
            raise MMSAFormatError(f"{where}, key 'text_bert': expected shape ({n}, 3, tokens), got {tuple(tb.shape)}")
    if not np.isfinite(labels.astype(np.float64)).all():
        raise MMSAFormatError(f"{where}, key 'regression_labels': contains NaN or inf")


def validate_mmsa(obj: Any, where: str = "MMSA data") -> None:
    """Check the whole pickle: the three splits, their keys and ranks, and equal feature sizes across splits."""
    if not isinstance(obj, Mapping):
        raise MMSAFormatError(f"{where}: expected a dict with splits {list(SPLITS)}, got {type(obj).__name__}")
    missing = [s for s in SPLITS if s not in obj]
    if missing:
        raise MMSAFormatError(f"{where}: missing split(s) {missing}; present: {sorted(map(str, obj))}")
    for s in SPLITS:
        validate_split(obj[s], f"{where}: split '{s}'")
    for key in ("text", "audio", "vision"):
        feats = {s: np.asarray(obj[s][key]).shape[1:] for s in SPLITS}
        if len(set(feats.values())) != 1:
            raise MMSAFormatError(f"{where}, key '{key}': (length, features) differ across splits: {feats}")


def _split_from_mmsa(raw: Mapping[str, Any], where: str) -> tuple[MSASplit, int]:
    text = np.asarray(raw["text"], dtype=np.float32)
    audio = np.array(raw["audio"], dtype=np.float32)  # a copy: it is edited below
    vision = np.array(raw["vision"], dtype=np.float32)
    labels = np.asarray(raw["regression_labels"], dtype=np.float32).reshape(-1)
    n = labels.shape[0]
    audio[audio == -np.inf] = 0.0  # MMSA: COVAREP features hold -inf
    bad = int((~np.isfinite(audio)).sum() + (~np.isfinite(vision)).sum())
    if bad:
        audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
        vision = np.nan_to_num(vision, nan=0.0, posinf=0.0, neginf=0.0)
    if not np.isfinite(text).all():
        raise MMSAFormatError(f"{where}, key 'text': contains NaN or inf")
    text_bert = np.asarray(raw["text_bert"]).astype(np.int64) if "text_bert" in raw else None
    if text_bert is not None and text_bert.shape[2] != text.shape[1]:
        raise MMSAFormatError(f"{where}, key 'text_bert': {text_bert.shape[2]} tokens but 'text' has {text.shape[1]}")
    text_mask = text_bert[:, 1] > 0 if text_bert is not None else np.ones(text.shape[:2], dtype=bool)
    text_mask[:, 0] = True  # [CLS] is always there
    a_len = raw["audio_lengths"] if "audio_lengths" in raw else np.full(n, audio.shape[1])
    v_len = raw["vision_lengths"] if "vision_lengths" in raw else np.full(n, vision.shape[1])
    ids = [str(i) for i in raw["id"]] if "id" in raw else [f"{where}:{i}" for i in range(n)]
    split = MSASplit(text, text_mask, audio, lengths_to_mask(a_len, audio.shape[1]), vision,
                     lengths_to_mask(v_len, vision.shape[1]), labels, ids, text_bert)
    return split, bad


def from_mmsa_dict(obj: Any, where: str = "MMSA data") -> MSAData:
    """Validate an MMSA dict and convert it to :class:`MSAData` (masks from lengths, -inf audio set to 0)."""
    validate_mmsa(obj, where)
    splits, bad = {}, 0
    for s in SPLITS:
        splits[s], b = _split_from_mmsa(obj[s], f"{where}: split '{s}'")
        bad += b
    if bad:
        warnings.warn(f"{where}: {bad} non-finite audio/vision values (besides audio -inf) set to 0", stacklevel=2)
    return MSAData(splits, where)


def load_mmsa(path: str | Path) -> MSAData:
    """Read and validate an MMSA feature pickle (``unaligned_50.pkl``, ``aligned_50.pkl``, MOSEI, CH-SIMS).

    The pickle is read by an allow-list unpickler (:mod:`eca_core.safe_pickle`): a file that names
    any other global (a crafted ``__reduce__``) is refused before anything in it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise MMSAFormatError(f"{path}: no such MMSA pickle (MOSI: the MMSA release's unaligned_50.pkl)")
    try:
        obj = load_restricted(path)  # dicts, lists, strings, numbers and numpy arrays only: never runs code
    except UnsafeFileError:
        raise
    except InputError as exc:
        raise MMSAFormatError(str(exc)) from exc
    return from_mmsa_dict(obj, str(path))


def save_cache(data: MSAData, path: str | Path) -> Path:
    """Write the validated, masked splits as one torch file (atomically) for fast reloading."""
    payload = {"version": CACHE_VERSION, "source": data.source, "splits": {}}
    for name, s in data.splits.items():
        payload["splits"][name] = {
            "text": torch.from_numpy(s.text), "text_mask": torch.from_numpy(s.text_mask),
            "audio": torch.from_numpy(s.audio), "audio_mask": torch.from_numpy(s.audio_mask),
            "vision": torch.from_numpy(s.vision), "vision_mask": torch.from_numpy(s.vision_mask),
            "labels": torch.from_numpy(s.labels), "ids": list(s.ids),
            "text_bert": None if s.text_bert is None else torch.from_numpy(s.text_bert),
        }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_cache(path: str | Path) -> MSAData:
    """Read a cache written by :func:`save_cache`."""
    path = Path(path)
    if path.is_dir():
        path = path / CACHE_NAME
    if not path.is_file():
        raise MMSAFormatError(f"{path}: no such tensor cache (run `eca-msa preprocess` first)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)  # tensors, lists, strings: never runs code
    except Exception as exc:  # noqa: BLE001 - any unpickling failure: refuse the file, name it
        raise MMSAFormatError(f"{path}: not an eca-msa tensor cache, refused without running it "
                              f"({' '.join(str(exc).split())[:200]})") from exc
    if not isinstance(payload, dict) or payload.get("version") != CACHE_VERSION:
        raise MMSAFormatError(f"{path}: not an eca-msa tensor cache of version {CACHE_VERSION}")
    splits = {}
    for name, d in payload["splits"].items():
        tb = d["text_bert"]
        splits[name] = MSASplit(
            d["text"].numpy(), d["text_mask"].numpy(), d["audio"].numpy(), d["audio_mask"].numpy(),
            d["vision"].numpy(), d["vision_mask"].numpy(), d["labels"].numpy(), list(d["ids"]),
            None if tb is None else tb.numpy(),
        )
    from eca_core.runner.resume import content_hash

    return MSAData(splits, payload["source"], content_hash(path))


def load_any(path: str | Path) -> MSAData:
    """An MMSA pickle, or a tensor cache (``.pt`` file or a folder holding one)."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".pt":
        return load_cache(path)
    return load_mmsa(path)


class MSADataset(Dataset):
    """One split as a map-style dataset of dicts of tensors (``text_bert`` only if present)."""

    def __init__(self, split: MSASplit) -> None:
        self.tensors = {
            "text": torch.from_numpy(split.text), "text_mask": torch.from_numpy(split.text_mask),
            "audio": torch.from_numpy(split.audio), "audio_mask": torch.from_numpy(split.audio_mask),
            "vision": torch.from_numpy(split.vision), "vision_mask": torch.from_numpy(split.vision_mask),
            "label": torch.from_numpy(split.labels),
        }
        if split.text_bert is not None:
            self.tensors["text_bert"] = torch.from_numpy(split.text_bert)
        self.n = len(split)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


class MSADataModule(L.LightningDataModule):
    """Train/valid/test loaders over an :class:`MSAData` (shuffled training batches)."""

    def __init__(self, data: MSAData, batch_size: int = 64, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.data, self.batch_size, self.num_workers, self.seed = data, batch_size, num_workers, seed
        self.datasets = {name: MSADataset(s) for name, s in data.splits.items()}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle, generator=gen,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
