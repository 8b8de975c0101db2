"""The paper's three UCI regression data sets as UCI distributes them: one table of presets.

A preset fills the preprocess keys a user would otherwise give (target, dropped columns, target
transform) and carries the paper's row for the report. Any other CSV works with ``target`` given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DatasetSpec:
    """A UCI data set: its file, target, what to drop, and the ECA paper's FT-Transformer / + ECA rows."""

    name: str
    title: str
    file: str
    target: str
    drop: tuple[str, ...] = ()
    target_transform: str = "none"
    n_features: int = 0  # numeric features after dropping (as the paper counts them)
    mse_scale: float = 1.0  # the paper's MSE column is in units of mse_scale
    paper: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> {mae, mse, pcc}

    def preprocess_defaults(self) -> dict[str, Any]:
        """The preprocess keys this preset sets (given keys win)."""
        return {"target": self.target, "drop": list(self.drop), "target_transform": self.target_transform}


DATASETS: dict[str, DatasetSpec] = {d.name: d for d in (
    DatasetSpec(
        "appliances", "Appliances Energy Prediction (UCI 374)", "energydata_complete.csv", "Appliances",
        drop=(), n_features=27, mse_scale=1e3,
        paper={"softmax": {"mae": 39.333, "mse": 6.108, "pcc": 0.556}, "eca": {"mae": 38.665, "mse": 5.790, "pcc": 0.598},
               "no_sra": {"mae": 39.208, "mse": 5.994, "pcc": 0.575}, "no_dats": {"mae": 38.906, "mse": 6.037, "pcc": 0.561},
               "no_dnpl": {"mae": 39.742, "mse": 5.910, "pcc": 0.583}}),
    DatasetSpec(
        "online_news", "Online News Popularity (UCI 332)", "OnlineNewsPopularity.csv", "shares",
        drop=("url", "timedelta"), target_transform="log", n_features=58,
        paper={"softmax": {"mae": 0.641, "mse": 0.724, "pcc": 0.408}, "eca": {"mae": 0.631, "mse": 0.712, "pcc": 0.420},
               "no_sra": {"mae": 0.637, "mse": 0.725, "pcc": 0.410}, "no_dats": {"mae": 0.645, "mse": 0.740, "pcc": 0.418},
               "no_dnpl": {"mae": 0.640, "mse": 0.719, "pcc": 0.418}}),
    DatasetSpec(
        "superconductivity", "Superconductivity (UCI 464)", "train.csv", "critical_temp",
        n_features=81, mse_scale=1e2,
        paper={"softmax": {"mae": 8.793, "mse": 1.772, "pcc": 0.920}, "eca": {"mae": 7.976, "mse": 1.582, "pcc": 0.930},
               "no_sra": {"mae": 8.377, "mse": 1.695, "pcc": 0.920}, "no_dats": {"mae": 8.630, "mse": 1.709, "pcc": 0.927},
               "no_dnpl": {"mae": 8.466, "mse": 1.671, "pcc": 0.922}}),
)}


def get_dataset(name: str) -> DatasetSpec:
    """The preset called ``name`` (ValueError listing the presets otherwise)."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose from {list(DATASETS)} (or leave it empty and give target)")
    return DATASETS[name]
