"""``eca-bio preprocess``: slides (+ spatial transcriptomics) -> patches -> frozen-encoder embeddings on disk.

Output folder (the contract with train/evaluate/predict; ``eca_bio.features.feature_set`` owns it)::

    manifest.json               embedding (what a model must match) + its key, encoder, feature_dim, params, one entry per slide
    slides/<slide_id>.h5        coords (N,2) int64 level-0 top-left (TRIDENT's attributes), features (N,D) f32,
                                tokens (N,T,D) f16, barcodes (N,) for ST slides; attrs mpp, patch_size_px,
                                patch_size_um, encoder, encoder_config, feature_dim, slide, slide_id, params_hash
                                (the schema is eca_bio.features.slide_h5's)
    slides/<slide_id>.h5ad      ST slides: raw counts, obs_names = barcodes in h5 row order, obsm['spatial']
    slides/<slide_id>.thumb.png thumbnail with the patches drawn

Notes on the contract (brief/BIO_CONTRACT.md): implemented as written, plus extra keys a reader may ignore:
manifest ``num_tokens``/``format_version``, per-slide ``mpp_source``, ``patch_size_px``, ``dimensions``, ``n_genes``
and ``excluded`` (ST: lists of spot ids by reason: not_selected / no_counts / zero_counts / not_in_tissue /
outside_image); h5 attrs ``mpp_source``, ``patch_px``, ``target_mpp``, ``patch_level``, ``token_grid`` (0 = none),
``level0_width/height``, ``has_expression``, ``format_version``; ``coords.attrs`` as TRIDENT writes them.
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

import hashlib
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from eca_core.runner import distributed
from eca_core.runner.config import from_dict, to_dict
from eca_core.errors import ConfigError, InputError
from eca_core.io import write_json_atomic
from eca_core.runner.pipeline import StageContext
from eca_core.runner.resume import RunLock, clean_temp_files, content_hash, item_is_current, write_item_marker
from eca_core.runner.runtime import Runtime
from eca_bio.features import slide_h5, window_store
from eca_bio.features.window_store import write_windows
from eca_bio.features.feature_set import (FORMAT_VERSION, ST_FILES, EmbeddingSpec, build_manifest, coords_attrs, h5_attrs,
                                  slide_identity, write_h5ad, write_rows_h5)
from eca_bio.features.precomputed import check_same_image, find_features_file, join_features_to_spots, precomputed_encoder
from eca_bio.configs import PreprocessConfig

MIN_PATCH_PX = 8  # smaller level-0 patches mean the microns per pixel are wrong


class PreprocessError(ConfigError):
    """The preprocess configuration or its inputs cannot be used."""


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
    features: np.ndarray | None = None  # precomputed (features_dir) rows, in coords order
    features_file: Path | None = None
    features_encoder: str = ""  # the encoder the feature file names ('' if none)
    thumbnail_hash: str = ""  # dHash of the slide's overview (the same-image check of eca_bio.training.folds)
    window_px: int | None = None  # the spot windows this slide stores (ST slides with window_px set: eca_bio.features.window_store)


def config_from_params(params: dict[str, Any] | None, where: str = "preprocess") -> PreprocessConfig:
    """Typed config from a mapping (pipeline YAML params); unknown keys are errors."""
    return from_dict(PreprocessConfig, params or {}, where=where)


def run_preprocess(cfg: PreprocessConfig, out_dir: str | Path, runtime: Runtime | None = None, progress: bool = True,
                   check_inputs: Callable[[str, dict[str, str], bool], None] | None = None) -> dict:
    """Tile, embed and store every slide of ``cfg`` under ``out_dir``; returns the manifest (also written).

    Holds the lock on ``out_dir`` and first removes temp files an earlier, killed run left there.
    ``check_inputs(slide_id, input_identity, labeled)`` sees every slide once it is read, before anything is embedded.
    """
    with RunLock(out_dir):
        if distributed.is_main():
            clean_temp_files(out_dir)
        distributed.barrier()
        return _run_preprocess(cfg, Path(out_dir), runtime, progress and distributed.is_main(), check_inputs)


def _run_preprocess(cfg: PreprocessConfig, out_dir: Path, runtime: Runtime | None, progress: bool,
                    check_inputs: Callable[[str, dict[str, str], bool], None] | None = None) -> dict:
    from eca_bio.features.embed import SlideJob, embed_slides, tiles_per_rank

    runtime = Runtime.of(runtime)
    _validate(cfg)
    progress = progress and cfg.progress
    log = print if progress else (lambda *a, **k: None)
    skipped: list[dict[str, str]] = []
    plans = _plan(cfg, log, skipped)
    for p in plans if check_inputs is not None else ():
        check_inputs(p.slide_id, slide_identity(p), p.adata is not None)
    spec = EmbeddingSpec.of(cfg, precomputed_encoder(cfg.features_dir, cfg.features_encoder, plans) if cfg.features_dir else None)

    slides_dir = out_dir / "slides"
    main = distributed.is_main()
    todo_ids = distributed.broadcast([p.slide_id for p in plans if not _slide_done(slides_dir, p)] if main else None)
    todo = [p for p in plans if p.slide_id in todo_ids]
    for p in plans:
        if p.slide_id not in todo_ids:
            log(f"{p.slide_id}: up to date, skipped")

    encoder_info: dict[str, int] | None = None
    if todo:
        from eca_bio.features.encoders import build_encoder
        from eca_bio.inputs.tiling import draw_patches

        if cfg.features_dir:  # nothing to embed: the rows come from the feature files
            encoder, norm, encoder_info = None, None, {"feature_dim": int(todo[0].features.shape[1]), "num_tokens": 0}
        else:
            encoder, norm, encoder_info = build_encoder(cfg.encoder, cfg.patch_px, cfg.token_grid)
        if main:
            (out_dir / "manifest.json").unlink(missing_ok=True)  # a manifest exists only over complete outputs
        jobs = []
        for p in todo:
            attrs = h5_attrs(cfg, p, spec)
            job = SlideJob(p.slide_id, p.reader, p.coords, p.size_px, slides_dir / f"{p.slide_id}.h5", attrs,
                           list(p.adata.obs_names) if p.adata is not None else None, coords_attrs(cfg, p))
            if main:
                (slides_dir / f"{p.slide_id}.done.json").unlink(missing_ok=True)  # redone: its old marker no longer holds
                if p.adata is not None:
                    write_h5ad(p, slides_dir / f"{p.slide_id}.h5ad")
                draw_patches(p.thumbnail, p.reader.dimensions, p.coords, p.size_px, slides_dir / f"{p.slide_id}.thumb.png", p.mask)
                if p.window_px:
                    write_windows(slides_dir / f"{p.slide_id}.windows.h5", p.reader, p.coords, p.size_px, p.window_px,
                                  {"slide_id": p.slide_id, "params_hash": p.params_hash}, progress)
                if len(p.coords) == 0 or p.features is not None:
                    write_rows_h5(job, encoder_info, cfg.store_tokens and p.features is None, p.features)
            if len(p.coords) and p.features is None:
                jobs.append(job)
        start = time.time()
        n = sum(len(j.coords) for j in jobs)
        if jobs:
            embed_slides(jobs, encoder, norm, encoder_info["feature_dim"], encoder_info["num_tokens"], cfg.patch_px,
                         batch_size=cfg.batch_size,
                         num_workers=runtime.workers(cfg.num_workers),
                         store_tokens=cfg.store_tokens, runtime=runtime, progress=progress, precision=cfg.precision)
        if n:
            ranks = distributed.world_size()
            log(f"embedded {n} patches of {len(jobs)} slide(s) in {time.time() - start:.1f}s"
                + (f" on {ranks} ranks (tiles per rank: {tiles_per_rank(jobs, cfg.batch_size, ranks)})" if ranks > 1 else ""))

    manifest = None
    if main:
        missing = [p.slide_id for p in plans if not _slide_done(slides_dir, p)]
        if missing:
            raise PreprocessError(f"{out_dir}: slide(s) {missing} were not written; run again to resume")
        manifest = build_manifest(cfg, out_dir, plans, encoder_info, spec)
        if skipped:
            manifest["skipped"] = skipped
        write_json_atomic(out_dir / "manifest.json", manifest)
    distributed.barrier()
    return distributed.broadcast(manifest)


# ----------------------------------------------------------------------------------------- planning


def _validate(cfg: PreprocessConfig) -> None:
    if cfg.st_dir is None and not cfg.slides:
        raise PreprocessError("nothing to do: give st_dir (ST sections) and/or slides (WSIs)")
    if cfg.encoder.weights is not None and not Path(cfg.encoder.weights).is_file():
        raise PreprocessError(f"{cfg.encoder.weights}: encoder weights file not found")
    if cfg.features_dir is not None and not Path(cfg.features_dir).is_dir():
        raise PreprocessError(f"{cfg.features_dir}: features_dir is not a folder (TRIDENT writes features_<encoder>/<slide>.h5)")


def _plan(cfg: PreprocessConfig, log, skipped: list[dict[str, str]]) -> list[_Plan]:
    """Open and check every input; no file is written here. Unreadable slides go to ``skipped`` with ``skip_errors``."""
    from eca_bio.inputs.st import find_sections

    plans: list[_Plan] = []
    if cfg.st_dir is not None:
        sections = find_sections(cfg.st_dir, cfg.st_format, cfg.sections)
        unknown = sorted(set(cfg.images) - {s.section_id for s in sections})
        if unknown:
            raise PreprocessError(f"images: no section(s) {unknown} in {cfg.st_dir}")
        for section in sections:
            with _skippable(cfg, skipped, section.section_id, log):
                plans.append(_plan_section(cfg, section, log))
    for path in cfg.slides:
        with _skippable(cfg, skipped, str(path), log):
            plans.append(_plan_slide(cfg, path, log))
    ids = [p.slide_id for p in plans]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise PreprocessError(f"slide id(s) {dupes} occur more than once; slide ids are file/section names and must be unique")
    if not plans and skipped:
        raise PreprocessError(f"no slide could be read ({len(skipped)} skipped); first: {skipped[0]['error']}")
    from eca_bio.inputs.slides import thumbnail_hash

    for p in plans:
        p.window_px = cfg.window_px if p.adata is not None else None
        p.params_hash = _slide_hash(cfg, p)
        p.thumbnail_hash = thumbnail_hash(p.thumbnail)
    return plans


@contextmanager
def _skippable(cfg: PreprocessConfig, skipped: list[dict[str, str]], name: str, log) -> Iterator[None]:
    """With ``skip_errors``, an input error of one slide is recorded in ``skipped`` and the cohort goes on."""
    try:
        yield
    except InputError as exc:
        if not cfg.skip_errors:
            raise
        skipped.append({"slide": name, "error": str(exc)})
        log(f"{name}: skipped: {exc}")


def _plan_section(cfg: PreprocessConfig, section: Any, log) -> _Plan:
    from eca_bio.inputs.slides import open_slide
    from eca_bio.inputs.st import LAYOUTS, exclude_outside_image, read_section
    from eca_bio.inputs.tiling import spot_patches

    image = cfg.images.get(section.section_id)
    if image is not None and not Path(image).is_file():
        raise PreprocessError(f"{image}: image of section {section.section_id} not found")
    adata = read_section(section, image=image, hd_bin=cfg.visium_hd_bin)
    st = adata.uns["st"]
    if st.get("image_fallback"):
        print(f"{section.section_id}: {st['image_fallback']}", file=sys.stderr)  # always said, progress or not
    reader = open_slide(st["image"], mpp=cfg.mpp, fallback_mpp=st["array_mpp"], allow_unusual_mpp=cfg.allow_unusual_mpp,
                        max_megapixels=cfg.max_image_megapixels)
    if reader.mpp_source == "fallback":  # the section's own rule (spot array, HEST metadata, ...) names itself
        reader.mpp_source = st["array_mpp_source"]
    elif LAYOUTS[section.format].mpp_wins and cfg.mpp is None:
        _section_mpp_wins(reader, st, section.section_id)
    source = reader.mpp_source
    exclude_outside_image(adata, *reader.dimensions, max_outside_fraction=cfg.max_outside_fraction)
    thumb = reader.thumbnail(cfg.tissue.thumbnail_px)
    features = features_file = None
    features_encoder = ""
    if cfg.features_dir is not None:
        features_file = find_features_file(cfg.features_dir, section.section_id, st["image"])
        coords, size, features, features_encoder = join_features_to_spots(features_file, adata, reader.dimensions,
                                                                          cfg.max_outside_fraction, cfg.features_patch_size)
    else:
        size = _patch_px(cfg, reader)
        coords = spot_patches(adata.obsm["spatial"], size)
    excluded = {k: len(v) for k, v in st["excluded"].items() if len(v)}
    log(f"{section.section_id}: {adata.n_obs} spots x {adata.n_vars} genes"
        + (f" (excluded {excluded})" if excluded else "")
        + f"; {reader.mpp:.4f} um/px ({source}); "
        + (f"features from {features_file} (patch {size} px; spots joined by {st['feature_join']['how']})"
           if features_file else f"patch {size} px -> {cfg.patch_px} px"))
    return _Plan(section.section_id, reader, coords, size, thumb, None, adata, source, features=features,
                 features_file=features_file, features_encoder=features_encoder)




def _section_mpp_wins(reader: Any, st: dict[str, Any], section_id: str) -> None:
    """Use the section's own µm/px; say so in one line when the image's metadata disagrees by more than 5%."""
    meta, own = reader.metadata_mpp, float(st["array_mpp"])
    if meta is not None and abs(meta / own - 1) > 0.05:
        print(f"warning: {section_id}: the image {reader.path.name} says {meta:.4g} um/px, {st['array_mpp_source']} says "
              f"{own:.4g} um/px; using {own:.4g} (give mpp to choose)", file=sys.stderr)
    reader.set_mpp(own, st["array_mpp_source"])


def _plan_slide(cfg: PreprocessConfig, path: str, log) -> _Plan:
    from eca_bio.inputs.slides import open_slide, slide_id_from_path
    from eca_bio.inputs.tiling import grid_patches
    from eca_bio.inputs.tissue import detect_tissue

    reader = open_slide(path, mpp=cfg.mpp, allow_unusual_mpp=cfg.allow_unusual_mpp, max_megapixels=cfg.max_image_megapixels)
    source = reader.mpp_source
    thumb = reader.thumbnail(cfg.tissue.thumbnail_px)
    if cfg.features_dir is not None:  # every row of the file: its tiles are the slide's patches
        from eca_bio.features.slide_h5 import read_slide_h5

        features_file = find_features_file(cfg.features_dir, slide_id_from_path(path), path)
        h5 = read_slide_h5(features_file, with_tokens=False)
        check_same_image(h5, reader.dimensions)
        given = cfg.features_patch_size
        size = int(round(h5.patch_size_level0 if given is None or h5.has_patch_size else given))
        log(f"{reader.slide_id}: {len(h5.coords)} tiles of {size} px from {features_file}")
        return _Plan(slide_id_from_path(path), reader, h5.coords, size, thumb, None, None, source,
                     features=h5.features, features_file=features_file, features_encoder=h5.encoder)
    size = _patch_px(cfg, reader)
    mask = detect_tissue(thumb, reader.mpp * reader.dimensions[0] / thumb.size[0], cfg.tissue)
    stride = max(1, int(round(size * (1 - cfg.grid_overlap))))
    coords = grid_patches(mask, reader.dimensions, size, stride, cfg.min_tissue)
    log(f"{reader.slide_id}: {len(coords)} tissue patches of {size} px ({reader.mpp:.4f} um/px, {source}) -> {cfg.patch_px} px")
    return _Plan(slide_id_from_path(path), reader, coords, size, thumb, mask, None, source)


def _patch_px(cfg: PreprocessConfig, reader: Any) -> int:
    """Level-0 patch side; under ``MIN_PATCH_PX`` the microns per pixel are almost surely wrong."""
    from eca_bio.inputs.tiling import patch_size_px

    size = patch_size_px(cfg.patch_um, reader.mpp)
    if size < MIN_PATCH_PX and not cfg.allow_unusual_mpp:
        raise PreprocessError(f"{reader.path}: a {cfg.patch_um:g} um patch is only {size} px at {reader.mpp:g} um/px "
                              f"({reader.mpp_source}); check the microns per pixel, or set allow_unusual_mpp")
    return size


def _input_files(p: _Plan) -> list[Path]:
    """The files a slide's outputs are made from: the image and, for ST sections, the counts and spot tables."""
    files = [Path(p.reader.path)] + ([p.features_file] if p.features_file else [])
    if p.adata is not None:
        st = p.adata.uns["st"]
        files += [Path(st[k]) for k in ST_FILES if st.get(k)]
    return [f for f in files if f.is_file()]


def _slide_hash(cfg: PreprocessConfig, p: _Plan) -> str:
    """Hash of everything that determines a slide's HDF5 content (not batch size / workers / devices)."""
    h = hashlib.sha256()
    payload = {
        "format": FORMAT_VERSION,
        "encoder": to_dict(cfg.encoder),
        "features_encoder": cfg.features_encoder,
        "patch_um": cfg.patch_um,
        "patch_px": cfg.patch_px,
        "token_grid": cfg.token_grid,
        "store_tokens": cfg.store_tokens,
        "precision": cfg.precision,
        "slide": str(p.reader.path),
        "content": {str(f): content_hash(f) for f in _input_files(p)},
        "mpp": p.reader.mpp,
        "size_px": p.size_px,
        **({"window_px": p.window_px} if p.window_px else {}),
    }
    h.update(json.dumps(payload, sort_keys=True).encode())
    h.update(np.ascontiguousarray(p.coords, dtype=np.int64).tobytes())
    if p.adata is not None:
        h.update("\n".join(p.adata.obs_names).encode())
    return h.hexdigest()


def _slide_done(slides_dir: Path, p: _Plan) -> bool:
    """A slide is done when its marker matches its key and its h5 / thumbnail (/ h5ad) are intact.

    A complete h5 with the right ``params_hash`` but no marker (the run was killed after writing it)
    gets its marker now, so finished slides are never embedded twice. A marker that no longer matches
    its outputs (an edited, truncated or replaced file) is never re-blessed: the slide is redone.
    """
    marker = slides_dir / f"{p.slide_id}.done.json"
    if item_is_current(marker, p.params_hash):
        return True
    if marker.exists():
        return False
    files = [f"{p.slide_id}.h5", f"{p.slide_id}.thumb.png"] + ([f"{p.slide_id}.h5ad"] if p.adata is not None else []) \
        + ([f"{p.slide_id}.windows.h5"] if p.window_px else [])
    windows_ok = not p.window_px or window_store.is_complete(slides_dir / files[-1], p.params_hash, len(p.coords))
    if slide_h5.is_complete(slides_dir / files[0], p.params_hash) and windows_ok and all((slides_dir / f).is_file() for f in files):
        write_item_marker(marker, p.params_hash, files)
        return True
    return False


# ----------------------------------------------------------------------------------------- stage + CLI


def stage_inputs(ctx: StageContext) -> list[Path]:
    cfg: PreprocessConfig = ctx.config
    paths = [Path(cfg.st_dir)] if cfg.st_dir else []
    paths += [Path(p) for p in cfg.images.values()]
    paths += [Path(s) for s in cfg.slides]
    if cfg.encoder.weights:
        paths.append(Path(cfg.encoder.weights))
    if cfg.features_dir:
        paths.append(Path(cfg.features_dir))
    return paths


def run_stage(ctx: StageContext) -> dict[str, Any]:
    manifest = run_preprocess(ctx.config, ctx.out_dir, ctx.runtime)
    return {"slides": len(manifest["slides"]), "patches": sum(s["n_patches"] for s in manifest["slides"]),
            "feature_dim": manifest["feature_dim"], "manifest": str(Path(ctx.out_dir) / "manifest.json")}


def report(summary: dict[str, Any], args: Any) -> None:
    if "slides" in summary:
        print(f"{summary['slides']} slide(s), {summary['patches']} patches, feature_dim {summary['feature_dim']}: "
              f"{Path(summary['manifest']).resolve()}")
