"""The README's "ECA in your own model" snippets run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
SNIPPETS = re.findall(r"<!-- readme-snippet -->\n```python\n(.*?)```", README.read_text(), re.S)


def test_there_are_snippets():
    assert len(SNIPPETS) == 2


@pytest.mark.parametrize("code", SNIPPETS, ids=["timm_vit", "transformer_encoder"])
def test_snippet_runs(code):
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    if "loss" in namespace:
        assert namespace["loss"].item() > 0
    if "weights" in namespace:
        assert namespace["out"].shape == (4, 20, 64) and namespace["weights"].shape == (4, 20, 20)
