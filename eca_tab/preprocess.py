"""``eca-tab preprocess``: a CSV with a numeric target -> a stated, seeded split of scaled arrays.

Writes ``prepared.npz`` (per split: numeric features, categorical codes, target, CSV row index) and
``schema.json`` (columns and their kinds, the scaler, the split rule, sizes, target statistics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from eca_core.cli import StageCommand
from eca_core.config import check
from eca_core.errors import InputError
from eca_core.io import read_json, write_json_atomic
from eca_core.pipeline import Stage, StageContext
from eca_tab.datasets import get_dataset
from eca_tab.table import (PREPARED, SPLITS, Prepared, column_kinds, encode_categories, expand_dates, read_csv,
                           scale_numeric, split_rows, transform_target)

SCHEMA = "schema.json"


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
        """Lay the given keys over the data set preset's (called by :func:`eca_core.config.from_dict`)."""
        name = data.get("dataset") or ""
        return {**get_dataset(name).preprocess_defaults(), **data} if name else data

    def __post_init__(self) -> None:
        check(self, val_fraction="(0,1)", test_fraction="(0,1)")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% of the rows for training")


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


def _run_stage(ctx: StageContext) -> dict[str, Any]:
    prepared = prepare(ctx.config)
    prepared.save(ctx.out_dir / PREPARED)
    write_json_atomic(ctx.out_dir / SCHEMA, prepared.schema)
    s = prepared.schema
    return {"source": s["source"], "target": s["target"], "numeric": len(s["numeric"]), "categorical": len(s["categorical"]),
            "dates": s["dates"], "split": s["split"]["how"], **{f"n_{k}": s["sizes"][k] for k in SPLITS},
            "prepared": str(ctx.out_dir / PREPARED)}


def _inputs(ctx: StageContext) -> list[Path]:
    return [Path(ctx.config.csv)] if ctx.config.csv else []


def _report(s: dict[str, Any], args: Any) -> None:
    dates = s["dates"]
    print(f"{s['source']}: target {s['target']}; {s['numeric']} numeric + {s['categorical']} categorical feature(s)"
          + (f"; date column(s) {dates['columns']}: {dates['treatment']}" if dates["columns"] else "")
          + f"; {s['split']} split train {s['n_train']} / val {s['n_val']} / test {s['n_test']}")
    print(f"prepared: {s['prepared']}")


STAGE = Stage("preprocess", _run_stage, config=PreprocessConfig, inputs=_inputs, main_only=True,
              description="CSV -> seeded split, scaled numeric features, categorical codes")
COMMAND = StageCommand("eca_tab.preprocess:STAGE", out_help=f"folder for {PREPARED} and {SCHEMA}", positional="csv",
                       report=_report)
configure_parser, main = COMMAND.configure_parser, COMMAND.main
