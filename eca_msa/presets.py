"""Named training configurations: the published ALMT for each data set, and the project's options on top.

A preset is the published ALMT (Haoyu-ha/ALMT ``configs/<data>.yaml`` with MMSA's ALMT trainer:
BERT fine-tuned on ``text_bert``, attention over padded frames, no video q/k/v biases, AdamW 1e-4
with 10% warm-up + cosine, 200 epochs, early stopping after 32 epochs on the validation loss).
:class:`~eca_msa.train.MSATrainConfig`'s defaults *are* the MOSI preset, so ``almt-mosi`` adds
nothing; the others say how they differ. Options are the project's sounder or cheaper variants,
each named so that every report can say what produced it. Keys given explicitly (YAML, flags)
are laid on top of preset and options.
"""

from __future__ import annotations

from typing import Any, Mapping

from eca_core.runner.config import deep_merge

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "almt-mosi": ("published ALMT on CMU-MOSI (fusion depth 2, bert-base-uncased)", {}),
    "almt-mosei": ("published ALMT on CMU-MOSEI (fusion depth 4, bert-base-uncased)",
                   {"dataset": "mosei", "model": {"fusion_depth": 4}}),
    "almt-sims": ("published ALMT on CH-SIMS (fusion depth 4, bert-base-chinese)",
                  {"dataset": "sims", "model": {"fusion_depth": 4, "text_model": "bert-base-chinese"}}),
}

OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "frozen-text": ("text from MMSA's precomputed BERT features instead of fine-tuning BERT (fits a CPU)",
                    {"model": {"text_model": None}}),
    "mask-padding": ("attention ignores frames and tokens past each clip's length (published ALMT attends to them)",
                     {"model": {"mask_padding": True}}),
    "select-mae": ("the epoch with the lowest validation MAE is kept (published: lowest validation loss)",
                   {"select_metric": "MAE"}),
}


def resolve(data: Mapping[str, Any], default_preset: str) -> dict[str, Any]:
    """``data`` laid over its preset and options (``preset``/``options`` keys stay in the result)."""
    preset = data.get("preset", default_preset)
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is not one of {list(PRESETS)}")
    options = data.get("options") or []
    if not isinstance(options, (list, tuple)):
        raise ValueError(f"options must be a list of names from {list(OPTIONS)}, got {options!r}")
    unknown = [o for o in options if o not in OPTIONS]
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}: choose from {list(OPTIONS)}")
    return deep_merge(PRESETS[preset][1], *(OPTIONS[o][1] for o in options), data)


def describe(preset: str, options: list[str], overrides: Mapping[str, Any]) -> str:
    """One line for reports: the preset, its options, and every key set on top of them."""
    text = f"preset `{preset}` ({PRESETS[preset][0]})"
    if options:
        text += "; options: " + "; ".join(f"`{o}` ({OPTIONS[o][0]})" for o in options)
    else:
        text += "; no options"
    if overrides:
        text += "; also set: " + ", ".join(f"{k}={v}" for k, v in overrides.items())
    return text
