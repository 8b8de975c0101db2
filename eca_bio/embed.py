"""Patch embedding as Lightning ``Trainer.predict``: DataLoader workers read and cut patches, the frozen
encoder embeds them, and a ``BasePredictionWriter`` streams each slide's rows into its own HDF5 file.

A slide's file is written under a temporary name and renamed when its last row is in, so a file at the
final path is always complete. Batches never span two slides, so a slide's features do not depend on
which other slides were in the run (a resumed run writes identical files). Under multi-device strategies
each rank embeds whole slides (slide i goes to rank i mod world_size).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from eca_core.trainer import call_trainer, make_trainer
from eca_bio.encoders import FrozenEncoder, Normalisation
from eca_bio.slides import SlideReader


@dataclass
class SlideJob:
    """One slide to embed: where its patches are and what goes into its HDF5 file."""

    slide_id: str
    reader: SlideReader                      # picklable; reopened lazily inside each worker
    coords: np.ndarray                       # (N, 2) int64 level-0 top-left corners
    size_px: int                             # level-0 side of a patch
    out_path: Path                           # final <slide_id>.h5
    attrs: dict[str, Any] = field(default_factory=dict)
    barcodes: Sequence[str] | None = None    # ST spot ids, same row order as coords


class PatchDataset(Dataset):
    """Item i -> (uint8 patch (P, P, 3), slide index, row index); reading happens in the worker."""

    def __init__(self, jobs: Sequence[SlideJob], patch_px: int) -> None:
        self.jobs = list(jobs)
        self.patch_px = int(patch_px)
        self.offsets = np.cumsum([0] + [len(j.coords) for j in self.jobs])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        job_idx = int(np.searchsorted(self.offsets, index, side="right") - 1)
        row = int(index - self.offsets[job_idx])
        job = self.jobs[job_idx]
        x, y = (int(v) for v in job.coords[row])
        img = job.reader.read_region(x, y, job.size_px, job.size_px, size=(self.patch_px, self.patch_px))
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()), job_idx, row


class SlideBatchSampler(Sampler[list[int]]):
    """Batches of one slide each, ordered so that each DataLoader worker reads as few slides as possible.

    A DataLoader with W workers hands batch i to worker i mod W. Slides are assigned to workers (largest
    first, to the least-loaded worker) and their batches interleaved in that rhythm, so each worker decodes
    only its own slides (a full-resolution JPEG is decoded once, not once per worker). A worker whose
    slides are done takes batches from the fullest queue.
    """

    def __init__(self, offsets: np.ndarray, batch_size: int, num_workers: int = 0) -> None:
        per_slide = [[list(range(s, min(s + batch_size, int(e)))) for s in range(int(s0), int(e), batch_size)]
                     for s0, e in zip(offsets[:-1], offsets[1:])]
        workers = max(1, int(num_workers))
        if workers == 1:
            self.batches = [b for slide in per_slide for b in slide]
            return
        queues: list[list[list[int]]] = [[] for _ in range(workers)]
        for k in sorted(range(len(per_slide)), key=lambda k: -len(per_slide[k])):
            target = min(range(workers), key=lambda w: (len(queues[w]), w))
            queues[target].extend(per_slide[k])
        self.batches = []
        heads = [0] * workers
        total = sum(len(q) for q in queues)
        while len(self.batches) < total:
            for w in range(workers):
                if len(self.batches) == total:
                    break
                if heads[w] >= len(queues[w]):
                    w = max(range(workers), key=lambda v: len(queues[v]) - heads[v])
                self.batches.append(queues[w][heads[w]])
                heads[w] += 1

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class EmbedModule(L.LightningModule):
    """Normalises uint8 patches on the device and runs the frozen encoder."""

    def __init__(self, encoder: FrozenEncoder, norm: Normalisation, store_tokens: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.store_tokens = store_tokens
        self.register_buffer("mean", torch.tensor(norm.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm.std).view(1, 3, 1, 1), persistent=False)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        images, job_idx, rows = batch                                  # (B, P, P, 3) uint8
        x = images.permute(0, 3, 1, 2).float().div_(255.0)             # (B, 3, P, P)
        x = (x - self.mean) / self.std
        pooled, tokens = self.encoder(x)                               # (B, D), (B, T, D)
        out = {"features": pooled.half().cpu().numpy(), "job": job_idx.cpu().numpy(), "rows": rows.cpu().numpy()}
        if self.store_tokens:
            out["tokens"] = tokens.half().cpu().numpy()
        return out


class SlideDataModule(L.LightningDataModule):
    """Builds the predict DataLoader after the strategy is set up, so each rank gets its own slides."""

    def __init__(self, jobs: Sequence[SlideJob], patch_px: int, batch_size: int, num_workers: int) -> None:
        super().__init__()
        self.jobs = list(jobs)
        self.patch_px = patch_px
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.rank_jobs: list[SlideJob] = self.jobs

    def predict_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        self.rank_jobs = [j for i, j in enumerate(self.jobs) if i % world == rank]
        ds = PatchDataset(self.rank_jobs, self.patch_px)
        return DataLoader(ds, batch_sampler=SlideBatchSampler(ds.offsets, self.batch_size, self.num_workers), num_workers=self.num_workers,
                          persistent_workers=False, pin_memory=False,
                          prefetch_factor=4 if self.num_workers > 0 else None)


class SlideH5Writer(BasePredictionWriter):
    """Streams rows into ``<slide>.h5`` under a temp name; renames when the slide's last row is written."""

    def __init__(self, datamodule: SlideDataModule, feature_dim: int, num_tokens: int, store_tokens: bool = True,
                 progress: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.dm = datamodule
        self.feature_dim = feature_dim
        self.num_tokens = num_tokens
        self.store_tokens = store_tokens
        self.progress = progress
        self.open: dict[int, tuple[h5py.File, Path, Any, int]] = {}
        self.finished: list[str] = []

    def _start(self, job_idx: int) -> tuple[h5py.File, Path, Any, int]:
        job = self.dm.rank_jobs[job_idx]
        job.out_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{job.out_path.name}.tmp-", suffix=".h5", dir=job.out_path.parent)
        os.close(fd)
        n, d = len(job.coords), self.feature_dim
        f = h5py.File(tmp, "w", track_order=False)
        coords = f.create_dataset("coords", data=np.asarray(job.coords, dtype=np.int64))
        coords.attrs["patch_size"] = int(job.size_px)   # CLAM convention: level-0 px at patch_level 0
        coords.attrs["patch_level"] = 0
        f.create_dataset("features", shape=(n, d), dtype=np.float16, chunks=(min(max(n, 1), 256), d))
        if self.store_tokens:
            t = self.num_tokens
            f.create_dataset("tokens", shape=(n, t, d), dtype=np.float16, chunks=(min(max(n, 1), 16), t, d))
        if job.barcodes is not None:
            f.create_dataset("barcodes", data=np.array([str(b) for b in job.barcodes], dtype=object),
                             dtype=h5py.string_dtype("utf-8"))
        bar = tqdm(total=n, desc=f"embed {job.slide_id}", unit="patch", disable=not self.progress, leave=True)
        self.open[job_idx] = (f, Path(tmp), bar, 0)
        return self.open[job_idx]

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:
        jobs = np.unique(prediction["job"])
        for job_idx in (int(j) for j in jobs):
            sel = prediction["job"] == job_idx
            rows = prediction["rows"][sel]
            f, tmp, bar, done = self.open.get(job_idx) or self._start(job_idx)
            lo, hi = int(rows.min()), int(rows.max()) + 1
            if hi - lo == len(rows) and np.all(np.diff(rows) == 1):
                f["features"][lo:hi] = prediction["features"][sel]
                if self.store_tokens:
                    f["tokens"][lo:hi] = prediction["tokens"][sel]
            else:
                for k, r in enumerate(rows):
                    f["features"][r] = prediction["features"][sel][k]
                    if self.store_tokens:
                        f["tokens"][r] = prediction["tokens"][sel][k]
            done += len(rows)
            bar.update(len(rows))
            self.open[job_idx] = (f, tmp, bar, done)
            job = self.dm.rank_jobs[job_idx]
            if done == len(job.coords):
                self._finish(job_idx)

    def _finish(self, job_idx: int) -> None:
        f, tmp, bar, _ = self.open.pop(job_idx)
        job = self.dm.rank_jobs[job_idx]
        for key, value in job.attrs.items():
            f.attrs[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
        f.attrs["feature_dim"] = self.feature_dim
        f.close()
        bar.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the final file normal permissions
        os.replace(tmp, job.out_path)
        self.finished.append(job.slide_id)

    def discard(self) -> None:
        """Remove the temp files of slides not finished (crash, Ctrl-C)."""
        for f, tmp, bar, _ in self.open.values():
            try:
                f.close()
            finally:
                bar.close()
                tmp.unlink(missing_ok=True)
        self.open.clear()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.discard()


def embed_slides(jobs: Sequence[SlideJob], encoder: FrozenEncoder, norm: Normalisation, feature_dim: int, num_tokens: int,
                 patch_px: int, batch_size: int = 32, num_workers: int = 2, store_tokens: bool = True,
                 options: dict[str, Any] | None = None, progress: bool = True, precision: str = "32-true") -> list[str]:
    """Embed every job's patches and write one HDF5 per slide; returns the slide ids this rank finished."""
    options = dict(options or {})
    dm = SlideDataModule(jobs, patch_px, batch_size, num_workers)
    module = EmbedModule(encoder, norm, store_tokens)
    writer = SlideH5Writer(dm, feature_dim, num_tokens, store_tokens, progress)
    trainer = make_trainer(options, precision=precision, callbacks=[writer], use_distributed_sampler=False)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*custom batch sampler.*")  # batches are per slide by design
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            call_trainer(trainer.predict, module, datamodule=dm, return_predictions=False)
    finally:
        writer.discard()
    return writer.finished
