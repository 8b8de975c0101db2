"""The ECA layer's configuration (torch-free: configs that embed it build command-line flags without torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ECAConfig:
    """Switches and hyper-parameters of one ECA layer (paper Table 4 ranges in comments)."""

    mode: Literal["softmax", "eca"] = "eca"
    dats: bool | None = None  # dispersion-aware temperature softmax (None: on in eca mode, off in softmax mode)
    sra: bool | None = None  # scaled residual aggregation (None: on in eca mode, off in softmax mode)
    tau_min: float = 0.3  # [0, 0.8]
    beta: float = 1.0  # [0.5, 3]
    lambda_max: float = 2.0
    lambda_hidden: int = 32  # width of the λ MLP
    lambda_bias_init: float = -4.0  # softplus(-4) ≈ 0.018, so λ ≈ 1 at init
    d_ref_momentum: float = 0.05  # running-mean momentum of d_ref

    def __post_init__(self) -> None:
        if self.mode not in ("softmax", "eca"):
            raise ValueError(f"ECAConfig.mode must be 'softmax' or 'eca', got {self.mode!r}")
        if not 0.0 <= self.tau_min <= 1.0:
            raise ValueError(f"ECAConfig.tau_min must be in [0, 1], got {self.tau_min}")
        if self.lambda_max < 1.0:
            raise ValueError(f"ECAConfig.lambda_max must be >= 1, got {self.lambda_max}")
        if self.mode == "softmax" and (self.dats or self.sra):
            raise ValueError("ECAConfig(mode='softmax') is plain softmax attention; dats/sra need mode='eca'")

    @property
    def use_dats(self) -> bool:
        return self.mode == "eca" and self.dats is not False

    @property
    def use_sra(self) -> bool:
        return self.mode == "eca" and self.sra is not False
