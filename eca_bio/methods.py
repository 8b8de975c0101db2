"""The bio method tables: the frozen-feature model's switches and PCC loss term per method (ridge: the closed-form
baseline), and EGN trained end to end on spot windows with ECA in its ViT, its pooling head, or both."""

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
# EGN method -> (EGN's attention switches, PCC term of the loss). "egn_eca" is the paper's EGN+ECA: ECA as the drop-in
# replacement of the backbone ViT's softmax attention, with DNPL; ECA in CSRA's token softmax is the ablation beside it.
EGN_METHODS: dict[str, tuple[dict[str, str], str]] = {
    "egn": ({"vit_attention": "softmax", "pool": "csra"}, "plain"),
    "egn_eca": ({"vit_attention": "eca", "pool": "csra"}, VARIANTS["eca"].pcc),
    "egn_eca_pool": ({"vit_attention": "softmax", "pool": "eca"}, VARIANTS["eca"].pcc),
    "egn_eca_all": ({"vit_attention": "eca", "pool": "eca"}, VARIANTS["eca"].pcc),
}
ALL_METHODS: list[str] = [*METHODS, *EGN_METHODS]
METHOD_LABELS = {
    "ridge": "ridge (PCA-256, HEST)", "ridge_cv": "ridge (PCA-256, alpha on val slide)", "meanpool": "mean-pool MLP",
    **{name: v.label for name, v in VARIANTS.items()},
    "egn": "EGN (end to end)", "egn_eca": "EGN+ECA (ViT attention)", "egn_eca_pool": "EGN, ECA in CSRA pooling",
    "egn_eca_all": "EGN+ECA (ViT and pooling)",
}


def is_ridge(method: str) -> bool:
    """Whether ``method`` is a closed-form ridge baseline (deterministic, no seeds, no epochs)."""
    return method in METHODS and METHODS[method] is None


def method_seeds(seeds: list[int], method: str) -> list[int]:
    """The seeds a method runs with: all of ``seeds`` for neural methods, the first for the deterministic ridge."""
    return list(seeds[:1]) if is_ridge(method) else list(seeds)
