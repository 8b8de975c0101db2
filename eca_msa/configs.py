"""Every MSA stage's configuration, one typed dataclass each (the one source of defaults and CLI flags).

Torch-free on purpose: ``eca-msa <command> --help``, flag errors and config validation are answered
from this module before torch, Lightning or transformers are imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from eca_core.runner.config import check, from_dict, to_dict
from eca_core.eca_config import ECAConfig
from eca_msa import presets
from eca_msa.datasets import DATASETS, dataset_spec
from eca_msa.metrics import HIGHER_IS_BETTER
from eca_msa.schedule import SCHEDULES


@dataclass
class SyntheticConfig:
    """Sizes default to the named data set's (MOSI: 1284/229/686 clips; 50 tokens × 768, 375 × 5 audio, 500 × 20 video)."""

    dataset: str = "mosi"  # schema to follow: mosi | mosei | sims (split sizes, shapes, label range; see eca_msa.datasets)
    n_train: int | None = None  # None: the data set's
    n_valid: int | None = None  # None: the data set's
    n_test: int | None = None  # None: the data set's
    text_len: int | None = None  # None: the data set's
    text_dim: int | None = None  # None: the data set's
    audio_len: int | None = None  # None: the data set's
    audio_dim: int | None = None  # None: the data set's
    vision_len: int | None = None  # None: the data set's
    vision_dim: int | None = None  # None: the data set's
    key_frames: int = 3  # informative frames per clip
    center_std: float = 1.0  # σ_c: spread of clip centres across clips
    frame_noise: float = 0.05  # σ_floor: spread of ordinary frames around their clip centre
    key_contrast: float = 3.0  # std of a_i, the key frames' offset along u
    key_gain: float = 2.0 / 3.0  # κ: weight of a_i in the label (κ·a_i has std 2)
    text_weight: float = 1.0
    video_weight: float = 1.0
    label_noise: float = 0.2
    label_std: float | None = None  # label std before clipping; None: half the data set's label bound (MOSI 1.5, SIMS 0.5)
    dirty_padding: float = 0.3  # fraction of clips whose padding frames are not zero
    seed: int = 0

    def __post_init__(self) -> None:
        spec = dataset_spec(self.dataset)
        defaults = dict(zip(("n_train", "n_valid", "n_test"), spec.splits)) | {
            "text_len": spec.text[0], "text_dim": spec.text[1], "audio_len": spec.audio[0], "audio_dim": spec.audio[1],
            "vision_len": spec.vision[0], "vision_dim": spec.vision[1], "label_std": spec.label_max / 2}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        check(self, n_train=">=2", n_valid=">=2", n_test=">=2", text_len=">=2", text_dim=">=1", audio_len=">=2",
              audio_dim=">=1", vision_len=">=8", vision_dim=">=2", center_std=">=0", frame_noise=">=0",
              label_noise=">=0", label_std=">0", dirty_padding="[0,1]")
        if not 1 <= self.key_frames < self.vision_len // 4:
            raise ValueError(f"SyntheticConfig.key_frames must be in [1, vision_len/4), got {self.key_frames}")


@dataclass
class PreprocessConfig:
    """The MMSA pickle to validate and cache."""

    pkl: str = ""  # MMSA feature pickle (e.g. MOSI unaligned_50.pkl); empty: the pickle of an earlier generate stage


@dataclass
class ALMTConfig:
    """The published ALMT on MOSI (Haoyu-ha/ALMT configs/mosi.yaml); lengths and feature sizes follow the data."""

    text_dim: int = 768
    audio_dim: int = 5
    vision_dim: int = 20
    text_len: int = 50
    audio_len: int = 375
    vision_len: int = 500
    dim: int = 128  # projection dim of every modality
    tokens: int = 8  # learned tokens per modality and hyper-modality tokens
    heads: int = 8  # projection / text / fusion transformers
    dim_head: int = 64  # ALMT's transformer blocks use 64 per head (its default)
    mlp_dim: int = 128
    hyper_depth: int = 3
    hyper_heads: int = 8
    hyper_dim_head: int = 16
    fusion_depth: int = 2
    dropout: float = 0.0
    mask_padding: bool = False  # mask frames/tokens past the lengths (published ALMT attends to padding; option mask-padding)
    text_model: str | None = "bert-base-uncased"  # BERT hub name or local folder fine-tuned on `text_bert` ids (published); None: the precomputed `text` features
    video_attention: ECAConfig = field(default_factory=lambda: ECAConfig(mode="softmax"))


SETTINGS: dict[str, dict[str, str]] = {
    "almt": {"video_attention": "softmax", "pcc": "none"},
    "almt_pcc": {"video_attention": "softmax", "pcc": "plain"},
    "almt_eca": {"video_attention": "eca", "pcc": "dnpl"},
}
SETTING_LABELS = {"almt": "(i) ALMT (MSE)", "almt_pcc": "(ii) ALMT + PCC", "almt_eca": "(iii) ALMT + ECA + DNPL"}


@dataclass
class MSATrainConfig:
    """Training of every (setting, seed). The defaults are the published ALMT on MOSI (preset ``almt-mosi``).

    ``preset`` and ``options`` (see :mod:`eca_msa.presets`) are resolved when a config is read:
    the preset's values, then each option's, then the keys given explicitly.
    """

    preset: str = "almt-mosi"  # published ALMT of a data set: almt-mosi | almt-mosei | almt-sims
    options: list[str] = field(default_factory=list)  # project variants on top: frozen-text, mask-padding, select-mae
    settings: list[str] = field(default_factory=lambda: ["almt", "almt_pcc", "almt_eca"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    epochs: int = 200
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-4
    schedule: str = "warmup-cosine"  # warmup-cosine (ALMT: 10% linear warm-up from 0, then cosine; per epoch) | constant
    pcc_weight: float = 1.0  # MSE / PCC weights 1.0 / 1.0
    sra_weight: float = 1e-3
    select_metric: str = "Loss"  # validation metric that picks the epoch (Loss: MMSA's validation loss; MAE; Corr, ...: higher is better)
    patience: int = 32  # early stopping on select_metric (MMSA's ALMT: 32)
    dataset: str = "mosi"  # metric rules and label range: mosi | mosei | sims
    model: ALMTConfig = field(default_factory=ALMTConfig)  # lengths/feature sizes are taken from the data
    progress_bar: bool = True  # a progress bar per run
    threads: int = 0  # torch CPU threads (0: leave as is)

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("progress_bar", "threads")
    LABEL_FIELDS: ClassVar[tuple[str, ...]] = ("preset", "options", "settings", "seeds")  # name the run, not one model

    @classmethod
    def resolve_presets(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Lay ``data`` over its preset and options (called by :func:`eca_core.runner.config.from_dict`)."""
        return presets.resolve(data, cls.preset)

    def __post_init__(self) -> None:
        check(self, epochs=">=1", batch_size=">=2", lr=">0", weight_decay=">=0", pcc_weight=">=0", sra_weight=">=0",
              patience=">=0", threads=">=0")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset {self.dataset!r} is not one of {list(DATASETS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} is not one of {list(SCHEDULES)}")
        unknown = [s for s in self.settings if s not in SETTINGS]
        if unknown or not self.settings:
            raise ValueError(f"MSATrainConfig.settings: unknown {unknown}; choose from {list(SETTINGS)}")
        if self.select_metric not in HIGHER_IS_BETTER:
            raise ValueError(f"MSATrainConfig.select_metric {self.select_metric!r}: choose from {sorted(HIGHER_IS_BETTER)}")
        if not self.seeds:
            raise ValueError("MSATrainConfig.seeds must list at least one seed")

    def provenance(self) -> str:
        """Preset, options and every key set on top of them, in one line (reports print it)."""
        base = flatten(to_dict(from_dict(MSATrainConfig, {"preset": self.preset, "options": list(self.options)})))
        overrides = {k: v for k, v in flatten(to_dict(self)).items()
                     if k.split(".")[0] not in (*self.RUNTIME_FIELDS, *self.LABEL_FIELDS) and base.get(k) != v}
        return presets.describe(self.preset, list(self.options), overrides)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → {"a.b": value}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass
class EvaluateConfig:
    """``std_ddof``: 1 gives the sample standard deviation over seeds."""

    std_ddof: int = 1  # 1: sample standard deviation over seeds
    baseline: str = "almt_pcc"  # the report adds each setting's difference of means to this one

    def __post_init__(self) -> None:
        check(self, std_ddof="[0,1]")
