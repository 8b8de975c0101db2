"""``eca-bio predict``: expression maps for whole-slide images without sequencing.

The slide is tiled over tissue and embedded with exactly the encoder and patch settings the model
was trained with (``eca_bio.features.preprocess.run_preprocess``), each tile gets its k exemplars from the
training bank, and the model's predictions are written as ``<slide>.h5ad`` (DESIGN §3 layout, no
``truth`` layer) plus ``<slide>_genes.png`` heatmaps over the slide thumbnail.

External test: labeled sections (``st_dir``, any layout preprocess reads) are predicted the same way
at their spots and scored against their measured expression with the training statistics: the
evaluate stage's metrics per section and pooled (``external_test.md`` / ``.json``), per-gene PCCs
(``external_per_gene.csv``) and ``.h5ad`` files with a ``truth`` layer.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from eca_core.runner import distributed
from eca_core.runner.config import from_dict
from eca_core.io import read_json, write_json_atomic
from eca_core.runner.pipeline import StageContext
from eca_core.runner.runtime import Runtime
from eca_bio.model.exemplars import ExemplarIndex
from eca_bio.configs import InputSpec, PredictConfig, PreprocessConfig
from eca_bio.features.feature_set import DataError, EmbeddingSpec, FeatureSet


def find_model(path: Path) -> Path:
    """The trained-model folder inside a pipeline run dir, a train output folder, or the folder itself."""
    path = Path(path)
    for cand in (path, path / "final", path / "train" / "final"):
        if (cand / "result.json").is_file() and (cand / "preprocess.json").is_file():
            return cand
    raise DataError(f"{path}: no trained model found (expected a run dir with train/final/, or a train/final folder "
                    f"with result.json and preprocess.json; run `eca-bio train` with final_method set)")


def preprocess_config_for(model_dir: Path, cfg: PredictConfig, saved: dict[str, Any],
                          spec: EmbeddingSpec | None = None) -> PreprocessConfig:
    """New inputs (``cfg``'s :class:`~eca_bio.configs.InputSpec` fields, any layout) embedded as the model's preprocess
    folder was: its :class:`EmbeddingSpec` (``saved``: the model's preprocess.json) and its tissue and grid settings."""
    spec = spec or EmbeddingSpec.from_saved(saved, model_dir / "preprocess.json")
    params = saved.get("params") or {}
    encoder = params.get("encoder", {}) if "source" in spec.encoder else spec.encoder  # imported features: files, not a model
    return from_dict(PreprocessConfig, {
        **{f.name: getattr(cfg, f.name) for f in fields(InputSpec)},
        "encoder": encoder, **{k: getattr(spec, k) for k in EmbeddingSpec.FIELDS},
        **{k: params[k] for k in ("tissue", "grid_overlap", "min_tissue") if k in params},
        "batch_size": cfg.batch_size, "num_workers": cfg.num_workers}, f"{model_dir}/preprocess.json")


def training_section_check(model_dir: Path, train_slides: list[str], train_inputs: dict[str, dict[str, str]]):
    """A check for each labeled section, run once it is read and before anything is embedded: an external test
    needs sections the model never saw, so a training section is refused by its id *and* by its content (the
    same image or counts table under another name; ``train_inputs``: slide id -> role -> content hash)."""
    owners = {sha: (sid, role) for sid, inputs in train_inputs.items() for role, sha in inputs.items()}

    def check(slide_id: str, identity: dict[str, str], labeled: bool) -> None:
        if not labeled:  # predicting on any image, a training one included, claims no test metric
            return
        if slide_id in train_slides:
            raise DataError(f"section {slide_id} was a training slide of {model_dir}; an external test needs new sections")
        for role, sha in identity.items():
            if sha in owners:
                sid, other = owners[sha]
                raise DataError(f"section {slide_id}: its {role} has the same content as the {other} of training slide {sid} "
                                f"of {model_dir}; an external test needs new sections")

    return check


def predict_slides(model: Path, cfg: PredictConfig, out_dir: Path, runtime: Runtime | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Tile + embed ``cfg.slides``, predict every tile and write .h5ad + heatmap PNG per slide into ``out_dir``."""
    from eca_bio.features.preprocess import run_preprocess
    from eca_bio.model.checkpoint import load_trained

    if not cfg.slides and not cfg.st_dir:
        raise DataError("predict: no slides or st_dir given")
    for s in cfg.slides:
        if not Path(s).exists():
            raise DataError(f"{s}: slide file does not exist")
    model_dir = find_model(model)
    trained = load_trained(model_dir)
    saved = read_json(model_dir / "preprocess.json", DataError)
    embedding = EmbeddingSpec.from_saved(saved, model_dir / "preprocess.json")
    pcfg = preprocess_config_for(model_dir, cfg, saved, embedding)
    out_dir = Path(out_dir)
    check = training_section_check(model_dir, trained.spec.train_slides, saved.get("train_inputs") or {}) if cfg.st_dir else None
    run_preprocess(pcfg, out_dir / "preprocess", runtime, progress=progress, check_inputs=check)  # tiles sharded over ranks
    return distributed.on_main(_predict_embedded, model_dir, trained, embedding, cfg, out_dir, progress)  # light: rank 0


def _predict_embedded(model_dir: Path, trained: Any, embedding: EmbeddingSpec, cfg: PredictConfig, out_dir: Path,
                      progress: bool) -> dict[str, Any]:
    from eca_bio.inputs.slides import slide_images
    from eca_bio.report.export import plot_gene_maps, prediction_anndata, section_metadata, top_genes, write_h5ad
    from eca_bio.training.targets import make_targets
    from eca_bio.training.spots import SpotSet
    from eca_bio.training.spots import predict_spots

    features = FeatureSet(out_dir / "preprocess")
    if features.spec.key() != embedding.key():
        hint = " (give features_dir with the slides' feature files from that encoder)" if "source" in embedding.encoder else ""
        raise DataError(f"new slides were embedded with {features.spec.describe()}, the model expects {embedding.describe()}{hint}")
    written, tested = {}, {}
    genes = list(trained.spec.genes)
    for entry in features.entries:
        slide = features.load(entry, with_tokens=trained.use_tokens)
        if slide.n_spots == 0:
            raise DataError(f"{entry['image']}: no tissue tiles found; nothing to predict")
        if trained.ridge is not None:
            pred = trained.ridge.predict(slide.features)
        else:
            trained.bank.check_compatible(trained.spec.genes, slide.features.shape[1], trained.embedding)
            index = ExemplarIndex(trained.bank, trained.k)
            ex = index.query(slide.features, None)[0]
            spots = SpotSet(slide.features, slide.tokens if trained.use_tokens else None,
                            np.zeros((slide.n_spots, len(trained.spec.genes)), np.float32), ex,
                            np.full(slide.n_spots, slide.slide_id), [], slide.centres)
            pred = predict_spots(trained.model, spots, trained.bank)
        truth = None
        var, diameter = section_metadata(out_dir / "preprocess" / entry["h5ad"] if entry.get("h5ad") else None)
        eca = {"method": trained.method, "target_transform": trained.spec.transform, "model": str(model_dir.resolve()),
               "train_slides": trained.spec.train_slides, "slide": slide.image, "embedding": embedding.key()}
        if slide.counts is not None:  # a labeled section (checked against the training slides before embedding)
            truth, missing = make_targets(slide, trained.spec)
            if len(missing) == len(genes):
                raise DataError(f"section {slide.slide_id}: none of the model's {len(genes)} genes is measured in "
                                f"{entry['h5ad']} (the model's: {genes[:3]} ...; a panel or species of its own?)")
            names = list(slide.counts.obs_names)
            tested[slide.slide_id] = external_scores(pred, truth, genes, missing)
            eca["metrics"] = {m: tested[slide.slide_id][m] for m in ("pcc_f", "pcc_s", "pcc_m", "mse", "mae")}
        else:
            names = [f"{x}_{y}" for x, y in slide.coords]
        images, scales = slide_images(slide.image, slide.mpp, max_megapixels=cfg.max_image_megapixels) \
            if cfg.export_images else (None, None)
        adata = prediction_anndata(pred, genes, names, slide.centres, slide.slide_id, truth=truth, images=images,
                                   scalefactors=scales, spot_diameter_px=diameter or slide.patch_size_px, eca=eca, var=var,
                                   spec=trained.spec.to_dict())
        path = write_h5ad(adata, out_dir / f"{slide.slide_id}.h5ad")
        kind = "predicted | measured" if truth is not None else "predicted"
        png = plot_gene_maps(adata, top_genes(adata, cfg.genes_to_plot), out_dir / f"{slide.slide_id}_genes.png",
                             title=f"{slide.slide_id}: {kind} ({trained.method}, target {trained.spec.transform})")
        written[slide.slide_id] = {"h5ad": str(path), "png": str(png), "tiles": slide.n_spots}
        if progress:
            print(f"{slide.slide_id}: {slide.n_spots} tiles -> {path}")
    write_json_atomic(out_dir / "predictions.json", {"model": str(model_dir), "slides": written})
    if tested:
        write_external_report(tested, trained, model_dir, out_dir)
        written = {sid: w | ({"pcc_m": tested[sid]["pcc_m"]} if sid in tested else {}) for sid, w in written.items()}
    return {"slides": written, "report": str(out_dir / "external_test.md") if tested else None}


def external_scores(pred: np.ndarray, truth: np.ndarray, genes: list[str], missing: list[str]) -> dict[str, Any]:
    """PCC@F/S/M, MSE, MAE of one labeled section over the genes it measures (absent genes are listed, not scored)."""
    from eca_core.metrics import regression_report

    absent = set(missing)
    keep = [j for j, g in enumerate(genes) if g not in absent]
    rep = regression_report(pred[:, keep], truth[:, keep], [genes[j] for j in keep])
    return rep | {"missing_genes": list(missing), "pred": pred[:, keep], "truth": truth[:, keep], "genes": [genes[j] for j in keep]}


def write_external_report(tested: dict[str, dict[str, Any]], trained: Any, model_dir: Path, out_dir: Path) -> None:
    """``external_test.md`` / ``.json`` (per section and pooled) and ``external_per_gene.csv``."""
    import csv
    import io

    from eca_core.metrics import regression_report
    from eca_core.io import write_text_atomic

    common = sorted(set.intersection(*(set(t["genes"]) for t in tested.values())))
    pooled = regression_report(
        np.concatenate([t["pred"][:, [t["genes"].index(g) for g in common]] for t in tested.values()]),
        np.concatenate([t["truth"][:, [t["genes"].index(g) for g in common]] for t in tested.values()]), common)
    rows = [(sid, t) for sid, t in tested.items()] + [("pooled", pooled)]
    lines = [f"# External test of `{model_dir}`", "",
             f"Model: {trained.method}, target transform `{trained.spec.transform}`, trained on {trained.spec.train_slides}; "
             f"{len(trained.spec.genes)} genes. Tested on labeled sections never seen in training; truth and predictions are "
             f"min-max scaled with the training statistics. PCC@F/S/M: 25th percentile / median / mean over genes with a "
             f"defined PCC (genes constant on a section are not scored).", "",
             "| section | spots | genes scored | PCC@F | PCC@S | PCC@M | MSE | MAE |", "|---|---|---|---|---|---|---|---|"]
    for sid, t in rows:
        lines.append(f"| {sid} | {t['n_samples']} | {t['n_outputs'] - t['n_constant']} | {t['pcc_f']:.4f} | {t['pcc_s']:.4f} | "
                     f"{t['pcc_m']:.4f} | {t['mse']:.4f} | {t['mae']:.4f} |")
    absent = {sid: t["missing_genes"] for sid, t in tested.items() if t["missing_genes"]}
    if absent:
        lines += ["", "Genes of the model absent from a section (not scored there): "
                  + "; ".join(f"{sid}: {len(g)}" for sid, g in absent.items())]
    write_text_atomic(out_dir / "external_test.md", "\n".join(lines) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["section", "gene", "pcc"])
    for sid, t in tested.items():
        for gene, r in t["per_output"].items():
            w.writerow([sid, gene, "" if r is None else f"{r:.6f}"])
    write_text_atomic(out_dir / "external_per_gene.csv", buf.getvalue())
    keep = ("pcc_f", "pcc_s", "pcc_m", "mse", "mae", "n_samples", "n_outputs", "n_constant", "missing_genes")
    write_json_atomic(out_dir / "external_test.json", {"model": str(model_dir), "method": trained.method,
                                                      "sections": {sid: {k: t[k] for k in keep} for sid, t in tested.items()},
                                                      "pooled": {k: pooled[k] for k in keep if k in pooled}})


def run_stage(ctx: StageContext) -> dict[str, Any]:
    if not ctx.config.slides and not ctx.config.st_dir:
        return {"slides": {}, "note": "no slides to predict"}
    return predict_slides(ctx.stage_dir("train"), ctx.config, ctx.out_dir, ctx.runtime)


def stage_inputs(ctx: StageContext) -> list[Path]:
    cfg = ctx.config
    return [Path(s) for s in cfg.slides] + [Path(p) for p in (cfg.features_dir, cfg.st_dir) if p]


def report(result: dict[str, Any], args: Any) -> None:
    for sid, r in result.get("slides", {}).items():
        score = f", PCC@M {r['pcc_m']:.4f} against its measured expression" if "pcc_m" in r else ""
        print(f"{sid}: {r['tiles']} tiles{score}\n  {r['h5ad']}\n  {r['png']}")
    if result.get("report"):
        print(f"external test report: {result['report']}")
