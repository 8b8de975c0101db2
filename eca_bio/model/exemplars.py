"""Exemplar retrieval (EGN): for each spot, the k nearest spots by embedding from *other* training slides.

The bank holds only training slides, so a test slide can never be returned; a query never gets a
spot of its own slide (``query_slides``). One sub-index per bank slide is searched and the per-slide
hits are merged, which makes the exclusion exact for both back-ends:

* ``exact``: brute-force L2 in torch (small banks, deterministic);
* ``faiss``: ``faiss.IndexHNSWFlat`` per slide (approximate, for banks of millions of spots);
* ``auto``: exact below ``faiss_threshold`` bank spots, faiss above.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

import numpy as np
import torch

from eca_core.errors import InputError

Backend = Literal["auto", "exact", "faiss"]


class BankMismatchError(InputError):
    """A model and an exemplar bank disagree (gene list, embedding size or embedding)."""


@dataclass
class ExemplarBank:
    """Embeddings (M, D), targets (M, G) and slide id per row of the training spots exemplars come from."""

    embeddings: np.ndarray
    targets: np.ndarray
    slide_ids: np.ndarray
    genes: list[str]
    embedding: str = ""  # the EmbeddingSpec key of its embeddings (older banks: the encoder's alone)

    def __post_init__(self) -> None:
        self.embeddings = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        self.targets = np.ascontiguousarray(self.targets, dtype=np.float32)
        self.slide_ids = np.asarray(self.slide_ids).astype(str)
        m = self.embeddings.shape[0]
        if self.targets.shape != (m, len(self.genes)) or self.slide_ids.shape != (m,):
            raise ValueError(f"bank rows disagree: embeddings {self.embeddings.shape}, targets {self.targets.shape}, "
                             f"slide_ids {self.slide_ids.shape}, {len(self.genes)} genes")
        if not np.isfinite(self.embeddings).all() or not np.isfinite(self.targets).all():
            raise ValueError("exemplar bank contains NaN/inf")

    @property
    def slides(self) -> list[str]:
        return sorted(set(self.slide_ids.tolist()))

    def check_compatible(self, genes: list[str], dim: int, embedding: str | None = None) -> None:
        """Raise :class:`BankMismatchError` unless the bank matches a model's genes, embedding size and embedding."""
        if list(genes) != list(self.genes):
            diff = sorted(set(genes) ^ set(self.genes))
            detail = f"{len(diff)} genes differ, e.g. {diff[:5]}" if diff else "same genes in a different order"
            raise BankMismatchError(f"exemplar bank gene list does not match the model's ({len(self.genes)} vs {len(genes)} genes; {detail})")
        if self.embeddings.shape[1] != dim:
            raise BankMismatchError(f"exemplar bank embeddings have dim {self.embeddings.shape[1]}, the model expects {dim}")
        if embedding is not None and self.embedding and embedding != self.embedding:  # EmbeddingSpec keys
            raise BankMismatchError(f"exemplar bank was built from embeddings {self.embedding}, the model's are {embedding}")

    def save(self, path: Path) -> None:
        np.savez(path, embeddings=self.embeddings, targets=self.targets, slide_ids=self.slide_ids,
                 genes=np.asarray(self.genes), embedding=np.asarray(self.embedding))

    @classmethod
    def load(cls, path: Path) -> "ExemplarBank":
        with np.load(path, allow_pickle=False) as z:
            key = z["embedding"] if "embedding" in z.files else z["encoder"]  # banks before EmbeddingSpec
            return cls(z["embeddings"], z["targets"], z["slide_ids"], [str(g) for g in z["genes"]], str(key))


class ExemplarIndex:
    """k-nearest exemplars of query embeddings, excluding each query's own slide (with ``groups``, slide id -> patient:
    every slide of the query's patient)."""

    def __init__(self, bank: ExemplarBank, k: int = 8, backend: Backend = "auto", faiss_threshold: int = 200_000,
                 hnsw_m: int = 32, groups: Mapping[str, str] | None = None) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if backend not in ("auto", "exact", "faiss"):
            raise ValueError(f"unknown exemplar backend {backend!r}; choose auto, exact or faiss")
        self.bank, self.k, self.groups = bank, k, dict(groups or {})
        self.backend = ("faiss" if len(bank.embeddings) > faiss_threshold else "exact") if backend == "auto" else backend
        self._rows = {s: np.flatnonzero(bank.slide_ids == s) for s in bank.slides}
        self._faiss = {}
        if self.backend == "faiss":
            import faiss

            for s, rows in self._rows.items():
                index = faiss.IndexHNSWFlat(bank.embeddings.shape[1], hnsw_m)
                index.add(bank.embeddings[rows])
                self._faiss[s] = index

    def query(self, embeddings: np.ndarray, query_slides: np.ndarray | list[str] | str | None = None,
              batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Bank row indices (Q, k) and squared L2 distances (Q, k) of the nearest spots from other slides.

        ``query_slides`` gives each query's slide id (or one id for all); those slides (and, with ``groups``, the other
        slides of their patient) are skipped.
        """
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.bank.embeddings.shape[1]:
            raise ValueError(f"query embeddings {emb.shape} do not match bank dim {self.bank.embeddings.shape[1]}")
        if not np.isfinite(emb).all():
            raise ValueError("query embeddings contain NaN/inf")
        q = emb.shape[0]
        if query_slides is None or isinstance(query_slides, str):
            query_slides = np.full(q, "" if query_slides is None else query_slides)
        query_slides = np.asarray(query_slides).astype(str)
        if query_slides.shape != (q,):
            raise ValueError(f"query_slides has shape {query_slides.shape}, expected ({q},)")
        idx = np.full((q, self.k), -1, dtype=np.int64)
        dist = np.full((q, self.k), np.inf, dtype=np.float32)
        for own in np.unique(query_slides):
            sel = np.flatnonzero(query_slides == own)
            group = self.groups.get(own, own)
            others = [s for s in self._rows if self.groups.get(s, s) != group]
            available = sum(len(self._rows[s]) for s in others)
            if available < self.k:
                where = f"patient '{group}'" if own in self.groups else f"slide '{own}'"
                raise ValueError(f"only {available} exemplar spots outside {where}; need k={self.k}")
            for start in range(0, len(sel), batch):
                rows = sel[start:start + batch]
                idx[rows], dist[rows] = self._search(emb[rows], others)
        return idx, dist

    def _search(self, emb: np.ndarray, slides: list[str]) -> tuple[np.ndarray, np.ndarray]:
        cand_i, cand_d = [], []
        for s in slides:
            rows = self._rows[s]
            kk = min(self.k, len(rows))
            if self.backend == "faiss":
                d, i = self._faiss[s].search(emb, kk)
            else:
                d, i = _exact_knn(emb, self.bank.embeddings[rows], kk)
            cand_i.append(rows[i])
            cand_d.append(d)
        ci, cd = np.concatenate(cand_i, 1), np.concatenate(cand_d, 1)
        order = np.argsort(cd, axis=1, kind="stable")[:, : self.k]
        return np.take_along_axis(ci, order, 1), np.take_along_axis(cd, order, 1)

    def gather(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exemplar embeddings (Q, k, D) and targets (Q, k, G) for row indices from :meth:`query`."""
        return self.bank.embeddings[idx], self.bank.targets[idx]


def _exact_knn(query: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distances and indices (faiss order) of the k nearest rows of ``base``."""
    q, b = torch.from_numpy(query).double(), torch.from_numpy(base).double()
    d = (q.pow(2).sum(1, keepdim=True) - 2 * q @ b.T + b.pow(2).sum(1)[None]).clamp_min(0)
    vals, inds = torch.topk(d, k, dim=1, largest=False)
    return vals.float().numpy(), inds.numpy()
