"""``eca-msa preprocess``: validate an MMSA pickle and cache its masked tensors for the training stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eca_core.io import write_json_atomic
from eca_core.runner.pipeline import StageContext
from eca_msa.data import CACHE_NAME, load_mmsa, save_cache


def preprocess(pkl: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Validate ``pkl``, write ``mmsa_cache.pt`` and ``summary.json`` into ``out_dir``; return the summary."""
    data = load_mmsa(pkl)
    out_dir = Path(out_dir)
    save_cache(data, out_dir / CACHE_NAME)
    summary = data.summary()
    write_json_atomic(out_dir / "summary.json", summary)
    return summary


def _pickle_path(ctx: StageContext) -> Path:
    if ctx.config.pkl:
        return Path(ctx.config.pkl)
    from eca_msa.synthetic import PICKLE_NAME

    return ctx.stage_dir("generate") / PICKLE_NAME


def run_stage(ctx: StageContext) -> dict[str, Any]:
    pkl = _pickle_path(ctx)
    summary = preprocess(pkl, ctx.out_dir)
    sizes = {s: summary[s]["n"] for s in ("train", "valid", "test")}
    return {k: summary[k] for k in ("source", "text_len", "text_dim", "audio_len", "audio_dim", "vision_len", "vision_dim")} | sizes \
        | {"cache": str(ctx.out_dir / CACHE_NAME)}


def stage_inputs(ctx: StageContext) -> list[Path]:
    return [Path(ctx.config.pkl)] if ctx.config.pkl else []


def report(s: dict[str, Any], args: Any) -> None:
    print(f"{s['source']}: valid MMSA data (train {s['train']}, valid {s['valid']}, test {s['test']}); "
          f"text {s['text_len']}×{s['text_dim']}, audio {s['audio_len']}×{s['audio_dim']}, vision {s['vision_len']}×{s['vision_dim']}")
    print(f"cache: {s['cache']}")
