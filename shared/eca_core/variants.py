"""The paper's named variants, one table: which layer switches and which PCC loss each one uses.

=========  ==============================  ==========
variant    layer (ECAConfig)               PCC loss
=========  ==============================  ==========
softmax    mode=softmax                    plain PCC
eca        mode=eca (DATS + SRA)           DNPL
no_sra     mode=eca, sra=False             DNPL
no_dats    mode=eca, dats=False            DNPL
no_dnpl    mode=eca (DATS + SRA)           plain PCC
=========  ==============================  ==========

``no_dnpl`` differs from ``eca`` only in the loss, so the layer config never carries a loss switch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eca_core.eca_config import ECAConfig


@dataclass(frozen=True)
class Variant:
    """One named variant: a label for reports, the layer switches and the PCC term of the loss."""

    name: str
    label: str
    layer: tuple[tuple[str, Any], ...]
    pcc: str  # "plain" | "dnpl"


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("softmax", "softmax attention", (("mode", "softmax"),), "plain"),
    Variant("eca", "ECA full", (("mode", "eca"),), "dnpl"),
    Variant("no_sra", "ECA w/o SRA", (("mode", "eca"), ("sra", False)), "dnpl"),
    Variant("no_dats", "ECA w/o DATS", (("mode", "eca"), ("dats", False)), "dnpl"),
    Variant("no_dnpl", "ECA w/o DNPL", (("mode", "eca"),), "plain"),
)}


def get_variant(name: str) -> Variant:
    """The variant called ``name`` (ValueError listing the names otherwise)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown ECA variant {name!r}; choose from {list(VARIANTS)}")
    return VARIANTS[name]


def layer_config(name: str, **overrides: Any) -> ECAConfig:
    """The ``ECAConfig`` of variant ``name``, with hyper-parameter ``overrides`` (tau_min, beta, ...)."""
    return ECAConfig(**{**dict(get_variant(name).layer), **overrides})


def pcc_term(name: str) -> str:
    """The PCC term of variant ``name``'s loss: ``"plain"`` or ``"dnpl"``."""
    return get_variant(name).pcc
