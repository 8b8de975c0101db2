"""Patch embedding as Lightning ``Trainer.predict``: DataLoader workers read and cut patches, the frozen
encoder embeds them, and a ``BasePredictionWriter`` streams each slide's rows into its own HDF5 file.

A slide's file is written under a temporary name and renamed when its last row is in, so a file at the
final path is always complete. Batches never span two slides, so a slide's features do not depend on
which other slides were in the run (a resumed run writes identical files).

With several ranks (:mod:`eca_core.runner.distributed`) the tiles are sharded, not the slides: the batches
(each within one slide) are dealt round-robin to the ranks, so one large WSI keeps every device busy. Each rank writes its
rows of a slide to a part file (``.<slide>.h5.tmp-part<r>.h5``); rank 0 then assembles the slide's
HDF5 once, atomically, in the row order of a single-process run (the batches are the same ones).
"""

from __future__ import annotations

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

from eca_core.runner import distributed
from eca_core.runner.trainer import call_trainer, make_trainer
from eca_core.runner.runtime import Runtime
from eca_bio.features import slide_h5
from eca_bio.features.encoders import FrozenEncoder, Normalisation
from eca_bio.inputs.slides import SlideReader


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
    coords_attrs: dict[str, Any] = field(default_factory=dict)  # TRIDENT's coords attributes (eca_bio.features.slide_h5.coords_attrs)


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

    def __init__(self, offsets: np.ndarray, batch_size: int, num_workers: int = 0, rank: int = 0, world: int = 1) -> None:
        per_slide = [[list(range(s, min(s + batch_size, int(e)))) for s in range(int(s0), int(e), batch_size)]
                     for s0, e in zip(offsets[:-1], offsets[1:])]
        if world > 1:  # this rank's share: the g-th batch of the run (slide by slide) goes to rank g mod world
            starts = np.cumsum([0] + [len(b) for b in per_slide])
            per_slide = [[b for k, b in enumerate(batches) if (starts[i] + k) % world == rank] for i, batches in enumerate(per_slide)]
        self.rows = [np.asarray([i - int(s0) for b in slide for i in b], dtype=np.int64)
                     for slide, s0 in zip(per_slide, offsets[:-1])]  # per slide: the rows this rank embeds
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
    """The predict DataLoader over this rank's batches of every slide (all of them with one rank)."""

    def __init__(self, jobs: Sequence[SlideJob], patch_px: int, batch_size: int, num_workers: int) -> None:
        super().__init__()
        self.jobs = list(jobs)
        self.patch_px = patch_px
        self.batch_size = batch_size
        self.num_workers = num_workers
        offsets = PatchDataset(self.jobs, self.patch_px).offsets
        self.sampler = SlideBatchSampler(offsets, batch_size, num_workers, distributed.rank(), distributed.world_size())

    def predict_dataloader(self) -> DataLoader:
        ds = PatchDataset(self.jobs, self.patch_px)
        return DataLoader(ds, batch_sampler=self.sampler, num_workers=self.num_workers,
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
        self.part = distributed.world_size() > 1

    def _start(self, job_idx: int) -> tuple[h5py.File, Path, Any, int]:
        job = self.dm.jobs[job_idx]
        job.out_path.parent.mkdir(parents=True, exist_ok=True)
        if self.part:  # this rank's rows only, assembled by rank 0 afterwards
            tmp = part_path(job, distributed.rank())
            f = h5py.File(tmp, "w", track_order=False)
            rows = self.dm.sampler.rows[job_idx]
            f.create_dataset("rows", data=rows)
            slide_h5.create_arrays(f, len(rows), self.feature_dim, self.num_tokens if self.store_tokens else 0)
        else:
            fd, name = tempfile.mkstemp(prefix=f".{job.out_path.name}.tmp-", suffix=".h5", dir=job.out_path.parent)
            os.close(fd)
            tmp = Path(name)
            f = h5py.File(tmp, "w", track_order=False)
            _create_slide_file(f, job, self.feature_dim, self.num_tokens if self.store_tokens else 0)
        bar = tqdm(total=len(job.coords), desc=f"embed {job.slide_id}", unit="patch", disable=not self.progress, leave=True)
        self.open[job_idx] = (f, Path(tmp), bar, 0)
        return self.open[job_idx]

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:
        jobs = np.unique(prediction["job"])
        for job_idx in (int(j) for j in jobs):
            sel = prediction["job"] == job_idx
            rows = prediction["rows"][sel]
            f, tmp, bar, done = self.open.get(job_idx) or self._start(job_idx)
            if self.part:  # global rows -> positions in this rank's part
                rows = np.searchsorted(self.dm.sampler.rows[job_idx], rows)
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
            bar.update(len(rows) * (distributed.world_size() if self.part else 1))
            self.open[job_idx] = (f, tmp, bar, done)
            expected = len(self.dm.sampler.rows[job_idx]) if self.part else len(self.dm.jobs[job_idx].coords)
            if done == expected:
                self._finish(job_idx)

    def _finish(self, job_idx: int) -> None:
        f, tmp, bar, _ = self.open.pop(job_idx)
        job = self.dm.jobs[job_idx]
        if self.part:
            f.close()
            bar.close()
            self.finished.append(job.slide_id)
            return
        _finish_slide_file(f, job, self.feature_dim)
        f.close()
        bar.close()
        _publish(tmp, job.out_path)
        self.finished.append(job.slide_id)

    def write_empty_parts(self) -> None:
        """Parts for the slides of which this rank got no batch (fewer batches than ranks), so rank 0 finds all."""
        for job_idx, rows in enumerate(self.dm.sampler.rows):
            if len(rows) == 0 and self.part:
                self._start(job_idx)
                self._finish(job_idx)

    def discard(self) -> None:
        """Remove the temp files of slides not finished on this rank (crash, Ctrl-C)."""
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
                 runtime: Runtime | None = None, progress: bool = True, precision: str = "32-true") -> list[str]:
    """Embed every job's patches and write one HDF5 per slide; returns the slide ids written.

    With several ranks every rank must call this with the same jobs; each embeds its share of every
    slide's tiles on its own device, and rank 0 assembles the files.
    """
    runtime = distributed.on_this_rank(runtime)
    dm = SlideDataModule(jobs, patch_px, batch_size, num_workers)
    module = EmbedModule(encoder, norm, store_tokens)
    writer = SlideH5Writer(dm, feature_dim, num_tokens, store_tokens, progress and distributed.is_main())
    trainer = make_trainer(runtime, precision=precision, callbacks=[writer], use_distributed_sampler=False)
    error: BaseException | None = None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*custom batch sampler.*")  # batches are per slide by design
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            call_trainer(trainer.predict, module, datamodule=dm, return_predictions=False)
        writer.write_empty_parts()
    except Exception as exc:  # noqa: BLE001 - the other ranks must hear about it
        error = exc
    finally:
        writer.discard()
    if not writer.part:
        if error is not None:
            raise error
        return writer.finished
    distributed.raise_if_any_failed(error)
    done: list[str] = []
    if distributed.is_main():
        for job in jobs:
            assemble_parts(job, distributed.world_size(), feature_dim, num_tokens if store_tokens else 0)
            done.append(job.slide_id)
    distributed.barrier()
    return distributed.broadcast(done)


def tiles_per_rank(jobs: Sequence[SlideJob], batch_size: int, world: int) -> list[int]:
    """How many tiles each rank embeds (the same batches as :class:`SlideBatchSampler` deals out)."""
    offsets = np.cumsum([0] + [len(j.coords) for j in jobs])
    return [int(sum(len(r) for r in SlideBatchSampler(offsets, batch_size, 0, rank, world).rows)) for rank in range(world)]


def part_path(job: SlideJob, rank: int) -> Path:
    """Where rank ``rank`` writes its rows of ``job`` (a temp name: removed by the next run if left behind)."""
    return job.out_path.with_name(f".{job.out_path.name}.tmp-part{rank}.h5")


def assemble_parts(job: SlideJob, world: int, feature_dim: int, num_tokens: int, chunk: int = 4096) -> None:
    """Rank 0: merge every rank's part of ``job`` into its HDF5, rows in single-process order, atomically."""
    fd, name = tempfile.mkstemp(prefix=f".{job.out_path.name}.tmp-", suffix=".h5", dir=job.out_path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with h5py.File(tmp, "w", track_order=False) as f:
            _create_slide_file(f, job, feature_dim, num_tokens)
            filled = 0
            for r in range(world):
                with h5py.File(part_path(job, r), "r") as part:
                    rows = part["rows"][()]
                    for lo in range(0, len(rows), chunk):
                        idx = rows[lo:lo + chunk]
                        order = np.argsort(idx)  # h5py writes need increasing indices
                        f["features"][idx[order]] = part["features"][lo:lo + chunk][order]
                        if num_tokens:
                            f["tokens"][idx[order]] = part["tokens"][lo:lo + chunk][order]
                    filled += len(rows)
            if filled != len(job.coords):
                raise RuntimeError(f"{job.slide_id}: parts hold {filled} rows, the slide has {len(job.coords)}")
            _finish_slide_file(f, job, feature_dim)
        _publish(tmp, job.out_path)
    finally:
        tmp.unlink(missing_ok=True)
    for r in range(world):
        part_path(job, r).unlink(missing_ok=True)


def _create_slide_file(f: h5py.File, job: SlideJob, feature_dim: int, num_tokens: int) -> None:
    slide_h5.create_slide_file(f, job.coords, job.coords_attrs, feature_dim, num_tokens, job.barcodes,
                               encoder=str(job.attrs.get("encoder", "")))


def _finish_slide_file(f: h5py.File, job: SlideJob, feature_dim: int) -> None:
    slide_h5.write_file_attrs(f, job.attrs, feature_dim)


def _publish(tmp: Path, final: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the final file normal permissions
    os.replace(tmp, final)
