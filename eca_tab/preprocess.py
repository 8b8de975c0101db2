"""``eca-tab preprocess``: a CSV with a numeric target -> a stated, seeded split of scaled arrays.

Writes ``prepared.npz`` (per split: numeric features, categorical codes, target, CSV row index) and
``schema.json`` (columns and their kinds, the scaler, the split rule, sizes, target statistics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eca_core.errors import InputError
from eca_core.io import read_json, write_json_atomic
from eca_core.runner.pipeline import StageContext
from eca_tab.configs import PreprocessConfig
from eca_tab.table import (PREPARED, SPLITS, Prepared, column_kinds, encode_categories, expand_dates, read_csv,
                           scale_numeric, split_rows, transform_target)

SCHEMA = "schema.json"


def prepare(cfg: PreprocessConfig) -> Prepared:
    """Read ``cfg.csv`` and build the split, scaled arrays and their schema."""
    if not cfg.csv:
        raise InputError("no CSV given (csv: or the CSV argument)")
    if not cfg.target:
        raise InputError(f"{cfg.csv}: no target column given (target:, or a dataset preset)")
    path = Path(cfg.csv)
    frame = read_csv(path)
    kinds = column_kinds(frame, path, cfg.target, cfg.drop, cfg.categorical, cfg.date_columns)
    y_raw = frame[cfg.target].to_numpy(np.float64)
    bad = ~np.isfinite(y_raw)
    if bad.any():
        raise InputError(f"{path}: target {cfg.target!r} is missing or not finite in {int(bad.sum())} row(s), "
                         f"first at data row {int(np.flatnonzero(bad)[0]) + 1}")
    y = transform_target(y_raw, cfg.target_transform, path, cfg.target)
    numeric = {c: frame[c].to_numpy(np.float64) for c in kinds["numeric"]}
    for c, v in numeric.items():
        if not np.isfinite(v).all():
            raise InputError(f"{path}: numeric column {c!r} has {int((~np.isfinite(v)).sum())} missing or non-finite value(s)")
    order = None
    if kinds["date"]:
        import pandas as pd

        order = pd.to_datetime(frame[kinds["date"][0]], format="mixed").to_numpy().astype("int64")
        if cfg.date == "expand":
            expanded, _ = expand_dates(frame, kinds["date"])
            numeric.update(expanded)
    if cfg.split == "chronological" and order is None:
        print(f"{path}: no date column; the chronological split follows the file's row order")
    rows = split_rows(len(frame), cfg.split, cfg.split_seed, cfg.val_fraction, cfg.test_fraction, order)
    names = list(numeric)
    if not names and not kinds["categorical"]:
        raise InputError(f"{path}: no feature columns left after dropping {cfg.drop} and the target")
    matrix = np.stack([numeric[c] for c in names], 1) if names else np.zeros((len(frame), 0))
    x_num, scaler = scale_numeric({s: matrix[r] for s, r in rows.items()}, cfg.scaling, cfg.split_seed)
    x_cat, categories = encode_categories(frame, kinds["categorical"], rows)
    y_train = y[rows["train"]]
    schema = {
        "source": str(path), "dataset": cfg.dataset or None, "target": cfg.target, "target_transform": cfg.target_transform,
        "numeric": names, "categorical": categories, "dates": {"columns": kinds["date"], "treatment": cfg.date},
        "dropped": cfg.drop, "scaling": scaler,
        "split": {"how": cfg.split, "seed": cfg.split_seed if cfg.split == "random" else None,
                  "fractions": {"train": round(1 - cfg.val_fraction - cfg.test_fraction, 6), "val": cfg.val_fraction,
                                "test": cfg.test_fraction},
                  "order": (f"by {kinds['date'][0]}" if kinds["date"] else "file order") if cfg.split == "chronological" else None},
        "sizes": {s: int(len(r)) for s, r in rows.items()},
        "target_train": {"mean": float(y_train.mean()), "std": float(y_train.std())},
    }
    return Prepared(x_num, x_cat, {s: y[r] for s, r in rows.items()}, {s: r.astype(np.int64) for s, r in rows.items()}, schema)


def load_prepared(folder: str | Path) -> Prepared:
    """The preprocess stage's output folder as a :class:`Prepared`."""
    folder = Path(folder)
    schema = read_json(folder / SCHEMA, hint="run `eca-tab preprocess` again")
    return Prepared.load(folder / PREPARED, schema)


def run_stage(ctx: StageContext) -> dict[str, Any]:
    prepared = prepare(ctx.config)
    prepared.save(ctx.out_dir / PREPARED)
    write_json_atomic(ctx.out_dir / SCHEMA, prepared.schema)
    s = prepared.schema
    return {"source": s["source"], "target": s["target"], "numeric": len(s["numeric"]), "categorical": len(s["categorical"]),
            "dates": s["dates"], "split": s["split"]["how"], **{f"n_{k}": s["sizes"][k] for k in SPLITS},
            "prepared": str(ctx.out_dir / PREPARED)}


def stage_inputs(ctx: StageContext) -> list[Path]:
    return [Path(ctx.config.csv)] if ctx.config.csv else []


def report(s: dict[str, Any], args: Any) -> None:
    dates = s["dates"]
    print(f"{s['source']}: target {s['target']}; {s['numeric']} numeric + {s['categorical']} categorical feature(s)"
          + (f"; date column(s) {dates['columns']}: {dates['treatment']}" if dates["columns"] else "")
          + f"; {s['split']} split train {s['n_train']} / val {s['n_val']} / test {s['n_test']}")
    print(f"prepared: {s['prepared']}")
