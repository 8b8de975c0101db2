"""``eca-msa preprocess``: validate an MMSA pickle and cache its masked tensors for the training stage."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eca_core.config import from_dict
from eca_core.io import write_json_atomic
from eca_core.pipeline import Stage, StageContext
from eca_msa.data import CACHE_NAME, load_mmsa, save_cache


@dataclass
class PreprocessConfig:
    """``pkl``: the MMSA pickle; empty means the pickle written by an earlier ``generate`` stage."""

    pkl: str = ""


def preprocess(pkl: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Validate ``pkl``, write ``mmsa_cache.pt`` and ``summary.json`` into ``out_dir``; return the summary."""
    data = load_mmsa(pkl)
    out_dir = Path(out_dir)
    save_cache(data, out_dir / CACHE_NAME)
    summary = data.summary()
    write_json_atomic(out_dir / "summary.json", summary)
    return summary


def _pickle_path(ctx: StageContext) -> Path:
    cfg = from_dict(PreprocessConfig, ctx.params, f"stage '{ctx.stage}'")
    if cfg.pkl:
        return Path(cfg.pkl)
    from eca_msa.synthetic import PICKLE_NAME

    return ctx.stage_dir("generate") / PICKLE_NAME


def _run_stage(ctx: StageContext) -> dict[str, Any]:
    summary = preprocess(_pickle_path(ctx), ctx.out_dir)
    return {k: summary[k] for k in ("source", "text_len", "audio_len", "vision_len")} | {s: summary[s]["n"] for s in ("train", "valid", "test")}


def _inputs(ctx: StageContext) -> list[Path]:
    cfg = from_dict(PreprocessConfig, ctx.params, f"stage '{ctx.stage}'")
    return [Path(cfg.pkl)] if cfg.pkl else []


STAGE = Stage("preprocess", _run_stage, inputs=_inputs, description="validate an MMSA pickle and cache its tensors")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pkl", type=Path, help="MMSA feature pickle (e.g. MOSI unaligned_50.pkl)")
    parser.add_argument("--out", type=Path, required=True, help="folder for mmsa_cache.pt and summary.json")


def main(args: argparse.Namespace) -> int:
    summary = preprocess(args.pkl, args.out)
    sizes = ", ".join(f"{s} {summary[s]['n']}" for s in ("train", "valid", "test"))
    print(f"{args.pkl}: valid MMSA data ({sizes}); text {summary['text_len']}×{summary['text_dim']}, "
          f"audio {summary['audio_len']}×{summary['audio_dim']}, vision {summary['vision_len']}×{summary['vision_dim']}")
    print(f"cache: {Path(args.out) / CACHE_NAME}")
    return 0
