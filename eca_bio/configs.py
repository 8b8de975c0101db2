"""Every bio stage's configuration, one typed dataclass each (the one source of defaults and CLI flags).

Torch-free on purpose: ``eca-bio <command> --help``, flag errors and config validation are answered
from this module before torch, Lightning, timm or anndata are imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from eca_core.runner.config import check
from eca_core.eca_config import ECAConfig
from eca_core.loss_config import LossConfig
from eca_core.variants import layer_config
from eca_bio.methods import ALL_METHODS, EGN_METHODS, METHODS
from eca_bio.model.egn_presets import PRESETS as EGN_PRESETS

TRANSFORMS = ("egn", "libsize")  # target transforms (eca_bio.training.targets)
LAYOUT_NAMES = ("legacy_st", "visium", "visium_hd", "hest")  # spatial layouts: the keys of eca_bio.inputs.st.LAYOUTS (a test holds them equal)
DEFAULT_MAX_MEGAPIXELS = 1000.0  # 3 GB of RGB in memory; pyramidal slides (OpenSlide) are read lazily and never limited


@dataclass
class ModelConfig:
    """Architecture switches of :class:`ExpressionModel`."""

    pool: Literal["attention", "mean"] = "attention"
    attention: Literal["softmax", "eca", "no_sra", "no_dats", "no_dnpl"] = "eca"
    hidden: int = 128
    heads: int = 4
    dropout: float = 0.1
    use_exemplars: bool = True
    tau_min: float = 0.3
    beta: float = 1.0
    lambda_max: float = 2.0

    def eca_config(self) -> ECAConfig:
        return layer_config(self.attention, tau_min=self.tau_min, beta=self.beta, lambda_max=self.lambda_max)


@dataclass
class EncoderConfig:
    """Which frozen encoder embeds the patches."""

    name: str = "vit_small_patch16_224"      # timm model name or "hf-hub:org/repo"; transformers: "org/repo" or a local folder
    pretrained: bool = True                  # load the name's pretrained weights (timm cache / hub)
    weights: str | None = None               # local .safetensors / .pth / .pt / .bin state dict (overrides pretrained)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs, e.g. img_size, depth
    seed: int = 0                            # seed for random-init encoders (pretrained=False, no weights)
    backend: Literal["timm", "transformers"] = "timm"  # timm | transformers (ViT-style AutoModel: CLS = pooled, patch tokens)


@dataclass
class TissueConfig:
    """Parameters of ``detect_tissue`` (thumbnail scale is set by ``thumbnail_px``)."""

    thumbnail_px: int = 2048          # longer side of the slide thumbnail (also the patch-check PNG)
    work_mpp: float = 4.0             # detection resolution, microns per pixel (coarser = faster morphology)
    min_saturation: float = 0.05      # floor under the Otsu threshold (0-1): faint slides stay background
    max_darkness: float = 0.1         # pixels with value below this (0-1) are not tissue (pen, black borders)
    close_um: float = 50.0            # morphological closing radius, microns
    open_um: float = 20.0             # opening radius, microns (removes dust/specks)
    min_area_um2: float = 50_000.0    # tissue components smaller than this are dropped
    fill_holes: bool = True


@dataclass
class InputSpec:
    """What to read: ST sections and/or whole slides, and how (the fields preprocess and predict share)."""

    st_dir: str | None = None                 # legacy-ST / Visium section folder, a folder of them, or a HEST-1k folder
    st_format: Literal["auto", "legacy_st", "visium", "visium_hd", "hest"] = "auto"
    visium_hd_bin: str = "square_016um"       # Visium HD: the binned_outputs/ folder whose bins are the spots
    sections: list[str] | None = None         # subset of section ids in st_dir (default: all)
    images: dict[str, str] = field(default_factory=dict)  # section id -> full-res image (default: found in its folder)
    slides: list[str] = field(default_factory=list)  # WSIs without ST: tiled over detected tissue
    mpp: float | None = None                  # microns per pixel of every slide and section; wins over their metadata (with a warning)
    allow_unusual_mpp: bool = False           # accept mpp outside 0.05-50 um/px and patches under 8 px
    max_image_megapixels: float = DEFAULT_MAX_MEGAPIXELS  # plain images (JPEG/PNG/TIFF) decoded whole: larger ones are refused
    features_dir: str | None = None           # TRIDENT/CLAM feature files <slide id>.h5 to use instead of embedding
    features_encoder: str | None = None       # encoder that made features_dir's files (default: the files' 'encoder' attribute)
    features_patch_size: int | None = None    # level-0 patch side of features_dir files that do not record it (CLAM's)
    max_outside_fraction: float = 0.1         # ST: more spots outside the image than this is an error
    skip_errors: bool = False                 # cohorts: a slide that cannot be read is listed in the manifest and skipped

    def __post_init__(self) -> None:
        check(self, max_image_megapixels=">0", max_outside_fraction="[0,1]", mpp=">0")


@dataclass
class PreprocessConfig(InputSpec):
    """Parameters of the preprocess stage (YAML ``preprocess:`` params): what to read (:class:`InputSpec`), how to embed
    it (the fields of ``eca_bio.features.feature_set.EmbeddingSpec``), tissue and grid settings, and runtime fields."""

    patch_um: float = 112.0                   # patch side in microns (224 px at 0.5 um/px)
    patch_px: int = 224                       # encoder input side in pixels
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    token_grid: int | None = None             # pool patch tokens to k x k (None: keep all tokens)
    store_tokens: bool = True                 # write the 'tokens' dataset
    window_px: int | None = None              # end-to-end models (EGN: 256): each ST spot's patch also stored as a uint8 window of this side
    precision: str = "32-true"                # Lightning precision, e.g. "bf16-mixed" on GPUs
    tissue: TissueConfig = field(default_factory=TissueConfig)
    grid_overlap: float = 0.0                 # WSI grid: fraction of overlap between neighbouring patches
    min_tissue: float = 0.25                  # WSI grid: minimum tissue fraction of a kept patch
    batch_size: int = 32
    num_workers: int = 2                      # DataLoader workers that read and cut patches
    progress: bool = True                     # progress bars and one log line per slide

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("batch_size", "num_workers", "progress", "max_image_megapixels")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, patch_um=">0", patch_px=">=8", batch_size=">=1", num_workers=">=0", token_grid=">=1", window_px=">=8",
              grid_overlap="[0,1)", min_tissue="[0,1]")


@dataclass
class EGNConfig:
    """EGN trained end to end on spot windows (methods ``egn*``): a named size and its optimisation; a field left
    None takes the preset's value (``eca_bio.model.egn_presets``). The retrieval embedding is the preprocess encoder's."""

    preset: str = "egn-cpu-small"  # egn-10xproteomic (the published size, GPUs), egn-cpu-small, egn-tiny
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    k: int | None = None  # exemplars per spot (EGN: 6)
    schedule: Literal["egn", "constant"] = "egn"  # egn: EGN's cosine warm restarts (a cycle per half epoch, floor lr/5)
    precision: str = "32-true"  # Lightning precision of EGN's fits, e.g. "bf16-mixed" on GPUs that have it

    def __post_init__(self) -> None:
        if self.preset not in EGN_PRESETS:
            raise ValueError(f"train.egn.preset {self.preset!r} is not one of {list(EGN_PRESETS)}")
        check(self, epochs=">=1", batch_size=">=2", lr=">0", weight_decay=">=0", k=">=1")

    def model_kwargs(self) -> dict[str, Any]:
        """EGN's keyword arguments of the preset (``mdim`` and ``n_genes`` are set by the data)."""
        return dict(EGN_PRESETS[self.preset]["model"])

    def train_settings(self) -> dict[str, Any]:
        """epochs, batch_size, lr, weight_decay and k: the preset's, with the fields given here."""
        given = {k: getattr(self, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "k") if getattr(self, k) is not None}
        return {**EGN_PRESETS[self.preset]["train"], **given}


@dataclass
class BioTrainConfig:
    """Parameters of the train stage (the ``train:`` block of a bio pipeline YAML)."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))  # also EGN end to end: egn, egn_eca, ... (eca_bio.methods)
    transforms: list[str] = field(default_factory=lambda: list(TRANSFORMS))
    n_genes: int = 250
    cv: Literal["loso", "lopo", "kfold", "fixed", "given", "none"] = "loso"  # lopo: leave one patient out; fixed: test_slides only (HEST-Benchmark style); given: test_folds; none: only the final model
    n_folds: int = 4  # k-fold (cv: kfold): by patient when patients are known, else by slide
    patients: dict[str, str] = field(default_factory=dict)  # slide id -> patient (donor); wins over HEST metadata and patient_pattern
    patient_pattern: str | None = None  # regex on slide ids; its first group (else the match) is the patient, e.g. "^([A-Z])" for her2st
    allow_same_image: bool = False  # train a fold whose test image also sits in training (EGN's 10xProteomic folds); every report warns
    test_slides: list[str] = field(default_factory=list)  # cv: fixed: the held-out test slides
    test_folds: list[list[str]] = field(default_factory=list)  # cv: given: each fold's test slides (a published protocol's folds)
    k: int = 8  # exemplars per spot
    exemplar_backend: Literal["auto", "exact", "faiss"] = "auto"
    use_tokens: bool = True  # attend over stored patch tokens (else the CLS feature only)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)  # its `pcc` is set per method
    epochs: int = 60
    patience: int = 10
    min_epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    egn: EGNConfig = field(default_factory=EGNConfig)  # methods egn*: size and optimisation (preprocess with window_px)
    refit: bool = True  # retrain on all training slides for the early-stopped number of epochs
    tune_trials: int = 1  # validation-slide search: configurations tried per neural method (1: the defaults only)
    tune_grid: dict[str, list[float]] = field(default_factory=lambda: {
        "lr": [3e-4, 1e-3, 3e-3], "weight_decay": [1e-5, 1e-4, 1e-2], "dropout": [0.0, 0.1, 0.3],
        "tau_min": [0.2, 0.3, 0.5], "beta": [0.5, 1.0, 2.0], "lambda_max": [1.5, 2.0, 3.0],
        "sra_weight": [1e-4, 1e-3, 1e-2]})  # each method draws from its own knobs (eca_bio.training.tuning)
    ridge_components: int = 256
    ridge_alpha: float | None = None  # None: HEST's 100 / (components · genes)
    ridge_alphas: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6])  # ridge_cv grid
    final_method: str | None = "eca"  # trained on every ST slide for `eca-bio predict`; None to skip
    final_transform: str | None = None  # default: the first of `transforms`
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # neural methods run once per seed (ridge is deterministic: once); the final model uses the first
    threads: int | None = None  # torch CPU threads (default: torch's)
    engine: Literal["vectorised", "per_fit"] = "vectorised"  # per_fit: one Lightning Trainer per fit (the reference loop; same results)

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("threads", "engine")

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("train.seeds must list at least one seed")
        unknown = sorted(set(self.tune_grid) - {"lr", "weight_decay", "dropout", "tau_min", "beta", "lambda_max", "sra_weight"})
        if unknown:
            raise ValueError(f"train.tune_grid: unknown knob(s) {unknown}")
        check(self, tune_trials=">=1", n_genes=">=1", n_folds=">=2", k=">=1", epochs=">=1", patience=">=0", min_epochs=">=1",
              batch_size=">=2", lr=">0", weight_decay=">=0", ridge_components=">=1", ridge_alpha=">0",
              ridge_alphas=">0", threads=">=1")
        bad = [m for m in self.methods if m not in ALL_METHODS]
        if bad or not self.methods:
            raise ValueError(f"train.methods: unknown {bad}; choose from {ALL_METHODS}")
        bad = [t for t in self.transforms if t not in TRANSFORMS]
        if bad or not self.transforms:
            raise ValueError(f"train.transforms: unknown {bad}; choose from {list(TRANSFORMS)}")
        if self.final_method is not None and self.final_method not in METHODS:
            hint = " (EGN methods are cross-validated; the model `eca-bio predict` runs is a frozen-feature one: predict embeds tiles, it cuts no windows)" \
                if self.final_method in EGN_METHODS else ""
            raise ValueError(f"train.final_method {self.final_method!r} is not one of {list(METHODS)}{hint}")
        if self.final_transform is not None and self.final_transform not in TRANSFORMS:
            raise ValueError(f"train.final_transform {self.final_transform!r} is not one of {list(TRANSFORMS)}")
        if self.patient_pattern is not None:
            try:
                re.compile(self.patient_pattern)
            except re.error as exc:
                raise ValueError(f"train.patient_pattern {self.patient_pattern!r}: {exc}") from exc
        if (self.cv == "fixed") != bool(self.test_slides):
            raise ValueError("train.test_slides names the test slides of cv: fixed (and only then)")
        if (self.cv == "given") != bool(self.test_folds) or not all(self.test_folds):
            raise ValueError("train.test_folds lists each fold's test slides for cv: given (and only then)")
        if self.cv == "none" and self.final_method is None:
            raise ValueError("train.cv: none trains only the final model; set final_method")

    def for_method(self, method: str) -> "BioTrainConfig":
        """The settings ``method`` trains with: EGN methods take epochs, batch size, lr, weight decay and k from
        ``egn`` (its preset); every other method these fields as given."""
        return replace(self, **self.egn.train_settings()) if method in EGN_METHODS else self


@dataclass
class EvaluateConfig:
    """Parameters of the evaluate stage."""

    primary: str = "eca"  # the method the claims are about
    softmax: str = "softmax"  # its softmax counterpart
    references: list[str] = field(default_factory=lambda: ["ridge", "ridge_cv"])  # linear probes on the same features
    mse_tolerance: float = 1.02  # claim: ECA MSE <= tolerance x softmax MSE
    export_method: str | None = "eca"  # write test predictions of this method as .h5ad per slide
    genes_to_plot: int = 4
    export_images: bool = True  # embed hires/lowres slide images in the .h5ad

    def __post_init__(self) -> None:
        check(self, mse_tolerance=">0", genes_to_plot=">=0")
        if self.export_method == "":
            self.export_method = None


@dataclass
class PredictConfig(InputSpec):
    """Parameters of the predict stage / command: new inputs (:class:`InputSpec`: whole slides to predict on, or labeled
    sections in any layout to test on), read and embedded exactly as the trained model's preprocess folder was."""

    genes_to_plot: int = 4  # heatmaps of the most variable predicted genes
    batch_size: int = 16  # embedding batch size
    num_workers: int = 0
    export_images: bool = True  # embed hires/lowres slide images in the .h5ad

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("batch_size", "num_workers", "max_image_megapixels")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, genes_to_plot=">=0", batch_size=">=1", num_workers=">=0")
