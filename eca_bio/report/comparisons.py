"""Paired comparisons of two bio methods on the same folds: per-gene PCCs within a fold, PCC@M across folds.

The statistics (Wilcoxon signed-rank tests, rank-biserial effect size, the verdict) are
:mod:`eca_core.comparisons`'; this module pairs a fold's genes by name.
"""

from __future__ import annotations

from typing import Any

from eca_core.comparisons import ALPHA, compare_paired, wilcoxon_paired

__all__ = ["ALPHA", "compare_methods", "wilcoxon_paired"]


def compare_methods(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str, alpha: float = ALPHA) -> dict[str, Any]:
    """Paired tests of method ``a`` vs ``b`` (each ``{"folds": [{"per_gene", "pcc_m", ...}]}``) and a verdict."""
    units_a, units_b = [], []
    for fa, fb in zip(a["folds"], b["folds"]):
        genes = [g for g, v in fa["per_gene"].items() if v is not None and fb["per_gene"].get(g) is not None]
        units_a.append({"unit": fa["fold"], "items": [fa["per_gene"][g] for g in genes], "score": fa["pcc_m"]})
        units_b.append({"unit": fb["fold"], "items": [fb["per_gene"][g] for g in genes], "score": fb["pcc_m"]})
    out = compare_paired(units_a, units_b, name_a, name_b, unit="fold", item="gene", alpha=alpha)
    per_fold = [{"fold": u.pop("unit"), "test": f["test"], **u} for u, f in zip(out.pop("per_unit"), a["folds"])]
    return out | {"per_fold": per_fold, "across_folds": out.pop("across_units"),
                  "better_folds": out.pop("better_units"), "worse_folds": out.pop("worse_units")}
