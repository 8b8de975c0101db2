"""The bio method table: each method's model switches and PCC loss term (ridge: the closed-form baseline)."""

from __future__ import annotations

from typing import Any

from eca_core.variants import VARIANTS

# method -> (model overrides, PCC term of the loss); ridge is the closed-form baseline
METHODS: dict[str, tuple[dict[str, Any], str] | None] = {
    "ridge": None,
    "ridge_cv": None,
    "meanpool": ({"pool": "mean"}, "plain"),
    **{name: ({"pool": "attention", "attention": name}, v.pcc) for name, v in VARIANTS.items()},  # the paper's variants
}
METHOD_LABELS = {
    "ridge": "ridge (PCA-256, HEST)", "ridge_cv": "ridge (PCA-256, alpha on val slide)", "meanpool": "mean-pool MLP",
    **{name: v.label for name, v in VARIANTS.items()},
}


def method_seeds(seeds: list[int], method: str) -> list[int]:
    """The seeds a method runs with: all of ``seeds`` for neural methods, the first for the deterministic ridge."""
    return list(seeds[:1]) if METHODS[method] is None else list(seeds)
