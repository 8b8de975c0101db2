"""``eca-bio preprocess``: slides (+ spatial transcriptomics) -> patches -> frozen-encoder embeddings on disk.

Output folder (the contract with train/evaluate/predict)::

    manifest.json               encoder, feature_dim, params, one entry per slide
    slides/<slide_id>.h5        coords (N,2) int64 level-0 top-left, features (N,D) f16, tokens (N,T,D) f16,
                                barcodes (N,) for ST slides; attrs mpp, patch_size_px, patch_size_um, encoder,
                                encoder_config, feature_dim, slide, slide_id, params_hash
    slides/<slide_id>.h5ad      ST slides: raw counts, obs_names = barcodes in h5 row order, obsm['spatial']
    slides/<slide_id>.thumb.png thumbnail with the patches drawn

Notes on the contract (brief/BIO_CONTRACT.md): implemented as written, plus extra keys a reader may ignore:
manifest ``num_tokens``/``format_version``, per-slide ``mpp_source``, ``patch_size_px``, ``dimensions``, ``n_genes``
and ``excluded`` (ST: lists of spot ids by reason: not_selected / no_counts / zero_counts / not_in_tissue /
outside_image); h5 attrs ``mpp_source``, ``patch_px``, ``target_mpp``, ``patch_level``, ``token_grid`` (0 = none),
``level0_width/height``, ``has_expression``, ``format_version``; ``coords.attrs`` patch_size/patch_level (CLAM).
``barcodes`` are variable-length UTF-8 strings (h5py returns bytes; use ``.asstr()[()]`` or ``.decode()``).
For spot patches the spot centre is ``coords + patch_size_px / 2`` (within half a pixel).

Microns per pixel: slide metadata first; for ST sections without it, the array geometry (legacy ST: 200 um
spot spacing over the fitted pixel spacing, ~0.688 um/px for her2st; Visium: 55 um spot diameter over
``spot_diameter_fullres``); for WSIs without it, ``mpp`` (``--mpp``), else an error naming the file.

Every input is read and checked before anything is written, so bad input fails with nothing on disk.
Each slide's files are written atomically; a slide whose HDF5 exists with the same ``params_hash`` is
skipped, so a re-run after a crash only embeds what is left. ``manifest.json`` is removed when work starts
and rewritten at the end, so it exists only when every slide is complete.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from eca_core.config import from_dict, to_dict
from eca_core.io import atomic_path, write_json_atomic
from eca_core.pipeline import Stage, StageContext, add_runtime_arguments, runtime_options
from eca_bio.encoders import EncoderConfig
from eca_bio.tissue import TissueConfig

FORMAT_VERSION = 1
_PROCESS_START = time.time()


class PreprocessError(ValueError):
    """The preprocess configuration or its inputs cannot be used."""


@dataclass
class PreprocessConfig:
    """Parameters of the preprocess stage (YAML ``preprocess:`` params; one source of truth for defaults)."""

    st_dir: str | None = None                 # legacy-ST / Visium section folder, or a folder of them
    st_format: Literal["auto", "legacy_st", "visium"] = "auto"
    sections: list[str] | None = None         # subset of section ids in st_dir (default: all)
    images: dict[str, str] = field(default_factory=dict)  # section id -> full-res image (default: found in its folder)
    slides: list[str] = field(default_factory=list)  # WSIs without ST: tiled over detected tissue
    mpp: float | None = None                  # microns per pixel when the slide metadata has none
    patch_um: float = 112.0                   # patch side in microns (224 px at 0.5 um/px)
    patch_px: int = 224                       # encoder input side in pixels
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    token_grid: int | None = None             # pool patch tokens to k x k (None: keep all tokens)
    store_tokens: bool = True                 # write the 'tokens' dataset
    batch_size: int = 32
    num_workers: int = 2                      # DataLoader workers that read and cut patches
    precision: str = "32-true"                # Lightning precision, e.g. "bf16-mixed" on GPUs
    tissue: TissueConfig = field(default_factory=TissueConfig)
    grid_overlap: float = 0.0                 # WSI grid: fraction of overlap between neighbouring patches
    min_tissue: float = 0.25                  # WSI grid: minimum tissue fraction of a kept patch
    max_outside_fraction: float = 0.1         # ST: more spots outside the image than this is an error


@dataclass
class _Plan:
    slide_id: str
    reader: Any
    coords: np.ndarray
    size_px: int
    thumbnail: Any
    mask: np.ndarray | None
    adata: Any = None
    mpp_source: str = ""
    params_hash: str = ""


def config_from_params(params: dict[str, Any] | None, where: str = "preprocess") -> PreprocessConfig:
    """Typed config from a mapping (pipeline YAML params); unknown keys are errors."""
    return from_dict(PreprocessConfig, params or {}, where=where)


def run_preprocess(cfg: PreprocessConfig, out_dir: str | Path, options: dict | None = None, progress: bool = True) -> dict:
    """Tile, embed and store every slide of ``cfg`` under ``out_dir``; returns the manifest (also written)."""
    from eca_bio.embed import SlideJob, embed_slides

    out_dir = Path(out_dir)
    options = dict(options or {})
    _validate(cfg)
    log = print if progress else (lambda *a, **k: None)
    plans = _plan(cfg, log)

    slides_dir = out_dir / "slides"
    todo: list[_Plan] = []
    for p in plans:
        if _is_current(slides_dir / f"{p.slide_id}.h5", p.params_hash) and _extras_present(slides_dir, p):
            log(f"{p.slide_id}: up to date, skipped")
            continue
        todo.append(p)

    encoder_info: dict[str, int] | None = None
    if todo:
        from eca_bio.encoders import build_encoder
        from eca_bio.tiling import draw_patches

        encoder, norm, encoder_info = build_encoder(cfg.encoder, cfg.patch_px, cfg.token_grid)
        (out_dir / "manifest.json").unlink(missing_ok=True)  # a manifest exists only over complete outputs
        _remove_stale_temp_files(slides_dir)
        jobs = []
        for p in todo:
            if p.adata is not None:
                _write_h5ad(p, slides_dir / f"{p.slide_id}.h5ad")
            draw_patches(p.thumbnail, p.reader.dimensions, p.coords, p.size_px, slides_dir / f"{p.slide_id}.thumb.png", p.mask)
            attrs = _h5_attrs(cfg, p)
            job = SlideJob(p.slide_id, p.reader, p.coords, p.size_px, slides_dir / f"{p.slide_id}.h5", attrs,
                           list(p.adata.obs_names) if p.adata is not None else None)
            if len(p.coords) == 0:
                _write_empty_h5(job, encoder_info, cfg.store_tokens)
            else:
                jobs.append(job)
        start = time.time()
        n = sum(len(j.coords) for j in jobs)
        if jobs:
            embed_slides(jobs, encoder, norm, encoder_info["feature_dim"], encoder_info["num_tokens"], cfg.patch_px,
                         batch_size=cfg.batch_size,
                         num_workers=cfg.num_workers if options.get("num_workers") is None else int(options["num_workers"]),
                         store_tokens=cfg.store_tokens, options=options, progress=progress, precision=cfg.precision)
        if n:
            log(f"embedded {n} patches of {len(jobs)} slide(s) in {time.time() - start:.1f}s")

    missing = [p.slide_id for p in plans if not _is_current(slides_dir / f"{p.slide_id}.h5", p.params_hash)]
    if missing:  # another rank still working on its slides: the last rank to finish writes the manifest
        return {"pending": missing}
    manifest = _manifest(cfg, out_dir, plans, encoder_info)
    write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest


# ----------------------------------------------------------------------------------------- planning


def _validate(cfg: PreprocessConfig) -> None:
    if cfg.st_dir is None and not cfg.slides:
        raise PreprocessError("nothing to do: give st_dir (ST sections) and/or slides (WSIs)")
    if cfg.patch_um <= 0 or cfg.patch_px <= 0 or cfg.batch_size <= 0:
        raise PreprocessError(f"patch_um ({cfg.patch_um}), patch_px ({cfg.patch_px}), batch_size ({cfg.batch_size}) must be positive")
    if cfg.token_grid is not None and cfg.token_grid <= 0:
        raise PreprocessError(f"token_grid must be positive, got {cfg.token_grid}")
    if not 0 <= cfg.grid_overlap < 1:
        raise PreprocessError(f"grid_overlap must be in [0, 1), got {cfg.grid_overlap}")
    if cfg.encoder.weights is not None and not Path(cfg.encoder.weights).is_file():
        raise PreprocessError(f"{cfg.encoder.weights}: encoder weights file not found")


def _plan(cfg: PreprocessConfig, log) -> list[_Plan]:
    """Open and check every input; no file is written here."""
    from eca_bio.slides import open_slide, slide_id_from_path
    from eca_bio.st import exclude_outside_image, find_sections, read_section
    from eca_bio.tiling import grid_patches, patch_size_px, spot_patches
    from eca_bio.tissue import detect_tissue

    plans: list[_Plan] = []
    if cfg.st_dir is not None:
        sections = find_sections(cfg.st_dir, cfg.st_format, cfg.sections)
        unknown = sorted(set(cfg.images) - {s.section_id for s in sections})
        if unknown:
            raise PreprocessError(f"images: no section(s) {unknown} in {cfg.st_dir}")
        for section in sections:
            image = cfg.images.get(section.section_id)
            if image is not None and not Path(image).is_file():
                raise PreprocessError(f"{image}: image of section {section.section_id} not found")
            adata = read_section(section, image=image)
            st = adata.uns["st"]
            reader = open_slide(st["image"], mpp=st["array_mpp"])
            source = "slide metadata" if reader.metadata_mpp is not None else st["array_mpp_source"]
            exclude_outside_image(adata, *reader.dimensions, max_outside_fraction=cfg.max_outside_fraction)
            thumb = reader.thumbnail(cfg.tissue.thumbnail_px)
            size = patch_size_px(cfg.patch_um, reader.mpp)
            coords = spot_patches(adata.obsm["spatial"], size)
            excluded = {k: len(v) for k, v in st["excluded"].items() if len(v)}
            log(f"{section.section_id}: {adata.n_obs} spots x {adata.n_vars} genes"
                + (f" (excluded {excluded})" if excluded else "")
                + f"; {reader.mpp:.4f} um/px ({source}); patch {size} px -> {cfg.patch_px} px")
            plans.append(_Plan(section.section_id, reader, coords, size, thumb, None, adata, source))
    for path in cfg.slides:
        reader = open_slide(path, mpp=cfg.mpp)
        source = "slide metadata" if reader.metadata_mpp is not None else "--mpp"
        thumb = reader.thumbnail(cfg.tissue.thumbnail_px)
        mask = detect_tissue(thumb, reader.mpp * reader.dimensions[0] / thumb.size[0], cfg.tissue)
        size = patch_size_px(cfg.patch_um, reader.mpp)
        stride = max(1, int(round(size * (1 - cfg.grid_overlap))))
        coords = grid_patches(mask, reader.dimensions, size, stride, cfg.min_tissue)
        log(f"{reader.slide_id}: {len(coords)} tissue patches of {size} px ({reader.mpp:.4f} um/px, {source}) -> {cfg.patch_px} px")
        plans.append(_Plan(slide_id_from_path(path), reader, coords, size, thumb, mask, None, source))
    ids = [p.slide_id for p in plans]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise PreprocessError(f"slide id(s) {dupes} occur more than once; slide ids are file/section names and must be unique")
    for p in plans:
        p.params_hash = _slide_hash(cfg, p)
    return plans


def _slide_hash(cfg: PreprocessConfig, p: _Plan) -> str:
    """Hash of everything that determines a slide's HDF5 content (not batch size / workers / devices)."""
    h = hashlib.sha256()
    payload = {
        "format": FORMAT_VERSION,
        "encoder": to_dict(cfg.encoder),
        "patch_um": cfg.patch_um,
        "patch_px": cfg.patch_px,
        "token_grid": cfg.token_grid,
        "store_tokens": cfg.store_tokens,
        "precision": cfg.precision,
        "slide": str(p.reader.path),
        "slide_size": p.reader.path.stat().st_size if p.reader.path.is_file() else None,
        "mpp": p.reader.mpp,
        "size_px": p.size_px,
    }
    h.update(json.dumps(payload, sort_keys=True).encode())
    h.update(np.ascontiguousarray(p.coords, dtype=np.int64).tobytes())
    if p.adata is not None:
        h.update("\n".join(p.adata.obs_names).encode())
    return h.hexdigest()


def _remove_stale_temp_files(slides_dir: Path) -> None:
    """Temp files left by a run that was killed outright (SIGKILL, power loss); never ones of a live run."""
    if slides_dir.is_dir():
        for tmp in slides_dir.glob(".*.tmp-*"):
            if tmp.is_file() and tmp.stat().st_mtime < _PROCESS_START:
                tmp.unlink(missing_ok=True)


def _is_current(path: Path, params_hash: str) -> bool:
    if not path.exists():
        return False
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("params_hash") == params_hash and "features" in f
    except OSError:
        return False


def _extras_present(slides_dir: Path, p: _Plan) -> bool:
    ok = (slides_dir / f"{p.slide_id}.thumb.png").exists()
    return ok and (p.adata is None or (slides_dir / f"{p.slide_id}.h5ad").exists())


# ----------------------------------------------------------------------------------------- writing


def _h5_attrs(cfg: PreprocessConfig, p: _Plan) -> dict[str, Any]:
    return {
        "mpp": float(p.reader.mpp),
        "mpp_source": p.mpp_source,
        "patch_size_px": int(p.size_px),
        "patch_size_um": float(cfg.patch_um),
        "patch_px": int(cfg.patch_px),
        "target_mpp": float(cfg.patch_um) / cfg.patch_px,
        "patch_level": 0,
        "token_grid": 0 if cfg.token_grid is None else int(cfg.token_grid),
        "encoder": cfg.encoder.name,
        "encoder_config": to_dict(cfg.encoder),
        "slide": str(p.reader.path),
        "slide_id": p.slide_id,
        "level0_width": int(p.reader.dimensions[0]),
        "level0_height": int(p.reader.dimensions[1]),
        "has_expression": p.adata is not None,
        "params_hash": p.params_hash,
        "format_version": FORMAT_VERSION,
    }


def _write_h5ad(p: _Plan, path: Path) -> None:
    adata = p.adata.copy()
    st = dict(adata.uns.pop("st"))
    excluded = st.pop("excluded")
    adata.uns["slide"] = {"slide_id": p.slide_id, "image": str(p.reader.path), "mpp": float(p.reader.mpp),
                          "mpp_source": p.mpp_source, "patch_size_px": int(p.size_px),
                          "dimensions": [int(v) for v in p.reader.dimensions], **st}
    adata.uns["excluded"] = {k: np.asarray(v, dtype=str) for k, v in excluded.items()}
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def _write_empty_h5(job, info: dict[str, int], store_tokens: bool) -> None:
    import h5py

    with atomic_path(job.out_path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("coords", shape=(0, 2), dtype=np.int64)
            f.create_dataset("features", shape=(0, info["feature_dim"]), dtype=np.float16)
            if store_tokens:
                f.create_dataset("tokens", shape=(0, info["num_tokens"], info["feature_dim"]), dtype=np.float16)
            for key, value in job.attrs.items():
                f.attrs[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
            f.attrs["feature_dim"] = info["feature_dim"]


def _manifest(cfg: PreprocessConfig, out_dir: Path, plans: list[_Plan], encoder_info: dict | None) -> dict:
    import h5py

    entries = []
    feature_dim = encoder_info["feature_dim"] if encoder_info else None
    num_tokens = encoder_info["num_tokens"] if encoder_info else None
    for p in plans:
        h5 = out_dir / "slides" / f"{p.slide_id}.h5"
        with h5py.File(h5, "r") as f:
            n = int(f["features"].shape[0])
            feature_dim = int(f.attrs["feature_dim"])
            num_tokens = int(f["tokens"].shape[1]) if "tokens" in f else None
        entry = {
            "slide_id": p.slide_id,
            "image": str(p.reader.path),
            "h5": f"slides/{p.slide_id}.h5",
            "h5ad": f"slides/{p.slide_id}.h5ad" if p.adata is not None else None,
            "thumbnail": f"slides/{p.slide_id}.thumb.png",
            "n_patches": n,
            "mpp": float(p.reader.mpp),
            "mpp_source": p.mpp_source,
            "patch_size_px": int(p.size_px),
            "dimensions": [int(v) for v in p.reader.dimensions],
            "has_expression": p.adata is not None,
        }
        if p.adata is not None:
            entry["n_genes"] = int(p.adata.n_vars)
            entry["excluded"] = {k: list(v) for k, v in p.adata.uns["st"]["excluded"].items()}
        entries.append(entry)
    return {
        "format_version": FORMAT_VERSION,
        "encoder": to_dict(cfg.encoder),
        "feature_dim": feature_dim,
        "num_tokens": num_tokens,
        "params": to_dict(cfg),
        "slides": entries,
    }


# ----------------------------------------------------------------------------------------- stage + CLI


def _stage_inputs(ctx: StageContext) -> list[Path]:
    cfg = config_from_params(ctx.params, f"{ctx.pipeline}:{ctx.stage}")
    paths = [Path(cfg.st_dir)] if cfg.st_dir else []
    paths += [Path(p) for p in cfg.images.values()]
    paths += [Path(s) for s in cfg.slides]
    if cfg.encoder.weights:
        paths.append(Path(cfg.encoder.weights))
    return paths


def _run_stage(ctx: StageContext) -> dict[str, Any]:
    cfg = config_from_params(ctx.params, f"{ctx.pipeline}:{ctx.stage}")
    manifest = run_preprocess(cfg, ctx.out_dir, ctx.options)
    if "pending" in manifest:
        return {"pending": manifest["pending"]}
    return {"slides": len(manifest["slides"]), "patches": sum(s["n_patches"] for s in manifest["slides"]),
            "feature_dim": manifest["feature_dim"]}


STAGE = Stage("preprocess", run=_run_stage, inputs=_stage_inputs,
              description="tile slides (+ ST spots), embed patches with a frozen timm encoder, write per-slide HDF5")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``eca-bio preprocess`` (each overrides the same key of --config)."""
    parser.add_argument("--out", type=Path, required=True, help="output folder (manifest.json, slides/)")
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="YAML with PreprocessConfig keys (a pipeline YAML's stages.preprocess, or a flat mapping)")
    parser.add_argument("--st-dir", default=argparse.SUPPRESS, help="legacy-ST / Visium section folder, or a folder of them")
    parser.add_argument("--st-format", choices=["auto", "legacy_st", "visium"], default=argparse.SUPPRESS)
    parser.add_argument("--sections", nargs="+", default=argparse.SUPPRESS, help="section ids to use (default: all in --st-dir)")
    parser.add_argument("--image", dest="images", action="append", default=argparse.SUPPRESS, metavar="SECTION=PATH",
                        help="full-resolution image of an ST section (default: the image found in its folder); repeatable")
    parser.add_argument("--slides", nargs="+", default=argparse.SUPPRESS, help="whole-slide images without ST (tiled over tissue)")
    parser.add_argument("--mpp", type=float, default=argparse.SUPPRESS, help="microns per pixel for slides whose metadata has none")
    parser.add_argument("--patch-um", type=float, default=argparse.SUPPRESS, help="patch side in microns (default 112)")
    parser.add_argument("--patch-px", type=int, default=argparse.SUPPRESS, help="encoder input side in pixels (default 224)")
    parser.add_argument("--encoder", default=argparse.SUPPRESS, help="timm model name or hf-hub:org/repo (default vit_small_patch16_224)")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                        help="load the encoder's pretrained weights (default: yes)")
    parser.add_argument("--weights", default=argparse.SUPPRESS, help="local .safetensors/.pth encoder weights")
    parser.add_argument("--encoder-kwargs", default=argparse.SUPPRESS,
                        help="timm.create_model kwargs as YAML/JSON, e.g. '{img_size: 64, depth: 2}'")
    parser.add_argument("--token-grid", type=int, default=argparse.SUPPRESS, help="pool patch tokens to a k x k grid")
    parser.add_argument("--no-tokens", action="store_true", default=argparse.SUPPRESS, help="do not store patch tokens")
    parser.add_argument("--batch-size", type=int, default=argparse.SUPPRESS)
    parser.add_argument("--no-progress", action="store_true", default=argparse.SUPPRESS, help="no progress bars / log lines")
    add_runtime_arguments(parser)


_ARG_NAMES = ("config", "images", "st_dir", "st_format", "sections", "slides", "mpp", "patch_um", "patch_px", "encoder",
              "pretrained", "weights", "encoder_kwargs", "token_grid", "no_tokens", "batch_size", "no_progress")


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    """PreprocessConfig from --config plus command-line overrides."""
    import yaml

    params: dict[str, Any] = {}
    args = argparse.Namespace(**{**{k: None for k in _ARG_NAMES}, **vars(args)})
    if args.config is not None:
        if not args.config.is_file():
            raise PreprocessError(f"{args.config}: no such config file")
        data = yaml.safe_load(args.config.read_text()) or {}
        if isinstance(data, dict) and "stages" in data:
            data = (data.get("stages") or {}).get("preprocess") or {}
            from eca_core.pipeline import expand_env

            data = expand_env(data)
        if not isinstance(data, dict):
            raise PreprocessError(f"{args.config}: expected a mapping of preprocess parameters")
        params.update(data)
    simple = {"st_dir": args.st_dir, "st_format": args.st_format, "sections": args.sections, "slides": args.slides,
              "mpp": args.mpp, "patch_um": args.patch_um, "patch_px": args.patch_px, "token_grid": args.token_grid,
              "batch_size": args.batch_size}
    params.update({k: v for k, v in simple.items() if v is not None})
    if args.images:
        pairs = [item.split("=", 1) for item in args.images]
        if any(len(p) != 2 or not p[0] for p in pairs):
            raise PreprocessError(f"--image: expected SECTION=PATH, got {args.images}")
        params["images"] = {**params.get("images", {}), **dict(pairs)}
    if args.no_tokens:
        params["store_tokens"] = False
    if args.num_workers is not None:
        params["num_workers"] = args.num_workers
    enc = dict(params.get("encoder") or {})
    if args.encoder is not None:
        enc["name"] = args.encoder
    if args.pretrained is not None:
        enc["pretrained"] = args.pretrained
    if args.weights is not None:
        enc["weights"] = args.weights
    if args.encoder_kwargs is not None:
        kw = yaml.safe_load(args.encoder_kwargs)
        if not isinstance(kw, dict):
            raise PreprocessError(f"--encoder-kwargs: expected a mapping, got {args.encoder_kwargs!r}")
        enc["kwargs"] = kw
    if enc:
        params["encoder"] = enc
    return config_from_params(params, str(args.config) if args.config else "eca-bio preprocess")


def main(args: argparse.Namespace) -> int:
    """Run ``eca-bio preprocess``; input errors are printed as one line naming the file."""
    import sys

    from eca_bio.encoders import EncoderError
    from eca_bio.slides import SlideError
    from eca_bio.st import STError

    try:
        cfg = config_from_args(args)
        manifest = run_preprocess(cfg, args.out, runtime_options(args), progress=not getattr(args, "no_progress", False))
    except (PreprocessError, SlideError, STError, EncoderError, ValueError) as exc:
        print(f"eca-bio preprocess: error: {exc}", file=sys.stderr)
        return 2
    if "slides" in manifest:
        n = sum(s["n_patches"] for s in manifest["slides"])
        print(f"{len(manifest['slides'])} slide(s), {n} patches, feature_dim {manifest['feature_dim']}: {Path(args.out).resolve() / 'manifest.json'}")
    return 0
