"""CSV tables shared by the tab tests: the real Appliances file and small tables a test writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
APPLIANCES = ROOT.parent / "shared" / "data" / "uci" / "energydata_complete.csv"


def write_table(path: Path, n: int = 240, seed: int = 0, city: bool = True) -> Path:
    """A regression table: y = 3·a − 2·b + a·c + noise, a date column, an optional text category."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    a, b, c = rng.normal(size=(3, n))
    cities = rng.choice(["Lyon", "Oslo", "Quito"], size=n)
    y = 3 * a - 2 * b + a * c + (cities == "Oslo") * 1.5 + rng.normal(0, 0.3, n) + 10
    frame = pd.DataFrame({"when": pd.date_range("2020-01-01", periods=n, freq="h").astype(str), "a": a, "b": b, "c": c, "y": y})
    if city:
        frame.insert(1, "city", cities)
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def small_csv(tmp_path) -> Path:
    return write_table(tmp_path / "small.csv")
