"""Every tabular stage's configuration, one typed dataclass each (the one source of defaults and CLI flags).

Torch-free on purpose: ``eca-tab <command> --help``, flag errors and config validation are answered
from this module before torch is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from eca_core.runner.config import check
from eca_core.variants import VARIANTS
from eca_tab.datasets import get_dataset


@dataclass
class PreprocessConfig:
    """Which CSV, which target, how to treat its columns, and the split (FT-Transformer paper: 64/16/20)."""

    csv: str = ""  # the CSV file (UCI's file as distributed, or any table with a header row)
    dataset: str = ""  # a preset that sets target/drop/target_transform: appliances | online_news | superconductivity
    target: str = ""  # the numeric column to predict
    drop: list[str] = field(default_factory=list)  # columns to leave out (ids, URLs, leaks)
    categorical: list[str] = field(default_factory=list)  # columns to treat as categories (non-numeric text is anyway)
    date_columns: list[str] = field(default_factory=list)  # columns to treat as dates (text that parses as dates is anyway)
    date: Literal["drop", "expand"] = "drop"  # date columns: drop, or expand into hour of day, day of week, day of year
    target_transform: Literal["none", "log", "log1p"] = "none"  # applied before training; metrics are on this scale
    split: Literal["random", "chronological"] = "random"  # chronological: oldest rows train, newest test (by the first date column)
    split_seed: int = 0  # seed of the random split (and of the quantile scaler's noise)
    val_fraction: float = 0.16
    test_fraction: float = 0.2
    scaling: Literal["quantile", "standard"] = "quantile"  # numeric features, fitted on the training rows

    @classmethod
    def resolve_presets(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Lay the given keys over the data set preset's (called by :func:`eca_core.runner.config.from_dict`)."""
        name = data.get("dataset") or ""
        return {**get_dataset(name).preprocess_defaults(), **data} if name else data

    def __post_init__(self) -> None:
        check(self, val_fraction="(0,1)", test_fraction="(0,1)")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% of the rows for training")


@dataclass
class FTConfig:
    """FT-Transformer size. Defaults: the ECA paper's UCI settings (d_token 256, 8 heads, dropout 0.1) on
    the package's default recipe for that width (4 blocks, ReGLU, FFN 4/3·d, no residual dropout)."""

    n_blocks: int = 4
    d_block: int = 256  # d_token
    attention_n_heads: int = 8
    attention_dropout: float = 0.1
    ffn_d_hidden_multiplier: float = 4 / 3
    ffn_dropout: float = 0.1
    residual_dropout: float = 0.0

    def __post_init__(self) -> None:
        check(self, n_blocks=">=1", d_block=">=1", attention_n_heads=">=1", attention_dropout="[0,1)",
              ffn_d_hidden_multiplier=">0", ffn_dropout="[0,1)", residual_dropout="[0,1)")
        if self.d_block % self.attention_n_heads:
            raise ValueError(f"FTConfig.d_block {self.d_block} is not a multiple of attention_n_heads {self.attention_n_heads}")


@dataclass
class TabTrainConfig:
    """Every (method, seed) fit. Defaults: the ECA paper's UCI settings (batch 128, dropout 0.1, d_token 256,
    8 heads) on the FT-Transformer paper's recipe (AdamW lr 1e-4, weight decay 1e-5, patience 16)."""

    methods: list[str] = field(default_factory=lambda: ["softmax", "eca", "no_sra", "no_dats", "no_dnpl"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    epochs: int = 200  # at most; early stopping usually ends a fit sooner
    patience: int = 16  # epochs without a lower validation MSE before stopping
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 1e-5
    pcc_weight: float = 0.5  # weight of the PCC / DNPL term
    sra_weight: float = 1e-3  # weight of the SRA penalty (ECA variants with SRA)
    tau_min: float = 0.3  # DATS
    beta: float = 1.0  # DATS
    lambda_max: float = 2.0  # SRA
    model: FTConfig = field(default_factory=FTConfig)
    eval_batch_size: int = 4096
    progress_bar: bool = True  # a progress bar over the fits
    threads: int = 0  # torch CPU threads (0: leave as is)

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("progress_bar", "threads", "eval_batch_size")
    LABEL_FIELDS: ClassVar[tuple[str, ...]] = ("methods", "seeds")  # name the run, not one fit

    def __post_init__(self) -> None:
        check(self, epochs=">=1", patience=">=1", batch_size=">=2", lr=">0", weight_decay=">=0", pcc_weight=">=0",
              sra_weight=">=0", tau_min="[0,1]", beta=">0", lambda_max=">=1", eval_batch_size=">=1", threads=">=0")
        unknown = [m for m in self.methods if m not in VARIANTS]
        if unknown or not self.methods:
            raise ValueError(f"TabTrainConfig.methods: unknown {unknown}; choose from {list(VARIANTS)}")
        if not self.seeds:
            raise ValueError("TabTrainConfig.seeds must list at least one seed")


@dataclass
class TabEvaluateConfig:
    """What the report compares against."""

    baseline: str = "softmax"  # every other method is tested against this one
    std_ddof: int = 1  # 1: sample standard deviation over seeds

    def __post_init__(self) -> None:
        check(self, std_ddof="[0,1]")
