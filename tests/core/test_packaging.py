"""The core is torch + numpy: importing it pulls in none of the pipelines' heavy dependencies."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("openslide", "faiss", "scanpy", "anndata", "transformers", "lightning", "timm", "h5py", "yaml", "matplotlib",
         "sklearn", "pandas", "rtdl_revisiting_models")


def test_importing_the_core_imports_no_pipeline_dependency():
    code = ("import sys, eca_core; from eca_core import ECAMultiheadAttention, swap_attention, ECAObjective; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_core_dependencies_are_torch_and_numpy_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(d.split(">")[0].split("=")[0] for d in project["dependencies"]) == ["numpy", "torch"]
    extras = project["optional-dependencies"]
    assert {"pipeline", "bio", "msa", "tab", "all", "test"} <= set(extras)
