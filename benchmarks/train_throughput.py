"""The bio train stage with the per-fit Lightning loop and with the training engine, side by side in one run.

    python benchmarks/train_throughput.py                         # the demo's train stage, then a HER2+ subset
    python benchmarks/train_throughput.py --study demo            # only the demo
    python benchmarks/train_throughput.py --study her2st --set train.methods='[ridge, softmax, eca]'

Each study preprocesses once (the demo: its synthetic slides and tiny ViT; HER2+: the 4 shared sections
with a small random-init ViT, so embedding takes seconds), then runs the same train stage twice into
separate folders: ``engine: per_fit`` (one Lightning Trainer per fit, as before) and ``engine: vectorised``.
It prints wall seconds, fits per second (a fit = one early-stopped run or one refit: each search trial,
each seed's early-stopped run and its refit), the ratio, whether every item made the same choices (search
trial, epoch count) and the largest differences of test PCC@M, validation PCC@M and predictions. Training
amplifies float rounding (the engine batches its matrix products differently), so on larger fits the
differences grow past 1e-4; ``--float-noise`` also runs the per-fit loop on 1 torch thread, whose difference
to itself is the yardstick (tests/bio/test_engine.py holds the two loops to 1e-4 on a small case).
Times are measured in this one run on this machine; compare ratios, not seconds across machines.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eca_core.runner.config import from_dict, read_yaml, set_dotted, parse_yaml  # noqa: E402
from eca_bio.configs import PreprocessConfig, BioTrainConfig  # noqa: E402

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
    from eca_bio.features.preprocess import run_preprocess

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


def fits(cfg: BioTrainConfig, n_folds: int) -> int:
    """Fits the protocol makes: per neural method and fold, the search trials plus each seed's run and its refit."""
    neural = [m for m in cfg.methods if m not in ("ridge", "ridge_cv")]
    per_fold = (cfg.tune_trials if cfg.tune_trials > 1 else 0) + len(cfg.seeds) * (2 if cfg.refit else 1)
    return len(neural) * len(cfg.transforms) * n_folds * per_fold


def compare(a: Path, b: Path) -> dict:
    """Between two train folders: items, whether every item made the same choices (search trial, epoch count), and the
    largest differences of predictions, of the test PCC@M and of the validation PCC@M over the epochs."""
    from eca_core.metrics import pearson_per_column

    items, same, dpred, dpcc, dval = 0, True, 0.0, 0.0, 0.0
    for pa in sorted(a.rglob("predictions.npz")):
        pb = b / pa.relative_to(a)
        ra, rb = (json.loads(p.with_name("result.json").read_text()) for p in (pa, pb))
        same &= (ra.get("epochs"), ra.get("tuned")) == (rb.get("epochs"), rb.get("tuned"))
        with np.load(pa) as za, np.load(pb) as zb:
            dpred = max(dpred, float(np.abs(za["pred"] - zb["pred"]).max()))
            pcc = [float(np.nanmean(pearson_per_column(z["pred"], z["truth"]))) for z in (za, zb)]
            dpcc = max(dpcc, abs(pcc[0] - pcc[1]))
        ha, hb = pa.with_name("history.csv"), pb.with_name("history.csv")
        if ha.is_file():
            va = [float(r["val_pcc"]) for r in csv.DictReader(open(ha))]
            vb = [float(r["val_pcc"]) for r in csv.DictReader(open(hb))]
            dval = max(dval, np.inf if len(va) != len(vb) else float(np.nanmax(np.abs(np.subtract(va, vb)), initial=0.0)))
        items += 1
    return {"items": items, "same": same, "dpred": dpred, "dpcc": dpcc, "dval": dval}


def run(study: str, work: Path, sets: list[str], accelerator: str = "cpu", noise: bool = False) -> dict:
    from eca_bio.training.train import train_all

    pre, params = prepare(study, work, sets)
    times, cfg, default_threads = {}, None, torch.get_num_threads()
    loops = [("per_fit", None), ("vectorised", None)] + ([("per_fit_1thread", 1)] if noise else [])
    for name, threads in loops:
        engine = name.split("_1")[0]
        cfg = from_dict(BioTrainConfig, {**params, "engine": engine, "threads": threads or params.get("threads")}, "train")
        start = time.perf_counter()
        summary = train_all(cfg, pre, work / name, {"accelerator": accelerator, "devices": 1}, progress=False)
        times[name] = time.perf_counter() - start
        print(f"[{study}] {name}: {times[name]:.1f}s ({summary['trained']} items)", flush=True)
    torch.set_num_threads(default_threads)  # the 1-thread run set it for the process
    row = {"study": study, "fits": fits(cfg, summary["folds"]), "per_fit": times["per_fit"], "vectorised": times["vectorised"],
           **compare(work / "per_fit", work / "vectorised")}
    if noise:  # the per-fit loop against itself on 1 thread: how far float rounding alone moves a fit
        row["noise"] = compare(work / "per_fit", work / "per_fit_1thread")
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", choices=["demo", "her2st", "both"], default="both")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="STAGE.KEY=VALUE",
                    help="override a preprocess./train. parameter of the studies; repeatable")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--accelerator", default="cpu", help="cpu | gpu: where both loops train")
    ap.add_argument("--float-noise", action="store_true",
                    help="also run the per-fit loop on 1 torch thread: its difference to itself is the yardstick of float rounding")
    args = ap.parse_args()
    studies = ["demo", "her2st"] if args.study == "both" else [args.study]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        rows = [run(s, work / s, args.sets, args.accelerator, args.float_noise) for s in studies]
    print()
    print("| study | fits | per-fit loop s | engine s | per-fit fits/s | engine fits/s | ratio | items | same choices | "
          "max |Δ test PCC@M| | max |Δ val PCC@M| | max |Δ pred| |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['study']} | {r['fits']} | {r['per_fit']:.1f} | {r['vectorised']:.1f} | {r['fits'] / r['per_fit']:.2f} | "
              f"{r['fits'] / r['vectorised']:.2f} | {r['per_fit'] / r['vectorised']:.1f}x | {r['items']} | {'yes' if r['same'] else 'NO'} | "
              f"{r['dpcc']:.1e} | {r['dval']:.1e} | {r['dpred']:.1e} |")
    for r in rows:
        if "noise" in r:
            n = r["noise"]
            print(f"{r['study']}: the per-fit loop on 1 thread vs 2: same choices {'yes' if n['same'] else 'NO'}, max |Δ test PCC@M| "
                  f"{n['dpcc']:.1e}, max |Δ val PCC@M| {n['dval']:.1e}, max |Δ pred| {n['dpred']:.1e} (float rounding alone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
