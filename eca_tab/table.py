"""The CSV regression table: read, type the columns, split, scale; the prepared arrays file (write and read).

Reading follows what UCI ships: a header row, fields possibly quoted and padded with a space after
the comma (Online News). Column kinds: the target (numeric), numeric features, categorical features
(non-numeric columns, or those named in ``categorical``), date columns (text that parses as dates,
or those named in ``date_columns``), which are dropped or expanded into numbers (``date``). The split
is stated and seeded; numeric features are scaled with statistics of the training rows only, as the
FT-Transformer paper does (quantile -> normal, with its tiny noise; or standard). Unseen categories
map to an extra "unknown" index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eca_core.errors import InputError

SPLITS = ("train", "val", "test")
PREPARED = "prepared.npz"


@dataclass
class Prepared:
    """Scaled arrays per split plus the schema that made them (JSON-able)."""

    x_num: dict[str, np.ndarray]  # split -> (N, F) float32
    x_cat: dict[str, np.ndarray]  # split -> (N, C) int64 (C may be 0)
    y: dict[str, np.ndarray]      # split -> (N,) float64, target after its transform (unscaled)
    rows: dict[str, np.ndarray]   # split -> (N,) int64 row index in the CSV (0 = first data row)
    schema: dict[str, Any]

    def save(self, path: str | Path) -> None:
        """Write the arrays (npz, no pickles) atomically; the schema is written by the stage beside it."""
        from eca_core.io import atomic_path

        arrays = {f"{k}_{s}": getattr(self, k)[s] for k in ("x_num", "x_cat", "y", "rows") for s in SPLITS}
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path, schema: dict[str, Any]) -> "Prepared":
        """Read a prepared file (never unpickling); InputError naming it when it is broken."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                parts = {k: {s: z[f"{k}_{s}"] for s in SPLITS} for k in ("x_num", "x_cat", "y", "rows")}
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"{path}: not a prepared table ({exc}); run `eca-tab preprocess` again") from exc
        return cls(**parts, schema=schema)


def read_csv(path: str | Path):
    """The CSV as a DataFrame with stripped column names; InputError naming the file on any problem."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        frame = pd.read_csv(path, skipinitialspace=True, low_memory=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: not a readable CSV table ({' '.join(str(exc).split())})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    dup = frame.columns[frame.columns.duplicated()].tolist()
    if dup:
        raise InputError(f"{path}: duplicate column name(s) {dup}")
    if len(frame) < 10:
        raise InputError(f"{path}: {len(frame)} data rows; a regression split needs at least 10")
    return frame


def _looks_like_dates(col) -> bool:
    import pandas as pd

    sample = col.dropna().astype(str).head(50)
    if sample.empty or sample.str.fullmatch(r"[-+]?\d+(\.\d*)?").all():
        return False
    parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
    return bool(parsed.notna().all())


def column_kinds(frame, path: str | Path, target: str, drop: list[str], categorical: list[str],
                 date_columns: list[str]) -> dict[str, list[str]]:
    """Numeric, categorical and date feature columns (in file order), after checking every named column exists."""
    import pandas as pd

    named = {"target": [target], "drop": drop, "categorical": categorical, "date_columns": date_columns}
    for key, cols in named.items():
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise InputError(f"{path}: no column(s) {missing} (from {key}); columns are {list(frame.columns)[:12]}"
                             + (" ..." if frame.shape[1] > 12 else ""))
    if not pd.api.types.is_numeric_dtype(frame[target]):
        raise InputError(f"{path}: target column {target!r} is not numeric (e.g. {frame[target].iloc[0]!r})")
    kinds: dict[str, list[str]] = {"numeric": [], "categorical": [], "date": []}
    for c in frame.columns:
        if c == target or c in drop:
            continue
        if c in date_columns:
            kinds["date"].append(c)
        elif c in categorical:
            kinds["categorical"].append(c)
        elif pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]):
            kinds["numeric"].append(c)
        elif _looks_like_dates(frame[c]):
            kinds["date"].append(c)
        else:
            kinds["categorical"].append(c)
    return kinds


def expand_dates(frame, cols: list[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Each date column -> hour of day (fractional), day of week, day of year; and the new column names."""
    import pandas as pd

    out: dict[str, np.ndarray] = {}
    for c in cols:
        t = pd.to_datetime(frame[c], errors="raise", format="mixed")
        out[f"{c}.hour"] = (t.dt.hour + t.dt.minute / 60.0).to_numpy(np.float64)
        out[f"{c}.dayofweek"] = t.dt.dayofweek.to_numpy(np.float64)
        out[f"{c}.dayofyear"] = t.dt.dayofyear.to_numpy(np.float64)
    return out, list(out)


def split_rows(n: int, how: str, seed: int, val_fraction: float, test_fraction: float,
               order: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Row indices per split. ``random``: a seeded permutation. ``chronological``: the first rows (by ``order``,
    else file order) train, the next validate, the last test, so no future row informs a past one."""
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    if min(n_test, n_val, n - n_test - n_val) < 2:
        raise ValueError(f"a {n}-row table with val_fraction {val_fraction} and test_fraction {test_fraction} "
                         f"leaves a split with under 2 rows")
    if how == "random":
        idx = np.random.default_rng(seed).permutation(n)
    else:
        idx = np.argsort(order, kind="stable") if order is not None else np.arange(n)
    n_train = n - n_val - n_test
    return {"train": np.sort(idx[:n_train]) if how == "random" else idx[:n_train],
            "val": np.sort(idx[n_train:n_train + n_val]) if how == "random" else idx[n_train:n_train + n_val],
            "test": np.sort(idx[n_train + n_val:]) if how == "random" else idx[n_train + n_val:]}


def scale_numeric(x: dict[str, np.ndarray], how: str, seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fit the scaler on the training rows and apply it to every split (float32); returns its description.

    ``quantile``: scikit-learn's QuantileTransformer to a normal distribution with
    n_quantiles = clip(N_train // 30, 10, 1000), fitted on the training rows plus N(0, 1e-5) noise (the
    FT-Transformer recipe). ``standard``: mean 0, std 1 per feature (a constant feature is left at 0).
    """
    train = x["train"]
    if train.shape[1] == 0:
        return {s: v.astype(np.float32) for s, v in x.items()}, {"method": how, "features": 0}
    if how == "quantile":
        from sklearn.preprocessing import QuantileTransformer

        noise = np.random.default_rng(seed).normal(0.0, 1e-5, train.shape)
        n_q = max(min(len(train) // 30, 1000), 10)
        qt = QuantileTransformer(n_quantiles=n_q, output_distribution="normal", subsample=10**9, random_state=seed)
        qt.fit(train + noise)
        out = {s: qt.transform(v).astype(np.float32) for s, v in x.items()}
        return out, {"method": "quantile", "n_quantiles": n_q, "output_distribution": "normal", "noise_std": 1e-5}
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)
    return ({s: ((v - mean) / std).astype(np.float32) for s, v in x.items()},
            {"method": "standard", "mean": mean.tolist(), "std": std.tolist()})


def encode_categories(frame, cols: list[str], splits: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Integer codes per categorical column from the training rows' values; unseen values -> the last index."""
    codes = {s: np.zeros((len(rows), len(cols)), dtype=np.int64) for s, rows in splits.items()}
    described = []
    for j, c in enumerate(cols):
        values = frame[c].astype(str).to_numpy()
        known = sorted(set(values[splits["train"]]))
        lookup = {v: i for i, v in enumerate(known)}
        for s, rows in splits.items():
            codes[s][:, j] = [lookup.get(v, len(known)) for v in values[rows]]
        described.append({"name": c, "cardinality": len(known) + 1, "categories": known[:50], "unknown_index": len(known)})
    return codes, described


def transform_target(y: np.ndarray, how: str, path: str | Path, target: str) -> np.ndarray:
    """``none`` | ``log`` (natural log; needs y > 0) | ``log1p`` (needs y > -1); InputError naming the file otherwise."""
    if how == "log":
        if (y <= 0).any():
            raise InputError(f"{path}: target_transform log needs {target} > 0; found {float(y.min()):g}")
        return np.log(y)
    if how == "log1p":
        if (y <= -1).any():
            raise InputError(f"{path}: target_transform log1p needs {target} > -1; found {float(y.min()):g}")
        return np.log1p(y)
    return y
