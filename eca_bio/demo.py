"""``eca-bio demo``: a small synthetic spatial-transcriptomics slide set, then the whole bio pipeline on it.

No network and no pretrained weights: the demo paints H&E-like images (pink eosin background whose
tone follows a "stroma" field, purple nuclei whose density follows a "tumour" field), places legacy-ST
spots on a 200 µm array, and draws each spot's raw counts from Poisson rates that depend on the local
fields (so image content predicts expression) times a per-spot library size. One extra slide without
sequencing is the "new WSI" for ``predict``. Then ``pipelines/bio_demo.yaml`` runs
preprocess → train → evaluate → predict through the pipeline runner with a tiny random-init ViT.
"""

from __future__ import annotations

import argparse
import gzip
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from eca_core.io import atomic_path, write_text_atomic
from eca_core.runner import distributed
from eca_core.runner.runtime import Runtime
from eca_core.runner.pipeline import PipelineSpec, run_pipeline, validate_pipeline
from eca_core.runner.resume import RunLock

DEMO_MPP = 2.0  # µm per pixel of the synthetic images
DEFAULT_HOMOGENEITY = 1.0  # the ECA paper's regime (see paint_slide); 0 is one flag away
SPACING_UM = 200.0  # legacy ST array spacing


def _field(rng: np.random.Generator, h: int, w: int, bumps: int = 5) -> np.ndarray:
    """A smooth random field in [0, 1] made of Gaussian bumps."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f = np.zeros((h, w), np.float32)
    for _ in range(bumps):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        s = rng.uniform(0.12, 0.3) * max(h, w)
        f += rng.uniform(0.5, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    f -= f.min()
    return f / max(float(f.max()), 1e-6)


def paint_slide(rng: np.random.Generator, h: int, w: int, homogeneity: float = 0.0) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """An H&E-like RGB image and its tumour (nuclei density) and stroma (eosin) fields.

    ``homogeneity`` (0-1) trades scattered nuclei (a few per patch token: tokens of one spot differ) for a fine
    chromatin speckle of the same density (many per token: the tokens of one spot look alike, spots still differ
    by their fields), i.e. in-sample homogeneity against cross-sample spread, the regime of the ECA paper."""
    tumour, stroma = _field(rng, h, w), _field(rng, h, w)
    shift = rng.normal(0, 8, size=3)  # per-slide stain variation
    base = np.stack([235 - 20 * stroma, 170 - 60 * stroma, 205 - 30 * stroma], -1) + shift
    pixels = base + rng.normal(0, 4, size=base.shape)
    if homogeneity > 0:  # speckle: each pixel purple with a probability that follows the tumour field
        speck = rng.uniform(size=(h, w)) < homogeneity * (0.05 + 0.45 * tumour)
        pixels[speck] = np.array([85, 45, 135]) + shift
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    n_nuclei = int(h * w / 90 * (1.0 - homogeneity))
    ys, xs = rng.uniform(0, h, n_nuclei), rng.uniform(0, w, n_nuclei)
    keep = rng.uniform(size=n_nuclei) < 0.08 + 0.9 * tumour[ys.astype(int), xs.astype(int)]
    for y, x in zip(ys[keep], xs[keep]):
        r = rng.uniform(2.0, 4.0) * (1.0 + 0.5 * tumour[int(y), int(x)])
        c = tuple(int(v) for v in np.clip(np.array([85, 45, 135]) + rng.normal(0, 12, 3) + shift, 0, 255))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=c)
    return img, tumour, stroma


def make_demo_data(out: Path, n_slides: int = 4, grid: int = 9, n_genes: int = 60, seed: int = 0,
                   homogeneity: float = DEFAULT_HOMOGENEITY) -> dict[str, Path]:
    """Write ``n_slides`` legacy-ST sections under ``out/st`` and one slide without ST under ``out/wsi``
    (``homogeneity``: see :func:`paint_slide`)."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    step = SPACING_UM / DEMO_MPP  # px between neighbouring spots
    margin = int(step)
    size = int(margin * 2 + step * (grid - 1))
    genes = [f"GENE{i:03d}" for i in range(n_genes)]
    base = np.exp(rng.normal(1.0, 1.0, n_genes))
    w_t, w_s = rng.normal(0, 1.2, n_genes), rng.normal(0, 1.2, n_genes)
    radius = int(50.0 / DEMO_MPP)  # 100 µm spot diameter
    for s in range(n_slides):
        sid = f"SYN{s + 1}"
        folder = out / "st" / sid
        folder.mkdir(parents=True, exist_ok=True)
        img, tumour, stroma = paint_slide(rng, size, size, homogeneity)
        rows, sel = {}, []
        for gx in range(1, grid + 1):
            for gy in range(1, grid + 1):
                px, py = margin + (gx - 1) * step, margin + (gy - 1) * step
                y0, y1, x0, x1 = int(py) - radius, int(py) + radius, int(px) - radius, int(px) + radius
                t, st = float(tumour[y0:y1, x0:x1].mean()), float(stroma[y0:y1, x0:x1].mean())
                lib = np.exp(rng.normal(0, 0.3)) * (1.0 + 0.8 * t)
                rate = base * np.exp(w_t * t + w_s * st) * lib
                rows[f"{gx}x{gy}"] = rng.poisson(rate)
                sel.append((gx, gy, gx + rng.normal(0, 0.01), gy + rng.normal(0, 0.01), px, py, 1))
        counts = pd.DataFrame.from_dict(rows, orient="index", columns=genes)
        with atomic_path(folder / f"{sid}.tsv.gz") as tmp:  # mtime=0: the same data give the same bytes, so re-runs are up to date
            with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
                gz.write(counts.to_csv(sep="\t").encode())
        table = pd.DataFrame(sel, columns=["x", "y", "new_x", "new_y", "pixel_x", "pixel_y", "selected"])
        write_text_atomic(folder / f"{sid}_selection.tsv", table.to_csv(sep="\t", index=False))
        with atomic_path(folder / f"{sid}_HE.png") as tmp:
            img.save(tmp)
    (out / "wsi").mkdir(parents=True, exist_ok=True)
    img, _, _ = paint_slide(rng, size, int(size * 1.3), homogeneity)
    new_slide = out / "wsi" / "SYN_new.png"
    with atomic_path(new_slide) as tmp:
        img.save(tmp)
    return {"st_dir": out / "st", "new_slide": new_slide}


def default_pipeline() -> Path:
    """``pipelines/bio_demo.yaml`` of the source tree (or $ECA_BIO_DEMO_YAML)."""
    env = os.environ.get("ECA_BIO_DEMO_YAML")
    path = Path(env) if env else Path(__file__).resolve().parents[1] / "pipelines" / "bio_demo.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: demo pipeline YAML not found; pass --pipeline or set ECA_BIO_DEMO_YAML")
    return path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bio_demo"), help="run directory (data go to RUN_DIR/data)")
    parser.add_argument("--pipeline", type=Path, default=None, help="pipeline YAML (default: pipelines/bio_demo.yaml)")
    parser.add_argument("--slides", type=int, default=4, help="number of synthetic ST slides (>= 3 for LOSO)")
    parser.add_argument("--grid", type=int, default=9, help="spots per side of each synthetic ST array")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--homogeneity", type=float, default=DEFAULT_HOMOGENEITY,
                        help="0-1: how alike the patch tokens of one spot look against the spread across spots; 1 (default) "
                             "is the ECA paper's regime (token sets d/cross ~0.55-0.8, Theorem 2.2 r ~12), 0 scatters nuclei "
                             "so a spot's tokens differ as much as spots do (d/cross ~1)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="override a stage parameter of the demo pipeline; repeatable")
    Runtime.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    start = time.time()
    out = Path(args.run_dir)
    os.environ["DEMO_DATA"] = str((out / "data").resolve())  # the demo pipeline reads its data and run dir from these
    os.environ["RUN_DIR"] = str(out.resolve())
    spec = PipelineSpec.from_yaml(args.pipeline or default_pipeline()).with_overrides(args.overrides)
    validate_pipeline(spec)  # a bad --set fails now, not after the data are painted
    distributed.launch(Runtime.from_args(args))  # several ranks: start them before anything is written
    with RunLock(out):
        records = _run(spec, out, args)
    if not distributed.is_main():
        return 0
    report = out / "evaluate" / "report.md"
    print()
    print(report.read_text())
    print(f"demo finished in {time.time() - start:.0f}s")
    print(f"report:      {report.resolve()}")
    print(f"summary:     {(out / 'evaluate' / 'summary.json').resolve()}")
    for transform in sorted((out / "evaluate" / "h5ad").glob("*")):
        print(f".h5ad ({transform.name}): {transform.resolve()}/*.h5ad")
    for sid, r in (records.get("predict", {}).get("summary", {}).get("slides") or {}).items():
        print(f"prediction:  {Path(r['h5ad']).resolve()}\n             {Path(r['png']).resolve()}")
    return 0


def _run(spec: PipelineSpec, out: Path, args: argparse.Namespace) -> dict:
    if not 0.0 <= args.homogeneity <= 1.0:
        raise ValueError(f"--homogeneity {args.homogeneity}: give a value in [0, 1]")
    data = distributed.on_main(make_demo_data, out / "data", n_slides=args.slides, grid=args.grid, seed=args.seed,
                               homogeneity=args.homogeneity)
    if distributed.is_main():
        print(f"synthetic data: {len(list(data['st_dir'].iterdir()))} ST slides in {data['st_dir'].resolve()}, "
              f"new slide {data['new_slide'].resolve()}")
    return run_pipeline(spec, out, runtime=Runtime.from_args(args))
