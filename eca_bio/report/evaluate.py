"""Reports of a train run: PCC@F/S/M, MSE, MAE per fold and overall, per-gene PCC CSV, training curves,
a markdown + JSON summary comparing every method side by side, and ``.h5ad`` export of test predictions.

PCC is per gene over all test spots of a fold (DESIGN §3); PCC@F/S/M are the 25th percentile, median
and mean over genes with a defined PCC (genes constant in the truth are counted, never scored 0).
"Overall" is the mean (± std) over folds. Every table names its target transform.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from eca_core.runner.config import to_dict
from eca_core.io import atomic_dir, plain_name, read_json, write_json_atomic, write_text_atomic
from eca_core.metrics import regression_report
from eca_core.runner.pipeline import StageContext
from eca_bio.features.feature_set import DataError, read_manifest
from eca_bio.configs import EvaluateConfig
from eca_bio.report.tables import egn_lines, homogeneity_table, lambda_tau_table, tuning_table

METRICS = ("pcc_f", "pcc_s", "pcc_m", "mse", "mae")
TRANSFORM_NOTES = {
    "egn": "egn = log10(counts + 1), per-gene min-max (EGN/ECA paper protocol; rewards predicting sequencing depth)",
    "libsize": "libsize = log1p(counts per 10k per spot), per-gene min-max (library-size normalised)",
}


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _history(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path) as fh:
        return [{k: float(v) if v not in ("", None) else float("nan") for k, v in row.items()} for row in csv.DictReader(fh)]


def collect(train_dir: Path) -> dict[str, Any]:
    """Per transform/method/fold metrics of a train run (reads predictions.npz and targets.json)."""
    train_dir = Path(train_dir)
    folds_path = train_dir / "folds.json"
    if not folds_path.is_file():
        raise DataError(f"{train_dir}: no folds.json (run `eca-bio train` first)")
    plan = read_json(folds_path, DataError, "run `eca-bio train` again")
    for fold in plan.get("folds", []):  # test slide ids become .h5ad / PNG file names
        for sid in fold.get("test", []):
            plain_name(sid, f"{folds_path}: fold {fold.get('fold')} test slide", DataError)
    if not plan["folds"]:
        raise DataError(f"{folds_path}: the run has no cross-validation folds (cv: none); test its final model on "
                        f"labeled sections with `eca-bio predict --st-dir DIR`")
    cfg = plan["config"]
    results: dict[str, Any] = {}
    for transform in cfg["transforms"]:
        per_method: dict[str, Any] = {}
        for method in cfg["methods"]:
            seeds = expected_seeds(cfg, method)
            folds = [_fold_entry(train_dir / transform / f"fold_{fold['fold']}" / method, fold, seeds) for fold in plan["folds"]]
            overall = {}
            for m in METRICS:
                vals = np.array([f[m] for f in folds], dtype=float)  # fold values: means over seeds
                runs = np.array([v for f in folds for v in f["seed_values"][m]], dtype=float)  # every (fold, seed) run
                overall[m] = float(np.nanmean(vals))
                overall[f"{m}_std"] = float(np.nanstd(runs))
            for m in ("moran_pred", "moran_truth", "moran_ratio"):
                vals = np.array([f[m] for f in folds], dtype=float)
                overall[m] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
            per_method[method] = {"folds": folds, "overall": overall, "seeds": sorted({k for f in folds for k in f["seeds"]})}
        results[transform] = per_method
    return {"plan": plan, "results": results}


def expected_seeds(cfg: dict[str, Any], method: str) -> list[int]:
    """The seeds the train run (its ``folds.json`` config) gave ``method``."""
    from eca_bio.methods import method_seeds

    return method_seeds([int(k) for k in cfg.get("seeds", [cfg.get("seed", 0)])], method)


def seed_dirs(item: Path, seeds: list[int]) -> list[Path]:
    """The ``seed_<k>`` folders of a fold/method item, one per expected seed, each with its predictions."""
    dirs = [item / f"seed_{k}" for k in seeds]
    if (item / "predictions.npz").is_file() and not any(d.is_dir() for d in dirs):
        raise DataError(f"{item}: written by an earlier eca-bio (one run, no seed_<k> folders); run `eca-bio train` "
                        f"again on the same folder to train the seeds")
    for d in dirs:
        if not (d / "predictions.npz").is_file():
            raise DataError(f"{d}: no predictions.npz (training of this fold/method/seed did not finish)")
    return dirs


def seed_predictions(item: Path, seeds: list[int]) -> list[dict[str, np.ndarray]]:
    """The ``predictions.npz`` arrays of each expected seed of a fold/method item."""
    return [_load_npz(d / "predictions.npz") for d in seed_dirs(item, seeds)]


def seed_mean(runs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One run's arrays with ``pred`` replaced by the prediction averaged over the seeds' runs."""
    return dict(runs[0], pred=np.mean([r["pred"] for r in runs], axis=0))


def _fold_entry(item: Path, fold: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """One fold of one method: metrics as the mean over its seeds, per-seed values, per-gene PCC (mean over seeds)."""
    from eca_bio.report.spatial_fidelity import fidelity

    genes = read_json(item.parent / "targets.json", DataError, "run `eca-bio train` again")["genes"]
    runs = seed_predictions(item, seeds)
    reports = [regression_report(z["pred"], z["truth"], genes) for z in runs]
    results = [read_json(item / f"seed_{k}" / "result.json", DataError, "run `eca-bio train` again") for k in seeds]
    z = seed_mean(runs)
    moran = fidelity(z["pred"], z["truth"], z["centres"], z["slide_ids"], genes)  # seed-averaged prediction
    per_gene = {g: [r["per_output"][g] for r in reports] for g in genes}
    per_gene = {g: (float(np.mean(v)) if all(x is not None for x in v) else None) for g, v in per_gene.items()}
    first = item / f"seed_{seeds[0]}"
    return {"fold": fold["fold"], "test": fold["test"], "val": fold["val"], "epochs": results[0].get("epochs"),
            **{m: float(np.nanmean([r[m] for r in reports])) for m in METRICS},
            "seeds": [int(r.get("seed", 0)) for r in results],
            "seed_values": {m: [r[m] for r in reports] for m in METRICS},
            "n_constant": reports[0]["n_constant"], "constant_genes": reports[0]["constant_outputs"],
            "n_spots": reports[0]["n_samples"], "per_gene": per_gene, "history": _history(first / "history.csv"),
            "lambda_tau": [r.get("lambda_tau") for r in results if r.get("lambda_tau")],
            "tuned": results[0].get("tuned", {}),
            "homogeneity": results[0].get("homogeneity"), "egn": results[0].get("egn"),
            "tuning": read_json(item / "tuning.json", DataError) if (item / "tuning.json").is_file() else None,
            **{k: moran[k] for k in ("moran_pred", "moran_truth", "moran_ratio")}, "moran_per_gene": moran["per_gene"]}


def claims(results: dict[str, Any], cfg: EvaluateConfig) -> dict[str, dict[str, Any]]:
    """Per transform: paired tests of the primary method against its softmax counterpart, each reference and
    the best other method; a claim holds only when the gain is significant (:mod:`eca_bio.report.comparisons`)."""
    from eca_bio.report.comparisons import compare_methods

    out = {}
    for transform, methods in results.items():
        c: dict[str, Any] = {}
        if cfg.primary not in methods:
            out[transform] = c
            continue
        eca = methods[cfg.primary]
        others = {m: r for m, r in methods.items() if m != cfg.primary}
        best = max(others, key=lambda m: others[m]["overall"]["pcc_m"], default=None)
        pairs = [(f"vs_{r}", r) for r in cfg.references if r in methods]
        if cfg.softmax in methods:
            pairs.insert(0, ("vs_softmax", cfg.softmax))
        if best is not None and best not in dict(pairs).values():
            pairs.append(("vs_best_other", best))
        for name, other in pairs:
            test = compare_methods(eca, methods[other], cfg.primary, other)
            entry = {"statement": f"{cfg.primary} PCC > {other} PCC (paired Wilcoxon over genes per fold and over folds)",
                     "holds": test["significant_gain"], "values": [eca["overall"]["pcc_m"], methods[other]["overall"]["pcc_m"]],
                     "test": test}
            if other == cfg.softmax:
                sm = methods[other]["overall"]
                ratio = eca["overall"]["mse"] / sm["mse"] if sm["mse"] > 0 else float("inf")
                entry["mse_ratio"] = ratio
                entry["statement"] += f" and MSE <= {cfg.mse_tolerance}x"
                entry["holds"] = bool(entry["holds"] and ratio <= cfg.mse_tolerance)
            c[name] = entry
        out[transform] = c
    return out


def _fmt(v: float, std: float | None = None) -> str:
    if v is None or not np.isfinite(v):
        return "n/a"
    return f"{v:.4f}" if std is None else f"{v:.4f} ± {std:.4f}"


def markdown_report(collected: dict[str, Any], checks: dict[str, Any], encoder: Any, pair: tuple[str, str] = ("eca", "softmax")) -> str:
    """Side-by-side markdown tables (one per transform), per-fold PCC@M, and the claims."""
    plan, results = collected["plan"], collected["results"]
    labels = plan.get("labels", {})
    enc = encoder if isinstance(encoder, dict) else {"name": str(encoder)}
    pretrained = enc.get("pretrained") or enc.get("weights")
    lines = ["# Spatial expression from H&E: cross-validated comparison", "",
             "Overall = mean over folds of each fold's mean over seeds ± std over every (fold, seed) run; PCC per gene over "
             "all spots of the test slide(s) of a fold. Claims are paired tests (Wilcoxon signed-rank over genes within "
             "each fold, Bonferroni over folds, and over folds), never raw comparisons of means.",
             f"- seeds: {plan['config'].get('seeds', [plan['config'].get('seed', 0)])} for neural methods (ridge is deterministic: one run)",
             f"- cross-validation: {plan['cv']} by {'patient' if plan['cv'] == 'lopo' or (plan['cv'] == 'kfold' and plan.get('patients')) else 'slide'}, "
             f"{len(plan['folds'])} folds; early stopping on a held-out training slide",
             f"- grouping: {plan.get('grouping') or 'no patient ids (a run before patients were recorded): sections of one patient may leak'}",
             *([f"- **WARNING: the same image sits on both sides of {len(plan['same_image'])} fold pair(s)** "
                f"(train.allow_same_image): these folds measure memory, not prediction"] if plan.get("same_image") else []),
             f"- encoder: `{enc.get('name')}` {'with pretrained weights' if pretrained else '**random-init (no pretrained weights)**'}"
             f", kwargs {enc.get('kwargs', {})}",
             f"- genes: top {plan['config']['n_genes']} by mean count over each fold's training slides; k = {plan['config']['k']} exemplars",
             *egn_lines(results), ""]
    for transform, methods in results.items():
        lines += [f"## Target transform: `{transform}`", "", TRANSFORM_NOTES.get(transform, transform), "",
                  f"| method ({transform}) | PCC@F | PCC@S | PCC@M | MSE | MAE |", "|---|---|---|---|---|---|"]
        for method, r in methods.items():
            o = r["overall"]
            lines.append(f"| {labels.get(method, method)} | " + " | ".join(_fmt(o[m], o[f'{m}_std']) for m in METRICS) + " |")
        fold_names = [",".join(f["test"]) for f in next(iter(methods.values()))["folds"]]
        lines += ["", f"PCC@M per fold (test slide), `{transform}`:", "",
                  "| method | " + " | ".join(fold_names) + " |", "|---" * (len(fold_names) + 1) + "|"]
        for method, r in methods.items():
            lines.append(f"| {labels.get(method, method)} | " + " | ".join(
                _fmt(f["pcc_m"], float(np.std(f["seed_values"]["pcc_m"])) if len(f["seeds"]) > 1 else None) for f in r["folds"]) + " |")
        lines += ["", f"Spatial fidelity, `{transform}`: Moran's I on each test slide's 6-nearest-spot graph, median over "
                  "genes, mean over folds; ratio = I(predicted) / I(measured) per gene (> 1: smoother than the tissue).", "",
                  "| method | I predicted | I measured | ratio |", "|---|---|---|---|"]
        for method, r in methods.items():
            o = r["overall"]
            lines.append(f"| {labels.get(method, method)} | {_fmt(o['moran_pred'])} | {_fmt(o['moran_truth'])} | {_fmt(o['moran_ratio'])} |")
        lines += [""] + lambda_tau_table(methods, labels) + tuning_table(methods, labels) + homogeneity_table(methods, *pair)
        const = {m: sum(f["n_constant"] for f in r["folds"]) for m, r in methods.items()}
        if any(const.values()):
            lines += ["", f"Genes constant in a test slide's truth (no PCC, excluded from PCC@*): {max(const.values())} gene-folds."]
        lines.append("")
        for c in checks.get(transform, {}).values():
            t = c["test"]
            extra = f", MSE ratio {c['mse_ratio']:.3f}" if "mse_ratio" in c else ""
            lines.append(f"- claim `{transform}`: {c['statement']}: **{'holds' if c['holds'] else 'does NOT hold'}** "
                         f"(PCC@M {c['values'][0]:.4f} vs {c['values'][1]:.4f}{extra}). Verdict: {t['verdict']}.")
            cells = " | ".join(f"{f['median_diff']:+.4f} (r {f['rank_biserial']:+.2f}, p {f['p']:.2g})" for f in t["per_fold"])
            a = t["across_folds"]
            lines.append(f"  per fold, median per-gene PCC difference (rank-biserial r, Wilcoxon p): {cells}; "
                         f"across folds: {a['median_diff']:+.4f}, p {a['p']:.2g}")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot_curves(folds: list[dict[str, Any]], path: Path, title: str) -> None:
    """PNG with PCC@M and MSE per epoch, train (dashed) and validation (solid), one colour per fold; for ECA
    layers also λ (SRA) and τ (DATS) per epoch: mean (line) and min–max over the epoch's spots (band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = [k for k in ("lambda", "tau") if any(f"{k}_mean" in r for f in folds for r in f["history"])]
    fig, axes = plt.subplots(1, 2 + len(stats), figsize=(5 * (2 + len(stats)), 3.6))
    for i, f in enumerate(folds):
        h = f["history"]
        if not h:
            continue
        ep = [r["epoch"] for r in h]
        color = f"C{i}"
        for ax, key in zip(axes, ("pcc", "mse")):
            ax.plot(ep, [r.get(f"train_{key}") for r in h], "--", color=color, alpha=0.7)
            ax.plot(ep, [r.get(f"val_{key}") for r in h], "-", color=color, label=f"fold {f['fold']} (val {f['val']})")
        for ax, key in zip(axes[2:], stats):
            ax.plot(ep, [r.get(f"{key}_mean") for r in h], "-", color=color)
            ax.fill_between(ep, [r.get(f"{key}_min") for r in h], [r.get(f"{key}_max") for r in h], color=color, alpha=0.15)
    axes[0].set_ylabel("PCC@M")
    axes[1].set_ylabel("MSE")
    for ax, key in zip(axes[2:], stats):
        ax.set_ylabel({"lambda": "λ (SRA residual scale)", "tau": "τ (DATS temperature)"}[key])
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, title="solid: val, dashed: train", title_fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def per_gene_csv(folds: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["fold", "test_slides", "gene", "pcc"])
    for f in folds:
        for gene, r in f["per_gene"].items():
            w.writerow([f["fold"], ";".join(f["test"]), gene, "" if r is None else f"{r:.6f}"])
    return buf.getvalue()


def export_predictions(train_dir: Path, pre_dir: Path | None, method: str, transform: str, collected: dict[str, Any],
                       out: Path, cfg: EvaluateConfig) -> list[str]:
    """One .h5ad + gene-map PNG per test slide of ``method`` under ``transform``."""
    from eca_bio.inputs.slides import slide_images
    from eca_bio.report.export import plot_gene_maps, prediction_anndata, section_metadata, top_genes, write_h5ad

    plan = collected["plan"]
    manifest = read_manifest(pre_dir) if pre_dir and (pre_dir / "manifest.json").is_file() else {"slides": []}
    entries = {e["slide_id"]: e for e in manifest["slides"]}
    written = []
    for fold, res in zip(plan["folds"], collected["results"][transform][method]["folds"]):
        item = Path(train_dir) / transform / f"fold_{fold['fold']}" / method
        z = seed_mean(seed_predictions(item, expected_seeds(plan["config"], method)))
        targets = read_json(item.parent / "targets.json", DataError)
        genes = targets["genes"]
        for sid in fold["test"]:
            rows = z["slide_ids"] == sid
            entry = entries.get(sid, {})
            images, scales = None, None
            if cfg.export_images and entry.get("image") and Path(entry["image"]).exists():
                images, scales = slide_images(entry["image"], entry.get("mpp"),
                                              max_megapixels=(manifest.get("params") or {}).get("max_image_megapixels"))
            rep = regression_report(z["pred"][rows], z["truth"][rows], genes)
            var, diameter = section_metadata(pre_dir / entry["h5ad"] if pre_dir and entry.get("h5ad") else None)
            eca = {"method": method, "target_transform": transform, "target_note": TRANSFORM_NOTES.get(transform, ""),
                   "fold": fold["fold"], "train_slides": fold["train"],
                   "metrics": {m: rep[m] for m in METRICS} | {"n_constant": rep["n_constant"]},
                   "config": json.dumps(plan["config"]), "encoder": json.dumps(plan["encoder"])}
            adata = prediction_anndata(z["pred"][rows], genes, list(z["barcodes"][rows]), z["centres"][rows], sid,
                                       truth=z["truth"][rows], images=images, scalefactors=scales,
                                       spot_diameter_px=diameter or entry.get("patch_size_px"), eca=eca, spec=targets, var=var)
            path = write_h5ad(adata, out / f"{sid}.h5ad")
            plot_gene_maps(adata, top_genes(adata, cfg.genes_to_plot), out / f"{sid}_genes.png",
                           title=f"{sid}: {method}, target {transform} (predicted | measured)")
            written.append(str(path))
    return written


def _feature_join_lines(pre_dir: Path | None) -> str:
    """How precomputed (TRIDENT/CLAM) features were joined to the spots, per slide, when they were."""
    if pre_dir is None or not (Path(pre_dir) / "manifest.json").is_file():
        return ""
    rows = [(e["slide_id"], e["feature_join"]) for e in read_manifest(pre_dir)["slides"] if e.get("feature_join")]
    if not rows:
        return ""
    lines = ["", "Precomputed features joined to the spots:", ""]
    for sid, j in rows:
        offset = (f"; spot centre to tile centre mean {j['mean_offset_px']:.1f} px, largest {j['max_offset_px']:.1f} px"
                  if "mean_offset_px" in j else "")
        lines.append(f"- {sid}: {j['how']} (tiles of {j['patch_size_level0']:g} level-0 px{offset})")
    return "\n".join(lines) + "\n"


def evaluate_run(train_dir: Path, out_dir: Path, cfg: EvaluateConfig | None = None, pre_dir: Path | None = None) -> dict[str, Any]:
    """Write report.md, summary.json, per-gene CSVs, curves and .h5ad exports into ``out_dir`` (atomically)."""
    cfg = cfg or EvaluateConfig()
    collected = collect(train_dir)
    results = collected["results"]
    checks = claims(results, cfg)
    encoder = collected["plan"].get("encoder", {})
    report = markdown_report(collected, checks, encoder, (cfg.primary, cfg.softmax)) + _feature_join_lines(pre_dir)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        (tmp / "per_gene").mkdir()
        (tmp / "curves").mkdir()
        for transform, methods in results.items():
            for method, r in methods.items():
                write_text_atomic(tmp / "per_gene" / f"{transform}_{method}.csv", per_gene_csv(r["folds"]))
                if any(f["history"] for f in r["folds"]):
                    plot_curves(r["folds"], tmp / "curves" / f"{transform}_{method}.png", f"{method}, target {transform}")
        exported = {}
        if cfg.export_method and all(cfg.export_method in m for m in results.values()):
            for transform in results:
                exported[transform] = export_predictions(train_dir, pre_dir, cfg.export_method, transform, collected,
                                                         tmp / "h5ad" / transform, cfg)
        summary = {"encoder": encoder, "cv": collected["plan"]["cv"], "config": to_dict(cfg), "claims": checks,
                   "results": {t: {m: {"overall": r["overall"],
                                       "folds": [{k: v for k, v in f.items() if k not in ("per_gene", "history")} for f in r["folds"]]}
                                   for m, r in ms.items()} for t, ms in results.items()},
                   "transforms": {t: TRANSFORM_NOTES.get(t, t) for t in results}}
        write_json_atomic(tmp / "summary.json", summary)
        write_text_atomic(tmp / "report.md", report)
    exported = {t: [str(out_dir / Path(p).relative_to(tmp)) for p in ps] for t, ps in exported.items()}
    return {"report": str(out_dir / "report.md"), "summary": str(out_dir / "summary.json"), "h5ad": exported,
            "claims": {t: {k: v["holds"] for k, v in c.items()} for t, c in checks.items()}}


def run_stage(ctx: StageContext) -> dict[str, Any]:
    result = evaluate_run(ctx.stage_dir("train"), ctx.out_dir, ctx.config, ctx.maybe_stage_dir("preprocess"))
    print((Path(ctx.out_dir) / "report.md").read_text())
    return result


def report(result: dict[str, Any], args: Any) -> None:
    print(f"report: {result['report']}\nsummary: {result['summary']}")
    for transform, paths in result["h5ad"].items():
        print(f".h5ad ({transform}): {Path(paths[0]).parent if paths else '-'}")
