"""The bio train stage with the per-fit Lightning loop and with the training engine, side by side in one run.

    python benchmarks/train_throughput.py                         # the demo's train stage, then a HER2+ subset
    python benchmarks/train_throughput.py --study demo            # only the demo
    python benchmarks/train_throughput.py --study her2st --set train.methods='[ridge, softmax, eca]'

Each study preprocesses once (the demo: its synthetic slides and tiny ViT; HER2+: the 4 shared sections
with a small random-init ViT, so embedding takes seconds), then runs the same train stage twice into
separate folders: ``engine: per_fit`` (one Lightning Trainer per fit, as before) and ``engine: vectorised``.
It prints wall seconds, fits per second (a fit = one early-stopped run or one refit: each search trial,
each seed's early-stopped run and its refit), the ratio, and whether every item's predictions and
validation history agree (max |difference|; the engine is held to the per-fit loop within 1e-4).
Times are measured in this one run on this machine; compare ratios, not seconds across machines.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eca_core.config import from_dict, read_yaml, set_dotted, parse_yaml  # noqa: E402
from eca_bio.configs import PreprocessConfig, TrainConfig  # noqa: E402

HER2ST = ROOT.parent / "shared" / "data" / "her2st"
HER2ST_SUBSET = {  # the her2st pipeline's train stage, smaller: three neural methods, one transform, fewer epochs
    "methods": ["ridge", "meanpool", "softmax", "eca"], "transforms": ["egn"], "epochs": 30, "patience": 6, "tune_trials": 3,
    "seeds": [0, 1, 2], "final_method": None, "threads": None}
HER2ST_ENCODER = {"name": "vit_tiny_patch16_224", "pretrained": False, "kwargs": {"img_size": 112}}


def _stage(pipeline: str, name: str) -> dict:
    return dict(read_yaml(ROOT / "pipelines" / pipeline)["stages"][name])


def _overrides(params: dict, sets: list[str], stage: str) -> dict:
    for item in sets:
        key, _, value = item.partition("=")
        if key.startswith(stage + "."):
            set_dotted(params, key[len(stage) + 1:], parse_yaml(value, item))
    return params


def prepare(study: str, work: Path, sets: list[str]) -> tuple[Path, dict]:
    """The study's preprocess folder and its train-stage parameters."""
    from eca_bio.preprocess import run_preprocess

    if study == "demo":
        from eca_bio.demo import make_demo_data

        data = make_demo_data(work / "data")
        pre = _stage("bio_demo.yaml", "preprocess") | {"st_dir": str(data["st_dir"])}
        train = _stage("bio_demo.yaml", "train")
    else:
        pre = _stage("bio_her2st.yaml", "preprocess") | {"st_dir": str(HER2ST), "encoder": HER2ST_ENCODER, "patch_px": 112}
        train = _stage("bio_her2st.yaml", "train") | HER2ST_SUBSET
    pre, train = _overrides(pre, sets, "preprocess"), _overrides(train, sets, "train")
    start = time.perf_counter()
    run_preprocess(from_dict(PreprocessConfig, pre, "preprocess"), work / "pre", {"accelerator": "cpu"}, progress=False)
    print(f"[{study}] preprocess {time.perf_counter() - start:.1f}s", flush=True)
    return work / "pre", train


def fits(cfg: TrainConfig, n_folds: int) -> int:
    """Fits the protocol makes: per neural method and fold, the search trials plus each seed's run and its refit."""
    neural = [m for m in cfg.methods if m not in ("ridge", "ridge_cv")]
    per_fold = (cfg.tune_trials if cfg.tune_trials > 1 else 0) + len(cfg.seeds) * (2 if cfg.refit else 1)
    return len(neural) * len(cfg.transforms) * n_folds * per_fold


def compare(a: Path, b: Path) -> tuple[int, float, float]:
    """(items, max |Δ prediction|, max |Δ validation PCC@M| over every epoch) between two train folders."""
    items, dpred, dval = 0, 0.0, 0.0
    for pa in sorted(a.rglob("predictions.npz")):
        pb = b / pa.relative_to(a)
        with np.load(pa) as za, np.load(pb) as zb:
            dpred = max(dpred, float(np.abs(za["pred"] - zb["pred"]).max()))
        ha, hb = pa.with_name("history.csv"), pb.with_name("history.csv")
        if ha.is_file():
            va = [float(r["val_pcc"]) for r in csv.DictReader(open(ha))]
            vb = [float(r["val_pcc"]) for r in csv.DictReader(open(hb))]
            dval = max(dval, np.inf if len(va) != len(vb) else float(np.nanmax(np.abs(np.subtract(va, vb)), initial=0.0)))
        items += 1
    return items, dpred, dval


def run(study: str, work: Path, sets: list[str], accelerator: str = "cpu") -> dict:
    from eca_bio.train import train_all

    pre, params = prepare(study, work, sets)
    times, cfg = {}, None
    for engine in ("per_fit", "vectorised"):
        cfg = from_dict(TrainConfig, {**params, "engine": engine}, "train")
        start = time.perf_counter()
        summary = train_all(cfg, pre, work / engine, {"accelerator": accelerator, "devices": 1}, progress=False)
        times[engine] = time.perf_counter() - start
        print(f"[{study}] {engine}: {times[engine]:.1f}s ({summary['trained']} items)", flush=True)
    n = fits(cfg, summary["folds"])
    items, dpred, dval = compare(work / "per_fit", work / "vectorised")
    return {"study": study, "fits": n, "per_fit": times["per_fit"], "vectorised": times["vectorised"], "items": items,
            "dpred": dpred, "dval": dval}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", choices=["demo", "her2st", "both"], default="both")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="STAGE.KEY=VALUE",
                    help="override a preprocess./train. parameter of the studies; repeatable")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--accelerator", default="cpu", help="cpu | gpu: where both loops train")
    args = ap.parse_args()
    studies = ["demo", "her2st"] if args.study == "both" else [args.study]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        rows = [run(s, work / s, args.sets, args.accelerator) for s in studies]
    print()
    print("| study | fits | per-fit loop s | engine s | per-fit fits/s | engine fits/s | ratio | items | max |Δpred| | max |Δval PCC| | equal (1e-4) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        equal = r["dpred"] <= 1e-4 and r["dval"] <= 1e-4
        print(f"| {r['study']} | {r['fits']} | {r['per_fit']:.1f} | {r['vectorised']:.1f} | {r['fits'] / r['per_fit']:.2f} | "
              f"{r['fits'] / r['vectorised']:.2f} | {r['per_fit'] / r['vectorised']:.1f}x | {r['items']} | {r['dpred']:.1e} | "
              f"{r['dval']:.1e} | {'yes' if equal else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
