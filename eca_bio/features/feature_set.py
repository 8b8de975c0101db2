"""The preprocess folder, owned in one place: what its embeddings must match, how it is read and written.

Layout (the contract between preprocess, train, evaluate, predict and diagnose)::

    manifest.json               embedding (EmbeddingSpec), encoder, feature_dim, params, one entry per slide
    slides/<slide_id>.h5        coords, features, tokens, barcodes (the schema is eca_bio.features.slide_h5's)
    slides/<slide_id>.h5ad      ST slides: raw counts, obs_names = barcodes in h5 row order, obsm['spatial']
    slides/<slide_id>.thumb.png thumbnail with the patches drawn
    slides/<slide_id>.windows.h5 spot windows for end-to-end models, with window_px (eca_bio.features.window_store)

:class:`EmbeddingSpec` is what a model must match (encoder and patch geometry; ``.key()`` is the one identity,
stored in the manifest, the exemplar bank and ``model.pt``); :class:`FeatureSet` opens a folder and reads its
slides as :class:`SlideData`; the writers below are what ``eca-bio preprocess`` writes with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from eca_core.runner.config import to_dict
from eca_core.errors import InputError
from eca_core.io import atomic_path, inside, plain_name, read_json, require_self_contained_h5
from eca_core.runner.resume import content_hash
from eca_bio.features import slide_h5
from eca_bio.configs import PreprocessConfig
from eca_bio.features.slide_h5 import read_slide_h5

FORMAT_VERSION = 2  # 2: float32 features, TRIDENT coords attributes
ST_FILES = ("counts", "selection", "positions", "scalefactors", "metadata")  # path-valued keys of uns['st'] besides the image


class DataError(InputError):
    """An input file is missing, inconsistent or malformed; the message names the file."""


@dataclass
class SlideData:
    """One preprocessed slide: patch embeddings and, for ST slides, raw counts in the same row order."""

    slide_id: str
    features: np.ndarray  # (N, D) float32, CLS / pooled embedding per spot or tile
    tokens: np.ndarray | None  # (N, T, D) float32 patch tokens
    coords: np.ndarray  # (N, 2) level-0 px, patch top-left corner
    centres: np.ndarray  # (N, 2) full-res px (x, y) of the spot / tile centre
    h5: Path
    image: str
    thumbnail: Path | None
    mpp: float
    patch_size_px: float
    counts: ad.AnnData | None = None  # raw counts, obs in the row order of the HDF5
    attrs: dict[str, Any] = field(default_factory=dict)
    patient: str | None = None  # the donor, when known (train.patients, HEST metadata, train.patient_pattern)
    windows: np.ndarray | None = None  # (N, S, S, 3) uint8 spot windows (end-to-end models; preprocess window_px)

    @property
    def n_spots(self) -> int:
        return int(self.features.shape[0])


def read_manifest(pre_dir: Path) -> dict[str, Any]:
    """The preprocess stage's ``manifest.json`` (clear error if absent or malformed)."""
    path = Path(pre_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: no preprocess manifest (run `eca-bio preprocess` first)")
    manifest = read_json(path, DataError)
    for key in ("encoder", "slides"):
        if key not in manifest:
            raise DataError(f"{path}: manifest has no '{key}'")
    seen = set()
    for i, entry in enumerate(manifest["slides"]):  # ids become output file names; files must stay in the folder
        where = f"{path}: slides[{i}]"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected an object")
        sid = plain_name(entry.get("slide_id"), f"{where}.slide_id", DataError)
        if sid in seen:
            raise DataError(f"{where}.slide_id: {sid!r} listed twice")
        seen.add(sid)
        for key in ("h5", "h5ad", "thumbnail", "windows"):
            if entry.get(key) or key == "h5":
                inside(pre_dir, entry.get(key), f"{where}.{key}", DataError)
    return manifest


def _check_finite(arr: np.ndarray, what: str, path: Path) -> None:
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr.reshape(arr.shape[0], -1)).all(1)).flatten()
        raise DataError(f"{path}: {what} contain NaN/inf in {bad.size} row(s), e.g. rows {bad[:5].tolist()}")


def load_slide(pre_dir: Path, entry: dict[str, Any], spec: EmbeddingSpec, with_tokens: bool = True) -> SlideData:
    """Read one manifest entry; check the embeddings exist, were made as ``spec`` says and are finite."""
    pre_dir = Path(pre_dir)
    sid = entry["slide_id"]
    h5_path = pre_dir / entry["h5"]
    if not h5_path.is_file():
        raise DataError(f"slide {sid}: embeddings missing: {h5_path} does not exist (re-run preprocess)")
    h5 = read_slide_h5(h5_path, with_tokens)
    attrs = h5.attrs
    if "encoder_config" not in attrs:
        raise DataError(f"{h5_path}: no 'encoder_config' attribute; cannot tell which encoder made these embeddings")
    made = EmbeddingSpec.from_h5_attrs(attrs)
    if made.key() != spec.key():
        raise DataError(f"{h5_path}: embeddings made with {made.describe()} ({made.encoder_key()}), "
                        f"expected {spec.describe()} ({spec.encoder_key()})")
    features, coords, tokens, barcodes = h5.features, h5.coords, h5.tokens, h5.barcodes
    if tokens is not None:
        _check_finite(tokens, "tokens", h5_path)
    size = h5.patch_size_level0
    centres = coords.astype(np.float64) + size / 2.0
    counts = None
    if entry.get("h5ad"):
        counts, centres = _load_counts(pre_dir / entry["h5ad"], barcodes, h5_path, centres)
    thumb = pre_dir / entry["thumbnail"] if entry.get("thumbnail") else None
    return SlideData(sid, features, tokens, coords, centres, h5_path, str(entry.get("image", attrs.get("slide", ""))),
                     thumb, float(entry.get("mpp", attrs.get("mpp", 0.0))), size, counts, attrs)


def _load_counts(path: Path, barcodes: list[str] | None, h5_path: Path, centres: np.ndarray) -> tuple[ad.AnnData, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: expression file listed in the manifest does not exist")
    try:
        require_self_contained_h5(path, DataError)
        adata = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .h5ad file (truncated or corrupt?): {' '.join(str(exc).split())[:200]}") from exc
    if barcodes is None:
        if adata.n_obs != centres.shape[0]:
            raise DataError(f"{path}: {adata.n_obs} spots but {h5_path} has {centres.shape[0]} rows and no barcodes")
    else:
        if len(barcodes) != centres.shape[0]:
            raise DataError(f"{h5_path}: {len(barcodes)} barcodes for {centres.shape[0]} rows")
        missing = sorted(set(barcodes) - set(adata.obs_names))
        if missing:
            raise DataError(f"{path}: {len(missing)} spot(s) of {h5_path} are absent, e.g. {missing[:3]}")
        adata = adata[barcodes].copy()
    values = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)  # the stored values only: no densifying
    if not np.isfinite(values).all() or (values < 0).any():
        raise DataError(f"{path}: counts must be finite and non-negative")
    if "spatial" in adata.obsm:
        centres = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    return adata, centres


@dataclass(frozen=True)
class EmbeddingSpec:
    """What a model's features are: the encoder and the patch geometry (precision and tokens stored alongside).

    ``key()`` names the identity (encoder, patch µm, patch px, token grid); ``precision`` and ``store_tokens`` are
    carried so that new slides are embedded the same way, but are not part of it.
    """

    encoder: dict[str, Any]  # EncoderConfig as a dict, or {"name", "source": "precomputed", ...} for imported feature files
    patch_um: float
    patch_px: int
    token_grid: int | None = None
    precision: str = "32-true"
    store_tokens: bool = True

    FIELDS = ("patch_um", "patch_px", "token_grid", "precision", "store_tokens")  # the PreprocessConfig fields it holds

    @classmethod
    def of(cls, cfg: Any, encoder: dict[str, Any] | None = None) -> "EmbeddingSpec":
        """The spec of a :class:`~eca_bio.configs.PreprocessConfig` (``encoder``: the resolved one, e.g. of feature files)."""
        return cls(dict(encoder) if encoder is not None else to_dict(cfg.encoder), float(cfg.patch_um), int(cfg.patch_px),
                   cfg.token_grid or None, str(cfg.precision), bool(cfg.store_tokens))

    @classmethod
    def from_saved(cls, saved: dict[str, Any], where: str | Path) -> "EmbeddingSpec":
        """From a manifest or a model's ``preprocess.json``: its ``embedding``, or (older folders) ``encoder`` + ``params``."""
        if isinstance(saved.get("embedding"), dict):
            d = saved["embedding"]
        else:
            params = saved.get("params") or {}
            if "encoder" not in saved or "patch_um" not in params:
                raise DataError(f"{where}: no embedding (encoder and patch settings); cannot tell how its features were made")
            d = {"encoder": saved["encoder"], **{k: params[k] for k in cls.FIELDS if k in params}}
        try:
            return cls(dict(d["encoder"]), float(d["patch_um"]), int(d["patch_px"]), d.get("token_grid") or None,
                       str(d.get("precision", "32-true")), bool(d.get("store_tokens", True)))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: malformed embedding {d!r}") from exc

    @classmethod
    def from_h5_attrs(cls, attrs: dict[str, Any]) -> "EmbeddingSpec":
        """The identity a slide file records (its precision is not recorded)."""
        encoder = attrs["encoder_config"]
        return cls(json.loads(encoder) if isinstance(encoder, (str, bytes)) else dict(encoder), float(attrs["patch_size_um"]),
                   int(attrs["patch_px"]), int(attrs.get("token_grid", 0)) or None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def encoder_key(self) -> str:
        """The encoder alone, comparable (an EncoderConfig written before ``backend`` existed means timm)."""
        enc = self.encoder if "pretrained" not in self.encoder else {"backend": "timm", **self.encoder}
        return json.dumps(enc, sort_keys=True, default=str)

    def key(self) -> str:
        """The identity: equal keys mean features a model can take in place of its training ones."""
        return json.dumps({"encoder": json.loads(self.encoder_key()), "patch_um": self.patch_um, "patch_px": self.patch_px,
                           "token_grid": self.token_grid}, sort_keys=True)

    def describe(self) -> str:
        return f"{self.encoder.get('name', '?')} on {self.patch_um:g} um patches at {self.patch_px} px" + \
            (f", tokens pooled to {self.token_grid}x{self.token_grid}" if self.token_grid else "")


class FeatureSet:
    """An opened preprocess folder: its manifest, its :class:`EmbeddingSpec` and its slides."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.spec = EmbeddingSpec.from_saved(self.manifest, self.root / "manifest.json")

    @property
    def entries(self) -> list[dict[str, Any]]:
        return self.manifest["slides"]

    def load(self, entry: dict[str, Any], with_tokens: bool = True, spec: EmbeddingSpec | None = None) -> SlideData:
        """One manifest entry as :class:`SlideData`, its file checked against ``spec`` (default: the folder's)."""
        return load_slide(self.root, entry, spec or self.spec, with_tokens)

    def slides(self, require_expression: bool = False, with_tokens: bool = True, spec: EmbeddingSpec | None = None,
               with_windows: bool = False) -> list[SlideData]:
        """Every slide (only ST ones with ``require_expression``), each made as ``spec`` (default: the folder's) says;
        ``with_windows``: with its spot windows (an error names a slide without them)."""
        entries = [e for e in self.entries if e.get("h5ad") or not require_expression]
        slides = [self.load(e, with_tokens, spec) for e in entries]
        if with_windows:
            for s, e in zip(slides, entries):
                s.windows = self.windows(e)
        if not slides:
            raise DataError(f"{self.root}/manifest.json lists no {'ST ' if require_expression else ''}slides")
        dims = {s.features.shape[1] for s in slides}
        if len(dims) != 1:
            raise DataError(f"{self.root}: slides have different feature dimensions {sorted(dims)}")
        return slides

    def windows(self, entry: dict[str, Any]) -> np.ndarray:
        """The slide's spot windows (N, S, S, 3) uint8, rows as its HDF5's (preprocess with ``window_px``)."""
        from eca_bio.features.window_store import read_windows

        if not entry.get("windows"):
            raise DataError(f"{self.root}: slide {entry['slide_id']} has no spot windows (run preprocess with window_px set)")
        return read_windows(self.root / entry["windows"], entry.get("n_patches"))

    def patients(self) -> dict[str, str]:
        """Slide id -> patient as the layout records it (HEST metadata's ``patient``); other layouts record none."""
        return {e["slide_id"]: str(e["patient"]) for e in self.entries if e.get("patient")}

    def inputs(self, slide_ids: list[str] | None = None) -> dict[str, dict[str, str]]:
        """Slide id -> role -> content hash of the files each slide was made from (what an external test must not reuse)."""
        return {e["slide_id"]: e["inputs"] for e in self.entries
                if e.get("inputs") and (slide_ids is None or e["slide_id"] in slide_ids)}


# ----------------------------------------------------------------------------------------- writing


def input_identity(image: str | Path, counts: str | Path | None) -> dict[str, str]:
    """What a section *is*, whatever it is called: the content hashes of its image and its counts table."""
    out = {"image": content_hash(image)}
    if counts and Path(counts).is_file():
        out["counts"] = content_hash(counts)
    return out


def slide_identity(p: Any) -> dict[str, str]:
    return input_identity(p.reader.path, p.adata.uns["st"].get("counts") if p.adata is not None else None)


def coords_attrs(cfg: PreprocessConfig, p: Any) -> dict[str, Any]:
    overlap = 0 if p.adata is not None else int(round(cfg.grid_overlap * cfg.patch_px))  # spots are not a grid
    return slide_h5.coords_attrs(p.slide_id, cfg.patch_px, p.size_px, p.reader.mpp, *p.reader.dimensions,
                                 overlap_px=overlap, savetodir="slides")  # relative: files do not depend on the run dir


def h5_attrs(cfg: PreprocessConfig, p: Any, spec: EmbeddingSpec) -> dict[str, Any]:
    return {
        "mpp": float(p.reader.mpp),
        "mpp_source": p.mpp_source,
        "patch_size_px": int(p.size_px),
        "patch_size_um": float(cfg.patch_um),
        "patch_px": int(cfg.patch_px),
        "target_mpp": float(cfg.patch_um) / cfg.patch_px,
        "patch_level": 0,
        "token_grid": 0 if cfg.token_grid is None else int(cfg.token_grid),
        "encoder": spec.encoder["name"],
        "encoder_config": spec.encoder,
        "slide": str(p.reader.path),
        "slide_id": p.slide_id,
        "level0_width": int(p.reader.dimensions[0]),
        "level0_height": int(p.reader.dimensions[1]),
        "has_expression": p.adata is not None,
        "params_hash": p.params_hash,
        "format_version": FORMAT_VERSION,
    }


def write_h5ad(p: Any, path: Path) -> None:
    adata = p.adata.copy()
    lib = adata.uns["spatial"][adata.uns["st"]["library_id"]]
    if not lib.get("images"):  # legacy ST and the like: hires/lowres thumbnails, so scanpy.pl.spatial draws the slide
        from eca_bio.inputs.slides import slide_images

        images, scales = slide_images(p.reader.path, p.reader.mpp, max_megapixels=p.reader.max_megapixels)
        lib["images"] = images
        lib["scalefactors"] = dict(lib.get("scalefactors") or {}) | scales
    st = dict(adata.uns.pop("st"))
    excluded = st.pop("excluded")
    st.pop("image", None)
    files = {"image": Path(p.reader.path), **{role: Path(st.pop(role)) for role in ST_FILES if st.get(role)}}
    if "source_image_path" in lib.get("metadata", {}):
        lib["metadata"]["source_image_path"] = files["image"].name
    adata.uns["slide"] = {"slide_id": p.slide_id, "mpp": float(p.reader.mpp), "mpp_source": p.mpp_source,
                          "patch_size_px": int(p.size_px), "dimensions": [int(v) for v in p.reader.dimensions], **st,
                          # provenance without host paths: each input's file name and content hash
                          "inputs": {role: f.name for role, f in files.items()},
                          "input_sha256": {role: content_hash(f) for role, f in files.items() if f.is_file()}}
    adata.uns["excluded"] = {k: np.asarray(v, dtype=str) for k, v in excluded.items()}
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def write_rows_h5(job, info: dict[str, int], store_tokens: bool, features: np.ndarray | None = None) -> None:
    """A slide file written in one go: no rows, or the precomputed ``features`` (features_dir)."""
    import h5py

    with atomic_path(job.out_path) as tmp:
        with h5py.File(tmp, "w") as f:
            slide_h5.create_slide_file(f, job.coords, job.coords_attrs, info["feature_dim"],
                                       info["num_tokens"] if store_tokens else 0, job.barcodes,
                                       encoder=str(job.attrs.get("encoder", "")))
            if features is not None and len(features):
                f["features"][:] = np.asarray(features, dtype=slide_h5.FEATURES_DTYPE)
            slide_h5.write_file_attrs(f, job.attrs, info["feature_dim"])


def build_manifest(cfg: PreprocessConfig, out_dir: Path, plans: list[Any], encoder_info: dict | None, spec: EmbeddingSpec) -> dict:
    """``manifest.json`` of a finished folder (read back from its slide files)."""
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
        if p.window_px:
            entry["windows"] = f"slides/{p.slide_id}.windows.h5"
        if p.adata is not None:
            entry["n_genes"] = int(p.adata.n_vars)
            entry["excluded"] = {k: list(v) for k, v in p.adata.uns["st"]["excluded"].items()}
        entry["inputs"] = slide_identity(p)
        entry["thumbnail_hash"] = p.thumbnail_hash
        if p.adata is not None and p.adata.uns["st"].get("patient"):
            entry["patient"] = str(p.adata.uns["st"]["patient"])
        if p.adata is not None and p.adata.uns["st"].get("feature_join"):
            entry["feature_join"] = dict(p.adata.uns["st"]["feature_join"])
        entries.append(entry)
    return {
        "format_version": FORMAT_VERSION,
        "embedding": spec.to_dict(),
        "embedding_key": spec.key(),
        "encoder": spec.encoder,
        "feature_dim": feature_dim,
        "num_tokens": num_tokens,
        "params": to_dict(cfg),
        "slides": entries,
    }


