"""The objective's configuration (torch-free, so command lines build their flags without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class LossConfig:
    """L = MSE + pcc_weight · (DNPL | plain PCC | nothing) + sra_weight · R."""

    pcc: Literal["dnpl", "plain", "none"] = "dnpl"
    pcc_weight: float = 0.5
    sra_weight: float = 1e-3

    def __post_init__(self) -> None:
        if self.pcc not in ("dnpl", "plain", "none"):
            raise ValueError(f"LossConfig.pcc must be 'dnpl', 'plain' or 'none', got {self.pcc!r}")
