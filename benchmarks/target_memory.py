"""Peak memory of building expression targets for one large slide: the previous dense path vs the sparse one.

The previous code densified every gene of a slide in float64 (``counts.toarray()``), then transformed the
whole matrix, before picking the selected genes; the current code (``eca_bio.training.targets``) selects the genes'
columns from the sparse counts first. Both run on the same synthetic slide in one process, and the script
prints each one's peak of traced allocations (numpy and scipy report theirs to ``tracemalloc``) and the
ratio. The dense path needs 2 × spots × genes × 8 bytes, so it is only run where that fits (``--dense-max-gb``).

Usage: python benchmarks/target_memory.py [--spots 100000] [--genes 18000] [--density 0.02] [--n-genes 250]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from eca_bio.features.feature_set import SlideData
from eca_bio.training.targets import fit_targets, make_targets, transform_counts


def synthetic_slide(spots: int, genes: int, density: float, seed: int = 0) -> SlideData:
    rng = np.random.default_rng(seed)
    nnz = int(spots * genes * density)
    rows = rng.integers(0, spots, nnz)
    cols = np.minimum(rng.geometric(3.0 / genes, nnz) - 1, genes - 1)  # a few genes carry most counts, as in real data
    X = sp.csr_matrix((rng.poisson(2.0, nnz).astype(np.float32) + 1, (rows, cols)), shape=(spots, genes))
    X.sum_duplicates()
    adata = ad.AnnData(X=X, var=pd.DataFrame(index=[f"g{i}" for i in range(genes)]))
    return SlideData("big", np.zeros((spots, 1), np.float32), None, np.zeros((spots, 2), np.int64),
                     np.zeros((spots, 2)), None, "", None, 0.5, 16.0, adata)


def dense_reference(slide: SlideData, genes: list[str], transform: str) -> np.ndarray:
    """The previous implementation: densify all genes in float64, transform all, then take the columns."""
    counts = slide.counts.X.toarray().astype(np.float64)
    values = transform_counts(counts, transform)
    index = {g: i for i, g in enumerate(slide.counts.var_names)}
    return values[:, [index[g] for g in genes]]


def peak(fn) -> tuple[float, float, object]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    _, top = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return top / 2**30, seconds, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spots", type=int, default=100_000)
    parser.add_argument("--genes", type=int, default=18_000)
    parser.add_argument("--density", type=float, default=0.02)
    parser.add_argument("--n-genes", type=int, default=250)
    parser.add_argument("--transform", default="libsize", choices=["egn", "libsize"])
    parser.add_argument("--dense-max-gb", type=float, default=8.0, help="skip the dense path if it would need more")
    args = parser.parse_args(argv)
    slide = synthetic_slide(args.spots, args.genes, args.density)
    print(f"slide: {args.spots} spots x {args.genes} genes, {slide.counts.X.nnz:,} non-zeros "
          f"({slide.counts.X.data.nbytes / 2**30:.2f} GiB of values); {args.n_genes} genes, transform {args.transform}")
    sparse_gb, sparse_s, y = peak(lambda: make_targets(slide, fit_targets([slide], args.transform, args.n_genes))[0])
    print(f"sparse (current): peak {sparse_gb:.2f} GiB, {sparse_s:.1f} s, targets {y.shape}")
    need = 2 * args.spots * args.genes * 8 / 2**30
    if need > args.dense_max_gb:
        print(f"dense (previous): not run, it would need about {need:.1f} GiB (2 x spots x genes x 8 bytes) "
              f"> --dense-max-gb {args.dense_max_gb:g}; ratio >= {need / sparse_gb:.0f}x")
        return 0
    spec = fit_targets([slide], args.transform, args.n_genes)
    dense_gb, dense_s, ref = peak(lambda: dense_reference(slide, spec.genes, args.transform))
    print(f"dense (previous): peak {dense_gb:.2f} GiB, {dense_s:.1f} s")
    ours = transform_counts(slide.counts.X[:, [int(g[1:]) for g in spec.genes]].toarray().astype(np.float64), "egn") \
        if args.transform == "egn" else None
    if ours is not None:
        np.testing.assert_allclose(ours, ref, rtol=1e-12)
    print(f"peak memory dense / sparse = {dense_gb / sparse_gb:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
